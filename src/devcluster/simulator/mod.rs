//! A node simulator in the spirit of KWOK: fake nodes, plus the parts of kube-scheduler and the
//! kubelet that a controller test needs.
//!
//! * **Nodes** — the configured nodes are registered (created if missing, never deleted) with
//!   generous capacity and `Ready=True`, and heartbeat every [`SimulatorConfig::heartbeat_interval`].
//! * **Scheduling** — pending pods without `spec.nodeName` (and served by the default scheduler)
//!   are bound round robin to a simulated node that fits (cordon, taints/tolerations,
//!   `nodeSelector`, required node affinity, pod capacity).
//! * **Kubelet** — pods on a simulated node that are not `Running` are reported running and
//!   ready; terminating pods on a simulated node are deleted with grace period 0. Pods on other
//!   nodes are left alone.
//! * **Adopted nodes** — nodes created by someone else (a test) with the label
//!   [`ADOPTED_NODE_LABEL`]`=true` get the kubelet part too (pods bound to them run, terminating
//!   ones are finished), but unbound pods are only scheduled onto them when the pod's
//!   `nodeSelector` asks for that label, so tests that cordon, taint or drain their own nodes
//!   never disturb pods of other tests. Their status is not heartbeated.
//! * **Volumes** (optional) — see [`SIMULATED_VOLUME_LABEL`].
//! * **Namespaces** (optional) — pods on simulated nodes are removed as soon as their namespace
//!   starts terminating, so namespace deletion does not wait for kube-controller-manager's
//!   grace-period based requeue.
//!
//! Watch errors are retried with backoff, failed calls are retried on the next event or the
//! periodic resync; nothing in here panics on cluster data.

mod namespaces;
mod nodes;
mod pod_status;
mod pods;
mod scheduling;
mod volumes;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

pub use volumes::SIMULATED_VOLUME_LABEL;

/// Label (value `true`) of nodes created elsewhere that the simulator runs pods on.
pub const ADOPTED_NODE_LABEL: &str = "stream.space/simulated-node";

/// Annotation set on nodes the simulator creates.
pub const SIMULATED_ANNOTATION: &str = "streamspace.dev/simulated-node";

/// What the simulator simulates.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// Names of the simulated nodes.
    pub node_names: Vec<String>,
    /// `cpu` capacity of each node.
    pub node_cpu: String,
    /// `memory` capacity of each node.
    pub node_memory: String,
    /// `pods` capacity of each node.
    pub node_pods: String,
    /// How often node status and leases are refreshed.
    pub heartbeat_interval: Duration,
    /// How often all pods (and claims) are re-examined, retrying failed calls.
    pub resync_interval: Duration,
    /// Whether to provision `hostPath` volumes for class-less pending claims.
    pub provision_volumes: bool,
    /// Whether pods on simulated nodes are removed at once when their namespace is deleted
    /// (otherwise namespace deletion takes about 16 s; see the `namespaces` module).
    pub fast_namespace_deletion: bool,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            node_names: vec!["sim-node-1".into(), "sim-node-2".into()],
            node_cpu: "32".into(),
            node_memory: "128Gi".into(),
            node_pods: "110".into(),
            heartbeat_interval: Duration::from_secs(10),
            resync_interval: Duration::from_secs(5),
            provision_volumes: true,
            fast_namespace_deletion: true,
        }
    }
}

/// Runs the simulator until `shutdown` completes. Nodes are left in place afterwards.
pub async fn run(
    client: kube::Client,
    config: SimulatorConfig,
    shutdown: impl Future<Output = ()>,
) {
    let config = Arc::new(config);
    let mut tasks = JoinSet::new();
    tasks.spawn(nodes::run(client.clone(), config.clone()));
    tasks.spawn(pods::run(client.clone(), config.clone()));
    if config.fast_namespace_deletion {
        tasks.spawn(namespaces::run(client.clone(), config.clone()));
    }
    if config.provision_volumes {
        tasks.spawn(volumes::run(client, config.clone()));
    }
    tokio::select! {
        () = shutdown => {}
        Some(result) = tasks.join_next() => {
            tracing::error!(?result, "a node simulator task ended unexpectedly");
        }
    }
    tasks.shutdown().await;
}

/// A simulator running in a background task; it stops when [`NodeSimulator::stop`] is called or
/// the handle is dropped.
#[derive(Debug)]
pub struct NodeSimulator {
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl NodeSimulator {
    /// Starts the simulator on the current Tokio runtime.
    pub fn spawn(client: kube::Client, config: SimulatorConfig) -> Self {
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(client, config, async move {
            // Both an explicit stop and a dropped handle end the simulator.
            let _ = stopped.await;
        }));
        Self {
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// Stops the simulator and waits for its tasks to end.
    pub async fn stop(mut self) {
        self.shutdown.take();
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::warn!(error = %e, "node simulator task failed");
        }
    }
}

impl Drop for NodeSimulator {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The HTTP status code of an API error response.
fn api_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Whether the error is `404 Not Found`.
use crate::api_status::is_not_found;
