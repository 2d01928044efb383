//! The controller handler's intent, as pure functions: the `NodeOperation` an action becomes,
//! its name and labels, and which operations an uncordon deletes.
//!
//! Drains ask for what the old API did (every pod except mirror and DaemonSet pods goes, with
//! `force` and `deleteEmptyDirData`), so the same call means the same thing in both modes;
//! the controller does it with evictions and PodDisruptionBudgets.

use std::collections::BTreeMap;

use kube::ResourceExt;

use super::request::NodeAction;
use crate::crd::NodeOperation;
use crate::crd::node_operation::{
    DrainSpec, LabelEdits, NodeOperationSpec, TaintEdits, TaintSelector,
};

/// Label on NodeOperations the API created: only these does an uncordon through the API delete.
pub const CREATED_BY_LABEL: &str = "stream.space/created-by";
pub const CREATED_BY_API: &str = "api";
/// Label naming the node (when the node name is a valid label value).
pub const NODE_LABEL: &str = "stream.space/node";
/// Length of the random part of generated names.
pub const SUFFIX_LEN: usize = 5;
/// Longest Kubernetes object name.
const MAX_NAME: usize = 253;

/// The NodeOperation for `action` on `node`, or `None` for an uncordon (which deletes
/// operations instead). `suffix` is the random part of the name.
pub fn operation(
    node: &str,
    action: &NodeAction,
    extra_labels: &BTreeMap<String, String>,
    suffix: &str,
) -> Option<NodeOperation> {
    let mut spec = NodeOperationSpec {
        node_name: node.to_string(),
        cordon: false,
        drain: None,
        labels: None,
        taints: None,
        ttl_seconds_after_finished: None,
    };
    match action {
        NodeAction::Cordon => spec.cordon = true,
        NodeAction::Drain {
            grace_period_seconds,
        } => {
            spec.drain = Some(DrainSpec {
                grace_period_seconds: Some(*grace_period_seconds),
                ignore_daemon_sets: true,
                delete_empty_dir_data: true,
                force: true,
                ..DrainSpec::default()
            });
        }
        NodeAction::SetLabel { key, value } => {
            spec.labels = Some(LabelEdits {
                add: BTreeMap::from([(key.clone(), value.clone())]),
                remove: Vec::new(),
            });
        }
        NodeAction::RemoveLabel { key } => {
            spec.labels = Some(LabelEdits {
                add: BTreeMap::new(),
                remove: vec![key.clone()],
            });
        }
        NodeAction::AddTaint(taint) => {
            spec.taints = Some(TaintEdits {
                add: vec![taint.clone()],
                remove: Vec::new(),
            });
        }
        NodeAction::RemoveTaint { key } => {
            spec.taints = Some(TaintEdits {
                add: Vec::new(),
                remove: vec![TaintSelector {
                    key: key.clone(),
                    effect: None,
                }],
            });
        }
        NodeAction::Uncordon => return None,
    }
    let mut op = NodeOperation::new(&operation_name(node, action.verb(), suffix), spec);
    op.metadata.labels = Some(labels(node, extra_labels));
    Some(op)
}

/// `<node>-<verb>-<suffix>`, the node part shortened so the whole stays a valid name.
pub fn operation_name(node: &str, verb: &str, suffix: &str) -> String {
    let tail = format!("-{verb}-{suffix}");
    let room = MAX_NAME.saturating_sub(tail.len());
    let mut head: String = node.chars().take(room).collect();
    // A shortened head must still end alphanumeric before the '-'.
    while head.ends_with(['-', '.']) {
        head.pop();
    }
    format!("{head}{tail}")
}

/// Operator-configured labels first, then ours (which win).
fn labels(node: &str, extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut labels = extra.clone();
    labels.insert(CREATED_BY_LABEL.into(), CREATED_BY_API.into());
    if super::request::check_label_value("", node).is_ok() {
        labels.insert(NODE_LABEL.into(), node.into());
    }
    labels
}

/// `SUFFIX_LEN` lowercase letters and digits from `entropy`.
pub fn suffix_from(entropy: &[u8]) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    entropy
        .iter()
        .cycle()
        .take(SUFFIX_LEN)
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

/// What an uncordon through the API does in controller mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Uncordon {
    /// Delete these operations (created by the API); their finalizers uncordon the node.
    Delete(Vec<String>),
    /// Operations not created by the API hold the cordon (from Git, or by hand): nothing is
    /// deleted; the caller must remove those.
    HeldByOthers(Vec<String>),
    /// No operation holds a cordon on the node.
    NotHeld,
}

