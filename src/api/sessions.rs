//! The sessions endpoints, each object served by the side its ownership flag names:
//!
//! | method | path | |
//! |---|---|---|
//! | POST | `/api/v1/sessions` | validate (400), authorise (403), quota (403), create (202) |
//! | GET | `/api/v1/sessions[?user=]` | `{sessions, total}` from the watch cache |
//! | GET | `/api/v1/sessions/{id}` | one session (cache, then the API server; see `ApiState::session_for`) |
//! | PATCH | `/api/v1/sessions/{id}` | `{state}`: running, hibernated or terminated (202); waking over quota 403 |
//! | DELETE | `/api/v1/sessions/{id}` | 202 |
//!
//! Dispatch: [`FlagIndex::owner`](crate::ownership::index::FlagIndex::owner) of the session
//! decides between [`controller`] (write intent only; the controller acts) and [`legacy`] (the
//! API does the Kubernetes work itself, as the old API did, without its defects). The `quota`
//! flag decides separately whether the API checks quota ([`quota`]) or leaves it to the
//! validating webhook, whose denial is answered with the same 403 shape.
//!
//! Every state change is decided on a fresh read and written with that read's
//! `resourceVersion`; a conflict (someone else wrote, or the flag moved) is decided again.
//! Nothing is written for a request that fails validation or authorisation.

mod controller;
mod error;
mod follower;
mod legacy;
pub(crate) mod quota;
pub mod request;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde::Deserialize;
use serde_json::json;
use tracing::warn;

use super::auth::Permission;
use super::{ApiState, valid_name};
use crate::crd::{QuotaPolicy, Session, SessionSpec, SessionState, Template};
use crate::ownership::handoff::Record;
use crate::ownership::{self, Gate, ResourceType, Side, Skip};
use crate::session::names::{self, APP_SESSION};
use crate::session::objects::SessionSettings;
use crate::session::state::operation_settled;
pub use error::SessionsError;

/// Field manager of every write the legacy handlers make.
pub const LEGACY_FIELD_MANAGER: &str = "streamspace-api-legacy";
/// Field manager of the intent the controller handlers write.
pub const INTENT_FIELD_MANAGER: &str = super::activity::FIELD_MANAGER;
/// Attempts at a state change before answering 409.
const MAX_ATTEMPTS: u32 = 8;
/// First pause after a conflict; doubled on each further one, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// Longest a legacy state change waits for an operation the controller accepted (before the
/// flag moved the session to legacy) to settle; after that the operation counts as stuck and
/// the legacy side claims the session anyway.
const CONTROLLER_SETTLE_WAIT: Duration = Duration::from_secs(30);
const SETTLE_POLL: Duration = Duration::from_millis(250);

type Result<T, E = SessionsError> = std::result::Result<T, E>;

/// State of the sessions endpoints, part of [`ApiState`].
pub(crate) struct SessionsShared {
    settings: SessionSettings,
    policies: Store<QuotaPolicy>,
    policies_loaded: AtomicBool,
    deployments: Store<Deployment>,
    pods: Store<Pod>,
    quota: quota::LegacyQuota,
    /// Whether `0s` may switch a new session's idle or duration timer off.
    allow_disabled_timers: bool,
    dirty: Arc<follower::Dirty>,
}

/// The watch streams that fill [`SessionsShared`]'s caches; driven by [`background`].
pub(crate) struct Watches {
    policies: BoxStream<'static, Result<QuotaPolicy, watcher::Error>>,
    deployments: BoxStream<'static, Result<Deployment, watcher::Error>>,
    pods: BoxStream<'static, Result<Pod, watcher::Error>>,
}

