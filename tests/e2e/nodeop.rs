//! NodeOperations against the real API server, controller manager (ReplicaSet, DaemonSet and
//! disruption controllers) and the node simulator.
//!
//! Every test creates its own Nodes (labelled so the simulator adopts them) and never touches
//! `sim-node-1/2`, which the session tests use in parallel. Its NodeOperations carry the test's
//! label, so only its own controller reconciles them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use streamspace_controller::crd::node_operation::NodeOperationStatus;
use streamspace_controller::crd::{NodeOperation, NodeOperationPhase};
use streamspace_controller::devcluster::ADOPTED_NODE_LABEL;

use crate::support::{TEST_ENV_LABEL, TestEnv, wait_for, wait_gone, wait_object};

/// Label every node and pod selector of one test shares.
const POOL: &str = "stream.space/test-pool";

struct NodeTest {
    env: TestEnv,
    nodes: Vec<String>,
}

impl NodeTest {
    async fn new(test: &str) -> NodeTest {
        NodeTest {
            env: TestEnv::new(test).await,
            nodes: Vec::new(),
        }
    }

    fn ns(&self) -> &str {
        &self.env.namespace
    }

    fn client(&self) -> Client {
        self.env.client.clone()
    }

    fn node_name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.ns())
    }

    fn op_name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.ns())
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.client())
    }

    fn ops(&self) -> Api<NodeOperation> {
        Api::all(self.client())
    }

    /// Creates an adopted node of this test's pool.
    async fn node(&mut self, suffix: &str, spec: Value) -> String {
        let name = self.node_name(suffix);
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {
                ADOPTED_NODE_LABEL: "true", POOL: self.ns(), "kubernetes.io/hostname": name
            }},
            "spec": spec,
        }))
        .expect("node object");
        self.nodes()
            .create(&PostParams::default(), &node)
            .await
            .unwrap_or_else(|e| panic!("creating node {name}: {e}"));
        self.nodes.push(name.clone());
        name
    }

    async fn op(&self, suffix: &str, spec: Value) -> String {
        let name = self.op_name(suffix);
        let op: NodeOperation = serde_json::from_value(json!({
            "apiVersion": "stream.space/v1alpha1", "kind": "NodeOperation",
            "metadata": {"name": name, "labels": {TEST_ENV_LABEL: self.ns()}},
            "spec": spec,
        }))
        .expect("operation object");
        self.ops()
            .create(&PostParams::default(), &op)
            .await
            .unwrap_or_else(|e| panic!("creating operation {name}: {e}"));
        name
    }

    async fn wait_phase(&self, op: &str, phase: NodeOperationPhase) -> NodeOperationStatus {
        let found = wait_object(&self.ops(), op, &format!("{op} {phase}"), |o| {
            o.status.as_ref().and_then(|s| s.phase.as_ref()) == Some(&phase)
        })
        .await;
        found.status.unwrap_or_default()
    }

    async fn wait_status(
        &self,
        op: &str,
        what: &str,
        check: impl Fn(&NodeOperationStatus) -> bool,
    ) -> NodeOperationStatus {
        let found = wait_object(&self.ops(), op, what, |o| {
            o.status.as_ref().is_some_and(&check)
        })
        .await;
        found.status.unwrap_or_default()
    }

    async fn delete_op(&self, op: &str) {
        self.ops()
            .delete(op, &DeleteParams::default())
            .await
            .expect("delete operation");
        wait_gone(&self.ops(), op, "operation gone").await;
    }

    async fn unschedulable(&self, node: &str) -> bool {
        let node = self.nodes().get(node).await.expect("node");
        node.spec.and_then(|s| s.unschedulable).unwrap_or(false)
    }

    /// A Deployment whose pods may only run on this test's nodes.
    async fn deployment(&self, name: &str, replicas: i32, extra_pod_spec: Value) {
        let mut pod_spec = json!({
            "nodeSelector": {ADOPTED_NODE_LABEL: "true", POOL: self.ns()},
            "containers": [{"name": "app", "image": "busybox"}],
        });
        merge(&mut pod_spec, extra_pod_spec);
        self.env
            .create::<Deployment>(json!({
                "metadata": {"name": name},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
                }
            }))
            .await;
    }

    /// A pod bound directly to `node`.
    async fn bare_pod(&self, name: &str, node: &str, annotations: Value, extra: Value) -> Pod {
        let mut spec =
            json!({"nodeName": node, "containers": [{"name": "app", "image": "busybox"}]});
        merge(&mut spec, extra);
        self.env
            .create::<Pod>(json!({
                "metadata": {"name": name, "annotations": annotations},
                "spec": spec,
            }))
            .await
    }

    /// Running, ready pods with label `app=<app>`, by node.
    async fn ready_pods(&self, app: &str) -> Vec<(String, String)> {
        let pods = self
            .env
            .api::<Pod>()
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let mut found: Vec<(String, String)> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
            .map(|p| {
                let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
                (node.unwrap_or_default(), p.name_any())
            })
            .collect();
        found.sort();
        found
    }

    async fn wait_ready_on(&self, app: &str, node: &str, count: usize) {
        wait_for(
            &format!("{count} ready {app} pods on {node}"),
            || self.ready_pods(app),
            |pods| pods.iter().filter(|(n, _)| n == node).count() == count,
        )
        .await;
    }

    fn budgets(&self) -> Api<DynamicObject> {
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("policy", "v1beta1", "PodDisruptionBudget"),
            "poddisruptionbudgets",
        );
        Api::namespaced_with(self.client(), self.ns(), &resource)
    }

    async fn budget(&self, name: &str, app: &str, min_available: i32) {
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "policy/v1beta1", "kind": "PodDisruptionBudget",
            "metadata": {"name": name, "namespace": self.ns()},
            "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": app}}},
        }))
        .expect("budget object");
        self.budgets()
            .create(&PostParams::default(), &object)
            .await
            .expect("create budget");
        // The eviction API only trusts a budget the disruption controller has observed.
        wait_for(
            "budget observed",
            || async { self.budgets().get(name).await.ok() },
            |b| {
                b.as_ref()
                    .and_then(|b| b.data.get("status"))
                    .and_then(|s| s.get("observedGeneration"))
                    .is_some()
            },
        )
        .await;
    }

    async fn relax_budget(&self, name: &str, min_available: i32) {
        self.budgets()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"minAvailable": min_available}})),
            )
            .await
            .expect("relax budget");
    }

    async fn events_of(&self, op: &str) -> Vec<String> {
        let events: Api<Event> = Api::all(self.client());
        events
            .list(&ListParams::default().fields(&format!("involvedObject.name={op}")))
            .await
            .map(|l| l.items.iter().filter_map(|e| e.reason.clone()).collect())
            .unwrap_or_default()
    }

    async fn cleanup(self) {
        let ops = self.ops();
        let mine = ListParams::default().labels(&format!("{TEST_ENV_LABEL}={}", self.ns()));
        // Deleted while our controller still runs, so finalizers are released.
        let _ = ops.delete_collection(&DeleteParams::default(), &mine).await;
        wait_for(
            "operations of the test gone",
            || async { ops.list(&mine).await.map(|l| l.items.len()).unwrap_or(0) },
            |n| *n == 0,
        )
        .await;
        for node in &self.nodes {
            let _ = self.nodes().delete(node, &DeleteParams::default()).await;
        }
        self.env.cleanup().await;
    }
}

