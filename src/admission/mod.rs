//! Admission webhooks for Sessions: quota (validating) and defaults (mutating), served over
//! TLS by the controller process.
//!
//! Data model: three watch caches (QuotaPolicies of the policy namespace, Sessions and
//! Templates of the watched namespaces) plus the per-user reservation ledgers kept in the API
//! server ([`crate::quota::store`]), which every replica of the webhook and of the API reads and
//! writes with optimistic concurrency, so replicas together never admit over a limit.
//! The decisions themselves are pure: [`crate::quota::decide`], [`crate::quota::ledger::usage`],
//! `review::quota_check` and [`defaults::defaults_patch`].
//!
//! Who enforces quotas is the `quota` ownership flag, per Session (namespace, name): when the
//! controller owns the Session the validating webhook decides; when the legacy side owns or
//! shadows it, the webhook admits it (the API's legacy handlers check the quota themselves).
//! The mutating webhook's defaults apply whatever the flag says.
//!
//! Only the API server should call these endpoints: with a client CA configured the listener
//! refuses TLS clients without a certificate it signed ([`server`]), and a reservation is only
//! written for a well-formed, non-dry-run review of a Session.

pub mod certs;
pub mod defaults;
mod review;
pub mod server;
pub mod settings;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

use crate::crd::{QuotaPolicy, Template};
use crate::metrics::AdmissionMetrics;
use crate::ownership::index::FlagIndex;
use crate::quota::Policy;
use crate::quota::store::LedgerStore;
use certs::{CertFiles, CertResolver, SelfManaged, SelfManagedConfig};
pub use settings::{CertMode, SERVICE_NAME, WebhookSettings};

/// Path of the validating (quota) webhook.
pub const VALIDATE_PATH: &str = "/validate-session";
/// Path of the mutating (defaults) webhook.
pub const MUTATE_PATH: &str = "/mutate-session";
/// How long a request waits for the watch caches after start-up before failing.
const CACHE_WAIT: Duration = Duration::from_secs(5);

/// Where the serving certificate comes from.
#[derive(Clone, Debug)]
pub enum CertSource {
    Files(CertFiles),
    SelfManaged(SelfManagedConfig),
}

/// Everything the webhooks need, resolved from the command line or built by a test.
#[derive(Clone, Debug)]
pub struct AdmissionConfig {
    pub addr: SocketAddr,
    pub certs: CertSource,
    /// Ownership flags; the `quota` flag decides who enforces quotas. May be the index the
    /// controller uses (it is watched once, whoever runs it first).
    pub flags: Arc<FlagIndex>,
    /// Namespace of the QuotaPolicies; `None` reads them from all namespaces.
    pub policy_namespace: Option<String>,
    /// Namespace of the Sessions and Templates; `None` is all namespaces.
    pub session_namespace: Option<String>,
    /// Namespace of the per-user quota ledgers (ConfigMaps); the API's legacy quota uses the
    /// same ones when it runs in this namespace.
    pub ledger_namespace: String,
    /// PEM bundle of the CA of the API server's client certificate; `None` accepts any client.
    pub client_ca: Option<PathBuf>,
    /// Whether `0s` may switch a Session's idle or maximum-duration timer off.
    pub allow_disabled_timers: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error("webhook certificate: {0}")]
    Certs(#[from] certs::CertError),
    #[error("binding the webhook listener: {0}")]
    Bind(#[source] std::io::Error),
    #[error("webhook client CA {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
}

impl AdmissionError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            AdmissionError::Certs(e) => e.metric_label(),
            AdmissionError::Bind(_) => "bind",
            AdmissionError::ClientCa { .. } => "client_ca",
        }
    }
}

/// The caches and switches every admission decision reads.
pub struct AdmissionState {
    policies: Store<QuotaPolicy>,
    sessions: Store<crate::crd::Session>,
    templates: Store<Template>,
    flags: Arc<FlagIndex>,
    /// The reservation ledgers shared with every other replica.
    ledger: LedgerStore,
    allow_disabled_timers: bool,
    metrics: AdmissionMetrics,
}

