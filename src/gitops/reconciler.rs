//! The sync engine's I/O shell: fetch -> parse and validate -> overlays -> plan -> apply ->
//! status, for each `GitSync`, on its interval, on a verified webhook, and on every Node
//! change (so drift is corrected within seconds and new nodes get their labels).
//!
//! Only the commit in force (the last one that validated) is ever applied; a rejected commit
//! changes nothing on the nodes and is reported in status. Between fetches the desired state
//! of the commit in force is kept in memory; after a restart it is read again from the cache
//! (`status.lastAppliedCommit`), and the inventory is read from the nodes themselves.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::{Node, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::watch;
use tracing::{info, warn};

use super::manifest::{self, Desired, ManifestError, OWNER_LABEL, ObjectKind, owner_value};
use super::plan::{self, LiveNode, LiveObject, ObjectAction, ObjectChange, Plan, PlanError};
use super::repo::{self, Credentials, FetchRequest, RepoError};
use crate::FIELD_MANAGER;
use crate::backoff::FailureBackoff;
use crate::caches::Shared;
use crate::crd::gitsync::{InventoryEntry, Rejection};
use crate::crd::{Condition, FeatureFlag, GitSync, GitSyncStatus, NodeOperation, QuotaPolicy};
use crate::metrics::SharedMetrics;

pub const CONTROLLER: &str = "gitsync";
/// Attempts of one node patch when someone else wrote the node in between.
const NODE_PATCH_ATTEMPTS: u32 = 5;
/// Reasons and messages longer than this are cut in status (the Events carry the same).
const MAX_REASON: usize = 2000;

/// GitOps settings of the controller.
#[derive(Clone, Debug)]
pub struct GitopsSettings {
    /// Where the bare clones are kept.
    pub cache_dir: PathBuf,
    pub fetch_timeout: Duration,
}

impl Default for GitopsSettings {
    fn default() -> Self {
        GitopsSettings {
            cache_dir: std::env::temp_dir().join("streamspace-gitops"),
            fetch_timeout: repo::FETCH_TIMEOUT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed while {action}: {source}")]
    Api {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("{action} failed: {source}")]
    Object {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("the credentials Secret {0:?} does not exist")]
    SecretMissing(String),
    #[error("interval {0:?} is not a duration such as 30s, 5m or 1h")]
    Interval(String),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("GitSync has no namespace")]
    NoNamespace,
    #[error("the node watch closed (the controller is shutting down)")]
    CacheClosed,
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Api { source, .. } if is_stale_write(source) => "conflict",
            Error::Api { .. } => "api",
            Error::Object { source, .. } if is_stale_write(source) => "conflict",
            Error::Object { .. } => "object_apply",
            Error::Repo(e) => e.metric_label(),
            Error::SecretMissing(_) => "secret_missing",
            Error::Interval(_) => "interval",
            Error::Plan(e) => e.metric_label(),
            Error::NoNamespace => "no_namespace",
            Error::CacheClosed => "cache_closed",
        }
    }
}

fn is_stale_write(error: &kube::Error) -> bool {
    // 409: resourceVersion conflict; 422: our JSON Patch `test` of the resourceVersion failed.
    matches!(error, kube::Error::Api(status) if status.code == 409 || status.code == 422)
}

/// What a sync remembers between reconciles (rebuilt after a restart).
#[derive(Clone)]
struct Memory {
    generation: Option<i64>,
    fetched_at: Instant,
    /// Why the last fetch failed; cleared by the next successful fetch.
    fetch_error: Option<String>,
    /// The commit in force and its documents.
    good: Option<(String, Arc<Desired>)>,
    /// The last sync request (annotation value) acted on.
    handled_request: Option<String>,
}

pub struct GitopsContext {
    client: Client,
    recorder: Recorder,
    metrics: SharedMetrics,
    settings: GitopsSettings,
    nodes: Store<Node>,
    /// QuotaPolicies and NodeOperations carrying the ownership label (of any GitSync).
    quotas: Store<QuotaPolicy>,
    operations: Store<NodeOperation>,
    flags: Store<FeatureFlag>,
    /// True once the node and the owned-object caches have loaded.
    nodes_loaded: watch::Receiver<bool>,
    memory: Mutex<HashMap<String, Memory>>,
    backoff: FailureBackoff,
}

/// Parses `30s`, `5m`, `1h`.
pub fn parse_interval(text: &str) -> Option<Duration> {
    let unit = match text.chars().last()? {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        _ => return None,
    };
    let number: u64 = text.get(..text.len() - 1)?.parse().ok()?;
    (number > 0).then(|| Duration::from_secs(number.saturating_mul(unit)))
}

