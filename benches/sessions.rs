//! Throughput of the session controller against the local control plane.
//!
//! Creates N Sessions at once (default 500, `BENCH_SESSIONS` to change) in a fresh namespace,
//! with the real `streamspace-controller controller` binary running as a separate process, and
//! prints: time until every Deployment exists, time until every Session is Running, the
//! controller's peak RSS, and its API writes per Session. The floor is measured in the same
//! run: every write the API server served until all were Running (the controller's, the
//! controller manager's, the node simulator's and the creates themselves, from the server's
//! own metrics) divided by the create throughput it showed just before with the same number
//! of requests in flight. Those writes are printed by kind (server-side applies count as
//! `APPLY`), beside the controller's own by kind.
//!
//! A second floor is the cluster alone: once all are Running the controller stops, and the
//! bench creates the same Deployments, Services, Ingresses and claims it made (copied, in
//! another namespace) with the same number of requests in flight, and times them until every
//! Deployment is available. What the control plane does for those objects (the controller
//! manager's ReplicaSets, pods and status updates, Service IP allocation, endpoints, volumes)
//! is most of a run; the ratio to this floor is what the controller adds.
//!
//! Run with `cargo bench --bench sessions`; `BENCH_CONCURRENCY` sets the controller's
//! `--concurrency` (default 16, the controller's own default).

mod support;

use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::Client;
use kube::api::ListParams;
use kube::api::{Api, PartialObjectMeta, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::Serialize;
use serde::de::DeserializeOwned;
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
    let writes_before = floor::apiserver_writes_by_kind(&client).await?;
    let cpu_before = support::cpu_seconds(pid)?;
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
    let controller_cpu = support::cpu_seconds(pid)? - cpu_before;
    let writes_after = floor::apiserver_writes_by_kind(&client).await?;
    let run_writes: f64 = writes_after.values().sum::<f64>() - writes_before.values().sum::<f64>();
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

    // Where the writes went, by controller and kind: the figure to compare with the
    // inherent ones (Deployment, Service, Ingress, home claim, status Pending and Running).
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("streamspace_controller_api_writes_total{"))
    {
        println!("  {line}");
    }
    println!("the API server's writes until all were Running, per session:");
    for (kind, after) in &writes_after {
        let run = after - writes_before.get(kind).copied().unwrap_or(0.0);
        if run > 0.0 {
            println!("  {kind:<40} {:>6.2}", run / sessions as f64);
        }
    }
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
    results.record(
        "controller CPU until all Running",
        controller_cpu,
        "s",
        None,
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

    // The cluster alone: the same objects the controller wrote, created directly by the bench
    // in a namespace the controller does not watch, until every Deployment is available.
    let _ = controller.kill().await;
    let direct = direct_baseline(&client, namespace, "bench-direct").await?;
    println!(
        "the same {} objects written directly ({IN_FLIGHT} in flight): {:.0} API writes until all available",
        direct.objects, direct.writes
    );
    results.record(
        "all Sessions Running, beside the same objects written directly",
        running_after.as_secs_f64(),
        "s",
        Some(direct.available.as_secs_f64()),
    )?;

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
    Observer {
        sessions: watched(Api::namespaced(client.clone(), namespace)),
        deployments: watched(Api::namespaced(client.clone(), namespace)),
    }
}

/// A store the watch of `api` keeps filled, in a task of its own.
fn watched<K>(api: Api<K>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, Default::default()));
    tokio::spawn(
        stream
            .default_backoff()
            .for_each(|_| futures::future::ready(())),
    );
    store
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

/// A namespaced kind the direct floor copies.
trait Copyable:
    kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + DeserializeOwned
    + Serialize
    + std::fmt::Debug
{
}

impl<K> Copyable for K where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug
{
}

/// What writing a run's objects directly took.
struct Direct {
    objects: usize,
    /// Writes the API server served until all were available (the controller manager's too).
    writes: f64,
    /// From the first create to every Deployment available.
    available: Duration,
}