/// A running webhook server.
pub struct Webhook {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    pub resolver: Arc<CertResolver>,
    /// The self-managed certificate, to force a re-issue.
    pub self_managed: Option<Arc<SelfManaged>>,
    pub state: Arc<AdmissionState>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Webhook {
    /// Waits until the server stops (after the shutdown signal given to [`start`]).
    pub async fn wait(mut self) -> std::io::Result<()> {
        (&mut self.server)
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }

    /// True once every watch cache has its initial list.
    pub async fn ready(&self) -> bool {
        self.state.wait_ready(WAIT_FOREVER).await
    }
}

const WAIT_FOREVER: Duration = Duration::from_secs(3600);

impl Drop for Webhook {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.server.abort();
    }
}

/// A reflector whose stream runs in its own task; malformed objects are skipped by the
/// watcher's lenient types, errors are retried with backoff.
fn cache<K>(
    api: Api<K>,
    mut inspect: impl FnMut(&K) + Send + 'static,
) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, stream) = crate::caches::reflect(api, watcher::Config::default());
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(object) => inspect(&object),
                Err(e) => debug!(error = %e, "admission watch error; retrying"),
            }
        }
    });
    (store, task)
}

/// Session and Template caches of the rest of the process (the controller's shared caches),
/// read instead of watches of the webhooks' own; the caller also feeds the flag index.
pub struct SharedCaches {
    pub sessions: Store<crate::crd::Session>,
    pub templates: Store<Template>,
}

