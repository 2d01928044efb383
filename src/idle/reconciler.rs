//! The I/O shell around [`deadline::decide`]: a second `Controller` on Sessions that requeues
//! each session for its own deadline (no periodic scan) and stops it when the deadline passes.
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
use super::{Error, Result, WAKE_ANNOTATION};
use crate::controller::Context;
use crate::crd::Session;

pub const CONTROLLER: &str = "idle";

/// Added to a requeue so that it fires after the deadline, not a hair before it.
const DEADLINE_SLACK: Duration = Duration::from_millis(20);

pub async fn reconcile(session: Arc<Session>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcilers.start(CONTROLLER);
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
    let status = session.status.as_ref();
    let clocks = Clocks {
        desired: &desired,
        idle_timeout: &session.spec.idle_timeout,
        max_session_duration: &session.spec.max_session_duration,
        last_activity: status.and_then(|s| s.last_activity.as_ref()).map(|t| t.0),
        started_at: status.and_then(|s| s.started_at.as_ref()).map(|t| t.0),
        generation: session.meta().generation,
        wake_requested: session
            .annotations()
            .get(WAKE_ANNOTATION)
            .map(String::as_str),
    };
    let now = Timestamp::now();
    let api: Api<Session> = Api::namespaced(ctx.client.clone(), &namespace);
    let decision = deadline::decide(&clocks, now, &ctx.config.idle);
    debug!(session = %name, ?decision, "idle decision");
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
            let mut fields = Map::new();
            if last_activity {
                fields.insert("lastActivity".into(), Value::from(rfc3339(now)));
            }
            if started_at {
                fields.insert("startedAt".into(), Value::from(rfc3339(now)));
            }
            write_status(
                ctx,
                &api,
                session,
                Value::Object(fields),
                "initialising clocks",
            )
            .await?;
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

pub fn error_policy(session: Arc<Session>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcilers
        .failure(CONTROLLER, error.metric_label());
    let delay = ctx
        .backoff
        .failed(backoff_key(&session), error.is_transient());
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
        .map_err(|source| Error::Api { action, source })
}

async fn stop(
    ctx: &Context,
    api: &Api<Session>,
    session: &Session,
    state: &str,
    reason: StopReason,
) -> Result<()> {
    let name = session.name_any();
    let patch = json!({
        "metadata": {"resourceVersion": session.resource_version()},
        "spec": {"state": state},
    });
    ctx.metrics.reconcilers.write(CONTROLLER, "session");
    api.patch(&name, &manager(), &Patch::Merge(patch))
        .await
        .map_err(|source| Error::Api {
            action: "stopping the session",
            source,
        })?;
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
