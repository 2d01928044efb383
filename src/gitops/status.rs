//! GitSync status and Events: the rejection of a commit (decided by
//! [`super::outcome::rejected`]), and one merge patch that writes the whole status only when it
//! changed.

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use tracing::warn;

use super::context::{CONTROLLER, Error, GitopsContext, sync_id};
use super::outcome;
use crate::api_status::KubeFailure;
use crate::crd::{GitSync, GitSyncStatus};

/// Records a rejected commit in status, with an Event and a metric the first time.
pub(crate) async fn reject(
    ctx: &GitopsContext,
    sync: &GitSync,
    status: &mut GitSyncStatus,
    commit: &str,
    file: &str,
    reason: &str,
    label: &'static str,
) {
    let Some(reason) = outcome::rejected(status, commit, file, reason, Timestamp::now()) else {
        return;
    };
    ctx.metrics.gitops.failure(label);
    warn!(gitsync = %sync_id(sync), %commit, %reason, "commit rejected; nothing applied");
    let note = format!("commit {} rejected: {reason}", outcome::short(commit));
    publish(ctx, sync, EventType::Warning, "Rejected", note).await;
}

/// Writes status only when it differs from what the object carries.
pub(crate) async fn write_status(
    ctx: &GitopsContext,
    sync: &GitSync,
    namespace: &str,
    current: &GitSyncStatus,
    status: GitSyncStatus,
) -> Result<(), Error> {
    if &status == current {
        return Ok(());
    }
    ctx.metrics.reconcilers.write(CONTROLLER, "gitsync_status");
    let api: Api<GitSync> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = serde_json::json!({"status": status_patch(&status)});
    api.patch_status(
        &sync.name_any(),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await
    .map_err(KubeFailure::during("writing GitSync status"))?;
    Ok(())
}

/// Every field of `GitSyncStatus` as written; absent ones are patched to `null`.
const STATUS_FIELDS: &[&str] = &[
    "lastFetchedCommit",
    "lastFetchTime",
    "lastAppliedCommit",
    "lastAppliedTime",
    "rejected",
    "inventory",
    "unmatched",
    "conditions",
    "observedGeneration",
];

/// A merge patch that sets the whole status: fields that are empty are set to `null`, since a
/// merge patch that merely omits them would leave them in place (and the cached object we
/// compared with may be older than the stored one).
fn status_patch(status: &GitSyncStatus) -> serde_json::Value {
    let mut patch = serde_json::to_value(status).unwrap_or_default();
    if let Some(patch) = patch.as_object_mut() {
        // A merge patch merges nested objects too: an empty `file` must be removed explicitly,
        // or the file of an earlier rejection would stay next to a new reason.
        if let Some(rejected) = patch.get_mut("rejected").and_then(|r| r.as_object_mut()) {
            rejected.entry("file").or_insert(serde_json::Value::Null);
        }
        for key in STATUS_FIELDS {
            patch
                .entry((*key).to_string())
                .or_insert(serde_json::Value::Null);
        }
    }
    patch
}

pub(crate) async fn publish(
    ctx: &GitopsContext,
    sync: &GitSync,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Sync".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &sync.object_ref(&())).await {
        warn!(%error, "could not publish gitsync event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Condition;
    use crate::crd::gitsync::{InventoryEntry, Rejection};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn empty_status_fields_are_removed_by_the_patch() {
        let next = GitSyncStatus {
            last_applied_commit: Some("c2".into()),
            ..GitSyncStatus::default()
        };
        let patch = status_patch(&next);
        assert_eq!(patch["lastAppliedCommit"], "c2");
        assert_eq!(patch["rejected"], serde_json::Value::Null);
        assert_eq!(patch["unmatched"], serde_json::Value::Null);
        let without_file = GitSyncStatus {
            rejected: Some(Rejection {
                commit: "c3".into(),
                file: String::new(),
                reason: "too large".into(),
            }),
            ..GitSyncStatus::default()
        };
        let patch = status_patch(&without_file);
        assert_eq!(patch["rejected"]["file"], serde_json::Value::Null);
        assert_eq!(patch["rejected"]["reason"], "too large");
        // Every field the type writes is listed, so none can be left behind.
        let full = GitSyncStatus {
            last_fetched_commit: Some("c".into()),
            last_fetch_time: Some(Time(Timestamp::now())),
            last_applied_commit: Some("c".into()),
            last_applied_time: Some(Time(Timestamp::now())),
            rejected: Some(Rejection::default()),
            inventory: vec![InventoryEntry::default()],
            unmatched: vec!["u".into()],
            conditions: vec![Condition::default()],
            observed_generation: Some(1),
        };
        let written = serde_json::to_value(&full).unwrap_or_default();
        let mut keys: Vec<&str> = written
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        keys.sort_unstable();
        let mut listed = STATUS_FIELDS.to_vec();
        listed.sort_unstable();
        assert_eq!(keys, listed);
    }
}