/// `streamspace_nodeop_evictions_total` of one metrics registry.
fn evictions(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("streamspace_nodeop_evictions_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn merge(target: &mut Value, extra: Value) {
    if let (Some(target), Value::Object(extra)) = (target.as_object_mut(), extra) {
        target.extend(extra);
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn reason(status: &NodeOperationStatus) -> String {
    status
        .conditions
        .first()
        .map(|c| c.reason.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn cordon_holds_while_the_operation_exists_and_restores_prior_state() {
    let mut t = NodeTest::new("nodeop-cordon").await;
    let free = t.node("free", json!({})).await;
    let cordoned = t.node("cordoned", json!({"unschedulable": true})).await;

    let op = t
        .op("free", json!({"nodeName": free, "cordon": true}))
        .await;
    let status = t.wait_phase(&op, NodeOperationPhase::Succeeded).await;
    assert_eq!(status.prior_unschedulable, Some(false));
    assert!(t.unschedulable(&free).await);
    // Someone uncordons by hand: the operation puts the cordon back while it exists.
    t.nodes()
        .patch(
            &free,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": false}})),
        )
        .await
        .expect("uncordon by hand");
    wait_for(
        "cordon restored",
        || t.unschedulable(&free),
        |cordoned| *cordoned,
    )
    .await;
    // A second operation takes over the cordon: deleting the first keeps the node cordoned,
    // deleting the last one uncordons it.
    let second = t
        .op("free-2", json!({"nodeName": free, "cordon": true}))
        .await;
    let status = t.wait_phase(&second, NodeOperationPhase::Succeeded).await;
    assert_eq!(
        status.prior_unschedulable,
        Some(false),
        "our own cordon is not prior state"
    );
    t.delete_op(&op).await;
    assert!(
        t.unschedulable(&free).await,
        "still held by the second operation"
    );
    t.delete_op(&second).await;
    assert!(!t.unschedulable(&free).await, "deletion uncordons");
    let annotations = t
        .nodes()
        .get(&free)
        .await
        .expect("node")
        .annotations()
        .clone();
    assert!(annotations.is_empty(), "{annotations:?}");

    let op = t
        .op("cordoned", json!({"nodeName": cordoned, "cordon": true}))
        .await;
    let status = t.wait_phase(&op, NodeOperationPhase::Succeeded).await;
    assert_eq!(status.prior_unschedulable, Some(true));
    t.delete_op(&op).await;
    assert!(
        t.unschedulable(&cordoned).await,
        "a node cordoned before the operation stays cordoned"
    );
    let first = t.op_name("free");
    wait_for(
        "Started and Succeeded events",
        || t.events_of(&first),
        |events| events.iter().any(|r| r == "Started") && events.iter().any(|r| r == "Succeeded"),
    )
    .await;
    t.cleanup().await;
}

#[tokio::test]
async fn drain_evicts_replicated_pods_and_leaves_daemonset_and_mirror_pods() {
    let mut t = NodeTest::new("nodeop-drain").await;
    let a = t.node("a", json!({})).await;
    t.deployment("web", 2, json!({})).await;
    t.wait_ready_on("web", &a, 2).await;
    let b = t.node("b", json!({})).await;
    t.env
        .create::<k8s_openapi::api::apps::v1::DaemonSet>(json!({
            "metadata": {"name": "agent"},
            "spec": {
                "selector": {"matchLabels": {"app": "agent"}},
                "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {
                    "nodeSelector": {ADOPTED_NODE_LABEL: "true", POOL: t.ns()},
                    "containers": [{"name": "agent", "image": "busybox"}],
                }},
            }
        }))
        .await;
    t.wait_ready_on("agent", &a, 1).await;
    let mirror = t
        .bare_pod(
            "static-web",
            &a,
            json!({"kubernetes.io/config.mirror": "mirror"}),
            json!({}),
        )
        .await;
    let other = t.bare_pod("elsewhere", &b, json!({}), json!({})).await;
    let daemon_before = t.ready_pods("agent").await;

    let op = t.op("drain", json!({"nodeName": a, "drain": {}})).await;
    let status = t.wait_phase(&op, NodeOperationPhase::Succeeded).await;
    let drain = status.drain.clone().unwrap_or_default();
    assert_eq!(
        (drain.total, drain.evicted, drain.remaining),
        (2, 2, 0),
        "{status:#?}"
    );
    assert_eq!(drain.skipped.len(), 2, "{status:#?}");
    assert!(t.unschedulable(&a).await);
    // The ReplicaSet recreated the evicted pods on the other node.
    t.wait_ready_on("web", &b, 2).await;
    assert!(t.ready_pods("web").await.iter().all(|(node, _)| node == &b));
    // DaemonSet and mirror pods stayed; the pod on the other node was not touched.
    assert_eq!(t.ready_pods("agent").await, daemon_before);
    let pods = t.env.api::<Pod>();
    for (name, uid) in [("static-web", mirror.uid()), ("elsewhere", other.uid())] {
        let pod = pods.get(name).await.expect("still there");
        assert_eq!(pod.uid(), uid);
        assert!(
            pod.metadata.deletion_timestamp.is_none(),
            "{name} untouched"
        );
    }
    let metrics = t
        .env
        .controller
        .as_ref()
        .map(|c| c.metrics.encode())
        .unwrap_or_default();
    assert!(
        metrics.contains("streamspace_nodeop_evictions_total 2"),
        "{metrics}"
    );
    t.cleanup().await;
}

#[tokio::test]
async fn budget_blocks_the_drain_until_relaxed() {
    let mut t = NodeTest::new("nodeop-pdb").await;
    let a = t.node("a", json!({})).await;
    t.deployment("db", 2, json!({})).await;
    t.wait_ready_on("db", &a, 2).await;
    t.node("b", json!({})).await;
    t.budget("db-budget", "db", 2).await;

    let op = t.op("drain", json!({"nodeName": a, "drain": {}})).await;
    let budget = format!("{}/db-budget", t.ns());
    let status = t
        .wait_status(&op, "eviction blocked by the budget", |s| {
            s.drain.as_ref().is_some_and(|d| {
                d.blocked
                    .iter()
                    .any(|b| b.pod_disruption_budget.as_ref() == Some(&budget))
            })
        })
        .await;
    assert_eq!(status.phase, Some(NodeOperationPhase::Running));
    assert_eq!(reason(&status), "EvictionBlocked");
    let message = status.message.clone().unwrap_or_default();
    assert!(message.contains(&budget), "{message}");
    let blocked = &status.drain.as_ref().expect("drain").blocked;
    assert!(
        blocked
            .iter()
            .all(|b| b.pod.starts_with(&format!("{}/db-", t.ns()))),
        "{blocked:?}"
    );
    // Published right after the status write.
    wait_for(
        "an EvictionBlocked event",
        || t.events_of(&op),
        |events| events.iter().any(|r| r == "EvictionBlocked"),
    )
    .await;

    t.relax_budget("db-budget", 1).await;
    let status = t.wait_phase(&op, NodeOperationPhase::Succeeded).await;
    let drain = status.drain.unwrap_or_default();
    assert_eq!((drain.evicted, drain.remaining), (2, 0));
    assert!(drain.blocked.is_empty());
    t.cleanup().await;
}

#[tokio::test]
async fn blocked_drain_fails_at_its_timeout_listing_remaining_pods() {
    let mut t = NodeTest::new("nodeop-timeout").await;
    let a = t.node("a", json!({})).await;
    t.deployment("db", 2, json!({})).await;
    t.wait_ready_on("db", &a, 2).await;
    t.budget("db-budget", "db", 2).await;

    let op = t
        .op(
            "drain",
            json!({"nodeName": a, "drain": {"timeoutSeconds": 4}}),
        )
        .await;
    let status = t.wait_phase(&op, NodeOperationPhase::Failed).await;
    assert_eq!(reason(&status), "Timeout");
    let drain = status.drain.clone().unwrap_or_default();
    assert_eq!(drain.remaining, 2);
    let on_node: Vec<String> = t
        .ready_pods("db")
        .await
        .into_iter()
        .map(|(_, name)| format!("{}/{name}", t.ns()))
        .collect();
    assert_eq!(drain.remaining_pods, on_node);
    assert!(status.message.unwrap_or_default().contains("timed out"));
    assert!(t.unschedulable(&a).await, "a failed drain keeps its cordon");
    t.cleanup().await;
}

#[tokio::test]
async fn unmanaged_and_empty_dir_pods_need_force_and_delete_empty_dir_data() {
    let mut t = NodeTest::new("nodeop-force").await;
    let a = t.node("a", json!({})).await;
    t.bare_pod("loner", &a, json!({}), json!({})).await;
    t.deployment(
        "cache",
        1,
        json!({"volumes": [{"name": "scratch", "emptyDir": {}}]}),
    )
    .await;
    t.wait_ready_on("cache", &a, 1).await;
    t.node("b", json!({})).await;
    let pods = t.env.api::<Pod>();

    let op = t.op("plain", json!({"nodeName": a, "drain": {}})).await;
    let status = t.wait_phase(&op, NodeOperationPhase::Failed).await;
    assert_eq!(reason(&status), "PodsRefused");
    let message = status.message.clone().unwrap_or_default();
    assert!(
        message.contains("loner") && message.contains("force"),
        "{message}"
    );
    assert!(message.contains("deleteEmptyDirData"), "{message}");
    assert_eq!(status.drain.as_ref().map(|d| d.evicted), Some(0));
    let loner = pods.get("loner").await.expect("loner still there");
    assert!(
        loner.metadata.deletion_timestamp.is_none(),
        "nothing evicted"
    );
    assert_eq!(t.ready_pods("cache").await.len(), 1);

    let op = t
        .op("force", json!({"nodeName": a, "drain": {"force": true}}))
        .await;
    let status = t.wait_phase(&op, NodeOperationPhase::Failed).await;
    let message = status.message.unwrap_or_default();
    assert!(
        !message.contains("loner") && message.contains("deleteEmptyDirData"),
        "{message}"
    );

    let op = t
        .op(
            "both",
            json!({"nodeName": a, "drain": {"force": true, "deleteEmptyDirData": true}}),
        )
        .await;
    t.wait_phase(&op, NodeOperationPhase::Succeeded).await;
    wait_gone(&pods, "loner", "unmanaged pod evicted").await;
    t.cleanup().await;
}

#[tokio::test]
async fn taint_and_label_edits_keep_what_others_wrote() {
    let mut t = NodeTest::new("nodeop-taints").await;
    let a = t
        .node(
            "a",
            json!({"taints": [{"key": "other", "value": "x", "effect": "NoSchedule"}]}),
        )
        .await;
    t.nodes()
        .patch(
            &a,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"gone": "1", "keep": "1"}}})),
        )
        .await
        .expect("labels");
    let op = t
        .op(
            "add",
            json!({"nodeName": a,
                "taints": {"add": [{"key": "maint", "value": "yes", "effect": "NoSchedule"}]},
                "labels": {"add": {"zone": "z1"}, "remove": ["gone"]}}),
        )
        .await;
    // Another writer adds a taint at the same time (read-modify-write with a precondition,
    // as every well-behaved writer does).
    loop {
        let node = t.nodes().get(&a).await.expect("node");
        let mut taints = node.spec.clone().and_then(|s| s.taints).unwrap_or_default();
        taints.push(
            serde_json::from_value(json!({"key": "racer", "effect": "NoExecute"})).expect("taint"),
        );
        let patch = json!({"metadata": {"resourceVersion": node.resource_version()}, "spec": {"taints": taints}});
        match t
            .nodes()
            .patch(&a, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => break,
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => panic!("racing writer: {e}"),
        }
    }
    t.wait_phase(&op, NodeOperationPhase::Succeeded).await;
    let taint_keys = || async {
        let node = t.nodes().get(&a).await.expect("node");
        let mut keys: Vec<String> = node
            .spec
            .and_then(|s| s.taints)
            .unwrap_or_default()
            .into_iter()
            .map(|t| format!("{}:{}", t.key, t.effect))
            .collect();
        keys.sort();
        (keys, node.metadata.labels.unwrap_or_default())
    };
    let (keys, labels) = taint_keys().await;
    assert_eq!(
        keys,
        ["maint:NoSchedule", "other:NoSchedule", "racer:NoExecute"]
    );
    assert_eq!(labels.get("zone").map(String::as_str), Some("z1"));
    assert_eq!(labels.get("keep").map(String::as_str), Some("1"));
    assert!(!labels.contains_key("gone"));
    assert!(!t.unschedulable(&a).await, "taint edits do not cordon");

    let op = t
        .op(
            "remove",
            json!({"nodeName": a, "taints": {"remove": [{"key": "maint"}]}}),
        )
        .await;
    t.wait_phase(&op, NodeOperationPhase::Succeeded).await;
    let (keys, _) = taint_keys().await;
    assert_eq!(keys, ["other:NoSchedule", "racer:NoExecute"]);
    t.cleanup().await;
}

