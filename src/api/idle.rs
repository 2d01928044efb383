//! The legacy idle monitor: what the old API's idle loop did, for sessions whose `idle` flag
//! gives them to the legacy side (with `idle` in legacy mode the controller hibernates
//! nothing, so without this loop nothing would).
//!
//! Every `interval` the replica holding the monitor's Lease looks at every session in its
//! watch cache and decides with the controller's own rule ([`crate::idle::deadline::decide`]:
//! `idleTimeout` plus grace, and `maxSessionDuration`). One replica acts at a time (the
//! Lease); every write is guarded besides:
//! - only sessions whose `idle` owner is the legacy side (legacy or shadow mode, or outside the
//!   controller's percentage), and not while the controller is finishing an operation it
//!   accepted;
//! - a stop is decided again on a fresh read from the API server, and written with that read's
//!   resourceVersion (a heartbeat flushed in between makes it fail with 409; the next pass
//!   decides again);
//! - the stop goes through the handler the `sessions` flag names, exactly as a user's PATCH
//!   (legacy: `spec.state` plus the Deployment scaled to zero; controller: intent only).
//!
//! Missing clocks (`lastActivity`, `startedAt`) are initialised and a stopped session's
//! `startedAt` cleared, as the idle reconciler does, by status merge patches guarded the same
//! way. Wake requests stay with `autostart` (the connect handler).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Resource, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use super::ApiState;
use super::sessions::{LEGACY_FIELD_MANAGER, SessionsError, set_state_guarded};
use crate::crd::{Session, SessionState};
use crate::idle::deadline::{self, Clocks, Decision, IdleSettings};
use crate::ownership::handoff::Record;
use crate::ownership::{self, Owner, ResourceType, Side};
use crate::session::state::operation_settled;

/// Default name of the monitor's Lease.
pub const DEFAULT_LEASE_NAME: &str = "streamspace-api-idle";
/// Field manager of the monitor's Lease writes.
const LEASE_FIELD_MANAGER: &str = "streamspace-api-idle-lease";

/// Settings of the legacy idle monitor.
#[derive(Clone, Debug)]
pub struct IdleMonitorSettings {
    /// Time between two passes over the sessions.
    pub interval: Duration,
    /// Grace and maximum-duration action: the controller's idle settings.
    pub idle: IdleSettings,
    pub lease_name: String,
    /// Namespace of the Lease (the release namespace in the chart).
    pub lease_namespace: String,
    /// How long the Lease stays valid after its last renewal (whole seconds).
    pub lease_duration: Duration,
    /// This replica's identity in the Lease.
    pub identity: String,
}

impl IdleMonitorSettings {
    /// Defaults for an API serving `namespace`: a pass a minute (the old API's
    /// `IDLE_CHECK_INTERVAL`), the controller's grace, the Lease in `namespace`.
    pub fn new(namespace: &str) -> IdleMonitorSettings {
        IdleMonitorSettings {
            interval: Duration::from_secs(60),
            idle: IdleSettings::default(),
            lease_name: DEFAULT_LEASE_NAME.into(),
            lease_namespace: namespace.into(),
            lease_duration: Duration::from_secs(15),
            identity: crate::leader::default_identity(),
        }
    }
}

/// What the monitor does with one session after the idle decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Skip,
    /// Set the missing clocks to now (a status merge patch).
    Initialise {
        last_activity: bool,
        started_at: bool,
    },
    ClearStartedAt,
    /// Stop the session (`spec.state = state`).
    Stop {
        state: SessionState,
        reason: deadline::StopReason,
    },
}

/// Whether the legacy side may act on a session now: its `idle` owner is legacy, and the
/// controller is not finishing an operation it accepted (`controller_settled` false while it
/// is: recorded as the controller's and the desired state not reached yet).
pub fn legacy_acts(
    owner: Owner,
    record: &Record,
    controller_settled: bool,
    now: Timestamp,
) -> bool {
    let record = record
        .clone()
        .with_controller_in_flight(!controller_settled);
    ownership::gate(Side::Legacy, owner, &record, now).acts()
}

/// The monitor's step for an idle decision: stops and clock bookkeeping; wakes are autostart's.
pub fn step(decision: Decision) -> Step {
    match decision {
        Decision::Stop { state, reason } => Step::Stop { state, reason },
        Decision::Initialise {
            last_activity,
            started_at,
        } => Step::Initialise {
            last_activity,
            started_at,
        },
        Decision::ClearStartedAt => Step::ClearStartedAt,
        Decision::Nothing | Decision::RequeueAt(_) | Decision::Wake | Decision::DropWakeRequest => {
            Step::Skip
        }
    }
}

/// The step for `session` at `now`, or `Skip` when the legacy side does not own it.
fn decide(state: &ApiState, session: &Session, settings: &IdleSettings, now: Timestamp) -> Step {
    if session.meta().deletion_timestamp.is_some() {
        return Step::Skip;
    }
    let owner = state
        .flags()
        .owner(ResourceType::Idle, &state.namespace, &session.name_any());
    let record = Record::from_annotations(session.annotations());
    if !legacy_acts(owner, &record, operation_settled(session), now) {
        return Step::Skip;
    }
    let desired = session.spec.desired_state();
    step(deadline::decide(
        &Clocks::of(session, &desired),
        now,
        settings,
    ))
}

