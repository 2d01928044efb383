//! Request handlers. Each checks the token (401), then the id (400), then that the session
//! belongs to the caller or the caller may operate on sessions (403), and only then that it
//! exists (404), so a caller without the right cannot tell another user's session from a
//! missing one. Activity is recorded before answering; nothing is written for a refused
//! request.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::activity::FIELD_MANAGER;
pub use super::error::ApiError;
use super::events::ConnectionEvent;
use super::{ApiState, valid_name};
use crate::crd::{Session, SessionPhase, SessionState};
use crate::idle::WAKE_ANNOTATION;
use crate::ownership::{ResourceType, Side};

pub(super) type Reply = Result<Response, ApiError>;

/// Longest a connect waits for the ownership flags after start-up.
const FLAGS_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Who is asking (401), and whether the id is valid (400).
async fn check(
    state: &ApiState,
    headers: &HeaderMap,
    id: &str,
) -> Result<super::auth::Principal, ApiError> {
    let principal = state.principal(headers).await?;
    if !valid_name(id) {
        return Err(ApiError::BadRequest(format!(
            "{id:?} is not a valid session id (lowercase letters, digits, '-' and '.')"
        )));
    }
    Ok(principal)
}

#[derive(Deserialize)]
pub(super) struct HeartbeatQuery {
    #[serde(rename = "connectionId")]
    connection_id: Option<String>,
}

/// The optional `connectionId` of a request: 400 when present but not a valid id.
fn connection_id_param(id: Option<String>) -> Result<Option<String>, ApiError> {
    match id.filter(|c| !c.is_empty()) {
        None => Ok(None),
        Some(id) if super::connections::valid_connection_id(&id) => Ok(Some(id)),
        Some(_) => Err(ApiError::BadRequest(format!(
            "connectionId must be 1 to {} characters of letters, digits, '-', '_' and '.'",
            super::connections::MAX_ID_LEN
        ))),
    }
}

pub(super) async fn heartbeat(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<HeartbeatQuery>,
) -> Response {
    let reply = async {
        let principal = check(&state, &headers, &id).await?;
        let connection_id = connection_id_param(query.connection_id)?;
        let owner = state.session_user(&id, &principal, "update").await?;
        state
            .require_session_access(&principal, owner.as_deref(), &id, "update")
            .await?;
        let mut body = json!({
            "success": true,
            "message": "Activity recorded",
            "sessionId": id,
        });
        if let Some(connection_id) = connection_id {
            let expires = state.connections.heartbeat(&id, &connection_id).await?;
            let Some(expires) = expires else {
                return Err(ApiError::Missing(format!(
                    "connection {connection_id:?} of session {id:?} is not open (closed, expired or never made); connect again"
                )));
            };
            body["connectionId"] = json!(connection_id);
            body["connectionExpiresAt"] = json!(expires.to_string());
        }
        state.activity.record(&id, Timestamp::now());
        Ok(Json(body).into_response())
    }
    .await;
    reply.into_response()
}

#[derive(Deserialize)]
pub(super) struct ConnectQuery {
    user: Option<String>,
    #[serde(rename = "connectionId")]
    connection_id: Option<String>,
}

pub(super) async fn connect(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<ConnectQuery>,
) -> Response {
    let reply = connect_inner(&state, &headers, &id, query).await;
    reply.into_response()
}

