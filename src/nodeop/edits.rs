//! Node edits as pure functions: labels and taints change only at the named keys (taints are
//! identified by key and effect, every other taint is kept), and cordoning sets
//! `spec.unschedulable`. The result is the whole new value of each changed field, written with
//! the node's `resourceVersion` as a precondition so that a concurrent writer's change is never
//! lost: on conflict the reconciler reads again and recomputes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Taint};

use crate::crd::node_operation::{LabelEdits, NodeTaint, TaintEdits, TaintSelector};

/// Annotation (value `true`) on a node that a NodeOperation cordoned while it was schedulable:
/// whoever releases the last cordon makes the node schedulable again and removes it. Kept on
/// the node rather than in one operation's status so it survives the hand-over between
/// operations of the same node.
pub const CORDON_ANNOTATION: &str = "stream.space/cordoned-by-node-operation";

/// The fields of a node an operation may change.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeView {
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    /// Carries [`CORDON_ANNOTATION`]: the cordon is ours, not someone else's.
    pub cordoned_by_us: bool,
}

impl NodeView {
    pub fn of(node: &Node) -> NodeView {
        let spec = node.spec.as_ref();
        NodeView {
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints: spec.and_then(|s| s.taints.clone()).unwrap_or_default(),
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            cordoned_by_us: node
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(CORDON_ANNOTATION))
                .is_some_and(|v| v == "true"),
        }
    }
}

/// What to change on the node: `None` fields stay as they are.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeEdit {
    /// Label keys set (`Some`) or removed (`None`); a merge patch of `metadata.labels`.
    pub labels: BTreeMap<String, Option<String>>,
    /// Annotation keys set or removed, like `labels`.
    pub annotations: BTreeMap<String, Option<String>>,
    /// The complete new taint list.
    pub taints: Option<Vec<Taint>>,
    pub unschedulable: Option<bool>,
}

impl NodeEdit {
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
            && self.annotations.is_empty()
            && self.taints.is_none()
            && self.unschedulable.is_none()
    }

    /// The JSON merge patch, guarded by `resource_version`.
    pub fn merge_patch(&self, resource_version: Option<&str>) -> serde_json::Value {
        let mut metadata = serde_json::Map::new();
        if let Some(version) = resource_version {
            metadata.insert("resourceVersion".into(), version.into());
        }
        if !self.labels.is_empty() {
            metadata.insert("labels".into(), serde_json::json!(self.labels));
        }
        if !self.annotations.is_empty() {
            metadata.insert("annotations".into(), serde_json::json!(self.annotations));
        }
        let mut spec = serde_json::Map::new();
        if let Some(taints) = &self.taints {
            spec.insert("taints".into(), serde_json::json!(taints));
        }
        if let Some(unschedulable) = self.unschedulable {
            spec.insert("unschedulable".into(), unschedulable.into());
        }
        serde_json::json!({"metadata": metadata, "spec": spec})
    }
}

/// Label changes that are not in place yet.
pub fn label_changes(
    current: &BTreeMap<String, String>,
    edits: &LabelEdits,
) -> BTreeMap<String, Option<String>> {
    let mut changes = BTreeMap::new();
    for key in &edits.remove {
        if current.contains_key(key) && !edits.add.contains_key(key) {
            changes.insert(key.clone(), None);
        }
    }
    for (key, value) in &edits.add {
        if current.get(key) != Some(value) {
            changes.insert(key.clone(), Some(value.clone()));
        }
    }
    changes
}

/// The taint list after the edits, or `None` when nothing changes. Order of the existing taints
/// is kept; new ones are appended.
pub fn taint_changes(current: &[Taint], edits: &TaintEdits) -> Option<Vec<Taint>> {
    let removed = |taint: &Taint| edits.remove.iter().any(|r| selects_taint(r, taint));
    let mut next: Vec<Taint> = current.iter().filter(|t| !removed(t)).cloned().collect();
    for wanted in &edits.add {
        let taint = to_taint(wanted);
        match next
            .iter_mut()
            .find(|t| t.key == taint.key && t.effect == taint.effect)
        {
            Some(existing) => {
                if existing.value != taint.value {
                    existing.value = taint.value.clone();
                }
            }
            None => next.push(taint),
        }
    }
    (next != current).then_some(next)
}

fn selects_taint(selector: &TaintSelector, taint: &Taint) -> bool {
    selector.key == taint.key
        && selector
            .effect
            .as_ref()
            .is_none_or(|effect| effect.as_str() == taint.effect)
}

fn to_taint(taint: &NodeTaint) -> Taint {
    Taint {
        key: taint.key.clone(),
        value: taint.value.clone().filter(|v| !v.is_empty()),
        effect: taint.effect.as_str().to_string(),
        time_added: None,
    }
}

/// Everything an operation wants changed on the node, given whether it should hold a cordon.
pub fn node_edit(
    node: &NodeView,
    labels: Option<&LabelEdits>,
    taints: Option<&TaintEdits>,
    cordon: bool,
) -> NodeEdit {
    NodeEdit {
        labels: labels
            .map(|l| label_changes(&node.labels, l))
            .unwrap_or_default(),
        taints: taints.and_then(|t| taint_changes(&node.taints, t)),
        ..cordon_edit(node, cordon)
    }
}

/// Cordons a schedulable node and marks the cordon as ours; a node that is already
/// unschedulable is left as it is.
fn cordon_edit(node: &NodeView, cordon: bool) -> NodeEdit {
    if !cordon || node.unschedulable {
        return NodeEdit::default();
    }
    NodeEdit {
        annotations: BTreeMap::from([(CORDON_ANNOTATION.to_string(), Some("true".to_string()))]),
        unschedulable: Some(true),
        ..NodeEdit::default()
    }
}

