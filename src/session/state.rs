//! The Session state machine as a pure function of (session, template, observed children, now).
//!
//! ```text
//! spec.state   template        observed                      -> phase
//! (unknown)    any             any                           -> Failed (UnknownState)
//! any          any             bad resource quantity         -> Failed (InvalidResources)
//! running      missing         any                           -> Pending (TemplateNotFound)
//! running      invalid         any                           -> Failed (TemplateInvalid)
//! running      valid           pod ready, replica available,
//!                              Service cached                -> Running
//! running      valid           otherwise                     -> Pending (Starting)
//! hibernated   any             any                           -> Hibernated (replicas 0)
//! terminated   any             any                           -> Terminated (Deployment deleted)
//! ```
//!
//! The reconciler loads the inputs, calls [`decide`], applies the returned changes and writes
//! the returned status when [`status_update`] says it differs from what is stored.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::objects::{self, SessionContext};
use crate::crd::{Condition, SessionPhase, SessionState, SessionStatus, TemplateSpec};
use crate::template;

pub const CONDITION_READY: &str = "Ready";
pub const CONDITION_TEMPLATE_RESOLVED: &str = "TemplateResolved";
pub const CONDITION_DEPLOYMENT_READY: &str = "DeploymentReady";
pub const CONDITION_PVC_BOUND: &str = "PVCBound";

/// Safety-net resync of a healthy session; watches deliver every real change sooner.
const RESYNC: Duration = Duration::from_secs(300);
/// Re-check of a session that waits on something the watches may not report (a Template
/// created in a namespace we do not watch, a pod that never schedules).
const WAITING_RECHECK: Duration = Duration::from_secs(30);
/// Least time between two status writes of a session that stays `Pending` ([`progress_wait`]);
/// the pace at which a waiting session is looked at anyway.
pub const PROGRESS_INTERVAL: Duration = WAITING_RECHECK;

/// What the reconciler observed about the session's children.
#[derive(Default)]
pub struct Observed<'a> {
    pub template: Option<&'a TemplateSpec>,
    pub deployment: Option<&'a Deployment>,
    pub service: Option<&'a Service>,
    pub ingress: Option<&'a Ingress>,
    pub home_claim: Option<&'a PersistentVolumeClaim>,
    /// Pods labelled with this session.
    pub pods: Vec<&'a Pod>,
}

/// What to do with the session's Deployment.
#[derive(Debug, PartialEq)]
pub enum DeploymentChange {
    Keep,
    Apply(Box<Deployment>),
    ScaleToZero,
    Delete,
}

/// The controller's view of the status; only these fields are written.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusReport {
    pub phase: SessionPhase,
    pub pod_name: Option<String>,
    pub url: Option<String>,
    pub conditions: Vec<ConditionReport>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ConditionReport {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug)]
pub struct Decision {
    pub deployment: DeploymentChange,
    pub service: Option<Service>,
    pub ingress: Option<Ingress>,
    /// A home claim to create because none exists.
    pub home_claim: Option<PersistentVolumeClaim>,
    pub status: StatusReport,
    /// When to look again if nothing else happens.
    pub recheck: Duration,
}

