//! Fast namespace deletion.
//!
//! kube-controller-manager's namespace controller lists the pods that remain right after it
//! asked for their deletion; if any are still terminating it waits
//! `terminationGracePeriodSeconds / 2 + 1` seconds (16 s by default) before looking again. A
//! kubelet would take that long anyway, but for the simulator it only slows tests down, so pods
//! on simulated nodes (and unscheduled ones) in a terminating namespace are removed at once, and
//! its claims deleted, before the controller's first pass (which it delays by 5 s). Objects still
//! held by finalizers at that pass cost another 8 s. Namespace deletion then takes about 5 s
//! instead of 10–20 s.

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, ListParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};

use super::{SimulatorConfig, api_code};

/// Watches namespaces and purges the pods of terminating ones, until cancelled. Every event of a
/// terminating namespace (its status changes with each pass of the namespace controller) purges
/// again, which catches pods that were created just before the deletion.
pub(super) async fn run(client: kube::Client, config: Arc<SimulatorConfig>) {
    let events = watcher(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .applied_objects();
    let mut events = std::pin::pin!(events);
    let nodes: HashSet<&str> = config.node_names.iter().map(String::as_str).collect();
    while let Some(event) = events.next().await {
        match event {
            Ok(ns) if ns.metadata.deletion_timestamp.is_some() => {
                purge_pods(&client, &ns.name_any(), &nodes).await;
                delete_claims(&client, &ns.name_any()).await;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "namespace watch interrupted, retrying"),
        }
    }
}

/// Deletes (grace period 0) every pod of `namespace` that is unscheduled or on a simulated node.
/// Failures are logged; the pod loop finishes such pods later anyway.
async fn purge_pods(client: &kube::Client, namespace: &str, nodes: &HashSet<&str>) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = match pods.list(&ListParams::default()).await {
        Ok(list) => list,
        Err(e) => {
            tracing::debug!(namespace, error = %e, "listing pods of a terminating namespace failed");
            return;
        }
    };
    for pod in list.items.iter().filter(|p| is_ours(p, nodes)) {
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods.delete(&pod.name_any(), &params).await {
            Ok(_) => {}
            Err(e) if matches!(api_code(&e), Some(404 | 409)) => {}
            Err(e) => tracing::debug!(namespace, pod = %pod.name_any(), error = %e, "purge failed"),
        }
    }
    tracing::debug!(namespace, "purged simulated pods of terminating namespace");
}

/// Deletes the claims of `namespace` right away, so that the pvc-protection controller drops
/// their finalizer (their pods are gone) before the namespace controller's first pass; a claim
/// still held by a finalizer then would add another 8 s.
async fn delete_claims(client: &kube::Client, namespace: &str) {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let deleted = claims
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    if let Err(e) = deleted {
        tracing::debug!(namespace, error = %e, "deleting claims of a terminating namespace failed");
    }
}

/// Whether the pod is unscheduled or bound to one of `nodes` (pods on other nodes belong to
/// someone else).
fn is_ours(pod: &Pod, nodes: &HashSet<&str>) -> bool {
    match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
        None | Some("") => true,
        Some(node) => nodes.contains(node),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    #[test]
    fn only_unscheduled_and_simulated_pods_are_purged() {
        let nodes: HashSet<&str> = ["sim-node-1"].into();
        let on = |node: Option<&str>| Pod {
            spec: Some(PodSpec {
                node_name: node.map(Into::into),
                ..PodSpec::default()
            }),
            ..Pod::default()
        };
        assert!(is_ours(&on(None), &nodes));
        assert!(is_ours(&on(Some("sim-node-1")), &nodes));
        assert!(!is_ours(&on(Some("real-node")), &nodes));
    }
}
