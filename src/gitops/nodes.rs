//! Node writes of a sync: the plan against the node cache, and one JSON Patch per changed node
//! guarded by its resourceVersion (read again and planned again on a conflict).
//!
//! The guard is the resourceVersion of the node state the change was planned from, kept with
//! the plan (`Planned`), never one read from the cache again later: the cache moves on while
//! a sync runs (a sync triggered by our own node events plans from a cache still catching up),
//! and a change planned from an old state but guarded by the new one would be accepted and
//! write again what the node already carries. Nor is a stale plan sent to meet a conflict: a
//! change this process has written and the cache does not show yet is not written again (the
//! node cache's write log), and a node the cache has moved on from since the plan is planned
//! again from what the cache shows. A sync started by the node events of the previous sync's
//! writes would otherwise meet one conflict (a refused patch and a read) per node the cache
//! still showed as it was.

use std::collections::{BTreeMap, HashMap};

use futures::future;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;

use super::context::{CONTROLLER, Error, GitopsContext, is_stale_write};
use super::manifest::{Desired, owner_value};
use super::objects::labelled_objects;
use super::plan::{self, LiveNode, Owned, Plan, PlanError, Record};
use crate::FIELD_MANAGER;
use crate::api_status::Attempts;
use crate::api_status::KubeFailure;
use crate::crd::GitSyncStatus;

/// Attempts of one node patch when someone else wrote the node in between.
const NODE_PATCH_ATTEMPTS: u32 = 5;

/// What the GitSync recorded as its own in `status.inventory`: the only record of ownership
/// that whoever writes a node cannot forge.
pub(crate) fn record(status: &GitSyncStatus) -> Record {
    let by_node: BTreeMap<String, Owned> = status
        .inventory
        .iter()
        .map(|entry| {
            let owned = Owned {
                labels: entry.labels.iter().cloned().collect(),
                taints: entry.taints.iter().cloned().collect(),
            };
            (entry.node.clone(), owned)
        })
        .collect();
    Some(by_node)
}

fn live_node(node: &Node) -> LiveNode {
    LiveNode {
        name: node.name_any(),
        resource_version: node.resource_version(),
        labels: node.metadata.labels.clone(),
        annotations: node.metadata.annotations.clone(),
        taints: node.spec.as_ref().and_then(|s| s.taints.clone()),
    }
}

/// A plan with the node states it was computed from, by name: each change is written guarded
/// by the resourceVersion of its own node state.
pub(crate) struct Planned {
    pub plan: Plan,
    nodes: HashMap<String, LiveNode>,
}

/// The node part of a plan, against `nodes` (one snapshot of the cache).
fn plan_nodes(
    id: &str,
    desired: &Desired,
    mut nodes: Vec<LiveNode>,
    record: &Record,
    prune: bool,
) -> Result<Planned, PlanError> {
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let plan = plan::plan(id, &desired.node_configs, &nodes, record, prune)?;
    let nodes = nodes.into_iter().map(|n| (n.name.clone(), n)).collect();
    Ok(Planned { plan, nodes })
}

/// Each node change with the node state it was planned from.
fn planned_writes(planned: &Planned) -> Vec<(plan::NodeChange, LiveNode)> {
    planned
        .plan
        .changes
        .iter()
        .map(|change| {
            // Every change comes from a planned node; a missing one (never) is written with
            // no resourceVersion, which fails its guard and is read again.
            let live = planned.nodes.get(&change.node).cloned();
            (change.clone(), live.unwrap_or_default())
        })
        .collect()
}

pub(crate) fn plan_against_cache(
    ctx: &GitopsContext,
    id: &str,
    namespace: &str,
    desired: &Desired,
    record: &Record,
    prune: bool,
) -> Result<Planned, PlanError> {
    let nodes: Vec<LiveNode> = ctx.nodes.state().iter().map(|n| live_node(n)).collect();
    let mut planned = plan_nodes(id, desired, nodes, record, prune)?;
    planned.plan.objects = plan::plan_objects(
        &desired.objects,
        &labelled_objects(ctx, namespace),
        &owner_value(id),
        prune,
    )?;
    Ok(planned)
}

/// Applies every node change (one patch per node, concurrently); returns how many changed.
pub(crate) async fn apply(
    ctx: &GitopsContext,
    id: &str,
    desired: &Desired,
    record: &Record,
    prune: bool,
    planned: &Planned,
) -> Result<usize, Error> {
    let writes = planned_writes(planned)
        .into_iter()
        .map(|(change, live)| patch_node(ctx, id, desired, record, prune, change, live));
    let results = future::join_all(writes).await;
    let mut changed = 0;
    for result in results {
        changed += usize::from(result?);
    }
    Ok(changed)
}

