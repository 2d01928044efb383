//! Adoption of sessions the old StreamSpace controller built.
//!
//! The old controller named a session's children after user + template: Deployment and Ingress
//! `ss-{user}-{template}`, Service `ss-{user}-{template}-svc`, labelled
//! `app=streamspace-session,user,template,session` and selected by that whole label set, with a
//! controller owner reference to the Session that created them first. This controller names
//! them `ss-<session>` and selects pods by `app` + `session` only.
//!
//! A Deployment's selector is immutable and its name differs from ours, so the old objects
//! cannot be adopted in place: they are replaced, **make-before-break**. Our Deployment,
//! Service and Ingress are built beside the old ones (our Service selects the old pod too, as it
//! carries the same `app` and `session` labels); once a pod of our own Deployment is ready, the
//! old Deployment, Service and Ingress are deleted. A session that is not running has no desktop
//! to keep, so its old objects go at once. The home claim is never part of a plan.
//!
//! Two sessions of one user and template shared one old Deployment: it belongs to the session
//! named by its owner reference (else its `session` label) and only that session's plan deletes
//! it; the other session simply gets its own objects.
//!
//! Everything here is pure: [`LegacyObject::classify`] turns a listed object into a plain value,
//! [`plan`] decides. The controller and the API's legacy handlers apply the same plan.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

#[cfg(test)]
use super::names;
use super::names::APP_SESSION;

/// Reason of the Event published when a session's old objects are gone.
pub const ADOPTED_EVENT_REASON: &str = "Adopted";

/// Kind of an object the old controller built for a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LegacyKind {
    Deployment,
    Service,
    Ingress,
}

impl LegacyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LegacyKind::Deployment => "Deployment",
            LegacyKind::Service => "Service",
            LegacyKind::Ingress => "Ingress",
        }
    }
}

/// The names the old controller gave the children of a session of `user` and `template`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyNames {
    /// Deployment and Ingress.
    pub workload: String,
    pub service: String,
}

/// The old names are not sanitised: they are exactly what the old controller built.
pub fn legacy_names(user: &str, template: &str) -> LegacyNames {
    let workload = format!("ss-{user}-{template}");
    LegacyNames {
        service: format!("{workload}-svc"),
        workload,
    }
}

/// An object the old controller built, as far as a plan needs to know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyObject {
    pub kind: LegacyKind,
    pub name: String,
    /// The session it belongs to: the name in its controller owner reference to a Session,
    /// else its `session` label; `None` when it names neither.
    pub belongs_to: Option<String>,
}

impl LegacyObject {
    /// Recognises an object of the old controller among the objects with a legacy name:
    /// labelled `app=streamspace-session`, and for a Deployment selected by the old full label
    /// set (ours never selects by `user`). `selector` is the Deployment's `matchLabels`.
    pub fn classify(
        kind: LegacyKind,
        meta: &ObjectMeta,
        selector: Option<&BTreeMap<String, String>>,
    ) -> Option<LegacyObject> {
        let labels = meta.labels.as_ref()?;
        if labels.get("app").map(String::as_str) != Some(APP_SESSION) {
            return None;
        }
        if kind == LegacyKind::Deployment && !selector.is_some_and(|s| s.contains_key("user")) {
            return None;
        }
        let owner = meta.owner_references.iter().flatten().find(|owner| {
            owner.controller == Some(true)
                && owner.kind == "Session"
                && owner.api_version.starts_with("stream.space/")
        });
        let belongs_to = owner
            .map(|owner| owner.name.clone())
            .or_else(|| labels.get("session").cloned());
        Some(LegacyObject {
            kind,
            name: meta.name.clone()?,
            belongs_to,
        })
    }
}

