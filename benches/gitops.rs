//! Git push to nodes relabelled, with the real `controller` binary on the local control plane
//! (issue 18's target: 1,000 nodes in under 3 s, exactly one write per changed node).
//!
//! Creates N plain Node objects (`BENCH_NODES`, default 1,000; 5 in the smoke run under
//! `cargo test`) carrying a pool label, a bare Git repository on disk whose one NodeConfig
//! labels the pool with `gitbench.example/version: "1"`, and a GitSync following it (`file://`
//! URL, interval 1 h, so no poll falls inside a measurement). Then:
//!
//! - first sync: from the GitSync's create to every node carrying version 1;
//! - relabel: a commit setting version 2, then a signed push webhook (GitHub's
//!   `X-Hub-Signature-256`) on the controller's hooks listener; from the push to every node
//!   carrying version 2.
//!
//! Times are taken from a watch on the pool's Nodes (no polling). Writes to Nodes are counted
//! twice for each phase, from the controller's own `streamspace_gitops_node_writes_total` and
//! from the resourceVersion changes the watch delivers per node; anything but exactly one per
//! node fails the run, as does a node not labelled within [`STEP_LIMIT`]. Figures are printed
//! beside the floor: the API server's time for N writes at the create throughput measured on
//! the same control plane just before.
//!
//! Run with `cargo bench --bench gitops`; figures are also appended to
//! `target/bench-results/gitops.jsonl`.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use sha2::Sha256;
use streamspace_controller::FIELD_MANAGER;
use streamspace_controller::crd::GitSync;
use streamspace_controller::devcluster::{ControlPlane, ControlPlaneOptions};
use support::floor::{self, Floor};
use support::results::Results;
use support::{free_port, http_get, metric_sum, size};
use tokio::sync::watch;

const NAMESPACE: &str = "bench-gitops";
const GITSYNC: &str = "nodes";
/// Requests in flight of the floor's throughput and of the node creates.
const IN_FLIGHT: usize = 16;
/// The `token` of the webhook Secret: the HMAC key of the push hook.
const HOOK_SECRET: &str = "gitbench-hook-secret";
/// Label every bench node carries, and the NodeConfig's selector.
const POOL_LABEL: &str = "gitbench.example/pool";
const POOL: &str = "gitbench";
/// The label the repository sets, and changes on the push.
const VERSION_LABEL: &str = "gitbench.example/version";
/// Longest wait for one phase (every node labelled, the controller settled) before the run
/// fails: far above any expected figure.
const STEP_LIMIT: Duration = Duration::from_secs(300);
/// A gitsync reconcile queued by our own node events starts right after the running one ends:
/// the controller counts as settled once nothing ran or started for this long.
const SETTLED_AFTER: Duration = Duration::from_secs(1);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let count = size("BENCH_NODES", 1000, 5);
    let results = Results::new("gitops")?;
    let plane = ControlPlane::start(ControlPlaneOptions::default()).await?;
    let client = plane.client().await?;
    streamspace_controller::crd::install::install(&client, FIELD_MANAGER).await?;
    support::create_namespace(&client, NAMESPACE).await?;
    let floor = floor::measure(&client, IN_FLIGHT).await?;
    webhook_secret(&client).await?;
    let created_at = Instant::now();
    create_nodes(&client, count).await?;
    println!(
        "gitops: {count} nodes created in {:.2} s",
        created_at.elapsed().as_secs_f64()
    );
    let nodes = NodeWatch::start(&client).await?;
    let repo = BareRepo::new()?;
    let first_commit = repo.commit(&node_config("1"), "version 1")?;
    let cache = tempfile::tempdir()?;
    let controller = Controller::spawn(&plane, cache.path())?;
    support::wait_http_ok(controller.port, "/readyz").await?;

    let before = Counts::take(&controller, &nodes).await?;
    let started = Instant::now();
    create_gitsync(&client, &repo.url()).await?;
    let first_time = nodes.wait_all("1", count, started).await?;
    settle(&client, &controller, &nodes, &first_commit, count).await?;
    let first = Phase::since(before, &controller, &nodes, first_time).await?;

    let second_commit = repo.commit(&node_config("2"), "version 2")?;
    let before = Counts::take(&controller, &nodes).await?;
    let api_writes_before = floor::apiserver_writes(&client).await?;
    let pushed = Instant::now();
    let answer = push(controller.hooks_port, &second_commit).await?;
    anyhow::ensure!(answer == 202, "the signed push hook was answered {answer}");
    let relabel_time = nodes.wait_all("2", count, pushed).await?;
    settle(&client, &controller, &nodes, &second_commit, count).await?;
    let relabel = Phase::since(before, &controller, &nodes, relabel_time).await?;
    let api_writes = floor::apiserver_writes(&client).await? - api_writes_before;

    println!("gitops: {count} nodes, one NodeConfig selecting them all");
    first.record(&results, "first sync", count, &floor)?;
    relabel.record(&results, "relabel", count, &floor)?;
    results.record(
        "relabel: API writes, every writer",
        api_writes,
        "writes",
        None,
    )?;
    results.record_peak_rss("controller", controller.pid)?;
    floor.print();
    first.check("first sync", count)?;
    relabel.check("relabel", count)?;
    drop(controller);
    plane.stop().await;
    Ok(())
}

