//! Admission webhooks for Sessions: quota (validating) and defaults (mutating), served over
//! TLS by the controller process.
//!
//! Data model: three watch caches (QuotaPolicies of the policy namespace, Sessions and
//! Templates of the watched namespaces) plus a short-lived list of admissions not yet seen by
//! the Session watch ("reservations"). A decision reads only these, never the API server, and
//! decisions are serialised so two concurrent creates cannot both take the last free slot.
//! The decisions themselves are pure: [`quota::decide`] and [`defaults::defaults_patch`].
//!
//! Who enforces quotas is the `quota` ownership flag, per Session (namespace, name): when the
//! controller owns the Session the validating webhook decides; when the legacy side owns or
//! shadows it, the webhook admits it (the API's legacy handler checks the quota itself). The
//! mutating webhook's defaults apply whatever the flag says.

pub mod certs;
pub mod defaults;
pub mod quota;
pub mod server;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

use crate::crd::{QuotaPolicy, SessionSpec, SessionState, Template};
use crate::metrics::AdmissionMetrics;
use crate::ownership::index::FlagIndex;
use crate::ownership::{ResourceType, Side};
use certs::{CertFiles, CertResolver, SelfManaged, SelfManagedConfig};
use quota::{Decision, Policy, Request, Usage};

/// Path of the validating (quota) webhook.
pub const VALIDATE_PATH: &str = "/validate-session";
/// Path of the mutating (defaults) webhook.
pub const MUTATE_PATH: &str = "/mutate-session";
/// How long an admitted session counts before the Session watch has delivered it.
pub const RESERVATION_TTL: Duration = Duration::from_secs(10);
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
}

#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error("webhook certificate: {0}")]
    Certs(#[from] certs::CertError),
    #[error("binding the webhook listener: {0}")]
    Bind(#[source] std::io::Error),
}

impl AdmissionError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            AdmissionError::Certs(e) => e.metric_label(),
            AdmissionError::Bind(_) => "bind",
        }
    }
}

/// An admitted running session not yet in the Session cache.
#[derive(Clone, Debug)]
struct Reservation {
    user: String,
    request: Request,
    at: Instant,
}

