//! Drain time of the node operation reconciler on the local control plane: a node running
//! `BENCH_PODS` replicated pods is drained by a NodeOperation at eviction concurrencies 1, 5
//! and 20, and once more at 5 under a PodDisruptionBudget that allows one disruption at a time.
//!
//! The controller runs in this process (node operations on, its own eviction client), so its
//! metrics are read directly: for every case the time from creating the NodeOperation to phase
//! `Succeeded`, and the evictions, blocked evictions and API writes the drain made.
//!
//! Run with `cargo bench --bench drain`; `BENCH_PODS` (default 100; 4 in the smoke run under
//! `cargo test`) changes the size. Figures are also appended to
//! `target/bench-results/drain.jsonl`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, PostParams, ResourceExt,
};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};
use streamspace_controller::FIELD_MANAGER;
use streamspace_controller::context::{Config, NodeOperationSettings, Readiness};
use streamspace_controller::crd::{NodeOperation, NodeOperationPhase};
use streamspace_controller::devcluster::{
    ADOPTED_NODE_LABEL, ControlPlane, ControlPlaneOptions, NodeSimulator, SimulatorConfig,
};
use streamspace_controller::metrics::Metrics;
use support::results::Results;
use support::{create_namespace, size};

const NAMESPACE: &str = "bench-drain";
/// Label of this run's NodeOperations: the controller handles only these.
const RUN_LABEL: &str = "bench.stream.space/run";
/// Label of each case's nodes; its pods may only run there.
const POOL: &str = "bench.stream.space/pool";
/// Longest wait for one step of a case before the run fails.
const STEP_LIMIT: Duration = Duration::from_secs(600);

