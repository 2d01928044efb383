//! Shadow mode of the session reconciler: what a reconcile would change, as readable lines,
//! compared with what the legacy side left in the cluster. Pure: the reconciler passes the
//! decision it computed (and did not apply) and what it observed.
//!
//! Status fields the controller keeps only for itself (`observedGeneration`, `reconciledAt`,
//! conditions) are not compared: the legacy side never writes them, so they would always
//! differ and hide the differences that matter (phase, URL, pod).

use k8s_openapi::api::apps::v1::Deployment;

use super::names;
use super::objects::{self, Hashed};
use super::state::{Decision, DeploymentChange, Observed, StatusReport};
use crate::crd::SessionStatus;

/// What applying `decision` would change, one line per difference; empty when the cluster is
/// already what the controller would make it.
pub fn differences(
    session: &str,
    user: &str,
    decision: &Decision,
    observed: &Observed<'_>,
    current: Option<&SessionStatus>,
) -> Vec<String> {
    let child = names::child_name(session);
    let mut out = Vec::new();
    match &decision.deployment {
        DeploymentChange::Keep => {}
        DeploymentChange::Apply(desired) => match observed.deployment {
            None => out.push(format!("Deployment {child} missing")),
            Some(live) => {
                let (from, to) = (replicas(live), replicas(desired));
                // The replica count is part of the hash: name it alone when it is what differs.
                if from != to {
                    out.push(format!("Deployment {child}: replicas {from} -> {to}"));
                } else if objects::recorded_hash(live) != objects::recorded_hash(desired.as_ref()) {
                    out.push(format!(
                        "Deployment {child}: spec differs from the desired one"
                    ));
                }
            }
        },
        DeploymentChange::ScaleToZero => {
            let from = observed.deployment.map_or(1, replicas);
            out.push(format!("Deployment {child}: replicas {from} -> 0"));
        }
        DeploymentChange::Delete => out.push(format!("Deployment {child} present, to delete")),
    }
    if decision.service.is_some() {
        out.push(object_line("Service", &child, observed.service));
    }
    if decision.ingress.is_some() {
        out.push(object_line("Ingress", &child, observed.ingress));
    }
    if decision.home_claim.is_some() {
        out.push(format!(
            "PersistentVolumeClaim {} missing",
            names::home_claim_name(user)
        ));
    }
    out.extend(status_differences(&decision.status, current));
    out
}

fn object_line<T: Hashed>(kind: &str, name: &str, live: Option<&T>) -> String {
    match live {
        None => format!("{kind} {name} missing"),
        Some(_) => format!("{kind} {name}: spec differs from the desired one"),
    }
}

fn replicas(deployment: &Deployment) -> i32 {
    deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.replicas)
        .unwrap_or(1)
}

