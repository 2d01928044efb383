//! The I/O shell around [`deadline::decide`]: a second `Controller` on Sessions that requeues
//! each session for its own deadline (no periodic scan) and stops it when the deadline passes.
//! Stops and clock bookkeeping follow the `idle` ownership flag (legacy: nothing; shadow: the
//! would-be stop is reported); wake requests go to the waker, which follows `autostart`.
//!
//! Every write is conditional on the resourceVersion the decision was made from, so a decision
//! made on a stale cache (a heartbeat flushed or a wake written meanwhile) fails with 409 and
//! is made again on the newer object, which the watch delivers anyway.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::{Map, Value, json};
use tracing::{debug, info, warn};

use super::deadline::{self, Clocks, Decision, StopReason};
use super::wake::{Source, manager, rfc3339};
use super::{Error, Result};
use crate::api_status::KubeFailure;
use crate::backoff::ReconcileError;
use crate::context::Context;
use crate::crd::{Session, SessionState};
use crate::ownership::handoff::{ACTED_BY_ANNOTATION, Record};
use crate::ownership::shadow::Subject;
use crate::ownership::{self, Gate, ResourceType, Side};

pub const CONTROLLER: &str = "idle";

/// Added to a requeue so that it fires after the deadline, not a hair before it.
const DEADLINE_SLACK: Duration = Duration::from_millis(20);

pub async fn reconcile(session: Arc<Session>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcilers.start(CONTROLLER);
    // Ownership decides whether this acts; before the flags load it would assume the default.
    ctx.flags.wait_loaded().await;
    let action = decide_and_act(&session, &ctx).await?;
    ctx.backoff.succeeded(&backoff_key(&session));
    Ok(action)
}

fn backoff_key(session: &Session) -> String {
    format!(
        "idle/{}/{}",
        session.namespace().unwrap_or_default(),
        session.name_any()
    )
}

async fn decide_and_act(session: &Session, ctx: &Context) -> Result<Action> {
    let namespace = session.namespace().ok_or(Error::NoNamespace)?;
    let name = session.name_any();
    if session.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let desired = session.spec.desired_state();
    let clocks = Clocks::of(session, &desired);
    let now = Timestamp::now();
    let api: Api<Session> = Api::namespaced(ctx.client.clone(), &namespace);
    let decision = deadline::decide(&clocks, now, &ctx.config.idle);
    debug!(session = %name, ?decision, "idle decision");
    // Wake requests belong to `autostart`: the waker checks that flag itself.
    let wake = matches!(decision, Decision::Wake | Decision::DropWakeRequest);
    if !wake
        && let Some(action) = not_acting(ctx, session, &namespace, &clocks, &decision, now).await
    {
        return Ok(action);
    }
    match decision {
        Decision::Nothing => Ok(Action::await_change()),
        Decision::RequeueAt(deadline) => {
            let wait = now.duration_until(deadline).unsigned_abs();
            Ok(Action::requeue(wait + DEADLINE_SLACK))
        }
        Decision::Wake | Decision::DropWakeRequest => {
            ctx.waker
                .wake(&namespace, &name, None, Source::Annotation)
                .await?;
            Ok(Action::await_change())
        }
        Decision::Initialise {
            last_activity,
            started_at,
        } => {
            let fields = clock_fields(last_activity, started_at, now);
            write_status(ctx, &api, session, fields, "initialising clocks").await?;
            Ok(Action::await_change())
        }
        Decision::ClearStartedAt => {
            write_status(
                ctx,
                &api,
                session,
                json!({"startedAt": null}),
                "clearing startedAt",
            )
            .await?;
            Ok(Action::await_change())
        }
        Decision::Stop { state, reason } => {
            stop(ctx, &api, session, state.as_str(), reason).await?;
            Ok(Action::await_change())
        }
    }
}

/// The status fields that set the missing clocks to `now` (a `Decision::Initialise`).
pub fn clock_fields(last_activity: bool, started_at: bool, now: Timestamp) -> Value {
    let mut fields = Map::new();
    if last_activity {
        fields.insert("lastActivity".into(), Value::from(rfc3339(now)));
    }
    if started_at {
        fields.insert("startedAt".into(), Value::from(rfc3339(now)));
    }
    Value::Object(fields)
}

/// The `idle` gate of the session: `Some(action)` when the controller must not act on it now
/// (legacy owns it, a legacy operation is in flight, or shadow mode, whose would-be stop is
/// reported here instead), `None` when it acts.
async fn not_acting(
    ctx: &Context,
    session: &Session,
    namespace: &str,
    clocks: &Clocks<'_>,
    decision: &Decision,
    now: Timestamp,
) -> Option<Action> {
    let name = session.name_any();
    let key = format!("{namespace}/{name}");
    let record = Record::from_annotations(session.annotations());
    let gate = ownership::controller_gate(
        &ctx.flags,
        &ctx.metrics.ownership,
        ResourceType::Idle,
        (namespace, &name),
        &record,
        now,
    );
    match gate {
        // The stop write records the controller as the acting side: it is the claim.
        Gate::Act | Gate::Claim => {
            ctx.shadow.clear(ResourceType::Idle, &key);
            None
        }
        Gate::Skip(skip) => {
            let subject = (ResourceType::Idle, key.as_str());
            Some(ownership::gate::skipped(&ctx.shadow, subject, skip, now))
        }
        Gate::Shadow => {
            let differences = shadow_differences(clocks, decision, &ctx.config.idle);
            let shadow = Subject {
                resource: ResourceType::Idle,
                key: &key,
                reference: session.object_ref(&()),
                action: "Idle",
            };
            let lead = "the controller would change";
            let report = ctx
                .shadow
                .report(&ctx.recorder, &shadow, lead, &differences);
            if let Some(wait) = report.await {
                return Some(Action::requeue(wait));
            }
            Some(match decision {
                // Look again when the deadline passes, to report a stop legacy does not make.
                Decision::RequeueAt(deadline) => {
                    Action::requeue(now.duration_until(*deadline).unsigned_abs() + DEADLINE_SLACK)
                }
                _ => Action::await_change(),
            })
        }
    }
}

