//! Pod lifecycle on simulated nodes: binding (the scheduler's job), reporting `Running` and
//! finishing graceful deletion (the kubelet's jobs).
//!
//! Pods and nodes are mirrored into reflector stores. Every pod event is handled right away;
//! a node event or the periodic resync re-examines all pods, which also retries failed calls.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::pod_status::{self, Addresses};
use super::{SimulatorConfig, api_code, scheduling};

/// The scheduler name the simulator serves (pods naming another scheduler are left alone).
const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// What a pod needs from the simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Nothing.
    None,
    /// Pick a simulated node and bind.
    Bind,
    /// Report the pod as running.
    MarkRunning,
    /// Remove the pod that is terminating on a simulated node.
    FinishDeletion,
}

/// Runs the pod loop until cancelled.
pub(super) async fn run(client: kube::Client, config: Arc<SimulatorConfig>) {
    let (pod_store, pod_writer) = reflector::store();
    let (node_store, node_writer) = reflector::store();
    let pod_events = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(pod_writer)
        .applied_objects();
    let node_events = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(node_writer)
        .applied_objects();
    let mut pod_events = std::pin::pin!(pod_events);
    let mut node_events = std::pin::pin!(node_events);
    let mut ticker = tokio::time::interval(config.resync_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut worker = PodWorker::new(client, config, pod_store, node_store);
    loop {
        tokio::select! {
            Some(event) = pod_events.next() => match event {
                Ok(pod) => worker.handle(&pod).await,
                Err(e) => tracing::debug!(error = %e, "pod watch interrupted, retrying"),
            },
            Some(event) = node_events.next() => match event {
                Ok(node) if worker.is_simulated(&node.name_any()) => worker.resync().await,
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "node watch interrupted, retrying"),
            },
            _ = ticker.tick() => worker.resync().await,
        }
    }
}

/// Whether an action is finished for the pod version it was attempted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// Nothing more to do until the pod changes.
    Done,
    /// Try again on the next node event or resync, even if the pod does not change.
    Retry,
}

/// State of the pod loop.
struct PodWorker {
    client: kube::Client,
    config: Arc<SimulatorConfig>,
    node_names: HashSet<String>,
    pod_store: Store<Pod>,
    node_store: Store<Node>,
    /// uid → resourceVersion last acted upon successfully (skip stale repeats).
    handled: HashMap<String, String>,
    /// Round-robin cursor over fitting nodes.
    next_node: usize,
    /// Pod IPs handed out so far.
    next_ip: u32,
}

impl PodWorker {
    fn new(
        client: kube::Client,
        config: Arc<SimulatorConfig>,
        pod_store: Store<Pod>,
        node_store: Store<Node>,
    ) -> Self {
        Self {
            client,
            node_names: config.node_names.iter().cloned().collect(),
            config,
            pod_store,
            node_store,
            handled: HashMap::new(),
            next_node: 0,
            next_ip: 0,
        }
    }

    /// One of the configured nodes, or an adopted one (see [`super::ADOPTED_NODE_LABEL`]).
    fn is_simulated(&self, node: &str) -> bool {
        self.node_names.contains(node) || self.is_adopted(node)
    }

    fn is_adopted(&self, node: &str) -> bool {
        self.node_store
            .get(&reflector::ObjectRef::new(node))
            .is_some_and(|n| is_adopted(&n))
    }

    /// Re-examines every known pod and forgets pods that are gone.
    async fn resync(&mut self) {
        let pods = self.pod_store.state();
        let live: HashSet<&str> = pods
            .iter()
            .filter_map(|p| p.metadata.uid.as_deref())
            .collect();
        self.handled.retain(|uid, _| live.contains(uid.as_str()));
        for pod in &pods {
            self.handle(pod).await;
        }
    }

    /// Performs whatever the pod needs, unless this version was already handled.
    async fn handle(&mut self, pod: &Pod) {
        let action = decide(pod, |node| self.is_simulated(node));
        let (Some(uid), Some(version)) = (pod.metadata.uid.clone(), pod.resource_version()) else {
            return;
        };
        if action == Action::None || self.handled.get(&uid) == Some(&version) {
            return;
        }
        let result = match action {
            Action::None => Ok(Progress::Done),
            Action::Bind => self.bind(pod).await,
            Action::MarkRunning => self.mark_running(pod).await.map(|()| Progress::Done),
            Action::FinishDeletion => self
                .finish_deletion(pod, &uid)
                .await
                .map(|()| Progress::Done),
        };
        match result {
            Ok(Progress::Done) => {
                self.handled.insert(uid, version);
            }
            Ok(Progress::Retry) => {}
            Err(e) => tracing::warn!(
                pod = %pod_key(pod), ?action, error = %e,
                "simulator action failed; will retry"
            ),
        }
    }

