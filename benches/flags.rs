//! Flag flip to effect on every replica.
//!
//! Runs the real binaries as separate processes against the local control plane: one
//! `controller` and two `api` replicas. Each round sets the `sessions` override through API
//! replica A (alternating legacy and controller) and polls all three processes (`GET
//! /api/v1/flags/sessions` on the APIs, `GET /flags` on the controller) until each decides
//! with the new value. Prints p50/p99 of the time until each process, and until all of them,
//! saw the flip, counted from the moment the PUT was sent.
//!
//! Run with `cargo bench --bench flags`; `BENCH_FLIPS` sets the number of flips (default 100).

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use streamspace_controller::controller::FIELD_MANAGER;
use streamspace_controller::devcluster::{ControlPlane, ControlPlaneOptions};
use support::floor::{self, ms};
use support::results::Results;
use support::{free_port, http_request, percentile, size, spawn_api, wait_http_ok};

const TOKEN: &str = "bench-token";
const POLL: Duration = Duration::from_millis(1);
const ROUND_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let flips = size("BENCH_FLIPS", 100, 2);
    let results = Results::new("flags")?;
    let plane = ControlPlane::start(ControlPlaneOptions::default()).await?;
    let client = plane.client().await?;
    streamspace_controller::crd::install::install(&client, FIELD_MANAGER).await?;
    let floor = floor::measure(&client, 1).await?;
    let kubeconfig = plane.kubeconfig_path();
    let binary = env!("CARGO_BIN_EXE_streamspace-controller");

    let controller_port = free_port()?;
    let _controller = tokio::process::Command::new(binary)
        .args(["controller", "--watch-namespace", "bench", "--http-addr"])
        .arg(format!("127.0.0.1:{controller_port}"))
        .arg("--hooks-addr")
        .arg(format!("127.0.0.1:{}", free_port()?))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut api_ports = Vec::new();
    let mut apis = Vec::new();
    for _ in 0..2 {
        let port = free_port()?;
        apis.push(spawn_api(kubeconfig, "bench", port, TOKEN)?);
        api_ports.push(port);
    }
    wait_http_ok(controller_port, "/readyz").await?;
    for port in &api_ports {
        wait_http_ok(*port, "/healthz").await?;
    }

    // Each process: (name, port, path).
    let observers = [
        ("api-a", api_ports[0], "/api/v1/flags/sessions"),
        ("api-b", api_ports[1], "/api/v1/flags/sessions"),
        ("controller", controller_port, "/flags"),
    ];
    let mut per_process: Vec<Vec<Duration>> = vec![Vec::new(); observers.len()];
    let mut all = Vec::new();
    let mut put_latency = Vec::new();
    for round in 0..flips {
        let mode = if round % 2 == 0 {
            "legacy"
        } else {
            "controller"
        };
        let body = serde_json::json!({
            "mode": mode,
            "percent": 100,
            "reason": format!("benchmark flip {round}"),
        })
        .to_string();
        let sent = Instant::now();
        let put = async {
            let started = Instant::now();
            let (code, reply) = http_request(
                api_ports[0],
                "PUT",
                "/api/v1/flags/sessions/override",
                Some(TOKEN),
                Some(&body),
            )
            .await?;
            anyhow::ensure!(code == 200, "override refused: {code} {reply}");
            Ok(started.elapsed())
        };
        let watchers = observers
            .iter()
            .map(|(_, port, path)| wait_for_mode(*port, path, mode, sent));
        let (put, seen) = tokio::join!(put, futures::future::try_join_all(watchers));
        put_latency.push(put?);
        let seen = seen?;
        for (samples, time) in per_process.iter_mut().zip(&seen) {
            samples.push(*time);
        }
        all.push(seen.into_iter().max().unwrap_or_default());
    }

    println!("flag flips: {flips} (override PUT through api-a; 2 API replicas + 1 controller)");
    let write_p50 = Some(ms(floor.write_p50));
    let mut series = vec![("PUT latency".to_string(), &put_latency)];
    for ((name, _, _), samples) in observers.iter().zip(&per_process) {
        series.push((format!("seen by {name}"), samples));
    }
    series.push(("seen by all".to_string(), &all));
    for (name, samples) in series {
        for p in [50.0, 99.0] {
            results.record(
                &format!("{name} p{p}"),
                ms(percentile(samples, p)),
                "ms",
                write_p50,
            )?;
        }
    }
    results.record("seen by all max", ms(percentile(&all, 100.0)), "ms", None)?;
    Ok(())
}

/// Polls until the process decides with `mode` for sessions; the time since `sent`.
async fn wait_for_mode(
    port: u16,
    path: &str,
    mode: &str,
    sent: Instant,
) -> anyhow::Result<Duration> {
    let deadline = sent + ROUND_TIMEOUT;
    let mut last = String::new();
    while Instant::now() < deadline {
        let (code, body) = http_request(port, "GET", path, Some(TOKEN), None).await?;
        if code == 200 && current_mode(&body).as_deref() == Some(mode) {
            return Ok(sent.elapsed());
        }
        last = format!("{code} {body}");
        tokio::time::sleep(POLL).await;
    }
    anyhow::bail!(
        "127.0.0.1:{port}{path} did not show {mode} within {ROUND_TIMEOUT:?}; it last answered {last}"
    )
}

/// The sessions mode in either response shape (one flag, or `{flags: [...]}`).
fn current_mode(body: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    let flag = match value.get("flags").and_then(|f| f.as_array()) {
        Some(flags) => flags.iter().find(|f| f["type"] == "sessions")?.clone(),
        None => value,
    };
    flag["mode"].as_str().map(str::to_string)
}
