//! The `api` subcommand: the StreamSpace-compatible API. Every route is listed once, in
//! [`routes::table`] (area by area), from which both the router and the OpenAPI document
//! (`/api/v1/openapi.json`) are built; docs/api.md describes each. One layer (`timing`)
//! counts and times every route's requests under the route's fixed metric label, so handlers
//! carry no timing code.
//!
//! - sessions: create, list, by tags, get, state, tags, delete ([`sessions`], a file per
//!   concern under `sessions/`);
//! - activity and connections: heartbeat, connect, disconnect, connections (`handlers`,
//!   [`activity`], [`connections`]);
//! - templates and quota ([`ui`]); flags ([`flags`]); admin nodes ([`nodes`]);
//! - live views: cluster statistics, WebSockets of sessions and of the cluster ([`live`]);
//! - the rollout console: `/console`, its state and the flags WebSocket (`console`);
//! - `/healthz`, `/readyz`, `/metrics`, `/api/v1/openapi.json`: unauthenticated.
//!
//! Every other `/api/v1` route needs a bearer token ([`auth`]). Sessions live in one namespace
//! from configuration (default `streamspace`). The process is stateless apart from coalesced
//! activity not yet written (at most one flush interval): connections are Leases in the API
//! server ([`connections`]), shared by every replica.
//!
//! Besides requests, the legacy idle monitor ([`idle`]) hibernates idle sessions the `idle`
//! flag gives to the legacy side (one replica at a time, by a Lease).

pub mod activity;
pub mod auth;
pub mod autostart;
pub mod connections;
mod console;
mod error;
pub mod events;
pub mod flags;
mod handlers;
pub mod idle;
pub mod live;
pub mod nodes;
pub mod routes;
pub mod sessions;
pub mod settings;
mod timing;
pub mod tls;
pub mod ui;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tracing::{info, warn};

use crate::crd::{Session, Template};
use crate::metrics::SharedMetrics;
use crate::ownership::index::{FlagIndex, FlagSettings};
use crate::session::objects::SessionSettings;
use activity::{ActivityBuffer, Flusher};
use auth::Authenticator;
use events::EventSender;
use k8s_openapi::api::coordination::v1::Lease;

/// Default namespace of sessions.
pub const DEFAULT_NAMESPACE: &str = "streamspace";

