use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
use k8s_openapi::api::core::v1::{PersistentVolumeClaimStatus, PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;
use crate::crd::SessionSpec;
use crate::session::fixtures::{owner, spec, template, with_ctx};
use crate::session::objects::SessionSettings;

fn decide_for(spec: &SessionSpec, observed: &Observed<'_>) -> Decision {
    with_ctx(spec, |ctx| decide(ctx, observed))
}

fn desired_deployment(spec: &SessionSpec, available: i32) -> Deployment {
    let mut deployment = with_ctx(spec, |ctx| objects::deployment(ctx, &template(), 1));
    deployment.status = Some(DeploymentStatus {
        available_replicas: Some(available),
        ..DeploymentStatus::default()
    });
    deployment
}

fn pod(name: &str, ready: bool) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([("session".into(), "s1".into())])),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

fn condition_of<'a>(decision: &'a Decision, type_: &str) -> Option<&'a ConditionReport> {
    decision.status.conditions.iter().find(|c| c.type_ == type_)
}

#[test]
fn new_running_session_creates_everything_and_is_pending() {
    let spec = spec("running");
    let template = template();
    let decision = decide_for(
        &spec,
        &Observed {
            template: Some(&template),
            ..Observed::default()
        },
    );
    assert!(matches!(decision.deployment, DeploymentChange::Apply(_)));
    assert!(decision.service.is_some());
    assert!(decision.ingress.is_some());
    assert!(decision.home_claim.is_some());
    assert_eq!(decision.status.phase, SessionPhase::Pending);
    assert_eq!(
        condition_of(&decision, CONDITION_READY).map(|c| c.status),
        Some(false)
    );
}

#[test]
fn ready_pod_and_available_replica_mean_running_with_no_changes() {
    let spec = spec("running");
    let template = template();
    let deployment = desired_deployment(&spec, 1);
    let settings = SessionSettings::default();
    let ctx = SessionContext {
        name: "s1",
        namespace: "ns",
        spec: &spec,
        owner: owner(),
        settings: &settings,
    };
    let service = objects::service(&ctx, &template);
    let ingress = objects::ingress(&ctx, &template);
    let claim = objects::home_claim(&ctx);
    let ready = pod("ss-s1-abc", true);
    let observed = Observed {
        template: Some(&template),
        deployment: Some(&deployment),
        service: Some(&service),
        ingress: ingress.as_ref(),
        home_claim: Some(&claim),
        pods: vec![&ready],
    };
    let decision = decide(&ctx, &observed);
    assert_eq!(decision.deployment, DeploymentChange::Keep);
    assert!(
        decision.service.is_none() && decision.ingress.is_none() && decision.home_claim.is_none()
    );
    assert_eq!(decision.status.phase, SessionPhase::Running);
    assert_eq!(decision.status.pod_name.as_deref(), Some("ss-s1-abc"));
    assert_eq!(
        decision.status.url.as_deref(),
        Some("https://s1.streamspace.local")
    );
}

#[test]
fn available_replica_without_ready_pod_is_still_pending() {
    let spec = spec("running");
    let template = template();
    let deployment = desired_deployment(&spec, 1);
    let starting = pod("p", false);
    let decision = decide_for(
        &spec,
        &Observed {
            template: Some(&template),
            deployment: Some(&deployment),
            pods: vec![&starting],
            ..Observed::default()
        },
    );
    assert_eq!(decision.status.phase, SessionPhase::Pending);
    assert_eq!(decision.status.pod_name.as_deref(), Some("p"));
}

#[test]
fn missing_template_waits_in_pending() {
    let decision = decide_for(&spec("running"), &Observed::default());
    assert_eq!(decision.status.phase, SessionPhase::Pending);
    assert_eq!(decision.deployment, DeploymentChange::Keep);
    let resolved = condition_of(&decision, CONDITION_TEMPLATE_RESOLVED).expect("condition");
    assert!(!resolved.status);
    assert_eq!(resolved.reason, "TemplateNotFound");
    assert_eq!(
        resolved.message,
        "Template 'firefox' not found in namespace 'ns'"
    );
}

#[test]
fn invalid_template_fails_with_its_message() {
    let broken: TemplateSpec =
        serde_json::from_value(serde_json::json!({"displayName": "x"})).expect("t");
    let decision = decide_for(
        &spec("running"),
        &Observed {
            template: Some(&broken),
            ..Observed::default()
        },
    );
    assert_eq!(decision.status.phase, SessionPhase::Failed);
    assert_eq!(
        condition_of(&decision, CONDITION_READY).map(|c| c.message.as_str()),
        Some("baseImage is required")
    );
}

