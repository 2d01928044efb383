//! The controller's HTTP surface: `/healthz`, `/readyz`, `/metrics`, the authenticated
//! `POST /events/connection` through which the API asks for a wake, and `GET /flags`; the Git
//! push hooks are served on a listener of their own ([`hooks_router`]), so exposing them to a
//! forge does not expose the rest.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tracing::warn;

use crate::backoff::ReconcileError;
use crate::context::Readiness;
use crate::idle::wake::{Source, Waker};
use crate::metrics::SharedMetrics;
use crate::wire::{ConnectionEvent, EventReply, check_bearer, valid_name};

/// What `POST /events/connection` needs: the waker, the token, and the namespace the
/// controller watches (events for others are refused).
#[derive(Clone)]
pub struct ConnectionEvents {
    pub waker: Waker,
    /// `None`: every event is refused with 401.
    pub token: Option<String>,
    pub namespace: Option<String>,
}

#[derive(Clone)]
struct AppState {
    metrics: SharedMetrics,
    readiness: Readiness,
    events: Option<ConnectionEvents>,
}

pub fn router(
    metrics: SharedMetrics,
    readiness: Readiness,
    events: Option<ConnectionEvents>,
) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/events/connection", post(connection_event))
        .with_state(AppState {
            metrics,
            readiness,
            events,
        })
}

/// Everything the `controller` process serves on its HTTP port: health, metrics, connection
/// events and the flags it decides with.
pub fn controller_router(
    config: &crate::context::Config,
    metrics: SharedMetrics,
    readiness: Readiness,
    events: Option<ConnectionEvents>,
) -> Router {
    router(metrics, readiness, events).merge(flags_router(config.flags.clone()))
}

/// [`controller_router`] with the connection events of `config` (waker, token, namespace).
pub fn controller_endpoints(
    client: &kube::Client,
    config: &crate::context::Config,
    metrics: SharedMetrics,
    readiness: Readiness,
) -> Router {
    let events = ConnectionEvents {
        waker: Waker::new(client.clone(), metrics.clone(), config.flags.clone()),
        token: config.connection_event_token.clone(),
        namespace: config.namespace.clone(),
    };
    controller_router(config, metrics, readiness, Some(events))
}

/// What the hooks listener serves: the Git push hooks (`/hooks/...`) and nothing else.
pub fn hooks_router(
    client: kube::Client,
    guard: crate::gitops::hook_guard::HookGuard,
    metrics: SharedMetrics,
) -> Router {
    crate::gitops::webhook::router(client, guard, metrics)
}

/// `GET /flags`: the ownership flags as this process decides with them right now (read-only,
/// like `/metrics`; changing flags goes through the API's authenticated flags endpoint).
pub fn flags_router(flags: std::sync::Arc<crate::ownership::index::FlagIndex>) -> Router {
    Router::new().route(
        "/flags",
        get(move || {
            let flags = flags.clone();
            async move {
                let views: Vec<serde_json::Value> = crate::ownership::ResourceType::ALL
                    .into_iter()
                    .map(|t| {
                        crate::ownership::view(
                            t,
                            &flags.object_name(t),
                            flags.spec(t).as_ref(),
                            &flags.effective(t),
                        )
                    })
                    .collect();
                axum::Json(serde_json::json!({"flags": views, "loaded": flags.loaded()}))
            }
        }),
    )
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "watch caches are still loading",
        )
    }
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({"error": message.to_string()}))).into_response()
}

/// Wakes the session named in the event if it is still hibernated at the event's generation.
async fn connection_event(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(events) = state.events else {
        return error(StatusCode::UNAUTHORIZED, "connection events are disabled");
    };
    let Some(token) = events.token.as_deref() else {
        return error(
            StatusCode::UNAUTHORIZED,
            "no connection event token is configured",
        );
    };
    if let Err(e) = check_bearer(&headers, token) {
        return error(StatusCode::UNAUTHORIZED, e);
    }
    let event: ConnectionEvent = match serde_json::from_slice(&body) {
        Ok(event) => event,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid event: {e}")),
    };
    if !valid_name(&event.session) || !valid_name(&event.namespace) {
        return error(StatusCode::BAD_REQUEST, "invalid session or namespace name");
    }
    if events
        .namespace
        .as_deref()
        .is_some_and(|watched| watched != event.namespace)
    {
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "this controller does not watch namespace {:?}",
                event.namespace
            ),
        );
    }
    match event.type_.as_str() {
        "connect" => {}
        "disconnect" => return reply("not_needed", ""),
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unknown event type {other:?}"),
            );
        }
    }
    match events
        .waker
        .wake(
            &event.namespace,
            &event.session,
            Some(event.generation),
            Source::Event,
        )
        .await
    {
        Ok((outcome, session_state)) => reply(outcome.as_str(), session_state.as_str()),
        Err(e) if e.is_not_found() => error(StatusCode::NOT_FOUND, "session not found"),
        Err(e) => {
            warn!(session = %event.session, error = %e, "wake from connection event failed");
            state.metrics.reconcilers.failure("wake", e.metric_label());
            error(StatusCode::SERVICE_UNAVAILABLE, e)
        }
    }
}

fn reply(outcome: &str, session_state: &str) -> Response {
    axum::Json(EventReply {
        outcome: outcome.to_string(),
        state: session_state.to_string(),
    })
    .into_response()
}

/// A listener that could not be bound, naming what it was for and the address.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what}): {source}")]
pub struct BindError {
    pub what: &'static str,
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds `addr` for `what` (`--http-addr`, ...). Processes bind every listener before they
/// start anything, so a taken port fails at once with the address in the message.
pub async fn bind(
    what: &'static str,
    addr: SocketAddr,
) -> Result<tokio::net::TcpListener, BindError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { what, addr, source })
}

/// Serves the router on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = bind("http", addr).await.map_err(std::io::Error::other)?;
    serve_on(listener, router, shutdown).await
}

/// Serves `router` on `listener` as a supervised task that finishes open requests on shutdown.
pub fn serve_supervised(
    tasks: &crate::supervisor::SupervisorHandle,
    name: &'static str,
    listener: tokio::net::TcpListener,
    router: Router,
) {
    let stopping = tasks.stopping();
    tasks.spawn_graceful(name, async move {
        serve_on(listener, router, stopping)
            .await
            .map_err(|e| anyhow::anyhow!("{name} failed: {e}"))
    });
}

/// Serves the router on a bound listener (tests bind `127.0.0.1:0` first).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "http server listening");
    }
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
