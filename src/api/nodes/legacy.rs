//! The legacy handler: the API does the Kubernetes work itself, as the old API did, minus its
//! defects. Every write is a merge patch guarded by the node's `resourceVersion` (a conflict
//! reads the node again and recomputes) that also records `stream.space/acted-by: legacy`, so
//! adding a taint appends to what is there and never loses a concurrent writer's change.
//!
//! A drain cordons the node (marking the legacy operation in flight on the node in the same
//! write), then evicts in a background task with the drain plan and Eviction code of
//! [`crate::nodeop`]: Eviction API, PodDisruptionBudgets respected, mirror and DaemonSet pods
//! left in place. While it runs it renews the in-flight mark, so the controller does not take
//! the node over; it stops if the controller claimed the node, and removes the mark at the end.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use tokio::sync::{OnceCell, Semaphore};
use tracing::{info, warn};

use super::request::NodeAction;
use crate::api::handlers::ApiError;
use crate::api_status::{Attempts, is_conflict, is_not_found};
use crate::crd::node_operation::{DrainSpec, TaintEdits, TaintSelector};
use crate::metrics::SharedMetrics;
use crate::nodeop::edits::{NodeEdit, NodeView, taint_changes};
use crate::nodeop::plan::{self, PodFacts};
use crate::nodeop::policy::{self, Eviction, PolicyApi};
use crate::ownership::Side;
use crate::ownership::handoff::{
    ACTED_BY_ANNOTATION, LEGACY_OPERATION_ANNOTATION, legacy_operation_value,
};

/// Attempts of a node write that keeps conflicting with other writers.
const CONFLICT_ATTEMPTS: u32 = 5;
/// How soon a drain looks again whether evicted pods are gone.
const DRAIN_POLL: Duration = Duration::from_secs(1);
/// How soon an eviction refused by a PodDisruptionBudget is tried again.
const BLOCKED_RETRY: Duration = Duration::from_secs(3);
/// How often a running drain renews its in-flight mark: well inside the controller's
/// [`IN_FLIGHT_TIMEOUT`](crate::ownership::handoff::IN_FLIGHT_TIMEOUT) of 60 s.
const RENEW_EVERY: Duration = Duration::from_secs(20);

/// Why a legacy edit is refused, decided on the node as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    Conflict(String),
    NotFound(String),
}

/// The change `action` makes to the node as it is now; an empty edit when it is already so.
/// `now` dates the in-flight mark of a drain.
pub fn edit_for(node: &NodeView, action: &NodeAction, now: Timestamp) -> Result<NodeEdit, Refusal> {
    let mut edit = NodeEdit::default();
    match action {
        NodeAction::SetLabel { key, value } => {
            if node.labels.get(key) != Some(value) {
                edit.labels.insert(key.clone(), Some(value.clone()));
            }
        }
        NodeAction::RemoveLabel { key } => {
            if node.labels.contains_key(key) {
                edit.labels.insert(key.clone(), None);
            }
        }
        NodeAction::AddTaint(taint) => {
            let effect = taint.effect.as_str();
            if node
                .taints
                .iter()
                .any(|t| t.key == taint.key && t.effect == effect)
            {
                return Err(Refusal::Conflict("Taint already exists".into()));
            }
            let add = TaintEdits {
                add: vec![taint.clone()],
                remove: Vec::new(),
            };
            edit.taints = taint_changes(&node.taints, &add);
        }
        NodeAction::RemoveTaint { key } => {
            if !node.taints.iter().any(|t| &t.key == key) {
                return Err(Refusal::NotFound("Taint not found".into()));
            }
            let remove = TaintEdits {
                add: Vec::new(),
                remove: vec![TaintSelector {
                    key: key.clone(),
                    effect: None,
                }],
            };
            edit.taints = taint_changes(&node.taints, &remove);
        }
        NodeAction::Cordon => edit.unschedulable = (!node.unschedulable).then_some(true),
        NodeAction::Uncordon => edit.unschedulable = node.unschedulable.then_some(false),
        NodeAction::Drain { .. } => {
            edit.unschedulable = (!node.unschedulable).then_some(true);
            edit.annotations.insert(
                LEGACY_OPERATION_ANNOTATION.into(),
                Some(legacy_operation_value(action.verb(), now)),
            );
        }
    }
    Ok(edit)
}

