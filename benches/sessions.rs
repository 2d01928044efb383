//! Throughput of the session controller against the local control plane.
//!
//! Creates N Sessions at once (default 500, `BENCH_SESSIONS` to change) in a fresh namespace,
//! with the real `streamspace-controller controller` binary running as a separate process, and
//! prints: time until every Deployment exists, time until every Session is Running, the
//! controller's peak RSS, and its API writes per Session. The floor is measured in the same
//! run: every write the API server served until all were Running (the controller's, the
//! controller manager's, the node simulator's and the creates themselves, from the server's
//! own metrics) divided by the create throughput it showed just before with the same number
//! of requests in flight.
//!
//! Run with `cargo bench --bench sessions`; `BENCH_CONCURRENCY` sets the controller's
//! `--concurrency` (default 16, the controller's own default).

mod support;

use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, PartialObjectMeta, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use streamspace_controller::crd::{Session, SessionPhase};
use support::floor;
use support::results::Results;
use support::{free_port, http_get, metric_sum, size, wait_http_ok};

const IN_FLIGHT: usize = 16;
const TIMEOUT: Duration = Duration::from_secs(600);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sessions = size("BENCH_SESSIONS", 500, 5);
    let results = Results::new("sessions")?;
    let (plane, client, simulator) = support::cluster_with_nodes(8).await?;

    let namespace = "bench";
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": namespace}}))?,
        )
        .await?;
    support::create_template(&client, namespace).await?;

    let http_port = free_port()?;
    let concurrency = std::env::var("BENCH_CONCURRENCY").unwrap_or_else(|_| "16".into());
    let mut controller = support::spawn_controller(
        plane.kubeconfig_path(),
        namespace,
        http_port,
        &["--concurrency", &concurrency],
    )?;
    let pid = controller
        .id()
        .ok_or_else(|| anyhow::anyhow!("controller exited at once"))?;
    wait_http_ok(http_port, "/readyz").await?;

    let floor = floor::measure(&client, IN_FLIGHT).await?;
    let api: Api<Session> = Api::namespaced(client.clone(), namespace);
    let observer = observe(&client, namespace);
    let writes_before = floor::apiserver_writes(&client).await?;
    let started = Instant::now();
    let created: Vec<kube::Result<Session>> = stream::iter(0..sessions)
        .map(|i| {
            let api = api.clone();
            async move {
                let session: Session = serde_json::from_value(serde_json::json!({
                    "apiVersion": "stream.space/v1alpha1", "kind": "Session",
                    "metadata": {"name": format!("s-{i}")},
                    "spec": {"user": format!("user-{i}"), "template": "desktop", "state": "running"}
                }))
                .map_err(kube::Error::SerdeError)?;
                api.create(&PostParams::default(), &session).await
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let failures = created.iter().filter(|r| r.is_err()).count();
    anyhow::ensure!(failures == 0, "{failures} session creates failed");
    let created_after = started.elapsed();

    let deployments_after = observer
        .wait_until(started, |c| c.deployments >= sessions)
        .await?;
    let running_after = observer
        .wait_until(started, |c| c.running >= sessions)
        .await?;
    let run_writes = floor::apiserver_writes(&client).await? - writes_before;
    let metrics = http_get(http_port, "/metrics").await?;
    let writes = metric_sum(&metrics, "streamspace_controller_api_writes_total");
    let reconciles = metric_sum(
        &metrics,
        "streamspace_controller_reconciliations_total{controller=\"session\"}",
    );
    let duration_sum = metric_value(
        &metrics,
        "streamspace_controller_reconcile_duration_seconds_sum{controller=\"session\"}",
    );

    let floor_seconds = floor.seconds_for(run_writes);
    println!(
        "sessions: {sessions}; the API server served {run_writes:.0} writes until all were Running ({:.1} per session)",
        run_writes / sessions as f64
    );
    results.record(
        "all created (client side)",
        created_after.as_secs_f64(),
        "s",
        None,
    )?;
    results.record(
        "all Deployments exist",
        deployments_after.as_secs_f64(),
        "s",
        None,
    )?;
    results.record(
        "all Sessions Running",
        running_after.as_secs_f64(),
        "s",
        Some(floor_seconds),
    )?;
    results.record_peak_rss("controller", pid)?;
    results.record(
        "controller API writes per session",
        writes / sessions as f64,
        "writes",
        None,
    )?;
    results.record(
        "session reconciles per session",
        reconciles / sessions as f64,
        "count",
        None,
    )?;
    results.record(
        "mean session reconcile",
        1000.0 * duration_sum / reconciles.max(1.0),
        "ms",
        None,
    )?;

    let _ = controller.kill().await;
    simulator.stop().await;
    plane.stop().await;
    Ok(())
}

struct Counts {
    deployments: usize,
    running: usize,
}

/// Watch caches of the bench namespace: counting from them costs the API server nothing,
/// unlike polling full lists, which would compete with the controller being measured.
struct Observer {
    sessions: Store<Session>,
    deployments: Store<PartialObjectMeta<Deployment>>,
}

fn observe(client: &Client, namespace: &str) -> Observer {
    let (sessions, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(
            Api::<Session>::namespaced(client.clone(), namespace),
            Default::default(),
        ),
    );
    tokio::spawn(
        stream
            .default_backoff()
            .for_each(|_| futures::future::ready(())),
    );
    let (deployments, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(
            Api::<PartialObjectMeta<Deployment>>::namespaced(client.clone(), namespace),
            Default::default(),
        ),
    );
    tokio::spawn(
        stream
            .default_backoff()
            .for_each(|_| futures::future::ready(())),
    );
    Observer {
        sessions,
        deployments,
    }
}

impl Observer {
    fn counts(&self) -> Counts {
        Counts {
            deployments: self.deployments.len(),
            running: self
                .sessions
                .state()
                .iter()
                .filter(|s| {
                    s.status.as_ref().and_then(|s| s.phase.as_ref()) == Some(&SessionPhase::Running)
                })
                .count(),
        }
    }

    async fn wait_until(
        &self,
        started: Instant,
        done: impl Fn(&Counts) -> bool,
    ) -> anyhow::Result<Duration> {
        loop {
            let counts = self.counts();
            if done(&counts) {
                return Ok(started.elapsed());
            }
            anyhow::ensure!(
                started.elapsed() < TIMEOUT,
                "gave up after {TIMEOUT:?}: {} deployments, {} running",
                counts.deployments,
                counts.running
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}
