//! Requests for an immediate sync, carried on the GitSync itself so any replica can take one.
//!
//! A verified push hook (served by every replica) only sets the annotation
//! [`SYNC_REQUESTED_ANNOTATION`] to the current time (RFC 3339). The GitSync watch delivers the
//! change to the leader, whose reconciler syncs at once when the value differs from the last one
//! it handled. The value is remembered in memory: after a restart every GitSync is fetched
//! anyway, so a request that arrived meanwhile is never lost.

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::crd::GitSync;

/// Annotation a push hook writes; its value is the RFC 3339 time of the request.
pub const SYNC_REQUESTED_ANNOTATION: &str = "stream.space/sync-requested";
/// Field manager of the annotation (distinct from the sync's own writes).
const FIELD_MANAGER: &str = "streamspace-controller-hooks";

/// The pending request on `sync`, if any.
pub fn requested(sync: &GitSync) -> Option<&str> {
    sync.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SYNC_REQUESTED_ANNOTATION))
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// Pure rule: does `current` (the annotation now) ask for a sync that `handled` (the value the
/// reconciler last acted on) has not covered?
pub fn is_new(current: Option<&str>, handled: Option<&str>) -> bool {
    current.is_some() && current != handled
}

/// Marks the GitSync as wanting a sync now. A merge patch of one annotation: it touches nothing
/// else and needs no read first.
pub async fn mark(client: &Client, namespace: &str, name: &str) -> Result<(), kube::Error> {
    let patch = json!({"metadata": {"annotations": {
        SYNC_REQUESTED_ANNOTATION: Timestamp::now().to_string(),
    }}});
    Api::<GitSync>::namespaced(client.clone(), namespace)
        .patch(
            name,
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            },
            &Patch::Merge(&patch),
        )
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_new_until_handled() {
        let rows = [
            (None, None, false),
            (None, Some("t1"), false),
            (Some("t1"), None, true),
            (Some("t1"), Some("t1"), false),
            (Some("t2"), Some("t1"), true),
        ];
        for (current, handled, new) in rows {
            assert_eq!(is_new(current, handled), new, "{current:?} {handled:?}");
        }
    }
}
