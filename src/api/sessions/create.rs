//! `POST /api/v1/sessions`: validate (400), authorise (403), check the quota when the API
//! does (403), and create through the side the new session's `sessions` flag names (202).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use super::{Result, accepted, controller, legacy, quota, request};
use crate::api::ApiState;
use crate::api::auth::Permission;
use crate::crd::{SessionSpec, SessionState};
use crate::ownership::{ResourceType, Side};

// ---------------------------------------------------------------------------------------------
// POST /api/v1/sessions

pub(crate) async fn create(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let state = &*state;
    let principal = state.principal(&headers).await?;
    let new = request::parse_create(&body)?;
    if !state.session_api.allow_disabled_timers {
        check_timers(&new)?;
    }
    if principal.name != new.user {
        state
            .require(&principal, Permission::OperateSessions("create"))
            .await?;
    }
    let namespace = state.namespace.clone();
    let template = state
        .templates()
        .get_opt(&new.template)
        .await?
        .ok_or_else(|| request::Invalid {
            error: "Template not found",
            message: format!(
                "Template '{}' not found in namespace '{namespace}'",
                new.template
            ),
        })?;
    let (resources, wanted) = request::resolve_resources(&new.resources, &template.spec)?;
    let name = request::session_name(&new.user, &new.template, &request::random_suffix());

    let quota_by_api = quota::by_api(state, &name);
    if quota_by_api {
        let creating = quota::Move {
            user: &new.user,
            name: &name,
            uid: None,
            generation: 1,
            request: wanted,
        };
        quota::admit(state, &creating).await?;
    }
    let spec = SessionSpec {
        user: new.user.clone(),
        template: new.template.clone(),
        state: Some(SessionState::Running),
        resources: resources.clone(),
        persistent_home: new.persistent_home,
        idle_timeout: new.idle_timeout.clone(),
        max_session_duration: new.max_session_duration.clone(),
        tags: new.tags.clone(),
    };
    let owner = state
        .flags()
        .owner(ResourceType::Sessions, &namespace, &name);
    let created = match owner.acting_side() {
        Side::Legacy => legacy::create(state, &name, spec, &template.spec)
            .await
            .map(|()| "Session is starting"),
        Side::Controller => controller::create(state, &name, spec)
            .await
            .map(|()| "Session creation requested"),
    };
    let message = match created {
        Ok(message) => message,
        Err(error) => {
            if quota_by_api {
                quota::release(state, &new.user, &name).await;
            }
            return Err(error);
        }
    };
    Ok(accepted(request::created_response(
        &name,
        &namespace,
        &new,
        resources.as_ref(),
        message,
    )))
}

/// Refuses a timer of `0s` (it would switch idling or the duration limit off) unless the
/// operator allows it.
fn check_timers(new: &request::NewSession) -> Result<()> {
    let timers = [
        ("idleTimeout", &new.idle_timeout),
        ("maxSessionDuration", &new.max_session_duration),
    ];
    match timers
        .iter()
        .find_map(|(field, value)| crate::admission::defaults::zero_timer(field, value))
    {
        Some(message) => Err(request::Invalid {
            error: "Invalid request body",
            message,
        }
        .into()),
        None => Ok(()),
    }
}