impl SessionsShared {
    pub(crate) fn new(
        client: &Client,
        namespace: &str,
        settings: SessionSettings,
        allow_disabled_timers: bool,
    ) -> (SessionsShared, Watches) {
        let session_objects = watcher::Config::default().labels(&format!("app={APP_SESSION}"));
        let (policies, policy_stream) = crate::caches::reflect(
            Api::<QuotaPolicy>::namespaced(client.clone(), namespace),
            watcher::Config::default(),
        );
        let (deployments, deployment_stream) = crate::caches::reflect(
            Api::<Deployment>::namespaced(client.clone(), namespace),
            session_objects.clone(),
        );
        let (pods, pod_stream) = crate::caches::reflect(
            Api::<Pod>::namespaced(client.clone(), namespace),
            session_objects,
        );
        (
            SessionsShared {
                settings,
                policies,
                policies_loaded: AtomicBool::new(false),
                deployments,
                pods,
                quota: quota::LegacyQuota::new(client, namespace),
                allow_disabled_timers,
                dirty: Arc::default(),
            },
            Watches {
                policies: policy_stream,
                deployments: deployment_stream,
                pods: pod_stream,
            },
        )
    }

    /// Whether the QuotaPolicy cache has loaded.
    pub(crate) fn quota_caches_loaded(&self) -> bool {
        self.policies_loaded.load(Ordering::Relaxed)
    }

    /// The quota limits in force for `user`, as the webhook computes them.
    pub(crate) fn limits_for(&self, user: &str) -> crate::admission::quota::Limits {
        let policies = self.policies.state();
        crate::admission::quota::limits_for(user, policies.iter().map(AsRef::as_ref))
    }

    /// The live reservations of `user`'s quota ledger.
    pub(crate) async fn live_reservations(
        &self,
        user: &str,
    ) -> std::result::Result<
        Vec<crate::admission::quota::ledger::Reservation>,
        crate::admission::quota::store::LedgerError,
    > {
        self.quota.live_reservations(user).await
    }

    /// A session changed (from the API's Session watch): the follower looks at it again.
    pub(crate) fn session_touched(&self, session: &Session) {
        self.dirty.touch(session.name_any());
    }
}

/// Keeps the caches filled and runs the legacy status follower, until dropped.
pub(crate) async fn background(state: Arc<ApiState>, watches: Watches) {
    let shared = &state.session_api;
    let touch_owner = |labels: &std::collections::BTreeMap<String, String>| {
        if let Some(session) = labels.get("session") {
            shared.dirty.touch(session.clone());
        }
    };
    let policies = watches.policies.for_each(|event| {
        if let Err(error) = event {
            warn!(%error, "quota policy watch failed; retrying");
        }
        futures::future::ready(())
    });
    let deployments = watches.deployments.for_each(|event| {
        if let Ok(deployment) = event {
            touch_owner(deployment.labels());
        }
        futures::future::ready(())
    });
    let pods = watches.pods.for_each(|event| {
        if let Ok(pod) = event {
            touch_owner(pod.labels());
        }
        futures::future::ready(())
    });
    let policies_loaded = async {
        if shared.policies.wait_until_ready().await.is_ok() {
            shared.policies_loaded.store(true, Ordering::Relaxed);
        }
    };
    let follow = async {
        while !state.sessions_loaded.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        follower::Follower {
            client: state.client.clone(),
            namespace: state.namespace.clone(),
            domain: shared.settings.ingress_domain.clone(),
            flags: state.flags.clone(),
            sessions: state.sessions.clone(),
            deployments: shared.deployments.clone(),
            pods: shared.pods.clone(),
            dirty: shared.dirty.clone(),
        }
        .run()
        .await;
    };
    tokio::join!(policies, deployments, pods, policies_loaded, follow);
}

/// Pause after the `attempt`-th conflict (0-based), with jitter so that writers that collided
/// do not collide again in step.
async fn backoff(attempt: u32) {
    let base = FIRST_BACKOFF
        .saturating_mul(2u32.saturating_pow(attempt))
        .min(MAX_BACKOFF);
    let jitter = u64::from_str_radix(&request::random_suffix()[..2], 16).unwrap_or(0);
    let pause = base + base.mul_f64(jitter as f64 / 255.0);
    tokio::time::sleep(pause).await;
}

