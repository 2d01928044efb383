//! The drain plan, a pure function of the pods on the node and the drain options: which pods
//! are left alone (mirror, DaemonSet), which are refused (unmanaged without `force`, emptyDir
//! without `deleteEmptyDirData`, DaemonSet without `ignoreDaemonSets`), which are still
//! terminating, and which to evict next within the concurrency bound. Semantics follow
//! `kubectl drain`.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::crd::node_operation::DrainSpec;

/// Annotation the kubelet puts on the API copy of a static pod.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// What the drain needs to know about one pod on the node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodFacts {
    pub namespace: String,
    pub name: String,
    /// Kind of the controlling owner, if any.
    pub controller_kind: Option<String>,
    pub mirror: bool,
    pub empty_dir: bool,
    /// Has a deletion timestamp: an eviction was accepted, the pod is going.
    pub terminating: bool,
    /// Phase Succeeded or Failed: evicted without the safety checks, as kubectl does.
    pub finished: bool,
    pub labels: BTreeMap<String, String>,
}

impl PodFacts {
    pub fn from_pod(pod: &Pod) -> PodFacts {
        let meta = &pod.metadata;
        let spec = pod.spec.as_ref();
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        PodFacts {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            controller_kind: meta
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true))
                .map(|o| o.kind.clone()),
            mirror: meta
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION)),
            empty_dir: spec
                .and_then(|s| s.volumes.as_ref())
                .is_some_and(|volumes| volumes.iter().any(|v| v.empty_dir.is_some())),
            terminating: meta.deletion_timestamp.is_some(),
            finished: matches!(phase, Some("Succeeded" | "Failed")),
            labels: meta.labels.clone().unwrap_or_default(),
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// What the drain does with one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Left on the node on purpose.
    Skip(&'static str),
    /// Prevents the drain: nothing is evicted while such a pod is there.
    Refuse(&'static str),
    /// Eviction accepted; waiting for the pod to be gone.
    Terminating,
    /// To be evicted.
    Evict,
}

pub fn classify(pod: &PodFacts, options: &DrainSpec) -> Disposition {
    if pod.mirror {
        return Disposition::Skip("mirror pod");
    }
    if pod.controller_kind.as_deref() == Some("DaemonSet") {
        return if options.ignore_daemon_sets {
            Disposition::Skip("DaemonSet pod")
        } else {
            Disposition::Refuse("managed by a DaemonSet (set ignoreDaemonSets to leave it)")
        };
    }
    if pod.terminating {
        return Disposition::Terminating;
    }
    if pod.finished {
        return Disposition::Evict;
    }
    if pod.controller_kind.is_none() && !options.force {
        return Disposition::Refuse(
            "not managed by a controller, so it would not be recreated (set force to evict it)",
        );
    }
    if pod.empty_dir && !options.delete_empty_dir_data {
        return Disposition::Refuse(
            "uses emptyDir storage that eviction deletes (set deleteEmptyDirData to evict it)",
        );
    }
    Disposition::Evict
}

/// The drain's view of the node at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrainPlan {
    /// `namespace/name` and why, for pods that block the whole drain.
    pub refused: Vec<(String, &'static str)>,
    pub skipped: Vec<String>,
    /// Every pod that must still go (terminating ones included), sorted.
    pub remaining: Vec<String>,
    /// Pods to evict that are not terminating yet.
    pub not_evicted: usize,
    /// The pods to evict now: at most `concurrency` minus the pods still terminating.
    pub evict_now: Vec<PodFacts>,
}

impl DrainPlan {
    pub fn is_done(&self) -> bool {
        self.refused.is_empty() && self.remaining.is_empty()
    }
}

/// Plans the next step of a drain. Pods blocked on the previous attempt go last, so a few pods
/// held by a PodDisruptionBudget cannot starve the others of the concurrency budget.
pub fn plan(
    pods: &[PodFacts],
    options: &DrainSpec,
    blocked_before: &BTreeSet<String>,
) -> DrainPlan {
    let mut result = DrainPlan::default();
    let mut candidates = Vec::new();
    let mut terminating = 0usize;
    for pod in pods {
        let key = pod.key();
        match classify(pod, options) {
            Disposition::Skip(_) => result.skipped.push(key),
            Disposition::Refuse(reason) => result.refused.push((key, reason)),
            Disposition::Terminating => {
                terminating += 1;
                result.remaining.push(key);
            }
            Disposition::Evict => {
                result.remaining.push(key);
                candidates.push(pod);
            }
        }
    }
    result.skipped.sort();
    result.refused.sort();
    result.remaining.sort();
    if !result.refused.is_empty() {
        return result;
    }
    result.not_evicted = candidates.len();
    candidates.sort_by_key(|p| (blocked_before.contains(&p.key()), p.key()));
    let budget = options.concurrency().saturating_sub(terminating);
    result.evict_now = candidates.into_iter().take(budget).cloned().collect();
    result
}

/// A PodDisruptionBudget reduced to what matching needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Budget {
    pub namespace: String,
    pub name: String,
    pub selector: Option<LabelSelector>,
}