/// Decides what a Session needs, from plain values only.
pub fn decide(ctx: &SessionContext<'_>, observed: &Observed<'_>) -> Decision {
    let template_condition = template_condition(ctx, observed.template);
    let mut decision = Decision {
        deployment: DeploymentChange::Keep,
        service: None,
        ingress: None,
        home_claim: None,
        status: StatusReport {
            phase: SessionPhase::Pending,
            pod_name: None,
            url: None,
            conditions: Vec::new(),
        },
        recheck: RESYNC,
    };

    let state = ctx.spec.desired_state();
    let invalid = match (&state, &ctx.spec.resources) {
        (SessionState::Unknown(other), _) => Some((
            "UnknownState",
            format!(
                "spec.state {other:?} is not one of {}",
                SessionState::KNOWN.join(", ")
            ),
        )),
        (_, Some(resources)) => template::validate_resources("resources", resources)
            .err()
            .map(|message| ("InvalidResources", message)),
        _ => None,
    };
    if let Some((reason, message)) = invalid {
        decision.status.phase = SessionPhase::Failed;
        decision.status.conditions = vec![template_condition, not_ready(reason, message)];
        decision.recheck = RESYNC;
        return decision;
    }

    match state {
        SessionState::Running => running(ctx, observed, template_condition, &mut decision),
        SessionState::Hibernated => {
            if observed
                .deployment
                .is_some_and(|d| desired_replicas(d) != 0)
            {
                decision.deployment = DeploymentChange::ScaleToZero;
            }
            decision.status.phase = SessionPhase::Hibernated;
            decision.status.url = Some(ctx.url());
            decision.status.conditions = vec![
                template_condition,
                condition(
                    CONDITION_DEPLOYMENT_READY,
                    false,
                    "Hibernated",
                    "scaled to zero",
                ),
                not_ready("Hibernated", "session is hibernated".into()),
            ];
        }
        SessionState::Terminated => {
            if observed.deployment.is_some() {
                decision.deployment = DeploymentChange::Delete;
            }
            decision.status.phase = SessionPhase::Terminated;
            decision.status.conditions = vec![
                template_condition,
                condition(
                    CONDITION_DEPLOYMENT_READY,
                    false,
                    "Terminated",
                    "deployment deleted",
                ),
                not_ready("Terminated", "session is terminated".into()),
            ];
        }
        SessionState::Unknown(_) => {}
    }
    if ctx.spec.persistent_home && state != SessionState::Terminated {
        decision
            .status
            .conditions
            .push(pvc_condition(observed.home_claim));
    }
    decision
}

fn running(
    ctx: &SessionContext<'_>,
    observed: &Observed<'_>,
    template_condition: ConditionReport,
    decision: &mut Decision,
) {
    let Some(template) = observed.template else {
        let message = template_condition.message.clone();
        decision.status.conditions =
            vec![template_condition, not_ready("TemplateNotFound", message)];
        decision.recheck = WAITING_RECHECK;
        return;
    };
    if let Err(message) = template::validate(template) {
        decision.status.phase = SessionPhase::Failed;
        decision.status.conditions =
            vec![template_condition, not_ready("TemplateInvalid", message)];
        return;
    }

    let desired = objects::deployment(ctx, template, 1);
    if !matches_desired(observed.deployment, &desired) {
        decision.deployment = DeploymentChange::Apply(Box::new(desired));
    }
    let service = objects::service(ctx, template);
    if objects::recorded_hash(&service) != observed.service.and_then(objects::recorded_hash) {
        decision.service = Some(service);
    }
    if let Some(ingress) = objects::ingress(ctx, template)
        && objects::recorded_hash(&ingress) != observed.ingress.and_then(objects::recorded_hash)
    {
        decision.ingress = Some(ingress);
    }
    if ctx.spec.persistent_home && observed.home_claim.is_none() {
        decision.home_claim = Some(objects::home_claim(ctx));
    }

    // A Deployment about to be re-applied counts as not available yet.
    let available = available_replicas(
        observed
            .deployment
            .filter(|_| decision.deployment == DeploymentChange::Keep),
    );
    let (pod_phase, pod) = running_phase(available, &observed.pods);
    // The session is reached through its Service, which is written apart from the reconcile
    // (`detached`): Running waits until the cache shows it.
    let phase = match (&pod_phase, observed.service) {
        (SessionPhase::Running, None) => SessionPhase::Pending,
        (phase, _) => phase.clone(),
    };
    decision.status.pod_name = pod.and_then(|p| p.metadata.name.clone());
    decision.status.url = Some(ctx.url());
    let ready = if phase == SessionPhase::Running {
        condition(CONDITION_READY, true, "Running", "session is running")
    } else {
        decision.recheck = WAITING_RECHECK;
        let waiting_for = if pod_phase == SessionPhase::Running {
            "waiting for the session's Service"
        } else {
            "waiting for the session pod to become ready"
        };
        not_ready("Starting", waiting_for.into())
    };
    decision.status.phase = phase;
    decision.status.conditions = vec![
        template_condition,
        if available >= 1 {
            condition(
                CONDITION_DEPLOYMENT_READY,
                true,
                "Available",
                "deployment has an available replica",
            )
        } else {
            condition(
                CONDITION_DEPLOYMENT_READY,
                false,
                "Unavailable",
                "deployment has no available replica yet",
            )
        },
        ready,
    ];
}