async fn connect_inner(
    state: &ApiState,
    headers: &HeaderMap,
    id: &str,
    query: ConnectQuery,
) -> Reply {
    let principal = check(state, headers, id).await?;
    let requested_id = connection_id_param(query.connection_id)?;
    let user = query.user;
    let session = state.sessions().get_opt(id).await?;
    let owner = session.as_ref().map(|s| s.spec.user.as_str());
    state
        .require_session_access(&principal, owner, id, "update")
        .await?;
    let session = session.ok_or_else(|| ApiError::NotFound(id.to_string()))?;
    // Waking is a move to running: the quota admits it first (when the API checks it).
    let reserved = if session.spec.desired_state() == SessionState::Hibernated {
        let _ = tokio::time::timeout(FLAGS_WAIT, state.flags().wait_loaded()).await;
        match super::sessions::quota::admit_wake(state, &session).await {
            Ok(reserved) => reserved,
            Err(refused) => return Ok(refused.into_response()),
        }
    } else {
        false
    };
    let connection_id = requested_id.unwrap_or_else(|| new_connection_id(state, id));
    let opened = match state
        .connections
        .open(&session, &connection_id, &principal.name)
        .await
    {
        Ok(opened) => opened,
        Err(error) => {
            if reserved {
                super::sessions::quota::release(state, &session.spec.user, id).await;
            }
            return Err(match error {
                super::connections::ConnectionError::TooMany { .. } => {
                    ApiError::TooMany(error.to_string())
                }
                super::connections::ConnectionError::Kube(error) => ApiError::Kube(error),
            });
        }
    };
    state.activity.record(id, Timestamp::now());
    let mut desired = session.spec.desired_state();
    let mut message = None;
    if desired == SessionState::Hibernated {
        // Deciding before the flags loaded would use the default mode; wait briefly.
        let _ = tokio::time::timeout(FLAGS_WAIT, state.flags().wait_loaded()).await;
        let owner = state
            .flags()
            .owner(ResourceType::Autostart, &state.namespace, id);
        let woken = match owner.acting_side() {
            Side::Controller => request_wake(state, &session, &connection_id, user).await,
            Side::Legacy => wake_directly(state, id).await,
        };
        if reserved && !woken && owner.acting_side() == Side::Legacy {
            super::sessions::quota::release(state, &session.spec.user, id).await;
        }
        if woken {
            desired = SessionState::Running;
        }
        message = Some("Session is waking up");
    }
    let status = session.status.clone().unwrap_or_default();
    let url = status.url.clone().unwrap_or_default();
    let ready = desired == SessionState::Running
        && status.phase == Some(SessionPhase::Running)
        && !url.is_empty()
        && message.is_none();
    let message = message.unwrap_or(match (&desired, ready) {
        (_, true) => "Session is ready",
        (SessionState::Running, false) => "Session is starting",
        (SessionState::Terminated, _) => "Session is terminated",
        _ => "Session is not running",
    });
    Ok(Json(json!({
        "connectionId": connection_id,
        "newConnection": opened == super::connections::Opened::New,
        "sessionUrl": url,
        "state": desired.as_str(),
        "ready": ready,
        "message": message,
    }))
    .into_response())
}

/// Marks the session `wake-requested` (durable), then tells the controller (fast). Returns
/// whether the controller reports the session running (woken by this event, or already by the
/// mark, whichever it saw first). Failures are logged: the mark alone is
/// enough for the controller to wake the session once it sees it.
async fn request_wake(
    state: &ApiState,
    session: &Session,
    connection_id: &str,
    user: Option<String>,
) -> bool {
    let name = session.name_any();
    let generation = session.metadata.generation.unwrap_or_default();
    let mark = json!({"metadata": {"annotations": {WAKE_ANNOTATION: generation.to_string()}}});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    if let Err(error) = state
        .sessions()
        .patch(&name, &params, &Patch::Merge(mark))
        .await
    {
        warn!(session = %name, %error, "could not mark the session wake-requested");
    }
    let Some(sender) = &state.events else {
        state.metrics.api.connection_event("disabled");
        return false;
    };
    let event = ConnectionEvent {
        type_: "connect".into(),
        namespace: state.namespace.clone(),
        session: name.clone(),
        generation,
        connection_id: Some(connection_id.to_string()),
        user,
    };
    match sender.send(&event).await {
        Ok(reply) => {
            state.metrics.api.connection_event("delivered");
            info!(session = %name, outcome = %reply.outcome, "connection event delivered");
            reply.outcome == "woken" || reply.state == SessionState::Running.as_str()
        }
        Err(error) => {
            state.metrics.api.connection_event(error.metric_label());
            warn!(session = %name, %error, "connection event not delivered; the wake-requested mark remains");
            false
        }
    }
}

