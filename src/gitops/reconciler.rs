//! The sync engine's I/O shell: fetch -> parse and validate -> overlays -> plan -> apply ->
//! status, for each `GitSync`, on its interval, on a verified webhook, and on every Node
//! change (so drift is corrected within seconds and new nodes get their labels).
//!
//! Only the commit in force (the last one that validated) is ever applied; a rejected commit
//! changes nothing on the nodes and is reported in status. Between fetches the desired state
//! of the commit in force is kept in memory; after a restart it is read again from the cache
//! (`status.lastAppliedCommit`), and the inventory is read from the nodes themselves.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::{Node, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use tokio::sync::watch;
use tracing::{info, warn};

use super::documents;
use super::lifecycle::{self, Gate};
use super::manifest::{Desired, ManifestError, OWNER_LABEL, owner_value};
use super::nodes::{self, apply, plan_against_cache};
use super::objects::apply_objects;
use super::outcome::{self, LastFetch, set_condition};
use super::plan::Plan;
use super::repo::{self, Credentials, FetchRequest, RepoError};
use super::status::{publish, reject, write_status};
use crate::FIELD_MANAGER;
use crate::api_status::KubeFailure;
use crate::backoff::FailureBackoff;
use crate::caches::{Shared, reflect, scoped};
use crate::crd::{FeatureFlag, GitSync, GitSyncStatus, NodeOperation, QuotaPolicy};
use crate::metrics::SharedMetrics;

pub(crate) use super::context::sync_id;
pub use super::context::{CONTROLLER, Error, GitopsContext, GitopsSettings};
use super::context::{Memory, memory, remember};
use crate::backoff::ReconcileError;

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
    // Owned objects are watched too, so a hand edit or deletion is corrected at once.
    let owned = watcher::Config::default().labels(OWNER_LABEL);
    let (quotas, quota_stream) = reflect(scoped::<QuotaPolicy>(&client, namespace), owned.clone());
    let (operations, operation_stream) = reflect(Api::<NodeOperation>::all(client.clone()), owned);
    let (loaded_tx, nodes_loaded) = watch::channel(false);
    let ready = loaded(shared, (&quotas, &operations), loaded_tx);
    let ctx = Arc::new(GitopsContext {
        client: client.clone(),
        recorder: recorder(&client),
        metrics,
        settings,
        nodes: shared_nodes.store(),
        node_writes: shared_nodes.writes(),
        quotas,
        operations,
        flags: shared_flags.store(),
        nodes_loaded,
        memory: Mutex::default(),
        backoff: FailureBackoff::default(),
    });
    let syncs = scoped::<GitSync>(&client, namespace);
    let sync_controller = Controller::new(syncs, watcher::Config::default().any_semantic());
    let owner = owner_of(sync_controller.store());
    let every_sync = every_sync(sync_controller.store());
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
        .watches_shared_stream(shared_nodes.subscribe(), every_sync)
        .watches_stream(quota_stream, quota_owner)
        .watches_stream(operation_stream, operation_owner)
        .watches_shared_stream(shared_flags.subscribe(), flag_owner)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| future::ready(()));
    (run, ready)
}

/// Resolves (and tells `loaded`) once the shared node and flag caches and the two caches of
/// owned objects have loaded.
fn loaded(
    (nodes, flags): (&Shared<Node>, &Shared<FeatureFlag>),
    (quotas, operations): (&Store<QuotaPolicy>, &Store<NodeOperation>),
    loaded: watch::Sender<bool>,
) -> impl Future<Output = bool> + Send + use<> {
    let mut nodes_loaded = nodes.loaded();
    let mut flags_loaded = flags.loaded();
    let (quotas, operations) = (quotas.clone(), operations.clone());
    async move {
        // Shared stores are awaited through their `loaded` channels (a store wakes one
        // waiter only); the two private ones have no other waiter.
        let done = nodes_loaded.wait_for(|l| *l).await.is_ok()
            && flags_loaded.wait_for(|l| *l).await.is_ok()
            && quotas.wait_until_ready().await.is_ok()
            && operations.wait_until_ready().await.is_ok();
        let _ = loaded.send(done);
        done
    }
}

fn recorder(client: &Client) -> Recorder {
    Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    )
}

/// Every node change may concern every GitSync: drift, or a node a selector now matches.
fn every_sync(store: Store<GitSync>) -> impl Fn(Arc<Node>) -> Vec<ObjectRef<GitSync>> + Clone {
    move |_| {
        store
            .state()
            .iter()
            .map(|s| ObjectRef::from_obj(s.as_ref()))
            .collect()
    }
}

/// An owned object concerns the GitSync its ownership label names.
fn owner_of(
    store: Store<GitSync>,
) -> impl Fn(Option<&BTreeMap<String, String>>) -> Vec<ObjectRef<GitSync>> + Clone {
    move |labels| {
        let value = labels.and_then(|l| l.get(OWNER_LABEL)).cloned();
        store
            .state()
            .iter()
            .filter(|s| Some(owner_value(&sync_id(s))) == value)
            .map(|s| ObjectRef::from_obj(s.as_ref()))
            .collect()
    }
}

