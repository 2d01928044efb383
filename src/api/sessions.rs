//! The sessions endpoints, each object served by the side its ownership flag names:
//!
//! | method | path | |
//! |---|---|---|
//! | POST | `/api/v1/sessions` | validate (400), authorise (403), quota (403), create (202): `create` |
//! | GET | `/api/v1/sessions[?user=]`, `/api/v1/sessions/by-tags` | `{sessions, total}` from the watch cache: `list` |
//! | GET | `/api/v1/sessions/{id}`, `.../activity` | one session (cache, then the API server; see `ApiState::session_for`): `item` |
//! | PATCH | `/api/v1/sessions/{id}/tags` | replace the tags: `item` |
//! | PATCH | `/api/v1/sessions/{id}` | `{state}`: running, hibernated or terminated (202); waking over quota 403: here |
//! | DELETE | `/api/v1/sessions/{id}` | 202: here |
//!
//! Dispatch: [`FlagIndex::owner`](crate::ownership::index::FlagIndex::owner) of the session
//! decides between `controller` (write intent only; the controller acts) and `legacy` (the
//! API does the Kubernetes work itself, as the old API did, without its defects). The `quota`
//! flag decides separately whether the API checks quota (`quota`) or leaves it to the
//! validating webhook, whose denial is answered with the same 403 shape. `follower` keeps
//! the status of legacy-owned sessions; [`request`] parses bodies and shapes answers.
//!
//! Every state change is decided on a fresh read and written with that read's
//! `resourceVersion`; a conflict (someone else wrote, or the flag moved) is decided again.
//! Nothing is written for a request that fails validation or authorisation.

mod controller;
mod create;
mod error;
mod follower;
mod item;
mod legacy;
mod list;
pub(crate) mod quota;
mod rendered;
pub mod request;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PatchParams};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::warn;

use super::{ApiState, valid_name};
use crate::crd::{QuotaPolicy, Session, SessionSpec, SessionState, Template};
use crate::ownership::handoff::Record;
use crate::ownership::{self, Gate, ResourceType, Side, Skip};
use crate::session::names::{self, APP_SESSION};
use crate::session::objects::SessionSettings;
use crate::session::state::operation_settled;
pub(crate) use create::create;
pub use error::SessionsError;
pub(crate) use item::{activity, get_one, set_tags};
pub(crate) use list::{by_tags, list};

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
    /// The list items, each rendered once per version of its session.
    list_cache: rendered::ListCache,
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
                list_cache: rendered::ListCache::new(),
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
    pub(crate) fn limits_for(&self, user: &str) -> crate::quota::Limits {
        let policies = self.policies.state();
        crate::quota::limits_for(user, policies.iter().map(AsRef::as_ref))
    }

    /// The live reservations of `user`'s quota ledger.
    pub(crate) async fn live_reservations(
        &self,
        user: &str,
    ) -> std::result::Result<Vec<crate::quota::ledger::Reservation>, crate::quota::store::LedgerError>
    {
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
    let params = PatchParams {
        field_manager: Some(field_manager.into()),
        ..PatchParams::default()
    };
    let updated =
        crate::idle::wake::refresh_activity(api, &params, session, Timestamp::now()).await?;
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
