//! Registration and heartbeats of the simulated nodes.
//!
//! Each node is created if missing (never deleted), then its status is refreshed every heartbeat
//! interval with a merge patch: capacity, `Ready=True` and friends, addresses and node info. Its
//! lease in `kube-node-lease` is renewed as well, like a kubelet would.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use super::{SimulatorConfig, is_not_found};

/// Namespace of node heartbeat leases.
const LEASE_NAMESPACE: &str = "kube-node-lease";

/// Validity of a node lease, as the kubelet's default.
const LEASE_DURATION_SECONDS: i32 = 40;

/// Kubelet version reported by simulated nodes.
const KUBELET_VERSION: &str = "v1.20.2-simulated";

/// Keeps the configured nodes registered and heartbeating until cancelled.
pub(super) async fn run(client: kube::Client, config: Arc<SimulatorConfig>) {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, LEASE_NAMESPACE);
    let since = Time(Timestamp::now());
    let mut ticker = tokio::time::interval(config.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        for (index, name) in config.node_names.iter().enumerate() {
            if let Err(e) = sync_node(&nodes, &leases, &config, index, name, &since).await {
                tracing::warn!(node = %name, error = %e, "simulated node heartbeat failed");
            }
        }
    }
}

/// Creates the node if needed, refreshes its status and renews its lease.
async fn sync_node(
    nodes: &Api<Node>,
    leases: &Api<Lease>,
    config: &SimulatorConfig,
    index: usize,
    name: &str,
    since: &Time,
) -> Result<(), kube::Error> {
    let status = node_status(config, index, name, since);
    let node = match nodes.get_opt(name).await? {
        Some(node) => node,
        None => {
            let created = nodes
                .create(&PostParams::default(), &new_node(name, status.clone()))
                .await?;
            tracing::info!(node = %name, "registered simulated node");
            created
        }
    };
    let patch = Patch::Merge(json!({ "status": status }));
    nodes
        .patch_status(name, &PatchParams::default(), &patch)
        .await?;
    renew_lease(leases, &node).await
}

/// A new node object with the simulator's labels.
fn new_node(name: &str, status: NodeStatus) -> Node {
    let labels: BTreeMap<String, String> = [
        ("kubernetes.io/hostname", name),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("type", "simulated"),
        ("node.kubernetes.io/instance-type", "simulated"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels),
            annotations: Some([(super::SIMULATED_ANNOTATION.to_owned(), "true".to_owned())].into()),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            provider_id: Some(format!("simulated://{name}")),
            ..NodeSpec::default()
        }),
        status: Some(status),
    }
}

/// The full status a healthy kubelet would report.
fn node_status(config: &SimulatorConfig, index: usize, name: &str, since: &Time) -> NodeStatus {
    let resources: BTreeMap<String, Quantity> = [
        ("cpu", config.node_cpu.as_str()),
        ("memory", config.node_memory.as_str()),
        ("pods", config.node_pods.as_str()),
        ("ephemeral-storage", "1Ti"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Quantity(v.to_owned())))
    .collect();
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        conditions: Some(node_conditions(since)),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: node_ip(index),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: name.to_owned(),
            },
        ]),
        node_info: Some(node_info(name)),
        ..NodeStatus::default()
    }
}

/// `Ready=True` and no pressure, heartbeat now.
fn node_conditions(since: &Time) -> Vec<NodeCondition> {
    let now = Time(Timestamp::now());
    [
        (
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status",
        ),
        (
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        (
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        (
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
    ]
    .into_iter()
    .map(|(type_, status, reason, message)| NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(since.clone()),
    })
    .collect()
}

/// Static node info; ids derive from the name so they are stable across restarts.
fn node_info(name: &str) -> NodeSystemInfo {
    NodeSystemInfo {
        architecture: "amd64".into(),
        boot_id: format!("{name}-boot"),
        container_runtime_version: "simulated://1.0.0".into(),
        kernel_version: "simulated".into(),
        kube_proxy_version: KUBELET_VERSION.into(),
        kubelet_version: KUBELET_VERSION.into(),
        machine_id: format!("{name}-machine"),
        operating_system: "linux".into(),
        os_image: "StreamSpace node simulator".into(),
        system_uuid: format!("{name}-uuid"),
        ..NodeSystemInfo::default()
    }
}

/// The InternalIP of the `index`-th node: `172.31.x.y`.
pub(super) fn node_ip(index: usize) -> String {
    format!("172.31.{}.{}", (index / 250) % 256, index % 250 + 1)
}

/// Creates or renews `kube-node-lease/<node>`. A missing namespace is not an error.
async fn renew_lease(leases: &Api<Lease>, node: &Node) -> Result<(), kube::Error> {
    let Some(name) = node.metadata.name.as_deref() else {
        return Ok(());
    };
    let now = MicroTime(Timestamp::now());
    let result = match leases.get_opt(name).await {
        Ok(Some(_)) => {
            let patch = Patch::Merge(json!({ "spec": {
                "holderIdentity": name,
                "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                "renewTime": now,
            }}));
            leases
                .patch(name, &PatchParams::default(), &patch)
                .await
                .map(drop)
        }
        Ok(None) => leases
            .create(&PostParams::default(), &new_lease(node, name, now))
            .await
            .map(drop),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if is_not_found(&e) => Ok(()),
        other => other,
    }
}

/// A lease owned by its node, as the kubelet creates it.
fn new_lease(node: &Node, name: &str, now: MicroTime) -> Lease {
    let owner = node.metadata.uid.as_ref().map(|uid| OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: name.to_owned(),
        uid: uid.clone(),
        ..OwnerReference::default()
    });
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(LEASE_NAMESPACE.to_owned()),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name.to_owned()),
            lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
            renew_time: Some(now),
            ..LeaseSpec::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ips_are_distinct_and_valid() {
        assert_eq!(node_ip(0), "172.31.0.1");
        assert_eq!(node_ip(249), "172.31.0.250");
        assert_eq!(node_ip(250), "172.31.1.1");
    }

    #[test]
    fn new_node_is_ready_with_capacity() {
        let config = SimulatorConfig::default();
        let since = Time(Timestamp::now());
        let node = new_node("n", node_status(&config, 0, "n", &since));
        let labels = node.metadata.labels.unwrap_or_default();
        assert_eq!(labels.get("type").map(String::as_str), Some("simulated"));
        let status = node.status.unwrap_or_default();
        let ready = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status);
        assert_eq!(ready.as_deref(), Some("True"));
        let pods = status.allocatable.unwrap_or_default().get("pods").cloned();
        assert_eq!(pods, Some(Quantity("110".into())));
    }
}
