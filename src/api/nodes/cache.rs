//! Watch caches of the API process for the node endpoints: every Node, and the pods bound to a
//! node reduced to what a pod count needs (node name and phase), so listing nodes reads no
//! API server and holding every pod costs little memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, PodSpec, PodStatus};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use crate::caches::settled_objects;
use tracing::{info, warn};

pub struct NodeCache {
    nodes: Store<Node>,
    pods: Store<Pod>,
    loaded: Arc<AtomicBool>,
    /// Bumped on every node change the watch reports (and once loaded).
    changes: tokio::sync::watch::Sender<u64>,
}

impl NodeCache {
    /// The caches, and the future that fills them (runs until dropped).
    pub fn start(client: &Client) -> (NodeCache, BoxFuture<'static, ()>) {
        let (nodes, node_writer) = reflector::store();
        let (pods, pod_writer) = reflector::store();
        // Each change is announced once the store shows it (a relist when it is complete).
        let node_watch = settled_objects(
            nodes.clone(),
            reflector::reflector(
                node_writer,
                watcher(
                    Api::<Node>::all(client.clone()),
                    watcher::Config::default().any_semantic(),
                ),
            )
            .default_backoff(),
        );
        let pod_watch = reflector::reflector(
            pod_writer,
            watcher(
                Api::<Pod>::all(client.clone()),
                watcher::Config::default()
                    .any_semantic()
                    .fields("spec.nodeName!="),
            )
            .modify(strip_pod),
        )
        .default_backoff();
        let loaded = Arc::new(AtomicBool::new(false));
        let changes = tokio::sync::watch::Sender::new(0u64);
        let drive = {
            let loaded = loaded.clone();
            let changes = changes.clone();
            let (nodes, pods) = (nodes.clone(), pods.clone());
            async move {
                let on_load = changes.clone();
                let bump = || changes.send_modify(|n| *n = n.wrapping_add(1));
                let drive_nodes = node_watch.for_each(|event| {
                    match event {
                        Ok(_) => bump(),
                        Err(error) => warn!(%error, "node watch failed; retrying"),
                    }
                    futures::future::ready(())
                });
                let drive_pods = pod_watch.for_each(|event| {
                    if let Err(error) = event {
                        warn!(%error, "pod watch failed; retrying");
                    }
                    futures::future::ready(())
                });
                let ready = async move {
                    if nodes.wait_until_ready().await.is_ok()
                        && pods.wait_until_ready().await.is_ok()
                    {
                        loaded.store(true, Ordering::Relaxed);
                        on_load.send_modify(|n| *n = n.wrapping_add(1));
                        info!("node and pod caches loaded");
                    }
                };
                futures::future::join3(drive_nodes, drive_pods, ready).await;
            }
            .boxed()
        };
        (
            NodeCache {
                nodes,
                pods,
                loaded,
                changes,
            },
            drive,
        )
    }

    /// Changes of the node cache (a counter bumped on each).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Both caches had their first full list.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Relaxed)
    }

    pub fn nodes(&self) -> Vec<Arc<Node>> {
        self.nodes.state()
    }

    pub fn node(&self, name: &str) -> Option<Arc<Node>> {
        self.nodes.get(&ObjectRef::new(name))
    }

    pub fn pods(&self) -> Vec<Arc<Pod>> {
        self.pods.state()
    }
}

/// Keeps name, namespace, node and phase: all a pod count needs.
fn strip_pod(pod: &mut Pod) {
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
    pod.metadata.annotations = None;
    pod.metadata.labels = None;
    pod.metadata.managed_fields = None;
    pod.metadata.owner_references = None;
    pod.spec = Some(PodSpec {
        node_name,
        ..PodSpec::default()
    });
    pod.status = Some(PodStatus {
        phase,
        ..PodStatus::default()
    });
}