/// The first budget (by name) in the pod's namespace whose selector matches the pod. A budget
/// without a selector, or with an empty one, matches nothing (policy/v1beta1) or everything
/// (policy/v1); either way naming it is more helpful than naming none, so both match here.
pub fn budget_for<'a>(pod: &PodFacts, budgets: &'a [Budget]) -> Option<&'a Budget> {
    let mut matching: Vec<&Budget> = budgets
        .iter()
        .filter(|b| b.namespace == pod.namespace)
        .filter(|b| b.selector.as_ref().is_none_or(|s| selects(s, &pod.labels)))
        .collect();
    matching.sort_by(|a, b| a.name.cmp(&b.name));
    matching.first().copied()
}

/// Whether a label selector matches `labels`.
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let equal = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions = selector.match_expressions.iter().flatten().all(|r| {
        let value = labels.get(&r.key);
        let values = r.values.as_deref().unwrap_or_default();
        match r.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => !value.is_some_and(|v| values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    equal && expressions
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn pod(name: &str, owner: Option<&str>) -> PodFacts {
        PodFacts {
            namespace: "ns".into(),
            name: name.into(),
            controller_kind: owner.map(Into::into),
            ..PodFacts::default()
        }
    }

    fn drain(f: impl FnOnce(&mut DrainSpec)) -> DrainSpec {
        let mut spec = DrainSpec {
            ignore_daemon_sets: true,
            ..DrainSpec::default()
        };
        f(&mut spec);
        spec
    }

    #[test]
    fn classification_follows_kubectl_drain() {
        let mirror = PodFacts {
            mirror: true,
            ..pod("m", None)
        };
        let daemon = pod("d", Some("DaemonSet"));
        let unmanaged = pod("u", None);
        let empty_dir = PodFacts {
            empty_dir: true,
            ..pod("e", Some("ReplicaSet"))
        };
        let finished_unmanaged = PodFacts {
            finished: true,
            ..pod("f", None)
        };
        let going = PodFacts {
            terminating: true,
            ..pod("t", Some("ReplicaSet"))
        };
        let defaults = drain(|_| {});
        let permissive = drain(|d| {
            d.force = true;
            d.delete_empty_dir_data = true;
        });
        let strict = drain(|d| d.ignore_daemon_sets = false);
        let replica = pod("r", Some("ReplicaSet"));
        let kind = |d: Disposition| match d {
            Disposition::Skip(_) => "skip",
            Disposition::Refuse(_) => "refuse",
            Disposition::Terminating => "terminating",
            Disposition::Evict => "evict",
        };
        let cases = [
            (&mirror, &defaults, "skip"),
            (&daemon, &defaults, "skip"),
            (&daemon, &strict, "refuse"),
            (&unmanaged, &defaults, "refuse"),
            (&unmanaged, &permissive, "evict"),
            (&empty_dir, &defaults, "refuse"),
            (&empty_dir, &permissive, "evict"),
            (&finished_unmanaged, &defaults, "evict"),
            (&going, &defaults, "terminating"),
            (&replica, &defaults, "evict"),
        ];
        for (pod, options, expected) in cases {
            assert_eq!(kind(classify(pod, options)), expected, "{}", pod.name);
        }
    }

    #[test]
    fn refusals_stop_every_eviction() {
        let pods = [pod("a", Some("ReplicaSet")), pod("u", None)];
        let plan = plan(&pods, &drain(|_| {}), &BTreeSet::new());
        assert_eq!(plan.refused.len(), 1);
        assert!(plan.evict_now.is_empty());
        assert!(!plan.is_done());
    }

    #[test]
    fn concurrency_counts_terminating_pods() {
        let mut pods: Vec<PodFacts> = (0..10)
            .map(|i| pod(&format!("p{i}"), Some("ReplicaSet")))
            .collect();
        pods[0].terminating = true;
        pods[1].terminating = true;
        let options = drain(|d| d.concurrency = Some(5));
        let plan = plan(&pods, &options, &BTreeSet::new());
        assert_eq!(plan.remaining.len(), 10);
        assert_eq!(plan.evict_now.len(), 3);
        assert!(plan.evict_now.iter().all(|p| !p.terminating));
    }

    #[test]
    fn blocked_pods_go_last() {
        let pods = [pod("a", Some("ReplicaSet")), pod("b", Some("ReplicaSet"))];
        let blocked = BTreeSet::from(["ns/a".to_string()]);
        let plan = plan(&pods, &drain(|d| d.concurrency = Some(1)), &blocked);
        assert_eq!(plan.evict_now[0].name, "b");
    }

    #[test]
    fn only_skipped_pods_left_means_done() {
        let pods = [
            pod("d", Some("DaemonSet")),
            PodFacts {
                mirror: true,
                ..pod("m", None)
            },
        ];
        let plan = plan(&pods, &drain(|_| {}), &BTreeSet::new());
        assert!(plan.is_done());
        assert_eq!(plan.skipped, ["ns/d", "ns/m"]);
    }

    #[test]
    fn budgets_match_by_selector_in_the_namespace() {
        let selector = |k: &str, v: &str| LabelSelector {
            match_labels: Some(BTreeMap::from([(k.to_string(), v.to_string())])),
            ..LabelSelector::default()
        };
        let budgets = [
            Budget {
                namespace: "other".into(),
                name: "a".into(),
                selector: Some(selector("app", "web")),
            },
            Budget {
                namespace: "ns".into(),
                name: "db".into(),
                selector: Some(selector("app", "db")),
            },
            Budget {
                namespace: "ns".into(),
                name: "web".into(),
                selector: Some(selector("app", "web")),
            },
        ];
        let web = PodFacts {
            labels: BTreeMap::from([("app".to_string(), "web".to_string())]),
            ..pod("w", Some("ReplicaSet"))
        };
        assert_eq!(
            budget_for(&web, &budgets).map(|b| b.name.as_str()),
            Some("web")
        );
        assert_eq!(budget_for(&pod("x", None), &budgets), None);
    }

    #[test]
    fn selector_expressions() {
        let labels = BTreeMap::from([("tier".to_string(), "a".to_string())]);
        let req = |op: &str, values: &[&str]| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: op.into(),
                values: Some(values.iter().map(|v| v.to_string()).collect()),
            }]),
            ..LabelSelector::default()
        };
        let cases = [
            (req("In", &["a", "b"]), true),
            (req("In", &["b"]), false),
            (req("NotIn", &["b"]), true),
            (req("Exists", &[]), true),
            (req("DoesNotExist", &[]), false),
            (req("Bogus", &[]), false),
        ];
        for (selector, expected) in cases {
            assert_eq!(selects(&selector, &labels), expected, "{selector:?}");
        }
    }
}