#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub namespace: String,
    /// Longest time activity stays in memory before it is written (see [`activity`]).
    pub flush_interval: Duration,
    /// Base URL of the controller's HTTP server, such as `http://streamspace-controller:8080`;
    /// `None` sends no events (the `wake-requested` annotation alone wakes sessions).
    pub controller_url: Option<String>,
    /// Bearer token of the controller's `POST /events/connection`.
    pub connection_event_token: Option<String>,
    /// Ownership flags: which handler (legacy or controller) serves each object.
    pub flags: Arc<FlagIndex>,
    /// Node endpoints: labels of the NodeOperations they create, legacy drains.
    pub nodes: nodes::NodeSettings,
    /// Settings of the objects the legacy session handlers build (the controller's own).
    pub session: SessionSettings,
    /// Whether a new session may switch its idle or duration timer off with `0s`.
    pub allow_disabled_timers: bool,
    /// Limits of the sessions WebSocket.
    pub streams: live::StreamSettings,
    /// How long a connection stays open after its last `connect` or heartbeat (whole
    /// seconds, at least 1 s).
    pub connection_expiry: Duration,
    /// Hibernate a running session when its last connection disconnects (the old API's
    /// connection tracker did; off by default: the idle reconciler hibernates idle sessions).
    pub hibernate_on_last_disconnect: bool,
    /// The legacy idle monitor ([`idle`]); `None` runs none.
    pub idle_monitor: Option<idle::IdleMonitorSettings>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            namespace: DEFAULT_NAMESPACE.into(),
            flush_interval: activity::DEFAULT_FLUSH_INTERVAL,
            controller_url: None,
            connection_event_token: None,
            flags: FlagIndex::new(FlagSettings::default()),
            nodes: nodes::NodeSettings::default(),
            session: SessionSettings::default(),
            allow_disabled_timers: false,
            streams: live::StreamSettings::default(),
            connection_expiry: connections::DEFAULT_EXPIRY,
            hibernate_on_last_disconnect: false,
            idle_monitor: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid controller URL: {0}")]
    ControllerUrl(#[from] events::SendError),
    #[error("namespace {0:?} is not a valid Kubernetes name")]
    Namespace(String),
    #[error("the flush interval must be at least 10ms")]
    FlushInterval,
    #[error("the connection expiry must be whole seconds, at least 1s")]
    ConnectionExpiry,
    #[error("building the eviction client: {0}")]
    EvictionClient(#[source] kube::Error),
}

/// Shared by every request.
pub(crate) struct ApiState {
    client: Client,
    namespace: String,
    auth: Arc<dyn Authenticator>,
    activity: Arc<ActivityBuffer>,
    sessions: Store<Session>,
    sessions_loaded: AtomicBool,
    events: Option<EventSender>,
    metrics: SharedMetrics,
    /// Open connections of every session, shared by every replica through the API server.
    connections: connections::ConnectionStore,
    hibernate_on_last_disconnect: bool,
    /// Templates of the namespace, from this process's one Template watch.
    templates: Store<Template>,
    templates_loaded: AtomicBool,
    /// Open session streams per user.
    streams: Arc<connections::StreamSlots>,
    stream_settings: live::StreamSettings,
    connection_counter: AtomicU64,
    flags: Arc<FlagIndex>,
    /// Node caches and legacy drains.
    nodes: nodes::NodeState,
    /// Bumped on every change the session watch reports (and when the cache has loaded);
    /// what WebSocket streams wait on.
    session_changes: tokio::sync::watch::Sender<u64>,
    session_api: sessions::SessionsShared,
}

impl ApiState {
    /// Who sent the request (401 without a valid token).
    pub(crate) async fn principal(
        &self,
        headers: &axum::http::HeaderMap,
    ) -> Result<auth::Principal, handlers::ApiError> {
        Ok(self.auth.authenticate(headers).await?)
    }

    /// 403 unless `principal` has `permission`.
    pub(crate) async fn require(
        &self,
        principal: &auth::Principal,
        permission: auth::Permission,
    ) -> Result<(), handlers::ApiError> {
        if self.auth.authorize(principal, permission).await? {
            Ok(())
        } else {
            Err(handlers::ApiError::Forbidden(format!(
                "{} may not {}",
                principal.name,
                permission.describe()
            )))
        }
    }

    /// Whether `principal` may act with `verb` on session `id`, whose `spec.user` is `owner`
    /// (`None`: it does not exist). Its owner may; anyone else needs the operator right
    /// (`OperateSessions(verb)`). Refusal comes before existence: without the right the answer
    /// is the same 403 whether the session is someone else's or missing, so ids cannot be
    /// probed; with it, a missing session is a 404.
    pub(crate) async fn require_session_access(
        &self,
        principal: &auth::Principal,
        owner: Option<&str>,
        id: &str,
        verb: &'static str,
    ) -> Result<(), handlers::ApiError> {
        if owner == Some(principal.name.as_str()) {
            return Ok(());
        }
        let permission = auth::Permission::OperateSessions(verb);
        if !self.auth.authorize(principal, permission).await? {
            return Err(handlers::ApiError::Forbidden(session_refusal(
                &principal.name,
                verb,
                id,
            )));
        }
        match owner {
            Some(_) => Ok(()),
            None => Err(handlers::ApiError::NotFound(id.to_string())),
        }
    }

    /// Open connections to a session, through any replica.
    fn active_connections(&self, session: &str) -> usize {
        self.connections
            .count(session, k8s_openapi::jiff::Timestamp::now())
    }

    /// Ownership flags of this process.
    pub(crate) fn flags(&self) -> &Arc<FlagIndex> {
        &self.flags
    }

    fn sessions(&self) -> Api<Session> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Session `name` for `principal` acting with `verb`, `None` if it does not exist: from
    /// the watch cache when it is theirs or they may act on every session, else from the API
    /// server (as when the cache does not have it: not loaded yet, or created a moment ago).
    /// For a caller without the right, another user's session thus costs the same read as a
    /// missing one, so the time of the (same) 403 does not tell them apart.
    async fn session_for(
        &self,
        name: &str,
        principal: &auth::Principal,
        verb: &'static str,
    ) -> Result<Option<Session>, handlers::ApiError> {
        let cached = self
            .sessions_loaded
            .load(Ordering::Relaxed)
            .then(|| {
                self.sessions
                    .get(&ObjectRef::new(name).within(&self.namespace))
            })
            .flatten();
        if let Some(session) = cached {
            let permission = auth::Permission::OperateSessions(verb);
            if session.spec.user == principal.name
                || self.auth.authorize(principal, permission).await?
            {
                return Ok(Some(Session::clone(&session)));
            }
        }
        Ok(self.sessions().get_opt(name).await?)
    }

    /// The `spec.user` of a session, `None` if it does not exist (see [`Self::session_for`]).
    async fn session_user(
        &self,
        name: &str,
        principal: &auth::Principal,
        verb: &'static str,
    ) -> Result<Option<String>, handlers::ApiError> {
        Ok(self
            .session_for(name, principal, verb)
            .await?
            .map(|s| s.spec.user))
    }
}

/// The API's router and the background work it needs (session cache, activity flusher).
pub struct ApiService {
    pub router: Router,
    /// Runs until dropped; drive it on a task of its own.
    pub background: BoxFuture<'static, ()>,
}

pub fn build(
    client: Client,
    config: ApiConfig,
    auth: Arc<dyn Authenticator>,
    metrics: SharedMetrics,
) -> Result<ApiService, StartError> {
    check_config(&config)?;
    let events = event_sender(&config)?;
    let (sessions, session_watch) = session_watch(&client, &config.namespace);
    let activity = Arc::new(ActivityBuffer::new(config.flush_interval));
    let lease_api = Api::<Lease>::namespaced(client.clone(), &config.namespace);
    let (leases, lease_watch) = crate::caches::reflect(
        lease_api.clone(),
        connections::ConnectionStore::watch_config(),
    );
    let (templates, template_watch) = crate::caches::reflect(
        Api::<Template>::namespaced(client.clone(), &config.namespace),
        watcher::Config::default(),
    );
    let (node_state, node_watch) =
        nodes::NodeState::start(&client, config.nodes.clone(), metrics.clone())
            .map_err(StartError::EvictionClient)?;
    let (session_api, session_watches) = sessions::SessionsShared::new(
        &client,
        &config.namespace,
        config.session.clone(),
        config.allow_disabled_timers,
    );
    let state = Arc::new(ApiState {
        client: client.clone(),
        namespace: config.namespace.clone(),
        auth,
        activity: activity.clone(),
        sessions: sessions.clone(),
        sessions_loaded: AtomicBool::new(false),
        events,
        metrics: metrics.clone(),
        connections: connections::ConnectionStore::new(
            lease_api,
            leases.clone(),
            config.connection_expiry,
        ),
        hibernate_on_last_disconnect: config.hibernate_on_last_disconnect,
        templates: templates.clone(),
        templates_loaded: AtomicBool::new(false),
        streams: connections::StreamSlots::new(
            config.streams.max_per_user,
            config.streams.max_total,
        ),
        stream_settings: config.streams.clone(),
        connection_counter: AtomicU64::new(0),
        flags: config.flags.clone(),
        nodes: node_state,
        session_changes: tokio::sync::watch::Sender::new(0),
        session_api,
    });
    let background = Background {
        session_watch,
        sessions: sessions.clone(),
        session_watches,
        leases,
        lease_watch,
        templates,
        template_watch,
        node_watch,
        flag_watch: config.flags.clone().run(client.clone()).boxed(),
        flusher: Flusher {
            client,
            namespace: config.namespace.clone(),
            buffer: activity,
            sessions,
            metrics,
        },
        idle_monitor: config.idle_monitor.clone(),
    };
    Ok(ApiService {
        router: router(state.clone()),
        background: background.run(state).boxed(),
    })
}

/// Refuses settings the API cannot run with.
fn check_config(config: &ApiConfig) -> Result<(), StartError> {
    if !valid_name(&config.namespace) {
        return Err(StartError::Namespace(config.namespace.clone()));
    }
    if config.flush_interval < Duration::from_millis(10) {
        return Err(StartError::FlushInterval);
    }
    if config.connection_expiry < Duration::from_secs(1)
        || config.connection_expiry.subsec_nanos() != 0
    {
        return Err(StartError::ConnectionExpiry);
    }
    Ok(())
}

/// Where connection events go: the controller's URL, if configured.
fn event_sender(config: &ApiConfig) -> Result<Option<EventSender>, StartError> {
    Ok(
        match (&config.controller_url, &config.connection_event_token) {
            (Some(url), Some(token)) => Some(EventSender::new(url, token)?),
            (Some(url), None) => Some(EventSender::new(url, "")?),
            _ => None,
        },
    )
}

/// The Session watch of `namespace` and the store it fills; the stream yields every object
/// the watch touched, once the store shows it.
fn session_watch(
    client: &Client,
    namespace: &str,
) -> (
    Store<Session>,
    BoxStream<'static, Result<Session, watcher::Error>>,
) {
    let (sessions, writer) = reflector::store();
    let events = reflector::reflector(
        writer,
        watcher(
            Api::<Session>::namespaced(client.clone(), namespace),
            watcher::Config::default().any_semantic(),
        ),
    )
    .default_backoff();
    let watch = crate::caches::settled_objects(sessions.clone(), events);
    (sessions, watch)
}

/// Everything the API runs besides answering requests: its watches, the activity flusher,
/// the connection sweep and the legacy idle monitor.
struct Background {
    session_watch: BoxStream<'static, Result<Session, watcher::Error>>,
    sessions: Store<Session>,
    session_watches: sessions::Watches,
    leases: Store<Lease>,
    lease_watch: BoxStream<'static, Result<Lease, watcher::Error>>,
    templates: Store<Template>,
    template_watch: BoxStream<'static, Result<Template, watcher::Error>>,
    node_watch: BoxFuture<'static, ()>,
    flag_watch: BoxFuture<'static, ()>,
    flusher: Flusher,
    idle_monitor: Option<idle::IdleMonitorSettings>,
}

impl Background {
    /// Runs until dropped.
    async fn run(self, state: Arc<ApiState>) {
        let drive = self.session_watch.for_each(|event| {
            match event {
                Ok(session) => {
                    state.session_api.session_touched(&session);
                    notify_session_change(&state);
                }
                Err(error) => warn!(%error, "session watch failed; retrying"),
            }
            futures::future::ready(())
        });
        // The only waiter on this store (a store wakes one waiter only).
        let sessions = self.sessions;
        let loaded = async {
            if sessions.wait_until_ready().await.is_ok() {
                state.sessions_loaded.store(true, Ordering::Relaxed);
                notify_session_change(&state);
                info!("session cache loaded");
            }
        };
        let sessions_api = sessions::background(state.clone(), self.session_watches);
        let idle_monitor = self.idle_monitor;
        let monitor = async {
            if let Some(settings) = idle_monitor {
                idle::run(state.clone(), settings).await;
            }
        };
        let ui_caches = ui_caches(
            state.clone(),
            self.leases,
            self.lease_watch,
            self.templates,
            self.template_watch,
        );
        let caches = futures::future::join5(
            self.node_watch,
            sessions_api,
            sweep(state.clone()),
            ui_caches,
            monitor,
        );
        futures::future::join5(drive, loaded, self.flusher.run(), self.flag_watch, caches).await;
    }
}

/// Removes expired connections from the API server (every replica does; see
/// [`connections`]).
async fn sweep(state: Arc<ApiState>) {
    let mut ticker = tokio::time::interval(state.connections.sweep_interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if state.connections.loaded() {
            state
                .connections
                .sweep(k8s_openapi::jiff::Timestamp::now())
                .await;
        }
    }
}

/// Keeps the connection and template caches filled; a connection change is a change of what
/// session streams show (`activeConnections`), a template change one of the template list.
async fn ui_caches(
    state: Arc<ApiState>,
    leases: Store<Lease>,
    lease_watch: futures::stream::BoxStream<'static, Result<Lease, watcher::Error>>,
    templates: Store<Template>,
    template_watch: futures::stream::BoxStream<'static, Result<Template, watcher::Error>>,
) {
    let connections = lease_watch.for_each(|event| {
        match event {
            Ok(_) => notify_session_change(&state),
            Err(error) => warn!(%error, "connection watch failed; retrying"),
        }
        futures::future::ready(())
    });
    let template_changes = template_watch.for_each(|event| {
        if let Err(error) = event {
            warn!(%error, "template watch failed; retrying");
        }
        futures::future::ready(())
    });
    let leases_loaded = async {
        if leases.wait_until_ready().await.is_ok() {
            state.connections.set_loaded();
            notify_session_change(&state);
        }
    };
    let templates_loaded = async {
        if templates.wait_until_ready().await.is_ok() {
            state.templates_loaded.store(true, Ordering::Relaxed);
        }
    };
    futures::future::join4(
        connections,
        template_changes,
        leases_loaded,
        templates_loaded,
    )
    .await;
}

fn notify_session_change(state: &ApiState) {
    state
        .session_changes
        .send_modify(|n| *n = n.wrapping_add(1));
}

impl ApiState {
    /// The first cache still loading, `None` once every cache a request reads has loaded.
    fn loading(&self) -> Option<&'static str> {
        if !self.sessions_loaded.load(Ordering::Relaxed) {
            Some("sessions")
        } else if !self.flags.loaded() {
            Some("feature flags")
        } else if !self.nodes.cache_loaded() {
            Some("nodes and pods")
        } else if !self.connections.loaded() {
            Some("connections")
        } else if !self.templates_loaded.load(Ordering::Relaxed) {
            Some("templates")
        } else {
            None
        }
    }
}

/// `GET /readyz`: 200 once the watch caches have loaded, so a new replica gets traffic only
/// when it can answer from them.
async fn readyz(
    axum::extract::State(state): axum::extract::State<Arc<ApiState>>,
) -> (axum::http::StatusCode, String) {
    match state.loading() {
        None => (axum::http::StatusCode::OK, "ready".into()),
        Some(what) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("the {what} cache is still loading"),
        ),
    }
}

fn router(state: Arc<ApiState>) -> Router {
    routes::router(routes::table(), &state.metrics).with_state(state)
}

/// The one refusal of a session a caller may not act on, whether it exists or not.
pub fn session_refusal(user: &str, verb: &str, id: &str) -> String {
    format!("{user} may not {verb} session {id:?}: only its owner or an operator may")
}

pub use crate::wire::valid_name;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "alice-1", "a.b", "0x"] {
            assert!(valid_name(good), "{good}");
        }
        let long = "a".repeat(254);
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a/b",
            "..",
            long.as_str(),
            "a b",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