/// What the idle reconciler would write in shadow mode: only stops are reported (clock
/// bookkeeping is the controller's own and legacy never writes it).
pub fn shadow_differences(
    clocks: &Clocks<'_>,
    decision: &Decision,
    settings: &deadline::IdleSettings,
) -> Vec<String> {
    let Decision::Stop { state, reason } = decision else {
        return Vec::new();
    };
    let at =
        deadline::stop_deadline(clocks, settings, *reason).map_or_else(|| "?".to_string(), rfc3339);
    vec![format!(
        "spec.state {} -> {state} ({}): would {} at {at}",
        clocks.desired,
        reason.as_str(),
        match state {
            SessionState::Terminated => "terminate",
            _ => "hibernate",
        }
    )]
}

pub fn error_policy(session: Arc<Session>, error: &Error, ctx: Arc<Context>) -> Action {
    let metrics = &ctx.metrics.reconcilers;
    let delay = ctx
        .backoff
        .failed_with(metrics, CONTROLLER, backoff_key(&session), error);
    if error.is_transient() {
        // Someone wrote first; the watch brings the newer object and we decide again.
        debug!(session = %session.name_any(), %error, retry_in = ?delay, "idle write lost a race");
    } else if error.is_not_found() {
        return Action::await_change();
    } else {
        warn!(session = %session.name_any(), %error, retry_in = ?delay, "idle reconcile failed");
    }
    Action::requeue(delay)
}

/// Merge-patches `fields` into the status, conditional on the version decided from.
async fn write_status(
    ctx: &Context,
    api: &Api<Session>,
    session: &Session,
    fields: Value,
    action: &'static str,
) -> Result<()> {
    let patch = json!({
        "metadata": {"resourceVersion": session.resource_version()},
        "status": fields,
    });
    ctx.metrics.reconcilers.write(CONTROLLER, "session_status");
    api.patch_status(&session.name_any(), &manager(), &Patch::Merge(patch))
        .await
        .map(|_| ())
        .map_err(|source| Error::Api(KubeFailure::new(action, source)))
}

async fn stop(
    ctx: &Context,
    api: &Api<Session>,
    session: &Session,
    state: &str,
    reason: StopReason,
) -> Result<()> {
    let name = session.name_any();
    // Records the controller as the side that acted, in the same guarded write.
    let patch = json!({
        "metadata": {
            "resourceVersion": session.resource_version(),
            "annotations": {ACTED_BY_ANNOTATION: Side::Controller.as_str()},
        },
        "spec": {"state": state},
    });
    ctx.metrics.reconcilers.write(CONTROLLER, "session");
    api.patch(&name, &manager(), &Patch::Merge(patch))
        .await
        .map_err(KubeFailure::during("stopping the session"))?;
    ctx.metrics.idle.stop(reason.as_str());
    let message = stop_message(session, reason, state);
    info!(session = %name, reason = reason.as_str(), state, "session stopped");
    ctx.waker.publish(session, reason.as_str(), &message).await;
    Ok(())
}

fn stop_message(session: &Session, reason: StopReason, state: &str) -> String {
    let status = session.status.as_ref();
    match reason {
        StopReason::Idle => format!(
            "no activity since {} (idleTimeout {} plus grace); set to {state}",
            status
                .and_then(|s| s.last_activity.as_ref())
                .map_or_else(|| "?".into(), |t| rfc3339(t.0)),
            session.spec.idle_timeout
        ),
        StopReason::MaxDurationReached => format!(
            "running since {} reached maxSessionDuration {}; set to {state}",
            status
                .and_then(|s| s.started_at.as_ref())
                .map_or_else(|| "?".into(), |t| rfc3339(t.0)),
            session.spec.max_session_duration
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idle::deadline::MaxDurationAction;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap_or_default()
    }

    #[test]
    fn shadow_reports_only_stops_with_their_deadline() {
        let running = SessionState::Running;
        let clocks = Clocks {
            desired: &running,
            idle_timeout: "60s",
            max_session_duration: "1h",
            last_activity: Some(at(0)),
            started_at: Some(at(0)),
            generation: Some(1),
            wake_requested: None,
        };
        let settings = deadline::IdleSettings {
            grace: Duration::from_secs(30),
            max_duration_action: MaxDurationAction::Terminate,
        };
        let cases = [
            (at(10), vec![]),
            (
                at(95),
                vec![
                    "spec.state running -> hibernated (Idle): would hibernate at 2023-11-14T22:14:50Z",
                ],
            ),
            (
                at(4_000),
                vec![
                    "spec.state running -> terminated (MaxDurationReached): would terminate at 2023-11-14T23:13:20Z",
                ],
            ),
        ];
        for (now, expected) in cases {
            let decision = deadline::decide(&clocks, now, &settings);
            assert_eq!(
                shadow_differences(&clocks, &decision, &settings),
                expected,
                "{decision:?}"
            );
        }
    }
}