/// The old objects among those found under a session's legacy names.
pub fn legacy_found(
    deployment: Option<&Deployment>,
    service: Option<&Service>,
    ingress: Option<&Ingress>,
) -> Vec<LegacyObject> {
    let deployment = deployment.and_then(|d| {
        let selector = d
            .spec
            .as_ref()
            .and_then(|s| s.selector.match_labels.as_ref());
        LegacyObject::classify(LegacyKind::Deployment, &d.metadata, selector)
    });
    let service =
        service.and_then(|s| LegacyObject::classify(LegacyKind::Service, &s.metadata, None));
    let ingress =
        ingress.and_then(|i| LegacyObject::classify(LegacyKind::Ingress, &i.metadata, None));
    [deployment, service, ingress]
        .into_iter()
        .flatten()
        .collect()
}

/// What happens to one old object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Deleted now: the session runs no desktop that depends on it.
    DeleteNow,
    /// Deleted once a pod of the session's own Deployment is ready (make-before-break).
    DeleteWhenReplacementReady,
    /// Left alone, for the reason given.
    Leave(LeaveReason),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaveReason {
    /// It belongs to another session (the shared Deployment of the old naming collision); that
    /// session's plan deletes it.
    OtherSession(String),
    /// It names no session: nothing proves whose it is.
    Unowned,
    /// It has the name of our own object (a session named `{user}-{template}`): applying ours
    /// takes it over in place.
    TakenOverInPlace,
}

/// One old object and its fate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub object: LegacyObject,
    pub fate: Fate,
}

/// The adoption plan of one session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
}

/// What the reconciler does this round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// No old object of this session is left (or there never was one).
    Nothing,
    /// Old objects wait for the replacement pod; nothing to delete yet.
    Waiting,
    /// Delete these now; `completes` when they are the session's last old objects.
    Delete {
        objects: Vec<LegacyObject>,
        completes: bool,
    },
}

/// Decides the fate of every old object found under the session's legacy names.
///
/// `running`: the session's desired state is `running`. `child_name`: the name of our own
/// objects of this session.
pub fn plan(session: &str, child_name: &str, running: bool, found: &[LegacyObject]) -> Plan {
    let mut steps: Vec<Step> = found
        .iter()
        .map(|object| Step {
            fate: fate(session, child_name, running, object),
            object: object.clone(),
        })
        .collect();
    steps.sort_by(|a, b| (a.object.kind, &a.object.name).cmp(&(b.object.kind, &b.object.name)));
    Plan { steps }
}

fn fate(session: &str, child_name: &str, running: bool, object: &LegacyObject) -> Fate {
    match &object.belongs_to {
        None => Fate::Leave(LeaveReason::Unowned),
        Some(owner) if owner != session => Fate::Leave(LeaveReason::OtherSession(owner.clone())),
        // Our Service and Ingress are applied over an old one of the same name; a Deployment of
        // the same name has the old immutable selector and must go before ours can exist.
        Some(_) if object.name == child_name && object.kind != LegacyKind::Deployment => {
            Fate::Leave(LeaveReason::TakenOverInPlace)
        }
        Some(_) if object.name == child_name => Fate::DeleteNow,
        Some(_) if running => Fate::DeleteWhenReplacementReady,
        Some(_) => Fate::DeleteNow,
    }
}

impl Plan {
    /// Whether an old Deployment holds the name our Deployment needs: ours cannot be applied
    /// until it is gone.
    pub fn blocks_own_deployment(&self, child_name: &str) -> bool {
        self.steps.iter().any(|step| {
            step.object.kind == LegacyKind::Deployment
                && step.object.name == child_name
                && step.fate == Fate::DeleteNow
        })
    }

    /// Whether this plan deletes anything at some point (the session is being adopted).
    pub fn adopts(&self) -> bool {
        self.steps
            .iter()
            .any(|step| !matches!(step.fate, Fate::Leave(_)))
    }

