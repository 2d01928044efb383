//! One watch per kind per process: shared caches that every reconciler, the admission webhooks,
//! the flag index and the status writers read, built once by the process before anything acts.
//!
//! Data model: a [`Shared`] cache is a reflector store plus a broadcast of every object the
//! watch touched (applied or deleted). Consumers subscribe at any time, also late (a replica
//! that becomes leader after its caches loaded): a subscription first yields every object in
//! the store, then the changes. The broadcast never blocks the watch, so caches stay current on
//! followers that run no reconciler; a consumer that falls behind gets the whole store again.
//! A relist (after the watch lost its place) reaches the store only when it is complete, so its
//! objects are announced then, as the differences it made: a consumer woken by an object always
//! finds that object's version, or its absence, in the store.
//!
//! A cache may also feed a [`LabelIndex`] from the same events (pods by their `session` label,
//! [`Caches::pods_by_session`]): the index is rebuilt from the store after each relist before
//! the cache reports loaded, then follows every applied and deleted object.
//!
//! Readiness: a store wakes only one waiter ([`Store::wait_until_ready`]), so each cache
//! publishes its first full list on a `watch` channel of its own ([`Shared::loaded`]), and
//! [`Caches::loaded`] once every cache has loaded; any number of tasks may wait on either.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::anyhow;
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, watch};
use tracing::{debug, info, warn};

use crate::crd::{FeatureFlag, Session, Template};
use crate::session::names::{APP_SESSION, APP_USER_HOME, SESSION_LABEL};
use crate::supervisor::SupervisorHandle;
use crate::writes::{Deletions, WriteLog};

/// A watch cache closed before it loaded: the process is shutting down.
#[derive(Debug, thiserror::Error)]
#[error("a watch cache closed before it loaded (the controller is shutting down)")]
pub struct CachesClosed;

/// Waits until `loaded` says the caches have their initial lists: a reconciler deciding before
/// that would read existing objects as missing.
pub async fn wait_loaded(loaded: &watch::Receiver<bool>) -> Result<(), CachesClosed> {
    let mut loaded = loaded.clone();
    match loaded.wait_for(|loaded| *loaded).await {
        Ok(_) => Ok(()),
        Err(_) => Err(CachesClosed),
    }
}

pub mod index;
pub mod trim;

pub use index::{LabelIndex, Seen};

/// Changes buffered per cache for slow subscribers before they are resent the whole store.
const BROADCAST_BUFFER: usize = 4096;

/// What a shared cache may hold.
pub trait Cached:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static
{
}

impl<K> Cached for K where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// One watch of kind `K`, shared by every consumer of the process.
pub struct Shared<K: Cached> {
    store: Store<K>,
    changes: broadcast::Sender<Arc<K>>,
    loaded: watch::Receiver<bool>,
    /// This process's writes of this kind that the watch has not delivered yet.
    writes: Arc<WriteLog>,
}

impl<K: Cached> Clone for Shared<K> {
    fn clone(&self) -> Self {
        Shared {
            store: self.store.clone(),
            changes: self.changes.clone(),
            loaded: self.loaded.clone(),
            writes: self.writes.clone(),
        }
    }
}

impl<K: Cached> Shared<K> {
    /// Starts the watch under `supervisor` (task `watch <name>`); it retries with backoff and
    /// ends the process only if the stream itself ends.
    pub fn start(
        supervisor: &SupervisorHandle,
        name: &str,
        api: Api<K>,
        config: watcher::Config,
        trim: fn(&mut K),
    ) -> Self {
        Self::start_indexed(supervisor, name, api, config, trim, None)
    }