/// The GitSync controller and a future that resolves once its caches have loaded. Nodes and
/// FeatureFlags come from the process's shared caches.
pub fn controller(
    client: Client,
    namespace: Option<&str>,
    settings: GitopsSettings,
    metrics: SharedMetrics,
    shared: (&Shared<Node>, &Shared<FeatureFlag>),
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> (
    impl Future<Output = ()> + Send,
    impl Future<Output = bool> + Send,
) {
    let (shared_nodes, shared_flags) = shared;
    let nodes = shared_nodes.store();
    let node_stream = shared_nodes.subscribe();
    // Owned objects are watched too, so a hand edit or deletion is corrected at once.
    let owned = watcher::Config::default()
        .any_semantic()
        .labels(OWNER_LABEL);
    let quota_api: Api<QuotaPolicy> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (quotas, quota_writer) = reflector::store();
    let quota_stream = reflector::reflector(quota_writer, watcher(quota_api, owned.clone()))
        .default_backoff()
        .touched_objects();
    let (operations, operation_writer) = reflector::store();
    let operation_stream = reflector::reflector(
        operation_writer,
        watcher(Api::<NodeOperation>::all(client.clone()), owned.clone()),
    )
    .default_backoff()
    .touched_objects();
    let flags = shared_flags.store();
    let flag_stream = shared_flags.subscribe();
    let (loaded_tx, nodes_loaded) = watch::channel(false);
    let ready = {
        let mut nodes_loaded = shared_nodes.loaded();
        let mut flags_loaded = shared_flags.loaded();
        let quotas = quotas.clone();
        let operations = operations.clone();
        async move {
            // Shared stores are awaited through their `loaded` channels (a store wakes one
            // waiter only); the two private ones have no other waiter.
            let loaded = nodes_loaded.wait_for(|l| *l).await.is_ok()
                && flags_loaded.wait_for(|l| *l).await.is_ok()
                && quotas.wait_until_ready().await.is_ok()
                && operations.wait_until_ready().await.is_ok();
            let _ = loaded_tx.send(loaded);
            loaded
        }
    };
    let syncs: Api<GitSync> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let ctx = Arc::new(GitopsContext {
        client: client.clone(),
        recorder,
        metrics,
        settings,
        nodes,
        quotas,
        operations,
        flags,
        nodes_loaded,
        memory: Mutex::default(),
        backoff: FailureBackoff::default(),
    });
    let sync_controller = Controller::new(syncs, watcher::Config::default().any_semantic());
    let sync_store = sync_controller.store();
    // Every node change may concern every GitSync: drift, or a node a selector now matches.
    let all_syncs = {
        let sync_store = sync_store.clone();
        move |_: Arc<Node>| {
            sync_store
                .state()
                .iter()
                .map(|s| ObjectRef::from_obj(s.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    // An owned object concerns the GitSync its ownership label names.
    let owner = move |labels: Option<&std::collections::BTreeMap<String, String>>| {
        let value = labels.and_then(|l| l.get(OWNER_LABEL)).cloned();
        sync_store
            .state()
            .iter()
            .filter(|s| Some(owner_value(&sync_id(s))) == value)
            .map(|s| ObjectRef::from_obj(s.as_ref()))
            .collect::<Vec<_>>()
    };
    let quota_owner = {
        let owner = owner.clone();
        move |q: QuotaPolicy| owner(q.metadata.labels.as_ref())
    };
    let operation_owner = {
        let owner = owner.clone();
        move |o: NodeOperation| owner(o.metadata.labels.as_ref())
    };
    let flag_owner = move |f: Arc<FeatureFlag>| owner(f.metadata.labels.as_ref());
    let run = sync_controller
        .watches_shared_stream(node_stream, all_syncs)
        .watches_stream(quota_stream, quota_owner)
        .watches_stream(operation_stream, operation_owner)
        .watches_shared_stream(flag_stream, flag_owner)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| future::ready(()));
    (run, ready)
}

fn sync_id(sync: &GitSync) -> String {
    format!(
        "{}/{}",
        sync.namespace().unwrap_or_default(),
        sync.name_any()
    )
}

pub async fn reconcile(sync: Arc<GitSync>, ctx: Arc<GitopsContext>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcilers.start(CONTROLLER);
    ctx.nodes_loaded
        .clone()
        .wait_for(|loaded| *loaded)
        .await
        .map_err(|_| Error::CacheClosed)?;
    let namespace = sync.namespace().ok_or(Error::NoNamespace)?;
    // Node events reconcile often, sometimes before our last status write reached the watch
    // cache: read the object itself, so status is always computed from what is stored.
    let fresh = Api::<GitSync>::namespaced(ctx.client.clone(), &namespace)
        .get_opt(&sync.name_any())
        .await
        .map_err(|source| Error::Api {
            action: "reading the GitSync",
            source,
        })?;
    let Some(sync) = fresh.map(Arc::new) else {
        return Ok(Action::await_change());
    };
    let id = sync_id(&sync);
    let interval =
        parse_interval(&sync.spec.interval).ok_or(Error::Interval(sync.spec.interval.clone()))?;
    let current = sync.status.clone().unwrap_or_default();
    if sync.spec.suspend {
        let mut status = current.clone();
        set_condition(
            &mut status,
            "Reconciling",
            false,
            "Suspended",
            "spec.suspend is true",
        );
        write_status(&ctx, &sync, &namespace, &current, status).await?;
        return Ok(Action::await_change());
    }
    let started = Instant::now();
    let remembered = memory(&ctx, &id);
    let request = super::sync_request::requested(&sync).map(str::to_string);
    let triggered = super::sync_request::is_new(
        request.as_deref(),
        remembered
            .as_ref()
            .and_then(|m| m.handled_request.as_deref()),
    );
    let generation = sync.meta().generation;
    let due = match &remembered {
        None => true,
        Some(m) => triggered || m.generation != generation || m.fetched_at.elapsed() >= interval,
    };
    let mut status = current.clone();
    status.observed_generation = generation;
    // A failed fetch is reported and retried with backoff, but the commit in force is still
    // applied, so drift is corrected while the repository is unreachable.
    let (mut memory, fetch_failure) = match (due, remembered) {
        (false, Some(m)) => (m, None),
        (_, remembered) => {
            fetch_and_load(&ctx, &sync, &namespace, &id, remembered, &mut status).await?
        }
    };
    memory.generation = generation;
    memory.handled_request = request;
    let Some((commit, desired)) = memory.good.clone() else {
        // Nothing valid yet: the rejection or the fetch error is in status.
        if let Some(message) = &memory.fetch_error {
            set_condition(&mut status, "Ready", false, "FetchFailed", message);
        }
        remember(&ctx, &id, memory.clone());
        write_status(&ctx, &sync, &namespace, &current, status).await?;
        return match fetch_failure {
            Some(error) => Err(error),
            None => Ok(Action::requeue(interval)),
        };
    };
    let plan = match plan_against_cache(&ctx, &id, &namespace, &desired, sync.spec.prune) {
        Ok(plan) => plan,
        Err(error) => {
            reject(
                &ctx,
                &sync,
                &mut status,
                &commit,
                "",
                &error.to_string(),
                error.metric_label(),
            )
            .await;
            remember(&ctx, &id, memory);
            write_status(&ctx, &sync, &namespace, &current, status).await?;
            return Err(error.into());
        }
    };
    let mut changed = apply(&ctx, &id, &desired, sync.spec.prune, &plan).await?;
    let objects_changed = match apply_objects(&ctx, &id, &namespace, &desired, &plan.objects).await
    {
        Ok(count) => count,
        Err(error) => {
            // Say which object failed (an admission webhook may refuse it), then retry.
            set_condition(
                &mut status,
                "Ready",
                false,
                "ApplyFailed",
                &error.to_string(),
            );
            remember(&ctx, &id, memory);
            write_status(&ctx, &sync, &namespace, &current, status).await?;
            return Err(error);
        }
    };
    changed += objects_changed;
    let newly_applied = status.last_applied_commit.as_deref() != Some(commit.as_str());
    if newly_applied {
        status.last_applied_commit = Some(commit.clone());
        status.last_applied_time = Some(Time(Timestamp::now()));
        ctx.metrics
            .gitops
            .last_applied
            .get_or_create(&super::metrics::SyncLabel {
                gitsync: id.clone(),
            })
            .set(Timestamp::now().as_second());
    }
    if status.last_fetched_commit.as_deref() == Some(commit.as_str()) {
        status.rejected = None;
    }
    status.inventory = plan
        .managed
        .iter()
        .map(|m| InventoryEntry {
            node: m.node.clone(),
            labels: m.owned.labels.iter().cloned().collect(),
            taints: m.owned.taints.iter().cloned().collect(),
        })
        .collect();
    status.unmatched = plan.unmatched.clone();
    let short = commit.get(..12).unwrap_or(&commit);
    match (&memory.fetch_error, &status.rejected) {
        (Some(error), _) => {
            let message = format!("commit {short} in force; fetching failed: {error}");
            set_condition(&mut status, "Ready", false, "FetchFailed", &message);
        }
        (None, Some(rejection)) => {
            let message = format!(
                "commit {short} in force; newer commit rejected: {}",
                rejection.reason
            );
            set_condition(&mut status, "Ready", false, "CommitRejected", &message);
            set_condition(&mut status, "Stalled", true, "CommitRejected", &message);
        }
        (None, None) => {
            let message = format!("applied commit {short}");
            set_condition(&mut status, "Ready", true, "Synced", &message);
            remove_condition(&mut status, "Stalled");
        }
    }
    set_condition(
        &mut status,
        "Reconciling",
        false,
        "Idle",
        "waiting for the next change",
    );
    if changed > 0 || newly_applied {
        let note = format!(
            "commit {short}: {} node(s) and {objects_changed} object(s) changed, {} unmatched NodeConfig(s)",
            changed - objects_changed,
            plan.unmatched.len()
        );
        info!(gitsync = %id, %commit, changed, "applied");
        publish(&ctx, &sync, EventType::Normal, "Applied", note).await;
    }
    remember(&ctx, &id, memory.clone());
    write_status(&ctx, &sync, &namespace, &current, status).await?;
    ctx.metrics
        .gitops
        .sync_duration
        .observe(started.elapsed().as_secs_f64());
    if let Some(error) = fetch_failure {
        return Err(error);
    }
    ctx.backoff.succeeded(&id);
    Ok(Action::requeue(
        interval
            .saturating_sub(memory.fetched_at.elapsed())
            .max(Duration::from_secs(1)),
    ))
}

pub fn error_policy(sync: Arc<GitSync>, error: &Error, ctx: Arc<GitopsContext>) -> Action {
    ctx.metrics
        .reconcilers
        .failure(CONTROLLER, error.metric_label());
    ctx.metrics.gitops.failure(error.metric_label());
    let transient = matches!(error, Error::Api { source, .. } if is_stale_write(source));
    let delay = ctx.backoff.failed(sync_id(&sync), transient);
    warn!(gitsync = %sync_id(&sync), %error, retry_in = ?delay, "gitsync reconcile failed");
    Action::requeue(delay)
}

fn memory(ctx: &GitopsContext, id: &str) -> Option<Memory> {
    let memory = ctx.memory.lock().unwrap_or_else(|e| e.into_inner());
    memory.get(id).cloned()
}

fn remember(ctx: &GitopsContext, id: &str, value: Memory) {
    let mut memory = ctx.memory.lock().unwrap_or_else(|e| e.into_inner());
    memory.insert(id.to_string(), value);
}

/// Fetches, and validates the fetched commit when it is new; returns the updated memory.
async fn fetch_and_load(
    ctx: &GitopsContext,
    sync: &GitSync,
    namespace: &str,
    id: &str,
    remembered: Option<Memory>,
    status: &mut GitSyncStatus,
) -> Result<(Memory, Option<Error>), Error> {
    let dir = repo::cache_dir(&ctx.settings.cache_dir, id, &sync.spec.url);
    let fetched = match credentials(ctx, sync, namespace).await {
        Ok(credentials) => repo::fetch(FetchRequest {
            url: sync.spec.url.clone(),
            branch: sync.spec.branch.clone(),
            dir: dir.clone(),
            credentials,
            timeout: ctx.settings.fetch_timeout,
        })
        .await
        .map_err(Error::from),
        Err(error) => Err(error),
    };
    let commit = match fetched {
        Ok(commit) => commit,
        Err(error) => {
            let mut good = remembered.and_then(|m| m.good);
            if good.is_none()
                && let Some(previous) = status.last_applied_commit.clone()
                && let Ok(Ok(desired)) = load(&dir, &previous, sync).await
            {
                good = Some((previous, Arc::new(desired)));
            }
            let memory = Memory {
                generation: sync.meta().generation,
                fetched_at: Instant::now(),
                fetch_error: Some(error.to_string()),
                good,
                handled_request: None,
            };
            return Ok((memory, Some(error)));
        }
    };
    if status.last_fetched_commit.as_deref() != Some(commit.as_str()) {
        status.last_fetched_commit = Some(commit.clone());
        status.last_fetch_time = Some(Time(Timestamp::now()));
    }
    let spec_changed = remembered
        .as_ref()
        .is_some_and(|m| m.generation != sync.meta().generation);
    let mut good = remembered.and_then(|m| m.good).filter(|_| !spec_changed);
    if good.is_none()
        && let Some(previous) = status.last_applied_commit.clone()
        && previous != commit
    {
        // After a restart (or a spec change) the commit in force is read again from the cache.
        if let Ok(Ok(desired)) = load(&dir, &previous, sync).await {
            good = Some((previous, Arc::new(desired)));
        }
    }
    if good.as_ref().map(|(c, _)| c) != Some(&commit) {
        match load(&dir, &commit, sync).await? {
            Ok(desired) => good = Some((commit.clone(), Arc::new(desired))),
            Err(errors) => {
                let first = errors.first();
                let file = first
                    .and_then(ManifestError::location)
                    .map(ToString::to_string)
                    .unwrap_or_default();
                let reasons: Vec<String> = errors.iter().map(ToString::to_string).collect();
                let label = first.map_or("invalid", ManifestError::metric_label);
                reject(
                    ctx,
                    sync,
                    status,
                    &commit,
                    &file,
                    &reasons.join("\n"),
                    label,
                )
                .await;
            }
        }
    }
    let memory = Memory {
        generation: sync.meta().generation,
        fetched_at: Instant::now(),
        fetch_error: None,
        good,
        handled_request: None,
    };
    Ok((memory, None))
}

async fn load(
    dir: &std::path::Path,
    commit: &str,
    sync: &GitSync,
) -> Result<Result<Desired, Vec<ManifestError>>, Error> {
    let files = repo::read_commit(dir.to_path_buf(), commit.to_string()).await?;
    Ok(manifest::load(
        &files,
        sync.spec.path.as_deref().unwrap_or_default(),
        sync.spec.overlay.as_deref(),
    ))
}

/// Records a rejected commit in status, with an Event and a metric the first time.
async fn reject(
    ctx: &GitopsContext,
    sync: &GitSync,
    status: &mut GitSyncStatus,
    commit: &str,
    file: &str,
    reason: &str,
    label: &'static str,
) {
    let mut reason = reason.to_string();
    if reason.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push_str(" ...");
    }
    let rejection = Rejection {
        commit: commit.to_string(),
        file: file.to_string(),
        reason: reason.clone(),
    };
    if status.rejected.as_ref() == Some(&rejection) {
        return;
    }
    ctx.metrics.gitops.failure(label);
    warn!(gitsync = %sync_id(sync), %commit, %reason, "commit rejected; nothing applied");
    let short = commit.get(..12).unwrap_or(commit);
    let note = format!("commit {short} rejected: {reason}");
    publish(ctx, sync, EventType::Warning, "Rejected", note).await;
    set_condition(status, "Ready", false, "CommitRejected", &reason);
    set_condition(status, "Stalled", true, "CommitRejected", &reason);
    status.rejected = Some(rejection);
}

async fn credentials(
    ctx: &GitopsContext,
    sync: &GitSync,
    namespace: &str,
) -> Result<Option<Credentials>, Error> {
    let Some(reference) = &sync.spec.secret_ref else {
        return Ok(None);
    };
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), namespace)
        .get_opt(&reference.name)
        .await
        .map_err(|source| Error::Api {
            action: "reading the credentials Secret",
            source,
        })?
        .ok_or_else(|| Error::SecretMissing(reference.name.clone()))?;
    let data = secret.data.unwrap_or_default();
    let text = |key: &str| {
        data.get(key)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
    };
    Ok(Some(Credentials {
        username: text("username"),
        password: text("token").or_else(|| text("password")),
        ssh_key: text("identity"),
        passphrase: text("passphrase"),
    }))
}

fn live_node(node: &Node) -> LiveNode {
    LiveNode {
        name: node.name_any(),
        resource_version: node.resource_version(),
        labels: node.metadata.labels.clone(),
        annotations: node.metadata.annotations.clone(),
        taints: node.spec.as_ref().and_then(|s| s.taints.clone()),
    }
}

fn plan_against_cache(
    ctx: &GitopsContext,
    id: &str,
    namespace: &str,
    desired: &Desired,
    prune: bool,
) -> Result<Plan, PlanError> {
    let mut nodes: Vec<LiveNode> = ctx.nodes.state().iter().map(|n| live_node(n)).collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let mut plan = plan::plan(id, &desired.node_configs, &nodes, prune)?;
    plan.objects = plan::plan_objects(
        &desired.objects,
        &labelled_objects(ctx, namespace),
        &owner_value(id),
        prune,
    )?;
    Ok(plan)
}

/// Applies every node change (one patch per node, concurrently); returns how many changed.
async fn apply(
    ctx: &GitopsContext,
    id: &str,
    desired: &Desired,
    prune: bool,
    plan: &Plan,
) -> Result<usize, Error> {
    let cached: HashMap<String, LiveNode> = ctx
        .nodes
        .state()
        .iter()
        .map(|n| (n.name_any(), live_node(n)))
        .collect();
    let mut writes = Vec::with_capacity(plan.changes.len());
    for change in &plan.changes {
        let live = cached.get(&change.node).cloned().unwrap_or_default();
        writes.push(patch_node(ctx, id, desired, prune, change.clone(), live));
    }
    let results = future::join_all(writes).await;
    let mut changed = 0;
    for result in results {
        changed += usize::from(result?);
    }
    Ok(changed)
}

/// One JSON Patch guarded by a `test` of the resourceVersion; on a conflict the node is read
/// again and its change planned again. Returns whether the node was written.
async fn patch_node(
    ctx: &GitopsContext,
    id: &str,
    desired: &Desired,
    prune: bool,
    mut change: plan::NodeChange,
    mut live: LiveNode,
) -> Result<bool, Error> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let mut attempt = 0;
    loop {
        attempt += 1;
        let patch: json_patch::Patch = serde_json::from_value(plan::json_patch(&change, &live))
            .map_err(|e| Error::Api {
                action: "building a node patch",
                source: kube::Error::SerdeError(e),
            })?;
        ctx.metrics.reconcilers.write(CONTROLLER, "node");
        let params = PatchParams::apply(FIELD_MANAGER);
        let params = PatchParams {
            force: false,
            ..params
        };
        match api
            .patch(&change.node, &params, &Patch::Json::<()>(patch))
            .await
        {
            Ok(_) => {
                ctx.metrics.gitops.node_writes.inc();
                return Ok(true);
            }
            Err(source) if is_stale_write(&source) && attempt < NODE_PATCH_ATTEMPTS => {
                ctx.metrics.gitops.node_conflicts.inc();
                let Some(fresh) = api
                    .get_opt(&change.node)
                    .await
                    .map_err(|source| Error::Api {
                        action: "reading a node after a conflict",
                        source,
                    })?
                else {
                    return Ok(false);
                };
                live = live_node(&fresh);
                let replanned = plan::plan(
                    id,
                    &desired.node_configs,
                    std::slice::from_ref(&live),
                    prune,
                )?;
                match replanned.changes.into_iter().next() {
                    Some(next) => change = next,
                    None => return Ok(false),
                }
            }
            Err(source) => {
                return Err(Error::Api {
                    action: "patching a node",
                    source,
                });
            }
        }
    }
}