#[tokio::test]
async fn second_operation_of_a_node_waits_for_the_first() {
    let mut t = NodeTest::new("nodeop-queue").await;
    let a = t.node("a", json!({})).await;
    t.deployment("db", 1, json!({})).await;
    t.wait_ready_on("db", &a, 1).await;
    t.node("b", json!({})).await;
    t.budget("db-budget", "db", 1).await;

    let first = t.op("first", json!({"nodeName": a, "drain": {}})).await;
    t.wait_status(&first, "first blocked", |s| reason(s) == "EvictionBlocked")
        .await;
    let second = t
        .op(
            "second",
            json!({"nodeName": a, "labels": {"add": {"maintained": "yes"}}}),
        )
        .await;
    let status = t.wait_phase(&second, NodeOperationPhase::Pending).await;
    assert_eq!(reason(&status), "WaitingForOperation");
    assert!(status.message.unwrap_or_default().contains(&first));

    t.relax_budget("db-budget", 0).await;
    t.wait_phase(&first, NodeOperationPhase::Succeeded).await;
    t.wait_phase(&second, NodeOperationPhase::Succeeded).await;
    let node = t.nodes().get(&a).await.expect("node");
    assert_eq!(
        node.labels().get("maintained").map(String::as_str),
        Some("yes")
    );
    t.cleanup().await;
}