    /// [`Self::start`], also keeping `index` equal to the store: rebuilt after each (re)list,
    /// before the cache reports loaded, then fed every applied and deleted object.
    pub fn start_indexed(
        supervisor: &SupervisorHandle,
        name: &str,
        api: Api<K>,
        config: watcher::Config,
        trim: fn(&mut K),
        index: Option<Arc<LabelIndex<K>>>,
    ) -> Self {
        let (store, writer) = reflector::store();
        let (changes, _) = broadcast::channel(BROADCAST_BUFFER);
        let (loaded_tx, loaded) = watch::channel(false);
        let sender = changes.clone();
        let label = name.to_string();
        let writes = Arc::new(WriteLog::default());
        let log = writes.clone();
        let reader = store.clone();
        supervisor.spawn(format!("watch {name}"), async move {
            // The reflector has applied each event to the store before it is yielded here.
            let watch = watcher(api, config.any_semantic()).modify(trim);
            let stream = reflector::reflector(writer, watch).default_backoff();
            let mut stream = std::pin::pin!(stream);
            // The store as it was when the current relist began.
            let mut before_relist: Vec<Arc<K>> = Vec::new();
            while let Some(event) = stream.next().await {
                let (object, seen) = match event {
                    Ok(watcher::Event::Apply(object)) => (object, Seen::Applied),
                    Ok(watcher::Event::InitApply(object)) => (object, Seen::Relisted),
                    Ok(watcher::Event::Delete(object)) => (object, Seen::Deleted),
                    Ok(watcher::Event::InitDone) => {
                        // The store now holds the new list (the reflector swapped it in).
                        let after = reader.state();
                        if let Some(index) = &index {
                            index.reset(after.clone());
                        }
                        loaded_tx.send_replace(true);
                        // Only now can a subscriber read what the relist brought from the
                        // store: announce every difference it made.
                        for object in relist_changes(std::mem::take(&mut before_relist), after) {
                            let _ = sender.send(object);
                        }
                        continue;
                    }
                    Ok(watcher::Event::Init) => {
                        log.relisted();
                        // Unchanged until the relist is done (the reflector buffers it).
                        before_relist = reader.state();
                        continue;
                    }
                    Err(error) => {
                        debug!(cache = %label, %error, "watch error; retrying");
                        continue;
                    }
                };
                let meta = object.meta();
                log.observed(
                    meta.namespace.as_deref(),
                    meta.name.as_deref(),
                    meta.resource_version.as_deref(),
                    seen == Seen::Deleted,
                );
                if seen == Seen::Relisted {
                    // Not in the store (nor the index) before the relist is done; announced
                    // then, so that no subscriber reads the store in between and finds it old.
                    continue;
                }
                // The store's own copy when it holds this version (a deleted object is gone
                // from it), so a change waiting for a slow subscriber costs no second copy.
                let stored = reader
                    .get(&ObjectRef::from_obj(&object))
                    .filter(|s| s.meta().resource_version == object.meta().resource_version);
                let object = stored.unwrap_or_else(|| Arc::new(object));
                if let Some(index) = &index {
                    index.observe(&object, seen);
                }
                // No receiver is fine: nobody consumes changes on a follower.
                let _ = sender.send(object);
            }
            Err(anyhow!("the {label} watch ended"))
        });
        Shared {
            store,
            changes,
            loaded,
            writes,
        }
    }

    /// This process's writes of this kind that the watch has not delivered yet.
    pub fn writes(&self) -> Arc<WriteLog> {
        self.writes.clone()
    }

    /// True once the first full list is in the store; any number of tasks may wait on it
    /// (unlike [`Store::wait_until_ready`], which wakes one waiter only).
    pub fn loaded(&self) -> watch::Receiver<bool> {
        self.loaded.clone()
    }

    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Every object in the store now, then every change (applied or deleted) from now on. A
    /// subscriber that falls more than the buffer behind is sent the whole store again.
    pub fn subscribe(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let receiver = self.changes.subscribe();
        let store = self.store.clone();
        let current = futures::stream::iter(self.store.state());
        let changes =
            futures::stream::unfold((receiver, store), |(mut receiver, store)| async move {
                match receiver.recv().await {
                    Ok(object) => Some((vec![object], (receiver, store))),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        warn!(missed, "cache subscriber fell behind; resending the store");
                        Some((store.state(), (receiver, store)))
                    }
                    Err(broadcast::error::RecvError::Closed) => None,
                }
            })
            .flat_map(futures::stream::iter);
        current.chain(changes)
    }

    async fn wait_loaded(&self) -> bool {
        self.loaded.clone().wait_for(|l| *l).await.is_ok()
    }
}