/// The change planned again for `live` alone (`None`: nothing to change there).
fn replan(
    id: &str,
    desired: &Desired,
    record: &Record,
    prune: bool,
    live: &LiveNode,
) -> Result<Option<plan::NodeChange>, PlanError> {
    let nodes = std::slice::from_ref(live);
    let replanned = plan::plan(id, &desired.node_configs, nodes, record, prune)?;
    Ok(replanned.changes.into_iter().next())
}

/// Before the first attempt: `None` when the change need not be written (our own write of it
/// is on its way to the cache, or the cache has moved on to a state that needs none);
/// otherwise the change and the node state that guards it, planned again from the cache when
/// the cache moved on since the plan (a request guarded by the old state would only conflict).
fn still_due(
    ctx: &GitopsContext,
    (id, desired, record, prune): (&str, &Desired, &Record, bool),
    change: plan::NodeChange,
    live: LiveNode,
) -> Result<Option<(plan::NodeChange, LiveNode)>, PlanError> {
    let digest = unguarded(&plan::json_patch(&change, &live));
    let planned_from = live.resource_version.as_deref();
    if ctx
        .node_writes
        .pending("", &change.node, &digest, planned_from)
    {
        ctx.metrics.reconcilers.skipped_write(CONTROLLER);
        return Ok(None);
    }
    // Not pending: a write of ours is in the cache by now (its store is updated before its
    // write log), so what the cache shows is at least as new as our last write.
    let now = ctx.nodes.get(&ObjectRef::new(&change.node));
    match now.map(|n| live_node(&n)) {
        Some(now) if now.resource_version != live.resource_version => {
            let change = replan(id, desired, record, prune, &now)?;
            Ok(change.map(|c| (c, now)))
        }
        _ => Ok(Some((change, live))),
    }
}

/// One JSON Patch guarded by a `test` of the resourceVersion; on a conflict the node is read
/// again and its change planned again. Returns whether the node was written.
async fn patch_node(
    ctx: &GitopsContext,
    id: &str,
    desired: &Desired,
    record: &Record,
    prune: bool,
    change: plan::NodeChange,
    live: LiveNode,
) -> Result<bool, Error> {
    let sync = (id, desired, record, prune);
    let Some((mut change, mut live)) = still_due(ctx, sync, change, live)? else {
        return Ok(false);
    };
    let api: Api<Node> = Api::all(ctx.client.clone());
    let stale = |e: &Error| matches!(e, Error::Api(failure) if is_stale_write(&failure.source));
    let mut attempts = Attempts::new(NODE_PATCH_ATTEMPTS);
    loop {
        let result: Result<bool, Error> = async {
            if attempts.made() > 0 {
                ctx.metrics.gitops.node_conflicts.inc();
                let fresh = api
                    .get_opt(&change.node)
                    .await
                    .map_err(KubeFailure::during("reading a node after a conflict"))?;
                let Some(fresh) = fresh else {
                    return Ok(false);
                };
                live = live_node(&fresh);
                match replan(id, desired, record, prune, &live)? {
                    Some(next) => change = next,
                    None => return Ok(false),
                }
            }
            let ops = plan::json_patch(&change, &live);
            let digest = unguarded(&ops);
            let patch: json_patch::Patch = serde_json::from_value(ops).map_err(|e| {
                Error::Api(KubeFailure::new(
                    "building a node patch",
                    kube::Error::SerdeError(e),
                ))
            })?;
            ctx.metrics.reconcilers.write(CONTROLLER, "node");
            let params = PatchParams {
                force: false,
                ..PatchParams::apply(FIELD_MANAGER)
            };
            let written = api
                .patch(&change.node, &params, &Patch::Json::<()>(patch))
                .await
                .map_err(KubeFailure::during("patching a node"))?;
            let version = written.resource_version();
            ctx.node_writes.wrote("", &change.node, &digest, version);
            ctx.metrics.gitops.node_writes.inc();
            Ok(true)
        }
        .await;
        if let Some(done) = attempts.settle(result, stale, |last| last) {
            return done;
        }
    }
}

