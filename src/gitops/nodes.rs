//! Node writes of a sync: the plan against the node cache, and one JSON Patch per changed node
//! guarded by its resourceVersion (read again and planned again on a conflict).

use std::collections::{BTreeMap, HashMap};

use futures::future;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};

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

pub(crate) fn plan_against_cache(
    ctx: &GitopsContext,
    id: &str,
    namespace: &str,
    desired: &Desired,
    record: &Record,
    prune: bool,
) -> Result<Plan, PlanError> {
    let mut nodes: Vec<LiveNode> = ctx.nodes.state().iter().map(|n| live_node(n)).collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let mut plan = plan::plan(id, &desired.node_configs, &nodes, record, prune)?;
    plan.objects = plan::plan_objects(
        &desired.objects,
        &labelled_objects(ctx, namespace),
        &owner_value(id),
        prune,
    )?;
    Ok(plan)
}

/// Applies every node change (one patch per node, concurrently); returns how many changed.
pub(crate) async fn apply(
    ctx: &GitopsContext,
    id: &str,
    desired: &Desired,
    record: &Record,
    prune: bool,
    plan: &Plan,
) -> Result<usize, Error> {
    let cached: HashMap<String, LiveNode> = ctx
        .nodes
        .state()
        .iter()
        .map(|n| (n.name_any(), live_node(n)))
        .collect();
    let mut writes = Vec::with_capacity(plan.changes.len());
    for change in &plan.changes {
        let live = cached.get(&change.node).cloned().unwrap_or_default();
        writes.push(patch_node(
            ctx,
            id,
            desired,
            record,
            prune,
            change.clone(),
            live,
        ));
    }
    let results = future::join_all(writes).await;
    let mut changed = 0;
    for result in results {
        changed += usize::from(result?);
    }
    Ok(changed)
}

/// One JSON Patch guarded by a `test` of the resourceVersion; on a conflict the node is read
/// again and its change planned again. Returns whether the node was written.
async fn patch_node(
    ctx: &GitopsContext,
    id: &str,
    desired: &Desired,
    record: &Record,
    prune: bool,
    mut change: plan::NodeChange,
    mut live: LiveNode,
) -> Result<bool, Error> {
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
                let nodes = std::slice::from_ref(&live);
                let replanned = plan::plan(id, &desired.node_configs, nodes, record, prune)?;
                match replanned.changes.into_iter().next() {
                    Some(next) => change = next,
                    None => return Ok(false),
                }
            }
            let patch: json_patch::Patch = serde_json::from_value(plan::json_patch(&change, &live))
                .map_err(|e| {
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
            api.patch(&change.node, &params, &Patch::Json::<()>(patch))
                .await
                .map_err(KubeFailure::during("patching a node"))?;
            ctx.metrics.gitops.node_writes.inc();
            Ok(true)
        }
        .await;
        if let Some(done) = attempts.settle(result, stale, |last| last) {
            return done;
        }
    }
}