/// The QuotaPolicies (in the GitSync's namespace) and NodeOperations that carry an ownership
/// label, from the watch caches; objects being deleted are left out (their finalizer is still
/// running).
fn labelled_objects(ctx: &GitopsContext, namespace: &str) -> Vec<LiveObject> {
    let ours = |labels: &Option<std::collections::BTreeMap<String, String>>| {
        labels.as_ref().is_some_and(|l| l.contains_key(OWNER_LABEL))
    };
    let mut out = Vec::new();
    for quota in ctx.quotas.state() {
        if ours(&quota.metadata.labels)
            && quota.namespace().as_deref() == Some(namespace)
            && quota.metadata.deletion_timestamp.is_none()
        {
            out.push(LiveObject {
                kind: ObjectKind::QuotaPolicy,
                name: quota.name_any(),
                labels: quota.labels().clone(),
                spec: serde_json::to_value(&quota.spec).unwrap_or_default(),
            });
        }
    }
    for operation in ctx.operations.state() {
        if ours(&operation.metadata.labels) && operation.metadata.deletion_timestamp.is_none() {
            out.push(LiveObject {
                kind: ObjectKind::NodeOperation,
                name: operation.name_any(),
                labels: operation.labels().clone(),
                spec: serde_json::to_value(&operation.spec).unwrap_or_default(),
            });
        }
    }
    for flag in ctx.flags.state() {
        if ours(&flag.metadata.labels) && flag.metadata.deletion_timestamp.is_none() {
            let spec = serde_json::to_value(&flag.spec).unwrap_or_default();
            out.push(LiveObject {
                kind: ObjectKind::FeatureFlag,
                name: flag.name_any(),
                labels: flag.labels().clone(),
                spec: manifest::git_managed_spec(ObjectKind::FeatureFlag, &spec),
            });
        }
    }
    out
}

