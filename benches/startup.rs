//! Controller start with many settled sessions.
//!
//! Creates N Sessions (default 10,000, `BENCH_SESSIONS`): R of them running (default 100,
//! `BENCH_RUNNING`; each gets a Deployment and a pod from the node simulator), the rest
//! hibernated. A first `streamspace-controller controller` process settles them all (every
//! status written, every child created) and is stopped. Then a second one starts, as after a
//! restart or an upgrade, and the bench prints:
//!
//! - time from spawn to ready (`/readyz`: every watch cache loaded), beside the floor: one plain
//!   LIST of the N Sessions, timed by the bench on the same API server just before;
//! - time from spawn to "nothing left to do": the session and idle reconcilers have each
//!   finished one reconcile per session and none is in flight;
//! - the controller's API writes during start (from its own metrics), which must be 0 for
//!   settled sessions: any write fails the run;
//! - the controller's CPU time for the start, its RSS then, and its peak RSS;
//! - then, over a window in which nothing is due (`BENCH_QUIET_SECONDS`, default 60), its CPU
//!   as a share of one core, its writes (must be 0) and its RSS;
//! - what the sessions cost in memory: the RSS of a controller started on an empty namespace,
//!   the difference per session, and the heap bytes per cached object of each kind the
//!   controller caches (counted by this process's allocator over a store built from the
//!   listed objects with the controller's own trimming; [`support::heap`]).
//!
//! Sessions idle out after [`IDLE_TIMEOUT`], not the default 30 min: the idle reconciler
//! starts a running session's idle clock when it first sees it, so with the default a run
//! whose creating and settling take over 35 min (30 min plus the 5 min grace; 10,000 sessions
//! on a loaded machine can) would see the deadlines pass during the measured start, which then
//! hibernates those sessions: per session one idle write, two status writes and one Deployment
//! write, due work rather than a settled start.
//!
//! Run with `cargo bench --bench startup`.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ListParams};
use streamspace_controller::caches::trim;
use streamspace_controller::crd::{Session, SessionPhase, SessionState};
use streamspace_controller::devcluster::ControlPlane;
use support::floor::{self, ms};
use support::results::Results;
use support::{cpu_seconds, free_port, http_get, metric_sum, size};

const NAMESPACE: &str = "bench-startup";
/// A namespace with nothing in it: the controller's memory without sessions.
const EMPTY_NAMESPACE: &str = "bench-startup-empty";
const IN_FLIGHT: usize = 16;
/// Idle timeout of every session: longer than any run, so none idles out while measured.
const IDLE_TIMEOUT: &str = "24h";
/// Longest wait for the first controller to settle every session.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(1800);
/// Longest wait for the measured start to have nothing left to do.
const START_TIMEOUT: Duration = Duration::from_secs(600);

