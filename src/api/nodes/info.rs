//! What `GET /admin/nodes` answers, built from Node objects as pure functions: the NodeInfo
//! shape of the old API (with a real pod count) and the cluster totals of `/admin/nodes/stats`.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

/// Labels that name the node pool, in order of preference (GKE, EKS, then the instance type).
const PROVIDER_LABELS: [&str; 3] = [
    "cloud.google.com/gke-nodepool",
    "eks.amazonaws.com/nodegroup",
    "node.kubernetes.io/instance-type",
];
const REGION_LABEL: &str = "topology.kubernetes.io/region";
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// `Ready`, `NotReady` or `Unknown`, from the Ready condition.
    pub status: &'static str,
    pub capacity: BTreeMap<String, Quantity>,
    pub allocatable: BTreeMap<String, Quantity>,
    pub info: SystemInfo,
    pub conditions: Vec<NodeCondition>,
    /// Pods bound to the node that have not finished (phase not Succeeded or Failed).
    pub pods: usize,
    /// Time since creation, rounded to the hour, as Go prints a duration (`26h0m0s`).
    pub age: String,
    pub provider: String,
    pub region: String,
    pub zone: String,
    pub unschedulable: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemInfo {
    pub os_image: String,
    pub kernel_version: String,
    pub kubelet_version: String,
    pub container_runtime: String,
}

pub fn node_info(node: &Node, pods: usize, now: Timestamp) -> NodeInfo {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let status = node.status.clone().unwrap_or_default();
    let system = status.node_info.clone().unwrap_or_default();
    let label = |key: &str| labels.get(key).cloned().unwrap_or_default();
    NodeInfo {
        name: node.metadata.name.clone().unwrap_or_default(),
        taints: node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default(),
        status: readiness(node),
        capacity: status.capacity.clone().unwrap_or_default(),
        allocatable: status.allocatable.clone().unwrap_or_default(),
        info: SystemInfo {
            os_image: system.os_image,
            kernel_version: system.kernel_version,
            kubelet_version: system.kubelet_version,
            container_runtime: system.container_runtime_version,
        },
        conditions: status.conditions.clone().unwrap_or_default(),
        pods,
        age: age(node.metadata.creation_timestamp.as_ref().map(|t| t.0), now),
        provider: PROVIDER_LABELS
            .iter()
            .find_map(|key| labels.get(*key).cloned())
            .unwrap_or_default(),
        region: label(REGION_LABEL),
        zone: label(ZONE_LABEL),
        unschedulable: node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false),
        labels,
    }
}

/// `Ready`, `NotReady` or `Unknown` (no Ready condition, or its status is Unknown).
pub fn readiness(node: &Node) -> &'static str {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    match ready.map(|c| c.status.as_str()) {
        Some("True") => "Ready",
        Some("False") => "NotReady",
        _ => "Unknown",
    }
}

/// Whole hours since `created`, rounded half up, printed like Go's `Duration.String()`.
pub fn age(created: Option<Timestamp>, now: Timestamp) -> String {
    let Some(created) = created else {
        return "0s".into();
    };
    let seconds = now.as_second().saturating_sub(created.as_second()).max(0);
    let hours = (seconds + 1800) / 3600;
    if hours == 0 {
        "0s".into()
    } else {
        format!("{hours}h0m0s")
    }
}

/// Unfinished pods per node name.
pub fn pods_per_node<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for pod in pods {
        let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if let Some(node) = node
            && !matches!(phase, Some("Succeeded" | "Failed"))
        {
            *counts.entry(node.to_string()).or_default() += 1;
        }
    }
    counts
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    pub total_nodes: usize,
    pub ready_nodes: usize,
    pub not_ready_nodes: usize,
    pub total_capacity: Totals,
    pub total_allocatable: Totals,
}

/// Sums as the old API printed them: cores with one decimal, memory in binary units, pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Totals {
    pub cpu: String,
    pub memory: String,
    pub pods: String,
}

/// Totals over every node. Nodes whose Ready status is Unknown count in neither ready nor
/// not ready, as before.
pub fn stats<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> NodeStats {
    let mut stats = NodeStats::default();
    let mut capacity = Sums::default();
    let mut allocatable = Sums::default();
    for node in nodes {
        stats.total_nodes += 1;
        match readiness(node) {
            "Ready" => stats.ready_nodes += 1,
            "NotReady" => stats.not_ready_nodes += 1,
            _ => {}
        }
        if let Some(status) = &node.status {
            capacity.add(status.capacity.as_ref());
            allocatable.add(status.allocatable.as_ref());
        }
    }
    stats.total_capacity = capacity.totals();
    stats.total_allocatable = allocatable.totals();
    stats
}

#[derive(Default)]
struct Sums {
    cpu_millis: i128,
    memory_millis: i128,
    pods_millis: i128,
}

impl Sums {
    /// Unparsable quantities are left out (the API server never stores one).
    fn add(&mut self, resources: Option<&BTreeMap<String, Quantity>>) {
        let value = |key: &str| {
            resources
                .and_then(|r| r.get(key))
                .and_then(|q| crate::quantity::parse(&q.0).ok())
                .map(|m| m.millis())
                .unwrap_or(0)
        };
        self.cpu_millis = self.cpu_millis.saturating_add(value("cpu"));
        self.memory_millis = self.memory_millis.saturating_add(value("memory"));
        self.pods_millis = self.pods_millis.saturating_add(value("pods"));
    }

    fn totals(&self) -> Totals {
        Totals {
            cpu: format!("{:.1}", self.cpu_millis as f64 / 1000.0),
            memory: binary_bytes(self.memory_millis / 1000),
            pods: (self.pods_millis / 1000).to_string(),
        }
    }
}