fn object_failed(action: &str, change: &ObjectChange, source: kube::Error) -> Error {
    Error::Object {
        action: format!("{action} {}/{}", change.kind, change.name),
        source,
    }
}

/// Applies one owned object; when the stored spec still differs afterwards (server-side apply
/// cannot remove a field another manager set), replaces the part Git manages.
async fn apply_object<K>(
    api: &Api<K>,
    change: &ObjectChange,
    spec: &serde_json::Value,
    body: &serde_json::Value,
    replace: json_patch::Patch,
) -> Result<(), Error>
where
    K: Resource
        + kube::core::object::HasSpec
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::Spec: serde::Serialize,
{
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let stored = api
        .patch(&change.name, &params, &Patch::Apply(body))
        .await
        .map_err(|e| object_failed("applying", change, e))?;
    let stored = serde_json::to_value(stored.spec())
        .ok()
        .map(|s| manifest::git_managed_spec(change.kind, &s));
    if stored.as_ref() != Some(spec) {
        api.patch(
            &change.name,
            &PatchParams::default(),
            &Patch::Json::<()>(replace),
        )
        .await
        .map_err(|e| object_failed("replacing the spec of", change, e))?;
    }
    Ok(())
}

/// Creates or updates (server-side apply, forced, with our field manager) and deletes the
/// owned objects of the plan; returns how many were written.
async fn apply_objects(
    ctx: &GitopsContext,
    id: &str,
    namespace: &str,
    desired: &Desired,
    changes: &[ObjectChange],
) -> Result<usize, Error> {
    let quotas: Api<QuotaPolicy> = Api::namespaced(ctx.client.clone(), namespace);
    let operations: Api<NodeOperation> = Api::all(ctx.client.clone());
    let flags: Api<FeatureFlag> = Api::all(ctx.client.clone());
    let failed = |action: &'static str| move |source| Error::Api { action, source };
    for change in changes {
        ctx.metrics
            .reconcilers
            .write(CONTROLLER, change.kind.as_str());
        if change.action == ObjectAction::Delete {
            let result = match change.kind {
                ObjectKind::QuotaPolicy => quotas
                    .delete(&change.name, &Default::default())
                    .await
                    .map(|_| ()),
                ObjectKind::NodeOperation => operations
                    .delete(&change.name, &Default::default())
                    .await
                    .map(|_| ()),
                ObjectKind::FeatureFlag => {
                    // Deleting the object would take an active override with it: keep the
                    // flag until the override ends (the next sync after that prunes it).
                    let live = ctx
                        .flags
                        .state()
                        .into_iter()
                        .find(|f| f.name_any() == change.name);
                    let overridden = live.is_some_and(|f| {
                        crate::ownership::effective(&f.spec, Timestamp::now()).source
                            == crate::ownership::Source::Override
                    });
                    if overridden {
                        info!(gitsync = %id, name = %change.name, "flag removed from Git keeps its active override; pruning after it ends");
                        continue;
                    }
                    flags
                        .delete(&change.name, &Default::default())
                        .await
                        .map(|_| ())
                }
            };
            match result {
                Ok(()) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(source) => return Err(object_failed("deleting", change, source)),
            }
            info!(gitsync = %id, kind = %change.kind, name = %change.name, "pruned");
            continue;
        }
        let Some(object) = desired
            .objects
            .iter()
            .find(|o| o.kind == change.kind && o.name == change.name)
        else {
            continue;
        };
        let mut labels = object.labels.clone();
        labels.insert(OWNER_LABEL.to_string(), owner_value(id));
        let mut metadata = serde_json::json!({"name": object.name, "labels": labels});
        if object.kind == ObjectKind::QuotaPolicy {
            metadata["namespace"] = namespace.into();
        }
        let body = serde_json::json!({
            "apiVersion": manifest::API_VERSION,
            "kind": object.kind.as_str(),
            "metadata": metadata,
            "spec": object.spec,
        });
        let replace = match object.kind {
            // Only the baseline: the override belongs to the API.
            ObjectKind::FeatureFlag => serde_json::json!([
                {"op": "replace", "path": "/spec/mode", "value": object.spec.get("mode")},
                {"op": "replace", "path": "/spec/percent", "value": object.spec.get("percent")},
            ]),
            _ => serde_json::json!([{"op": "replace", "path": "/spec", "value": object.spec}]),
        };
        let replace: json_patch::Patch = serde_json::from_value(replace)
            .map_err(|e| failed("building an object patch")(kube::Error::SerdeError(e)))?;
        match object.kind {
            ObjectKind::QuotaPolicy => {
                apply_object(&quotas, change, &object.spec, &body, replace).await?
            }
            ObjectKind::NodeOperation => {
                apply_object(&operations, change, &object.spec, &body, replace).await?
            }
            ObjectKind::FeatureFlag => {
                apply_object(&flags, change, &object.spec, &body, replace).await?
            }
        }
        info!(gitsync = %id, kind = %change.kind, name = %change.name, "applied");
    }
    Ok(changes.len())
}

