//! Heartbeat endpoint under load, from a second process on loopback.
//!
//! Starts the local control plane, creates N Sessions (default 10,000, `BENCH_SESSIONS`), runs
//! the real `streamspace-controller api` binary as a separate process, and drives
//! `POST /api/v1/sessions/{id}/heartbeat` round-robin over every session from C keep-alive
//! connections (default 64, `BENCH_CONNECTIONS`) at R requests per second in all (default
//! 2,000, `BENCH_RATE`; 0 = as fast as possible) for D seconds (default 30, `BENCH_SECONDS`).
//! Prints requests per second, p50/p99/max latency beside the API server's one-write latency,
//! status writes per session per flush interval, and the API process's CPU time and peak RSS.
//! Any failed request fails the run.
//!
//! Run with `cargo bench --bench heartbeat`.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use streamspace_controller::controller::FIELD_MANAGER;
use streamspace_controller::devcluster::{ControlPlane, ControlPlaneOptions};
use support::floor::{self, ms};
use support::results::Results;
use support::{
    Connection, cpu_seconds, free_port, http_get, percentile, size, spawn_api, wait_http_ok,
};

const TOKEN: &str = "bench-token";
const NAMESPACE: &str = "bench-heartbeat";
/// The API's default `--flush-interval`.
const FLUSH_INTERVAL: Duration = Duration::from_secs(15);

/// Latencies and failures of one connection's requests.
struct Worker {
    latencies: Vec<Duration>,
    failures: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sessions = size("BENCH_SESSIONS", 10_000, 20);
    let connections = size("BENCH_CONNECTIONS", 64, 2);
    let rate = size("BENCH_RATE", 2_000, 50);
    let seconds = size("BENCH_SECONDS", 30, 2) as u64;
    let results = Results::new("heartbeat")?;
    let plane = ControlPlane::start(ControlPlaneOptions::default()).await?;
    let client = plane.client().await?;
    streamspace_controller::crd::install::install(&client, FIELD_MANAGER).await?;
    let floor = floor::measure(&client, connections).await?;
    create_sessions(&client, sessions).await?;

    let port = free_port()?;
    let mut server = spawn_api(plane.kubeconfig_path(), NAMESPACE, port, TOKEN)?;
    let pid = server.id().unwrap_or_default();
    wait_http_ok(port, "/healthz").await?;
    // Let its session cache load before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_before = cpu_seconds(pid)?;

    let names: Arc<Vec<String>> = Arc::new((0..sessions).map(session_name).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    // Each connection sends its share of the rate on a fixed schedule (open loop).
    let period = (rate > 0).then(|| Duration::from_secs_f64(connections as f64 / rate as f64));
    let workers = (0..connections).map(|_| {
        let names = names.clone();
        let next = next.clone();
        tokio::spawn(async move { drive(port, &names, &next, until, period).await })
    });
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    for worker in futures::future::join_all(workers).await {
        let worker = worker?;
        latencies.extend(worker.latencies);
        failures.extend(worker.failures);
    }
    let elapsed = started.elapsed();
    if let Some(first) = failures.first() {
        anyhow::bail!(
            "{} of {} heartbeats failed; first: {first}",
            failures.len(),
            latencies.len() + failures.len()
        );
    }
    anyhow::ensure!(!latencies.is_empty(), "no heartbeat was sent");
    // Let the trailing flushes of the last interval land before counting writes.
    tokio::time::sleep(FLUSH_INTERVAL + Duration::from_secs(1)).await;
    let cpu = cpu_seconds(pid)? - cpu_before;
    let metrics = http_get(port, "/metrics").await?;
    let written: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("streamspace_api_activity_writes_total") && l.contains("written"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    // Flushes run on a fixed tick, so a run spans one interval more than its length holds.
    let intervals = elapsed.as_secs_f64() / FLUSH_INTERVAL.as_secs_f64() + 1.0;

    println!(
        "heartbeat: {sessions} sessions, {connections} connections, target {rate} req/s, {:.1} s",
        elapsed.as_secs_f64()
    );
    results.record(
        "requests per second",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        "req/s",
        None,
    )?;
    let write_p50 = Some(ms(floor.write_p50));
    results.record(
        "latency p50",
        ms(percentile(&latencies, 50.0)),
        "ms",
        write_p50,
    )?;
    results.record(
        "latency p99",
        ms(percentile(&latencies, 99.0)),
        "ms",
        write_p50,
    )?;
    results.record("latency max", ms(percentile(&latencies, 100.0)), "ms", None)?;
    results.record(
        "lastActivity writes per session per flush interval",
        written / sessions as f64 / intervals,
        "writes",
        None,
    )?;
    results.record(
        "api process CPU",
        100.0 * cpu / elapsed.as_secs_f64(),
        "% core",
        None,
    )?;
    results.record_peak_rss("api process", pid)?;
    let _ = server.kill().await;
    plane.stop().await;
    Ok(())
}

fn session_name(i: usize) -> String {
    format!("s-{i}")
}

async fn create_sessions(client: &kube::Client, sessions: usize) -> anyhow::Result<()> {
    support::create_namespace(client, NAMESPACE).await?;
    support::create_sessions(client, NAMESPACE, sessions, |i| {
        serde_json::json!({
            "apiVersion": "stream.space/v1alpha1", "kind": "Session",
            "metadata": {"name": session_name(i)},
            "spec": {"user": "bench", "template": "desktop", "state": "running"}
        })
    })
    .await
}

/// One connection's loop: heartbeats round-robin over every session until `until`, one every
/// `period` when paced.
async fn drive(
    port: u16,
    names: &[String],
    next: &AtomicUsize,
    until: Instant,
    period: Option<Duration>,
) -> Worker {
    let mut worker = Worker {
        latencies: Vec::new(),
        failures: Vec::new(),
    };
    let mut connection = match Connection::open(port).await {
        Ok(connection) => connection,
        Err(e) => {
            worker.failures.push(format!("connect: {e}"));
            return worker;
        }
    };
    let mut ticks = period.map(|p| {
        let mut interval = tokio::time::interval(p);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    while Instant::now() < until {
        if let Some(ticks) = ticks.as_mut() {
            ticks.tick().await;
        }
        let i = next.fetch_add(1, Ordering::Relaxed) % names.len();
        let path = format!("/api/v1/sessions/{}/heartbeat", names[i]);
        match connection.send(hyper::Method::POST, &path, TOKEN).await {
            Ok((status, _, latency)) if status.is_success() => worker.latencies.push(latency),
            Ok((status, body, _)) => worker.failures.push(format!(
                "{status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )),
            Err(e) => {
                worker.failures.push(e.to_string());
                break;
            }
        }
    }
    worker
}