    /// What to do now, given whether a pod of the session's own Deployment is ready.
    pub fn progress(&self, replacement_ready: bool) -> Progress {
        let mut pending = 0;
        let mut due = Vec::new();
        for step in &self.steps {
            match step.fate {
                Fate::DeleteNow => due.push(step.object.clone()),
                Fate::DeleteWhenReplacementReady if replacement_ready => {
                    due.push(step.object.clone())
                }
                Fate::DeleteWhenReplacementReady => pending += 1,
                Fate::Leave(_) => {}
            }
        }
        match (due.is_empty(), pending) {
            (true, 0) => Progress::Nothing,
            (true, _) => Progress::Waiting,
            (false, pending) => Progress::Delete {
                objects: due,
                completes: pending == 0,
            },
        }
    }
}

impl fmt::Display for Fate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fate::DeleteNow => f.write_str("delete now"),
            Fate::DeleteWhenReplacementReady => {
                f.write_str("delete once the replacement pod is ready")
            }
            Fate::Leave(LeaveReason::OtherSession(owner)) => {
                write!(f, "leave: belongs to session {owner}")
            }
            Fate::Leave(LeaveReason::Unowned) => f.write_str("leave: names no session"),
            Fate::Leave(LeaveReason::TakenOverInPlace) => {
                f.write_str("take over in place (same name as ours)")
            }
        }
    }
}

impl fmt::Display for Plan {
    /// One line per old object: `Deployment ss-alice-firefox: delete once ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.steps.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(
                f,
                "{} {}: {}",
                step.object.kind.as_str(),
                step.object.name,
                step.fate
            )?;
        }
        Ok(())
    }
}

/// Note of the Event published when a session's last old objects are deleted.
pub fn adopted_note(deleted: &[LegacyObject], child_name: &str) -> String {
    let names: Vec<String> = deleted
        .iter()
        .map(|o| format!("{} {}", o.kind.as_str(), o.name))
        .collect();
    format!(
        "adopted from the old controller: replaced by {child_name}; deleted {}",
        names.join(", ")
    )
}

