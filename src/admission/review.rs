//! What the two webhooks do with one Session review: the quota check (validating) and the
//! defaults patch (mutating). The rules that need no I/O are the pure functions
//! [`quota_check`] and [`reservation_target`]; the rest reads the watch caches and the ledger.

use kube::api::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::runtime::reflector;
use tracing::warn;

use super::{AdmissionState, CACHE_WAIT, defaults};
use crate::crd::{SessionSpec, SessionState};
use crate::ownership::{ResourceType, Side};
use crate::quota::ledger::{self, SessionKey};
use crate::quota::store::Admission;
use crate::quota::{self, Decision, Limits, Request};

/// The Session spec of a review object; `None` when it has none.
pub(super) fn spec_of(object: Option<&DynamicObject>) -> Result<Option<SessionSpec>, String> {
    match object.and_then(|o| o.data.get("spec")) {
        None => Ok(None),
        Some(spec) => serde_json::from_value(spec.clone())
            .map(Some)
            .map_err(|e| format!("invalid Session spec: {e}")),
    }
}

/// Whether a request moves a session to running (or changes what a running one requests), so
/// the quota must admit it. Hibernating and terminating are never checked; other updates of a
/// running session (labels, tags) are not either, so lowering a limit never blocks them.
pub(crate) fn quota_check(
    operation: &Operation,
    old: Option<&SessionSpec>,
    new: &SessionSpec,
) -> bool {
    let running = new.desired_state() == SessionState::Running;
    match operation {
        Operation::Create => running,
        Operation::Update => {
            running
                && old.is_none_or(|old| {
                    old.desired_state() != SessionState::Running
                        || !quota::same_request(old.resources.as_ref(), new.resources.as_ref())
                })
        }
        _ => false,
    }
}

/// The session a request reserves for and what the reservation waits for: (key, uid, the
/// generation the stored object will have). The validating webhook sees the object after the
/// API server named it (generateName), gave it a uid and bumped its generation.
pub(crate) fn reservation_target(
    request: &AdmissionRequest<DynamicObject>,
) -> (SessionKey, Option<String>, i64) {
    let meta = request.object.as_ref().map(|o| &o.metadata);
    let old_meta = request.old_object.as_ref().map(|o| &o.metadata);
    let name = meta
        .and_then(|m| m.name.clone())
        .filter(|n| !n.is_empty())
        .or_else(|| Some(request.name.clone()).filter(|n| !n.is_empty()))
        .unwrap_or_else(|| request.uid.clone());
    let uid = meta
        .and_then(|m| m.uid.clone())
        .or_else(|| old_meta.and_then(|m| m.uid.clone()));
    let generation = meta
        .and_then(|m| m.generation)
        .or_else(|| old_meta.and_then(|m| m.generation).map(|g| g + 1))
        .unwrap_or(1);
    let namespace = request.namespace.clone().unwrap_or_default();
    (SessionKey::new(namespace, name), uid, generation)
}

pub(super) fn deny(
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
    /// The quota check of one Session request: (metric result, response).
    pub(super) async fn validate(
        &self,
        request: &AdmissionRequest<DynamicObject>,
    ) -> (&'static str, AdmissionResponse) {
        if tokio::time::timeout(CACHE_WAIT, self.flags.wait_loaded())
            .await
            .is_err()
        {
            let message = "ownership flags are still loading; retry shortly";
            return ("denied", deny(request, 503, message.into()));
        }
        let namespace = request.namespace.as_deref().unwrap_or_default();
        let owner = self
            .flags
            .owner(ResourceType::Quota, namespace, &request.name);
        if owner.acting_side() != Side::Controller {
            // The legacy API checks quota in its own handlers.
            return ("allowed", AdmissionResponse::from(request));
        }
        let new = match spec_of(request.object.as_ref()) {
            Ok(Some(spec)) => spec,
            Ok(None) => return ("allowed", AdmissionResponse::from(request)),
            Err(message) => return ("denied", deny(request, 400, message)),
        };
        let old = spec_of(request.old_object.as_ref()).ok().flatten();
        if !quota_check(&request.operation, old.as_ref(), &new) {
            return ("allowed", AdmissionResponse::from(request));
        }
        let wanted = match Request::of(new.resources.as_ref()) {
            Ok(wanted) => wanted,
            Err(message) => return ("denied", deny(request, 403, message)),
        };
        // Out of bounds whatever the usage: refused without reading the ledger.
        if let Some(message) = quota::check_bounds(&wanted) {
            return ("denied", deny(request, 403, message));
        }
        if !self.wait_ready(CACHE_WAIT).await {
            let message = "quota caches are still loading; retry shortly";
            return ("denied", deny(request, 503, message.into()));
        }
        let (key, uid, generation) = reservation_target(request);
        let admission = Admission {
            user: &new.user,
            key: &key,
            uid,
            generation,
            request: wanted,
            limits: self.limits(&new.user),
            // A dry run is decided the same way but takes no slot.
            reserve: !request.dry_run,
        };
        let decided = self
            .ledger
            .admit(admission, |reservations, now| {
                let sessions = self.sessions.state();
                let sessions = sessions.iter().map(AsRef::as_ref);
                ledger::cached_usage(&new.user, &key, sessions, reservations, now)
            })
            .await;
        match decided {
            Ok(Decision::Allowed) => ("allowed", AdmissionResponse::from(request)),
            Ok(Decision::Denied { message }) => ("denied", deny(request, 403, message)),
            Err(error) => {
                warn!(%error, label = error.metric_label(), "quota ledger; request denied");
                ("denied", deny(request, 503, error.to_string()))
            }
        }
    }

    /// The limits in force for `user` from the QuotaPolicy cache.
    fn limits(&self, user: &str) -> Limits {
        quota::limits_for(user, self.policies.state().iter().map(AsRef::as_ref))
    }

    /// The defaults patch of one Session request: (metric result, response).
    pub(super) fn mutate(
        &self,
        request: &AdmissionRequest<DynamicObject>,
    ) -> (&'static str, AdmissionResponse) {
        let Some(object) = request.object.as_ref() else {
            return ("allowed", AdmissionResponse::from(request));
        };
        let value = match serde_json::to_value(object) {
            Ok(value) => value,
            Err(e) => {
                let message = format!("unreadable Session: {e}");
                return ("invalid", deny(request, 400, message));
            }
        };
        if !self.allow_disabled_timers {
            let old = request
                .old_object
                .as_ref()
                .and_then(|o| serde_json::to_value(o).ok());
            if let Some(message) = defaults::disabled_timer(&value, old.as_ref()) {
                return ("denied", deny(request, 400, message));
            }
        }
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
