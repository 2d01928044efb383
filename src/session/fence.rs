//! Fencing the old StreamSpace controller: while it is active, this controller does not act on
//! sessions (unless `--allow-legacy-controller`), so two controllers never build, scale or
//! delete the same session's objects.
//!
//! Evidence that the old controller is active, from observed facts only:
//! - its leader Lease (`streamspace.io`, in its namespace) is held and was renewed less than
//!   `leaseDurationSeconds` ago (a leader that stops renewing stops acting before that);
//! - a Deployment of its image (`streamspace-kubernetes-controller`) still has pods;
//! - a manager that is not ours wrote a Session's `status.phase` or `status.podName` recently
//!   (the old controller does on every reconcile; run without `--leader-elect` it takes no lease);
//! - the facts could not be read (fail closed: an unknown is not proof of absence).
//!
//! [`assess`] and [`session_writers`] are pure; [`Observer`] reads the Lease and Deployments
//! (at most once per [`REFRESH`]) and the reconciler writes the condition and Event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use tokio::sync::Mutex;

/// Name of the old controller's leader Lease (controller-runtime's `LeaderElectionID`).
pub const LEGACY_LEASE_NAME: &str = "streamspace.io";
/// Namespace the old chart installs into.
pub const LEGACY_NAMESPACE: &str = "streamspace";
/// Image of the old controller's Deployment.
pub const LEGACY_IMAGE: &str = "streamspace-kubernetes-controller";
/// Condition type on a fenced Session, and the reason of its condition and Event.
pub const CONDITION_FENCED: &str = "LegacyControllerFenced";
pub const REASON_ACTIVE: &str = "LegacyControllerActive";
/// Field manager of the fence condition: it owns that condition only, so removing it touches
/// nothing else in the status.
pub const FENCE_FIELD_MANAGER: &str = "streamspace-controller-fence";
/// Every field manager of ours starts with one of these.
const OWN_MANAGER_PREFIXES: [&str; 2] = ["streamspace-controller", "streamspace-api"];
/// How long one observation of the Lease and Deployments is reused across reconciles.
pub const REFRESH: Duration = Duration::from_secs(2);
/// Re-check of a fenced session when nothing tells when the evidence ends.
const RECHECK: Duration = Duration::from_secs(10);
/// Longest wait between two checks of a fenced session.
const MAX_RECHECK: Duration = Duration::from_secs(30);

/// How this controller treats the old one.
#[derive(Clone, Debug)]
pub struct FenceSettings {
    /// Act even while the old controller is active (`--allow-legacy-controller`).
    pub allow: bool,
    /// Namespace of the old controller's Lease and Deployment.
    pub namespace: String,
    pub lease_name: String,
    /// How recent a foreign write of a Session's phase counts as the old controller acting.
    pub writer_window: Duration,
}

impl Default for FenceSettings {
    fn default() -> Self {
        FenceSettings {
            allow: false,
            namespace: LEGACY_NAMESPACE.into(),
            lease_name: LEGACY_LEASE_NAME.into(),
            writer_window: Duration::from_secs(120),
        }
    }
}

/// The old controller's Lease as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseFacts {
    pub holder: Option<String>,
    pub renewed: Option<Timestamp>,
    pub duration: Option<Duration>,
}

/// A Deployment running the old controller's image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerDeployment {
    pub name: String,
    /// Pods it has (status.replicas) or wants (spec.replicas), whichever is larger.
    pub pods: i32,
}

/// What was read about the old controller, cluster-wide (not per session).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observation {
    pub namespace: String,
    pub lease_name: String,
    pub lease: Option<LeaseFacts>,
    pub deployments: Vec<ControllerDeployment>,
    /// Facts that could not be read, with the reason.
    pub unreadable: Vec<String>,
}

/// One reason to believe the old controller is active.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Evidence {
    LeaseRenewed {
        namespace: String,
        name: String,
        holder: String,
        expires: Timestamp,
    },
    DeploymentRunning {
        namespace: String,
        name: String,
        pods: i32,
    },
    RecentWriter {
        manager: String,
        at: Timestamp,
        until: Timestamp,
    },
    Unknown(String),
}

