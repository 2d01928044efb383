//! Cost of per-session idle deadlines in the controller.
//!
//! Creates N running Sessions (default 5,000, `BENCH_SESSIONS`) whose idle deadlines are spread
//! over one minute (`idleTimeout` 60 s .. 119 s, `--idle-grace 0s`), with the real
//! `streamspace-controller controller` binary as a separate process, and prints the
//! controller's CPU time while the sessions are created and while the deadlines pass (when it
//! only waits for and acts on deadlines), its peak RSS, and the sessions hibernated by the end.
//! No Template exists, so no pods are involved: this measures the idle machinery.
//!
//! Any failed create, or a session not hibernated by the end, fails the run.
//!
//! Run with `cargo bench --bench idle_deadlines`.

mod support;

use std::time::{Duration, Instant};

use kube::api::{Api, ListParams};
use streamspace_controller::controller::FIELD_MANAGER;
use streamspace_controller::crd::{Session, SessionState};
use streamspace_controller::devcluster::{ControlPlane, ControlPlaneOptions};
use support::results::Results;
use support::{cpu_seconds, free_port, size, smoke, wait_http_ok};

const NAMESPACE: &str = "bench-idle";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sessions = size("BENCH_SESSIONS", 5000, 10);
    // Deadlines fall `spread` seconds apart from `first` on (a smoke run keeps them short).
    let (first, spread): (u64, u64) = if smoke() { (5, 2) } else { (60, 60) };
    let results = Results::new("idle_deadlines")?;
    let plane = ControlPlane::start(ControlPlaneOptions::default()).await?;
    let client = plane.client().await?;
    streamspace_controller::crd::install::install(&client, FIELD_MANAGER).await?;
    support::create_namespace(&client, NAMESPACE).await?;

    let port = free_port()?;
    let mut controller = support::spawn_controller(
        plane.kubeconfig_path(),
        NAMESPACE,
        port,
        &["--idle-grace", "0s"],
    )?;
    let pid = controller.id().unwrap_or_default();
    wait_http_ok(port, "/readyz").await?;

    let api: Api<Session> = Api::namespaced(client.clone(), NAMESPACE);
    let cpu_start = cpu_seconds(pid)?;
    let created_at = Instant::now();
    support::create_sessions(&client, NAMESPACE, sessions, |i| {
        serde_json::json!({
            "apiVersion": "stream.space/v1alpha1", "kind": "Session",
            "metadata": {"name": format!("s-{i}")},
            "spec": {
                "user": "bench", "template": "none", "state": "running",
                "idleTimeout": format!("{}s", first + i as u64 % spread),
                "maxSessionDuration": "8h"
            }
        })
    })
    .await?;
    let create_time = created_at.elapsed();
    // Until every clock is initialised (the controller's work for new sessions).
    loop {
        let list = api.list(&ListParams::default()).await?;
        let initialised = list
            .items
            .iter()
            .filter(|s| s.status.as_ref().is_some_and(|st| st.started_at.is_some()))
            .count();
        if initialised >= sessions || created_at.elapsed() > Duration::from_secs(first - 1) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let setup = created_at.elapsed();
    let cpu_setup = cpu_seconds(pid)? - cpu_start;

    // Quiet phase: nothing but deadlines until the first one falls due.
    let quiet_from = Instant::now();
    let cpu_quiet_start = cpu_seconds(pid)?;
    let first_deadline = Duration::from_secs(first).saturating_sub(created_at.elapsed());
    tokio::time::sleep(first_deadline).await;
    let quiet = quiet_from.elapsed();
    let cpu_quiet = cpu_seconds(pid)? - cpu_quiet_start;

    // Deadline phase: every deadline passes within one minute.
    let cpu_deadlines_start = cpu_seconds(pid)?;
    let deadlines_from = Instant::now();
    let mut hibernated = 0;
    while deadlines_from.elapsed() < Duration::from_secs(2 * spread) {
        let list = api.list(&ListParams::default()).await?;
        hibernated = list
            .items
            .iter()
            .filter(|s| s.spec.desired_state() == SessionState::Hibernated)
            .count();
        if hibernated >= sessions {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let deadlines = deadlines_from.elapsed();
    let cpu_deadlines = cpu_seconds(pid)? - cpu_deadlines_start;

    anyhow::ensure!(
        hibernated >= sessions,
        "only {hibernated} of {sessions} sessions hibernated {:.0} s after their deadlines began",
        deadlines.as_secs_f64()
    );
    println!("idle deadlines: {sessions} sessions, deadlines spread over {spread} s");
    results.record("sessions created", create_time.as_secs_f64(), "s", None)?;
    results.record("clocks initialised", setup.as_secs_f64(), "s", None)?;
    results.record("controller CPU during setup", cpu_setup, "s", None)?;
    results.record(
        "controller CPU while no deadline is due",
        100.0 * cpu_quiet / quiet.as_secs_f64().max(0.001),
        "% core",
        None,
    )?;
    results.record(
        "all hibernated after deadlines began",
        deadlines.as_secs_f64(),
        "s",
        None,
    )?;
    results.record(
        "controller CPU while deadlines pass",
        100.0 * cpu_deadlines / deadlines.as_secs_f64().max(0.001),
        "% core",
        None,
    )?;
    results.record_peak_rss("controller", pid)?;
    let _ = controller.kill().await;
    Ok(())
}
