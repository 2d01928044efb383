//! Status of legacy sessions. The controller writes the status of the sessions it owns; for
//! sessions the legacy handlers own nobody else would, so this follower (in the API process)
//! keeps `status.phase`, `podName` and `url` in step with the session's Deployment and pods,
//! by the session state machine's own phase rule ([`state::running_phase`]: `Running` once a
//! replica is available and the serving pod is ready, which the UI keys on), `Hibernated` when
//! scaled to zero.
//!
//! It acts only where the legacy side's ownership gate says act (the flag owner is legacy or
//! shadow *and* the legacy side recorded the session last), and not while a legacy operation is
//! in flight (the handler writes the status itself then). Writes are status merge patches of just these fields, made only when they
//! differ, so `lastActivity` and conditions are never touched and a steady state writes nothing.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::{Map, Value, json};
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::LEGACY_FIELD_MANAGER;
use crate::crd::{Session, SessionPhase, SessionState};
use crate::ownership::handoff::{self, Record};
use crate::ownership::index::FlagIndex;
use crate::ownership::{self, Gate, ResourceType, Side};
use crate::session::{names, state};

/// Safety net: every legacy session is looked at this often even without events.
const RESYNC: Duration = Duration::from_secs(30);

/// The status fields a legacy session should have, as a merge patch of `status`, or `None`
/// when the stored status already says so. `url` is `https://<session>.<domain>`.
pub fn wanted_status(
    session: &Session,
    deployment: Option<&Deployment>,
    pods: &[&Pod],
    domain: &str,
) -> Option<Value> {
    let name = session.name_any();
    let url = format!("https://{name}.{domain}");
    let (phase, pod_name) = match session.spec.desired_state() {
        SessionState::Hibernated => (SessionPhase::Hibernated, None),
        SessionState::Terminated => (SessionPhase::Terminated, None),
        SessionState::Unknown(_) => return None,
        SessionState::Running => {
            let (phase, pod) = state::running_phase(state::available_replicas(deployment), pods);
            (phase, pod.and_then(|p| p.metadata.name.clone()))
        }
    };
    let current = session.status.clone().unwrap_or_default();
    let mut patch = Map::new();
    if current.phase.as_ref() != Some(&phase) {
        patch.insert("phase".into(), json!(phase.as_str()));
    }
    if phase != SessionPhase::Terminated && current.url.as_deref() != Some(url.as_str()) {
        patch.insert("url".into(), json!(url));
    }
    // A pod name is written once one is ready, and cleared when the session stops; while it
    // starts the previous value is left alone.
    match (&phase, pod_name) {
        (SessionPhase::Running, Some(pod)) if current.pod_name.as_deref() != Some(pod.as_str()) => {
            patch.insert("podName".into(), json!(pod));
        }
        (SessionPhase::Hibernated | SessionPhase::Terminated, _) if current.pod_name.is_some() => {
            patch.insert("podName".into(), Value::Null);
        }
        _ => {}
    }
    (!patch.is_empty()).then(|| json!({"status": patch}))
}

/// Whether the follower looks after `session` now: the legacy side's ownership gate says act
/// (legacy owns it and recorded it last), no legacy operation of its own is in flight (the
/// handler writes the status itself then; a handler that died stops counting after the
/// hand-off timeout), and it is not being deleted.
pub fn follows(session: &Session, flags: &FlagIndex, namespace: &str, now: Timestamp) -> bool {
    let record = Record::from_annotations(session.annotations());
    let owner = flags.owner(ResourceType::Sessions, namespace, &session.name_any());
    ownership::gate(Side::Legacy, owner, &record, now) == Gate::Act
        && handoff::legacy_in_flight_until(&record, now).is_none()
        && session.metadata.deletion_timestamp.is_none()
}

/// Names of sessions to look at again, filled by the watches.
#[derive(Default)]
pub struct Dirty {
    names: Mutex<BTreeSet<String>>,
    notify: Notify,
}