fn accepted(body: serde_json::Value) -> Response {
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

impl ApiState {
    fn templates(&self) -> Api<Template> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Open connections of every session, through any replica (one pass for a whole list).
    pub(crate) fn connection_counts(&self) -> std::collections::HashMap<String, usize> {
        self.connections.counts(Timestamp::now())
    }
}

// ---------------------------------------------------------------------------------------------
// POST /api/v1/sessions

pub(crate) async fn create(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let reply = create_inner(&state, &headers, &body).await;
    reply.into_response()
}

async fn create_inner(state: &ApiState, headers: &HeaderMap, body: &[u8]) -> Result<Response> {
    let principal = state.principal(headers).await?;
    let new = request::parse_create(body)?;
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

/// A failed Session create: the webhook's quota denial as 403, a name clash as 409.
fn create_error(error: kube::Error) -> SessionsError {
    if let Some(message) = error::webhook_denial(&error) {
        return SessionsError::QuotaExceeded(message);
    }
    match &error {
        kube::Error::Api(status) if status.is_already_exists() => {
            SessionsError::Conflict("a session with this name already exists; retry".into())
        }
        _ => SessionsError::from(error),
    }
}

/// Labels of a new Session, so `kubectl get ss -l user=<user>` works.
fn session_labels(spec: &SessionSpec) -> std::collections::BTreeMap<String, String> {
    std::collections::BTreeMap::from([
        ("user".to_string(), names::label_value(&spec.user)),
        ("template".to_string(), names::label_value(&spec.template)),
    ])
}

/// Before a stopped session runs again: `lastActivity` = now, so the idle deadline restarts
/// (waking must not re-hibernate at once), and `startedAt` removed (the idle reconciler clears
/// it on a stopped session, which would race the state change that follows, and sets it once
/// the session runs; see `idle::wake`). Guarded by the read's
/// `resourceVersion`; returns the new one.
async fn refresh_activity(
    api: &Api<Session>,
    session: &Session,
    field_manager: &str,
) -> Result<Option<String>> {
    let now = Timestamp::now();
    let stored = session
        .status
        .as_ref()
        .and_then(|s| s.last_activity.as_ref())
        .map(|t| t.0);
    let activity = stored.map_or(now, |stored| stored.max(now));
    let patch = json!({
        "metadata": {"resourceVersion": session.resource_version()},
        "status": {"lastActivity": activity.to_string(), "startedAt": null},
    });
    let params = PatchParams {
        field_manager: Some(field_manager.into()),
        ..PatchParams::default()
    };
    let updated = api
        .patch_status(&session.name_any(), &params, &Patch::Merge(patch))
        .await?;
    Ok(updated.resource_version())
}

/// Sets `spec.state` of `session` (read just before: the write is guarded by its
/// resourceVersion) through the handler the `sessions` flag names: the legacy handler scales
/// the Deployment itself, the controller handler writes intent only. Used by the legacy idle
/// monitor ([`super::idle`]), so its stops do exactly what a user's PATCH does.
pub(crate) async fn set_state_guarded(
    state: &ApiState,
    session: &Session,
    wanted: &SessionState,
) -> Result<()> {
    let owner = state.flags().owner(
        ResourceType::Sessions,
        &state.namespace,
        &session.name_any(),
    );
    match owner.acting_side() {
        Side::Legacy => legacy::set_state(state, session, wanted).await,
        Side::Controller => controller::set_state(state, session, wanted).await,
    }
}

/// Wakes a hibernated session whose `sessions` flag gives it to the legacy side with the legacy
/// handler's whole wake (lastActivity refreshed, `spec.state`, the Deployment rebuilt), so that
/// wake on connect works with the controller stopped; retried on conflicts. `Ok(false)` when
/// the session is missing or not hibernated (any more).
pub(crate) async fn wake_legacy(state: &ApiState, id: &str) -> Result<bool> {
    for attempt in 0..MAX_ATTEMPTS {
        let Some(session) = state.sessions().get_opt(id).await? else {
            return Ok(false);
        };
        if session.spec.desired_state() != SessionState::Hibernated {
            return Ok(false);
        }
        match legacy::set_state(state, &session, &SessionState::Running).await {
            Ok(()) => return Ok(true),
            Err(SessionsError::Conflict(_)) => backoff(attempt).await,
            Err(error) => return Err(error),
        }
    }
    Err(SessionsError::Conflict(format!(
        "session {id:?} kept changing during {MAX_ATTEMPTS} attempts; retry"
    )))
}

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
) -> Response {
    let reply = list_inner(&state, &headers, query).await;
    reply.into_response()
}

async fn list_inner(state: &ApiState, headers: &HeaderMap, query: ListQuery) -> Result<Response> {
    let principal = state.principal(headers).await?;
    let sessions = visible_sessions(state, &principal, query.user).await?;
    Ok(list_response(state, &sessions))
}

/// The sessions `principal` may list, sorted by name: with `user`, that user's (someone
/// else's needs the operator right: 403); without, their own, or every session for an
/// operator. `user` is a filter, never an identity: it cannot widen what the caller sees.
async fn visible_sessions(
    state: &ApiState,
    principal: &super::auth::Principal,
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
                .map_err(super::error::ApiError::from)?;
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
) -> Response {
    let reply: Result<Response> = async {
        let principal = state.principal(&headers).await?;
        let (tags, user) = request::parse_tag_query(query.as_deref().unwrap_or_default())?;
        let mut sessions = visible_sessions(&state, &principal, user).await?;
        sessions.retain(|s| request::has_any_tag(&s.spec.tags, &tags));
        Ok(list_response(&state, &sessions))
    }
    .await;
    reply.into_response()
}

// ---------------------------------------------------------------------------------------------
// PATCH /api/v1/sessions/{id}/tags

pub(crate) async fn set_tags(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let reply = async {
        let principal = state.principal(&headers).await?;
        check_id(&id)?;
        let tags = request::parse_tags(&body)?;
        let session = state.sessions().get_opt(&id).await?;
        let owner = session.as_ref().map(|s| s.spec.user.as_str());
        state
            .require_session_access(&principal, owner, &id, "update")
            .await?;
        let session = session.ok_or_else(|| SessionsError::not_found(&id))?;
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
    .await;
    reply.into_response()
}

// ---------------------------------------------------------------------------------------------
// GET /api/v1/sessions/{id}/activity

pub(crate) async fn activity(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let reply: Result<Response> = async {
        let principal = state.principal(&headers).await?;
        check_id(&id)?;
        let session = state.session_for(&id, &principal, "get").await?;
        let owner = session.as_ref().map(|s| s.spec.user.as_str());
        state
            .require_session_access(&principal, owner, &id, "get")
            .await?;
        let session = session.ok_or_else(|| SessionsError::not_found(&id))?;
        let mut body = serde_json::to_value(super::activity::view(&session, Timestamp::now()))
            .unwrap_or_default();
        body["sessionId"] = json!(id);
        body["state"] = json!(session.spec.desired_state().as_str());
        body["activeConnections"] = json!(state.active_connections(&id));
        Ok(Json(body).into_response())
    }
    .await;
    reply.into_response()
}

// ---------------------------------------------------------------------------------------------
// GET, PATCH, DELETE /api/v1/sessions/{id}

fn check_id(id: &str) -> Result<()> {
    if valid_name(id) {
        Ok(())
    } else {
        Err(SessionsError::Api(super::error::ApiError::BadRequest(
            format!("{id:?} is not a valid session id (lowercase letters, digits, '-' and '.')"),
        )))
    }
}

pub(crate) async fn get_one(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let reply: Result<Response> = async {
        let principal = state.principal(&headers).await?;
        check_id(&id)?;
        let session = state.session_for(&id, &principal, "get").await?;
        let owner = session.as_ref().map(|s| s.spec.user.as_str());
        state
            .require_session_access(&principal, owner, &id, "get")
            .await?;
        let session = session.ok_or_else(|| SessionsError::not_found(&id))?;
        let active = state.active_connections(&id);
        Ok(Json(request::session_item(&session, active, Timestamp::now())).into_response())
    }
    .await;
    reply.into_response()
}

pub(crate) async fn patch(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let reply: Result<Response> = async {
        let principal = state.principal(&headers).await?;
        check_id(&id)?;
        let wanted = request::parse_state(&body)?;
        set_state(&state, Some(&principal), &id, wanted.clone()).await?;
        Ok(accepted(request::state_response(&id, &wanted)))
    }
    .await;
    reply.into_response()
}

/// Moves session `id` to `wanted` on the API's own account (no caller to authorise), through
/// the handler its flag names, as `PATCH /sessions/{id}` does.
pub(crate) async fn change_state(state: &ApiState, id: &str, wanted: SessionState) -> Result<()> {
    set_state(state, None, id, wanted).await
}

/// The state change of `PATCH /sessions/{id}`; `principal`, when given, must be allowed to
/// update the session (checked on the first read).
async fn set_state(
    state: &ApiState,
    principal: Option<&super::auth::Principal>,
    id: &str,
    wanted: SessionState,
) -> Result<()> {
    let mut checked = principal.is_none();
    let settle_deadline = Instant::now() + CONTROLLER_SETTLE_WAIT;
    let mut attempt = 0;
    while attempt < MAX_ATTEMPTS {
        let session = state.sessions().get_opt(id).await?;
        if let (false, Some(principal)) = (checked, principal) {
            let owner = session.as_ref().map(|s| s.spec.user.as_str());
            state
                .require_session_access(principal, owner, id, "update")
                .await?;
            checked = true;
        }
        let session = session.ok_or_else(|| SessionsError::not_found(id))?;
        let owner = state
            .flags()
            .owner(ResourceType::Sessions, &state.namespace, id);
        // The controller finishes what it accepted before the flag moved the session
        // (see `ownership::handoff`); acting now would race its last writes.
        let record = Record::from_annotations(session.annotations())
            .with_controller_in_flight(!operation_settled(&session));
        let gate = ownership::gate(Side::Legacy, owner, &record, Timestamp::now());
        if gate == Gate::Skip(Skip::Settling) && Instant::now() < settle_deadline {
            tokio::time::sleep(SETTLE_POLL).await;
            continue;
        }
        attempt += 1;
        // A move to running is admitted by the quota first (when the API checks it).
        let reserved =
            wanted == SessionState::Running && quota::admit_wake(state, &session).await?;
        let outcome = set_state_guarded(state, &session, &wanted).await;
        if reserved && outcome.is_err() {
            quota::release(state, &session.spec.user, id).await;
        }
        match outcome {
            Ok(()) => return Ok(()),
            Err(SessionsError::Conflict(_)) => backoff(attempt - 1).await,
            Err(error) => return Err(error),
        }
    }
    Err(SessionsError::Conflict(format!(
        "session {id:?} kept changing during {MAX_ATTEMPTS} attempts; retry"
    )))
}

pub(crate) async fn delete(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let reply = async {
        let principal = state.principal(&headers).await?;
        check_id(&id)?;
        let mut checked = false;
        for attempt in 0..MAX_ATTEMPTS {
            let session = state.sessions().get_opt(&id).await?;
            if !checked {
                let owner = session.as_ref().map(|s| s.spec.user.as_str());
                state
                    .require_session_access(&principal, owner, &id, "delete")
                    .await?;
                checked = true;
            }
            let session = session.ok_or_else(|| SessionsError::not_found(&id))?;
            let owner = state
                .flags()
                .owner(ResourceType::Sessions, &state.namespace, &id);
            let outcome = match owner.acting_side() {
                Side::Legacy => legacy::delete(&state, &session).await,
                Side::Controller => controller::delete(&state, &session).await,
            };
            match outcome {
                Ok(()) => {
                    return Ok(accepted(
                        json!({"name": id, "message": "Session deletion requested"}),
                    ));
                }
                Err(SessionsError::Conflict(_)) => backoff(attempt).await,
                Err(error) => return Err(error),
            }
        }
        Err(SessionsError::Conflict(format!(
            "session {id:?} kept changing during {MAX_ATTEMPTS} attempts; retry"
        )))
    }
    .await;
    reply.into_response()
}