impl std::fmt::Display for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Evidence::LeaseRenewed {
                namespace,
                name,
                holder,
                ..
            } => write!(
                f,
                "its Lease {namespace}/{name} is held by {holder:?} and renewed"
            ),
            Evidence::DeploymentRunning {
                namespace,
                name,
                pods,
            } => write!(f, "its Deployment {namespace}/{name} has {pods} pod(s)"),
            Evidence::RecentWriter { manager, .. } => {
                write!(
                    f,
                    "field manager {manager:?} wrote this session's status recently"
                )
            }
            Evidence::Unknown(reason) => write!(f, "its presence cannot be checked: {reason}"),
        }
    }
}

/// Evidence from the cluster-wide observation at `now`.
pub fn assess(observation: &Observation, now: Timestamp) -> Vec<Evidence> {
    let mut evidence = Vec::new();
    if let Some(lease) = &observation.lease {
        let holder = lease.holder.as_deref().unwrap_or_default();
        let expires = lease
            .renewed
            .zip(lease.duration)
            .and_then(|(renewed, duration)| renewed.checked_add(duration).ok());
        if let Some(expires) = expires.filter(|e| !holder.is_empty() && *e > now) {
            evidence.push(Evidence::LeaseRenewed {
                namespace: observation.namespace.clone(),
                name: observation.lease_name.clone(),
                holder: holder.to_string(),
                expires,
            });
        }
    }
    for deployment in observation.deployments.iter().filter(|d| d.pods > 0) {
        evidence.push(Evidence::DeploymentRunning {
            namespace: observation.namespace.clone(),
            name: deployment.name.clone(),
            pods: deployment.pods,
        });
    }
    evidence.extend(
        observation
            .unreadable
            .iter()
            .cloned()
            .map(Evidence::Unknown),
    );
    evidence
}

/// Foreign managers that wrote the session's `status.phase` or `status.podName` within
/// `window` before `now`.
pub fn session_writers(
    managed_fields: &[ManagedFieldsEntry],
    now: Timestamp,
    window: Duration,
) -> Vec<Evidence> {
    managed_fields
        .iter()
        .filter_map(|entry| {
            let manager = entry.manager.as_deref()?;
            if OWN_MANAGER_PREFIXES.iter().any(|p| manager.starts_with(p)) {
                return None;
            }
            let at = entry.time.as_ref()?.0;
            let until = at.checked_add(window).ok()?;
            let fields = &entry.fields_v1.as_ref()?.0;
            let status = fields.get("f:status")?;
            let writes_phase = status.get("f:phase").is_some() || status.get("f:podName").is_some();
            (writes_phase && until > now).then(|| Evidence::RecentWriter {
                manager: manager.to_string(),
                at,
                until,
            })
        })
        .collect()
}

/// When to look again at a fenced session: when the earliest evidence with an end ends, but
/// within `MAX_RECHECK`.
pub fn recheck(evidence: &[Evidence], now: Timestamp) -> Duration {
    let ends = evidence.iter().map(|e| match e {
        Evidence::LeaseRenewed { expires, .. } => until(now, *expires),
        Evidence::RecentWriter { until: end, .. } => until(now, *end),
        Evidence::DeploymentRunning { .. } | Evidence::Unknown(_) => RECHECK,
    });
    ends.min()
        .unwrap_or(RECHECK)
        .clamp(Duration::from_millis(500), MAX_RECHECK)
}

fn until(now: Timestamp, end: Timestamp) -> Duration {
    let left: SignedDuration = now.duration_until(end);
    left.unsigned_abs() + Duration::from_millis(200)
}

/// The condition message and Event note: why nothing is done, and how to go on.
pub fn message(evidence: &[Evidence]) -> String {
    let reasons: Vec<String> = evidence.iter().map(ToString::to_string).collect();
    format!(
        "the old StreamSpace controller is active ({}); this controller does not act on the \
         session until it stops (or runs with --allow-legacy-controller)",
        reasons.join("; ")
    )
}