#[global_allocator]
static HEAP: support::heap::Counting = support::heap::Counting;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sessions = size("BENCH_SESSIONS", 10_000, 6);
    let running = size("BENCH_RUNNING", 100, 2).min(sessions);
    let results = Results::new("startup")?;
    let (plane, client, simulator) = support::cluster_with_nodes(4).await?;
    support::create_namespace(&client, NAMESPACE).await?;
    support::create_template(&client, NAMESPACE).await?;
    let floor = floor::measure(&client, IN_FLIGHT).await?;

    let created_at = Instant::now();
    support::create_sessions(&client, NAMESPACE, sessions, |i| {
        let state = if i < running { "running" } else { "hibernated" };
        serde_json::json!({
            "apiVersion": "stream.space/v1alpha1", "kind": "Session",
            "metadata": {"name": format!("s-{i}")},
            "spec": {
                "user": format!("user-{}", i % 500), "template": "desktop", "state": state,
                "idleTimeout": IDLE_TIMEOUT,
            }
        })
    })
    .await?;
    let create_time = created_at.elapsed();
    println!(
        "startup: {sessions} sessions ({running} running) created in {:.1} s",
        create_time.as_secs_f64()
    );

    let settle_from = Instant::now();
    let mut first = Controller::spawn(&plane)?;
    wait_settled(&client, sessions, running).await?;
    let settle_time = settle_from.elapsed();
    // Nothing in flight when it stops (the idle reconciler's clocks included).
    first.wait_nothing_to_do(sessions, START_TIMEOUT).await?;
    let _ = first.process.kill().await;
    println!(
        "startup: settled by a first controller in {:.1} s",
        settle_time.as_secs_f64()
    );

    // The floor of loading the cache: one plain LIST of every Session.
    let listed_from = Instant::now();
    let listed = Api::<Session>::namespaced(client.clone(), NAMESPACE)
        .list(&ListParams::default())
        .await?;
    let list_time = listed_from.elapsed();
    anyhow::ensure!(listed.items.len() == sessions, "the list missed sessions");

    let spawned = Instant::now();
    let mut second = Controller::spawn(&plane)?;
    second.wait_ready(START_TIMEOUT).await?;
    let ready = spawned.elapsed();
    second.wait_nothing_to_do(sessions, START_TIMEOUT).await?;
    let done = spawned.elapsed();
    let cpu = cpu_seconds(second.pid)?;
    let rss = support::rss_kib(second.pid)? as f64 / 1024.0;
    let metrics = http_get(second.port, "/metrics").await?;
    // `+ 0.0`: an empty sum is -0.0.
    let writes = metric_sum(&metrics, "streamspace_controller_api_writes_total") + 0.0;

    // Nothing is due for 24 h: what the controller costs while it only waits and watches.
    let quiet = Duration::from_secs(size("BENCH_QUIET_SECONDS", 60, 1) as u64);
    let quiet_from = cpu_seconds(second.pid)?;
    tokio::time::sleep(quiet).await;
    let quiet_cpu = 100.0 * (cpu_seconds(second.pid)? - quiet_from) / quiet.as_secs_f64();
    let quiet_rss = support::rss_kib(second.pid)? as f64 / 1024.0;
    let quiet_metrics = http_get(second.port, "/metrics").await?;
    let quiet_writes =
        metric_sum(&quiet_metrics, "streamspace_controller_api_writes_total") + 0.0 - writes;

    println!(
        "startup: {sessions} settled sessions ({running} running), a controller started beside them"
    );
    results.record("sessions created", create_time.as_secs_f64(), "s", None)?;
    results.record(
        "ready (every cache loaded)",
        ready.as_secs_f64(),
        "s",
        Some(list_time.as_secs_f64()),
    )?;
    results.record(
        "nothing left to do",
        done.as_secs_f64(),
        "s",
        Some(list_time.as_secs_f64()),
    )?;
    results.record("writes during start", writes, "writes", None)?;
    results.record("controller CPU for the start", cpu, "s", None)?;
    results.record("controller RSS after start", rss, "MiB", None)?;
    results.record(
        &format!(
            "controller CPU while nothing is due ({} s)",
            quiet.as_secs()
        ),
        quiet_cpu,
        "% of a core",
        None,
    )?;
    results.record("writes while nothing is due", quiet_writes, "writes", None)?;
    results.record("controller RSS after that", quiet_rss, "MiB", None)?;
    results.record_peak_rss("controller", second.pid)?;
    println!(
        "  (floor: one LIST of {sessions} sessions {:.0} ms; one write p50 {:.2} ms)",
        ms(list_time),
        ms(floor.write_p50)
    );
    anyhow::ensure!(
        quiet_writes == 0.0,
        "the controller wrote {quiet_writes} times while nothing was due"
    );
    anyhow::ensure!(
        writes == 0.0,
        "the controller wrote {writes} times while starting beside settled sessions:\n{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("streamspace_controller_api_writes_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let _ = second.process.kill().await;
    memory(&plane, &client, &results, sessions, rss).await?;
    simulator.stop().await;
    plane.stop().await;
    Ok(())
}

/// What the sessions cost in memory. `rss` is the RSS (MiB) of the controller that started
/// beside them, once it had nothing left to do.
async fn memory(
    plane: &ControlPlane,
    client: &kube::Client,
    results: &Results,
    sessions: usize,
    rss: f64,
) -> anyhow::Result<()> {
    support::create_namespace(client, EMPTY_NAMESPACE).await?;
    let mut empty = Controller::spawn_in(plane, EMPTY_NAMESPACE)?;
    empty.wait_ready(START_TIMEOUT).await?;
    empty.wait_nothing_to_do(0, START_TIMEOUT).await?;
    let empty_rss = support::rss_kib(empty.pid)? as f64 / 1024.0;
    let _ = empty.process.kill().await;
    results.record("controller RSS, empty namespace", empty_rss, "MiB", None)?;
    results.record(
        "controller RSS per session",
        (rss - empty_rss) * 1024.0 / sessions as f64,
        "KiB",
        None,
    )?;

    let children = Some("app=streamspace-session");
    let c = || client.clone();
    let ns = NAMESPACE;
    heap_per_object(
        results,
        "Session",
        Api::<Session>::namespaced(c(), ns),
        None,
        trim::bookkeeping,
    )
    .await?;
    heap_per_object(
        results,
        "Deployment",
        Api::<Deployment>::namespaced(c(), ns),
        children,
        trim::deployment,
    )
    .await?;
    heap_per_object(
        results,
        "Service",
        Api::<Service>::namespaced(c(), ns),
        children,
        trim::service,
    )
    .await?;
    heap_per_object(
        results,
        "Ingress",
        Api::<Ingress>::namespaced(c(), ns),
        children,
        trim::ingress,
    )
    .await?;
    heap_per_object(
        results,
        "Pod",
        Api::<Pod>::namespaced(c(), ns),
        children,
        trim::pod,
    )
    .await?;
    let claims = Some("app=streamspace-user-home");
    heap_per_object(
        results,
        "home claim",
        Api::<PersistentVolumeClaim>::namespaced(c(), ns),
        claims,
        trim::bookkeeping,
    )
    .await?;
    heap_per_object(results, "Node", Api::<Node>::all(c()), None, trim::node).await?;
    Ok(())
}