/// Copies the Deployments, Services, Ingresses and claims the controller made in `from` into
/// `to` (created first; identity, status and server-set fields dropped), `IN_FLIGHT` creates at a
/// time in session order, and waits until every Deployment has an available replica: the
/// time the cluster itself needs for the same objects, with no controller in the loop.
async fn direct_baseline(client: &Client, from: &str, to: &str) -> anyhow::Result<Direct> {
    support::create_namespace(client, to).await?;
    let mut objects: Vec<(String, serde_json::Value, &'static str)> = Vec::new();
    objects.extend(copies::<Deployment>(client, from).await?);
    objects.extend(copies::<Service>(client, from).await?);
    objects.extend(copies::<Ingress>(client, from).await?);
    objects.extend(copies::<PersistentVolumeClaim>(client, from).await?);
    // Session by session, as a controller writes them (a home claim is keyed by its user).
    let session_of_user: std::collections::HashMap<String, String> =
        Api::<Session>::namespaced(client.clone(), from)
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|s| Some((s.spec.user.clone(), s.metadata.name?)))
            .collect();
    for object in &mut objects {
        if let Some(session) = session_of_user.get(&object.0) {
            object.0 = session.clone();
        }
    }
    objects.sort_by(|a, b| a.0.cmp(&b.0));
    let deployments = objects.iter().filter(|o| o.2 == "Deployment").count();
    let available_store = watched(Api::<Deployment>::namespaced(client.clone(), to));
    let writes_before = floor::apiserver_writes(client).await?;
    let started = Instant::now();
    let failures = stream::iter(objects.iter())
        .map(|(_, body, kind)| create(client, to, kind, body))
        .buffer_unordered(IN_FLIGHT)
        .filter(|r| futures::future::ready(r.is_err()))
        .count()
        .await;
    anyhow::ensure!(failures == 0, "{failures} direct creates failed");
    loop {
        let available = available_store
            .state()
            .iter()
            .filter(|d| {
                d.status
                    .as_ref()
                    .and_then(|s| s.available_replicas)
                    .unwrap_or(0)
                    >= 1
            })
            .count();
        if available >= deployments {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < TIMEOUT,
            "gave up after {TIMEOUT:?}: {available} of {deployments} direct Deployments available"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let available = started.elapsed();
    Ok(Direct {
        objects: objects.len(),
        writes: floor::apiserver_writes(client).await? - writes_before,
        available,
    })
}

/// Every `K` in `namespace` as a create body for another namespace, keyed by the session it
/// belongs to.
async fn copies<K>(
    client: &Client,
    namespace: &str,
) -> anyhow::Result<Vec<(String, serde_json::Value, &'static str)>>
where
    K: Copyable,
{
    let kind: &'static str = match K::kind(&()).as_ref() {
        "Deployment" => "Deployment",
        "Service" => "Service",
        "Ingress" => "Ingress",
        _ => "PersistentVolumeClaim",
    };
    let list = Api::<K>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await?;
    let mut bodies = Vec::new();
    for object in list.items {
        let meta = object.meta();
        let key = meta
            .labels
            .as_ref()
            .and_then(|l| l.get("session").or_else(|| l.get("user")))
            .cloned()
            .unwrap_or_default();
        let mut body = serde_json::to_value(&object)?;
        body["metadata"] = serde_json::json!({
            "name": meta.name,
            "labels": meta.labels,
            "annotations": meta.annotations,
        });
        if let Some(body) = body.as_object_mut() {
            body.remove("status");
        }
        if let Some(spec) = body.get_mut("spec").and_then(|s| s.as_object_mut()) {
            // Set by the API server (Service) or by binding (claim).
            for field in ["clusterIP", "clusterIPs", "volumeName"] {
                spec.remove(field);
            }
        }
        bodies.push((key, body, kind));
    }
    Ok(bodies)
}

async fn create(
    client: &Client,
    namespace: &str,
    kind: &str,
    body: &serde_json::Value,
) -> anyhow::Result<()> {
    let params = PostParams::default();
    match kind {
        "Deployment" => create_as::<Deployment>(client, namespace, body, &params).await,
        "Service" => create_as::<Service>(client, namespace, body, &params).await,
        "Ingress" => create_as::<Ingress>(client, namespace, body, &params).await,
        _ => create_as::<PersistentVolumeClaim>(client, namespace, body, &params).await,
    }
}

async fn create_as<K>(
    client: &Client,
    namespace: &str,
    body: &serde_json::Value,
    params: &PostParams,
) -> anyhow::Result<()>
where
    K: Copyable,
{
    let object: K = serde_json::from_value(body.clone())?;
    Api::<K>::namespaced(client.clone(), namespace)
        .create(params, &object)
        .await?;
    Ok(())
}
