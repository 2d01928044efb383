//! The Git plan: a pure function of (desired documents, live nodes, this sync's inventory on
//! each node) -> the changes to make, at most one per node.
//!
//! Rules (`docs/gitops.md`): a label the repository declares is set; a label this sync applied
//! earlier (listed in its inventory) and no longer declared is removed when `prune` is on; any
//! other label is never touched. Taints are identified by `key:effect`; only ours are added,
//! replaced or removed, every other taint keeps its place. The inventory (the annotation
//! [`INVENTORY_ANNOTATION`], a JSON map from sync id to what it owns) is rewritten in the same
//! patch, so it can never disagree with the node.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Taint as KubeTaint;
use serde_json::{Value, json};

use super::inventory;
use super::manifest::{ManagedObject, NodeConfig, OWNER_LABEL, ObjectKind, taint_id};

/// Annotation on each managed node: `{"<namespace>/<gitsync>": {"labels": [...], "taints": [...]}}`.
pub const INVENTORY_ANNOTATION: &str = "stream.space/gitops-inventory";

pub use super::inventory::Owned;

/// A node as the plan sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LiveNode {
    pub name: String,
    pub resource_version: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub annotations: Option<BTreeMap<String, String>>,
    pub taints: Option<Vec<KubeTaint>>,
}

impl LiveNode {
    /// The inventory annotation, parsed; an unreadable one counts as empty.
    pub fn inventory(&self) -> BTreeMap<String, Owned> {
        self.annotations
            .as_ref()
            .and_then(|a| a.get(INVENTORY_ANNOTATION))
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_default()
    }

    fn label(&self, key: &str) -> Option<&String> {
        self.labels.as_ref().and_then(|l| l.get(key))
    }
}

/// One label change: `old` -> `new` (`None` = absent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelChange {
    pub key: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// Everything to change on one node, written as one patch.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeChange {
    pub node: String,
    pub labels: Vec<LabelChange>,
    /// Taint ids added (or whose value changed) and removed, for reports.
    pub taints_added: Vec<String>,
    pub taints_removed: Vec<String>,
    /// The complete new taint list, when it changes.
    pub taints: Option<Vec<KubeTaint>>,
    /// The new inventory annotation (`Some(None)` removes it), when it changes.
    pub inventory: Option<Option<String>>,
}

/// What a sync manages on one node after the plan is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Managed {
    pub node: String,
    pub owned: Owned,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub changes: Vec<NodeChange>,
    /// NodeConfig names that match no node.
    pub unmatched: Vec<String>,
    pub managed: Vec<Managed>,
    /// QuotaPolicies and NodeOperations to create, update or delete.
    pub objects: Vec<ObjectChange>,
}

/// A QuotaPolicy or NodeOperation that carries an ownership label (of this or another sync).
#[derive(Clone, Debug, PartialEq)]
pub struct LiveObject {
    pub kind: ObjectKind,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub spec: Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectAction {
    Create,
    Update,
    Delete,
}

/// One whole-object change; `diff` lists the changed fields (`path: old -> new`) of an update.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectChange {
    pub kind: ObjectKind,
    pub name: String,
    pub action: ObjectAction,
    pub diff: Vec<String>,
}

impl LiveObject {
    fn owner(&self) -> Option<&str> {
        self.labels.get(OWNER_LABEL).map(String::as_str)
    }
}