fn status_differences(wanted: &StatusReport, current: Option<&SessionStatus>) -> Vec<String> {
    let show = |value: Option<&str>| value.unwrap_or("<unset>").to_string();
    let phase = current.and_then(|s| s.phase.as_ref()).map(|p| p.as_str());
    let mut out = Vec::new();
    if phase != Some(wanted.phase.as_str()) {
        out.push(format!(
            "status.phase {} -> {}",
            show(phase),
            wanted.phase.as_str()
        ));
    }
    let url = current.and_then(|s| s.url.as_deref());
    if url != wanted.url.as_deref() {
        out.push(format!(
            "status.url {} -> {}",
            show(url),
            show(wanted.url.as_deref())
        ));
    }
    let pod = current.and_then(|s| s.pod_name.as_deref());
    if pod != wanted.pod_name.as_deref() {
        out.push(format!(
            "status.podName {} -> {}",
            show(pod),
            show(wanted.pod_name.as_deref())
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;

    use super::*;
    use crate::crd::{SessionPhase, SessionSpec};
    use crate::session::fixtures::{spec, template, with_ctx};
    use crate::session::state::decide;

    fn diff(spec: &SessionSpec, observed: &Observed<'_>, current: &SessionStatus) -> Vec<String> {
        let decision = with_ctx(spec, |ctx| decide(ctx, observed));
        differences("s1", "alice", &decision, observed, Some(current))
    }

    fn desired(spec: &SessionSpec, replicas: i32) -> Deployment {
        let mut deployment = with_ctx(spec, |ctx| objects::deployment(ctx, &template(), replicas));
        deployment.status = Some(DeploymentStatus {
            available_replicas: Some(replicas),
            ..DeploymentStatus::default()
        });
        deployment
    }

    fn status(phase: SessionPhase) -> SessionStatus {
        SessionStatus {
            phase: Some(phase),
            url: Some("https://s1.streamspace.local".into()),
            ..SessionStatus::default()
        }
    }

    #[test]
    fn table() {
        let running = spec("running");
        let hibernated = spec("hibernated");
        let terminated = spec("terminated");
        let tpl = template();
        let service = with_ctx(&running, |ctx| objects::service(ctx, &tpl));
        let ingress = with_ctx(&running, |ctx| objects::ingress(ctx, &tpl));
        let claim = PersistentVolumeClaim::default();
        let live_running = desired(&running, 1);
        let mut edited = desired(&running, 1);
        edited.spec = Some(DeploymentSpec {
            replicas: Some(1),
            ..DeploymentSpec::default()
        });
        edited
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(objects::HASH_ANNOTATION.into(), "other".into());
        let complete = |deployment| Observed {
            template: Some(&tpl),
            deployment,
            service: Some(&service),
            ingress: ingress.as_ref(),
            home_claim: Some(&claim),
            pods: vec![],
        };
        let cases: Vec<(&str, &SessionSpec, Observed<'_>, SessionStatus, Vec<&str>)> = vec![
            (
                "nothing built yet",
                &running,
                Observed {
                    template: Some(&tpl),
                    ..Observed::default()
                },
                SessionStatus::default(),
                vec![
                    "Deployment ss-s1 missing",
                    "Service ss-s1 missing",
                    "Ingress ss-s1 missing",
                    "PersistentVolumeClaim home-alice missing",
                    "status.phase <unset> -> Pending",
                    "status.url <unset> -> https://s1.streamspace.local",
                ],
            ),
            (
                "legacy built the same objects; no pod ready yet",
                &running,
                complete(Some(&live_running)),
                status(SessionPhase::Pending),
                vec![],
            ),
            (
                "legacy reports Running before any pod is ready",
                &running,
                complete(Some(&live_running)),
                status(SessionPhase::Running),
                vec!["status.phase Running -> Pending"],
            ),
            (
                "legacy changed the deployment",
                &running,
                complete(Some(&edited)),
                status(SessionPhase::Pending),
                vec!["Deployment ss-s1: spec differs from the desired one"],
            ),
            (
                "hibernated but still scaled up",
                &hibernated,
                complete(Some(&live_running)),
                status(SessionPhase::Running),
                vec![
                    "Deployment ss-s1: replicas 1 -> 0",
                    "status.phase Running -> Hibernated",
                ],
            ),
            (
                "terminated with a deployment left",
                &terminated,
                complete(Some(&live_running)),
                status(SessionPhase::Terminated),
                vec![
                    "Deployment ss-s1 present, to delete",
                    "status.url https://s1.streamspace.local -> <unset>",
                ],
            ),
        ];
        for (name, spec, observed, current, expected) in cases {
            assert_eq!(diff(spec, &observed, &current), expected, "{name}");
        }
    }

    #[test]
    fn replica_changes_are_named() {
        let running = spec("running");
        let tpl = template();
        let scaled_down = desired(&running, 0);
        let decision = with_ctx(&running, |ctx| {
            decide(
                ctx,
                &Observed {
                    template: Some(&tpl),
                    deployment: Some(&scaled_down),
                    ..Observed::default()
                },
            )
        });
        let lines = differences(
            "s1",
            "alice",
            &decision,
            &Observed {
                deployment: Some(&scaled_down),
                ..Observed::default()
            },
            None,
        );
        // The replica count is named alone, without a second line for the hash it changes.
        assert_eq!(lines[0], "Deployment ss-s1: replicas 0 -> 1");
        assert!(
            !lines.iter().any(|l| l.contains("spec differs")),
            "{lines:?}"
        );
    }
}
