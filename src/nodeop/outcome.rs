//! What a pass over a NodeOperation reports, as pure functions of plain values: the drain's
//! progress and verdict from its plan and the results of its evictions, the finished status,
//! and the summary condition. The reconciler reads the node and its pods, evicts (at most
//! `concurrency` at once), and hands the results here; it writes what comes back.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;

use super::plan::DrainPlan;
use super::state;
use crate::crd::Condition;
use crate::crd::node_operation::{
    BlockedPod, DrainSpec, DrainStatus, NodeOperationPhase, NodeOperationSpec, NodeOperationStatus,
};

/// Condition that summarises the operation.
pub const CONDITION: &str = "Complete";
/// How soon a drain looks again whether evicted pods are gone.
pub const DRAIN_POLL: Duration = Duration::from_secs(1);
/// How soon an eviction refused by a PodDisruptionBudget is retried.
pub const BLOCKED_RETRY: Duration = Duration::from_secs(3);
/// Pod names listed in status at most (the counts are always complete).
pub const MAX_LISTED_PODS: usize = 50;

/// An Event to publish: type, reason, note.
pub type Note = (EventType, &'static str, String);

/// The result of a pass: the status to report, when to look again, and the Events to publish.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    pub status: NodeOperationStatus,
    pub requeue: Option<Duration>,
    pub events: Vec<Note>,
}

/// One eviction of this pass and what it came to, with what the reconciler looked up for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    /// `namespace/name`.
    pub pod: String,
    pub result: Attempted,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Attempted {
    Evicted,
    /// The pod was already gone.
    Gone,
    /// Refused by a PodDisruptionBudget: the server's message, the budget (`namespace/name`)
    /// when one was found, and whether an Event is due (they are rate limited per pod).
    Blocked {
        message: String,
        budget: Option<String>,
        event_due: bool,
    },
    Failed(String),
}

/// Ends the operation: phase Succeeded or Failed, completion time, the condition, one Event,
/// and a requeue for the time to live when there is one.
pub fn finish(
    spec: &NodeOperationSpec,
    mut status: NodeOperationStatus,
    succeeded: bool,
    reason: &'static str,
    message: String,
    now: Timestamp,
) -> Outcome {
    let phase = if succeeded {
        NodeOperationPhase::Succeeded
    } else {
        NodeOperationPhase::Failed
    };
    status.completion_time = Some(Time(now));
    if !succeeded {
        status.last_error = Some(message.clone());
    }
    set(&mut status, phase, reason, message.clone(), now);
    let type_ = if succeeded {
        EventType::Normal
    } else {
        EventType::Warning
    };
    let requeue = spec
        .ttl_seconds_after_finished
        .map(|ttl| Duration::from_secs(u64::try_from(ttl).unwrap_or(0)));
    Outcome {
        status,
        requeue,
        events: vec![(type_, reason, message)],
    }
}

/// What a drain pass does once it has its plan.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// The drain is over (drained, refused or timed out): report this.
    Finished(Outcome),
    /// Evict `plan.evict_now`; the status carries the counts from before the evictions.
    Evict(NodeOperationStatus),
}

/// Before any eviction of a pass: a drain with refused pods fails, one with nothing left
/// succeeds, one past its timeout fails; otherwise the pass evicts its batch.
pub fn drain_verdict(
    spec: &NodeOperationSpec,
    options: &DrainSpec,
    mut status: NodeOperationStatus,
    plan: &DrainPlan,
    now: Timestamp,
) -> Verdict {
    let node = &spec.node_name;
    let mut drain = status.drain.clone().unwrap_or_default();
    drain.skipped = plan.skipped.clone();
    // Counted before this pass evicts, so the pods it evicts are not counted twice.
    record_remaining(&mut drain, plan);
    if !plan.refused.is_empty() {
        drain.blocked = plan
            .refused
            .iter()
            .map(|(pod, reason)| BlockedPod {
                pod: pod.clone(),
                reason: (*reason).to_string(),
                pod_disruption_budget: None,
            })
            .collect();
        let listed: Vec<String> = plan
            .refused
            .iter()
            .take(MAX_LISTED_PODS)
            .map(|(pod, reason)| format!("{pod} is {reason}"))
            .collect();
        let message = format!(
            "cannot drain node {node}; nothing was evicted: {}",
            listed.join("; ")
        );
        status.drain = Some(drain);
        return Verdict::Finished(finish(spec, status, false, "PodsRefused", message, now));
    }
    if plan.is_done() {
        drain.blocked.clear();
        status.drain = Some(drain);
        let message = format!("node {node} drained");
        return Verdict::Finished(finish(spec, status, true, "Drained", message, now));
    }
    let start = status.start_time.as_ref().map(|t| t.0);
    if state::timed_out(start, options.timeout_seconds, now) {
        let message = format!(
            "drain of node {node} timed out after {}s with {} pods remaining: {}",
            options.timeout_seconds.unwrap_or_default(),
            plan.remaining.len(),
            drain.remaining_pods.join(", ")
        );
        status.drain = Some(drain);
        return Verdict::Finished(finish(spec, status, false, "Timeout", message, now));
    }
    status.drain = Some(drain);
    Verdict::Evict(status)
}

