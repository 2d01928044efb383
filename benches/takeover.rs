//! Leader takeover after SIGKILL, with two real `streamspace-controller controller --leader-elect`
//! processes on the local control plane.
//!
//! Each round: find the leader (its `streamspace_leader` gauge), SIGKILL it, create a probe
//! Session at once, and measure (1) the time until the other replica reports itself leader and
//! (2) the time until the probe Session is Running (the new leader acting). A fresh replica then
//! replaces the killed one before the next round. Prints p50/p99 of both beside the configured
//! lease duration and renew deadline; exits non-zero if any round fails.
//!
//! Run with `cargo bench --bench takeover`; `BENCH_KILLS` (default 10; 2 in the smoke run under
//! `cargo test`), `BENCH_LEASE_DURATION` (default 4s) and `BENCH_RENEW_DEADLINE` (default 3s)
//! change the run. Figures are also appended to `target/bench-results/takeover.jsonl`.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use streamspace_controller::FIELD_MANAGER;
use streamspace_controller::crd::{Session, SessionPhase, Template};
use streamspace_controller::devcluster::{
    ControlPlane, ControlPlaneOptions, NodeSimulator, SimulatorConfig,
};
use support::results::Results;
use support::{free_port, http_get, percentile, size, wait_http_ok};

const NAMESPACE: &str = "bench-ha";
/// Longest wait for one takeover or one probe before the round (and the run) fails.
const ROUND_LIMIT: Duration = Duration::from_secs(120);

struct Replica {
    child: tokio::process::Child,
    port: u16,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.into())
}

fn start(kubeconfig: &std::path::Path, name: &str) -> anyhow::Result<Replica> {
    let port = free_port()?;
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_streamspace-controller"))
        .args([
            "controller",
            "--watch-namespace",
            NAMESPACE,
            "--leader-elect",
        ])
        .args(["--lease-namespace", NAMESPACE, "--no-node-operations"])
        .args(["--lease-duration", &env_or("BENCH_LEASE_DURATION", "4s")])
        .args([
            "--lease-renew-deadline",
            &env_or("BENCH_RENEW_DEADLINE", "3s"),
        ])
        .args(["--http-addr", &format!("127.0.0.1:{port}")])
        .args(["--hooks-addr", &format!("127.0.0.1:{}", free_port()?)])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env("POD_NAME", name)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    Ok(Replica { child, port })
}

async fn is_leader(port: u16) -> bool {
    http_get(port, "/metrics")
        .await
        .is_ok_and(|m| m.lines().any(|l| l == "streamspace_leader 1"))
}

/// Index of the replica whose leader gauge is 1.
async fn find_leader(ports: &[u16]) -> Option<usize> {
    for (i, port) in ports.iter().enumerate() {
        if is_leader(*port).await {
            return Some(i);
        }
    }
    None
}

/// Polls `check` every 10 ms until it holds; the time it took.
async fn time_until<F, Fut>(what: &str, mut check: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        anyhow::ensure!(
            started.elapsed() < ROUND_LIMIT,
            "{what} did not happen within {ROUND_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(started.elapsed())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kills = size("BENCH_KILLS", 10, 2);
    let results = Results::new("takeover")?;
    let plane = ControlPlane::start(ControlPlaneOptions::default()).await?;
    let client = plane.client().await?;
    streamspace_controller::crd::install::install(&client, FIELD_MANAGER).await?;
    let simulator = NodeSimulator::spawn(client.clone(), SimulatorConfig::default());
    let namespace: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": NAMESPACE}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    let template: Template = serde_json::from_value(serde_json::json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "Template",
        "metadata": {"name": "desktop"},
        "spec": {"displayName": "Desktop", "baseImage": "desktop:latest"}
    }))?;
    Api::<Template>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &template)
        .await?;
    let sessions: Api<Session> = Api::namespaced(client.clone(), NAMESPACE);

    let kubeconfig = plane.kubeconfig_path().to_path_buf();
    let mut replicas = vec![
        start(&kubeconfig, "replica-0")?,
        start(&kubeconfig, "replica-1")?,
    ];
    let (mut takeovers, mut effects) = (Vec::new(), Vec::new());
    for round in 0..kills {
        for replica in &replicas {
            wait_http_ok(replica.port, "/readyz").await?;
        }
        let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
        let started = Instant::now();
        let index = loop {
            if let Some(index) = find_leader(&ports).await {
                break index;
            }
            anyhow::ensure!(started.elapsed() < ROUND_LIMIT, "no replica became leader");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let mut killed = replicas.remove(index);
        let survivor = replicas[0].port;
        killed.child.start_kill()?;
        let kill_time = Instant::now();
        let probe: Session = serde_json::from_value(serde_json::json!({
            "apiVersion": "stream.space/v1alpha1", "kind": "Session",
            "metadata": {"name": format!("probe-{round}")},
            "spec": {"user": format!("probe-{round}"), "template": "desktop", "state": "running"}
        }))?;
        sessions.create(&PostParams::default(), &probe).await?;
        time_until("the takeover", || is_leader(survivor)).await?;
        takeovers.push(kill_time.elapsed());
        let name = format!("probe-{round}");
        time_until("the probe Session Running", || {
            let sessions = sessions.clone();
            let name = name.clone();
            async move {
                sessions
                    .get_opt(&name)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|s| s.status.and_then(|s| s.phase) == Some(SessionPhase::Running))
            }
        })
        .await?;
        effects.push(kill_time.elapsed());
        let _ = killed.child.wait().await;
        println!(
            "round {round}: takeover {:.2}s, probe Running {:.2}s",
            takeovers[round].as_secs_f64(),
            effects[round].as_secs_f64()
        );
        replicas.push(start(&kubeconfig, &format!("replica-{}", round + 2))?);
    }
    let lease = env_or("BENCH_LEASE_DURATION", "4s");
    let deadline = env_or("BENCH_RENEW_DEADLINE", "3s");
    println!("{kills} kills, lease duration {lease}, renew deadline {deadline}:");
    let lease_seconds = streamspace_controller::idle::deadline::parse_duration(&lease)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    results.record("lease duration", lease_seconds, "s", None)?;
    for (what, samples) in [
        ("takeover", &takeovers),
        ("kill to probe Running", &effects),
    ] {
        for p in [50.0, 99.0] {
            let value = percentile(samples, p).as_secs_f64();
            results.record(&format!("{what} p{p}"), value, "s", None)?;
        }
    }
    drop(replicas);
    simulator.stop().await;
    plane.stop().await;
    Ok(())
}