#[tokio::test]
async fn restarted_controller_resumes_the_drain_without_duplicate_evictions() {
    let mut t = NodeTest::new("nodeop-restart").await;
    let a = t.node("a", json!({})).await;
    t.deployment("web", 3, json!({})).await;
    t.wait_ready_on("web", &a, 3).await;
    // One disruption allowed, and no other node yet: the first eviction goes through, the
    // second is blocked until the replacement runs somewhere.
    t.budget("web-budget", "web", 2).await;

    let op = t.op("drain", json!({"nodeName": a, "drain": {}})).await;
    let before = t
        .wait_status(&op, "first eviction, then blocked", |s| {
            s.drain
                .as_ref()
                .is_some_and(|d| d.evicted == 1 && !d.blocked.is_empty())
        })
        .await;
    assert_eq!(before.phase, Some(NodeOperationPhase::Running));
    let old = t.env.controller.take().expect("controller");
    let old_metrics = old.metrics.clone();
    old.kill().await;
    t.node("b", json!({})).await;
    t.env.start_controller().await;
    let status = t.wait_phase(&op, NodeOperationPhase::Succeeded).await;
    let drain = status.drain.unwrap_or_default();
    assert_eq!((drain.total, drain.evicted, drain.remaining), (3, 3, 0));
    // Every pod was evicted exactly once across both controller instances.
    let new_metrics = t.env.controller.as_ref().map(|c| c.metrics.clone());
    let accepted =
        evictions(&old_metrics.encode()) + new_metrics.map(|m| evictions(&m.encode())).unwrap_or(0);
    assert_eq!(accepted, 3);
    t.cleanup().await;
}

