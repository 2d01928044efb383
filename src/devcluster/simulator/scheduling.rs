//! Node selection for pending pods: a tiny subset of kube-scheduler's filters.
//!
//! A node fits a pod when it is schedulable, every `NoSchedule`/`NoExecute` taint is tolerated,
//! `spec.nodeSelector` and required node affinity match, and the node has pod capacity left.
//! Among fitting nodes the caller picks round robin.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, PodSpec, Taint, Toleration,
};

/// Whether `node`, which currently runs `pods_on_node` pods, can take a pod with `spec`.
pub(super) fn fits(spec: &PodSpec, node: &Node, pods_on_node: usize) -> bool {
    !is_unschedulable(node)
        && tolerates_all_taints(spec, node)
        && matches_node_selector(spec, node)
        && matches_required_affinity(spec, node)
        && pods_on_node < pod_capacity(node)
}

/// `spec.unschedulable` (a cordoned node).
fn is_unschedulable(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

/// Every taint with effect `NoSchedule` or `NoExecute` is tolerated.
fn tolerates_all_taints(spec: &PodSpec, node: &Node) -> bool {
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|taint| tolerations.iter().any(|tol| tolerates(tol, taint)))
}

/// Kubernetes' `Toleration.ToleratesTaint`.
fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect_matches = toleration
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let key = toleration.key.as_deref().unwrap_or_default();
    let operator = toleration.operator.as_deref().unwrap_or("Equal");
    if !effect_matches || (!key.is_empty() && key != taint.key) {
        return false;
    }
    match operator {
        "Exists" => true,
        "Equal" => {
            !key.is_empty()
                && toleration.value.as_deref().unwrap_or_default()
                    == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

/// Every `spec.nodeSelector` entry equals the node's label.
fn matches_node_selector(spec: &PodSpec, node: &Node) -> bool {
    let labels = node_labels(node);
    spec.node_selector.as_ref().is_none_or(|selector| {
        selector
            .iter()
            .all(|(key, value)| labels.and_then(|l| l.get(key)) == Some(value))
    })
}

/// `requiredDuringSchedulingIgnoredDuringExecution`: any term matches (no terms: no constraint).
fn matches_required_affinity(spec: &PodSpec, node: &Node) -> bool {
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    required.is_none_or(|selector| {
        selector
            .node_selector_terms
            .iter()
            .any(|term| matches_term(term, node))
    })
}

/// All expressions of a term match; a term without requirements matches nothing.
fn matches_term(term: &NodeSelectorTerm, node: &Node) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node_labels(node);
    let name = node.metadata.name.as_deref();
    expressions
        .iter()
        .all(|r| matches_requirement(r, labels.and_then(|l| l.get(&r.key)).map(String::as_str)))
        && fields.iter().all(|r| {
            let value = if r.key == "metadata.name" { name } else { None };
            matches_requirement(r, value)
        })
}

/// One requirement against the node's value for its key (`None`: key absent).
fn matches_requirement(requirement: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = requirement.values.as_deref().unwrap_or_default();
    let contains = |v: &str| values.iter().any(|x| x == v);
    let compare = |ordering: std::cmp::Ordering| {
        let node_value = value.and_then(|v| v.parse::<i64>().ok());
        let bound = values.first().and_then(|v| v.parse::<i64>().ok());
        matches!((node_value, bound), (Some(n), Some(b)) if n.cmp(&b) == ordering)
    };
    match requirement.operator.as_str() {
        "In" => value.is_some_and(contains),
        "NotIn" => !value.is_some_and(contains),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => compare(std::cmp::Ordering::Greater),
        "Lt" => compare(std::cmp::Ordering::Less),
        _ => false,
    }
}

/// `status.allocatable.pods` (unlimited if absent or unparsable).
fn pod_capacity(node: &Node) -> usize {
    node.status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .and_then(|a| a.get("pods"))
        .and_then(|q| q.0.parse::<usize>().ok())
        .unwrap_or(usize::MAX)
}

fn node_labels(node: &Node) -> Option<&BTreeMap<String, String>> {
    node.metadata.labels.as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Affinity, NodeAffinity, NodeSelector, NodeSpec, NodeStatus};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn node(labels: &[(&str, &str)], taints: Vec<Taint>) -> Node {
        let mut node = Node::default();
        node.metadata.name = Some("n1".into());
        node.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        node.spec = Some(NodeSpec {
            taints: Some(taints),
            ..NodeSpec::default()
        });
        node.status = Some(NodeStatus {
            allocatable: Some([("pods".to_owned(), Quantity("2".into()))].into()),
            ..NodeStatus::default()
        });
        node
    }

    fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: value.map(Into::into),
            effect: effect.into(),
            time_added: None,
        }
    }

    fn toleration(key: Option<&str>, operator: &str, value: Option<&str>) -> Toleration {
        Toleration {
            key: key.map(Into::into),
            operator: Some(operator.into()),
            value: value.map(Into::into),
            ..Toleration::default()
        }
    }

    fn requirement(key: &str, operator: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
        }
    }

    fn with_affinity(terms: Vec<NodeSelectorTerm>) -> PodSpec {
        PodSpec {
            affinity: Some(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: terms,
                    }),
                    ..NodeAffinity::default()
                }),
                ..Affinity::default()
            }),
            ..PodSpec::default()
        }
    }

    #[test]
    fn plain_pod_fits_plain_node_until_capacity() {
        let node = node(&[], vec![]);
        assert!(fits(&PodSpec::default(), &node, 1));
        assert!(!fits(&PodSpec::default(), &node, 2));
    }

    #[test]
    fn cordoned_node_does_not_fit() {
        let mut node = node(&[], vec![]);
        if let Some(spec) = node.spec.as_mut() {
            spec.unschedulable = Some(true);
        }
        assert!(!fits(&PodSpec::default(), &node, 0));
    }

    #[test]
    fn taints_need_tolerations() {
        let tainted = node(&[], vec![taint("dedicated", Some("gpu"), "NoSchedule")]);
        let soft = node(
            &[],
            vec![taint("dedicated", Some("gpu"), "PreferNoSchedule")],
        );
        assert!(!fits(&PodSpec::default(), &tainted, 0));
        assert!(fits(&PodSpec::default(), &soft, 0));
        for (tol, ok) in [
            (toleration(Some("dedicated"), "Equal", Some("gpu")), true),
            (toleration(Some("dedicated"), "Equal", Some("cpu")), false),
            (toleration(Some("dedicated"), "Exists", None), true),
            (toleration(None, "Exists", None), true),
            (toleration(Some("other"), "Exists", None), false),
        ] {
            let spec = PodSpec {
                tolerations: Some(vec![tol.clone()]),
                ..PodSpec::default()
            };
            assert_eq!(fits(&spec, &tainted, 0), ok, "{tol:?}");
        }
        let wrong_effect = PodSpec {
            tolerations: Some(vec![Toleration {
                effect: Some("NoExecute".into()),
                ..toleration(Some("dedicated"), "Exists", None)
            }]),
            ..PodSpec::default()
        };
        assert!(!fits(&wrong_effect, &tainted, 0));
    }

    #[test]
    fn node_selector_must_match_labels() {
        let node = node(&[("type", "simulated")], vec![]);
        let selecting = |v: &str| PodSpec {
            node_selector: Some([("type".to_owned(), v.to_owned())].into()),
            ..PodSpec::default()
        };
        assert!(fits(&selecting("simulated"), &node, 0));
        assert!(!fits(&selecting("real"), &node, 0));
    }

    #[test]
    fn required_affinity_operators() {
        let node = node(&[("zone", "a"), ("size", "8")], vec![]);
        let term = |reqs: Vec<NodeSelectorRequirement>| NodeSelectorTerm {
            match_expressions: Some(reqs),
            match_fields: None,
        };
        let cases = [
            (requirement("zone", "In", &["a", "b"]), true),
            (requirement("zone", "In", &["b"]), false),
            (requirement("zone", "NotIn", &["b"]), true),
            (requirement("missing", "NotIn", &["b"]), true),
            (requirement("zone", "Exists", &[]), true),
            (requirement("zone", "DoesNotExist", &[]), false),
            (requirement("size", "Gt", &["4"]), true),
            (requirement("size", "Lt", &["4"]), false),
        ];
        for (req, ok) in cases {
            let spec = with_affinity(vec![term(vec![req.clone()])]);
            assert_eq!(fits(&spec, &node, 0), ok, "{req:?}");
        }
        // Terms are ORed.
        let spec = with_affinity(vec![
            term(vec![requirement("zone", "In", &["b"])]),
            term(vec![requirement("zone", "In", &["a"])]),
        ]);
        assert!(fits(&spec, &node, 0));
        // Fields: metadata.name.
        let spec = with_affinity(vec![NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![requirement("metadata.name", "In", &["n1"])]),
        }]);
        assert!(fits(&spec, &node, 0));
    }
}