/// The caches and switches every admission decision reads.
pub struct AdmissionState {
    policies: Store<QuotaPolicy>,
    sessions: Store<crate::crd::Session>,
    templates: Store<Template>,
    flags: Arc<FlagIndex>,
    /// Keyed by (namespace, name).
    reservations: Mutex<HashMap<(String, String), Reservation>>,
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
    let state = Arc::new(AdmissionState {
        policies,
        sessions,
        templates,
        flags: config.flags.clone(),
        reservations: Mutex::new(HashMap::new()),
        metrics,
    });
    let addr = listener.local_addr().map_err(AdmissionError::Bind)?;
    let server = tokio::spawn(server::serve(
        listener,
        resolver.clone(),
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

fn is_session(request: &AdmissionRequest<DynamicObject>) -> bool {
    request.kind.group == crate::crd::GROUP && request.kind.kind == "Session"
}

fn spec_of(object: Option<&DynamicObject>) -> Result<Option<SessionSpec>, String> {
    match object.and_then(|o| o.data.get("spec")) {
        None => Ok(None),
        Some(spec) => serde_json::from_value(spec.clone())
            .map(Some)
            .map_err(|e| format!("invalid Session spec: {e}")),
    }
}

fn respond(response: AdmissionResponse) -> Response {
    axum::Json(response.into_review()).into_response()
}

async fn validate(State(state): State<Arc<AdmissionState>>, body: Bytes) -> Response {
    let started = Instant::now();
    let (result, response) = match parse_review(&body) {
        Err(reason) => ("invalid", invalid_review(reason)),
        Ok(request) if !is_session(&request) => {
            ("ignored", respond(AdmissionResponse::from(&request)))
        }
        Ok(request) => {
            let (result, response) = state.validate(&request).await;
            (result, respond(response))
        }
    };
    state
        .metrics
        .request("validate", result, started.elapsed().as_secs_f64());
    response
}

async fn mutate(State(state): State<Arc<AdmissionState>>, body: Bytes) -> Response {
    let started = Instant::now();
    let (result, response) = match parse_review(&body) {
        Err(reason) => ("invalid", invalid_review(reason)),
        Ok(request) if !is_session(&request) => {
            ("ignored", respond(AdmissionResponse::from(&request)))
        }
        Ok(request) => {
            let (result, response) = state.mutate(&request);
            (result, respond(response))
        }
    };
    state
        .metrics
        .request("mutate", result, started.elapsed().as_secs_f64());
    response
}

fn deny(
    request: &AdmissionRequest<DynamicObject>,
    code: u16,
    message: String,
) -> AdmissionResponse {
    let mut response = AdmissionResponse::from(request).deny(message);
    response.result.code = code;
    response.result.reason = match code {
        400 => "BadRequest",
        403 => "Forbidden",
        503 => "ServiceUnavailable",
        _ => "InternalError",
    }
    .into();
    response
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

    /// The quota check of one Session request: (metric result, response).
    async fn validate(
        &self,
        request: &AdmissionRequest<DynamicObject>,
    ) -> (&'static str, AdmissionResponse) {
        if tokio::time::timeout(CACHE_WAIT, self.flags.wait_loaded())
            .await
            .is_err()
        {
            return (
                "denied",
                deny(
                    request,
                    503,
                    "ownership flags are still loading; retry shortly".into(),
                ),
            );
        }
        let namespace = request.namespace.as_deref().unwrap_or_default();
        let owner = self
            .flags
            .owner(ResourceType::Quota, namespace, &request.name);
        if owner.acting_side() != Side::Controller {
            // The legacy API checks quota in its create handler.
            return ("allowed", AdmissionResponse::from(request));
        }
        let new = match spec_of(request.object.as_ref()) {
            Ok(Some(spec)) => spec,
            Ok(None) => return ("allowed", AdmissionResponse::from(request)),
            Err(message) => return ("denied", deny(request, 400, message)),
        };
        let key = (
            request.namespace.clone().unwrap_or_default(),
            if request.name.is_empty() {
                request.uid.clone()
            } else {
                request.name.clone()
            },
        );
        let running = new.desired_state() == SessionState::Running;
        let check = match request.operation {
            Operation::Create => running,
            Operation::Update => {
                let old = spec_of(request.old_object.as_ref()).ok().flatten();
                running
                    && old.is_none_or(|old| {
                        old.desired_state() != SessionState::Running
                            || !quota::same_request(old.resources.as_ref(), new.resources.as_ref())
                    })
            }
            _ => false,
        };
        if !running {
            // Hibernating or terminating frees the slot at once.
            self.lock_reservations().remove(&key);
        }
        if !check {
            return ("allowed", AdmissionResponse::from(request));
        }
        let wanted = match Request::of(new.resources.as_ref()) {
            Ok(wanted) => wanted,
            Err(message) => return ("denied", deny(request, 403, message)),
        };
        if !self.wait_ready(CACHE_WAIT).await {
            return (
                "denied",
                deny(
                    request,
                    503,
                    "quota caches are still loading; retry shortly".into(),
                ),
            );
        }
        let mut reservations = self.lock_reservations();
        reservations.retain(|_, r| r.at.elapsed() < RESERVATION_TTL);
        let decision = self.decide(&new.user, &key, &wanted, &reservations);
        match decision {
            Decision::Allowed => {
                if !request.dry_run {
                    reservations.insert(
                        key,
                        Reservation {
                            user: new.user.clone(),
                            request: wanted,
                            at: Instant::now(),
                        },
                    );
                }
                ("allowed", AdmissionResponse::from(request))
            }
            Decision::Denied { message } => ("denied", deny(request, 403, message)),
        }
    }

    fn lock_reservations(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(String, String), Reservation>> {
        self.reservations.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The decision for `user` asking for `wanted` in the session `key`.
    fn decide(
        &self,
        user: &str,
        key: &(String, String),
        wanted: &Request,
        reservations: &HashMap<(String, String), Reservation>,
    ) -> Decision {
        let policies: Vec<Policy> = self
            .policies
            .state()
            .iter()
            .map(|p| Policy::from_object(p).0)
            .collect();
        let limits = quota::effective_limits(user, &policies);
        let usage = self.usage(user, key, reservations);
        quota::decide(&limits, &usage, wanted)
    }

    /// What `user`'s running sessions use, the session `key` excluded: the Session cache plus
    /// fresh reservations the cache does not show running yet. Runs on every check, so it
    /// allocates nothing per cached session.
    fn usage(
        &self,
        user: &str,
        key: &(String, String),
        reservations: &HashMap<(String, String), Reservation>,
    ) -> Usage {
        let is_running = |session: &crate::crd::Session| {
            session
                .spec
                .state
                .as_ref()
                .is_none_or(|state| *state == SessionState::Running)
        };
        let mut usage = Usage::default();
        for session in self.sessions.state() {
            if session.spec.user != user || !is_running(&session) {
                continue;
            }
            let is_key = session.metadata.namespace.as_deref() == Some(key.0.as_str())
                && session.metadata.name.as_deref() == Some(key.1.as_str());
            if !is_key {
                // A stored session whose resources no longer parse counts with the defaults.
                usage.add(
                    &Request::of(session.spec.resources.as_ref())
                        .unwrap_or(Request::SYSTEM_DEFAULT),
                );
            }
        }
        for ((namespace, name), reservation) in reservations {
            if reservation.user != user
                || (namespace, name) == (&key.0, &key.1)
                || reservation.at.elapsed() >= RESERVATION_TTL
            {
                continue;
            }
            let cached = self
                .sessions
                .get(&reflector::ObjectRef::new(name).within(namespace));
            if !cached.is_some_and(|s| is_running(&s)) {
                usage.add(&reservation.request);
            }
        }
        usage
    }

    /// The defaults patch of one Session request: (metric result, response).
    fn mutate(
        &self,
        request: &AdmissionRequest<DynamicObject>,
    ) -> (&'static str, AdmissionResponse) {
        let Some(object) = request.object.as_ref() else {
            return ("allowed", AdmissionResponse::from(request));
        };
        let value = match serde_json::to_value(object) {
            Ok(value) => value,
            Err(e) => {
                return (
                    "invalid",
                    deny(request, 400, format!("unreadable Session: {e}")),
                );
            }
        };
        let namespace = request.namespace.clone().unwrap_or_default();
        let template = value
            .pointer("/spec/template")
            .and_then(serde_json::Value::as_str)
            .and_then(|name| {
                self.templates
                    .get(&reflector::ObjectRef::new(name).within(&namespace))
            });
        let stage = match request.operation {
            Operation::Create => defaults::Stage::Create,
            _ => defaults::Stage::Update,
        };
        let patch = defaults::defaults_patch(&value, template.as_ref().map(|t| &t.spec), stage);
        if patch.0.is_empty() {
            return ("allowed", AdmissionResponse::from(request));
        }
        match AdmissionResponse::from(request).with_patch(patch) {
            Ok(response) => ("patched", response),
            Err(e) => (
                "invalid",
                deny(request, 500, format!("building the patch: {e}")),
            ),
        }
    }
}

/// Command-line settings of the webhooks (part of `controller`).
#[derive(clap::Args, Clone, Debug)]
pub struct WebhookSettings {
    /// Serve the admission webhooks over HTTPS on this address (default: no webhooks).
    #[arg(long, env = "WEBHOOK_ADDR")]
    pub webhook_addr: Option<SocketAddr>,
    /// Serving certificate: `files` (reloaded on change) or `self-managed` (CA and certificate
    /// in a Secret, caBundle written into the webhook configurations, renewed automatically).
    #[arg(
        long,
        env = "WEBHOOK_CERT_MODE",
        value_enum,
        default_value = "self-managed"
    )]
    pub webhook_cert_mode: CertMode,
    /// Certificate file in `files` mode.
    #[arg(long, env = "WEBHOOK_CERT_FILE", default_value = "/tls/tls.crt")]
    pub webhook_cert_file: PathBuf,
    /// Key file in `files` mode.
    #[arg(long, env = "WEBHOOK_KEY_FILE", default_value = "/tls/tls.key")]
    pub webhook_key_file: PathBuf,
    /// Namespace of the controller: its certificate Secret and, by default, QuotaPolicies.
    #[arg(long, env = "POD_NAMESPACE", default_value = "streamspace")]
    pub webhook_namespace: String,
    /// Secret holding the self-managed CA and serving certificate.
    #[arg(
        long,
        env = "WEBHOOK_SECRET",
        default_value = "streamspace-controller-webhook-tls"
    )]
    pub webhook_secret: String,
    /// DNS names and IPs of the self-managed certificate (default: the webhook Service's).
    #[arg(long, env = "WEBHOOK_DNS_NAMES", value_delimiter = ',')]
    pub webhook_dns_names: Vec<String>,
    /// ValidatingWebhookConfiguration whose caBundle the self-managed mode writes.
    #[arg(
        long,
        env = "VALIDATING_WEBHOOK_CONFIG",
        default_value = "streamspace-controller"
    )]
    pub validating_webhook_config: String,
    /// MutatingWebhookConfiguration whose caBundle the self-managed mode writes.
    #[arg(
        long,
        env = "MUTATING_WEBHOOK_CONFIG",
        default_value = "streamspace-controller"
    )]
    pub mutating_webhook_config: String,
    /// Namespace of QuotaPolicies (default: the controller's namespace).
    #[arg(long, env = "QUOTA_NAMESPACE")]
    pub quota_namespace: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CertMode {
    Files,
    SelfManaged,
}