fn set_condition(
    status: &mut GitSyncStatus,
    type_: &str,
    value: bool,
    reason: &str,
    message: &str,
) {
    let value = if value { "True" } else { "False" };
    let existing = status.conditions.iter_mut().find(|c| c.type_ == type_);
    match existing {
        Some(c) if c.status == value && c.reason == reason && c.message == message => {}
        Some(c) => {
            if c.status != value {
                c.last_transition_time = Some(Time(Timestamp::now()));
            }
            c.status = value.into();
            c.reason = reason.into();
            c.message = message.into();
        }
        None => status.conditions.push(Condition {
            type_: type_.into(),
            status: value.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: Some(Time(Timestamp::now())),
            observed_generation: None,
        }),
    }
}

fn remove_condition(status: &mut GitSyncStatus, type_: &str) {
    status.conditions.retain(|c| c.type_ != type_);
}

/// Writes status only when it differs from what the object carries.
async fn write_status(
    ctx: &GitopsContext,
    sync: &GitSync,
    namespace: &str,
    current: &GitSyncStatus,
    status: GitSyncStatus,
) -> Result<(), Error> {
    if &status == current {
        return Ok(());
    }
    ctx.metrics.reconcilers.write(CONTROLLER, "gitsync_status");
    let api: Api<GitSync> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = serde_json::json!({"status": status_patch(&status)});
    api.patch_status(
        &sync.name_any(),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await
    .map_err(|source| Error::Api {
        action: "writing GitSync status",
        source,
    })?;
    Ok(())
}

/// Every field of `GitSyncStatus` as written; absent ones are patched to `null`.
const STATUS_FIELDS: &[&str] = &[
    "lastFetchedCommit",
    "lastFetchTime",
    "lastAppliedCommit",
    "lastAppliedTime",
    "rejected",
    "inventory",
    "unmatched",
    "conditions",
    "observedGeneration",
];

/// A merge patch that sets the whole status: fields that are empty are set to `null`, since a
/// merge patch that merely omits them would leave them in place (and the cached object we
/// compared with may be older than the stored one).
fn status_patch(status: &GitSyncStatus) -> serde_json::Value {
    let mut patch = serde_json::to_value(status).unwrap_or_default();
    if let Some(patch) = patch.as_object_mut() {
        for key in STATUS_FIELDS {
            patch
                .entry((*key).to_string())
                .or_insert(serde_json::Value::Null);
        }
    }
    patch
}

async fn publish(
    ctx: &GitopsContext,
    sync: &GitSync,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Sync".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &sync.object_ref(&())).await {
        warn!(%error, "could not publish gitsync event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_status_fields_are_removed_by_the_patch() {
        let next = GitSyncStatus {
            last_applied_commit: Some("c2".into()),
            ..GitSyncStatus::default()
        };
        let patch = status_patch(&next);
        assert_eq!(patch["lastAppliedCommit"], "c2");
        assert_eq!(patch["rejected"], serde_json::Value::Null);
        assert_eq!(patch["unmatched"], serde_json::Value::Null);
        // Every field the type writes is listed, so none can be left behind.
        let full = GitSyncStatus {
            last_fetched_commit: Some("c".into()),
            last_fetch_time: Some(Time(Timestamp::now())),
            last_applied_commit: Some("c".into()),
            last_applied_time: Some(Time(Timestamp::now())),
            rejected: Some(Rejection::default()),
            inventory: vec![InventoryEntry::default()],
            unmatched: vec!["u".into()],
            conditions: vec![Condition::default()],
            observed_generation: Some(1),
        };
        let written = serde_json::to_value(&full).unwrap_or_default();
        let mut keys: Vec<&str> = written
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        keys.sort_unstable();
        let mut listed = STATUS_FIELDS.to_vec();
        listed.sort_unstable();
        assert_eq!(keys, listed);
    }

    #[test]
    fn intervals() {
        let cases = [
            ("30s", Some(30)),
            ("5m", Some(300)),
            ("1h", Some(3600)),
            ("0s", None),
            ("5", None),
            ("m", None),
            ("-1m", None),
            ("", None),
        ];
        for (text, seconds) in cases {
            assert_eq!(
                parse_interval(text),
                seconds.map(Duration::from_secs),
                "{text}"
            );
        }
    }
}