/// Starts the watches, the certificate machinery and the HTTPS server; the server stops when
/// `shutdown` resolves.
pub async fn start(
    client: Client,
    config: AdmissionConfig,
    metrics: AdmissionMetrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Webhook, AdmissionError> {
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(AdmissionError::Bind)?;
    start_on(client, config, listener, None, metrics, shutdown).await
}

/// Like [`start`], on a listener the caller bound (processes bind every port before starting
/// anything) and, with `shared`, reading the caller's caches.
pub async fn start_on(
    client: Client,
    config: AdmissionConfig,
    listener: tokio::net::TcpListener,
    shared: Option<SharedCaches>,
    metrics: AdmissionMetrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Webhook, AdmissionError> {
    let mut tasks = Vec::new();
    let (resolver, self_managed) = match &config.certs {
        CertSource::Files(files) => {
            let resolver = CertResolver::new(files.load()?);
            tasks.push(tokio::spawn(
                files.clone().watch(resolver.clone(), metrics.clone()),
            ));
            (resolver, None)
        }
        CertSource::SelfManaged(self_config) => {
            let manager =
                SelfManaged::start(client.clone(), self_config.clone(), metrics.clone()).await?;
            tasks.push(tokio::spawn(manager.clone().run()));
            (manager.resolver(), Some(manager))
        }
    };
    let (policies, task) = cache::<QuotaPolicy>(
        crate::caches::scoped(&client, config.policy_namespace.as_deref()),
        |policy| {
            let (_, invalid) = Policy::from_object(policy);
            if !invalid.is_empty() {
                warn!(policy = ?policy.metadata.name, problems = ?invalid, "QuotaPolicy has unusable limits; they are ignored");
            }
        },
    );
    tasks.push(task);
    let (sessions, templates) = match shared {
        Some(shared) => (shared.sessions, shared.templates),
        None => {
            let ns = config.session_namespace.as_deref();
            let (sessions, task) = cache(crate::caches::scoped(&client, ns), |_| {});
            tasks.push(task);
            let (templates, task) = cache(crate::caches::scoped(&client, ns), |_| {});
            tasks.push(task);
            // Returns at once when another component of this process watches the flags.
            tasks.push(tokio::spawn(config.flags.clone().run(client.clone())));
            (sessions, templates)
        }
    };
    let client_ca_error = |reason: String| AdmissionError::ClientCa {
        path: config.client_ca.clone().unwrap_or_default(),
        reason,
    };
    let client_ca = match &config.client_ca {
        Some(path) => Some(server::client_roots(path).map_err(client_ca_error)?),
        None => None,
    };
    let tls = server::tls_config_for_clients(resolver.clone(), client_ca)
        .map_err(|e| client_ca_error(e.to_string()))?;
    let state = Arc::new(AdmissionState {
        policies,
        sessions,
        templates,
        flags: config.flags.clone(),
        ledger: LedgerStore::new(client.clone(), &config.ledger_namespace),
        allow_disabled_timers: config.allow_disabled_timers,
        metrics,
    });
    let addr = listener.local_addr().map_err(AdmissionError::Bind)?;
    let server = tokio::spawn(server::serve(
        listener,
        tls,
        router(state.clone()),
        state.metrics.clone(),
        shutdown,
    ));
    Ok(Webhook {
        addr,
        resolver,
        self_managed,
        state,
        tasks,
        server,
    })
}

/// The webhook routes.
pub fn router(state: Arc<AdmissionState>) -> Router {
    Router::new()
        .route(VALIDATE_PATH, post(validate))
        .route(MUTATE_PATH, post(mutate))
        .with_state(state)
}

/// The answer to a body that is not an AdmissionReview with a request: HTTP 400 and an
/// AdmissionReview whose response says why.
fn invalid_review(reason: String) -> Response {
    let review = AdmissionResponse::invalid(reason).into_review();
    (StatusCode::BAD_REQUEST, axum::Json(review)).into_response()
}

fn parse_review(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, String> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not an AdmissionReview: {e}"))?;
    review
        .try_into()
        .map_err(|_| "the AdmissionReview has no request".to_string())
}

/// A review of a Session itself (not a subresource such as `status`): the only requests these
/// webhooks decide; anything else is allowed unchanged and reserves nothing.
fn is_session(request: &AdmissionRequest<DynamicObject>) -> bool {
    request.kind.group == crate::crd::GROUP
        && request.kind.kind == "Session"
        && request.sub_resource.as_deref().is_none_or(str::is_empty)
}

fn respond(response: AdmissionResponse) -> Response {
    axum::Json(response.into_review()).into_response()
}

/// One review through either webhook: parse it, allow what is not a Session unchanged, let
/// `decide` answer the rest, and count the outcome under `webhook` with its duration.
async fn review(
    state: &AdmissionState,
    webhook: &'static str,
    body: &[u8],
    decide: impl AsyncFnOnce(&AdmissionRequest<DynamicObject>) -> (&'static str, AdmissionResponse),
) -> Response {
    let started = Instant::now();
    let (result, response) = match parse_review(body) {
        Err(reason) => ("invalid", invalid_review(reason)),
        Ok(request) if !is_session(&request) => {
            ("ignored", respond(AdmissionResponse::from(&request)))
        }
        Ok(request) => {
            let (result, response) = decide(&request).await;
            (result, respond(response))
        }
    };
    state
        .metrics
        .request(webhook, result, started.elapsed().as_secs_f64());
    response
}

async fn validate(State(state): State<Arc<AdmissionState>>, body: Bytes) -> Response {
    review(&state, "validate", &body, async |request| {
        state.validate(request).await
    })
    .await
}

async fn mutate(State(state): State<Arc<AdmissionState>>, body: Bytes) -> Response {
    review(&state, "mutate", &body, async |request| {
        state.mutate(request)
    })
    .await
}

impl AdmissionState {
    /// The QuotaPolicy watch cache.
    pub fn policies(&self) -> &Store<QuotaPolicy> {
        &self.policies
    }

    /// The Session watch cache (usage).
    pub fn sessions(&self) -> &Store<crate::crd::Session> {
        &self.sessions
    }

    /// The Template watch cache.
    pub fn templates(&self) -> &Store<Template> {
        &self.templates
    }

    async fn wait_ready(&self, limit: Duration) -> bool {
        let all = async {
            self.policies.wait_until_ready().await.is_ok()
                && self.sessions.wait_until_ready().await.is_ok()
                && self.templates.wait_until_ready().await.is_ok()
        };
        tokio::time::timeout(limit, all).await.unwrap_or(false)
    }
}

#[cfg(test)]
mod tests;