    /// Binds the pod to a fitting simulated node, or marks it unschedulable and asks to be
    /// retried (a node may appear or change later).
    async fn bind(&mut self, pod: &Pod) -> Result<Progress, kube::Error> {
        let Some(node) = self.pick_node(pod) else {
            return self.mark_unschedulable(pod).await.map(|()| Progress::Retry);
        };
        let (namespace, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.clone()),
                ..ObjectReference::default()
            },
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let bound = api
            .create_subresource::<_, serde_json::Value>(
                "binding",
                &name,
                &PostParams::default(),
                &binding,
            )
            .await;
        match bound {
            // Already bound (by us after a stale event, or by someone else) or gone: fine.
            Err(e) if api_code(&e) == Some(409) || api_code(&e) == Some(404) => Ok(Progress::Done),
            Err(e) => Err(e),
            Ok(_) => {
                tracing::debug!(pod = %pod_key(pod), node = %node, "bound pod");
                Ok(Progress::Done)
            }
        }
    }

    /// The next fitting simulated node, round robin.
    fn pick_node(&mut self, pod: &Pod) -> Option<String> {
        let spec = pod.spec.as_ref()?;
        let pods = self.pod_store.state();
        let mut nodes: Vec<Arc<Node>> = self
            .node_store
            .state()
            .into_iter()
            .filter(|n| {
                let name = n.name_any();
                let eligible = self.node_names.contains(&name)
                    || (is_adopted(n) && selects_adopted_nodes(spec));
                eligible && n.metadata.deletion_timestamp.is_none()
            })
            .collect();
        nodes.sort_by_key(|n| n.name_any());
        let fitting: Vec<String> = nodes
            .iter()
            .filter(|n| scheduling::fits(spec, n, pods_on_node(&pods, &n.name_any())))
            .map(|n| n.name_any())
            .collect();
        if fitting.is_empty() {
            return None;
        }
        let choice = fitting[self.next_node % fitting.len()].clone();
        self.next_node = self.next_node.wrapping_add(1);
        Some(choice)
    }

    /// Sets `PodScheduled=False/Unschedulable` (once), as kube-scheduler does.
    async fn mark_unschedulable(&self, pod: &Pod) -> Result<(), kube::Error> {
        if is_marked_unschedulable(pod) {
            return Ok(());
        }
        tracing::debug!(pod = %pod_key(pod), "no simulated node fits");
        let message = format!(
            "0/{} simulated nodes are available for this pod",
            self.node_names.len()
        );
        let patch = json!({ "status": { "conditions": [{
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastTransitionTime": Time(Timestamp::now()),
        }]}});
        self.patch_pod_status(pod, patch).await
    }

    /// Reports the pod as running on its node.
    async fn mark_running(&mut self, pod: &Pod) -> Result<(), kube::Error> {
        let node_name = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or_default();
        let host_ip = self.host_ip(node_name);
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let existing_ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
        let pod_ip = match existing_ip {
            Some(ip) if !ip.is_empty() => ip,
            _ if host_network => host_ip.clone(),
            _ => self.allocate_ip(),
        };
        let addresses = Addresses {
            pod_ip: &pod_ip,
            host_ip: &host_ip,
        };
        let status = pod_status::running(pod, &addresses, &Time(Timestamp::now()));
        self.patch_pod_status(pod, json!({ "status": status }))
            .await?;
        tracing::debug!(pod = %pod_key(pod), node = %node_name, "pod running");
        Ok(())
    }

    /// Deletes a terminating pod immediately, as the kubelet does once containers stopped.
    async fn finish_deletion(&self, pod: &Pod, uid: &str) -> Result<(), kube::Error> {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&pod.name_any(), &params).await {
            Err(e) if api_code(&e) == Some(404) || api_code(&e) == Some(409) => Ok(()),
            Err(e) => Err(e),
            Ok(_) => {
                tracing::debug!(pod = %pod_key(pod), "pod deleted");
                Ok(())
            }
        }
    }

    async fn patch_pod_status(
        &self,
        pod: &Pod,
        patch: serde_json::Value,
    ) -> Result<(), kube::Error> {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        match api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Err(e) if api_code(&e) == Some(404) => Ok(()),
            other => other.map(drop),
        }
    }

    /// The InternalIP of a node (falling back to its position in the configuration).
    fn host_ip(&self, node_name: &str) -> String {
        let from_store = self
            .node_store
            .get(&reflector::ObjectRef::new(node_name))
            .and_then(|node| {
                node.status
                    .as_ref()?
                    .addresses
                    .as_ref()?
                    .iter()
                    .find(|a| a.type_ == "InternalIP")
                    .map(|a| a.address.clone())
            });
        from_store.unwrap_or_else(|| {
            let index = self
                .config
                .node_names
                .iter()
                .position(|n| n == node_name)
                .unwrap_or(0);
            super::nodes::node_ip(index)
        })
    }

    /// A fresh pod IP from `10.244.0.0/16`.
    fn allocate_ip(&mut self) -> String {
        let n = self.next_ip;
        self.next_ip = self.next_ip.wrapping_add(1);
        format!("10.244.{}.{}", (n / 254) % 256, n % 254 + 1)
    }
}