/// Records the heap bytes per cached object of one kind ([`support::heap::cached_bytes`]).
async fn heap_per_object<K>(
    results: &Results,
    kind: &str,
    api: Api<K>,
    labels: Option<&str>,
    trim: fn(&mut K),
) -> anyhow::Result<()>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let cached = support::heap::cached_bytes(api, labels, trim).await?;
    anyhow::ensure!(cached.objects > 0, "no {kind} to measure");
    results.record(
        &format!("heap per cached {kind} ({} cached)", cached.objects),
        cached.bytes_per_object / 1024.0,
        "KiB",
        None,
    )
}

/// A `streamspace-controller controller` process watching the bench namespace.
struct Controller {
    process: tokio::process::Child,
    pid: u32,
    port: u16,
}

impl Controller {
    fn spawn(plane: &ControlPlane) -> anyhow::Result<Controller> {
        Controller::spawn_in(plane, NAMESPACE)
    }

    fn spawn_in(plane: &ControlPlane, namespace: &str) -> anyhow::Result<Controller> {
        let port = free_port()?;
        let process = support::spawn_controller(plane.kubeconfig_path(), namespace, port, &[])?;
        let pid = process
            .id()
            .ok_or_else(|| anyhow::anyhow!("controller exited at once"))?;
        Ok(Controller { process, pid, port })
    }

    /// Polls `/readyz` every 10 ms, so the time to ready is measured to that resolution.
    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let from = Instant::now();
        loop {
            if let Ok(response) = http_get(self.port, "/readyz").await
                && (response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"))
            {
                return Ok(());
            }
            self.check_alive()?;
            anyhow::ensure!(from.elapsed() < timeout, "not ready after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the session and idle reconcilers have each finished one reconcile per
    /// session (at least) and have none in flight.
    async fn wait_nothing_to_do(
        &mut self,
        sessions: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let from = Instant::now();
        let wanted = sessions as f64;
        loop {
            if let Ok(metrics) = http_get(self.port, "/metrics").await {
                let idle = |controller: &str| {
                    let started = metric_sum(
                        &metrics,
                        &format!(
                            "streamspace_controller_reconciliations_total{{controller=\"{controller}\"}}"
                        ),
                    );
                    let finished = metric_sum(
                        &metrics,
                        &format!(
                            "streamspace_controller_reconcile_duration_seconds_count{{controller=\"{controller}\"}}"
                        ),
                    );
                    finished >= wanted && started == finished
                };
                if idle("session") && idle("idle") {
                    return Ok(());
                }
            }
            self.check_alive()?;
            anyhow::ensure!(
                from.elapsed() < timeout,
                "reconciles still running after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.process.try_wait()? {
            anyhow::bail!("the controller exited: {status}");
        }
        Ok(())
    }
}

/// Waits until every session shows the phase of its state, computed from its current
/// generation, and every running one has its start clock.
async fn wait_settled(
    client: &kube::Client,
    sessions: usize,
    running: usize,
) -> anyhow::Result<()> {
    let api: Api<Session> = Api::namespaced(client.clone(), NAMESPACE);
    let from = Instant::now();
    loop {
        let list = api.list(&ListParams::default()).await?;
        let settled = list
            .items
            .iter()
            .filter(|s| {
                let Some(status) = &s.status else {
                    return false;
                };
                let phase = match s.spec.desired_state() {
                    SessionState::Running => SessionPhase::Running,
                    _ => SessionPhase::Hibernated,
                };
                status.phase.as_ref() == Some(&phase)
                    && status.observed_generation == s.metadata.generation
                    && (phase != SessionPhase::Running || status.started_at.is_some())
            })
            .count();
        if settled >= sessions {
            return Ok(());
        }
        anyhow::ensure!(
            from.elapsed() < SETTLE_TIMEOUT,
            "only {settled} of {sessions} sessions ({running} running) settled after {SETTLE_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
