//! The admin nodes API against the real control plane, over a real socket, in both ownership
//! modes: `controller` (the API creates NodeOperations and the controller acts) and `legacy`
//! (the API patches and evicts itself).
//!
//! Every test creates its own nodes (adopted by the node simulator) and its own `nodes` flag
//! (`<namespace>-nodes`); its NodeOperations carry the test's label, so only its controller
//! handles them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use streamspace_controller::api::auth::StaticToken;
use streamspace_controller::api::nodes::NodeSettings;
use streamspace_controller::api::nodes::intent::{CREATED_BY_LABEL, NODE_LABEL};
use streamspace_controller::crd::{FeatureFlag, NodeOperation, NodeOperationPhase};
use streamspace_controller::devcluster::ADOPTED_NODE_LABEL;
use streamspace_controller::metrics::Metrics;
use streamspace_controller::ownership::handoff::{
    ACTED_BY_ANNOTATION, LEGACY_OPERATION_ANNOTATION,
};
use streamspace_controller::ownership::index::FlagIndex;
use streamspace_controller::ownership::{Owner, ResourceType};

use crate::http_client::{Http, RunningApi};
use crate::support::{self, TEST_ENV_LABEL, TestEnv, wait_for, wait_gone, wait_object};

const TOKEN: &str = "nodes-api-token";
/// Label every node and pod selector of one test shares.
const POOL: &str = "stream.space/test-pool";

/// The API process, in-process on loopback, with the flag index the test waits on.
struct ApiProcess {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    flags: Arc<FlagIndex>,
    _running: RunningApi,
}

impl ApiProcess {
    async fn start(env: &TestEnv) -> ApiProcess {
        let flags = FlagIndex::new(env.flag_settings());
        let nodes = NodeSettings {
            operation_labels: BTreeMap::from([(TEST_ENV_LABEL.to_string(), env.namespace.clone())]),
            eviction_config: Some(support::kube_config().await),
            drain_timeout: Duration::from_secs(120),
            ..NodeSettings::default()
        };
        let running = RunningApi::start_with(env, Arc::new(StaticToken::new(TOKEN)), |config| {
            config.flags = flags.clone();
            config.nodes = nodes;
        })
        .await;
        ApiProcess {
            addr: running.addr,
            metrics: running.metrics.clone(),
            flags,
            _running: running,
        }
    }
}

struct NodesTest {
    env: TestEnv,
    api: ApiProcess,
    nodes: Vec<String>,
}

impl NodesTest {
    /// A namespace, a controller, the `nodes` flag in `mode`, and the API seeing that flag.
    async fn new(test: &str, mode: &str) -> NodesTest {
        let env = TestEnv::new(test).await;
        let api = ApiProcess::start(&env).await;
        let t = NodesTest {
            env,
            api,
            nodes: Vec::new(),
        };
        t.set_mode(mode).await;
        t
    }

    fn ns(&self) -> &str {
        &self.env.namespace
    }