/// Releases our cordon: schedulable again and the mark removed. A cordon that is not ours is
/// left alone.
pub fn uncordon_edit(node: &NodeView) -> NodeEdit {
    if !node.cordoned_by_us {
        return NodeEdit::default();
    }
    NodeEdit {
        annotations: BTreeMap::from([(CORDON_ANNOTATION.to_string(), None)]),
        unschedulable: node.unschedulable.then_some(false),
        ..NodeEdit::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::node_operation::TaintEffect;

    fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: value.map(Into::into),
            effect: effect.into(),
            time_added: None,
        }
    }

    fn wanted(key: &str, value: Option<&str>, effect: TaintEffect) -> NodeTaint {
        NodeTaint {
            key: key.into(),
            value: value.map(Into::into),
            effect,
        }
    }

    fn remove(key: &str, effect: Option<TaintEffect>) -> TaintSelector {
        TaintSelector {
            key: key.into(),
            effect,
        }
    }

    #[test]
    fn taint_edits() {
        let other = taint("other", Some("x"), "NoSchedule");
        let ours = taint("maint", Some("yes"), "NoSchedule");
        let ours_exec = taint("maint", None, "NoExecute");
        type Case = (Vec<Taint>, TaintEdits, Option<Vec<Taint>>);
        let cases: Vec<Case> = vec![
            // adding keeps every other taint
            (
                vec![other.clone()],
                TaintEdits {
                    add: vec![wanted("maint", Some("yes"), TaintEffect::NoSchedule)],
                    remove: vec![],
                },
                Some(vec![other.clone(), ours.clone()]),
            ),
            // already there: no change
            (
                vec![ours.clone(), other.clone()],
                TaintEdits {
                    add: vec![wanted("maint", Some("yes"), TaintEffect::NoSchedule)],
                    remove: vec![],
                },
                None,
            ),
            // same key, other effect is another taint
            (
                vec![ours.clone()],
                TaintEdits {
                    add: vec![wanted("maint", None, TaintEffect::NoExecute)],
                    remove: vec![],
                },
                Some(vec![ours.clone(), ours_exec.clone()]),
            ),
            // same key and effect, new value: updated in place
            (
                vec![taint("maint", Some("old"), "NoSchedule"), other.clone()],
                TaintEdits {
                    add: vec![wanted("maint", Some("yes"), TaintEffect::NoSchedule)],
                    remove: vec![],
                },
                Some(vec![ours.clone(), other.clone()]),
            ),
            // remove by key removes every effect of that key only
            (
                vec![ours.clone(), other.clone(), ours_exec.clone()],
                TaintEdits {
                    add: vec![],
                    remove: vec![remove("maint", None)],
                },
                Some(vec![other.clone()]),
            ),
            // remove by key and effect
            (
                vec![ours.clone(), ours_exec.clone()],
                TaintEdits {
                    add: vec![],
                    remove: vec![remove("maint", Some(TaintEffect::NoExecute))],
                },
                Some(vec![ours.clone()]),
            ),
            // removing what is absent changes nothing
            (
                vec![other.clone()],
                TaintEdits {
                    add: vec![],
                    remove: vec![remove("maint", None)],
                },
                None,
            ),
        ];
        for (current, edits, expected) in cases {
            assert_eq!(taint_changes(&current, &edits), expected, "{edits:?}");
        }
    }

    #[test]
    fn label_edits_touch_only_named_keys() {
        let current = BTreeMap::from([
            ("keep".to_string(), "1".to_string()),
            ("gone".to_string(), "1".to_string()),
            ("same".to_string(), "v".to_string()),
        ]);
        let edits = LabelEdits {
            add: BTreeMap::from([
                ("same".to_string(), "v".to_string()),
                ("new".to_string(), "n".to_string()),
            ]),
            remove: vec!["gone".into(), "absent".into()],
        };
        let changes = label_changes(&current, &edits);
        assert_eq!(
            changes,
            BTreeMap::from([
                ("gone".to_string(), None),
                ("new".to_string(), Some("n".to_string())),
            ])
        );
    }

    #[test]
    fn cordon_only_when_needed_and_patch_shape() {
        let node = NodeView::default();
        let edit = node_edit(&node, None, None, true);
        assert_eq!(edit.unschedulable, Some(true));
        let patch = edit.merge_patch(Some("42"));
        assert_eq!(
            patch,
            serde_json::json!({
                "metadata": {"resourceVersion": "42", "annotations": {CORDON_ANNOTATION: "true"}},
                "spec": {"unschedulable": true}
            })
        );
        let cordoned = NodeView {
            unschedulable: true,
            ..NodeView::default()
        };
        assert!(node_edit(&cordoned, None, None, true).is_empty());
        assert!(node_edit(&node, None, None, false).is_empty());
    }

    #[test]
    fn uncordon_releases_only_our_cordon() {
        let theirs = NodeView {
            unschedulable: true,
            ..NodeView::default()
        };
        assert!(uncordon_edit(&theirs).is_empty());
        let ours = NodeView {
            unschedulable: true,
            cordoned_by_us: true,
            ..NodeView::default()
        };
        let edit = uncordon_edit(&ours);
        assert_eq!(edit.unschedulable, Some(false));
        assert_eq!(
            edit.merge_patch(None)["metadata"]["annotations"][CORDON_ANNOTATION],
            serde_json::Value::Null
        );
    }
}