#[tokio::test]
async fn invalid_operations_fail_clearly_and_others_continue() {
    let mut t = NodeTest::new("nodeop-invalid").await;
    let a = t.node("a", json!({})).await;
    let missing = t
        .op(
            "missing",
            json!({"nodeName": t.node_name("nowhere"), "cordon": true}),
        )
        .await;
    let empty = t.op("empty", json!({"nodeName": a})).await;
    let rejected = t
        .ops()
        .create(
            &PostParams::default(),
            &serde_json::from_value::<NodeOperation>(json!({
                "apiVersion": "stream.space/v1alpha1", "kind": "NodeOperation",
                "metadata": {"name": t.op_name("negative"), "labels": {TEST_ENV_LABEL: t.ns()}},
                "spec": {"nodeName": a, "drain": {"gracePeriodSeconds": -1}},
            }))
            .expect("object"),
        )
        .await;
    assert!(
        matches!(&rejected, Err(kube::Error::Api(s)) if s.code == 422),
        "{rejected:?}"
    );
    let good = t.op("good", json!({"nodeName": a, "cordon": true})).await;

    let status = t.wait_phase(&missing, NodeOperationPhase::Failed).await;
    assert_eq!(reason(&status), "NodeNotFound");
    assert!(
        status
            .message
            .unwrap_or_default()
            .contains("does not exist")
    );
    let status = t.wait_phase(&empty, NodeOperationPhase::Failed).await;
    assert_eq!(reason(&status), "InvalidSpec");
    assert!(status.message.unwrap_or_default().contains("nothing to do"));
    t.wait_phase(&good, NodeOperationPhase::Succeeded).await;
    assert!(t.unschedulable(&a).await);
    t.cleanup().await;
}

#[tokio::test]
async fn finished_operation_is_deleted_after_its_time_to_live() {
    let mut t = NodeTest::new("nodeop-ttl").await;
    let a = t.node("a", json!({})).await;
    let op = t
        .op(
            "ttl",
            json!({"nodeName": a, "cordon": true, "ttlSecondsAfterFinished": 2}),
        )
        .await;
    t.wait_phase(&op, NodeOperationPhase::Succeeded).await;
    assert!(t.unschedulable(&a).await);
    wait_gone(&t.ops(), &op, "operation deleted after its TTL").await;
    assert!(
        !t.unschedulable(&a).await,
        "deleting it uncordoned the node"
    );
    let labels: BTreeMap<String, String> = t.nodes().get(&a).await.expect("node").labels().clone();
    assert!(labels.contains_key(POOL));
    t.cleanup().await;
}