/// The Secret of the push hook's HMAC key, named by the GitSync's `webhookSecretRef`.
async fn webhook_secret(client: &kube::Client) -> anyhow::Result<()> {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "hook"},
        "stringData": {"token": HOOK_SECRET},
    }))?;
    Api::<Secret>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &secret)
        .await?;
    Ok(())
}

/// Creates `gitbench-node-0`.. as plain Node objects (no kubelet: nothing else writes them),
/// [`IN_FLIGHT`] at a time; any failed create fails the run.
async fn create_nodes(client: &kube::Client, count: usize) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    futures::stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            async move {
                let node: Node = serde_json::from_value(json!({"metadata": {
                    "name": format!("gitbench-node-{i}"), "labels": {POOL_LABEL: POOL}
                }}))?;
                api.create(&PostParams::default(), &node).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<()>()
        .await
}

/// The repository's one document: every pool node gets `VERSION_LABEL: <version>`.
fn node_config(version: &str) -> String {
    let document = json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "NodeConfig",
        "metadata": {"name": "pool"},
        "spec": {
            "nodeSelector": {"matchLabels": {POOL_LABEL: POOL}},
            "labels": {VERSION_LABEL: version},
        }
    });
    // JSON is YAML; the version stays a quoted string.
    document.to_string()
}

async fn create_gitsync(client: &kube::Client, url: &str) -> anyhow::Result<()> {
    let sync: GitSync = serde_json::from_value(json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "GitSync",
        "metadata": {"name": GITSYNC},
        "spec": {"url": url, "interval": "1h", "webhookSecretRef": {"name": "hook"}},
    }))?;
    Api::<GitSync>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &sync)
        .await?;
    Ok(())
}

/// A bare repository in a temporary directory, committed to without a work tree (as a forge
/// holds the repository a push lands in).
struct BareRepo {
    dir: tempfile::TempDir,
    repo: git2::Repository,
}

impl BareRepo {
    fn new() -> anyhow::Result<BareRepo> {
        let dir = tempfile::tempdir()?;
        let repo = git2::Repository::init_bare(dir.path())?;
        repo.set_head("refs/heads/main")?;
        Ok(BareRepo { dir, repo })
    }

    fn url(&self) -> String {
        format!("file://{}", self.dir.path().display())
    }

    /// Commits a tree holding only `nodes.yaml` to `main`; the commit id.
    fn commit(&self, nodes_yaml: &str, message: &str) -> anyhow::Result<String> {
        let blob = self.repo.blob(nodes_yaml.as_bytes())?;
        let mut tree = self.repo.treebuilder(None)?;
        tree.insert("nodes.yaml", blob, 0o100644)?;
        let tree = self.repo.find_tree(tree.write()?)?;
        let signature = git2::Signature::now("bench", "bench@example.com")?;
        let parent = self.repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        let id = self.repo.commit(
            Some("refs/heads/main"),
            &signature,
            &signature,
            message,
            &tree,
            &parents,
        )?;
        Ok(id.to_string())
    }
}

