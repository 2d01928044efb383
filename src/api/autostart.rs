//! Wake on connect done by the API itself, for sessions whose `autostart` owner is the legacy
//! side (the controller's waker leaves those alone).
//!
//! Legacy behaviour minus its race: each write is conditional on the resourceVersion just read
//! (a concurrent writer makes it fail with 409 and the wake is decided again on fresh data),
//! `status.lastActivity` is refreshed before the session is set running (so it does not
//! re-hibernate at once), and the spec write records the legacy side as the one that acted
//! (`stream.space/acted-by`), in the same guarded patch.

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::api_status::{Attempts, is_conflict};
use crate::crd::{Session, SessionState};
use crate::idle::WAKE_ANNOTATION;
use crate::idle::wake::refresh_activity;
use crate::ownership::Side;
use crate::ownership::handoff::ACTED_BY_ANNOTATION;

/// Field manager of the legacy handlers' writes.
pub const LEGACY_FIELD_MANAGER: &str = "streamspace-api-legacy";
/// Attempts before giving up on a session that keeps changing under us.
const MAX_ATTEMPTS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum WakeError {
    #[error("Kubernetes API request failed while {action}: {source}")]
    Kube {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("session was changed by someone else {0} times in a row")]
    Contended(u32),
}

impl WakeError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            WakeError::Kube { .. } => "kube",
            WakeError::Contended(_) => "contended",
        }
    }
}

/// Sets a hibernated session running; `Ok(false)` when it is not hibernated (any more).
pub async fn wake_directly(api: &Api<Session>, name: &str) -> Result<bool, WakeError> {
    let params = PatchParams {
        field_manager: Some(LEGACY_FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    let stale = |e: &WakeError| matches!(e, WakeError::Kube { source, .. } if is_conflict(source));
    let give_up = |_| WakeError::Contended(MAX_ATTEMPTS);
    let mut attempts = Attempts::new(MAX_ATTEMPTS);
    loop {
        let result: Result<bool, WakeError> = async {
            let session = api.get(name).await.map_err(|source| WakeError::Kube {
                action: "reading the session to wake",
                source,
            })?;
            if session.spec.desired_state() != SessionState::Hibernated {
                return Ok(false);
            }
            set_running(api, &params, &session)
                .await
                .map_err(|source| WakeError::Kube {
                    action: "waking the session",
                    source,
                })?;
            Ok(true)
        }
        .await;
        if let Some(done) = attempts.settle(result, stale, give_up) {
            return done;
        }
    }
}

async fn set_running(
    api: &Api<Session>,
    params: &PatchParams,
    session: &Session,
) -> Result<(), kube::Error> {
    let name = session.name_any();
    let updated = refresh_activity(api, params, session, Timestamp::now()).await?;
    let spec = json!({
        "metadata": {
            "resourceVersion": updated.meta().resource_version,
            "annotations": {
                ACTED_BY_ANNOTATION: Side::Legacy.as_str(),
                WAKE_ANNOTATION: null,
            },
        },
        "spec": {"state": SessionState::Running.as_str()},
    });
    api.patch(&name, params, &Patch::Merge(spec)).await?;
    Ok(())
}
