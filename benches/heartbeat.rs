//! Heartbeat endpoint under load, from a second process on loopback.
//!
//! Starts the local control plane, creates N Sessions (default 10,000, `BENCH_SESSIONS`), runs
//! the real `streamspace-controller api` binary as a separate process, and drives
//! `POST /api/v1/sessions/{id}/heartbeat` round-robin over every session from C keep-alive
//! connections (default 64, `BENCH_CONNECTIONS`) at R requests per second in all (default
//! 2,000, `BENCH_RATE`; 0 = as fast as possible) for D seconds (default 30, `BENCH_SECONDS`).
//! Prints requests per second, p50/p99/max latency beside the API server's one-write latency,
//! status writes per session per flush interval, and the API process's CPU time and peak RSS.
//! Then it opens one connection on each of M sessions (default 100,
//! `BENCH_CONNECTION_SESSIONS`) and heartbeats them with their `connectionId` at the same rate
//! for the same time: the connection Lease writes per heartbeat and per session per flush
//! interval, counted by the API server. Any failed request fails the run.
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
        tokio::spawn(async move { drive(port, &names, &next, until, period, false).await })
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
    // Each percentile beside the same percentile of one write.
    results.record(
        "latency p50",
        ms(percentile(&latencies, 50.0)),
        "ms",
        Some(ms(floor.write_p50)),
    )?;
    results.record(
        "latency p99",
        ms(percentile(&latencies, 99.0)),
        "ms",
        Some(ms(floor.write_p99)),
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
    connection_heartbeats(&client, port, &results).await?;
    let _ = server.kill().await;
    plane.stop().await;
    Ok(())
}

/// Heartbeats with a `connectionId`: each may renew the connection's Lease (batched: at most
/// once per a quarter of the connection expiry, 15 s by default). Opens one connection
/// on each of M sessions (default 100, `BENCH_CONNECTION_SESSIONS`), heartbeats them
/// round-robin at the same rate for the same time, and counts the Lease writes the API server
/// served (`apiserver_request_total` of `leases`), per heartbeat and per session per flush
/// interval.
async fn connection_heartbeats(
    client: &kube::Client,
    port: u16,
    results: &Results,
) -> anyhow::Result<()> {
    let sessions = size("BENCH_CONNECTION_SESSIONS", 100, 2);
    let rate = size("BENCH_RATE", 2_000, 50);
    let seconds = size("BENCH_SECONDS", 30, 2) as u64;
    let mut connection = Connection::open(port).await?;
    for i in 0..sessions {
        let path = format!(
            "/api/v1/sessions/{}/connect?connectionId={}",
            session_name(i),
            connection_id(i)
        );
        let (status, body, _) = connection.send(hyper::Method::GET, &path, TOKEN).await?;
        anyhow::ensure!(
            status.is_success(),
            "connect {path}: {status} {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        );
    }
    let names: Arc<Vec<String>> = Arc::new((0..sessions).map(session_name).collect());
    let next = Arc::new(AtomicUsize::new(0));
    // Other Lease writers (the controller manager's and the idle monitor's elections) go on
    // meanwhile: their rate, measured over a quiet window first, is taken out.
    let quiet = Duration::from_secs(if support::smoke() { 1 } else { 5 });
    let quiet_before = lease_writes(client).await?;
    tokio::time::sleep(quiet).await;
    let other_rate = (lease_writes(client).await? - quiet_before) / quiet.as_secs_f64();
    let leases_before = lease_writes(client).await?;
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let period = (rate > 0).then(|| Duration::from_secs_f64(1.0 / rate as f64));
    let worker = drive(port, &names, &next, until, period, true).await;
    let elapsed = started.elapsed();
    if let Some(first) = worker.failures.first() {
        anyhow::bail!(
            "{} of {} connection heartbeats failed; first: {first}",
            worker.failures.len(),
            worker.latencies.len() + worker.failures.len()
        );
    }
    let heartbeats = worker.latencies.len() as f64;
    anyhow::ensure!(heartbeats > 0.0, "no connection heartbeat was sent");
    let writes = (lease_writes(client).await?
        - leases_before
        - other_rate * started.elapsed().as_secs_f64())
    .max(0.0);
    let intervals = elapsed.as_secs_f64() / FLUSH_INTERVAL.as_secs_f64() + 1.0;
    println!(
        "connection heartbeats: {sessions} sessions with one connection each, {heartbeats:.0} heartbeats in {:.1} s",
        elapsed.as_secs_f64()
    );
    results.record(
        "connection heartbeat latency p99",
        ms(percentile(&worker.latencies, 99.0)),
        "ms",
        None,
    )?;
    results.record(
        "connection Lease writes per connection heartbeat",
        writes / heartbeats,
        "writes",
        None,
    )?;
    results.record(
        "connection Lease writes per session per flush interval",
        writes / sessions as f64 / intervals,
        "writes",
        None,
    )?;
    Ok(())
}

/// Writes of Leases the API server has served, every writer and namespace.
async fn lease_writes(client: &kube::Client) -> anyhow::Result<f64> {
    let request = hyper::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(request).await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{") && l.contains("resource=\"leases\""))
        .filter(|l| {
            ["PATCH", "PUT", "POST"]
                .iter()
                .any(|v| l.contains(&format!("verb=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

fn connection_id(i: usize) -> String {
    format!("bench-{i}")
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
    with_connection: bool,
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
        let path = if with_connection {
            format!(
                "/api/v1/sessions/{}/heartbeat?connectionId={}",
                names[i],
                connection_id(i)
            )
        } else {
            format!("/api/v1/sessions/{}/heartbeat", names[i])
        };
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