/// What a node patch writes, without its guard (the `test` of the resourceVersion, first):
/// the same for one change planned twice from one node state, whatever the guard.
fn unguarded(patch: &serde_json::Value) -> String {
    let ops = patch.as_array().map(Vec::as_slice).unwrap_or_default();
    serde_json::Value::from(ops.get(1..).unwrap_or_default()).to_string()
}

#[cfg(test)]
mod tests {
    use super::super::manifest::{NodeConfig, NodeTarget, Origin};
    use super::*;

    const ID: &str = "ns/sync";
    const VERSION: &str = "example.com/version";

    fn node(name: &str, resource_version: &str, version: Option<&str>) -> LiveNode {
        let mut labels = BTreeMap::from([("pool".to_string(), "a".to_string())]);
        if let Some(version) = version {
            labels.insert(VERSION.into(), version.into());
        }
        LiveNode {
            name: name.into(),
            resource_version: Some(resource_version.into()),
            labels: Some(labels),
            ..LiveNode::default()
        }
    }

    fn pool_at(version: &str) -> Desired {
        Desired {
            node_configs: vec![NodeConfig {
                name: "pool".into(),
                origin: Origin {
                    file: "nodes.yaml".into(),
                    line: 1,
                },
                target: NodeTarget::Selector(BTreeMap::from([("pool".into(), "a".into())])),
                labels: BTreeMap::from([(VERSION.into(), version.into())]),
                taints: Vec::new(),
            }],
            objects: Vec::new(),
        }
    }

    /// The resourceVersion the first operation of a node's patch tests.
    fn guard(change: &plan::NodeChange, live: &LiveNode) -> String {
        plan::json_patch(change, live)[0]["value"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// One row per snapshot the plan is made from: the nodes written, each with the guard of
    /// the state it was planned from.
    #[test]
    fn each_write_is_guarded_by_the_state_it_was_planned_from() {
        // (case, the snapshot planned from, the nodes written with their guards)
        type Case = (
            &'static str,
            Vec<LiveNode>,
            Vec<(&'static str, &'static str)>,
        );
        let cases: [Case; 4] = [
            (
                "all behind",
                vec![node("n1", "11", Some("1")), node("n2", "12", Some("1"))],
                vec![("n1", "11"), ("n2", "12")],
            ),
            (
                "one already written",
                vec![node("n2", "22", Some("1")), node("n1", "31", Some("2"))],
                vec![("n2", "22")],
            ),
            ("unlabelled", vec![node("n3", "5", None)], vec![("n3", "5")]),
            (
                "all written",
                vec![node("n1", "31", Some("2")), node("n2", "32", Some("2"))],
                vec![],
            ),
        ];
        for (case, snapshot, wanted) in cases {
            let planned = plan_nodes(ID, &pool_at("2"), snapshot, &None, true)
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            let writes: Vec<(String, String)> = planned_writes(&planned)
                .iter()
                .map(|(change, live)| {
                    assert_eq!(change.node, live.name, "{case}");
                    (change.node.clone(), guard(change, live))
                })
                .collect();
            let wanted: Vec<(String, String)> = wanted
                .iter()
                .map(|(n, rv)| (n.to_string(), rv.to_string()))
                .collect();
            assert_eq!(writes, wanted, "{case}");
        }
    }

    /// One row per pair of patches to one node (the write log keys digests by node): whether
    /// their unguarded digests are equal.
    #[test]
    fn a_digest_leaves_the_guard_out_and_keeps_every_change() {
        let desired = pool_at("2");
        let patch = |live: &LiveNode| {
            let planned = plan_nodes(ID, &desired, vec![live.clone()], &None, true)
                .unwrap_or_else(|e| panic!("{e}"));
            let writes = planned_writes(&planned);
            writes
                .first()
                .map(|(change, live)| plan::json_patch(change, live))
                .unwrap_or_default()
        };
        let cases = [
            (
                "same state, same guard",
                node("n1", "11", Some("1")),
                node("n1", "11", Some("1")),
                true,
            ),
            (
                "same change, other guard",
                node("n1", "11", Some("1")),
                node("n1", "12", Some("1")),
                true,
            ),
            (
                "other change",
                node("n1", "11", Some("1")),
                node("n1", "11", None),
                false,
            ),
        ];
        for (case, a, b, equal) in cases {
            let (a, b) = (unguarded(&patch(&a)), unguarded(&patch(&b)));
            assert_eq!(a == b, equal, "{case}: {a} vs {b}");
            assert!(!a.contains("resourceVersion"), "{case}: {a}");
        }
    }
}