/// Compares the objects the repository declares with the live labelled objects: a missing one
/// is created, one whose spec or declared labels differ is updated, and one this sync owns
/// (its label is `owner`) that the repository no longer declares is deleted when `prune` is
/// on. Declaring an object another GitSync owns is an error: the two would take it from each
/// other forever.
pub fn plan_objects(
    desired: &[ManagedObject],
    live: &[LiveObject],
    owner: &str,
    prune: bool,
) -> Result<Vec<ObjectChange>, PlanError> {
    let mut out = Vec::new();
    for object in desired {
        let found = live
            .iter()
            .find(|l| l.kind == object.kind && l.name == object.name);
        if let Some(other) = found.and_then(LiveObject::owner).filter(|o| *o != owner) {
            return Err(PlanError::OwnedElsewhere {
                object: format!("{}/{}", object.kind, object.name),
                owner: other.to_string(),
            });
        }
        match found {
            None => out.push(ObjectChange {
                kind: object.kind,
                name: object.name.clone(),
                action: ObjectAction::Create,
                diff: Vec::new(),
            }),
            Some(live) => {
                let mut diff = Vec::new();
                for (key, value) in &object.labels {
                    if live.labels.get(key) != Some(value) {
                        diff.push(format!(
                            "label {key}: {} -> {value}",
                            live.labels.get(key).map_or("(none)", String::as_str)
                        ));
                    }
                }
                value_diff("spec", &live.spec, &object.spec, &mut diff);
                if !diff.is_empty() {
                    out.push(ObjectChange {
                        kind: object.kind,
                        name: object.name.clone(),
                        action: ObjectAction::Update,
                        diff,
                    });
                }
            }
        }
    }
    if prune {
        for object in live.iter().filter(|l| l.owner() == Some(owner)) {
            let declared = desired
                .iter()
                .any(|d| d.kind == object.kind && d.name == object.name);
            if !declared {
                out.push(ObjectChange {
                    kind: object.kind,
                    name: object.name.clone(),
                    action: ObjectAction::Delete,
                    diff: Vec::new(),
                });
            }
        }
    }
    out.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    Ok(out)
}

/// The leaves that differ between `old` and `new`, as `path: old -> new`.
fn value_diff(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let child = format!("{path}.{key}");
                value_diff(
                    &child,
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if old == new => {}
        _ => {
            let show = |v: &Value| match v {
                Value::Null => "(none)".to_string(),
                other => other.to_string(),
            };
            out.push(format!("{path}: {} -> {}", show(old), show(new)));
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Two NodeConfigs matching one node want different values for one label or taint.
    #[error("node {node}: {detail}")]
    Conflict { node: String, detail: String },
    /// The repository declares an object that another GitSync applied and owns.
    #[error("{object} is owned by GitSync {owner} (label stream.space/gitsync)")]
    OwnedElsewhere { object: String, owner: String },
}

impl PlanError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            PlanError::Conflict { .. } => "conflict",
            PlanError::OwnedElsewhere { .. } => "owned_elsewhere",
        }
    }
}

fn kube_taint(taint: &super::manifest::Taint) -> KubeTaint {
    KubeTaint {
        key: taint.key.clone(),
        value: taint.value.clone().filter(|v| !v.is_empty()),
        effect: taint.effect.clone(),
        time_added: None,
    }
}

/// What a GitSync recorded as its own, by node (its `status.inventory`); `None` trusts the
/// nodes' annotations (only for the offline `plan`).
pub type Record = Option<BTreeMap<String, Owned>>;

