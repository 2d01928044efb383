//! The session lists: `GET /api/v1/sessions[?user=]` and
//! `GET /api/v1/sessions/by-tags?tags=a,b[&tags=c][&user=]`, `{sessions, total}` from the watch
//! cache (the API server until it has loaded), only what the caller may see.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Query, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use serde::Deserialize;

use super::{Result, request};
use crate::api::ApiState;
use crate::api::auth::Permission;
use crate::crd::Session;

// ---------------------------------------------------------------------------------------------
// GET /api/v1/sessions

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    user: Option<String>,
}

pub(crate) async fn list(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Result<Response> {
    let principal = state.principal(&headers).await?;
    let sessions = visible_sessions(&state, &principal, query.user).await?;
    Ok(list_response(&state, &sessions))
}

/// The sessions `principal` may list, sorted by name: with `user`, that user's (someone
/// else's needs the operator right: 403); without, their own, or every session for an
/// operator. `user` is a filter, never an identity: it cannot widen what the caller sees.
async fn visible_sessions(
    state: &ApiState,
    principal: &crate::api::auth::Principal,
    user: Option<String>,
) -> Result<Vec<Arc<Session>>> {
    let user = user.filter(|u| !u.is_empty());
    let only = match user {
        Some(user) if user == principal.name => Some(user),
        Some(user) => {
            state
                .require(principal, Permission::OperateSessions("list"))
                .await?;
            Some(user)
        }
        None => {
            let operator = state
                .auth
                .authorize(principal, Permission::OperateSessions("list"))
                .await
                .map_err(crate::api::error::ApiError::from)?;
            (!operator).then(|| principal.name.clone())
        }
    };
    let mut sessions: Vec<Arc<Session>> = if state.sessions_loaded.load(Ordering::Relaxed) {
        state.sessions.state()
    } else {
        state
            .sessions()
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .map(Arc::new)
            .collect()
    };
    sessions.retain(|s| only.as_ref().is_none_or(|user| &s.spec.user == user));
    sessions.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok(sessions)
}

/// `{sessions, total}` of `sessions`.
fn list_response(state: &ApiState, sessions: &[Arc<Session>]) -> Response {
    let connections = state.connection_counts();
    let now = Timestamp::now();
    let items: Vec<request::SessionItem<'_>> = sessions
        .iter()
        .map(|s| {
            let active = s
                .metadata
                .name
                .as_ref()
                .and_then(|n| connections.get(n))
                .copied()
                .unwrap_or(0);
            request::session_item(s, active, now)
        })
        .collect();
    let total = items.len();
    #[derive(serde::Serialize)]
    struct List<'a> {
        sessions: Vec<request::SessionItem<'a>>,
        total: usize,
    }
    Json(List {
        sessions: items,
        total,
    })
    .into_response()
}

// ---------------------------------------------------------------------------------------------
// GET /api/v1/sessions/by-tags?tags=a,b[&tags=c][&user=]

pub(crate) async fn by_tags(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let principal = state.principal(&headers).await?;
    let (tags, user) = request::parse_tag_query(query.as_deref().unwrap_or_default())?;
    let mut sessions = visible_sessions(&state, &principal, user).await?;
    sessions.retain(|s| request::has_any_tag(&s.spec.tags, &tags));
    Ok(list_response(&state, &sessions))
}
