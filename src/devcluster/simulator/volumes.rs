//! A minimal volume provisioner, like a local-path provisioner without a storage class.
//!
//! For every `Pending` claim without a storage class and without a volume, a `hostPath`
//! PersistentVolume pre-bound to the claim (`claimRef`) is created; kube-controller-manager's
//! persistentvolume-binder completes the binding. Volumes created this way carry a label and are
//! deleted once `Released` (reclaim policy `Retain`, so nothing else touches them).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};

use super::{SimulatorConfig, api_code};

/// Label on volumes created by the simulator.
pub const SIMULATED_VOLUME_LABEL: &str = "streamspace.dev/simulated-volume";

/// Capacity of a volume whose claim requests none.
const DEFAULT_CAPACITY: &str = "1Gi";

/// Runs the provisioner until cancelled.
pub(super) async fn run(client: kube::Client, config: Arc<SimulatorConfig>) {
    let claims: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let volumes: Api<PersistentVolume> = Api::all(client);
    let (store, writer) = reflector::store();
    let events = watcher(claims, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    let mut events = std::pin::pin!(events);
    let mut ticker = tokio::time::interval(config.resync_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some(event) = events.next() => match event {
                Ok(claim) => provision_if_needed(&volumes, &claim).await,
                Err(e) => tracing::debug!(error = %e, "claim watch interrupted, retrying"),
            },
            _ = ticker.tick() => resync(&volumes, &store).await,
        }
    }
}

/// Retries provisioning and deletes released simulated volumes.
async fn resync(volumes: &Api<PersistentVolume>, claims: &Store<PersistentVolumeClaim>) {
    for claim in claims.state() {
        provision_if_needed(volumes, &claim).await;
    }
    if let Err(e) = delete_released(volumes).await {
        tracing::warn!(error = %e, "cleaning up released simulated volumes failed");
    }
}

/// Creates a pre-bound volume for `claim` if it needs one. Failures are logged.
async fn provision_if_needed(volumes: &Api<PersistentVolume>, claim: &PersistentVolumeClaim) {
    let Some(volume) = volume_for(claim) else {
        return;
    };
    match volumes.create(&PostParams::default(), &volume).await {
        Ok(_) => {
            tracing::debug!(claim = %claim_key(claim), volume = %volume.name_any(), "provisioned")
        }
        Err(e) if api_code(&e) == Some(409) => {}
        Err(e) => tracing::warn!(claim = %claim_key(claim), error = %e, "provisioning failed"),
    }
}

/// Deletes simulated volumes whose claim is gone.
async fn delete_released(volumes: &Api<PersistentVolume>) -> Result<(), kube::Error> {
    let list = volumes
        .list(&ListParams::default().labels(&format!("{SIMULATED_VOLUME_LABEL}=true")))
        .await?;
    for volume in list {
        let phase = volume.status.as_ref().and_then(|s| s.phase.as_deref());
        if phase == Some("Released") {
            match volumes
                .delete(&volume.name_any(), &DeleteParams::default())
                .await
            {
                Err(e) if api_code(&e) != Some(404) => return Err(e),
                _ => tracing::debug!(volume = %volume.name_any(), "deleted released volume"),
            }
        }
    }
    Ok(())
}

/// The volume to create for `claim`, if it is pending, class-less and unbound.
fn volume_for(claim: &PersistentVolumeClaim) -> Option<PersistentVolume> {
    let spec = claim.spec.as_ref()?;
    let phase = claim.status.as_ref().and_then(|s| s.phase.as_deref());
    let pending = phase.is_none_or(|p| p == "Pending");
    let classless = spec.storage_class_name.as_deref().is_none_or(str::is_empty);
    let unbound = spec.volume_name.as_deref().is_none_or(str::is_empty);
    if !pending || !classless || !unbound || claim.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let uid = claim.metadata.uid.clone()?;
    let namespace = claim.namespace()?;
    let name = format!("pvc-{uid}");
    let capacity = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage").cloned())
        .unwrap_or_else(|| Quantity(DEFAULT_CAPACITY.into()));
    Some(PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(BTreeMap::from([(
                SIMULATED_VOLUME_LABEL.to_owned(),
                "true".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([("storage".to_owned(), capacity)])),
            access_modes: Some(
                spec.access_modes
                    .clone()
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
            ),
            volume_mode: spec.volume_mode.clone(),
            persistent_volume_reclaim_policy: Some("Retain".into()),
            storage_class_name: Some(String::new()),
            host_path: Some(HostPathVolumeSource {
                path: format!("/var/lib/streamspace-simulator/volumes/{name}"),
                type_: Some("DirectoryOrCreate".into()),
            }),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: Some(namespace),
                name: Some(claim.name_any()),
                uid: Some(uid),
                ..ObjectReference::default()
            }),
            ..PersistentVolumeSpec::default()
        }),
        status: None,
    })
}

fn claim_key(claim: &PersistentVolumeClaim) -> String {
    format!(
        "{}/{}",
        claim.namespace().unwrap_or_default(),
        claim.name_any()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        PersistentVolumeClaimSpec, PersistentVolumeClaimStatus, VolumeResourceRequirements,
    };

    fn claim(class: Option<&str>, phase: &str) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                namespace: Some("ns".into()),
                uid: Some("u1".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                storage_class_name: class.map(Into::into),
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_owned(),
                        Quantity("5Gi".into()),
                    )])),
                    ..VolumeResourceRequirements::default()
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            status: Some(PersistentVolumeClaimStatus {
                phase: Some(phase.into()),
                ..PersistentVolumeClaimStatus::default()
            }),
        }
    }

    #[test]
    fn pending_classless_claims_get_a_prebound_volume() {
        let volume = volume_for(&claim(None, "Pending")).expect("volume");
        assert_eq!(volume.metadata.name.as_deref(), Some("pvc-u1"));
        let spec = volume.spec.unwrap_or_default();
        assert_eq!(
            spec.capacity.unwrap_or_default().get("storage"),
            Some(&Quantity("5Gi".into()))
        );
        let claim_ref = spec.claim_ref.unwrap_or_default();
        assert_eq!(claim_ref.namespace.as_deref(), Some("ns"));
        assert_eq!(claim_ref.uid.as_deref(), Some("u1"));
        assert!(volume_for(&claim(Some(""), "Pending")).is_some());
    }

    #[test]
    fn other_claims_are_ignored() {
        assert!(volume_for(&claim(Some("fast"), "Pending")).is_none());
        assert!(volume_for(&claim(None, "Bound")).is_none());
    }
}