    fn client(&self) -> Client {
        self.env.client.clone()
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.client())
    }

    fn ops(&self) -> Api<NodeOperation> {
        Api::all(self.client())
    }

    fn flag_name(&self) -> String {
        self.api.flags.object_name(ResourceType::Nodes)
    }

    /// Writes the flag and waits until the API decides with it.
    async fn set_mode(&self, mode: &str) {
        let flag: FeatureFlag = serde_json::from_value(json!({
            "apiVersion": "stream.space/v1alpha1", "kind": "FeatureFlag",
            "metadata": {"name": self.flag_name()},
            "spec": {"mode": mode},
        }))
        .expect("flag object");
        Api::<FeatureFlag>::all(self.client())
            .patch(
                &self.flag_name(),
                &PatchParams::apply("api-nodes-test").force(),
                &Patch::Apply(&flag),
            )
            .await
            .expect("write the nodes flag");
        let expected = match mode {
            "legacy" => Owner::Legacy,
            "shadow" => Owner::Shadow,
            _ => Owner::Controller,
        };
        let flags = self.api.flags.clone();
        wait_for(
            "the API to see the nodes flag",
            || async { flags.owner(ResourceType::Nodes, "", "any-node") },
            |owner| *owner == expected,
        )
        .await;
    }

    /// Creates a node of this test's pool (adopted by the simulator).
    async fn node(&mut self, suffix: &str, spec: Value) -> String {
        let name = format!("{}-{suffix}", self.ns());
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

    async fn get_node(&self, name: &str) -> Node {
        self.nodes().get(name).await.expect("node")
    }

    async fn request(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string());
        Http::connect(self.api.addr)
            .await
            .request(
                method,
                &format!("/api/v1/admin/nodes{path}"),
                Some(TOKEN),
                body.as_deref(),
            )
            .await
    }

    async fn raw(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
        Http::connect(self.api.addr)
            .await
            .request(
                method,
                &format!("/api/v1/admin/nodes{path}"),
                token,
                Some(body),
            )
            .await
    }

    /// The NodeOperations of `node`.
    async fn ops_of(&self, node: &str) -> Vec<NodeOperation> {
        self.ops()
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|op| op.spec.node_name == node)
            .collect()
    }

    async fn wait_phase(&self, op: &str, phase: NodeOperationPhase) {
        wait_object(&self.ops(), op, &format!("{op} {phase}"), |o| {
            o.status.as_ref().and_then(|s| s.phase.as_ref()) == Some(&phase)
        })
        .await;
    }

    async fn wait_unschedulable(&self, node: &str, wanted: bool) {
        wait_for(
            &format!("{node} unschedulable={wanted}"),
            || async { unschedulable(&self.get_node(node).await) },
            |u| *u == wanted,
        )
        .await;
    }

    /// Running, ready pods with `app=<app>`, as (node, name).
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
        let _ = Api::<FeatureFlag>::all(self.client())
            .delete(&self.flag_name(), &DeleteParams::default())
            .await;
        for node in &self.nodes {
            let _ = self.nodes().delete(node, &DeleteParams::default()).await;
        }
        drop(self.api);
        self.env.cleanup().await;
    }
}