/// Polls `get` every 50 ms until `check` holds.
async fn wait_until<T, F, Fut>(
    what: &str,
    mut get: F,
    check: impl Fn(&T) -> bool,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let started = Instant::now();
    loop {
        let value = get().await;
        if check(&value) {
            return Ok(value);
        }
        anyhow::ensure!(
            started.elapsed() < STEP_LIMIT,
            "{what} did not happen within {STEP_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create<K>(api: &Api<K>, object: Value) -> anyhow::Result<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    Ok(api
        .create(&PostParams::default(), &serde_json::from_value(object)?)
        .await?)
}

/// Sum of the samples of `name` whose line contains `label`.
fn metric(metrics: &Metrics, name: &str, label: &str) -> f64 {
    metrics
        .encode()
        .lines()
        .filter(|line| line.starts_with(name) && line.contains(label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What the drain reconciler did so far: evictions, blocked evictions, API writes.
fn counts(metrics: &Metrics) -> [f64; 3] {
    [
        metric(metrics, "streamspace_nodeop_evictions_total", ""),
        metric(metrics, "streamspace_nodeop_blocked_evictions_total", ""),
        metric(
            metrics,
            "streamspace_controller_api_writes_total",
            "controller=\"nodeoperation\"",
        ),
    ]
}

struct Case {
    label: &'static str,
    concurrency: u32,
    budget: bool,
}

struct World {
    client: kube::Client,
    metrics: Arc<Metrics>,
    results: Results,
    pods: i32,
}

impl World {
    async fn node(&self, name: &str, pool: &str) -> anyhow::Result<()> {
        create::<Node>(
            &Api::all(self.client.clone()),
            json!({"metadata": {"name": name, "labels": {
                ADOPTED_NODE_LABEL: "true", POOL: pool, "kubernetes.io/hostname": name
            }}}),
        )
        .await?;
        Ok(())
    }

    async fn ready_on(&self, app: &str, node: &str) -> usize {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), NAMESPACE);
        let listed = pods
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        listed
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
            .filter(|p| {
                let conditions = p.status.as_ref().and_then(|s| s.conditions.as_ref());
                conditions
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count()
    }

    /// A PodDisruptionBudget (policy/v1beta1: the local control plane is Kubernetes 1.20)
    /// that the disruption controller has observed, so evictions consult it.
    async fn budget(&self, name: &str, app: &str, min_available: i32) -> anyhow::Result<()> {
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("policy", "v1beta1", "PodDisruptionBudget"),
            "poddisruptionbudgets",
        );
        let budgets: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), NAMESPACE, &resource);
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "policy/v1beta1", "kind": "PodDisruptionBudget",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": app}}},
        }))?;
        budgets.create(&PostParams::default(), &object).await?;
        wait_until(
            "the budget observed",
            || async { budgets.get(name).await.ok() },
            |b| {
                b.as_ref()
                    .and_then(|b| b.data.get("status"))
                    .and_then(|s| s.get("observedGeneration"))
                    .is_some()
            },
        )
        .await?;
        Ok(())
    }

    async fn run(&self, case: &Case) -> anyhow::Result<()> {
        let (a, b) = (
            format!("drain-{}-a", case.label),
            format!("drain-{}-b", case.label),
        );
        let app = format!("load-{}", case.label);
        self.node(&a, case.label).await?;
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), NAMESPACE);
        create(
            &deployments,
            json!({"metadata": {"name": app}, "spec": {
                "replicas": self.pods,
                "selector": {"matchLabels": {"app": app}},
                "template": {"metadata": {"labels": {"app": app}}, "spec": {
                    "nodeSelector": {ADOPTED_NODE_LABEL: "true", POOL: case.label},
                    "containers": [{"name": "app", "image": "busybox"}],
                }},
            }}),
        )
        .await?;
        let wanted = usize::try_from(self.pods)?;
        wait_until(
            "the pods ready on the drained node",
            || self.ready_on(&app, &a),
            |n| *n == wanted,
        )
        .await?;
        // The second node is where the evicted pods go.
        self.node(&b, case.label).await?;
        if case.budget {
            self.budget(&format!("{app}-budget"), &app, self.pods - 1)
                .await?;
        }
        let before = counts(&self.metrics);
        let operations: Api<NodeOperation> = Api::all(self.client.clone());
        let name = format!("drain-{}", case.label);
        let started = Instant::now();
        create(
            &operations,
            json!({
                "apiVersion": "stream.space/v1alpha1", "kind": "NodeOperation",
                "metadata": {"name": name, "labels": {RUN_LABEL: "drain"}},
                "spec": {"nodeName": a, "drain": {"concurrency": case.concurrency}},
            }),
        )
        .await?;
        let phase = |o: &Option<NodeOperation>| {
            o.as_ref()
                .and_then(|o| o.status.as_ref())
                .and_then(|s| s.phase.clone())
        };
        let done = wait_until(
            "the drain to finish",
            || async { operations.get_opt(&name).await.ok().flatten() },
            |o| phase(o).is_some_and(|p| p.is_finished()),
        )
        .await?;
        let elapsed = started.elapsed();
        anyhow::ensure!(
            phase(&done) == Some(NodeOperationPhase::Succeeded),
            "drain {} ended {:?}",
            case.label,
            done.and_then(|o| o.status).and_then(|s| s.message)
        );
        let after = counts(&self.metrics);
        let label = format!(
            "{} ({} pods, concurrency {}{})",
            case.label,
            self.pods,
            case.concurrency,
            if case.budget { ", budget" } else { "" }
        );
        self.results
            .record(&format!("{label} drain"), elapsed.as_secs_f64(), "s", None)?;
        for (i, what) in ["evictions", "blocked evictions", "API writes"]
            .iter()
            .enumerate()
        {
            self.results
                .record(&format!("{label} {what}"), after[i] - before[i], "", None)?;
        }
        // Deleting the operation uncordons through its finalizer, while the controller runs.
        operations.delete(&name, &DeleteParams::default()).await?;
        wait_until(
            "the operation gone",
            || async { operations.get_opt(&name).await.ok().flatten() },
            Option::is_none,
        )
        .await?;
        deployments.delete(&app, &DeleteParams::default()).await?;
        let nodes: Api<Node> = Api::all(self.client.clone());
        for node in [&a, &b] {
            nodes.delete(node, &DeleteParams::default()).await?;
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pods = i32::try_from(size("BENCH_PODS", 100, 4))?;
    let results = Results::new("drain")?;
    let plane = ControlPlane::start(ControlPlaneOptions::default()).await?;
    let client = plane.client().await?;
    streamspace_controller::crd::install::install(&client, FIELD_MANAGER).await?;
    let simulator = NodeSimulator::spawn(client.clone(), SimulatorConfig::default());
    create_namespace(&client, NAMESPACE).await?;

    let metrics = Arc::new(Metrics::default());
    let readiness = Readiness::default();
    let kube_config =
        streamspace_controller::kube_client::kube_config_from(Some(plane.kubeconfig_path()))
            .await?;
    let config = Config {
        namespace: Some(NAMESPACE.into()),
        node_operations: NodeOperationSettings {
            selector: Some(format!("{RUN_LABEL}=drain")),
            kube_config: Some(kube_config),
            ..NodeOperationSettings::default()
        },
        ..Config::default()
    };
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let controller = tokio::spawn(streamspace_controller::controller::run(
        client.clone(),
        config,
        metrics.clone(),
        readiness.clone(),
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
    ));
    wait_until(
        "the controller ready",
        || async { readiness.is_ready() },
        |r| *r,
    )
    .await?;

    let world = World {
        client,
        metrics,
        results,
        pods,
    };
    println!("drain of a node with {pods} pods:");
    for case in [
        Case {
            label: "c1",
            concurrency: 1,
            budget: false,
        },
        Case {
            label: "c5",
            concurrency: 5,
            budget: false,
        },
        Case {
            label: "c20",
            concurrency: 20,
            budget: false,
        },
        Case {
            label: "pdb",
            concurrency: 5,
            budget: true,
        },
    ] {
        world.run(&case).await?;
    }
    let _ = stop.send(true);
    controller.await??;
    let nodes: Api<Node> = Api::all(world.client.clone());
    let left = nodes.list(&ListParams::default()).await?;
    for node in left.items.iter().filter(|n| n.labels().contains_key(POOL)) {
        let _ = nodes
            .delete(&node.name_any(), &DeleteParams::default())
            .await;
    }
    simulator.stop().await;
    plane.stop().await;
    Ok(())
}