#[test]
fn hibernate_scales_to_zero_without_needing_the_template() {
    let running = spec("running");
    let deployment = desired_deployment(&running, 1);
    let decision = decide_for(
        &spec("hibernated"),
        &Observed {
            deployment: Some(&deployment),
            ..Observed::default()
        },
    );
    assert_eq!(decision.deployment, DeploymentChange::ScaleToZero);
    assert_eq!(decision.status.phase, SessionPhase::Hibernated);
    assert_eq!(decision.status.pod_name, None);
}

#[test]
fn wake_after_hibernation_reapplies_one_replica() {
    let spec = spec("running");
    let template = template();
    let mut deployment = desired_deployment(&spec, 0);
    if let Some(s) = deployment.spec.as_mut() {
        s.replicas = Some(0);
    }
    let decision = decide_for(
        &spec,
        &Observed {
            template: Some(&template),
            deployment: Some(&deployment),
            ..Observed::default()
        },
    );
    assert!(matches!(decision.deployment, DeploymentChange::Apply(_)));
}

#[test]
fn terminate_deletes_the_deployment_only() {
    let running = spec("running");
    let deployment = desired_deployment(&running, 1);
    let decision = decide_for(
        &spec("terminated"),
        &Observed {
            deployment: Some(&deployment),
            ..Observed::default()
        },
    );
    assert_eq!(decision.deployment, DeploymentChange::Delete);
    assert!(decision.service.is_none() && decision.home_claim.is_none());
    assert_eq!(decision.status.phase, SessionPhase::Terminated);
    assert!(condition_of(&decision, CONDITION_PVC_BOUND).is_none());
}

#[test]
fn unknown_state_and_bad_quantities_fail_clearly() {
    let template = template();
    let unknown = decide_for(
        &spec("paused"),
        &Observed {
            template: Some(&template),
            ..Observed::default()
        },
    );
    assert_eq!(unknown.status.phase, SessionPhase::Failed);
    assert_eq!(
        condition_of(&unknown, CONDITION_READY).map(|c| c.reason),
        Some("UnknownState")
    );
    assert_eq!(unknown.deployment, DeploymentChange::Keep);

    let bad: SessionSpec = serde_json::from_value(serde_json::json!({
        "user": "a", "template": "t", "state": "running", "resources": {"requests": {"cpu": "lots"}}
    }))
    .expect("spec");
    let decision = decide_for(
        &bad,
        &Observed {
            template: Some(&template),
            ..Observed::default()
        },
    );
    assert_eq!(decision.status.phase, SessionPhase::Failed);
    let ready = condition_of(&decision, CONDITION_READY).expect("ready");
    assert_eq!(ready.reason, "InvalidResources");
    assert!(
        ready.message.contains("resources.requests.cpu"),
        "{}",
        ready.message
    );
}

