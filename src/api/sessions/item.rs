//! Reads and edits of one session that do not change its state: `GET /api/v1/sessions/{id}`,
//! `GET /api/v1/sessions/{id}/activity` and `PATCH /api/v1/sessions/{id}/tags` (the state
//! changes, `PATCH` and `DELETE`, are the parent module's).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use super::{INTENT_FIELD_MANAGER, Result, SessionsError, check_id, request};
use crate::api::ApiState;
use crate::api::auth::Principal;
use crate::crd::Session;

/// Session `id` for a read by the caller of `headers`: 401, 400 for an invalid id, then as
/// [`allowed`] with the verb `get`.
async fn readable(state: &ApiState, headers: &HeaderMap, id: &str) -> Result<Session> {
    let principal = state.principal(headers).await?;
    check_id(id)?;
    let session = state.session_for(id, &principal, "get").await?;
    allowed(state, &principal, id, "get", session).await
}

/// `session`, the read of `id`, if `principal` may act on it with `verb`: 403 when it is not
/// theirs and they are no operator (the same whether it exists or not), else 404 when missing.
async fn allowed(
    state: &ApiState,
    principal: &Principal,
    id: &str,
    verb: &'static str,
    session: Option<Session>,
) -> Result<Session> {
    let owner = session.as_ref().map(|s| s.spec.user.as_str());
    state
        .require_session_access(principal, owner, id, verb)
        .await?;
    session.ok_or_else(|| SessionsError::not_found(id))
}

// ---------------------------------------------------------------------------------------------
// GET /api/v1/sessions/{id}

pub(crate) async fn get_one(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    let session = readable(&state, &headers, &id).await?;
    let active = state.active_connections(&id);
    Ok(Json(request::session_item(&session, active, Timestamp::now())).into_response())
}

// ---------------------------------------------------------------------------------------------
// PATCH /api/v1/sessions/{id}/tags

pub(crate) async fn set_tags(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let principal = state.principal(&headers).await?;
    check_id(&id)?;
    let tags = request::parse_tags(&body)?;
    let session = state.sessions().get_opt(&id).await?;
    let session = allowed(&state, &principal, &id, "update", session).await?;
    // Guarded by the read: a session replaced in between is not tagged by mistake.
    let patch = json!({
        "metadata": {"resourceVersion": session.resource_version()},
        "spec": {"tags": tags},
    });
    let params = PatchParams {
        field_manager: Some(INTENT_FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    let updated = match state
        .sessions()
        .patch(&id, &params, &Patch::Merge(patch))
        .await
    {
        Ok(updated) => updated,
        Err(kube::Error::Api(status)) if status.is_conflict() => {
            return Err(SessionsError::Conflict(format!(
                "session {id:?} changed while its tags were written; retry"
            )));
        }
        Err(error) => return Err(error.into()),
    };
    let active = state.active_connections(&id);
    Ok(Json(request::session_item(&updated, active, Timestamp::now())).into_response())
}

// ---------------------------------------------------------------------------------------------
// GET /api/v1/sessions/{id}/activity

pub(crate) async fn activity(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    let session = readable(&state, &headers, &id).await?;
    let mut body = serde_json::to_value(crate::api::activity::view(&session, Timestamp::now()))
        .unwrap_or_default();
    body["sessionId"] = json!(id);
    body["state"] = json!(session.spec.desired_state().as_str());
    body["activeConnections"] = json!(state.active_connections(&id));
    Ok(Json(body).into_response())
}