/// Runs the monitor until dropped: campaigns for the Lease, and passes over the sessions every
/// interval while holding it.
pub(crate) async fn run(state: Arc<ApiState>, settings: IdleMonitorSettings) {
    while !state.sessions_loaded.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    state.flags().wait_loaded().await;
    let duration = settings.lease_duration.as_secs().max(2);
    loop {
        let manager = LeaseManagerBuilder::new(state.client.clone(), &settings.lease_name)
            .with_namespace(&settings.lease_namespace)
            .with_identity(&settings.identity)
            .with_duration(duration)
            .with_grace((duration / 3).max(1))
            .with_field_manager(LEASE_FIELD_MANAGER)
            .build()
            .await;
        let manager = match manager {
            Ok(manager) => manager,
            Err(error) => {
                warn!(%error, lease = %settings.lease_name, namespace = %settings.lease_namespace,
                    "legacy idle monitor: cannot use its Lease; retrying");
                tokio::time::sleep(settings.interval).await;
                continue;
            }
        };
        let (held, task) = manager.watch().await;
        info!(lease = %settings.lease_name, identity = %settings.identity, "legacy idle monitor started");
        passes(&state, &settings, held).await;
        task.abort();
    }
}

/// One pass every interval while the Lease is held; returns when the Lease manager stops.
async fn passes(
    state: &ApiState,
    settings: &IdleMonitorSettings,
    mut held: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = held.changed() => {
                if changed.is_err() {
                    warn!("legacy idle monitor: the Lease manager stopped; starting again");
                    return;
                }
                continue;
            }
        }
        if *held.borrow() {
            pass(state, &settings.idle).await;
        }
    }
}

/// Looks at every session of the cache once.
async fn pass(state: &ApiState, settings: &IdleSettings) {
    let now = Timestamp::now();
    for session in state.sessions.state() {
        if decide(state, &session, settings, now) == Step::Skip {
            continue;
        }
        let name = session.name_any();
        if let Err(error) = act(state, &name, settings).await {
            if matches!(error, SessionsError::Conflict(_)) {
                debug!(session = %name, %error, "legacy idle write lost a race; next pass decides again");
            } else {
                warn!(session = %name, %error, "legacy idle monitor could not act");
            }
        }
    }
}

/// Decides again on a fresh read and acts with that read's resourceVersion.
async fn act(state: &ApiState, name: &str, settings: &IdleSettings) -> Result<(), SessionsError> {
    let Some(session) = state.sessions().get_opt(name).await? else {
        return Ok(());
    };
    let now = Timestamp::now();
    match decide(state, &session, settings, now) {
        Step::Skip => Ok(()),
        Step::Initialise {
            last_activity,
            started_at,
        } => {
            let fields = crate::idle::reconciler::clock_fields(last_activity, started_at, now);
            write_status(state, &session, fields).await
        }
        Step::ClearStartedAt => write_status(state, &session, json!({"startedAt": null})).await,
        Step::Stop {
            state: wanted,
            reason,
        } => {
            set_state_guarded(state, &session, &wanted).await?;
            state.metrics.idle.stop(reason.as_str());
            info!(session = name, reason = reason.as_str(), state = %wanted, "legacy idle monitor stopped the session");
            Ok(())
        }
    }
}

async fn write_status(
    state: &ApiState,
    session: &Session,
    fields: Value,
) -> Result<(), SessionsError> {
    let patch = json!({
        "metadata": {"resourceVersion": session.resource_version()},
        "status": fields,
    });
    let params = PatchParams {
        field_manager: Some(LEGACY_FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    state
        .sessions()
        .patch_status(&session.name_any(), &params, &Patch::Merge(patch))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idle::deadline::StopReason;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap_or_default()
    }

    fn record(acted_by: Option<Side>) -> Record {
        Record {
            acted_by,
            ..Record::default()
        }
    }

    #[test]
    fn the_legacy_side_acts_only_on_what_it_owns() {
        let rows = [
            ("legacy, never touched", Owner::Legacy, None, true, true),
            (
                "legacy, recorded legacy",
                Owner::Legacy,
                Some(Side::Legacy),
                true,
                true,
            ),
            ("shadow: legacy acts", Owner::Shadow, None, true, true),
            ("controller owns it", Owner::Controller, None, true, false),
            (
                "controller owns it, recorded legacy",
                Owner::Controller,
                Some(Side::Legacy),
                true,
                false,
            ),
            (
                "legacy, the controller's operation settled",
                Owner::Legacy,
                Some(Side::Controller),
                true,
                true,
            ),
            (
                "legacy, the controller still finishing",
                Owner::Legacy,
                Some(Side::Controller),
                false,
                false,
            ),
        ];
        for (name, owner, acted_by, settled, expected) in rows {
            assert_eq!(
                legacy_acts(owner, &record(acted_by), settled, at(0)),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn steps_follow_the_idle_decision_and_leave_wakes_alone() {
        let stop = Decision::Stop {
            state: SessionState::Hibernated,
            reason: StopReason::Idle,
        };
        let rows = [
            (
                stop,
                Step::Stop {
                    state: SessionState::Hibernated,
                    reason: StopReason::Idle,
                },
            ),
            (
                Decision::Initialise {
                    last_activity: true,
                    started_at: false,
                },
                Step::Initialise {
                    last_activity: true,
                    started_at: false,
                },
            ),
            (Decision::ClearStartedAt, Step::ClearStartedAt),
            (Decision::RequeueAt(at(5)), Step::Skip),
            (Decision::Nothing, Step::Skip),
            (Decision::Wake, Step::Skip),
            (Decision::DropWakeRequest, Step::Skip),
        ];
        for (decision, expected) in rows {
            assert_eq!(step(decision.clone()), expected, "{decision:?}");
        }
    }
}
