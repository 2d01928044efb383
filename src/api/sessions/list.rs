//! The session lists: `GET /api/v1/sessions[?user=]` and
//! `GET /api/v1/sessions/by-tags?tags=a,b[&tags=c][&user=]`, `{sessions, total}` from the watch
//! cache (the API server until it has loaded), only what the caller may see.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Query, RawQuery, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use serde::Deserialize;

use super::rendered::{self, Rendered};
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
    let (all, only) = visible_sessions(&state, &principal, query.user).await?;
    let items = match &only {
        None => state.session_api.list_cache.items(&all, None),
        Some(user) => state
            .session_api
            .list_cache
            .items(&all, Some(&|s: &Session| &s.spec.user == user)),
    };
    Ok(list_response(&state, &items))
}

/// Every session (from the watch cache, or the API server until it has loaded), and the user
/// whose sessions `principal` may list (`None`: all of them): with `user`, that user (someone
/// else needs the operator right: 403); without, themselves, or `None` for an operator. `user`
/// is a filter, never an identity: it cannot widen what the caller sees.
async fn visible_sessions(
    state: &ApiState,
    principal: &crate::api::auth::Principal,
    user: Option<String>,
) -> Result<(Vec<Arc<Session>>, Option<String>)> {
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
    let all: Vec<Arc<Session>> = if state.sessions_loaded.load(Ordering::Relaxed) {
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
    Ok((all, only))
}

/// `{sessions, total}` of `items` (sorted by name), with the open connections and activity of
/// now.
fn list_response(state: &ApiState, items: &[Arc<Rendered>]) -> Response {
    let connections = state.connection_counts();
    let active = |name: &str| connections.get(name).copied().unwrap_or(0);
    match rendered::answer(items, active, Timestamp::now()) {
        Ok(body) => ([(CONTENT_TYPE, "application/json")], body).into_response(),
        // As `Json` answers a value it cannot serialise (no item has one).
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
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
    let (all, only) = visible_sessions(&state, &principal, user).await?;
    let keep = |s: &Session| {
        only.as_ref().is_none_or(|user| &s.spec.user == user)
            && request::has_any_tag(&s.spec.tags, &tags)
    };
    let items = state.session_api.list_cache.items(&all, Some(&keep));
    Ok(list_response(&state, &items))
}