fn unschedulable(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

fn taint_keys(node: &Node) -> Vec<String> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|t| format!("{}:{}", t.key, t.effect))
        .collect()
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn counter(metrics: &Metrics, name: &str) -> u64 {
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

#[tokio::test]
async fn api_nodes_controller_mode_cordon_creates_a_node_operation() {
    let mut t = NodesTest::new("api-nodes-ctl", "controller").await;
    let a = t.node("a", json!({})).await;

    // Acceptance 4: cordon through the API -> NodeOperation -> node unschedulable.
    let (code, body) = t.request("POST", &format!("/{a}/cordon"), None).await;
    assert_eq!(code, 202, "{body}");
    let name = body["name"].as_str().expect("operation name").to_string();
    assert!(name.starts_with(&format!("{a}-cordon-")), "{name}");
    let op = t.ops().get(&name).await.expect("the operation exists");
    assert!(op.spec.cordon && op.spec.node_name == a, "{op:?}");
    let labels = op.labels();
    assert_eq!(
        labels.get(CREATED_BY_LABEL).map(String::as_str),
        Some("api")
    );
    assert_eq!(labels.get(NODE_LABEL), Some(&a));
    assert_eq!(labels.get(TEST_ENV_LABEL).map(String::as_str), Some(t.ns()));
    t.wait_phase(&name, NodeOperationPhase::Succeeded).await;
    t.wait_unschedulable(&a, true).await;
    assert_ne!(
        t.get_node(&a)
            .await
            .annotations()
            .get(ACTED_BY_ANNOTATION)
            .map(String::as_str),
        Some("legacy"),
        "the API did not write the node itself"
    );

    // Drain: a drain operation with the requested grace period.
    let (code, body) = t
        .request(
            "POST",
            &format!("/{a}/drain"),
            Some(json!({"grace_period_seconds": 7})),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let drain = body["name"].as_str().expect("drain name").to_string();
    let op = t.ops().get(&drain).await.expect("drain operation");
    let spec = op.spec.drain.clone().expect("a drain");
    assert_eq!(spec.grace_period_seconds, Some(7));
    assert!(spec.ignore_daemon_sets);
    t.wait_phase(&drain, NodeOperationPhase::Succeeded).await;

    // Labels and taints become operations too; the node ends up edited by the controller.
    let (code, body) = t
        .request(
            "PUT",
            &format!("/{a}/labels"),
            Some(json!({"key": "stream.space/zone", "value": "z1"})),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let (code, body) = t
        .request(
            "POST",
            &format!("/{a}/taints"),
            Some(json!({"key": "maint", "value": "yes", "effect": "NoSchedule"})),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let taint_op = body["name"].as_str().expect("taint op").to_string();
    t.wait_phase(&taint_op, NodeOperationPhase::Succeeded).await;
    let node = wait_for(
        "label and taint on the node",
        || t.get_node(&a),
        |n| {
            n.labels().get("stream.space/zone").map(String::as_str) == Some("z1")
                && taint_keys(n).contains(&"maint:NoSchedule".to_string())
        },
    )
    .await;
    assert_eq!(taint_keys(&node), ["maint:NoSchedule"]);
    // Duplicate key and effect: 409, and no operation for it.
    let before = t.ops_of(&a).await.len();
    let (code, body) = t
        .request(
            "POST",
            &format!("/{a}/taints"),
            Some(json!({"key": "maint", "effect": "NoSchedule"})),
        )
        .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (409, Some("Taint already exists"))
    );
    let (code, body) = t
        .request("DELETE", &format!("/{a}/taints/absent"), None)
        .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (404, Some("Taint not found"))
    );
    assert_eq!(t.ops_of(&a).await.len(), before);

    // Another cordon holder that the API did not create (as from Git): uncordon refuses and
    // deletes nothing.
    let git: NodeOperation = serde_json::from_value(json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "NodeOperation",
        "metadata": {"name": format!("{a}-from-git"), "labels": {
            TEST_ENV_LABEL: t.ns(), "stream.space/gitsync": "repo"
        }},
        "spec": {"nodeName": a, "cordon": true},
    }))
    .expect("operation");
    t.ops()
        .create(&PostParams::default(), &git)
        .await
        .expect("git operation");
    let (code, body) = t.request("POST", &format!("/{a}/uncordon"), None).await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains(&format!("{a}-from-git"))),
        "{body}"
    );
    t.ops().get(&name).await.expect("our cordon is still there");
    t.ops()
        .delete(&format!("{a}-from-git"), &DeleteParams::default())
        .await
        .expect("delete the git operation");
    wait_gone(&t.ops(), &format!("{a}-from-git"), "git operation gone").await;

    // Uncordon deletes the API's cordoning operations; their finalizers uncordon the node.
    let (code, body) = t.request("POST", &format!("/{a}/uncordon"), None).await;
    assert_eq!(code, 202, "{body}");
    let mut deleted: Vec<String> = body["names"]
        .as_array()
        .expect("names")
        .iter()
        .filter_map(|n| n.as_str().map(String::from))
        .collect();
    deleted.sort();
    let mut expected = vec![name.clone(), drain.clone()];
    expected.sort();
    assert_eq!(deleted, expected);
    wait_gone(&t.ops(), &name, "cordon operation gone").await;
    wait_gone(&t.ops(), &drain, "drain operation gone").await;
    t.wait_unschedulable(&a, false).await;
    t.ops()
        .get(&taint_op)
        .await
        .expect("a taint operation does not hold the cordon and stays");
    t.cleanup().await;
}

