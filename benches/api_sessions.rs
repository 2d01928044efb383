//! `GET /api/v1/sessions` with many sessions, served from the API's watch cache.
//!
//! Starts the local control plane, creates N Sessions in one namespace (default 5,000,
//! `BENCH_SESSIONS`), runs the real `streamspace-controller api` binary as a separate process,
//! waits until its cache lists every session, then sends R sequential requests (default 300,
//! `BENCH_REQUESTS`) on one keep-alive connection, and a filtered `?user=` variant. Prints
//! p50/p99/max latency, the response size and the API process's CPU time and peak RSS.
//!
//! Run with `cargo bench --bench api_sessions`.

mod support;

use std::process::Stdio;
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
const NAMESPACE: &str = "bench-api-sessions";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Sends `count` GETs of `path` on one connection; latencies and the last body's length.
async fn measure(
    port: u16,
    path: &str,
    count: usize,
) -> anyhow::Result<(Vec<Duration>, usize, u64)> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut latencies = Vec::with_capacity(count);
    let mut size = 0;
    let mut total = 0;
    for _ in 0..count {
        let request = hyper::Request::get(path)
            .header("host", "localhost")
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Full::new(Bytes::new()))?;
        sender.ready().await?;
        let sent = Instant::now();
        let response = sender.send_request(request).await?;
        anyhow::ensure!(
            response.status().is_success(),
            "status {}",
            response.status()
        );
        let body = response.into_body().collect().await?.to_bytes();
        latencies.push(sent.elapsed());
        size = body.len();
        let value: serde_json::Value = serde_json::from_slice(&body)?;
        total = value["total"].as_u64().unwrap_or(0);
    }
    latencies.sort();
    Ok((latencies, size, total))
}

fn pct(latencies: &[Duration], p: f64) -> Duration {
    latencies
        .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sessions = env_or("BENCH_SESSIONS", 5000);
    let requests = env_or("BENCH_REQUESTS", 300);
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
    let created = Instant::now();
    stream::iter(0..sessions)
        .map(|i| {
            let api = api.clone();
            async move {
                let session: Session = serde_json::from_value(serde_json::json!({
                    "apiVersion": "stream.space/v1alpha1", "kind": "Session",
                    "metadata": {"name": format!("s-{i:05}"), "labels": {"user": format!("user-{}", i % 100)}},
                    "spec": {"user": format!("user-{}", i % 100), "template": "desktop",
                             "state": "running", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
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
    println!(
        "created {sessions} sessions in {:.1} s",
        created.elapsed().as_secs_f64()
    );

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
    for _ in 0..300 {
        if http_get(port, "/healthz").await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Until the watch cache has every session (before that the API lists from the API server).
    let mut cached = false;
    for _ in 0..600 {
        let response = http_get_authorised(port, "/api/v1/sessions?user=user-0").await;
        if response.is_ok_and(|body| body.contains(&format!("\"total\":{}", sessions / 100))) {
            cached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::ensure!(cached, "the API never listed every session");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let cpu_before = cpu_seconds(pid)?;
    let started = Instant::now();
    let (all, size, total) = measure(port, "/api/v1/sessions", requests).await?;
    let elapsed = started.elapsed();
    let cpu = cpu_seconds(pid)? - cpu_before;
    let (one_user, user_size, user_total) =
        measure(port, "/api/v1/sessions?user=user-7", requests).await?;
    println!(
        "GET /api/v1/sessions: {total} sessions, {requests} requests, {} KiB per response",
        size / 1024
    );
    println!(
        "  latency p50 {:?}, p99 {:?}, max {:?}",
        pct(&all, 0.50),
        pct(&all, 0.99),
        all.last().copied().unwrap_or_default()
    );
    println!(
        "  api process: {:.2} s CPU for {requests} requests ({:.1} ms CPU each), peak RSS {} MiB",
        cpu,
        1000.0 * cpu / requests as f64,
        peak_rss_kib(pid)? / 1024
    );
    println!("  ({:.1} s wall for the run)", elapsed.as_secs_f64());
    println!(
        "GET /api/v1/sessions?user=user-7: {user_total} sessions, {} KiB, p50 {:?}, p99 {:?}",
        user_size / 1024,
        pct(&one_user, 0.50),
        pct(&one_user, 0.99)
    );
    let _ = server.kill().await;
    Ok(())
}

/// A GET with the bench token, returning the body.
async fn http_get_authorised(port: u16, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(
            format!(
                "GET {path} HTTP/1.0\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}