/// Reads the old controller's Lease and Deployments, reusing one observation for [`REFRESH`].
pub struct Observer {
    client: Client,
    pub settings: FenceSettings,
    last: Mutex<Option<(Instant, Arc<Observation>)>>,
}

impl Observer {
    pub fn new(client: Client, settings: FenceSettings) -> Self {
        Observer {
            client,
            settings,
            last: Mutex::new(None),
        }
    }

    pub async fn observe(&self) -> Arc<Observation> {
        let mut last = self.last.lock().await;
        if let Some((at, observation)) = last.as_ref()
            && at.elapsed() < REFRESH
        {
            return observation.clone();
        }
        let observation = Arc::new(observe(&self.client, &self.settings).await);
        *last = Some((Instant::now(), observation.clone()));
        observation
    }
}

/// One read of the Lease and of the Deployments in the old controller's namespace.
pub async fn observe(client: &Client, settings: &FenceSettings) -> Observation {
    let namespace = settings.namespace.as_str();
    let mut observation = Observation {
        namespace: namespace.to_string(),
        lease_name: settings.lease_name.clone(),
        ..Observation::default()
    };
    let leases = Api::<Lease>::namespaced(client.clone(), namespace);
    match leases.get_opt(&settings.lease_name).await {
        Ok(lease) => observation.lease = lease.map(|lease| lease_facts(&lease)),
        Err(error) => observation.unreadable.push(format!(
            "reading Lease {namespace}/{}: {error}",
            settings.lease_name
        )),
    }
    let deployments = Api::<Deployment>::namespaced(client.clone(), namespace);
    match deployments.list(&ListParams::default()).await {
        Ok(list) => {
            observation.deployments = list
                .items
                .iter()
                .filter_map(controller_deployment)
                .collect()
        }
        Err(kube::Error::Api(status)) if status.is_not_found() => {}
        Err(error) => observation
            .unreadable
            .push(format!("listing Deployments in {namespace}: {error}")),
    }
    observation
}

pub fn lease_facts(lease: &Lease) -> LeaseFacts {
    let spec = lease.spec.as_ref();
    LeaseFacts {
        holder: spec.and_then(|s| s.holder_identity.clone()),
        renewed: spec
            .and_then(|s| s.renew_time.as_ref().or(s.acquire_time.as_ref()))
            .map(|t| t.0),
        duration: spec
            .and_then(|s| s.lease_duration_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs),
    }
}

