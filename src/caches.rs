//! One watch per kind per process: shared caches that every reconciler, the admission webhooks,
//! the flag index and the status writers read, built once by the process before anything acts.
//!
//! Data model: a [`Shared`] cache is a reflector store plus a broadcast of every object the
//! watch touched (applied or deleted). Consumers subscribe at any time, also late (a replica
//! that becomes leader after its caches loaded): a subscription first yields every object in
//! the store, then the changes. The broadcast never blocks the watch, so caches stay current on
//! followers that run no reconciler; a consumer that falls behind gets the whole store again.
//!
//! Readiness: a store wakes only one waiter ([`Store::wait_until_ready`]), so each cache
//! publishes its first full list on a `watch` channel of its own ([`Shared::loaded`]), and
//! [`Caches::loaded`] once every cache has loaded; any number of tasks may wait on either.

use std::sync::Arc;

use anyhow::anyhow;
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, watch};
use tracing::{debug, info, warn};

use crate::crd::{FeatureFlag, Session, Template};
use crate::session::names::{APP_SESSION, APP_USER_HOME};
use crate::supervisor::SupervisorHandle;

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
}

impl<K: Cached> Clone for Shared<K> {
    fn clone(&self) -> Self {
        Shared {
            store: self.store.clone(),
            changes: self.changes.clone(),
            loaded: self.loaded.clone(),
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
    ) -> Self {
        let (store, writer) = reflector::store();
        let (changes, _) = broadcast::channel(BROADCAST_BUFFER);
        let (loaded_tx, loaded) = watch::channel(false);
        let sender = changes.clone();
        let label = name.to_string();
        supervisor.spawn(format!("watch {name}"), async move {
            // The reflector has applied each event to the store before it is yielded here.
            let stream =
                reflector::reflector(writer, watcher(api, config.any_semantic())).default_backoff();
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(
                        watcher::Event::Apply(object)
                        | watcher::Event::InitApply(object)
                        | watcher::Event::Delete(object),
                    ) => {
                        // No receiver is fine: nobody consumes changes on a follower.
                        let _ = sender.send(Arc::new(object));
                    }
                    Ok(watcher::Event::InitDone) => {
                        loaded_tx.send_replace(true);
                    }
                    Ok(watcher::Event::Init) => {}
                    Err(error) => debug!(cache = %label, %error, "watch error; retrying"),
                }
            }
            Err(anyhow!("the {label} watch ended"))
        });
        Shared {
            store,
            changes,
            loaded,
        }
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

/// A private watch cache plus the stream that keeps it filled (and triggers reconciles), for
/// a consumer whose query no other consumer of the process shares.
pub(crate) type Reflected<K> = (
    Store<K>,
    futures::stream::BoxStream<'static, Result<K, watcher::Error>>,
);

pub(crate) fn reflect<K: Cached>(api: Api<K>, config: watcher::Config) -> Reflected<K> {
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config.any_semantic()))
        .default_backoff()
        .touched_objects()
        .boxed();
    (store, stream)
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
    pub pods: Store<Pod>,
    pub claims: Store<PersistentVolumeClaim>,
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
    /// Home claims (label `app=streamspace-user-home`).
    pub claims: Shared<PersistentVolumeClaim>,
    pub nodes: Shared<Node>,
    pub flags: Shared<FeatureFlag>,
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
        let caches = Caches {
            sessions: Shared::start(
                supervisor,
                "sessions",
                scoped(client, namespace),
                watcher::Config::default(),
            ),
            templates: Shared::start(
                supervisor,
                "templates",
                scoped(client, namespace),
                watcher::Config::default(),
            ),
            deployments: Shared::start(
                supervisor,
                "deployments",
                scoped(client, namespace),
                session_children.clone(),
            ),
            services: Shared::start(
                supervisor,
                "services",
                scoped(client, namespace),
                session_children.clone(),
            ),
            ingresses: Shared::start(
                supervisor,
                "ingresses",
                scoped(client, namespace),
                session_children.clone(),
            ),
            pods: Shared::start(
                supervisor,
                "pods",
                scoped(client, namespace),
                session_children,
            ),
            claims: Shared::start(
                supervisor,
                "home claims",
                scoped(client, namespace),
                watcher::Config::default().labels(&format!("app={APP_USER_HOME}")),
            ),
            nodes: Shared::start(
                supervisor,
                "nodes",
                Api::all(client.clone()),
                watcher::Config::default(),
            ),
            flags: Shared::start(
                supervisor,
                "feature flags",
                Api::all(client.clone()),
                watcher::Config::default(),
            ),
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
            pods: self.pods.store(),
            claims: self.claims.store(),
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
}