/// True when the live Deployment already is what we would apply.
fn matches_desired(live: Option<&Deployment>, desired: &Deployment) -> bool {
    live.is_some_and(|live| {
        objects::recorded_hash(live) == objects::recorded_hash(desired)
            && desired_replicas(live) == desired_replicas(desired)
    })
}

fn desired_replicas(deployment: &Deployment) -> i32 {
    deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.replicas)
        .unwrap_or(1)
}

/// The phase rule of a session meant to run, shared by this state machine and the API's
/// status follower of legacy sessions: `Running` once its Deployment has an available replica
/// and the pod serving it (a ready one first, then the newest) is ready, `Pending` before.
/// Also returns that pod.
pub fn running_phase<'a>(
    available_replicas: i32,
    pods: &[&'a Pod],
) -> (SessionPhase, Option<&'a Pod>) {
    let pod = pick_pod(pods);
    let phase = if available_replicas >= 1 && pod.is_some_and(is_ready) {
        SessionPhase::Running
    } else {
        SessionPhase::Pending
    };
    (phase, pod)
}

/// A Deployment's available replicas as its status reports them (none without a Deployment).
pub fn available_replicas(deployment: Option<&Deployment>) -> i32 {
    deployment
        .and_then(|d| d.status.as_ref())
        .and_then(|status| status.available_replicas)
        .unwrap_or(0)
}

