//! What a GitSync pass reports, as pure functions of plain values: whether to fetch, the
//! status and conditions after an apply, a rejection or a failed fetch, and when to look
//! again. The reconciler fetches, plans and applies; [`super::status`] writes what comes back.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::plan::Plan;
use super::sync_request;
use crate::crd::gitsync::{InventoryEntry, Rejection};
use crate::crd::{Condition, GitSyncStatus};

/// Reasons and messages longer than this are cut in status (the Events carry the same).
pub const MAX_REASON: usize = 2000;
/// The shortest requeue after a good pass, so a short interval cannot spin.
pub const MIN_REQUEUE: Duration = Duration::from_secs(1);

/// What a sync remembers of its last fetch, as plain values.
#[derive(Clone, Copy, Debug)]
pub struct LastFetch<'a> {
    /// `metadata.generation` the fetch was made for.
    pub generation: Option<i64>,
    /// Time since the fetch.
    pub since: Duration,
    /// The sync request (annotation value) last acted on.
    pub handled_request: Option<&'a str>,
}

/// Whether this pass fetches: on the first pass, for a sync request not handled yet, after a
/// spec change, or once the interval has passed since the last fetch.
pub fn fetch_due(
    last: Option<LastFetch<'_>>,
    generation: Option<i64>,
    request: Option<&str>,
    interval: Duration,
) -> bool {
    match last {
        None => true,
        Some(last) => {
            sync_request::is_new(request, last.handled_request)
                || last.generation != generation
                || last.since >= interval
        }
    }
}

/// When a good pass looks again: what is left of the interval since the last fetch, at least
/// [`MIN_REQUEUE`].
pub fn requeue_after(interval: Duration, since_fetch: Duration) -> Duration {
    interval.saturating_sub(since_fetch).max(MIN_REQUEUE)
}

/// The first 12 characters of a commit, for messages.
pub fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// The note of the `Applied` Event: what the commit changed.
pub fn applied_note(
    commit: &str,
    changed: usize,
    objects_changed: usize,
    unmatched: usize,
) -> String {
    format!(
        "commit {}: {} node(s) and {objects_changed} object(s) changed, {unmatched} unmatched NodeConfig(s)",
        short(commit),
        changed.saturating_sub(objects_changed),
    )
}

/// Status while no commit is in force: a failed fetch says why (a rejection already did).
pub fn nothing_in_force(status: &mut GitSyncStatus, fetch_error: Option<&str>, now: Timestamp) {
    if let Some(message) = fetch_error {
        set_condition(status, "Ready", false, "FetchFailed", message, now);
    }
}

/// Records the rejection of `commit` (Ready=False, Stalled=True); the reason is cut at
/// [`MAX_REASON`]. Returns the recorded reason when the rejection is new, `None` when status
/// already carries the same one (no Event, no metric again).
pub fn rejected(
    status: &mut GitSyncStatus,
    commit: &str,
    file: &str,
    reason: &str,
    now: Timestamp,
) -> Option<String> {
    let reason = cut(reason);
    let rejection = Rejection {
        commit: commit.to_string(),
        file: file.to_string(),
        reason: reason.clone(),
    };
    if status.rejected.as_ref() == Some(&rejection) {
        return None;
    }
    set_condition(status, "Ready", false, "CommitRejected", &reason, now);
    set_condition(status, "Stalled", true, "CommitRejected", &reason, now);
    status.rejected = Some(rejection);
    Some(reason)
}

fn cut(reason: &str) -> String {
    let mut reason = reason.to_string();
    if reason.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push_str(" ...");
    }
    reason
}

/// The status after a successful apply of `commit`: the commit in force, the inventory (the
/// record of what this sync owns), the unmatched NodeConfigs and the conditions. Returns
/// whether `commit` is newly applied.
pub fn applied(
    status: &mut GitSyncStatus,
    commit: &str,
    plan: &Plan,
    fetch_error: Option<&str>,
    now: Timestamp,
) -> bool {
    let newly_applied = status.last_applied_commit.as_deref() != Some(commit);
    if newly_applied {
        status.last_applied_commit = Some(commit.to_string());
        status.last_applied_time = Some(Time(now));
    }
    if status.last_fetched_commit.as_deref() == Some(commit) {
        status.rejected = None;
    }
    status.inventory = plan
        .managed
        .iter()
        .map(|m| InventoryEntry {
            node: m.node.clone(),
            labels: m.owned.labels.iter().cloned().collect(),
            taints: m.owned.taints.iter().cloned().collect(),
        })
        .collect();
    status.unmatched = plan.unmatched.clone();
    let short = short(commit);
    match (fetch_error, &status.rejected) {
        (Some(error), _) => {
            let message = format!("commit {short} in force; fetching failed: {error}");
            set_condition(status, "Ready", false, "FetchFailed", &message, now);
        }
        (None, Some(rejection)) => {
            let message = format!(
                "commit {short} in force; newer commit rejected: {}",
                rejection.reason
            );
            set_condition(status, "Ready", false, "CommitRejected", &message, now);
            set_condition(status, "Stalled", true, "CommitRejected", &message, now);
        }
        (None, None) => {
            let message = format!("applied commit {short}");
            set_condition(status, "Ready", true, "Synced", &message, now);
            remove_condition(status, "Stalled");
        }
    }
    set_condition(
        status,
        "Reconciling",
        false,
        "Idle",
        "waiting for the next change",
        now,
    );
    newly_applied
}

/// Sets a condition; its transition time moves only when its status does.
pub fn set_condition(
    status: &mut GitSyncStatus,
    type_: &str,
    value: bool,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    let value = if value { "True" } else { "False" };
    let existing = status.conditions.iter_mut().find(|c| c.type_ == type_);
    match existing {
        Some(c) if c.status == value && c.reason == reason && c.message == message => {}
        Some(c) => {
            if c.status != value {
                c.last_transition_time = Some(Time(now));
            }
            c.status = value.into();
            c.reason = reason.into();
            c.message = message.into();
        }
        None => status.conditions.push(Condition {
            type_: type_.into(),
            status: value.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: Some(Time(now)),
            observed_generation: None,
        }),
    }
}

pub fn remove_condition(status: &mut GitSyncStatus, type_: &str) {
    status.conditions.retain(|c| c.type_ != type_);
}

#[cfg(test)]
mod tests;