/// Decides the uncordon from the NodeOperations of the node.
pub fn uncordon(node: &str, operations: &[NodeOperation]) -> Uncordon {
    let holding = operations
        .iter()
        .filter(|op| op.spec.node_name == node && op.spec.cordons());
    let mut ours = Vec::new();
    let mut others = Vec::new();
    for op in holding {
        let by_api = op.labels().get(CREATED_BY_LABEL).map(String::as_str) == Some(CREATED_BY_API);
        if by_api {
            ours.push(op.name_any());
        } else if op.metadata.deletion_timestamp.is_none() {
            // One already being deleted releases its cordon by itself.
            others.push(op.name_any());
        }
    }
    ours.sort();
    others.sort();
    if !others.is_empty() {
        Uncordon::HeldByOthers(others)
    } else if !ours.is_empty() {
        Uncordon::Delete(ours)
    } else {
        Uncordon::NotHeld
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::node_operation::{NodeTaint, TaintEffect};

    fn extra() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("stream.space/test-env".to_string(), "ns1".to_string()),
            (CREATED_BY_LABEL.to_string(), "someone".to_string()),
        ])
    }

    #[test]
    fn operations_for_each_action() {
        let cases: Vec<(NodeAction, serde_json::Value)> = vec![
            (
                NodeAction::Cordon,
                serde_json::json!({"nodeName": "w1", "cordon": true}),
            ),
            (
                NodeAction::Drain {
                    grace_period_seconds: 30,
                },
                serde_json::json!({"nodeName": "w1", "drain": {
                    "gracePeriodSeconds": 30, "ignoreDaemonSets": true,
                    "deleteEmptyDirData": true, "force": true}}),
            ),
            (
                NodeAction::SetLabel {
                    key: "zone".into(),
                    value: "z1".into(),
                },
                serde_json::json!({"nodeName": "w1", "labels": {"add": {"zone": "z1"}}}),
            ),
            (
                NodeAction::RemoveLabel { key: "zone".into() },
                serde_json::json!({"nodeName": "w1", "labels": {"remove": ["zone"]}}),
            ),
            (
                NodeAction::AddTaint(NodeTaint {
                    key: "maint".into(),
                    value: Some("yes".into()),
                    effect: TaintEffect::NoSchedule,
                }),
                serde_json::json!({"nodeName": "w1", "taints": {"add": [
                    {"key": "maint", "value": "yes", "effect": "NoSchedule"}]}}),
            ),
            (
                NodeAction::RemoveTaint {
                    key: "maint".into(),
                },
                serde_json::json!({"nodeName": "w1", "taints": {"remove": [{"key": "maint"}]}}),
            ),
        ];
        for (action, spec) in cases {
            let op = operation("w1", &action, &extra(), "abcde").expect("an operation");
            assert_eq!(op.name_any(), format!("w1-{}-abcde", action.verb()));
            assert_eq!(
                serde_json::to_value(&op.spec).expect("json"),
                spec,
                "{action:?}"
            );
            let labels = op.labels();
            assert_eq!(
                labels.get(CREATED_BY_LABEL).map(String::as_str),
                Some("api")
            );
            assert_eq!(labels.get(NODE_LABEL).map(String::as_str), Some("w1"));
            assert_eq!(
                labels.get("stream.space/test-env").map(String::as_str),
                Some("ns1")
            );
        }
        assert!(operation("w1", &NodeAction::Uncordon, &extra(), "abcde").is_none());
    }

    #[test]
    fn names_stay_valid() {
        let long = format!("{}.b", "a".repeat(250));
        for node in ["w1", long.as_str(), "a.b-c"] {
            let name = operation_name(node, "cordon", "x2x2x");
            assert!(crate::api::valid_name(&name), "{name}");
            assert!(name.ends_with("-cordon-x2x2x"), "{name}");
        }
        let op =
            operation(&long, &NodeAction::Cordon, &BTreeMap::new(), "bbbbb").expect("an operation");
        assert!(
            !op.labels().contains_key(NODE_LABEL),
            "a node name too long for a label value is not a label"
        );
        let suffix = suffix_from(&[0, 255, 17, 99, 200, 3]);
        assert_eq!(suffix.len(), SUFFIX_LEN);
        assert!(
            suffix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
    }

    fn op(name: &str, node: &str, cordon: bool, by_api: bool, deleting: bool) -> NodeOperation {
        let mut labels = serde_json::json!({});
        if by_api {
            labels[CREATED_BY_LABEL] = CREATED_BY_API.into();
        }
        let mut metadata = serde_json::json!({"name": name, "labels": labels});
        if deleting {
            metadata["deletionTimestamp"] = "2024-01-01T00:00:00Z".into();
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "stream.space/v1alpha1", "kind": "NodeOperation",
            "metadata": metadata,
            "spec": {"nodeName": node, "cordon": cordon, "labels": {"add": {"a": "b"}}}
        }))
        .expect("operation")
    }

    #[test]
    fn uncordon_deletes_only_our_operations() {
        let cases = [
            (vec![], Uncordon::NotHeld),
            (
                vec![
                    op("b", "w1", true, true, false),
                    op("a", "w1", true, true, true),
                ],
                Uncordon::Delete(vec!["a".into(), "b".into()]),
            ),
            (
                vec![
                    op("ours", "w1", true, true, false),
                    op("git", "w1", true, false, false),
                ],
                Uncordon::HeldByOthers(vec!["git".into()]),
            ),
            // Releasing by itself, or not cordoning, or another node: not in the way.
            (
                vec![
                    op("ours", "w1", true, true, false),
                    op("going", "w1", true, false, true),
                    op("labels", "w1", false, false, false),
                    op("label-ours", "w1", false, true, false),
                    op("elsewhere", "w2", true, false, false),
                ],
                Uncordon::Delete(vec!["ours".into()]),
            ),
        ];
        for (ops, expected) in cases {
            assert_eq!(uncordon("w1", &ops), expected);
        }
    }
}
