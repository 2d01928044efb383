//! Latency of the admin node endpoints with the real `api` and `controller` binaries on the local
//! control plane: listing `BENCH_NODES` nodes and their totals from the watch cache (one
//! keep-alive connection), and, with the `nodes` flag in `legacy` and then in `controller`
//! mode, the time from a cordon (uncordon) request to the node being unschedulable
//! (schedulable) again.
//!
//! Run with `cargo bench --bench api_nodes`; `BENCH_NODES` (default 200; 5 in the smoke run
//! under `cargo test`), `BENCH_ROUNDS` (default 200; 5) and `BENCH_CYCLES` (default 20; 2)
//! change the run. Figures are also appended to `target/bench-results/api_nodes.jsonl`.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use streamspace_controller::FIELD_MANAGER;
use streamspace_controller::crd::FeatureFlag;
use streamspace_controller::devcluster::{
    ADOPTED_NODE_LABEL, ControlPlane, ControlPlaneOptions, NodeSimulator, SimulatorConfig,
};
use support::results::Results;
use support::{
    Connection, create_namespace, free_port, http_request, percentile, size, spawn_api,
    spawn_controller, wait_http_ok,
};

const NAMESPACE: &str = "bench-nodes";
const TOKEN: &str = "bench-admin-token";
/// Longest wait for one step before the run fails.
const STEP_LIMIT: Duration = Duration::from_secs(120);

/// Polls `check` every 5 ms until it holds; the time it took.
async fn time_until<F, Fut>(what: &str, mut check: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let started = Instant::now();
    while !check().await? {
        anyhow::ensure!(
            started.elapsed() < STEP_LIMIT,
            "{what} did not happen within {STEP_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(started.elapsed())
}

/// Writes the `nodes` flag and waits until the API decides with it.
async fn set_mode(client: &kube::Client, api_port: u16, mode: &str) -> anyhow::Result<()> {
    let flag: FeatureFlag = serde_json::from_value(json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "FeatureFlag",
        "metadata": {"name": "nodes"},
        "spec": {"mode": mode},
    }))?;
    Api::<FeatureFlag>::all(client.clone())
        .patch(
            "nodes",
            &PatchParams::apply("api-nodes-bench").force(),
            &Patch::Apply(&flag),
        )
        .await?;
    time_until("the API to see the nodes flag", || async {
        let (code, body) =
            http_request(api_port, "GET", "/api/v1/flags/nodes", Some(TOKEN), None).await?;
        let seen: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        Ok(code == 200 && seen["mode"] == mode)
    })
    .await?;
    Ok(())
}

async fn unschedulable(nodes: &Api<Node>, name: &str) -> anyhow::Result<bool> {
    let node = nodes.get(name).await?;
    Ok(node.spec.and_then(|s| s.unschedulable).unwrap_or(false))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let extra_nodes = size("BENCH_NODES", 200, 5);
    let rounds = size("BENCH_ROUNDS", 200, 5);
    let cycles = size("BENCH_CYCLES", 20, 2);
    let results = Results::new("api_nodes")?;
    let plane = ControlPlane::start(ControlPlaneOptions::default()).await?;
    let client = plane.client().await?;
    streamspace_controller::crd::install::install(&client, FIELD_MANAGER).await?;
    let simulator = NodeSimulator::spawn(client.clone(), SimulatorConfig::default());
    create_namespace(&client, NAMESPACE).await?;
    let kubeconfig = plane.kubeconfig_path().to_path_buf();
    let controller_port = free_port()?;
    let _controller = spawn_controller(&kubeconfig, NAMESPACE, controller_port, &[])?;
    let api_port = free_port()?;
    let _api = spawn_api(&kubeconfig, NAMESPACE, api_port, TOKEN)?;
    wait_http_ok(controller_port, "/readyz").await?;
    wait_http_ok(api_port, "/readyz").await?;

    // Inert nodes (not adopted by the simulator): only listed.
    let nodes: Api<Node> = Api::all(client.clone());
    for i in 0..extra_nodes {
        let node: Node =
            serde_json::from_value(json!({"metadata": {"name": format!("inert-{i}")}}))?;
        nodes.create(&PostParams::default(), &node).await?;
    }
    time_until("every node in the API's cache", || async {
        let (_, body) =
            http_request(api_port, "GET", "/api/v1/admin/nodes", Some(TOKEN), None).await?;
        let listed: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        Ok(listed.as_array().is_some_and(|a| a.len() >= extra_nodes))
    })
    .await?;
    println!("admin node endpoints, {extra_nodes} nodes:");
    let mut connection = Connection::open(api_port).await?;
    for (label, path) in [("list", ""), ("stats", "/stats")] {
        let mut samples = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let (status, body, took) = connection
                .send(
                    hyper::Method::GET,
                    &format!("/api/v1/admin/nodes{path}"),
                    TOKEN,
                )
                .await?;
            anyhow::ensure!(status == 200, "GET /admin/nodes{path}: {status} {body:?}");
            samples.push(took);
        }
        for p in [50.0, 99.0] {
            let ms = percentile(&samples, p).as_secs_f64() * 1000.0;
            results.record(
                &format!("GET /admin/nodes{path} ({label}) p{p}"),
                ms,
                "ms",
                None,
            )?;
        }
    }

    let name = "cordoned";
    let node: Node = serde_json::from_value(json!({"metadata": {"name": name, "labels": {
        ADOPTED_NODE_LABEL: "true", "kubernetes.io/hostname": name
    }}}))?;
    nodes.create(&PostParams::default(), &node).await?;
    for mode in ["legacy", "controller"] {
        set_mode(&client, api_port, mode).await?;
        let (mut cordon, mut uncordon) = (Vec::new(), Vec::new());
        for _ in 0..cycles {
            for (action, wanted, samples) in [
                ("cordon", true, &mut cordon),
                ("uncordon", false, &mut uncordon),
            ] {
                let path = format!("/api/v1/admin/nodes/{name}/{action}");
                let started = Instant::now();
                let (code, body) = http_request(api_port, "POST", &path, Some(TOKEN), None).await?;
                anyhow::ensure!(code == 200 || code == 202, "{action}: {code} {body}");
                time_until(&format!("{action} to take effect"), || async {
                    Ok(unschedulable(&nodes, name).await? == wanted)
                })
                .await?;
                samples.push(started.elapsed());
            }
        }
        for (what, samples) in [
            ("cordon to unschedulable", &cordon),
            ("uncordon to schedulable", &uncordon),
        ] {
            for p in [50.0, 99.0] {
                let ms = percentile(samples, p).as_secs_f64() * 1000.0;
                results.record(&format!("{mode}: {what} p{p}"), ms, "ms", None)?;
            }
        }
    }
    drop(connection);
    simulator.stop().await;
    plane.stop().await;
    Ok(())
}