#[tokio::test]
async fn api_nodes_legacy_mode_patches_the_node_directly() {
    let mut t = NodesTest::new("api-nodes-legacy", "legacy").await;
    let a = t
        .node(
            "a",
            json!({"taints": [{"key": "foreign", "value": "x", "effect": "NoExecute"}]}),
        )
        .await;

    // Acceptance 4, legacy side: the same call patches the node, no NodeOperation.
    let (code, body) = t.request("POST", &format!("/{a}/cordon"), None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["message"], "Node cordoned successfully");
    let node = t.get_node(&a).await;
    assert!(unschedulable(&node));
    assert_eq!(
        node.annotations()
            .get(ACTED_BY_ANNOTATION)
            .map(String::as_str),
        Some("legacy")
    );
    assert!(
        t.ops_of(&a).await.is_empty(),
        "no NodeOperation in legacy mode"
    );
    let (code, body) = t.request("POST", &format!("/{a}/uncordon"), None).await;
    assert_eq!(
        (code, &body["message"]),
        (200, &json!("Node uncordoned successfully"))
    );
    assert!(!unschedulable(&t.get_node(&a).await));

    // Taint add appends: the foreign taint and a taint written concurrently both survive.
    let (code, body) = t
        .request(
            "POST",
            &format!("/{a}/taints"),
            Some(json!({"key": "maint", "value": "yes", "effect": "NoSchedule"})),
        )
        .await;
    assert_eq!(
        (code, &body["message"]),
        (200, &json!("Taint added successfully"))
    );
    let (code, _) = t
        .request(
            "POST",
            &format!("/{a}/taints"),
            Some(json!({"key": "maint", "effect": "NoExecute"})),
        )
        .await;
    assert_eq!(code, 200, "same key, other effect is another taint");
    assert_eq!(
        taint_keys(&t.get_node(&a).await),
        ["foreign:NoExecute", "maint:NoSchedule", "maint:NoExecute"]
    );
    let before = t.get_node(&a).await.resource_version();
    let (code, body) = t
        .request(
            "POST",
            &format!("/{a}/taints"),
            Some(json!({"key": "maint", "value": "other", "effect": "NoSchedule"})),
        )
        .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (409, Some("Taint already exists"))
    );
    assert_eq!(t.get_node(&a).await.resource_version(), before, "no write");
    let (code, body) = t
        .request("DELETE", &format!("/{a}/taints/absent"), None)
        .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (404, Some("Taint not found"))
    );
    // Remove drops every effect of the key and nothing else.
    let (code, body) = t
        .request("DELETE", &format!("/{a}/taints/maint"), None)
        .await;
    assert_eq!(
        (code, &body["message"]),
        (200, &json!("Taint removed successfully"))
    );
    assert_eq!(taint_keys(&t.get_node(&a).await), ["foreign:NoExecute"]);

    // Labels: put, overwrite, delete (keys with a prefix too).
    let (code, body) = t
        .request(
            "PUT",
            &format!("/{a}/labels"),
            Some(json!({"key": "stream.space/zone", "value": "z1"})),
        )
        .await;
    assert_eq!(
        (code, &body["message"]),
        (200, &json!("Label added successfully"))
    );
    assert_eq!(
        t.get_node(&a)
            .await
            .labels()
            .get("stream.space/zone")
            .map(String::as_str),
        Some("z1")
    );
    let (code, body) = t
        .request("DELETE", &format!("/{a}/labels/stream.space/zone"), None)
        .await;
    assert_eq!(
        (code, &body["message"]),
        (200, &json!("Label removed successfully"))
    );
    let labels = t.get_node(&a).await.labels().clone();
    assert!(!labels.contains_key("stream.space/zone"), "{labels:?}");
    assert_eq!(
        labels.get(POOL).map(String::as_str),
        Some(t.ns()),
        "others kept"
    );
    assert!(
        t.ops_of(&a).await.is_empty(),
        "no NodeOperation in legacy mode"
    );

    // Shadow: legacy still acts.
    t.set_mode("shadow").await;
    let (code, body) = t.request("POST", &format!("/{a}/cordon"), None).await;
    assert_eq!(code, 200, "{body}");
    assert!(unschedulable(&t.get_node(&a).await));
    assert!(
        t.ops_of(&a).await.is_empty(),
        "no NodeOperation in shadow mode"
    );
    t.cleanup().await;
}