/// The success message of an action done by the legacy handler.
pub fn message(action: &NodeAction) -> &'static str {
    match action {
        NodeAction::SetLabel { .. } => "Label added successfully",
        NodeAction::RemoveLabel { .. } => "Label removed successfully",
        NodeAction::AddTaint(_) => "Taint added successfully",
        NodeAction::RemoveTaint { .. } => "Taint removed successfully",
        NodeAction::Cordon => "Node cordoned successfully",
        NodeAction::Uncordon => "Node uncordoned successfully",
        NodeAction::Drain { .. } => "Node drain started successfully",
    }
}

/// Reads the node, computes the edit and writes it with the node's `resourceVersion` and the
/// legacy record; a conflict starts over with a fresh read. Nothing is written when nothing
/// changes. Returns the node as written (or as read).
pub async fn edit_node(
    nodes: &Api<Node>,
    name: &str,
    edit: impl Fn(&NodeView) -> Result<NodeEdit, Refusal>,
) -> Result<Node, ApiError> {
    let stale = |e: &ApiError| matches!(e, ApiError::Kube(e) if is_conflict(e));
    let give_up = |_| {
        ApiError::Conflict(format!(
            "node {name} kept changing; gave up after {CONFLICT_ATTEMPTS} attempts, try again"
        ))
    };
    let mut attempts = Attempts::new(CONFLICT_ATTEMPTS);
    loop {
        let result: Result<Node, ApiError> = async {
            let node = nodes
                .get_opt(name)
                .await?
                .ok_or_else(|| node_missing(name))?;
            let mut change = edit(&NodeView::of(&node)).map_err(refused)?;
            if change.is_empty() {
                return Ok(node);
            }
            change.annotations.insert(
                ACTED_BY_ANNOTATION.into(),
                Some(Side::Legacy.as_str().into()),
            );
            let patch = change.merge_patch(node.resource_version().as_deref());
            match nodes
                .patch(name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Err(e) if is_not_found(&e) => Err(node_missing(name)),
                written => Ok(written?),
            }
        }
        .await;
        if let Some(done) = attempts.settle(result, stale, give_up) {
            return done;
        }
    }
}

/// The answer to a refused edit: 409 or 404.
pub fn refused(refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::Conflict(message) => ApiError::Conflict(message),
        Refusal::NotFound(message) => ApiError::Missing(message),
    }
}

pub fn node_missing(name: &str) -> ApiError {
    ApiError::Missing(format!("node {name:?} not found"))
}

/// Runs legacy drains in the background, a bounded number at once.
pub struct Drainer {
    client: Client,
    /// A client that does not retry HTTP 429 itself, so a blocked eviction returns at once.
    eviction_client: Client,
    /// Discovered on the first drain.
    policy: OnceCell<PolicyApi>,
    slots: Arc<Semaphore>,
    /// Nodes this replica is draining.
    running: Mutex<HashSet<String>>,
    timeout: Duration,
    metrics: SharedMetrics,
}

/// How a drain ended.
#[derive(Debug, PartialEq, Eq)]
pub enum DrainEnd {
    Drained {
        evicted: usize,
    },
    TimedOut {
        remaining: Vec<String>,
    },
    /// The controller recorded itself on the node, or another drain took the mark over.
    HandedOver,
}