impl Dirty {
    pub fn touch(&self, name: String) {
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name);
        self.notify.notify_one();
    }

    fn take(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.names.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Everything the follower reads.
pub struct Follower {
    pub client: Client,
    pub namespace: String,
    pub domain: String,
    pub flags: Arc<FlagIndex>,
    pub sessions: Store<Session>,
    pub deployments: Store<Deployment>,
    pub pods: Store<Pod>,
    pub dirty: Arc<Dirty>,
}

impl Follower {
    /// Runs until dropped.
    pub async fn run(self) {
        // Deciding before the caches are loaded would read existing pods as missing.
        let loaded = self.sessions.wait_until_ready().await.is_ok()
            && self.deployments.wait_until_ready().await.is_ok()
            && self.pods.wait_until_ready().await.is_ok();
        if !loaded {
            return;
        }
        loop {
            let woken = tokio::time::timeout(RESYNC, self.dirty.notify.notified()).await;
            let names: Vec<String> = match woken {
                Ok(()) => self.dirty.take().into_iter().collect(),
                Err(_) => self.sessions.state().iter().map(|s| s.name_any()).collect(),
            };
            for name in names {
                self.follow(&name).await;
            }
        }
    }

    async fn follow(&self, name: &str) {
        let Some(session) = self
            .sessions
            .get(&ObjectRef::new(name).within(&self.namespace))
        else {
            return;
        };
        if !follows(&session, &self.flags, &self.namespace, Timestamp::now()) {
            return;
        }
        let child = names::child_name(name);
        let deployment = self
            .deployments
            .get(&ObjectRef::new(&child).within(&self.namespace));
        let label = names::label_value(name);
        let pods: Vec<Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| p.labels().get("session") == Some(&label))
            .collect();
        let pod_refs: Vec<&Pod> = pods.iter().map(AsRef::as_ref).collect();
        let Some(patch) = wanted_status(&session, deployment.as_deref(), &pod_refs, &self.domain)
        else {
            return;
        };
        debug!(session = name, %patch, "following a legacy session's status");
        let params = PatchParams {
            field_manager: Some(LEGACY_FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        let api: Api<Session> = Api::namespaced(self.client.clone(), &self.namespace);
        if let Err(error) = api.patch_status(name, &params, &Patch::Merge(patch)).await {
            warn!(session = name, %error, "could not write a legacy session's status");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ownership::handoff::{ACTED_BY_ANNOTATION, LEGACY_OPERATION_ANNOTATION};
    use std::collections::BTreeMap;

    fn session(state: &str, status: Value) -> Session {
        serde_json::from_value(json!({
            "apiVersion": "stream.space/v1alpha1", "kind": "Session",
            "metadata": {"name": "s1", "namespace": "ns"},
            "spec": {"user": "alice", "template": "t", "state": state},
            "status": status,
        }))
        .expect("session")
    }

    fn deployment(replicas: i32, available: i32) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "ss-s1"},
            "spec": {"replicas": replicas, "selector": {}, "template": {}},
            "status": {"availableReplicas": available}
        }))
        .expect("deployment")
    }

    fn pod(name: &str, ready: bool, created: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "creationTimestamp": created},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        }))
        .expect("pod")
    }

    const URL: &str = "https://s1.example.test";

    /// what, spec.state, stored status, deployment, pods, expected patch
    type Case<'a> = (
        &'a str,
        &'a str,
        Value,
        Option<Deployment>,
        Vec<&'a Pod>,
        Option<Value>,
    );

    #[test]
    fn table() {
        let ready = pod("ss-s1-abc", true, "2026-01-01T00:00:00Z");
        let starting = pod("ss-s1-def", false, "2026-01-01T00:01:00Z");
        // A rollout's replacement: ready, newer and with a name that sorts after the old pod.
        let newer = pod("ss-s1-xyz", true, "2026-01-01T00:02:00Z");
        let cases: Vec<Case> = vec![
            (
                "new session, pod not ready yet",
                "running",
                json!({"phase": "Pending"}),
                Some(deployment(1, 1)),
                vec![&starting],
                Some(json!({"status": {"url": URL}})),
            ),
            (
                "pod ready",
                "running",
                json!({"phase": "Pending", "url": URL}),
                Some(deployment(1, 1)),
                vec![&starting, &ready],
                Some(json!({"status": {"phase": "Running", "podName": "ss-s1-abc"}})),
            ),
            (
                "a ready pod but no available replica yet is still starting",
                "running",
                json!({"phase": "Pending", "url": URL}),
                Some(deployment(1, 0)),
                vec![&ready],
                None,
            ),
            (
                "of two ready pods the newest serves, as the controller picks it",
                "running",
                json!({"phase": "Running", "url": URL, "podName": "ss-s1-abc"}),
                Some(deployment(1, 1)),
                vec![&newer, &ready],
                Some(json!({"status": {"podName": "ss-s1-xyz"}})),
            ),
            (
                "steady state writes nothing",
                "running",
                json!({"phase": "Running", "url": URL, "podName": "ss-s1-abc", "lastActivity": "2026-01-01T00:00:00Z"}),
                Some(deployment(1, 1)),
                vec![&ready],
                None,
            ),
            (
                "no deployment is not running",
                "running",
                json!({"phase": "Running", "url": URL, "podName": "ss-s1-abc"}),
                None,
                vec![&ready],
                Some(json!({"status": {"phase": "Pending"}})),
            ),
            (
                "hibernated clears the pod name",
                "hibernated",
                json!({"phase": "Running", "url": URL, "podName": "ss-s1-abc"}),
                Some(deployment(0, 0)),
                vec![],
                Some(json!({"status": {"phase": "Hibernated", "podName": null}})),
            ),
            (
                "terminated",
                "terminated",
                json!({"phase": "Hibernated", "url": URL}),
                None,
                vec![],
                Some(json!({"status": {"phase": "Terminated"}})),
            ),
        ];
        for (what, state, status, deployment, pods, expected) in cases {
            let got = wanted_status(
                &session(state, status),
                deployment.as_ref(),
                &pods,
                "example.test",
            );
            assert_eq!(got, expected, "{what}");
        }
    }

    #[test]
    fn follows_only_recorded_legacy_sessions_of_legacy_owners() {
        use crate::crd::{FeatureFlagSpec, FlagMode};
        use crate::ownership::index::FlagSettings;
        let flags = |mode: FlagMode| {
            FlagIndex::fixed(
                FlagSettings::default(),
                BTreeMap::from([(
                    ResourceType::Sessions,
                    FeatureFlagSpec {
                        mode,
                        percent: 100,
                        override_: None,
                    },
                )]),
            )
        };
        let annotated = |annotations: Value| {
            let mut s = session("running", json!({}));
            s.metadata.annotations = serde_json::from_value(annotations).ok();
            s
        };
        let now: Timestamp = "2026-01-01T00:00:05Z".parse().expect("time");
        let legacy = annotated(json!({ACTED_BY_ANNOTATION: "legacy"}));
        let unrecorded = annotated(json!({}));
        let in_flight = annotated(json!({
            ACTED_BY_ANNOTATION: "legacy",
            LEGACY_OPERATION_ANNOTATION: "create 2026-01-01T00:00:00Z"
        }));
        let controller = annotated(json!({ACTED_BY_ANNOTATION: "controller"}));
        assert!(follows(&legacy, &flags(FlagMode::Legacy), "ns", now));
        assert!(follows(&legacy, &flags(FlagMode::Shadow), "ns", now));
        assert!(!follows(&legacy, &flags(FlagMode::Controller), "ns", now));
        assert!(!follows(&in_flight, &flags(FlagMode::Legacy), "ns", now));
        assert!(!follows(&controller, &flags(FlagMode::Legacy), "ns", now));
        assert!(!follows(&unrecorded, &flags(FlagMode::Legacy), "ns", now));
        // A handler that died mid-operation stops holding the follower off after the timeout.
        let much_later: Timestamp = "2026-01-01T01:00:00Z".parse().expect("time");
        assert!(follows(
            &in_flight,
            &flags(FlagMode::Legacy),
            "ns",
            much_later
        ));
    }
}