/// What a relist changed, once the store holds it: every object of `after` that `before` did
/// not hold at the same resourceVersion, then every object of `before` that `after` no longer
/// holds (deleted while the watch was down; a subscriber finds it gone from the store).
fn relist_changes<K: Cached>(before: Vec<Arc<K>>, after: Vec<Arc<K>>) -> Vec<Arc<K>> {
    let mut gone: HashMap<ObjectRef<K>, Arc<K>> = before
        .into_iter()
        .map(|object| (ObjectRef::from_obj(&*object), object))
        .collect();
    let mut changed = Vec::new();
    for object in after {
        match gone.remove(&ObjectRef::from_obj(&*object)) {
            Some(old) if old.meta().resource_version == object.meta().resource_version => {}
            _ => changed.push(object),
        }
    }
    changed.extend(gone.into_values());
    changed
}

/// `changes` without the objects whose `digest` equals the digest of the same object passed
/// last: a change of fields the consumer does not read starts no reconcile. `ignored` is called
/// for each object dropped. An object no longer in `store` (deleted) always passes.
pub fn relevant_changes<K: Cached>(
    changes: impl Stream<Item = Arc<K>> + Send + 'static,
    store: Store<K>,
    digest: impl Fn(&K) -> u64 + Send + 'static,
    ignored: impl Fn() + Send + 'static,
) -> impl Stream<Item = Arc<K>> + Send + 'static {
    let mut passed: HashMap<(String, String), u64> = HashMap::new();
    changes.filter(move |object| {
        let meta = object.meta();
        let key = (
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        );
        let keep = if store.get(&ObjectRef::from_obj(object.as_ref())).is_none() {
            passed.remove(&key);
            true
        } else {
            let digest = digest(object);
            passed.insert(key, digest) != Some(digest)
        };
        if !keep {
            ignored();
        }
        futures::future::ready(keep)
    })
}

/// A private watch cache plus the stream that keeps it filled (and triggers reconciles), for
/// a consumer whose query no other consumer of the process shares.
pub(crate) type Reflected<K> = (
    Store<K>,
    futures::stream::BoxStream<'static, Result<K, watcher::Error>>,
);

pub(crate) fn reflect<K: Cached>(api: Api<K>, config: watcher::Config) -> Reflected<K> {
    let (store, writer) = reflector::store();
    let events =
        reflector::reflector(writer, watcher(api, config.any_semantic())).default_backoff();
    let stream = settled_objects(store.clone(), events);
    (store, stream)
}

/// The objects a reflector's `events` touched (applied or deleted), each yielded only once
/// `store` shows it. A (re)list reaches the store only when complete, so its objects are
/// yielded then, as the differences it made ([`relist_changes`]): unlike kube's
/// `touched_objects`, a consumer woken by an object never reads the store before the object.
pub(crate) fn settled_objects<K: Cached>(
    store: Store<K>,
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> futures::stream::BoxStream<'static, Result<K, watcher::Error>> {
    events
        .scan(Vec::new(), move |before_relist, event| {
            let touched: Vec<Result<Arc<K>, watcher::Error>> = match event {
                Ok(watcher::Event::Apply(object) | watcher::Event::Delete(object)) => {
                    vec![Ok(Arc::new(object))]
                }
                Ok(watcher::Event::Init) => {
                    *before_relist = store.state();
                    Vec::new()
                }
                Ok(watcher::Event::InitApply(_)) => Vec::new(),
                Ok(watcher::Event::InitDone) => {
                    relist_changes(std::mem::take(before_relist), store.state())
                        .into_iter()
                        .map(Ok)
                        .collect()
                }
                Err(error) => vec![Err(error)],
            };
            futures::future::ready(Some(futures::stream::iter(touched)))
        })
        .flatten()
        // The store shares its copies: clone one only when the consumer takes it.
        .map(|touched| touched.map(Arc::unwrap_or_clone))
        .boxed()
}