/// The pod that serves the session: a ready one if any, else the newest one not terminating.
fn pick_pod<'a>(pods: &[&'a Pod]) -> Option<&'a Pod> {
    let alive = pods
        .iter()
        .copied()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none());
    let mut alive: Vec<&Pod> = alive.collect();
    alive.sort_by(|a, b| {
        is_ready(b)
            .cmp(&is_ready(a))
            .then_with(|| {
                b.metadata
                    .creation_timestamp
                    .cmp(&a.metadata.creation_timestamp)
            })
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    alive.first().copied()
}

pub(crate) fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

fn template_condition(
    ctx: &SessionContext<'_>,
    template: Option<&TemplateSpec>,
) -> ConditionReport {
    match template.map(template::validate) {
        None => condition(
            CONDITION_TEMPLATE_RESOLVED,
            false,
            "TemplateNotFound",
            &format!(
                "Template '{}' not found in namespace '{}'",
                ctx.spec.template, ctx.namespace
            ),
        ),
        Some(Err(message)) => condition(
            CONDITION_TEMPLATE_RESOLVED,
            false,
            "TemplateInvalid",
            &message,
        ),
        Some(Ok(())) => condition(
            CONDITION_TEMPLATE_RESOLVED,
            true,
            "TemplateValid",
            &format!("Template '{}' is valid", ctx.spec.template),
        ),
    }
}

fn pvc_condition(claim: Option<&PersistentVolumeClaim>) -> ConditionReport {
    let phase = claim
        .and_then(|claim| claim.status.as_ref())
        .and_then(|status| status.phase.as_deref());
    match (claim, phase) {
        (None, _) => condition(
            CONDITION_PVC_BOUND,
            false,
            "NotFound",
            "home volume claim does not exist yet",
        ),
        (Some(_), Some("Bound")) => condition(
            CONDITION_PVC_BOUND,
            true,
            "Bound",
            "home volume claim is bound",
        ),
        (Some(_), Some(phase)) => condition(
            CONDITION_PVC_BOUND,
            false,
            "NotBound",
            &format!("home volume claim is {phase}"),
        ),
        (Some(_), None) => condition(
            CONDITION_PVC_BOUND,
            false,
            "NotBound",
            "home volume claim is not bound yet",
        ),
    }
}

fn condition(
    type_: &'static str,
    status: bool,
    reason: &'static str,
    message: &str,
) -> ConditionReport {
    ConditionReport {
        type_,
        status,
        reason,
        message: message.to_string(),
    }
}

fn not_ready(reason: &'static str, message: String) -> ConditionReport {
    ConditionReport {
        type_: CONDITION_READY,
        status: false,
        reason,
        message,
    }
}

/// The status to write, or `None` when the stored status already says the same.
///
/// Transition times are kept for conditions whose status did not change; `reconciledAt` is
/// refreshed only together with a real change, so a steady state writes nothing.
pub fn status_update(
    current: Option<&SessionStatus>,
    report: &StatusReport,
    generation: Option<i64>,
    now: Timestamp,
) -> Option<SessionStatus> {
    let empty = SessionStatus::default();
    let current = current.unwrap_or(&empty);
    let conditions: Vec<Condition> = report
        .conditions
        .iter()
        .map(|wanted| {
            let status = if wanted.status { "True" } else { "False" };
            let previous = current.conditions.iter().find(|c| c.type_ == wanted.type_);
            let last_transition_time = match previous {
                Some(previous) if previous.status == status => {
                    previous.last_transition_time.clone().or(Some(Time(now)))
                }
                _ => Some(Time(now)),
            };
            Condition {
                type_: wanted.type_.to_string(),
                status: status.to_string(),
                reason: wanted.reason.to_string(),
                message: wanted.message.clone(),
                last_transition_time,
                observed_generation: generation,
            }
        })
        .collect();
    let unchanged = current.phase.as_ref() == Some(&report.phase)
        && current.pod_name == report.pod_name
        && current.url == report.url
        && current.observed_generation == generation
        && same_conditions(&current.conditions, &conditions);
    if unchanged {
        return None;
    }
    Some(SessionStatus {
        phase: Some(report.phase.clone()),
        pod_name: report.pod_name.clone(),
        url: report.url.clone(),
        conditions,
        observed_generation: generation,
        reconciled_at: Some(Time(now)),
        ..SessionStatus::default()
    })
}

/// How long to hold back `update`, a status write of a session that was `Pending` and still is,
/// or `None` to write it now.
///
/// While a session starts, its progress details change several times (claim created, claim
/// bound, pod named, Deployment available), and most sessions are `Running` within seconds.
/// Writing each step would cost every session a status write per step, so a starting session's
/// progress is written at most once per [`PROGRESS_INTERVAL`] after its last status write: a
/// quick start costs two writes (`Pending`, `Running`), a slow one shows its progress
/// at that pace. A change of phase, of why the session is not ready (a Template that appeared),
/// of the generation observed or of the URL is written at once.
pub fn progress_wait(
    current: Option<&SessionStatus>,
    update: &SessionStatus,
    now: Timestamp,
) -> Option<Duration> {
    let current = current?;
    let ready_reason = |status: &SessionStatus| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_READY)
            .map(|c| c.reason.clone())
    };
    let still_starting = current.phase == Some(SessionPhase::Pending)
        && update.phase == Some(SessionPhase::Pending)
        && ready_reason(current) == ready_reason(update)
        && current.observed_generation == update.observed_generation
        && current.url == update.url;
    if !still_starting {
        return None;
    }
    let written = current.reconciled_at.as_ref()?.0;
    // A last write stamped in the future (another replica's clock) does not hold anything back.
    let since = Duration::try_from(now.duration_since(written)).ok()?;
    PROGRESS_INTERVAL
        .checked_sub(since)
        .filter(|left| !left.is_zero())
}

