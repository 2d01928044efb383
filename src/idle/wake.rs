//! Waking a hibernated session: shared by the connection-event endpoint and the idle reconciler
//! (which acts on the `wake-requested` annotation). Whichever arrives first wakes the session;
//! the other finds it running with the mark cleared and does nothing.
//!
//! A wake request carries the `metadata.generation` its sender saw. It is honoured only while
//! the session is hibernated at that same generation: a user who changed the spec after the
//! request (hibernating it again, for instance) wrote last, and their intent stands.
//!
//! Order of the writes, each conditional on the resourceVersion just read (a concurrent writer
//! makes it fail with 409, and the request is decided again on fresh data):
//! 1. status: `lastActivity` = now, so that the idle deadline restarts before the session is
//!    running (waking never re-hibernates at once), and `startedAt` removed: a stopped session
//!    that has one gets it cleared by the idle reconciler, a write that would race step 2 on
//!    every try; the idle reconciler sets it once the session runs;
//! 2. spec: `state=running` and the annotation removed, in one patch, which also records the
//!    controller as the side that acted (`stream.space/acted-by`).
//!
//! Only sessions whose `autostart` owner is the controller are woken here; for the others the
//! API's connect handler wakes the session itself (see `api::autostart`).

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::deadline::{self, Clocks, Decision};
use super::{Error, FIELD_MANAGER, Result, WAKE_ANNOTATION};
use crate::api_status::Attempts;
use crate::api_status::KubeFailure;
use crate::crd::{Session, SessionState};
use crate::metrics::SharedMetrics;
use crate::ownership::handoff::ACTED_BY_ANNOTATION;
use crate::ownership::index::FlagIndex;
use crate::ownership::{ResourceType, Side};

/// Attempts before giving up on a session that keeps changing under us.
const MAX_ATTEMPTS: u32 = 5;
/// Longest a wake request waits for the ownership flags after start-up.
const FLAGS_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where a wake request came from (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Event,
    Annotation,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Event => "event",
            Source::Annotation => "annotation",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// This call set the session running.
    Woken,
    /// Nothing to wake: running already, or the request was older than the spec.
    NotNeeded,
    /// The `autostart` flag gives this session to the legacy side (the API wakes it itself).
    NotOwned,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Woken => "woken",
            Outcome::NotNeeded => "not_needed",
            Outcome::NotOwned => "not_owned",
        }
    }
}

/// Wakes sessions; cheap to clone.
#[derive(Clone)]
pub struct Waker {
    client: Client,
    recorder: Recorder,
    metrics: SharedMetrics,
    /// Only sessions whose `autostart` owner is the controller are woken here.
    flags: Arc<FlagIndex>,
}