/// An `Api` of `namespace`, or of all namespaces when `None`.
pub fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Watch caches the session reconciler reads instead of the API server.
#[derive(Clone)]
pub struct SessionStores {
    pub templates: Store<Template>,
    pub deployments: Store<Deployment>,
    pub services: Store<Service>,
    pub ingresses: Store<Ingress>,
    /// Pods by their `session` label.
    pub pods: Arc<LabelIndex<Pod>>,
    pub claims: Store<PersistentVolumeClaim>,
    /// The reconciler's writes these caches (and the Session cache) do not show yet.
    pub written: SessionWrites,
}

/// Write logs of the kinds the session reconciler writes ([`WriteLog`]).
#[derive(Clone)]
pub struct SessionWrites {
    /// Status writes, by Session.
    pub sessions: Arc<WriteLog>,
    pub deployments: Arc<WriteLog>,
    pub services: Arc<WriteLog>,
    pub ingresses: Arc<WriteLog>,
    pub claims: Arc<WriteLog>,
    /// Objects the reconciler deleted (the old controller's, on adoption).
    pub deleted: Arc<Deletions>,
}

/// The controller process's caches, one per kind.
#[derive(Clone)]
pub struct Caches {
    pub sessions: Shared<Session>,
    pub templates: Shared<Template>,
    /// Children of sessions (label `app=streamspace-session`).
    pub deployments: Shared<Deployment>,
    pub services: Shared<Service>,
    pub ingresses: Shared<Ingress>,
    pub pods: Shared<Pod>,
    /// The pods of [`Self::pods`] by their `session` label, fed by the same watch.
    pub pods_by_session: Arc<LabelIndex<Pod>>,
    /// Home claims (label `app=streamspace-user-home`).
    pub claims: Shared<PersistentVolumeClaim>,
    pub nodes: Shared<Node>,
    pub flags: Shared<FeatureFlag>,
    /// Deletions of the session reconciler these caches do not show yet.
    deleted: Arc<Deletions>,
    loaded: watch::Receiver<bool>,
}

impl Caches {
    /// Starts every watch under `supervisor`; namespaced kinds are limited to `namespace`.
    pub fn start(
        client: &Client,
        namespace: Option<&str>,
        supervisor: &SupervisorHandle,
    ) -> Caches {
        let session_children = watcher::Config::default().labels(&format!("app={APP_SESSION}"));
        let (loaded_tx, loaded) = watch::channel(false);
        let pods_by_session = Arc::new(LabelIndex::new(SESSION_LABEL));
        let caches = Caches {
            sessions: Shared::start(
                supervisor,
                "sessions",
                scoped(client, namespace),
                watcher::Config::default(),
                trim::bookkeeping,
            ),
            templates: Shared::start(
                supervisor,
                "templates",
                scoped(client, namespace),
                watcher::Config::default(),
                trim::bookkeeping,
            ),
            deployments: Shared::start(
                supervisor,
                "deployments",
                scoped(client, namespace),
                session_children.clone(),
                trim::deployment,
            ),
            services: Shared::start(
                supervisor,
                "services",
                scoped(client, namespace),
                session_children.clone(),
                trim::service,
            ),
            ingresses: Shared::start(
                supervisor,
                "ingresses",
                scoped(client, namespace),
                session_children.clone(),
                trim::ingress,
            ),
            pods: Shared::start_indexed(
                supervisor,
                "pods",
                scoped(client, namespace),
                session_children,
                trim::pod,
                Some(pods_by_session.clone()),
            ),
            pods_by_session,
            claims: Shared::start(
                supervisor,
                "home claims",
                scoped(client, namespace),
                watcher::Config::default().labels(&format!("app={APP_USER_HOME}")),
                trim::bookkeeping,
            ),
            nodes: Shared::start(
                supervisor,
                "nodes",
                Api::all(client.clone()),
                watcher::Config::default(),
                trim::node,
            ),
            flags: Shared::start(
                supervisor,
                "feature flags",
                Api::all(client.clone()),
                watcher::Config::default(),
                trim::bookkeeping,
            ),
            deleted: Arc::default(),
            loaded,
        };
        let all = caches.clone();
        supervisor.spawn_once("caches loaded", async move {
            if all.wait_all().await {
                info!("every watch cache loaded");
                loaded_tx.send_replace(true);
                Ok(())
            } else {
                Err(anyhow!("a watch cache closed before it loaded"))
            }
        });
        caches
    }