/// After the evictions of a pass: counts, the pods still blocked (a block reported before for
/// a pod not tried again stands while the pod remains), the last error, the message, and how
/// soon to look again.
pub fn drain_progress(
    spec: &NodeOperationSpec,
    mut status: NodeOperationStatus,
    plan: &DrainPlan,
    attempts: Vec<Attempt>,
    now: Timestamp,
) -> Outcome {
    let mut drain = status.drain.clone().unwrap_or_default();
    let attempted: BTreeSet<&str> = attempts.iter().map(|a| a.pod.as_str()).collect();
    let mut blocked: Vec<BlockedPod> = drain
        .blocked
        .iter()
        .filter(|b| !attempted.contains(b.pod.as_str()) && plan.remaining.contains(&b.pod))
        .cloned()
        .collect();
    let mut events = Vec::new();
    status.last_error = None;
    for Attempt { pod, result } in attempts {
        match result {
            Attempted::Evicted => drain.evicted += 1,
            Attempted::Gone => {}
            Attempted::Blocked {
                message,
                budget,
                event_due,
            } => {
                if event_due {
                    let note = match &budget {
                        Some(b) => format!(
                            "eviction of pod {pod} blocked by PodDisruptionBudget {b}; retrying"
                        ),
                        None => format!("eviction of pod {pod} blocked: {message}; retrying"),
                    };
                    events.push((EventType::Warning, "EvictionBlocked", note));
                }
                blocked.push(BlockedPod {
                    pod,
                    reason: format!("eviction refused: {message}"),
                    pod_disruption_budget: budget,
                });
            }
            Attempted::Failed(message) => {
                status.last_error = Some(format!("evicting {pod}: {message}"));
                blocked.push(BlockedPod {
                    pod,
                    reason: format!("eviction failed: {message}"),
                    pod_disruption_budget: None,
                });
            }
        }
    }
    blocked.sort_by(|a, b| a.pod.cmp(&b.pod));
    drain.blocked = blocked;
    let (reason, message, requeue) = progress_message(&spec.node_name, &drain);
    status.drain = Some(drain);
    set(
        &mut status,
        NodeOperationPhase::Running,
        reason,
        message,
        now,
    );
    Outcome {
        status,
        requeue: Some(requeue),
        events,
    }
}

/// Reason, message and requeue of a drain still under way.
fn progress_message(node: &str, drain: &DrainStatus) -> (&'static str, String, Duration) {
    let counts = format!(
        "draining node {node}: {} of {} pods evicted, {} remaining",
        drain.evicted, drain.total, drain.remaining
    );
    match drain.blocked.first() {
        Some(first) => {
            let by = first
                .pod_disruption_budget
                .as_ref()
                .map(|b| format!(" by PodDisruptionBudget {b}"))
                .unwrap_or_default();
            let message = format!(
                "{counts}; eviction of {} blocked{by} ({} blocked in all); retrying every {}s; relax the budget or scale up to let it proceed",
                first.pod,
                drain.blocked.len(),
                BLOCKED_RETRY.as_secs()
            );
            ("EvictionBlocked", message, BLOCKED_RETRY)
        }
        None => ("Draining", counts, DRAIN_POLL),
    }
}

/// What an operation does, for its Started event and message.
pub fn describe(spec: &NodeOperationSpec) -> String {
    let mut what = Vec::new();
    if spec.drain.is_some() {
        what.push("drain");
    } else if spec.cordon {
        what.push("cordon");
    }
    if spec.labels.as_ref().is_some_and(|l| !l.is_empty()) {
        what.push("labels");
    }
    if spec.taints.as_ref().is_some_and(|t| !t.is_empty()) {
        what.push("taints");
    }
    format!("{} node {}", what.join(", "), spec.node_name)
}

/// Records the pods still to go. `total` grows when pods that were never evicted appear;
/// `evicted` counts the drain's pods that are gone or going, so it stays right even when a
/// crash lost the status write after an accepted eviction.
pub fn record_remaining(drain: &mut DrainStatus, plan: &DrainPlan) {
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let not_evicted = count(plan.not_evicted);
    drain.remaining = count(plan.remaining.len());
    drain.remaining_pods = plan
        .remaining
        .iter()
        .take(MAX_LISTED_PODS)
        .cloned()
        .collect();
    drain.total = drain.total.max(drain.evicted.saturating_add(not_evicted));
    drain.evicted = drain.total.saturating_sub(not_evicted);
}

/// Sets phase, message and the summary condition (keeping its transition time while its status
/// and reason stay the same).
pub fn set(
    status: &mut NodeOperationStatus,
    phase: NodeOperationPhase,
    reason: &str,
    message: String,
    now: Timestamp,
) {
    let condition_status = if phase == NodeOperationPhase::Succeeded {
        "True"
    } else {
        "False"
    };
    let previous = status.conditions.iter().find(|c| c.type_ == CONDITION);
    let transition = match previous {
        Some(c) if c.status == condition_status && c.reason == reason => {
            c.last_transition_time.clone()
        }
        _ => Some(Time(now)),
    };
    let condition = Condition {
        type_: CONDITION.to_string(),
        status: condition_status.to_string(),
        reason: reason.to_string(),
        message: message.clone(),
        last_transition_time: transition,
        observed_generation: status.observed_generation,
    };
    status.conditions.retain(|c| c.type_ != CONDITION);
    status.conditions.push(condition);
    status.phase = Some(phase);
    status.message = Some(message);
}

/// The metric label of a phase.
pub fn phase_label(phase: &NodeOperationPhase) -> &'static str {
    match phase {
        NodeOperationPhase::Pending => "Pending",
        NodeOperationPhase::Running => "Running",
        NodeOperationPhase::Succeeded => "Succeeded",
        NodeOperationPhase::Failed => "Failed",
        NodeOperationPhase::Unknown(_) => "Unknown",
    }
}

#[cfg(test)]
mod tests;