/// A GitHub-style push hook for `commit`, signed with the Secret's token; the status code.
async fn push(hooks_port: u16, commit: &str) -> anyhow::Result<u16> {
    let body = json!({"ref": "refs/heads/main", "after": commit}).to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_SECRET.as_bytes())?;
    mac.update(body.as_bytes());
    let signature: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", hooks_port)).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::post(format!("/hooks/git/{NAMESPACE}/{GITSYNC}"))
        .header("host", "localhost")
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", format!("gitbench-{commit}"))
        .header("x-hub-signature-256", format!("sha256={signature}"))
        .body(Full::new(Bytes::from(body)))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    Ok(status)
}

/// The `controller` process: metrics on `port`, push hooks on `hooks_port`.
struct Controller {
    _process: tokio::process::Child,
    pid: u32,
    port: u16,
    hooks_port: u16,
}

impl Controller {
    fn spawn(plane: &ControlPlane, cache: &std::path::Path) -> anyhow::Result<Controller> {
        let (port, hooks_port) = (free_port()?, free_port()?);
        let cache = cache.to_string_lossy();
        let process = support::spawn_controller_with_hooks(
            plane.kubeconfig_path(),
            NAMESPACE,
            port,
            hooks_port,
            &[
                "--gitsync-namespaces",
                NAMESPACE,
                "--gitsync-allow-insecure-transports",
                "--git-cache-dir",
                &cache,
            ],
        )?;
        let pid = process
            .id()
            .ok_or_else(|| anyhow::anyhow!("the controller exited at once"))?;
        Ok(Controller {
            _process: process,
            pid,
            port,
            hooks_port,
        })
    }

    /// The sum of every sample of metric `prefix` (`+ 0.0`: an empty sum is -0.0).
    async fn metric(&self, prefix: &str) -> anyhow::Result<f64> {
        let text = http_get(self.port, "/metrics").await?;
        Ok(metric_sum(&text, prefix) + 0.0)
    }

    /// Gitsync reconciles started and finished.
    async fn reconciles(&self) -> anyhow::Result<(f64, f64)> {
        let text = http_get(self.port, "/metrics").await?;
        let label = "{controller=\"gitsync\"}";
        Ok((
            metric_sum(
                &text,
                &format!("streamspace_controller_reconciliations_total{label}"),
            ),
            metric_sum(
                &text,
                &format!("streamspace_controller_reconcile_duration_seconds_count{label}"),
            ),
        ))
    }
}

