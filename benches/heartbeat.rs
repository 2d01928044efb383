//! Heartbeat endpoint under load, from a second process on loopback.
//!
//! Starts the local control plane, creates N Sessions (default 1,000, `BENCH_SESSIONS`), runs
//! the real `streamspace-controller api` binary as a separate process, and drives
//! `POST /api/v1/sessions/{id}/heartbeat` round-robin over every session from C keep-alive
//! connections (default 64, `BENCH_CONNECTIONS`) for D seconds (default 30, `BENCH_SECONDS`).
//! Prints requests per second, p50/p99/max latency, status writes per session per minute, and
//! the API process's CPU time and peak RSS.
//!
//! Run with `cargo bench --bench heartbeat`.

mod support;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use streamspace_controller::controller::FIELD_MANAGER;
use streamspace_controller::crd::Session;
use streamspace_controller::devcluster::{ControlPlane, ControlPlaneOptions};
use support::{cpu_seconds, http_get, peak_rss_kib};

const TOKEN: &str = "bench-token";
const NAMESPACE: &str = "bench-heartbeat";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sessions = env_or("BENCH_SESSIONS", 1000);
    let connections = env_or("BENCH_CONNECTIONS", 64);
    let seconds = env_or("BENCH_SECONDS", 30) as u64;
    let plane = ControlPlane::start(ControlPlaneOptions::default()).await?;
    let client = plane.client().await?;
    streamspace_controller::crd::install::install(&client, FIELD_MANAGER).await?;
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": NAMESPACE}}))?,
        )
        .await?;
    let api: Api<Session> = Api::namespaced(client.clone(), NAMESPACE);
    let names: Vec<String> = (0..sessions).map(|i| format!("s-{i}")).collect();
    stream::iter(names.clone())
        .map(|name| {
            let api = api.clone();
            async move {
                let session: Session = serde_json::from_value(serde_json::json!({
                    "apiVersion": "stream.space/v1alpha1", "kind": "Session",
                    "metadata": {"name": name},
                    "spec": {"user": "bench", "template": "desktop", "state": "running"}
                }))?;
                api.create(&PostParams::default(), &session).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .for_each(|r| {
            if let Err(e) = r {
                eprintln!("create failed: {e}");
            }
            futures::future::ready(())
        })
        .await;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_streamspace-controller"))
        .args(["api", "--namespace", NAMESPACE, "--api-token", TOKEN])
        .args(["--http-addr", &format!("127.0.0.1:{port}")])
        .arg("--kubeconfig")
        .arg(plane.kubeconfig_path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = server.id().unwrap_or_default();
    // Wait until it answers (and its session cache has had time to load).
    for _ in 0..300 {
        if http_get(port, "/healthz").await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_before = cpu_seconds(pid)?;

    let names = Arc::new(names);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let workers = (0..connections).map(|_| {
        let names = names.clone();
        let next = next.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let Ok(stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                return (latencies, 1);
            };
            let _ = stream.set_nodelay(true);
            let Ok((mut sender, connection)) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
            else {
                return (latencies, 1);
            };
            tokio::spawn(connection);
            while Instant::now() < until {
                let i = next.fetch_add(1, Ordering::Relaxed) % names.len();
                let request =
                    hyper::Request::post(format!("/api/v1/sessions/{}/heartbeat", names[i]))
                        .header("host", "localhost")
                        .header("authorization", format!("Bearer {TOKEN}"))
                        .body(Full::new(Bytes::new()));
                let Ok(request) = request else {
                    errors += 1;
                    continue;
                };
                let sent = Instant::now();
                match sender.send_request(request).await {
                    Ok(response) => {
                        let ok = response.status().is_success();
                        let _ = response.into_body().collect().await;
                        latencies.push(sent.elapsed());
                        if !ok {
                            errors += 1;
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            (latencies, errors)
        })
    });
    let mut latencies = Vec::new();
    let mut errors = 0;
    for worker in futures::future::join_all(workers).await {
        let (l, e) = worker?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    // Let the trailing flushes of the last interval land before counting writes.
    tokio::time::sleep(Duration::from_secs(16)).await;
    let cpu = cpu_seconds(pid)? - cpu_before;
    let metrics = http_get(port, "/metrics").await?;
    let written: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("streamspace_api_activity_writes_total") && l.contains("written"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let minutes = (elapsed.as_secs_f64() + 16.0) / 60.0;
    println!(
        "heartbeat: {} sessions, {connections} connections, {:.1} s",
        sessions,
        elapsed.as_secs_f64()
    );
    println!(
        "  {} requests ({errors} errors), {:.0} req/s",
        latencies.len(),
        latencies.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  latency p50 {:?}, p99 {:?}, max {:?}",
        pct(0.50),
        pct(0.99),
        latencies.last().copied().unwrap_or_default()
    );
    println!(
        "  lastActivity writes: {written} ({:.2} per session per minute; flush interval 15 s)",
        written / sessions as f64 / minutes
    );
    println!(
        "  api process: {:.1} s CPU ({:.0}% of one core), peak RSS {} MiB",
        cpu,
        100.0 * cpu / elapsed.as_secs_f64(),
        peak_rss_kib(pid)? / 1024
    );
    let _ = server.kill().await;
    Ok(())
}