    async fn wait_all(&self) -> bool {
        self.sessions.wait_loaded().await
            && self.templates.wait_loaded().await
            && self.deployments.wait_loaded().await
            && self.services.wait_loaded().await
            && self.ingresses.wait_loaded().await
            && self.pods.wait_loaded().await
            && self.claims.wait_loaded().await
            && self.nodes.wait_loaded().await
            && self.flags.wait_loaded().await
    }

    /// True once every cache has its initial list; any number of tasks may wait on it.
    pub fn loaded(&self) -> watch::Receiver<bool> {
        self.loaded.clone()
    }

    /// Resolves once every cache has loaded (false if the process is going down first).
    pub async fn wait_loaded(&self) -> bool {
        self.loaded.clone().wait_for(|l| *l).await.is_ok()
    }

    pub fn session_stores(&self) -> SessionStores {
        SessionStores {
            templates: self.templates.store(),
            deployments: self.deployments.store(),
            services: self.services.store(),
            ingresses: self.ingresses.store(),
            pods: self.pods_by_session.clone(),
            claims: self.claims.store(),
            written: SessionWrites {
                sessions: self.sessions.writes(),
                deployments: self.deployments.writes(),
                services: self.services.writes(),
                ingresses: self.ingresses.writes(),
                claims: self.claims.writes(),
                deleted: self.deleted.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn object(name: &str) -> ConfigMap {
        let mut map = ConfigMap::default();
        map.metadata.name = Some(name.into());
        map.metadata.namespace = Some("ns".into());
        map
    }

    fn names(objects: &[Arc<ConfigMap>]) -> Vec<String> {
        let mut names: Vec<String> = objects
            .iter()
            .filter_map(|o| o.metadata.name.clone())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_late_subscriber_gets_the_store_then_changes_and_the_store_again_when_behind() {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Apply(object("a")));
        let (changes, _) = broadcast::channel(2);
        let shared = Shared {
            store,
            changes: changes.clone(),
            loaded: watch::channel(true).1,
            writes: Arc::default(),
        };
        let mut stream = std::pin::pin!(shared.subscribe());
        let first = stream.next().await.into_iter().collect::<Vec<_>>();
        assert_eq!(names(&first), ["a"], "the store first");

        writer.apply_watcher_event(&watcher::Event::Apply(object("b")));
        let _ = changes.send(Arc::new(object("b")));
        let next = stream.next().await.into_iter().collect::<Vec<_>>();
        assert_eq!(names(&next), ["b"], "then each change");

        // More changes than the buffer holds: the subscriber gets the whole store again.
        for name in ["c", "d", "e"] {
            writer.apply_watcher_event(&watcher::Event::Apply(object(name)));
            let _ = changes.send(Arc::new(object(name)));
        }
        let mut resent = Vec::new();
        for _ in 0..5 {
            resent.extend(stream.next().await);
        }
        assert_eq!(names(&resent), ["a", "b", "c", "d", "e"], "{resent:?}");
    }

    fn versioned(name: &str, version: &str) -> Arc<ConfigMap> {
        let mut map = object(name);
        map.metadata.resource_version = Some(version.into());
        Arc::new(map)
    }

    #[test]
    fn a_relist_announces_what_it_changed_and_what_it_deleted_but_not_what_it_kept() {
        let before = vec![
            versioned("kept", "1"),
            versioned("changed", "2"),
            versioned("deleted", "3"),
        ];
        let after = vec![
            versioned("kept", "1"),
            versioned("changed", "7"),
            versioned("created", "8"),
        ];
        let announced: Vec<(String, String)> = relist_changes(before, after)
            .iter()
            .map(|m| {
                (
                    m.metadata.name.clone().unwrap_or_default(),
                    m.metadata.resource_version.clone().unwrap_or_default(),
                )
            })
            .collect();
        let expected = [("changed", "7"), ("created", "8"), ("deleted", "3")]
            .map(|(n, v)| (n.to_string(), v.to_string()));
        assert_eq!(announced, expected);
        let first_list = relist_changes(Vec::new(), vec![versioned("a", "1")]);
        assert_eq!(
            names(&first_list),
            ["a"],
            "a first list announces everything"
        );
    }

    #[tokio::test]
    async fn settled_objects_yield_a_relist_only_once_the_store_holds_it() {
        let (store, writer) = reflector::store();
        let map = |name: &str, version: &str| (*versioned(name, version)).clone();
        let events = [
            watcher::Event::Init,
            watcher::Event::InitApply(map("kept", "1")),
            watcher::Event::InitApply(map("deleted", "1")),
            watcher::Event::InitDone,
            watcher::Event::Apply(map("created", "2")),
            // The watch lost its place: "deleted" went and "kept" changed meanwhile.
            watcher::Event::Init,
            watcher::Event::InitApply(map("kept", "3")),
            watcher::Event::InitApply(map("created", "2")),
            watcher::Event::InitDone,
        ]
        .map(Ok);
        let events = reflector::reflector(writer, futures::stream::iter(events));
        let reader = store.clone();
        let mut seen: Vec<(String, bool)> = settled_objects(store, events)
            .map(|touched| {
                let touched = touched.map_err(|e| e.to_string())?;
                // What the consumer finds in the store when it is woken by this object.
                let stored = reader.get(&ObjectRef::from_obj(&touched)).is_some_and(|s| {
                    s.metadata.resource_version == touched.metadata.resource_version
                });
                Ok::<_, String>((touched.metadata.name.unwrap_or_default(), stored))
            })
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap_or_default();
        // A list's objects come in the store's order.
        seen.sort();
        let expected = [
            ("created", true),
            ("deleted", false),
            ("deleted", true),
            ("kept", true),
            ("kept", true),
        ]
        .map(|(name, stored)| (name.to_string(), stored));
        assert_eq!(
            seen, expected,
            "the first list (kept, deleted), the create, then what the relist changed (kept \
             anew, deleted gone); never an object before the store holds it"
        );
    }

    #[tokio::test]
    async fn relevant_changes_drop_repeats_of_the_same_digest_but_never_deletes() {
        let (store, mut writer) = reflector::store();
        let with_data = |name: &str, value: &str| {
            let mut map = object(name);
            map.data = Some([("k".to_string(), value.to_string())].into());
            map
        };
        let (a1, a1_again, a2) = (
            with_data("a", "1"),
            with_data("a", "1"),
            with_data("a", "2"),
        );
        for map in [&a1, &a2] {
            writer.apply_watcher_event(&watcher::Event::Apply(map.clone()));
        }
        let deleted = object("gone");
        let ignored = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = ignored.clone();
        let input =
            futures::stream::iter([a1, a1_again, a2, deleted.clone(), deleted].map(Arc::new));
        let digest = |map: &ConfigMap| {
            map.data
                .as_ref()
                .and_then(|d| d.get("k"))
                .map_or(0, |v| v.parse::<u64>().unwrap_or(0))
        };
        let passed: Vec<Arc<ConfigMap>> = relevant_changes(input, store, digest, move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .collect()
        .await;
        let values: Vec<Option<String>> = passed
            .iter()
            .map(|m| m.data.as_ref().and_then(|d| d.get("k").cloned()))
            .collect();
        assert_eq!(
            values,
            [Some("1".into()), Some("2".into()), None, None],
            "the repeat of a=1 is dropped; both events of an object not in the store pass"
        );
        assert_eq!(ignored.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
