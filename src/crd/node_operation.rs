//! `NodeOperation` (`nodeoperations.stream.space`, short name `nodeop`, cluster-scoped): one
//! maintenance request for one node: cordon, drain, label and taint edits.
//!
//! The request is declarative: while an operation that cordons (or drains) a node exists, the
//! node stays cordoned; deleting it (a finalizer) makes the node schedulable again unless it was
//! already unschedulable before the operation started (recorded in
//! `status.priorUnschedulable`). Label and taint edits are one-shot: they touch only the named
//! keys and are not reverted on deletion.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cel::{LABEL_VALUE, QUALIFIED_NAME, all_keys_match, all_values_match, matches};
use super::common::{Condition, conditions_schema, lenient_string_enum, lenient_time, plain};

/// Most label keys or taints one operation may edit (bounds the cost of the CEL rules).
pub const MAX_EDITS: usize = 64;

/// CEL: the operation asks for something (the controller fails an empty one as `InvalidSpec`).
const SOMETHING_TO_DO: &str = "(has(self.cordon) && self.cordon) || has(self.drain) \
    || (has(self.labels) && ((has(self.labels.add) && size(self.labels.add) > 0) \
        || (has(self.labels.remove) && size(self.labels.remove) > 0))) \
    || (has(self.taints) && ((has(self.taints.add) && size(self.taints.add) > 0) \
        || (has(self.taints.remove) && size(self.taints.remove) > 0)))";

/// Evictions in flight at once when the drain does not say.
pub const DEFAULT_DRAIN_CONCURRENCY: u32 = 5;

lenient_string_enum! {
    /// Progress of an operation.
    NodeOperationPhase {
        Pending => "Pending",
        Running => "Running",
        Succeeded => "Succeeded",
        Failed => "Failed",
    }
}

impl NodeOperationPhase {
    /// Succeeded or Failed: nothing more will be done (a cordon is still held).
    pub fn is_finished(&self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

lenient_string_enum! {
    /// Effect of a node taint.
    TaintEffect {
        NoSchedule => "NoSchedule",
        PreferNoSchedule => "PreferNoSchedule",
        NoExecute => "NoExecute",
    }
}

#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "stream.space",
    version = "v1alpha1",
    kind = "NodeOperation",
    plural = "nodeoperations",
    singular = "nodeoperation",
    shortname = "nodeop",
    status = "NodeOperationStatus",
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.nodeName"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Remaining","type":"integer","jsonPath":".status.drain.remaining"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(SOMETHING_TO_DO)
        .message("spec has nothing to do: set cordon, drain, labels or taints"),
    validation = Rule::new("!has(self.drain) || !has(self.cordon) || self.cordon")
        .message("spec.cordon must not be false when spec.drain is set: a drain always cordons")
        .field_path(".cordon")
)]
pub struct NodeOperationSpec {
    /// The node to operate on.
    #[schemars(length(min = 1, max = 253))]
    pub node_name: String,
    /// Mark the node unschedulable while this operation exists.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cordon: bool,
    /// Evict the node's pods (implies `cordon`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainSpec>,
    /// Labels to add or overwrite and label keys to remove; other labels are left alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<LabelEdits>,
    /// Taints to add and taints to remove; other taints are left alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taints: Option<TaintEdits>,
    /// Delete the operation this many seconds after it finished (which uncordons the node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i64>,
}

impl NodeOperationSpec {
    /// Whether the operation holds the node cordoned.
    pub fn cordons(&self) -> bool {
        self.cordon || self.drain.is_some()
    }

    /// Whether the operation asks for anything at all.
    pub fn is_empty(&self) -> bool {
        !self.cordons()
            && self.labels.as_ref().is_none_or(LabelEdits::is_empty)
            && self.taints.as_ref().is_none_or(TaintEdits::is_empty)
    }
}

/// `kubectl drain` options.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainSpec {
    /// Grace period given to each evicted pod; absent means the pod's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub grace_period_seconds: Option<i64>,
    /// Give up (phase Failed, pods still there listed) after this many seconds of draining.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_seconds: Option<i64>,
    /// Leave DaemonSet pods in place; when false, a DaemonSet pod fails the drain.
    #[serde(default = "default_true")]
    pub ignore_daemon_sets: bool,
    /// Evict pods that use emptyDir volumes (their data is lost).
    #[serde(default)]
    pub delete_empty_dir_data: bool,
    /// Evict pods that no controller manages (they are not recreated).
    #[serde(default)]
    pub force: bool,
    /// Evictions in progress at once (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub concurrency: Option<u32>,
}