pub async fn reconcile(sync: Arc<GitSync>, ctx: Arc<GitopsContext>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcilers.start(CONTROLLER);
    crate::caches::wait_loaded(&ctx.nodes_loaded).await?;
    let namespace = sync.namespace().ok_or(Error::NoNamespace)?;
    let Some(sync) = read_fresh(&ctx, &sync, &namespace).await? else {
        return Ok(Action::await_change());
    };
    if let Gate::Done(action) = lifecycle::gate(&ctx, &sync, &namespace).await? {
        return Ok(action);
    }
    sync_pass(&ctx, &sync, &namespace).await
}

/// Node events reconcile often, sometimes before our last status write reached the watch
/// cache: read the object itself, so status is always computed from what is stored. A
/// GitSync that is gone is forgotten.
async fn read_fresh(
    ctx: &GitopsContext,
    sync: &GitSync,
    namespace: &str,
) -> Result<Option<GitSync>, Error> {
    let fresh = Api::<GitSync>::namespaced(ctx.client.clone(), namespace)
        .get_opt(&sync.name_any())
        .await
        .map_err(KubeFailure::during("reading the GitSync"))?;
    if fresh.is_none() {
        lifecycle::forget(ctx, namespace, &sync.name_any(), None).await;
    }
    Ok(fresh)
}

/// One pass over a live GitSync: fetch when due, apply the commit in force, write status. A
/// failed fetch is retried with backoff; the commit in force still corrects drift.
async fn sync_pass(ctx: &GitopsContext, sync: &GitSync, namespace: &str) -> Result<Action, Error> {
    let id = sync_id(sync);
    let interval =
        parse_interval(&sync.spec.interval).ok_or(Error::Interval(sync.spec.interval.clone()))?;
    let current = sync.status.clone().unwrap_or_default();
    let (started, remembered) = (Instant::now(), memory(ctx, &id));
    let request = super::sync_request::requested(sync).map(str::to_string);
    let generation = sync.meta().generation;
    let last = remembered.as_ref().map(|m| LastFetch {
        generation: m.generation,
        since: m.fetched_at.elapsed(),
        handled_request: m.handled_request.as_deref(),
    });
    let due = outcome::fetch_due(last, generation, request.as_deref(), interval);
    let mut status = current.clone();
    status.observed_generation = generation;
    let (mut memory, fetch_failure) = match (due, remembered) {
        (false, Some(m)) => (m, None),
        (_, remembered) => {
            fetch_and_load(ctx, sync, namespace, &id, remembered, &mut status).await?
        }
    };
    memory.generation = generation;
    memory.handled_request = request;
    let Some((commit, desired)) = memory.good.clone() else {
        // Nothing valid yet: the rejection or the fetch error is in status.
        outcome::nothing_in_force(&mut status, memory.fetch_error.as_deref(), Timestamp::now());
        remember(ctx, &id, memory);
        write_status(ctx, sync, namespace, &current, status).await?;
        return match fetch_failure {
            Some(error) => Err(error),
            None => Ok(Action::requeue(interval)),
        };
    };
    let applied = plan_and_apply(ctx, sync, &id, namespace, &desired, &commit, &mut status);
    let applied = match applied.await {
        Ok(done) => done,
        Err(error) => {
            remember(ctx, &id, memory);
            write_status(ctx, sync, namespace, &current, status).await?;
            return Err(error);
        }
    };
    let fetch_error = memory.fetch_error.as_deref();
    report_applied(ctx, sync, &id, &mut status, &commit, &applied, fetch_error).await;
    remember(ctx, &id, memory.clone());
    write_status(ctx, sync, namespace, &current, status).await?;
    let seconds = started.elapsed().as_secs_f64();
    ctx.metrics.gitops.sync_duration.observe(seconds);
    if let Some(error) = fetch_failure {
        return Err(error);
    }
    ctx.backoff.succeeded(&id);
    let since_fetch = memory.fetched_at.elapsed();
    Ok(Action::requeue(outcome::requeue_after(
        interval,
        since_fetch,
    )))
}

/// Status after an apply, the time-of-apply metric when the commit is new, and an `Applied`
/// Event when something changed or the commit is new.
async fn report_applied(
    ctx: &GitopsContext,
    sync: &GitSync,
    id: &str,
    status: &mut GitSyncStatus,
    commit: &str,
    (plan, changed, objects_changed): &(Plan, usize, usize),
    fetch_error: Option<&str>,
) {
    let now = Timestamp::now();
    let newly_applied = outcome::applied(status, commit, plan, fetch_error, now);
    if newly_applied {
        let label = super::metrics::SyncLabel {
            gitsync: id.to_string(),
        };
        let last_applied = &ctx.metrics.gitops.last_applied;
        last_applied.get_or_create(&label).set(now.as_second());
    }
    if *changed > 0 || newly_applied {
        let unmatched = plan.unmatched.len();
        let note = outcome::applied_note(commit, *changed, *objects_changed, unmatched);
        info!(gitsync = %id, %commit, changed, "applied");
        publish(ctx, sync, EventType::Normal, "Applied", note).await;
    }
}