/// Waits until the GitSync reports `commit` applied, the controller has no gitsync reconcile
/// running or starting for [`SETTLED_AFTER`] (those our own node writes queued included), and
/// the watch has delivered every node as a fresh LIST shows it.
async fn settle(
    client: &kube::Client,
    controller: &Controller,
    nodes: &NodeWatch,
    commit: &str,
    count: usize,
) -> anyhow::Result<()> {
    let from = Instant::now();
    let syncs: Api<GitSync> = Api::namespaced(client.clone(), NAMESPACE);
    let in_time = |what: &str| {
        anyhow::ensure!(
            from.elapsed() < STEP_LIMIT,
            "{what} within {STEP_LIMIT:?} of the last node labelled"
        );
        Ok(())
    };
    loop {
        let sync = syncs.get(GITSYNC).await?;
        let status = sync.status.unwrap_or_default();
        if status.last_applied_commit.as_deref() == Some(commit) {
            break;
        }
        in_time(&format!("GitSync status not at {commit}"))?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut last = (controller.reconciles().await?, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = controller.reconciles().await?;
        if now != last.0 || now.0 != now.1 {
            last = (now, Instant::now());
        } else if last.1.elapsed() >= SETTLED_AFTER {
            break;
        }
        in_time("the controller still reconciling")?;
    }
    let api: Api<Node> = Api::all(client.clone());
    let pool = ListParams::default().labels(&format!("{POOL_LABEL}={POOL}"));
    loop {
        let listed = api.list_metadata(&pool).await?;
        anyhow::ensure!(listed.items.len() == count, "nodes went missing");
        if nodes.caught_up(&listed.items)? {
            return Ok(());
        }
        in_time("the node watch behind a LIST")?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the pool's Nodes look like on a watch, kept by a task of its own.
#[derive(Default)]
struct Seen {
    /// Per node: the last resourceVersion delivered.
    versions: HashMap<String, String>,
    /// Per node: the value of [`VERSION_LABEL`] (empty when absent).
    labels: HashMap<String, String>,
    /// Per node: changes delivered (MODIFIED events) since the watch started.
    writes: HashMap<String, u64>,
    /// Why the watch stopped, if it did.
    failed: Option<String>,
}

struct NodeWatch {
    seen: Arc<Mutex<Seen>>,
    /// Bumped after every event handled.
    events: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for NodeWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl NodeWatch {
    /// Lists the pool and watches it from the list's resourceVersion on (resumed from the last
    /// one seen when the server ends a watch).
    async fn start(client: &kube::Client) -> anyhow::Result<NodeWatch> {
        let api: Api<Node> = Api::all(client.clone());
        let selector = format!("{POOL_LABEL}={POOL}");
        let listed = api
            .list_metadata(&ListParams::default().labels(&selector))
            .await?;
        let mut seen = Seen::default();
        for node in &listed.items {
            seen.note(&node.metadata, false);
        }
        let seen = Arc::new(Mutex::new(seen));
        let (bump, events) = watch::channel(0);
        let from = listed.metadata.resource_version.unwrap_or_default();
        let task = tokio::spawn(watch_nodes(api, selector, from, seen.clone(), bump));
        Ok(NodeWatch { seen, events, task })
    }

    fn lock(&self) -> anyhow::Result<std::sync::MutexGuard<'_, Seen>> {
        self.seen
            .lock()
            .map_err(|_| anyhow::anyhow!("the node watch task panicked"))
    }

    /// Waits until all `count` nodes carry `VERSION_LABEL: version`; the time since `from`,
    /// taken when the watch delivers the last one.
    async fn wait_all(
        &self,
        version: &str,
        count: usize,
        from: Instant,
    ) -> anyhow::Result<Duration> {
        let mut events = self.events.clone();
        loop {
            {
                let seen = self.lock()?;
                if let Some(why) = &seen.failed {
                    anyhow::bail!("the node watch stopped: {why}");
                }
                let labelled = seen.labels.values().filter(|v| *v == version).count();
                if labelled >= count {
                    return Ok(from.elapsed());
                }
                anyhow::ensure!(
                    from.elapsed() < STEP_LIMIT,
                    "{labelled} of {count} nodes carry {VERSION_LABEL}={version} after {STEP_LIMIT:?}"
                );
            }
            let left = STEP_LIMIT.saturating_sub(from.elapsed());
            let _ = tokio::time::timeout(left, events.changed()).await;
        }
    }

    /// True when the watch has delivered every listed node at its listed resourceVersion.
    fn caught_up(&self, listed: &[kube::core::PartialObjectMeta<Node>]) -> anyhow::Result<bool> {
        let seen = self.lock()?;
        Ok(listed.iter().all(|node| {
            let name = node.metadata.name.as_deref().unwrap_or_default();
            seen.versions.get(name) == node.metadata.resource_version.as_ref()
        }))
    }

    /// Changes delivered per node so far.
    fn writes(&self) -> anyhow::Result<HashMap<String, u64>> {
        Ok(self.lock()?.writes.clone())
    }
}

impl Seen {
    fn note(&mut self, meta: &kube::api::ObjectMeta, modified: bool) {
        let name = meta.name.clone().unwrap_or_default();
        let label = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(VERSION_LABEL))
            .cloned()
            .unwrap_or_default();
        if modified {
            *self.writes.entry(name.clone()).or_default() += 1;
        }
        self.versions.insert(
            name.clone(),
            meta.resource_version.clone().unwrap_or_default(),
        );
        self.labels.insert(name, label);
    }
}

/// Feeds `seen` from a watch of the pool from `from` on; when the server ends the watch (its
/// timeout), watches again from the last resourceVersion delivered.
async fn watch_nodes(
    api: Api<Node>,
    selector: String,
    mut from: String,
    seen: Arc<Mutex<Seen>>,
    bump: watch::Sender<u64>,
) {
    let params = WatchParams::default().labels(&selector).timeout(290);
    let failed = loop {
        let mut stream = match api.watch_metadata(&params, &from).await {
            Ok(stream) => stream.boxed(),
            Err(error) => break format!("starting the watch: {error}"),
        };
        let stopped = loop {
            let (meta, modified) = match stream.next().await {
                None => break None,
                Some(Err(error)) => break Some(error.to_string()),
                Some(Ok(WatchEvent::Added(node))) => (node.metadata, false),
                Some(Ok(WatchEvent::Modified(node))) => (node.metadata, true),
                Some(Ok(WatchEvent::Deleted(node))) => {
                    break Some(format!("node {:?} deleted", node.metadata.name));
                }
                Some(Ok(WatchEvent::Bookmark(mark))) => {
                    from = mark.metadata.resource_version;
                    continue;
                }
                Some(Ok(WatchEvent::Error(status))) => break Some(format!("{status:?}")),
            };
            from = meta.resource_version.clone().unwrap_or_default();
            match seen.lock() {
                Ok(mut state) => state.note(&meta, modified),
                Err(_) => return,
            }
            bump.send_modify(|n| *n += 1);
        };
        if let Some(why) = stopped {
            break why;
        }
    };
    if let Ok(mut state) = seen.lock() {
        state.failed = Some(failed);
    }
    bump.send_modify(|n| *n += 1);
}

/// Counters at the start of a phase.
struct Counts {
    node_writes: f64,
    conflicts: f64,
    skipped: f64,
    watched: HashMap<String, u64>,
}

impl Counts {
    async fn take(controller: &Controller, nodes: &NodeWatch) -> anyhow::Result<Counts> {
        Ok(Counts {
            node_writes: controller
                .metric("streamspace_gitops_node_writes_total")
                .await?,
            conflicts: controller
                .metric("streamspace_gitops_node_conflicts_total")
                .await?,
            skipped: controller
                .metric("streamspace_controller_skipped_writes_total{controller=\"gitsync\"}")
                .await?,
            watched: nodes.writes()?,
        })
    }
}

/// The figures of one phase.
struct Phase {
    time: Duration,
    /// Node patches the controller counted.
    node_writes: f64,
    /// Node patches refused by a concurrent write and retried.
    conflicts: f64,
    /// Node patches not made again: planned from a cache that did not show them yet.
    skipped: f64,
    /// Per node: changes the watch delivered during the phase (nodes with none are absent).
    watched: HashMap<String, u64>,
}

impl Phase {
    async fn since(
        before: Counts,
        controller: &Controller,
        nodes: &NodeWatch,
        time: Duration,
    ) -> anyhow::Result<Phase> {
        let after = Counts::take(controller, nodes).await?;
        let watched = after
            .watched
            .into_iter()
            .filter_map(|(node, n)| {
                let changes = n - before.watched.get(&node).copied().unwrap_or(0);
                (changes > 0).then_some((node, changes))
            })
            .collect();
        Ok(Phase {
            time,
            node_writes: after.node_writes - before.node_writes,
            conflicts: after.conflicts - before.conflicts,
            skipped: after.skipped - before.skipped,
            watched,
        })
    }

    fn watched_total(&self) -> f64 {
        self.watched.values().sum::<u64>() as f64
    }

    fn record(
        &self,
        results: &Results,
        name: &str,
        count: usize,
        floor: &Floor,
    ) -> anyhow::Result<()> {
        let writes_floor = Some(count as f64);
        results.record(
            &format!("{name}: every node labelled"),
            self.time.as_secs_f64(),
            "s",
            Some(floor.seconds_for(count as f64)),
        )?;
        results.record(
            &format!("{name}: node writes (controller)"),
            self.node_writes,
            "writes",
            writes_floor,
        )?;
        results.record(
            &format!("{name}: node changes (watch)"),
            self.watched_total(),
            "writes",
            writes_floor,
        )?;
        results.record(
            &format!("{name}: node patch conflicts"),
            self.conflicts,
            "retries",
            None,
        )?;
        results.record(
            &format!("{name}: node patches not repeated"),
            self.skipped,
            "skips",
            None,
        )
    }

    /// Exactly one write per node, by both counts.
    fn check(&self, name: &str, count: usize) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.node_writes == count as f64,
            "{name}: the controller counted {} node writes for {count} changed nodes",
            self.node_writes
        );
        let unchanged = count.saturating_sub(self.watched.len());
        let mut twice: Vec<_> = self.watched.iter().filter(|(_, n)| **n != 1).collect();
        twice.sort();
        anyhow::ensure!(
            unchanged == 0 && twice.is_empty(),
            "{name}: the watch saw {unchanged} nodes unchanged and these written more than once: {:?}",
            &twice[..twice.len().min(10)]
        );
        Ok(())
    }
}