impl DrainSpec {
    pub fn concurrency(&self) -> usize {
        self.concurrency.unwrap_or(DEFAULT_DRAIN_CONCURRENCY).max(1) as usize
    }
}

fn default_true() -> bool {
    true
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
pub struct LabelEdits {
    /// Labels set to these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = MAX_EDITS,
        "additionalProperties" = {"type": "string", "maxLength": 63}
    ))]
    #[x_kube(
        validation = Rule::new(all_keys_match(QUALIFIED_NAME))
            .message("spec.labels.add: every key must be a label key such as example.com/tier"),
        validation = Rule::new(all_values_match(LABEL_VALUE))
            .message("spec.labels.add: every value must be a label value (at most 63 letters, digits, -, _ or .)")
    )]
    pub add: BTreeMap<String, String>,
    /// Label keys removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_EDITS), inner(length(max = 317)))]
    #[x_kube(validation = Rule::new(all_keys_match(QUALIFIED_NAME))
        .message("spec.labels.remove: every entry must be a label key such as example.com/tier"))]
    pub remove: Vec<String>,
}

impl LabelEdits {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaintEdits {
    /// Taints added, or updated (value) when one with the same key and effect exists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_EDITS))]
    pub add: Vec<NodeTaint>,
    /// Taints removed: by key and effect, or every effect of the key when no effect is given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_EDITS))]
    pub remove: Vec<TaintSelector>,
}

impl TaintEdits {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
pub struct NodeTaint {
    #[schemars(length(min = 1, max = 316))]
    #[x_kube(validation = Rule::new(matches("self", QUALIFIED_NAME))
        .message("taint key must be a qualified name such as example.com/maintenance"))]
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new(matches("self", LABEL_VALUE))
        .message("taint value must be at most 63 letters, digits, -, _ or ., starting and ending alphanumeric"))]
    pub value: Option<String>,
    #[schemars(schema_with = "plain::<TaintEffect>")]
    pub effect: TaintEffect,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
pub struct TaintSelector {
    #[schemars(length(min = 1, max = 316))]
    #[x_kube(validation = Rule::new(matches("self", QUALIFIED_NAME))
        .message("taint key must be a qualified name such as example.com/maintenance"))]
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "plain::<TaintEffect>")]
    pub effect: Option<TaintEffect>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeOperationStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "plain::<NodeOperationPhase>")]
    pub phase: Option<NodeOperationPhase>,
    /// One line a person can act on: what is happening or what blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// `spec.unschedulable` of the node before this operation cordoned it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior_unschedulable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainStatus>,
    /// The last error met; cleared by the next success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_time"
    )]
    pub start_time: Option<Time>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_time"
    )]
    pub completion_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Progress of a drain.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainStatus {
    /// Pods to evict (seen so far).
    pub total: u32,
    /// Pods of the drain that were evicted (gone or terminating).
    pub evicted: u32,
    /// Pods to evict that are still on the node (terminating ones included).
    pub remaining: u32,
    /// Pods still on the node that must go, `namespace/name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remaining_pods: Vec<String>,
    /// Pods whose eviction was refused, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked: Vec<BlockedPod>,
    /// Pods left on the node on purpose (DaemonSet, mirror), `namespace/name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockedPod {
    /// `namespace/name` of the pod.
    pub pod: String,
    pub reason: String,
    /// The PodDisruptionBudget that refuses the eviction, when one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_disruption_budget: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_defaults_and_emptiness() {
        let spec: NodeOperationSpec = serde_json::from_value(serde_json::json!({
            "nodeName": "n", "drain": {}
        }))
        .expect("valid spec");
        let drain = spec.drain.clone().unwrap_or_default();
        assert!(drain.ignore_daemon_sets);
        assert!(!drain.force && !drain.delete_empty_dir_data);
        assert_eq!(drain.concurrency(), 5);
        assert!(spec.cordons());
        assert!(!spec.is_empty());
        let empty: NodeOperationSpec =
            serde_json::from_value(serde_json::json!({"nodeName": "n", "labels": {}}))
                .expect("valid spec");
        assert!(empty.is_empty());
    }
}
