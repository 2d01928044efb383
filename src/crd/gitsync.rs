//! `GitSync` (`gitsyncs.stream.space`): one Git repository whose documents the controller keeps
//! the cluster in line with (see `crate::gitops` and `docs/gitops.md`).
//!
//! The spec names where to read (URL, branch, path, overlay) and how often; the status records
//! what was fetched and applied, why a commit was rejected, and a summary of what is managed.
//! The authoritative inventory lives on the managed Nodes themselves (an annotation written in
//! the same patch as the labels), so it survives restarts and can never disagree with the node.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, conditions_schema, lenient_time};

/// Default time between two fetches when no webhook arrives.
pub const DEFAULT_INTERVAL: &str = "5m";
/// Default branch to follow.
pub const DEFAULT_BRANCH: &str = "main";

#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stream.space",
    version = "v1alpha1",
    kind = "GitSync",
    plural = "gitsyncs",
    singular = "gitsync",
    shortname = "gs",
    namespaced,
    status = "GitSyncStatus",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".spec.url"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".status.lastAppliedCommit"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GitSyncSpec {
    /// Repository URL: `https://...`, `ssh://...` / `git@host:path`, or `file://...`.
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// Branch to follow.
    #[serde(default = "default_branch")]
    #[schemars(length(min = 1, max = 255))]
    pub branch: String,
    /// Directory inside the repository that holds the documents; absent means the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Time between two fetches, such as `30s`, `5m` or `1h`.
    #[serde(default = "default_interval")]
    #[schemars(length(min = 2, max = 10), regex(pattern = r"^[0-9]+(s|m|h)$"))]
    pub interval: String,
    /// Secret with the credentials: `token` (or `password`, with optional `username`) for
    /// HTTPS, `identity` (a private key, optional `passphrase`) for SSH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// Secret whose `token` key verifies push webhooks; without it webhooks are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret_ref: Option<SecretRef>,
    /// Overlay to apply: the patches in `overlays/<overlay>/` below `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<String>,
    /// Stop fetching and applying; what was applied stays as it is.
    #[serde(default)]
    pub suspend: bool,
    /// Remove labels and taints this sync applied earlier once the repository stops declaring
    /// them.
    #[serde(default = "default_true")]
    pub prune: bool,
}

/// A Secret in the GitSync's namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SecretRef {
    pub name: String,
}

fn default_branch() -> String {
    DEFAULT_BRANCH.to_string()
}

fn default_interval() -> String {
    DEFAULT_INTERVAL.to_string()
}

fn default_true() -> bool {
    true
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitSyncStatus {
    /// Commit the branch pointed at when last fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fetched_commit: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_time"
    )]
    pub last_fetch_time: Option<Time>,
    /// Commit whose documents are in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_commit: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_time"
    )]
    pub last_applied_time: Option<Time>,
    /// Why the last fetched commit was rejected, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Rejection>,
    /// What the commit in force manages, node by node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inventory: Vec<InventoryEntry>,
    /// NodeConfig documents that match no node (reported, not an error).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmatched: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A rejected commit: which file and why.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rejection {
    pub commit: String,
    /// File (relative to the repository root) and line, when the problem is in one file.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub file: String,
    pub reason: String,
}

/// The labels and taints one sync manages on one node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InventoryEntry {
    pub node: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Taints as `key:Effect`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_to_missing_fields() {
        let spec: GitSyncSpec =
            serde_json::from_value(serde_json::json!({"url": "file:///repo"})).expect("valid");
        assert_eq!(spec.branch, "main");
        assert_eq!(spec.interval, "5m");
        assert!(spec.prune);
        assert!(!spec.suspend);
        assert_eq!(spec.path, None);
    }
}