#[test]
fn pvc_condition_follows_the_claim_phase() {
    let spec = spec("hibernated");
    let claim = PersistentVolumeClaim {
        status: Some(PersistentVolumeClaimStatus {
            phase: Some("Bound".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let decision = decide_for(
        &spec,
        &Observed {
            home_claim: Some(&claim),
            ..Observed::default()
        },
    );
    assert_eq!(
        condition_of(&decision, CONDITION_PVC_BOUND).map(|c| c.status),
        Some(true)
    );
}

fn report(phase: SessionPhase) -> StatusReport {
    StatusReport {
        phase,
        pod_name: Some("p".into()),
        url: None,
        conditions: vec![ConditionReport {
            type_: CONDITION_READY,
            status: true,
            reason: "Running",
            message: "ok".into(),
        }],
    }
}

#[test]
fn status_update_is_none_when_nothing_changed() {
    let t0: Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
    let t1: Timestamp = "2026-01-01T00:05:00Z".parse().expect("time");
    let first =
        status_update(None, &report(SessionPhase::Running), Some(1), t0).expect("first write");
    assert_eq!(
        status_update(Some(&first), &report(SessionPhase::Running), Some(1), t1),
        None
    );
}

#[test]
fn status_update_keeps_transition_time_of_unchanged_conditions() {
    let t0: Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
    let t1: Timestamp = "2026-01-01T00:05:00Z".parse().expect("time");
    let first = status_update(None, &report(SessionPhase::Pending), Some(1), t0).expect("write");
    let second =
        status_update(Some(&first), &report(SessionPhase::Running), Some(1), t1).expect("write");
    assert_eq!(second.conditions[0].last_transition_time, Some(Time(t0)));
    assert_eq!(second.reconciled_at, Some(Time(t1)));
}

#[test]
fn status_update_ignores_others_conditions_and_keeps_last_activity_out() {
    let t0: Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
    let mut current =
        status_update(None, &report(SessionPhase::Running), Some(1), t0).expect("write");
    current.conditions.push(Condition {
        type_: "Idle".into(),
        status: "False".into(),
        ..Condition::default()
    });
    current.last_activity = Some(Time(t0));
    assert_eq!(
        status_update(Some(&current), &report(SessionPhase::Running), Some(1), t0),
        None
    );
    let changed = status_update(
        Some(&current),
        &report(SessionPhase::Hibernated),
        Some(1),
        t0,
    )
    .expect("write");
    assert_eq!(
        changed.last_activity, None,
        "never written by the reconciler"
    );
}

#[test]
fn status_update_removes_a_condition_we_no_longer_report() {
    let t0: Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
    let mut current =
        status_update(None, &report(SessionPhase::Running), Some(1), t0).expect("write");
    current.conditions.push(Condition {
        type_: CONDITION_PVC_BOUND.into(),
        status: "True".into(),
        ..Condition::default()
    });
    assert!(status_update(Some(&current), &report(SessionPhase::Running), Some(1), t0).is_some());
}

#[test]
fn a_starting_session_writes_its_progress_at_most_once_per_interval() {
    let t0: Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
    let at = |seconds: i64| t0 + k8s_openapi::jiff::SignedDuration::from_secs(seconds);
    let pending = |pod: Option<&str>| StatusReport {
        pod_name: pod.map(str::to_string),
        ..report(SessionPhase::Pending)
    };
    let first = status_update(None, &pending(None), Some(1), t0).expect("first write");
    assert_eq!(
        progress_wait(None, &first, t0),
        None,
        "the first status at once"
    );

    let named = status_update(Some(&first), &pending(Some("p")), Some(1), at(3)).expect("change");
    assert_eq!(
        progress_wait(Some(&first), &named, at(3)),
        Some(PROGRESS_INTERVAL - Duration::from_secs(3)),
        "progress waits for the rest of the interval"
    );
    assert_eq!(progress_wait(Some(&first), &named, at(30)), None);
    assert_eq!(
        progress_wait(Some(&first), &named, at(-5)),
        None,
        "a last write stamped in the future holds nothing back"
    );

    let running = status_update(Some(&first), &report(SessionPhase::Running), Some(1), at(1));
    let running = running.expect("phase change");
    assert_eq!(
        progress_wait(Some(&first), &running, at(1)),
        None,
        "phase at once"
    );
    let edited = status_update(Some(&first), &pending(Some("p")), Some(2), at(1)).expect("gen");
    assert_eq!(
        progress_wait(Some(&first), &edited, at(1)),
        None,
        "new generation at once"
    );
    let template_missing = StatusReport {
        conditions: vec![ConditionReport {
            type_: CONDITION_READY,
            status: false,
            reason: "TemplateNotFound",
            message: "no template".into(),
        }],
        ..pending(None)
    };
    let missing = status_update(None, &template_missing, Some(1), t0).expect("first write");
    let found = status_update(Some(&missing), &pending(None), Some(1), at(1)).expect("change");
    assert_eq!(
        progress_wait(Some(&missing), &found, at(1)),
        None,
        "a new reason for not being ready at once"
    );
    let unstamped = SessionStatus {
        reconciled_at: None,
        ..first.clone()
    };
    assert_eq!(progress_wait(Some(&unstamped), &named, at(1)), None);
}

#[test]
fn a_ready_pod_without_its_service_in_the_cache_is_still_pending() {
    let spec = spec("running");
    let template = template();
    let deployment = desired_deployment(&spec, 1);
    let ready = pod("p", true);
    let decision = decide_for(
        &spec,
        &Observed {
            template: Some(&template),
            deployment: Some(&deployment),
            pods: vec![&ready],
            ..Observed::default()
        },
    );
    assert_eq!(decision.status.phase, SessionPhase::Pending);
    assert!(decision.service.is_some(), "the Service is (re)written");
    assert_eq!(
        condition_of(&decision, CONDITION_READY).map(|c| c.message.as_str()),
        Some("waiting for the session's Service")
    );
}