/// Computes the changes that make `nodes` match `configs` for the sync `sync_id`.
pub fn plan(
    sync_id: &str,
    configs: &[NodeConfig],
    nodes: &[LiveNode],
    record: &Record,
    prune: bool,
) -> Result<Plan, PlanError> {
    let mut out = Plan::default();
    let mut matched: BTreeSet<&str> = BTreeSet::new();
    for node in nodes {
        let live_labels = node.labels.clone().unwrap_or_default();
        let mine: Vec<&NodeConfig> = configs
            .iter()
            .filter(|c| c.target.matches(&node.name, &live_labels))
            .collect();
        matched.extend(mine.iter().map(|c| c.name.as_str()));
        let (wanted_labels, wanted_taints) = wanted(&node.name, &mine)?;
        let mut inventory = node.inventory();
        let previous = inventory::verified(
            inventory.get(sync_id),
            record.as_ref().map(|r| r.get(&node.name)),
        );
        let owned = inventory::claim(
            &wanted_labels,
            &wanted_taints,
            &live_labels,
            node.taints.as_deref().unwrap_or_default(),
            &previous,
        );
        let labels = label_changes(node, &wanted_labels, &previous, prune);
        let (taints, added, removed) = taint_changes(node, &wanted_taints, &previous, prune);
        if owned.is_empty() {
            inventory.remove(sync_id);
        } else {
            inventory.insert(sync_id.to_string(), owned.clone());
            out.managed.push(Managed {
                node: node.name.clone(),
                owned,
            });
        }
        let annotation =
            (!inventory.is_empty()).then(|| serde_json::to_string(&inventory).unwrap_or_default());
        let current = node
            .annotations
            .as_ref()
            .and_then(|a| a.get(INVENTORY_ANNOTATION))
            .cloned();
        let inventory_change = (annotation != current).then_some(annotation);
        if !labels.is_empty() || taints.is_some() || inventory_change.is_some() {
            out.changes.push(NodeChange {
                node: node.name.clone(),
                labels,
                taints_added: added,
                taints_removed: removed,
                taints,
                inventory: inventory_change,
            });
        }
    }
    out.unmatched = configs
        .iter()
        .filter(|c| !matched.contains(c.name.as_str()))
        .map(|c| c.name.clone())
        .collect();
    Ok(out)
}

type Wanted = (BTreeMap<String, String>, BTreeMap<String, KubeTaint>);

/// The union of the labels and taints of every config matching `node`; two configs that
/// disagree on one value are a conflict.
fn wanted(node: &str, configs: &[&NodeConfig]) -> Result<Wanted, PlanError> {
    let mut labels: BTreeMap<String, (String, &str)> = BTreeMap::new();
    let mut taints: BTreeMap<String, (KubeTaint, &str)> = BTreeMap::new();
    let conflict =
        |what: String, first: (String, &str), second: (String, &str)| PlanError::Conflict {
            node: node.to_string(),
            detail: format!(
                "{what} is set to {:?} by NodeConfig {:?} and to {:?} by {:?}",
                first.0, first.1, second.0, second.1
            ),
        };
    for config in configs {
        for (key, value) in &config.labels {
            match labels.get(key) {
                Some((existing, by)) if existing != value => {
                    return Err(conflict(
                        format!("label {key}"),
                        (existing.clone(), by),
                        (value.clone(), &config.name),
                    ));
                }
                _ => {
                    labels.insert(key.clone(), (value.clone(), &config.name));
                }
            }
        }
        for taint in &config.taints {
            let wanted = kube_taint(taint);
            match taints.get(&taint.id()) {
                Some((existing, by)) if existing != &wanted => {
                    return Err(conflict(
                        format!("taint {}", taint.id()),
                        (existing.value.clone().unwrap_or_default(), by),
                        (wanted.value.clone().unwrap_or_default(), &config.name),
                    ));
                }
                _ => {
                    taints.insert(taint.id(), (wanted, &config.name));
                }
            }
        }
    }
    Ok((
        labels.into_iter().map(|(k, (v, _))| (k, v)).collect(),
        taints.into_iter().map(|(k, (t, _))| (k, t)).collect(),
    ))
}

fn label_changes(
    node: &LiveNode,
    wanted: &BTreeMap<String, String>,
    previous: &Owned,
    prune: bool,
) -> Vec<LabelChange> {
    let mut changes = Vec::new();
    for (key, value) in wanted {
        let old = node.label(key);
        if old != Some(value) {
            changes.push(LabelChange {
                key: key.clone(),
                old: old.cloned(),
                new: Some(value.clone()),
            });
        }
    }
    if prune {
        for key in previous.labels.iter().filter(|k| !wanted.contains_key(*k)) {
            if let Some(old) = node.label(key) {
                changes.push(LabelChange {
                    key: key.clone(),
                    old: Some(old.clone()),
                    new: None,
                });
            }
        }
    }
    changes
}

type TaintChanges = (Option<Vec<KubeTaint>>, Vec<String>, Vec<String>);