/// Whether one of `pods` is a ready, live pod of our Deployment `child_name`: its ReplicaSet is
/// `<child_name>-<pod-template-hash>`. Pods of the old Deployment carry the same `session`
/// label, so the label alone does not tell them apart.
pub fn replacement_ready(pods: &[&Pod], child_name: &str) -> bool {
    pods.iter().any(|pod| {
        let hash = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-template-hash"));
        let ours = hash.is_some_and(|hash| {
            let replica_set = format!("{child_name}-{hash}");
            pod.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.kind == "ReplicaSet" && o.name == replica_set)
        });
        ours && pod.metadata.deletion_timestamp.is_none() && super::state::is_ready(pod)
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::*;

    fn object(kind: LegacyKind, name: &str, owner: Option<&str>) -> LegacyObject {
        LegacyObject {
            kind,
            name: name.into(),
            belongs_to: owner.map(str::to_string),
        }
    }

    fn old_set(owner: &str) -> Vec<LegacyObject> {
        vec![
            object(LegacyKind::Ingress, "ss-alice-firefox", Some(owner)),
            object(LegacyKind::Deployment, "ss-alice-firefox", Some(owner)),
            object(LegacyKind::Service, "ss-alice-firefox-svc", Some(owner)),
        ]
    }

    #[test]
    fn legacy_names_follow_user_and_template() {
        let names = legacy_names("alice", "firefox");
        assert_eq!(names.workload, "ss-alice-firefox");
        assert_eq!(names.service, "ss-alice-firefox-svc");
    }

    #[test]
    fn fates_by_case() {
        use Fate::*;
        let a = "alice-firefox-0000000a";
        let child = "ss-alice-firefox-0000000a";
        let rows: Vec<(&str, &str, bool, LegacyObject, Fate)> = vec![
            // A running owner keeps its old pod until the replacement is ready.
            (
                "running owner",
                a,
                true,
                object(LegacyKind::Deployment, "ss-alice-firefox", Some(a)),
                DeleteWhenReplacementReady,
            ),
            (
                "running owner svc",
                a,
                true,
                object(LegacyKind::Service, "ss-alice-firefox-svc", Some(a)),
                DeleteWhenReplacementReady,
            ),
            (
                "running owner ingress",
                a,
                true,
                object(LegacyKind::Ingress, "ss-alice-firefox", Some(a)),
                DeleteWhenReplacementReady,
            ),
            // Hibernated or terminated: no desktop to keep.
            (
                "stopped owner",
                a,
                false,
                object(LegacyKind::Deployment, "ss-alice-firefox", Some(a)),
                DeleteNow,
            ),
            (
                "stopped owner ingress",
                a,
                false,
                object(LegacyKind::Ingress, "ss-alice-firefox", Some(a)),
                DeleteNow,
            ),
            // The second session of the collision leaves the shared Deployment to its owner.
            (
                "shared, other owner",
                "alice-firefox-0000000b",
                true,
                object(LegacyKind::Deployment, "ss-alice-firefox", Some(a)),
                Leave(LeaveReason::OtherSession(a.into())),
            ),
            (
                "names no session",
                a,
                true,
                object(LegacyKind::Deployment, "ss-alice-firefox", None),
                Leave(LeaveReason::Unowned),
            ),
            // A session named {user}-{template}: same names as ours.
            (
                "same-name deployment",
                "alice-firefox",
                true,
                object(
                    LegacyKind::Deployment,
                    "ss-alice-firefox",
                    Some("alice-firefox"),
                ),
                DeleteNow,
            ),
            (
                "same-name ingress",
                "alice-firefox",
                true,
                object(
                    LegacyKind::Ingress,
                    "ss-alice-firefox",
                    Some("alice-firefox"),
                ),
                Leave(LeaveReason::TakenOverInPlace),
            ),
            (
                "same-name svc differs",
                "alice-firefox",
                true,
                object(
                    LegacyKind::Service,
                    "ss-alice-firefox-svc",
                    Some("alice-firefox"),
                ),
                DeleteWhenReplacementReady,
            ),
        ];
        for (case, session, running, obj, expected) in rows {
            let own_child = if session == a {
                child.to_string()
            } else {
                names::child_name(session)
            };
            let plan = plan(session, &own_child, running, &[obj]);
            assert_eq!(plan.steps[0].fate, expected, "{case}");
        }
    }

    #[test]
    fn make_before_break_waits_for_the_replacement() {
        let a = "alice-firefox-0000000a";
        let plan = plan(a, &names::child_name(a), true, &old_set(a));
        assert!(plan.adopts());
        assert_eq!(plan.progress(false), Progress::Waiting);
        match plan.progress(true) {
            Progress::Delete { objects, completes } => {
                assert!(completes);
                let kinds: Vec<_> = objects.iter().map(|o| o.kind).collect();
                assert_eq!(
                    kinds,
                    [
                        LegacyKind::Deployment,
                        LegacyKind::Service,
                        LegacyKind::Ingress
                    ]
                );
            }
            other => panic!("expected deletes, got {other:?}"),
        }
        assert_eq!(
            plan.to_string(),
            "Deployment ss-alice-firefox: delete once the replacement pod is ready; \
             Service ss-alice-firefox-svc: delete once the replacement pod is ready; \
             Ingress ss-alice-firefox: delete once the replacement pod is ready"
        );
    }

    #[test]
    fn the_second_session_of_a_collision_deletes_nothing() {
        let b = "alice-firefox-0000000b";
        let plan = plan(
            b,
            &names::child_name(b),
            true,
            &old_set("alice-firefox-0000000a"),
        );
        assert!(!plan.adopts());
        assert_eq!(plan.progress(true), Progress::Nothing);
        assert_eq!(plan.progress(false), Progress::Nothing);
    }

    #[test]
    fn a_stopped_session_deletes_at_once_and_completes() {
        let a = "alice-firefox-0000000a";
        let plan = plan(a, &names::child_name(a), false, &old_set(a));
        let Progress::Delete { objects, completes } = plan.progress(false) else {
            panic!("expected deletes");
        };
        assert_eq!(objects.len(), 3);
        assert!(completes);
        assert!(!plan.blocks_own_deployment(&names::child_name(a)));
    }

    #[test]
    fn a_same_name_deployment_blocks_ours_and_goes_first() {
        let s = "alice-firefox";
        let child = names::child_name(s);
        let plan = plan(s, &child, true, &old_set(s));
        assert!(plan.blocks_own_deployment(&child));
        let Progress::Delete { objects, completes } = plan.progress(false) else {
            panic!("expected the deployment to go now");
        };
        assert_eq!(
            objects,
            vec![object(LegacyKind::Deployment, "ss-alice-firefox", Some(s))]
        );
        assert!(
            !completes,
            "the old service still waits for the replacement"
        );
    }

    #[test]
    fn only_a_ready_pod_of_our_deployment_is_a_replacement() {
        let pod = |replica_set: &str, ready: bool| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "labels": {"session": "s", "pod-template-hash": "abc"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                        "name": replica_set, "uid": "u", "controller": true}]},
                "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
            }))
            .expect("pod")
        };
        let ours = pod("ss-s-abc", true);
        let old = pod("ss-alice-firefox-abc", true);
        let starting = pod("ss-s-abc", false);
        assert!(replacement_ready(&[&old, &ours], "ss-s"));
        assert!(
            !replacement_ready(&[&old], "ss-s"),
            "the old pod is no replacement"
        );
        assert!(!replacement_ready(&[&old, &starting], "ss-s"));
    }

    #[test]
    fn an_empty_plan_does_nothing() {
        let plan = plan("s", "ss-s", true, &[]);
        assert!(!plan.adopts());
        assert_eq!(plan.progress(true), Progress::Nothing);
        assert_eq!(plan.to_string(), "");
    }

    fn meta(labels: &[(&str, &str)], owner: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: Some("ss-alice-firefox".into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            owner_references: owner.map(|name| {
                vec![OwnerReference {
                    api_version: "stream.space/v1alpha1".into(),
                    kind: "Session".into(),
                    name: name.into(),
                    uid: "u".into(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]
            }),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn classify_recognises_only_old_objects() {
        let full = [
            ("app", APP_SESSION),
            ("user", "alice"),
            ("template", "firefox"),
            ("session", "by-label"),
        ];
        let old_selector: BTreeMap<String, String> = full
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let our_selector: BTreeMap<String, String> = names::selector_labels("s");
        let rows = [
            (
                "old deployment, owner ref wins",
                LegacyKind::Deployment,
                meta(&full, Some("by-owner")),
                Some(&old_selector),
                Some(Some("by-owner")),
            ),
            (
                "old deployment, label only",
                LegacyKind::Deployment,
                meta(&full, None),
                Some(&old_selector),
                Some(Some("by-label")),
            ),
            (
                "our deployment",
                LegacyKind::Deployment,
                meta(&full, Some("s")),
                Some(&our_selector),
                None,
            ),
            (
                "not a session object",
                LegacyKind::Service,
                meta(&[("app", "other")], None),
                None,
                None,
            ),
            (
                "old service",
                LegacyKind::Service,
                meta(&full, Some("o")),
                None,
                Some(Some("o")),
            ),
            (
                "no session at all",
                LegacyKind::Ingress,
                meta(&[("app", APP_SESSION)], None),
                None,
                Some(None),
            ),
        ];
        for (case, kind, meta, selector, expected) in rows {
            let found = LegacyObject::classify(kind, &meta, selector);
            assert_eq!(
                found.map(|o| o.belongs_to),
                expected.map(|owner| owner.map(str::to_string)),
                "{case}"
            );
        }
    }
}