/// The Deployment as an old controller's, when one of its containers runs the old image.
pub fn controller_deployment(deployment: &Deployment) -> Option<ControllerDeployment> {
    let spec = deployment.spec.as_ref()?;
    let old_image = spec
        .template
        .spec
        .as_ref()?
        .containers
        .iter()
        .any(|c| c.image.as_deref().is_some_and(|i| i.contains(LEGACY_IMAGE)));
    if !old_image {
        return None;
    }
    let existing = deployment
        .status
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(0);
    Some(ControllerDeployment {
        name: deployment.name_any(),
        pods: existing.max(spec.replicas.unwrap_or(1)),
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, Time};
    use serde_json::json;

    use super::*;

    fn ts(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).expect("valid")
    }

    fn observation(lease: Option<LeaseFacts>) -> Observation {
        Observation {
            namespace: "streamspace".into(),
            lease_name: LEGACY_LEASE_NAME.into(),
            lease,
            ..Observation::default()
        }
    }

    fn lease(holder: Option<&str>, renewed: i64, duration: u64) -> Option<LeaseFacts> {
        Some(LeaseFacts {
            holder: holder.map(str::to_string),
            renewed: Some(ts(renewed)),
            duration: Some(Duration::from_secs(duration)),
        })
    }

    #[test]
    fn the_lease_counts_only_while_renewed() {
        let now = ts(100);
        let rows = [
            (
                "renewed 5s ago, 15s lease",
                lease(Some("old-1"), 95, 15),
                true,
            ),
            ("expired", lease(Some("old-1"), 80, 15), false),
            ("expires exactly now", lease(Some("old-1"), 85, 15), false),
            ("released (no holder)", lease(None, 99, 15), false),
            ("empty holder", lease(Some(""), 99, 15), false),
            ("no lease", None, false),
            (
                "no renew time",
                Some(LeaseFacts {
                    holder: Some("old".into()),
                    renewed: None,
                    duration: Some(Duration::from_secs(15)),
                }),
                false,
            ),
        ];
        for (case, lease, active) in rows {
            let evidence = assess(&observation(lease), now);
            assert_eq!(!evidence.is_empty(), active, "{case}: {evidence:?}");
        }
    }

    #[test]
    fn deployments_and_unreadable_facts_fence() {
        let mut seen = observation(None);
        seen.deployments = vec![
            ControllerDeployment {
                name: "streamspace-controller".into(),
                pods: 1,
            },
            ControllerDeployment {
                name: "scaled-down".into(),
                pods: 0,
            },
        ];
        seen.unreadable = vec!["forbidden".into()];
        let evidence = assess(&seen, ts(0));
        assert_eq!(evidence.len(), 2, "{evidence:?}");
        assert!(message(&evidence).contains("streamspace/streamspace-controller has 1 pod(s)"));
        assert!(message(&evidence).contains("cannot be checked: forbidden"));
        assert_eq!(recheck(&evidence, ts(0)), RECHECK);
    }

    fn entry(manager: &str, at: i64, fields: serde_json::Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            time: Some(Time(ts(at))),
            fields_v1: Some(FieldsV1(fields)),
            operation: Some("Update".into()),
            ..ManagedFieldsEntry::default()
        }
    }

    #[test]
    fn recent_foreign_phase_writers_fence() {
        let phase = json!({"f:status": {"f:phase": {}, "f:podName": {}}});
        let activity = json!({"f:status": {"f:lastActivity": {}}});
        let window = Duration::from_secs(60);
        let rows = [
            (
                "old manager wrote phase 10s ago",
                entry("manager", 90, phase.clone()),
                true,
            ),
            (
                "old manager wrote phase long ago",
                entry("manager", 10, phase.clone()),
                false,
            ),
            (
                "ours",
                entry("streamspace-controller", 99, phase.clone()),
                false,
            ),
            (
                "our api",
                entry("streamspace-api-legacy", 99, phase.clone()),
                false,
            ),
            ("only lastActivity", entry("manager", 99, activity), false),
            (
                "spec only",
                entry("kubectl-edit", 99, json!({"f:spec": {}})),
                false,
            ),
        ];
        for (case, entry, fenced) in rows {
            let evidence = session_writers(&[entry], ts(100), window);
            assert_eq!(!evidence.is_empty(), fenced, "{case}");
        }
        let evidence = session_writers(&[entry("manager", 90, phase)], ts(100), window);
        // 50 s left of the window, plus the slack.
        assert_eq!(
            recheck(&evidence, ts(100)),
            Duration::from_secs(30),
            "capped"
        );
        assert_eq!(recheck(&evidence, ts(140)), Duration::from_millis(10_200));
    }

    #[test]
    fn recheck_follows_the_lease_expiry() {
        let evidence = assess(&observation(lease(Some("old"), 95, 15)), ts(100));
        assert_eq!(recheck(&evidence, ts(100)), Duration::from_millis(10_200));
        assert!(message(&evidence).contains("Lease streamspace/streamspace.io is held by \"old\""));
    }

    #[test]
    fn controller_deployments_are_recognised_by_image() {
        let deployment = |image: &str, replicas: i32| -> Deployment {
            serde_json::from_value(json!({
                "metadata": {"name": "d"},
                "spec": {"replicas": replicas, "selector": {}, "template": {"spec": {
                    "containers": [{"name": "c", "image": image}]}}},
                "status": {"replicas": 1}
            }))
            .expect("deployment")
        };
        let old = "ghcr.io/streamspace/streamspace-kubernetes-controller:v0.2.0";
        assert_eq!(
            controller_deployment(&deployment(old, 0)).map(|d| d.pods),
            Some(1),
            "a pod still exists while scaling down"
        );
        assert_eq!(controller_deployment(&deployment("ours:1", 1)), None);
    }
}
