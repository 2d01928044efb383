//! What the shared caches keep of each object: only the fields this process reads, so that
//! 10,000 sessions' children fit in little memory. Each trim runs on every watched object
//! before it enters the store.
//!
//! Readers, per kind (check here before reading a new field from a cache):
//! - Sessions, Templates, home claims, FeatureFlags: everything (the reconcilers, the admission
//!   webhooks and the flag index read most fields); only `managedFields` goes.
//! - Deployments: metadata (the applied-hash annotation, owner, labels), `spec.replicas`,
//!   `spec.selector` (adoption of the old controller's objects) and `status` (available
//!   replicas). The pod template, most of the object, goes: what we applied is in the hash.
//! - Services, Ingresses: metadata only (the applied-hash annotation; adoption reads labels).
//! - Pods: metadata (labels, owners, deletion and creation times) and `status.phase` and
//!   `status.conditions` (readiness).
//! - Nodes: metadata and `spec` (labels, annotations, taints for Git sync; the node operation
//!   reconciler reads nodes from the API server). `status` (images, capacity) goes.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, PodStatus, PodTemplateSpec, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::Resource;

/// Keeps the whole object but the server-side apply bookkeeping, which no reader uses.
pub fn bookkeeping<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

pub fn deployment(deployment: &mut Deployment) {
    bookkeeping(deployment);
    if let Some(spec) = deployment.spec.as_mut() {
        spec.template = PodTemplateSpec::default();
    }
}

pub fn service(service: &mut Service) {
    bookkeeping(service);
    service.spec = None;
    service.status = None;
}

pub fn ingress(ingress: &mut Ingress) {
    bookkeeping(ingress);
    ingress.spec = None;
    ingress.status = None;
}

pub fn pod(pod: &mut Pod) {
    bookkeeping(pod);
    pod.spec = None;
    pod.status = pod.status.take().map(|status| PodStatus {
        phase: status.phase,
        conditions: status.conditions,
        ..PodStatus::default()
    });
}

pub fn node(node: &mut Node) {
    bookkeeping(node);
    node.status = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::fixtures::{spec, template, with_ctx};
    use crate::session::objects;

    #[test]
    fn a_trimmed_deployment_reads_the_same_to_the_session_reconciler() {
        let spec = spec("running");
        let mut live = with_ctx(&spec, |ctx| objects::deployment(ctx, &template(), 1));
        live.metadata.managed_fields = Some(vec![Default::default()]);
        let full = live.clone();
        deployment(&mut live);
        assert_eq!(objects::recorded_hash(&live), objects::recorded_hash(&full));
        let (trimmed, full) = (live.spec.expect("spec"), full.spec.expect("spec"));
        assert_eq!(trimmed.replicas, full.replicas);
        assert_eq!(trimmed.selector, full.selector);
        assert!(trimmed.template.spec.is_none());
        assert!(live.metadata.managed_fields.is_none());
    }

    #[test]
    fn a_trimmed_pod_keeps_readiness_and_identity() {
        let mut live: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {"session": "s1"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": "ss-s1-abc", "uid": "u"}]},
            "spec": {"containers": [{"name": "session", "image": "desktop"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1",
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .expect("a valid pod");
        let full = live.clone();
        pod(&mut live);
        assert_eq!(live.metadata, full.metadata);
        assert!(live.spec.is_none());
        let status = live.status.expect("status");
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.conditions.map(|c| c.len()), Some(1));
        assert!(status.pod_ip.is_none());
    }

    #[test]
    fn a_trimmed_node_keeps_labels_and_taints() {
        let mut live: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "labels": {"tier": "gold"}},
            "spec": {"taints": [{"key": "k", "effect": "NoSchedule"}], "unschedulable": true},
            "status": {"capacity": {"pods": "110"}}
        }))
        .expect("a valid node");
        let full = live.clone();
        node(&mut live);
        assert_eq!(live.metadata, full.metadata);
        assert_eq!(live.spec, full.spec);
        assert!(live.status.is_none());
    }
}