impl Waker {
    pub fn new(client: Client, metrics: SharedMetrics, flags: Arc<FlagIndex>) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        Waker {
            client,
            recorder,
            metrics,
            flags,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Acts on the wake request of `name`: the `generation` of an event, else the annotation.
    pub async fn wake(
        &self,
        namespace: &str,
        name: &str,
        generation: Option<i64>,
        source: Source,
    ) -> Result<(Outcome, SessionState)> {
        // Deciding before the flags loaded would use the default mode.
        tokio::time::timeout(FLAGS_WAIT, self.flags.wait_loaded())
            .await
            .map_err(|_| Error::FlagsNotLoaded)?;
        let api: Api<Session> = Api::namespaced(self.client.clone(), namespace);
        let stale = |e: &Error| matches!(e, Error::Api(failure) if failure.is_conflict());
        let give_up = |_| Error::Contended(MAX_ATTEMPTS);
        let mut attempts = Attempts::new(MAX_ATTEMPTS);
        loop {
            let result: Result<(Outcome, SessionState)> = async {
                let session = api
                    .get(name)
                    .await
                    .map_err(KubeFailure::during("reading the session to wake"))?;
                let owner = self.flags.owner(ResourceType::Autostart, namespace, name);
                if owner.acting_side() != Side::Controller {
                    // The API's legacy connect handler wakes these; a stale mark stays for it.
                    self.metrics
                        .idle
                        .wake(source.as_str(), Outcome::NotOwned.as_str());
                    return Ok((Outcome::NotOwned, session.spec.desired_state()));
                }
                let outcome = match wants_wake(&session, generation) {
                    true => self.set_running(&api, &session).await?,
                    false => self.drop_request(&api, &session).await?,
                };
                self.metrics.idle.wake(source.as_str(), outcome.as_str());
                if outcome == Outcome::Woken {
                    info!(session = name, source = source.as_str(), "session woken");
                    self.publish(&session, "Woken", "a connection woke the session")
                        .await;
                }
                let state = match outcome {
                    Outcome::Woken => SessionState::Running,
                    Outcome::NotNeeded | Outcome::NotOwned => session.spec.desired_state(),
                };
                Ok((outcome, state))
            }
            .await;
            if let Some(done) = attempts.settle(result, stale, give_up) {
                return done;
            }
        }
    }

    async fn set_running(&self, api: &Api<Session>, session: &Session) -> Result<Outcome> {
        let name = session.name_any();
        self.metrics.reconcilers.write("idle", "session_status");
        let updated = refresh_activity(api, &manager(), session, Timestamp::now())
            .await
            .map_err(KubeFailure::during("refreshing lastActivity before waking"))?;
        let spec = json!({
            "metadata": {
                "resourceVersion": updated.resource_version(),
                "annotations": {
                    WAKE_ANNOTATION: null,
                    ACTED_BY_ANNOTATION: Side::Controller.as_str(),
                },
            },
            "spec": {"state": SessionState::Running.as_str()},
        });
        self.metrics.reconcilers.write("idle", "session");
        api.patch(&name, &manager(), &Patch::Merge(spec))
            .await
            .map_err(KubeFailure::during("setting the session running"))?;
        Ok(Outcome::Woken)
    }

    /// Removes a stale mark, if there is one.
    async fn drop_request(&self, api: &Api<Session>, session: &Session) -> Result<Outcome> {
        if !session.annotations().contains_key(WAKE_ANNOTATION) {
            return Ok(Outcome::NotNeeded);
        }
        let patch = json!({
            "metadata": {
                "resourceVersion": session.resource_version(),
                "annotations": {WAKE_ANNOTATION: null},
            },
        });
        self.metrics.reconcilers.write("idle", "session");
        api.patch(&session.name_any(), &manager(), &Patch::Merge(patch))
            .await
            .map_err(KubeFailure::during("removing a stale wake request"))?;
        Ok(Outcome::NotNeeded)
    }

    pub(crate) async fn publish(&self, session: &Session, reason: &str, note: &str) {
        let event = Event {
            type_: EventType::Normal,
            reason: reason.to_string(),
            note: Some(note.to_string()),
            action: "Idle".into(),
            secondary: None,
        };
        if let Err(error) = self
            .recorder
            .publish(&event, &session.object_ref(&()))
            .await
        {
            warn!(%error, "could not publish idle event");
        }
    }
}

/// Step 1 of every wake (this waker's, the API connect handler's, the API's state changes):
/// the status patch of [`refresh_patch`], guarded by the resourceVersion `session` was read
/// at. Returns the updated session.
pub async fn refresh_activity(
    api: &Api<Session>,
    params: &PatchParams,
    session: &Session,
    now: Timestamp,
) -> kube::Result<Session> {
    let patch = refresh_patch(session, now);
    api.patch_status(&session.name_any(), params, &Patch::Merge(patch))
        .await
}

/// The status merge patch that readies a stopped session to run: `lastActivity` = `now` in
/// [`rfc3339`] (never moved backwards: another replica's clock may be ahead of ours), so the
/// idle deadline restarts and waking never re-hibernates at once; `startedAt` removed (see the
/// module docs); `metadata.resourceVersion` of `session`, so a concurrent write fails with 409.
pub fn refresh_patch(session: &Session, now: Timestamp) -> serde_json::Value {
    let stored = session
        .status
        .as_ref()
        .and_then(|s| s.last_activity.as_ref())
        .map(|t| t.0);
    let activity = stored.map_or(now, |stored| stored.max(now));
    json!({
        "metadata": {"resourceVersion": session.resource_version()},
        "status": {"lastActivity": rfc3339(activity), "startedAt": null},
    })
}

/// The session is hibernated at the generation of the event or of its annotation.
fn wants_wake(session: &Session, event_generation: Option<i64>) -> bool {
    let event = event_generation.map(|g| g.to_string());
    let annotation = session.annotations().get(WAKE_ANNOTATION).cloned();
    [event, annotation].into_iter().flatten().any(|requested| {
        let clocks = Clocks {
            desired: &session.spec.desired_state(),
            idle_timeout: "",
            max_session_duration: "",
            last_activity: None,
            started_at: None,
            generation: session.meta().generation,
            wake_requested: Some(&requested),
        };
        deadline::decide(&clocks, Timestamp::UNIX_EPOCH, &Default::default()) == Decision::Wake
    })
}

pub(crate) fn manager() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

/// RFC 3339 in seconds, the precision of `metav1.Time`.
pub fn rfc3339(at: Timestamp) -> String {
    k8s_openapi::jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", at)
        .unwrap_or_else(|_| at.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(last_activity: Option<&str>) -> Session {
        let status = last_activity.map_or(json!({}), |at| json!({"lastActivity": at}));
        serde_json::from_value(json!({
            "apiVersion": "stream.space/v1alpha1", "kind": "Session",
            "metadata": {"name": "s1", "namespace": "ns", "resourceVersion": "7"},
            "spec": {"user": "alice", "template": "t", "state": "hibernated"},
            "status": status,
        }))
        .unwrap_or_else(|error| panic!("session: {error}"))
    }

    #[test]
    fn refresh_patch_sets_activity_in_rfc3339_seconds_and_never_backwards() {
        let now: Timestamp = "2026-01-02T03:04:05.678Z"
            .parse()
            .unwrap_or(Timestamp::UNIX_EPOCH);
        for (what, stored, expected) in [
            ("no activity yet", None, "2026-01-02T03:04:05Z"),
            (
                "older activity",
                Some("2026-01-01T00:00:00Z"),
                "2026-01-02T03:04:05Z",
            ),
            (
                "a clock ahead of ours",
                Some("2026-01-03T00:00:00Z"),
                "2026-01-03T00:00:00Z",
            ),
        ] {
            assert_eq!(
                refresh_patch(&session(stored), now),
                json!({
                    "metadata": {"resourceVersion": "7"},
                    "status": {"lastActivity": expected, "startedAt": null},
                }),
                "{what}"
            );
        }
    }
}