impl Drainer {
    pub fn new(
        client: Client,
        eviction_client: Client,
        concurrent: usize,
        timeout: Duration,
        metrics: SharedMetrics,
    ) -> Drainer {
        Drainer {
            client,
            eviction_client,
            policy: OnceCell::new(),
            slots: Arc::new(Semaphore::new(concurrent.max(1))),
            running: Mutex::new(HashSet::new()),
            timeout,
            metrics,
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cordons the node and marks the drain in flight (one guarded write), then evicts in the
    /// background. 409 while this replica is already draining the node.
    pub async fn start(
        self: &Arc<Self>,
        node: &str,
        grace_period_seconds: i64,
    ) -> Result<(), ApiError> {
        let action = NodeAction::Drain {
            grace_period_seconds,
        };
        if !self.running().insert(node.to_string()) {
            return Err(ApiError::Conflict(format!(
                "a drain of node {node} is already in progress"
            )));
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        let now = Timestamp::now();
        let written = match edit_node(&nodes, node, |view| edit_for(view, &action, now)).await {
            Ok(written) => written,
            Err(error) => {
                self.running().remove(node);
                return Err(error);
            }
        };
        let mark = legacy_mark(&written);
        let drainer = self.clone();
        let node = node.to_string();
        tokio::spawn(async move {
            let end = match drainer.slots.clone().acquire_owned().await {
                Ok(_permit) => drainer.drain(&node, grace_period_seconds, mark).await,
                Err(_) => Err("the drain queue closed".to_string()),
            };
            match end {
                Ok(end) => info!(%node, outcome = ?end, "legacy drain finished"),
                Err(error) => warn!(%node, %error, "legacy drain failed"),
            }
            drainer.running().remove(&node);
        });
        Ok(())
    }

    async fn policy(&self) -> Result<&PolicyApi, kube::Error> {
        self.policy
            .get_or_try_init(|| policy::discover(&self.client))
            .await
    }

    /// Evicts until the node is drained, the timeout passes or the node is handed over; then
    /// removes the in-flight mark if it is still ours.
    async fn drain(
        &self,
        node: &str,
        grace: i64,
        mark: Option<String>,
    ) -> Result<DrainEnd, String> {
        let mut mark = mark;
        let end = self.evict_all(node, grace, &mut mark).await;
        if end != Ok(DrainEnd::HandedOver)
            && let Some(ours) = &mark
        {
            self.clear_mark(node, ours).await;
        }
        end
    }

    async fn evict_all(
        &self,
        node: &str,
        grace: i64,
        mark: &mut Option<String>,
    ) -> Result<DrainEnd, String> {
        let policy = self.policy().await.map_err(|e| e.to_string())?;
        let options = DrainSpec {
            grace_period_seconds: Some(grace),
            ignore_daemon_sets: true,
            delete_empty_dir_data: true,
            force: true,
            ..DrainSpec::default()
        };
        let pods: Api<Pod> = Api::all(self.client.clone());
        let list = ListParams::default().fields(&format!("spec.nodeName={node}"));
        let started = Instant::now();
        let mut renewed = Instant::now();
        let mut blocked = BTreeSet::new();
        let mut evicted = 0;
        loop {
            let listed = pods.list(&list).await.map_err(|e| e.to_string())?;
            let facts: Vec<PodFacts> = listed.items.iter().map(PodFacts::from_pod).collect();
            let plan = plan::plan(&facts, &options, &blocked);
            if plan.is_done() {
                return Ok(DrainEnd::Drained { evicted });
            }
            if started.elapsed() >= self.timeout {
                return Ok(DrainEnd::TimedOut {
                    remaining: plan.remaining,
                });
            }
            let results: Vec<(PodFacts, Eviction)> =
                futures::stream::iter(plan.evict_now.iter().cloned())
                    .map(|pod| async move {
                        let result =
                            policy::evict(&self.eviction_client, policy, &pod, Some(grace)).await;
                        (pod, result)
                    })
                    .buffer_unordered(options.concurrency())
                    .collect()
                    .await;
            blocked.clear();
            let mut budgets = HashMap::new();
            for (pod, result) in results {
                match result {
                    Eviction::Accepted => {
                        evicted += 1;
                        self.metrics.node_operations.evictions.inc();
                    }
                    Eviction::Gone => {}
                    Eviction::Blocked(message) => {
                        self.metrics.node_operations.blocked_evictions.inc();
                        let budget = budget_of(&self.client, policy, &pod, &mut budgets).await;
                        warn!(%node, pod = %pod.key(), budget = budget.as_deref().unwrap_or("-"), %message, "eviction blocked; retrying");
                        blocked.insert(pod.key());
                    }
                    Eviction::Failed(message) => {
                        warn!(%node, pod = %pod.key(), %message, "eviction failed; retrying");
                        blocked.insert(pod.key());
                    }
                }
            }
            if renewed.elapsed() >= RENEW_EVERY {
                match self.renew_mark(node, mark).await {
                    Some(true) => renewed = Instant::now(),
                    Some(false) => return Ok(DrainEnd::HandedOver),
                    None => {}
                }
            }
            let pause = if blocked.is_empty() {
                DRAIN_POLL
            } else {
                BLOCKED_RETRY
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// Renews the in-flight mark: `Some(false)` when the node is no longer ours (the
    /// controller claimed it or the mark changed hands), `None` when the write did not happen
    /// (tried again on the next round).
    async fn renew_mark(&self, node: &str, mark: &mut Option<String>) -> Option<bool> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let current = nodes.get_opt(node).await.ok()??;
        if !still_ours(&current, mark.as_deref()) {
            return Some(false);
        }
        let value = legacy_operation_value("drain", Timestamp::now());
        let patch = serde_json::json!({"metadata": {
            "resourceVersion": current.resource_version(),
            "annotations": {LEGACY_OPERATION_ANNOTATION: value},
        }});
        match nodes
            .patch(node, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {
                *mark = Some(value);
                Some(true)
            }
            Err(_) => None,
        }
    }

    /// Removes the in-flight mark, if it is still the one this drain wrote.
    async fn clear_mark(&self, node: &str, ours: &str) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        for _ in 0..CONFLICT_ATTEMPTS {
            let Ok(Some(current)) = nodes.get_opt(node).await else {
                return;
            };
            if !still_ours(&current, Some(ours)) {
                return;
            }
            let patch = serde_json::json!({"metadata": {
                "resourceVersion": current.resource_version(),
                "annotations": {LEGACY_OPERATION_ANNOTATION: null},
            }});
            match nodes
                .patch(node, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Err(e) if is_conflict(&e) => continue,
                Err(error) => {
                    warn!(%node, %error, "could not clear the legacy drain mark; it expires by itself");
                    return;
                }
                Ok(_) => return,
            }
        }
    }
}

/// The in-flight mark on a node.
fn legacy_mark(node: &Node) -> Option<String> {
    node.annotations().get(LEGACY_OPERATION_ANNOTATION).cloned()
}

/// Whether the node still records legacy as the acting side, with our in-flight mark.
fn still_ours(node: &Node, mark: Option<&str>) -> bool {
    let annotations: &BTreeMap<String, String> = node.annotations();
    annotations.get(ACTED_BY_ANNOTATION).map(String::as_str) == Some(Side::Legacy.as_str())
        && annotations
            .get(LEGACY_OPERATION_ANNOTATION)
            .map(String::as_str)
            == mark
}

/// `namespace/name` of the budget that covers the pod, for logs; each namespace read once.
async fn budget_of(
    client: &Client,
    policy: &PolicyApi,
    pod: &PodFacts,
    cache: &mut HashMap<String, Vec<plan::Budget>>,
) -> Option<String> {
    if !cache.contains_key(&pod.namespace) {
        let list = policy::budgets(client, policy, &pod.namespace)
            .await
            .unwrap_or_default();
        cache.insert(pod.namespace.clone(), list);
    }
    let budgets = cache.get(&pod.namespace)?;
    plan::budget_for(pod, budgets).map(|b| format!("{}/{}", b.namespace, b.name))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Taint;

    use super::*;
    use crate::crd::node_operation::{NodeTaint, TaintEffect};

    fn taint(key: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: None,
            effect: effect.into(),
            time_added: None,
        }
    }

    fn view(taints: Vec<Taint>, unschedulable: bool) -> NodeView {
        NodeView {
            labels: BTreeMap::from([("zone".to_string(), "z1".to_string())]),
            taints,
            unschedulable,
            cordoned_by_us: false,
        }
    }

    fn add(key: &str, effect: TaintEffect) -> NodeAction {
        NodeAction::AddTaint(NodeTaint {
            key: key.into(),
            value: None,
            effect,
        })
    }

    #[test]
    fn edits_of_each_action() {
        let now = Timestamp::from_second(1_700_000_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let foreign = taint("foreign", "NoSchedule");
        let node = view(vec![foreign.clone(), taint("maint", "NoExecute")], false);
        let edit = |action: &NodeAction| edit_for(&node, action, now);

        // Taint add appends after every existing taint.
        let added = edit(&add("maint", TaintEffect::NoSchedule)).expect("added");
        assert_eq!(
            added.taints,
            Some(vec![
                foreign.clone(),
                taint("maint", "NoExecute"),
                taint("maint", "NoSchedule")
            ])
        );
        assert_eq!(
            edit(&add("maint", TaintEffect::NoExecute)),
            Err(Refusal::Conflict("Taint already exists".into()))
        );
        // Remove drops every effect of the key and nothing else.
        let removed = edit(&NodeAction::RemoveTaint {
            key: "maint".into(),
        })
        .expect("removed");
        assert_eq!(removed.taints, Some(vec![foreign.clone()]));
        assert_eq!(
            edit(&NodeAction::RemoveTaint {
                key: "absent".into()
            }),
            Err(Refusal::NotFound("Taint not found".into()))
        );

        let set = |key: &str, value: &str| NodeAction::SetLabel {
            key: key.into(),
            value: value.into(),
        };
        assert!(edit(&set("zone", "z1")).expect("same").is_empty());
        assert_eq!(
            edit(&set("zone", "z2")).expect("changed").labels,
            BTreeMap::from([("zone".to_string(), Some("z2".to_string()))])
        );
        assert_eq!(
            edit(&NodeAction::RemoveLabel { key: "zone".into() })
                .expect("removed")
                .labels,
            BTreeMap::from([("zone".to_string(), None)])
        );
        assert!(
            edit(&NodeAction::RemoveLabel {
                key: "absent".into()
            })
            .expect("nothing")
            .is_empty()
        );

        assert_eq!(
            edit(&NodeAction::Cordon).expect("cordon").unschedulable,
            Some(true)
        );
        assert!(edit(&NodeAction::Uncordon).expect("schedulable").is_empty());
        let cordoned = view(vec![], true);
        assert!(
            edit_for(&cordoned, &NodeAction::Cordon, now)
                .expect("cordoned")
                .is_empty()
        );
        assert_eq!(
            edit_for(&cordoned, &NodeAction::Uncordon, now)
                .expect("uncordon")
                .unschedulable,
            Some(false)
        );

        // A drain of a cordoned node still marks the drain in flight.
        let drain = NodeAction::Drain {
            grace_period_seconds: 30,
        };
        let marked = edit_for(&cordoned, &drain, now).expect("drain");
        assert_eq!(marked.unschedulable, None);
        assert_eq!(
            marked.annotations.get(LEGACY_OPERATION_ANNOTATION),
            Some(&Some(legacy_operation_value("drain", now)))
        );
    }

    #[test]
    fn a_drain_stops_when_the_node_is_no_longer_ours() {
        let node = |acted_by: &str, mark: Option<&str>| -> Node {
            let mut annotations = serde_json::json!({ACTED_BY_ANNOTATION: acted_by});
            if let Some(mark) = mark {
                annotations[LEGACY_OPERATION_ANNOTATION] = mark.into();
            }
            serde_json::from_value(serde_json::json!({"metadata": {"annotations": annotations}}))
                .expect("node")
        };
        let ours = "drain 2024-01-01T00:00:00Z";
        let cases = [
            (node("legacy", Some(ours)), true),
            // The controller claimed the node.
            (node("controller", Some(ours)), false),
            // Another drain (another replica) took the mark over.
            (node("legacy", Some("drain 2024-01-01T00:00:05Z")), false),
            (node("legacy", None), false),
        ];
        for (node, expected) in cases {
            assert_eq!(
                still_ours(&node, Some(ours)),
                expected,
                "{:?}",
                node.metadata
            );
        }
    }
}