/// `512 B`, `1.5Ki`, `7.8Gi`: the largest binary unit below the value, one decimal.
pub fn binary_bytes(bytes: i128) -> String {
    const UNIT: i128 = 1024;
    if bytes < UNIT {
        return format!("{bytes} B");
    }
    let mut divisor = UNIT;
    let mut exponent = 0;
    let mut rest = bytes / UNIT;
    while rest >= UNIT && exponent < 5 {
        divisor *= UNIT;
        exponent += 1;
        rest /= UNIT;
    }
    let unit = ["K", "M", "G", "T", "P", "E"][exponent];
    format!("{:.1}{unit}i", bytes as f64 / divisor as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(value: serde_json::Value) -> Node {
        serde_json::from_value(value).expect("node")
    }

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn node_info_fields() {
        let n = node(serde_json::json!({
            "metadata": {"name": "w1", "creationTimestamp": "2024-01-01T00:00:00Z", "labels": {
                "node.kubernetes.io/instance-type": "m5.large",
                "eks.amazonaws.com/nodegroup": "workers",
                "topology.kubernetes.io/region": "eu-west-1",
                "topology.kubernetes.io/zone": "eu-west-1a"
            }},
            "spec": {"unschedulable": true, "taints": [{"key": "k", "effect": "NoSchedule"}]},
            "status": {
                "capacity": {"cpu": "4", "memory": "16Gi", "pods": "110"},
                "allocatable": {"cpu": "3900m", "memory": "15Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "False"}],
                "nodeInfo": {"osImage": "Debian", "kernelVersion": "6.1", "kubeletVersion": "v1.20",
                    "containerRuntimeVersion": "containerd://1.7", "architecture": "amd64",
                    "bootID": "", "machineID": "", "operatingSystem": "linux",
                    "kubeProxyVersion": "", "systemUUID": ""}
            }
        }));
        let now = ts(1_704_067_200 + 26 * 3600 + 1799);
        let info = node_info(&n, 3, now);
        assert_eq!(info.name, "w1");
        assert_eq!(info.status, "NotReady");
        assert_eq!(info.provider, "workers");
        assert_eq!(
            (info.region.as_str(), info.zone.as_str()),
            ("eu-west-1", "eu-west-1a")
        );
        assert_eq!(info.age, "26h0m0s");
        assert_eq!(info.pods, 3);
        assert!(info.unschedulable);
        assert_eq!(info.taints.len(), 1);
        assert_eq!(info.info.container_runtime, "containerd://1.7");
        let json = serde_json::to_value(&info).expect("json");
        assert_eq!(json["info"]["kubeletVersion"], "v1.20");
        assert_eq!(json["capacity"]["memory"], "16Gi");
        assert_eq!(json["conditions"][0]["type"], "Ready");
    }

    #[test]
    fn readiness_and_age() {
        let cases = [
            (
                serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
                "Ready",
            ),
            (
                serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}),
                "Unknown",
            ),
            (
                serde_json::json!({"status": {"conditions": [{"type": "MemoryPressure", "status": "True"}]}}),
                "Unknown",
            ),
            (serde_json::json!({}), "Unknown"),
        ];
        for (value, expected) in cases {
            assert_eq!(readiness(&node(value.clone())), expected, "{value}");
        }
        assert_eq!(age(Some(ts(0)), ts(1799)), "0s");
        assert_eq!(age(Some(ts(0)), ts(1800)), "1h0m0s");
        assert_eq!(age(Some(ts(100)), ts(0)), "0s");
        assert_eq!(age(None, ts(0)), "0s");
    }

    #[test]
    fn totals() {
        let ready = |cpu: &str, memory: &str| {
            node(serde_json::json!({"status": {
                "conditions": [{"type": "Ready", "status": "True"}],
                "capacity": {"cpu": cpu, "memory": memory, "pods": "110"},
                "allocatable": {"cpu": "500m", "memory": "1Gi", "pods": "100"}
            }}))
        };
        let down = node(
            serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
        );
        let nodes = [ready("4", "16Gi"), ready("1500m", "512Mi"), down];
        let stats = stats(&nodes);
        assert_eq!(
            (stats.total_nodes, stats.ready_nodes, stats.not_ready_nodes),
            (3, 2, 1)
        );
        assert_eq!(stats.total_capacity.cpu, "5.5");
        assert_eq!(stats.total_capacity.memory, "16.5Gi");
        assert_eq!(stats.total_capacity.pods, "220");
        assert_eq!(stats.total_allocatable.cpu, "1.0");
        assert_eq!(stats.total_allocatable.memory, "2.0Gi");
        let json = serde_json::to_value(&stats).expect("json");
        assert_eq!(json["totalNodes"], 3);
        assert_eq!(json["totalAllocatable"]["pods"], "200");
    }

    #[test]
    fn bytes() {
        for (bytes, text) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1536, "1.5Ki"),
            (1 << 30, "1.0Gi"),
            (5 << 40, "5.0Ti"),
        ] {
            assert_eq!(binary_bytes(bytes), text);
        }
    }

    #[test]
    fn pod_counts_skip_finished_and_unbound_pods() {
        let pod = |node: Option<&str>, phase: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "spec": {"nodeName": node, "containers": []},
                "status": {"phase": phase}
            }))
            .expect("pod")
        };
        let pods = [
            pod(Some("a"), "Running"),
            pod(Some("a"), "Pending"),
            pod(Some("a"), "Succeeded"),
            pod(Some("b"), "Failed"),
            pod(None, "Pending"),
        ];
        let counts = pods_per_node(&pods);
        assert_eq!(counts.get("a"), Some(&2));
        assert_eq!(counts.get("b"), None);
    }
}