/// Condition types this reconciler owns; others' conditions are never compared or written.
const OWN_CONDITIONS: [&str; 4] = [
    CONDITION_READY,
    CONDITION_TEMPLATE_RESOLVED,
    CONDITION_DEPLOYMENT_READY,
    CONDITION_PVC_BOUND,
];

/// Our conditions are all present in `current` with the same content, and none of ours is
/// present that we no longer report.
fn same_conditions(current: &[Condition], ours: &[Condition]) -> bool {
    let no_stale = current
        .iter()
        .filter(|have| OWN_CONDITIONS.contains(&have.type_.as_str()))
        .all(|have| ours.iter().any(|wanted| wanted.type_ == have.type_));
    no_stale
        && ours.iter().all(|wanted| {
            current.iter().any(|have| {
                have.type_ == wanted.type_
                    && have.status == wanted.status
                    && have.reason == wanted.reason
                    && have.message == wanted.message
                    && have.observed_generation == wanted.observed_generation
            })
        })
}

#[cfg(test)]
mod tests;

/// Whether the last operation asked of a session has settled: its status was computed from the
/// current generation and shows the desired state reached (or a failure that needs a change of
/// the spec). Until then, the side that accepted the operation finishes it
/// ([`crate::ownership::handoff`]).
pub fn operation_settled(session: &crate::crd::Session) -> bool {
    use crate::crd::{SessionPhase as Phase, SessionState as State};
    let Some(status) = session.status.as_ref() else {
        return false;
    };
    if status.observed_generation != session.metadata.generation {
        return false;
    }
    matches!(
        (session.spec.desired_state(), status.phase.as_ref()),
        (_, Some(Phase::Failed))
            | (State::Running, Some(Phase::Running))
            | (State::Hibernated, Some(Phase::Hibernated))
            | (State::Terminated, Some(Phase::Terminated))
            | (State::Unknown(_), _)
    )
}

#[cfg(test)]
mod settled_tests {
    use super::operation_settled;
    use crate::crd::{Session, SessionPhase, SessionSpec, SessionState, SessionStatus};

    fn session(
        state: SessionState,
        generation: i64,
        seen: Option<i64>,
        phase: Option<SessionPhase>,
    ) -> Session {
        let mut session = Session::new(
            "s",
            SessionSpec {
                user: "alice".into(),
                template: "firefox".into(),
                state: Some(state),
                resources: None,
                persistent_home: true,
                idle_timeout: "30m".into(),
                max_session_duration: "8h".into(),
                tags: Vec::new(),
            },
        );
        session.metadata.generation = Some(generation);
        session.status = seen.map(|g| SessionStatus {
            phase: phase.clone(),
            observed_generation: Some(g),
            ..SessionStatus::default()
        });
        session
    }

    #[test]
    fn settled_means_the_desired_state_reached_at_this_generation() {
        use SessionPhase as P;
        use SessionState as S;
        for (state, generation, seen, phase, expected) in [
            (S::Running, 1, None, None, false),
            (S::Running, 1, Some(1), Some(P::Pending), false),
            (S::Running, 1, Some(1), Some(P::Running), true),
            (S::Hibernated, 2, Some(1), Some(P::Running), false),
            (S::Hibernated, 2, Some(2), Some(P::Hibernated), true),
            (S::Terminated, 3, Some(3), Some(P::Terminated), true),
            (S::Running, 1, Some(1), Some(P::Failed), true),
        ] {
            assert_eq!(
                operation_settled(&session(state.clone(), generation, seen, phase.clone())),
                expected,
                "{state} gen {generation} seen {seen:?} {phase:?}"
            );
        }
    }
}
