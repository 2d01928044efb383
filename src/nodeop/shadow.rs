//! What a node operation would do, as readable lines, for operations the controller does not
//! own: in shadow mode it reports this plan instead of executing it. Pure: the reconciler reads
//! the node and its pods and passes them in.

use std::collections::BTreeSet;

use super::edits::{self, NodeView};
use super::plan::{self, PodFacts};
use crate::crd::node_operation::NodeOperationSpec;

/// Pod names listed in a plan at most (the count is always complete).
const MAX_LISTED: usize = 10;

/// The steps the controller would take now on `node` (`None`: the node does not exist).
pub fn plan_lines(
    spec: &NodeOperationSpec,
    node: Option<&NodeView>,
    pods: &[PodFacts],
) -> Vec<String> {
    let name = &spec.node_name;
    let Some(node) = node else {
        return vec![format!("node {name} does not exist: fail the operation")];
    };
    let edit = edits::node_edit(
        node,
        spec.labels.as_ref(),
        spec.taints.as_ref(),
        spec.cordons(),
    );
    let mut out = Vec::new();
    if edit.unschedulable == Some(true) {
        out.push(format!("cordon node {name}"));
    }
    for (key, value) in &edit.labels {
        out.push(match value {
            Some(value) => format!("set label {key}={value}"),
            None => format!("remove label {key}"),
        });
    }
    if let Some(taints) = &edit.taints {
        let listed: Vec<String> = taints
            .iter()
            .map(|t| match &t.value {
                Some(value) => format!("{}={value}:{}", t.key, t.effect),
                None => format!("{}:{}", t.key, t.effect),
            })
            .collect();
        out.push(format!("set taints [{}]", listed.join(", ")));
    }
    if let Some(options) = &spec.drain {
        let plan = plan::plan(pods, options, &BTreeSet::new());
        if let Some((pod, reason)) = plan.refused.first() {
            out.push(format!(
                "refuse the drain: {pod} is {reason} ({} pods refused)",
                plan.refused.len()
            ));
        } else if plan.remaining.is_empty() {
            out.push(format!("drain node {name}: no pods to evict"));
        } else {
            let mut listed: Vec<&str> = plan
                .remaining
                .iter()
                .take(MAX_LISTED)
                .map(String::as_str)
                .collect();
            if plan.remaining.len() > MAX_LISTED {
                listed.push("...");
            }
            out.push(format!(
                "evict {} pods: {}",
                plan.remaining.len(),
                listed.join(", ")
            ));
        }
    }
    if out.is_empty() {
        out.push(format!("nothing: node {name} already is as requested"));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn spec(json: serde_json::Value) -> NodeOperationSpec {
        serde_json::from_value(json).expect("spec")
    }

    fn pod(name: &str, kind: Option<&str>) -> PodFacts {
        PodFacts {
            namespace: "ns".into(),
            name: name.into(),
            controller_kind: kind.map(str::to_string),
            ..PodFacts::default()
        }
    }

    #[test]
    fn table() {
        let schedulable = NodeView::default();
        let cordoned = NodeView {
            unschedulable: true,
            labels: BTreeMap::from([("zone".to_string(), "a".to_string())]),
            ..NodeView::default()
        };
        let pods = [pod("a", Some("ReplicaSet")), pod("ds", Some("DaemonSet"))];
        let cases = [
            (
                json_spec(serde_json::json!({"nodeName": "n1", "cordon": true})),
                Some(&schedulable),
                vec!["cordon node n1"],
            ),
            (
                json_spec(serde_json::json!({"nodeName": "n1", "cordon": true})),
                Some(&cordoned),
                vec!["nothing: node n1 already is as requested"],
            ),
            (
                json_spec(serde_json::json!({"nodeName": "n1", "drain": {}})),
                Some(&schedulable),
                vec!["cordon node n1", "evict 1 pods: ns/a"],
            ),
            (
                json_spec(
                    serde_json::json!({"nodeName": "n1", "drain": {"ignoreDaemonSets": false}}),
                ),
                Some(&cordoned),
                vec![
                    "refuse the drain: ns/ds is managed by a DaemonSet (set ignoreDaemonSets to leave it) (1 pods refused)",
                ],
            ),
            (
                json_spec(
                    serde_json::json!({"nodeName": "n1", "labels": {"add": {"gpu": "yes"}, "remove": ["zone"]}}),
                ),
                Some(&cordoned),
                vec!["set label gpu=yes", "remove label zone"],
            ),
            (
                json_spec(
                    serde_json::json!({"nodeName": "n1", "taints": {"add": [{"key": "k", "value": "v", "effect": "NoSchedule"}]}}),
                ),
                Some(&cordoned),
                vec!["set taints [k=v:NoSchedule]"],
            ),
            (
                json_spec(serde_json::json!({"nodeName": "n1", "cordon": true})),
                None,
                vec!["node n1 does not exist: fail the operation"],
            ),
        ];
        for (spec, node, expected) in cases {
            assert_eq!(plan_lines(&spec, node, &pods), expected, "{spec:?}");
        }
    }

    fn json_spec(value: serde_json::Value) -> NodeOperationSpec {
        spec(value)
    }
}