/// Plans the commit in force against the caches and applies it: node changes, then whole
/// objects. Returns the plan and how many nodes and objects changed; on failure, `status` says
/// why (a conflict in the plan rejects the commit; a refused object is `Ready=False`).
async fn plan_and_apply(
    ctx: &GitopsContext,
    sync: &GitSync,
    id: &str,
    namespace: &str,
    desired: &Desired,
    commit: &str,
    status: &mut GitSyncStatus,
) -> Result<(Plan, usize, usize), Error> {
    let record = nodes::record(&sync.status.clone().unwrap_or_default());
    let prune = sync.spec.prune;
    let planned = match plan_against_cache(ctx, id, namespace, desired, &record, prune) {
        Ok(planned) => planned,
        Err(error) => {
            let reason = error.to_string();
            reject(ctx, sync, status, commit, "", &reason, error.metric_label()).await;
            return Err(error.into());
        }
    };
    let nodes_changed = apply(ctx, id, desired, &record, prune, &planned).await?;
    let plan = planned.plan;
    match apply_objects(ctx, id, namespace, desired, &plan.objects).await {
        Ok(objects) => Ok((plan, nodes_changed + objects, objects)),
        Err(error) => {
            // Say which object failed (an admission webhook may refuse it), then retry.
            let reason = match error {
                Error::NotOurs { .. } => "Conflict",
                _ => "ApplyFailed",
            };
            let message = error.to_string();
            set_condition(status, "Ready", false, reason, &message, Timestamp::now());
            Err(error)
        }
    }
}

pub fn error_policy(sync: Arc<GitSync>, error: &Error, ctx: Arc<GitopsContext>) -> Action {
    ctx.metrics.gitops.failure(error.metric_label());
    let metrics = &ctx.metrics.reconcilers;
    let delay = ctx
        .backoff
        .failed_with(metrics, CONTROLLER, sync_id(&sync), error);
    warn!(gitsync = %sync_id(&sync), %error, retry_in = ?delay, "gitsync reconcile failed");
    Action::requeue(delay)
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
    if let Some(old) = remembered.as_ref().map(|m| &m.dir).filter(|d| **d != dir) {
        // The URL changed: the old clone is of no use any more.
        lifecycle::remove_clone(old.clone()).await;
    }
    lifecycle::load_hook_key(ctx, sync, namespace).await;
    let fetched = match credentials(ctx, sync, namespace).await {
        Ok(credentials) => repo::fetch(FetchRequest {
            url: sync.spec.url.clone(),
            branch: sync.spec.branch.clone(),
            dir: dir.clone(),
            credentials,
            timeout: ctx.settings.fetch_timeout,
            max_bytes: ctx.settings.rules.limits.max_fetch_bytes,
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
                && let Ok(Ok(desired)) = load(ctx, &dir, &previous, sync).await
            {
                good = Some((previous, Arc::new(desired)));
            }
            let memory = Memory {
                dir,
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
        if let Ok(Ok(desired)) = load(ctx, &dir, &previous, sync).await {
            good = Some((previous, Arc::new(desired)));
        }
    }
    if good.as_ref().map(|(c, _)| c) != Some(&commit) {
        match load(ctx, &dir, &commit, sync).await? {
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
        dir,
        generation: sync.meta().generation,
        fetched_at: Instant::now(),
        fetch_error: None,
        good,
        handled_request: None,
    };
    Ok((memory, None))
}

/// Reads and validates one commit under the commit limits, off the async runtime and under
/// the parse deadline, so a hostile commit cannot stall the webhooks served by this process.
async fn load(
    ctx: &GitopsContext,
    dir: &std::path::Path,
    commit: &str,
    sync: &GitSync,
) -> Result<Result<Desired, Vec<ManifestError>>, Error> {
    let rules = ctx.settings.rules.clone();
    let base = sync.spec.path.clone().unwrap_or_default();
    let overlay = sync.spec.overlay.clone();
    let read = repo::read_commit_below(
        dir.to_path_buf(),
        commit.to_string(),
        base.clone(),
        rules.limits.clone(),
    )
    .await;
    let files = match read {
        Err(RepoError::Limit(reason)) => {
            return Ok(Err(vec![ManifestError::TooLarge {
                origin: None,
                reason,
            }]));
        }
        other => other?,
    };
    let deadline = rules.limits.parse_deadline;
    let task = tokio::task::spawn_blocking(move || {
        documents::load(&files, &base, overlay.as_deref(), &rules)
    });
    match tokio::time::timeout(deadline + Duration::from_secs(1), task).await {
        Ok(Ok(result)) => Ok(result),
        Ok(Err(join)) => Err(Error::Repo(RepoError::Task(join.to_string()))),
        Err(_) => Err(Error::ParseDeadline(deadline)),
    }
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
        .map_err(KubeFailure::during("reading the credentials Secret"))?
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

#[cfg(test)]
mod tests {
    use super::*;

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