fn budgets(client: Client, namespace: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("policy", "v1beta1", "PodDisruptionBudget"),
        "poddisruptionbudgets",
    );
    Api::namespaced_with(client, namespace, &resource)
}

#[tokio::test]
async fn api_nodes_legacy_drain_evicts_respecting_budgets_and_skips_daemonsets() {
    let mut t = NodesTest::new("api-nodes-drain", "legacy").await;
    let a = t.node("a", json!({})).await;
    let selector = json!({ADOPTED_NODE_LABEL: "true", POOL: t.ns()});
    t.env
        .create::<Deployment>(json!({
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                    "nodeSelector": selector,
                    "containers": [{"name": "app", "image": "busybox"}],
                }},
            }
        }))
        .await;
    t.wait_ready_on("web", &a, 2).await;
    let b = t.node("b", json!({})).await;
    t.env
        .create::<DaemonSet>(json!({
            "metadata": {"name": "agent"},
            "spec": {
                "selector": {"matchLabels": {"app": "agent"}},
                "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {
                    "nodeSelector": selector,
                    "containers": [{"name": "agent", "image": "busybox"}],
                }},
            }
        }))
        .await;
    t.wait_ready_on("agent", &a, 1).await;
    let agent_on_a = t.ready_pods("agent").await;
    // No disruption allowed yet.
    let budget: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "policy/v1beta1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "web-budget", "namespace": t.ns()},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}},
    }))
    .expect("budget");
    let pdbs = budgets(t.client(), t.ns());
    pdbs.create(&PostParams::default(), &budget)
        .await
        .expect("create budget");
    wait_for(
        "budget observed",
        || async { pdbs.get("web-budget").await.ok() },
        |b| {
            b.as_ref()
                .and_then(|b| b.data.get("status"))
                .and_then(|s| s.get("observedGeneration"))
                .is_some()
        },
    )
    .await;

    let (code, body) = t
        .request("POST", &format!("/{a}/drain"), Some(json!({})))
        .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["message"], "Node drain started successfully");
    let node = t.get_node(&a).await;
    assert!(unschedulable(&node), "cordoned before the response");
    let annotations = node.annotations();
    assert_eq!(
        annotations.get(ACTED_BY_ANNOTATION).map(String::as_str),
        Some("legacy")
    );
    assert!(
        annotations
            .get(LEGACY_OPERATION_ANNOTATION)
            .is_some_and(|v| v.starts_with("drain ")),
        "{annotations:?}"
    );
    // A second drain of the node while this one runs is refused.
    let (code, _) = t.request("POST", &format!("/{a}/drain"), None).await;
    assert_eq!(code, 409);

    // The budget holds the pods: evictions are refused (HTTP 429), nothing is deleted.
    let metrics = t.api.metrics.clone();
    wait_for(
        "a blocked eviction",
        || async { counter(&metrics, "streamspace_nodeop_blocked_evictions_total") },
        |n| *n > 0,
    )
    .await;
    assert_eq!(
        t.ready_pods("web")
            .await
            .iter()
            .filter(|(n, _)| n == &a)
            .count(),
        2,
        "the budget kept both pods"
    );
    assert_eq!(counter(&metrics, "streamspace_nodeop_evictions_total"), 0);

    // Relaxed: the pods are evicted, the ReplicaSet recreates them on b.
    pdbs.patch(
        "web-budget",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"minAvailable": 1}})),
    )
    .await
    .expect("relax budget");
    t.wait_ready_on("web", &b, 2).await;
    wait_for(
        "the in-flight mark removed",
        || t.get_node(&a),
        |n| !n.annotations().contains_key(LEGACY_OPERATION_ANNOTATION),
    )
    .await;
    assert!(t.ready_pods("web").await.iter().all(|(n, _)| n == &b));
    assert_eq!(counter(&metrics, "streamspace_nodeop_evictions_total"), 2);
    // The DaemonSet pod on the drained node is the same pod, untouched.
    let agents = t.ready_pods("agent").await;
    for pod in agent_on_a.iter().filter(|(n, _)| n == &a) {
        assert!(agents.contains(pod), "{pod:?} left in place: {agents:?}");
    }
    assert!(
        unschedulable(&t.get_node(&a).await),
        "a drained node stays cordoned"
    );
    assert!(
        t.ops_of(&a).await.is_empty(),
        "no NodeOperation in legacy mode"
    );
    t.cleanup().await;
}