/// Name of the webhook Service the default certificate names point at.
pub const SERVICE_NAME: &str = "streamspace-controller-webhook";

impl WebhookSettings {
    /// The admission configuration, or `None` when no `--webhook-addr` is given. `flags`
    /// decide who enforces quotas (pass the controller's index when both run together).
    pub fn to_config(
        &self,
        session_namespace: Option<String>,
        flags: Arc<FlagIndex>,
    ) -> Option<AdmissionConfig> {
        let addr = self.webhook_addr?;
        let ns = &self.webhook_namespace;
        let certs = match self.webhook_cert_mode {
            CertMode::Files => CertSource::Files(CertFiles {
                cert: self.webhook_cert_file.clone(),
                key: self.webhook_key_file.clone(),
            }),
            CertMode::SelfManaged => CertSource::SelfManaged(SelfManagedConfig {
                namespace: ns.clone(),
                secret: self.webhook_secret.clone(),
                names: if self.webhook_dns_names.is_empty() {
                    vec![
                        format!("{SERVICE_NAME}.{ns}.svc"),
                        format!("{SERVICE_NAME}.{ns}.svc.cluster.local"),
                    ]
                } else {
                    self.webhook_dns_names.clone()
                },
                validating_configs: vec![self.validating_webhook_config.clone()],
                mutating_configs: vec![self.mutating_webhook_config.clone()],
            }),
        };
        Some(AdmissionConfig {
            addr,
            certs,
            flags,
            policy_namespace: Some(self.quota_namespace.clone().unwrap_or_else(|| ns.clone())),
            session_namespace,
        })
    }
}