/// Legacy autostart: the API wakes the session itself; when the `sessions` flag gives the
/// session to the legacy side too, with the legacy handler's whole wake (the Deployment scaled
/// up by the API, as nobody else would with the controller stopped). Failures are logged; the
/// client's next connect tries again.
async fn wake_directly(state: &ApiState, id: &str) -> bool {
    let sessions = state
        .flags()
        .owner(ResourceType::Sessions, &state.namespace, id);
    let woken = if sessions.acting_side() == Side::Legacy {
        super::sessions::wake_legacy(state, id)
            .await
            .map_err(|error| (error.to_string(), error.metric_label()))
    } else {
        super::autostart::wake_directly(&state.sessions(), id)
            .await
            .map_err(|error| (error.to_string(), error.metric_label()))
    };
    match woken {
        Ok(woken) => {
            info!(session = id, woken, "legacy autostart");
            woken
        }
        Err((error, label)) => {
            warn!(session = id, %error, label, "legacy autostart failed");
            false
        }
    }
}

#[derive(Deserialize)]
pub(super) struct DisconnectQuery {
    #[serde(rename = "connectionId")]
    connection_id: Option<String>,
}

pub(super) async fn disconnect(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<DisconnectQuery>,
) -> Response {
    let reply: Reply = async {
        let principal = check(&state, &headers, &id).await?;
        let connection_id = connection_id_param(query.connection_id)?
            .ok_or_else(|| ApiError::BadRequest("connectionId is required".into()))?;
        let owner = state.session_user(&id, &principal, "update").await?;
        state
            .require_session_access(&principal, owner.as_deref(), &id, "update")
            .await?;
        let active = state.connections.close(&id, &connection_id).await?;
        state.activity.record(&id, Timestamp::now());
        if active == 0 && state.hibernate_on_last_disconnect {
            hibernate_after_last_disconnect(&state, &id).await;
        }
        Ok(Json(json!({
            "message": "Disconnected",
            "connectionId": connection_id,
            "activeConnections": active,
        }))
        .into_response())
    }
    .await;
    reply.into_response()
}

/// With `--hibernate-on-last-disconnect`: the session's last connection went, so it
/// hibernates, through the same handler as `PATCH {state: hibernated}` (legacy or controller,
/// as its flag says). Failures are logged; the idle reconciler still hibernates it later.
async fn hibernate_after_last_disconnect(state: &ApiState, id: &str) {
    let running = state
        .sessions()
        .get_opt(id)
        .await
        .ok()
        .flatten()
        .is_some_and(|s| s.spec.desired_state() == SessionState::Running);
    if !running {
        return;
    }
    match super::sessions::change_state(state, id, SessionState::Hibernated).await {
        Ok(()) => info!(session = id, "hibernated after its last connection closed"),
        Err(error) => {
            warn!(session = id, %error, "could not hibernate after the last connection closed")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GET /api/v1/sessions/{id}/connections

pub(super) async fn connections(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let reply: Reply = async {
        let principal = check(&state, &headers, &id).await?;
        let owner = state.session_user(&id, &principal, "get").await?;
        state
            .require_session_access(&principal, owner.as_deref(), &id, "get")
            .await?;
        let connections = state.connections.list(&id, Timestamp::now());
        Ok(Json(json!({
            "sessionId": id,
            "activeConnections": connections.len(),
            "connections": connections,
            "expirySeconds": state.connections.expiry().as_secs(),
        }))
        .into_response())
    }
    .await;
    reply.into_response()
}

/// A unique, UUID-shaped connection id.
fn new_connection_id(state: &ApiState, session: &str) -> String {
    let count = state
        .connection_counter
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut hasher = Sha256::new();
    hasher.update(Timestamp::now().as_nanosecond().to_le_bytes());
    hasher.update(count.to_le_bytes());
    hasher.update(std::process::id().to_le_bytes());
    hasher.update(session.as_bytes());
    let hex: String = hasher
        .finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}
