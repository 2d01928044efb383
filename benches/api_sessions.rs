//! `GET /api/v1/sessions` with many sessions, served from the API's watch cache.
//!
//! Starts the local control plane, creates N Sessions in one namespace (default 10,000,
//! `BENCH_SESSIONS`) for 100 users, runs the real `streamspace-controller api` binary as a
//! separate process, waits until its cache lists every session, then sends R sequential
//! requests (default 300, `BENCH_REQUESTS`) on one keep-alive connection, and a filtered
//! `?user=` variant. Prints p50/p99 latency beside the API server's one-write latency, the
//! response size and the API process's CPU time and peak RSS. Any failed request fails the run.
//!
//! Run with `cargo bench --bench api_sessions`.

mod support;

use std::time::{Duration, Instant};

use streamspace_controller::controller::FIELD_MANAGER;
use streamspace_controller::devcluster::{ControlPlane, ControlPlaneOptions};
use support::floor::{self, ms};
use support::results::Results;
use support::{Connection, cpu_seconds, free_port, percentile, size, spawn_api, wait_http_ok};

const TOKEN: &str = "bench-token";
const NAMESPACE: &str = "bench-api-sessions";
const USERS: usize = 100;

/// Latencies of `count` GETs of `path` on one connection, and the last response's size and
/// `total`.
struct Measured {
    latencies: Vec<Duration>,
    bytes: usize,
    total: u64,
}

async fn measure(port: u16, path: &str, count: usize) -> anyhow::Result<Measured> {
    let mut connection = Connection::open(port).await?;
    let mut measured = Measured {
        latencies: Vec::with_capacity(count),
        bytes: 0,
        total: 0,
    };
    for _ in 0..count {
        let (status, body, latency) = connection.send(hyper::Method::GET, path, TOKEN).await?;
        anyhow::ensure!(status.is_success(), "GET {path}: status {status}");
        measured.latencies.push(latency);
        measured.bytes = body.len();
        let value: serde_json::Value = serde_json::from_slice(&body)?;
        measured.total = value["total"].as_u64().unwrap_or(0);
    }
    Ok(measured)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sessions = size("BENCH_SESSIONS", 10_000, 200);
    let requests = size("BENCH_REQUESTS", 300, 5);
    let results = Results::new("api_sessions")?;
    let plane = ControlPlane::start(ControlPlaneOptions::default()).await?;
    let client = plane.client().await?;
    streamspace_controller::crd::install::install(&client, FIELD_MANAGER).await?;
    let floor = floor::measure(&client, 1).await?;
    let created = Instant::now();
    create_sessions(&client, sessions).await?;
    println!(
        "created {sessions} sessions in {:.1} s",
        created.elapsed().as_secs_f64()
    );

    let port = free_port()?;
    let mut server = spawn_api(plane.kubeconfig_path(), NAMESPACE, port, TOKEN)?;
    let pid = server.id().unwrap_or_default();
    wait_http_ok(port, "/healthz").await?;
    wait_until_cached(port, sessions).await?;

    let cpu_before = cpu_seconds(pid)?;
    let all = measure(port, "/api/v1/sessions", requests).await?;
    let cpu = cpu_seconds(pid)? - cpu_before;
    anyhow::ensure!(
        all.total == sessions as u64,
        "listed {} of {sessions} sessions",
        all.total
    );
    let one_user = measure(port, "/api/v1/sessions?user=user-7", requests).await?;
    anyhow::ensure!(
        one_user.total == (sessions / USERS) as u64,
        "listed {} sessions of user-7, expected {}",
        one_user.total,
        sessions / USERS
    );

    println!(
        "GET /api/v1/sessions: {sessions} sessions, {requests} requests, {} KiB per response; ?user=: {} sessions, {} KiB",
        all.bytes / 1024,
        one_user.total,
        one_user.bytes / 1024
    );
    // Each percentile beside the same percentile of one write.
    for (name, measured) in [("all", &all), ("?user=", &one_user)] {
        for (p, write) in [(50.0, floor.write_p50), (99.0, floor.write_p99)] {
            results.record(
                &format!("{name} latency p{p}"),
                ms(percentile(&measured.latencies, p)),
                "ms",
                Some(ms(write)),
            )?;
        }
    }
    results.record(
        "all: api CPU per request",
        1000.0 * cpu / requests as f64,
        "ms",
        None,
    )?;
    results.record_peak_rss("api process", pid)?;
    let _ = server.kill().await;
    plane.stop().await;
    Ok(())
}

async fn create_sessions(client: &kube::Client, sessions: usize) -> anyhow::Result<()> {
    support::create_namespace(client, NAMESPACE).await?;
    support::create_sessions(client, NAMESPACE, sessions, |i| {
        let user = format!("user-{}", i % USERS);
        serde_json::json!({
            "apiVersion": "stream.space/v1alpha1", "kind": "Session",
            "metadata": {"name": format!("s-{i:05}"), "labels": {"user": user}},
            "spec": {"user": user, "template": "desktop", "state": "running",
                     "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
        })
    })
    .await
}

/// Waits until the API's watch cache lists every session of one user (before that it lists
/// from the API server).
async fn wait_until_cached(port: u16, sessions: usize) -> anyhow::Result<()> {
    let expected = (sessions / USERS) as u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = String::new();
    while Instant::now() < deadline {
        match measure(port, "/api/v1/sessions?user=user-0", 1).await {
            Ok(m) if m.total == expected => return Ok(()),
            Ok(m) => last = format!("{} of {expected} sessions listed", m.total),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the API never listed every session of user-0: {last}")
}