fn taint_changes(
    node: &LiveNode,
    wanted: &BTreeMap<String, KubeTaint>,
    previous: &Owned,
    prune: bool,
) -> TaintChanges {
    let live = node.taints.clone().unwrap_or_default();
    let mut placed = BTreeSet::new();
    let mut removed = Vec::new();
    let mut result = Vec::new();
    for taint in &live {
        let id = taint_id(&taint.key, &taint.effect);
        if let Some(ours) = wanted.get(&id) {
            if placed.insert(id) {
                result.push(ours.clone());
            }
        } else if prune && previous.taints.contains(&id) {
            removed.push(id);
        } else {
            result.push(taint.clone());
        }
    }
    for (id, taint) in wanted {
        if !placed.contains(id) {
            result.push(taint.clone());
        }
    }
    let added: Vec<String> = wanted
        .iter()
        .filter(|(id, taint)| {
            !live
                .iter()
                .any(|t| &taint_id(&t.key, &t.effect) == *id && t == *taint)
        })
        .map(|(id, _)| id.clone())
        .collect();
    if result == live {
        (None, Vec::new(), Vec::new())
    } else {
        (Some(result), added, removed)
    }
}

fn pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// The one JSON Patch that makes the change, guarded by a `test` of the resource version the
/// plan was computed from (optimistic concurrency).
pub fn json_patch(change: &NodeChange, live: &LiveNode) -> Value {
    let mut ops = vec![json!({
        "op": "test", "path": "/metadata/resourceVersion",
        "value": live.resource_version.clone().unwrap_or_default()
    })];
    if live.labels.is_none() && change.labels.iter().any(|c| c.new.is_some()) {
        ops.push(json!({"op": "add", "path": "/metadata/labels", "value": {}}));
    }
    for label in &change.labels {
        let path = format!("/metadata/labels/{}", pointer(&label.key));
        ops.push(match &label.new {
            Some(value) => json!({"op": "add", "path": path, "value": value}),
            None => json!({"op": "remove", "path": path}),
        });
    }
    if let Some(taints) = &change.taints {
        ops.push(json!({"op": "add", "path": "/spec/taints", "value": taints}));
    }
    let path = format!("/metadata/annotations/{}", pointer(INVENTORY_ANNOTATION));
    match &change.inventory {
        Some(Some(value)) => {
            if live.annotations.is_none() {
                ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {}}));
            }
            ops.push(json!({"op": "add", "path": path, "value": value}));
        }
        Some(None) => ops.push(json!({"op": "remove", "path": path})),
        None => {}
    }
    Value::Array(ops)
}

/// The plan as a readable diff, one block per node.
pub fn render(plan: &Plan) -> String {
    let mut out = String::new();
    for change in &plan.changes {
        out.push_str(&format!("node/{}\n", change.node));
        for label in &change.labels {
            let line = match (&label.old, &label.new) {
                (None, Some(new)) => format!("  + label {}={new}\n", label.key),
                (Some(old), Some(new)) => format!("  ~ label {}={old} -> {new}\n", label.key),
                (Some(old), None) => format!("  - label {}={old}\n", label.key),
                (None, None) => String::new(),
            };
            out.push_str(&line);
        }
        for taint in &change.taints_added {
            out.push_str(&format!("  + taint {taint}\n"));
        }
        for taint in &change.taints_removed {
            out.push_str(&format!("  - taint {taint}\n"));
        }
    }
    for change in &plan.objects {
        let sign = match change.action {
            ObjectAction::Create => "+",
            ObjectAction::Update => "~",
            ObjectAction::Delete => "-",
        };
        out.push_str(&format!("{sign} {}/{}\n", change.kind, change.name));
        for line in &change.diff {
            out.push_str(&format!("  ~ {line}\n"));
        }
    }
    for name in &plan.unmatched {
        out.push_str(&format!("NodeConfig {name} matches no node\n"));
    }
    if plan.changes.is_empty() && plan.objects.is_empty() {
        out.push_str("no changes\n");
    }
    out
}

#[cfg(test)]
mod tests;