#[tokio::test]
async fn api_nodes_reads_and_bad_input() {
    let mut t = NodesTest::new("api-nodes-reads", "legacy").await;
    let a = t
        .node(
            "a",
            json!({"taints": [{"key": "k", "effect": "NoSchedule", "value": "v"}]}),
        )
        .await;
    // Adopted nodes have no kubelet: report a status as one would.
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    t.nodes()
        .patch_status(
            &a,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                "allocatable": {"cpu": "3500m", "memory": "7Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                    "lastHeartbeatTime": now, "lastTransitionTime": now}],
                "nodeInfo": {"machineID": "m", "systemUUID": "s", "bootID": "b",
                    "kernelVersion": "6.1.0", "osImage": "Debian GNU/Linux 12",
                    "containerRuntimeVersion": "containerd://1.7", "kubeletVersion": "v1.20.2",
                    "kubeProxyVersion": "v1.20.2", "operatingSystem": "linux",
                    "architecture": "amd64"},
            }})),
        )
        .await
        .expect("node status");
    t.env
        .create::<Pod>(json!({
            "metadata": {"name": "bound"},
            "spec": {"nodeName": a, "containers": [{"name": "app", "image": "busybox"}]},
        }))
        .await;

    // Served from the watch cache once the simulator reported the node ready.
    let info = wait_for(
        "the node ready with its pod in the list",
        || async {
            let (code, body) = t.request("GET", "", None).await;
            assert_eq!(code, 200, "{body}");
            body.as_array()
                .and_then(|nodes| nodes.iter().find(|n| n["name"] == a.as_str()).cloned())
        },
        |info| {
            info.as_ref()
                .is_some_and(|i| i["status"] == "Ready" && i["pods"] == 1)
        },
    )
    .await
    .expect("listed");
    assert_eq!(info["taints"][0]["key"], "k");
    assert_eq!(info["labels"][POOL], t.ns());
    assert_eq!(info["capacity"]["cpu"], "4", "{info}");
    assert_eq!(info["allocatable"]["memory"], "7Gi", "{info}");
    assert_eq!(info["info"]["kubeletVersion"], "v1.20.2", "{info}");
    assert_eq!(
        info["info"]["containerRuntime"], "containerd://1.7",
        "{info}"
    );
    assert!(info["conditions"].as_array().is_some_and(|c| !c.is_empty()));
    assert_eq!(info["age"], "0s");
    let (code, one) = t.request("GET", &format!("/{a}"), None).await;
    assert_eq!(code, 200, "{one}");
    assert_eq!(one["name"], a.as_str());
    let (code, body) = t
        .request("GET", &format!("/{}-nowhere", t.ns()), None)
        .await;
    assert_eq!(code, 404, "{body}");
    assert_eq!(body["success"], false);
    let (code, stats) = t.request("GET", "/stats", None).await;
    assert_eq!(code, 200, "{stats}");
    assert!(
        stats["totalNodes"].as_u64().is_some_and(|n| n >= 1),
        "{stats}"
    );
    assert!(
        stats["readyNodes"].as_u64().is_some_and(|n| n >= 1),
        "{stats}"
    );
    assert!(
        stats["totalCapacity"]["memory"]
            .as_str()
            .is_some_and(|m| m.ends_with('i'))
    );

    // Bad requests: 4xx, and the node is not written.
    let before = t.get_node(&a).await.resource_version();
    let cases: Vec<(&str, String, Option<&str>, &str, u16)> = vec![
        ("GET", String::new(), None, "", 401),
        ("POST", format!("/{a}/cordon"), None, "", 401),
        ("POST", format!("/{a}/cordon"), Some("wrong"), "", 401),
        (
            "PUT",
            format!("/{a}/labels"),
            Some(TOKEN),
            r#"{"key": "bad key", "value": "v"}"#,
            400,
        ),
        (
            "PUT",
            format!("/{a}/labels"),
            Some(TOKEN),
            r#"{"key": "x\"}},\"spec\":{\"unschedulable\":true", "value": "v"}"#,
            400,
        ),
        (
            "PUT",
            format!("/{a}/labels"),
            Some(TOKEN),
            r#"{"key": "ok", "value": "-bad-"}"#,
            400,
        ),
        (
            "PUT",
            format!("/{a}/labels"),
            Some(TOKEN),
            r#"{"key": "ok"}"#,
            400,
        ),
        ("PUT", format!("/{a}/labels"), Some(TOKEN), "{not json", 400),
        ("PUT", format!("/{a}/labels"), Some(TOKEN), "", 400),
        (
            "POST",
            format!("/{a}/taints"),
            Some(TOKEN),
            r#"{"key": "k2", "effect": "Always"}"#,
            400,
        ),
        (
            "POST",
            format!("/{a}/taints"),
            Some(TOKEN),
            r#"{"effect": "NoSchedule"}"#,
            400,
        ),
        (
            "POST",
            format!("/{a}/drain"),
            Some(TOKEN),
            r#"{"grace_period_seconds": -5}"#,
            400,
        ),
        (
            "POST",
            format!("/{a}/drain"),
            Some(TOKEN),
            r#"{"grace": 5}"#,
            400,
        ),
        (
            "DELETE",
            format!("/{a}/labels/bad%20key"),
            Some(TOKEN),
            "",
            400,
        ),
        (
            "POST",
            "/Not_A_Node/cordon".to_string(),
            Some(TOKEN),
            "",
            400,
        ),
        (
            "POST",
            format!("/{}-nowhere/cordon", t.ns()),
            Some(TOKEN),
            "",
            404,
        ),
    ];
    for (method, path, token, body, expected) in cases {
        let (code, answer) = t.raw(method, &path, token, body).await;
        assert_eq!(code, expected, "{method} {path} {body}: {answer}");
        assert_eq!(answer["success"], false, "{method} {path}: {answer}");
        assert!(answer["error"].is_string(), "{method} {path}: {answer}");
    }
    assert_eq!(t.get_node(&a).await.resource_version(), before, "no write");

    // The same in controller mode: no NodeOperation for a bad request.
    t.set_mode("controller").await;
    let (code, _) = t
        .raw(
            "PUT",
            &format!("/{a}/labels"),
            Some(TOKEN),
            r#"{"key": "bad key", "value": "v"}"#,
        )
        .await;
    assert_eq!(code, 400);
    let (code, _) = t
        .raw(
            "POST",
            &format!("/{a}/drain"),
            Some(TOKEN),
            r#"{"grace_period_seconds": -5}"#,
        )
        .await;
    assert_eq!(code, 400);
    assert!(t.ops_of(&a).await.is_empty(), "no operation for bad input");
    assert_eq!(t.get_node(&a).await.resource_version(), before, "no write");
    t.cleanup().await;
}