/// Decides what the simulator must do for `pod`; `is_simulated` tells simulated node names.
fn decide(pod: &Pod, is_simulated: impl Fn(&str) -> bool) -> Action {
    let Some(spec) = pod.spec.as_ref() else {
        return Action::None;
    };
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let terminal = matches!(phase, Some("Succeeded" | "Failed"));
    let node = spec.node_name.as_deref().filter(|n| !n.is_empty());
    let on_simulated_node = node.is_some_and(&is_simulated);
    if pod.metadata.deletion_timestamp.is_some() {
        return if on_simulated_node {
            Action::FinishDeletion
        } else {
            Action::None
        };
    }
    let ours = spec
        .scheduler_name
        .as_deref()
        .is_none_or(|s| s.is_empty() || s == DEFAULT_SCHEDULER);
    match node {
        None if ours && !terminal => Action::Bind,
        Some(_) if on_simulated_node && !terminal && phase != Some("Running") => {
            Action::MarkRunning
        }
        _ => Action::None,
    }
}

/// Whether the node carries [`super::ADOPTED_NODE_LABEL`]`=true`.
fn is_adopted(node: &Node) -> bool {
    node.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(super::ADOPTED_NODE_LABEL))
        .is_some_and(|v| v == "true")
}

/// Whether the pod's `nodeSelector` asks for adopted nodes (the only pods bound to them).
fn selects_adopted_nodes(spec: &k8s_openapi::api::core::v1::PodSpec) -> bool {
    spec.node_selector
        .as_ref()
        .and_then(|s| s.get(super::ADOPTED_NODE_LABEL))
        .is_some_and(|v| v == "true")
}

/// Pods on `node` that still occupy it.
fn pods_on_node(pods: &[Arc<Pod>], node: &str) -> usize {
    pods.iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .count()
}

/// Whether `PodScheduled=False/Unschedulable` is already set.
fn is_marked_unschedulable(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
        })
}

fn pod_key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};

    fn pod(node: Option<&str>, phase: Option<&str>, deleting: bool) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some("p".into());
        pod.metadata.uid = Some("u".into());
        if deleting {
            pod.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        }
        pod.spec = Some(PodSpec {
            node_name: node.map(Into::into),
            ..PodSpec::default()
        });
        pod.status = Some(PodStatus {
            phase: phase.map(Into::into),
            ..PodStatus::default()
        });
        pod
    }

    fn sim(node: &str) -> bool {
        node == "sim-node-1"
    }

    #[test]
    fn decisions() {
        let cases = [
            (pod(None, Some("Pending"), false), Action::Bind),
            (pod(None, Some("Failed"), false), Action::None),
            (
                pod(Some("sim-node-1"), Some("Pending"), false),
                Action::MarkRunning,
            ),
            (pod(Some("sim-node-1"), None, false), Action::MarkRunning),
            (
                pod(Some("sim-node-1"), Some("Running"), false),
                Action::None,
            ),
            (
                pod(Some("sim-node-1"), Some("Succeeded"), false),
                Action::None,
            ),
            (pod(Some("real-node"), Some("Pending"), false), Action::None),
            (
                pod(Some("sim-node-1"), Some("Running"), true),
                Action::FinishDeletion,
            ),
            (pod(Some("real-node"), Some("Running"), true), Action::None),
            (pod(None, Some("Pending"), true), Action::None),
        ];
        for (pod, expected) in cases {
            assert_eq!(decide(&pod, sim), expected, "{:?}", pod.spec);
        }
    }

    #[test]
    fn other_schedulers_are_respected() {
        let mut pod = pod(None, Some("Pending"), false);
        if let Some(spec) = pod.spec.as_mut() {
            spec.scheduler_name = Some("volcano".into());
        }
        assert_eq!(decide(&pod, sim), Action::None);
    }

    #[test]
    fn pods_on_node_ignores_finished_pods() {
        let pods = vec![
            Arc::new(pod(Some("a"), Some("Running"), false)),
            Arc::new(pod(Some("a"), Some("Succeeded"), false)),
            Arc::new(pod(Some("b"), Some("Running"), false)),
        ];
        assert_eq!(pods_on_node(&pods, "a"), 1);
    }
}
