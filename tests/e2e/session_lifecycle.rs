//! Session lifecycle against the real API server, controller manager and node simulator.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use streamspace_controller::crd::{Session, SessionPhase, Template};

use crate::support::{TestEnv, wait_for, wait_gone, wait_object};

fn template(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "Template",
        "metadata": {"name": name},
        "spec": {
            "displayName": "Firefox", "baseImage": "lscr.io/linuxserver/firefox:latest",
            "env": [{"name": "PUID", "value": "1000"}],
            "vnc": {"enabled": true, "port": 3000},
            "defaultResources": {"requests": {"cpu": "500m", "memory": "1Gi"}}
        }
    })
}

fn session(name: &str, user: &str, template: &str, state: &str) -> serde_json::Value {
    json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "Session",
        "metadata": {"name": name},
        "spec": {"user": user, "template": template, "state": state}
    })
}

fn phase(session: &Session) -> Option<SessionPhase> {
    session.status.as_ref().and_then(|s| s.phase.clone())
}

fn is_phase(expected: SessionPhase) -> impl Fn(&Session) -> bool {
    move |s| phase(s) == Some(expected.clone())
}

fn condition<'a>(
    session: &'a Session,
    type_: &str,
) -> Option<&'a streamspace_controller::crd::Condition> {
    session
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

async fn set_state(env: &TestEnv, name: &str, state: &str) {
    env.api::<Session>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"state": state}})),
        )
        .await
        .expect("patch state");
}

async fn replicas(env: &TestEnv, name: &str) -> Option<i32> {
    env.api::<Deployment>()
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|d| d.spec)
        .and_then(|s| s.replicas)
}

#[tokio::test]
async fn running_session_gets_its_objects_and_becomes_running() {
    let env = TestEnv::new("running").await;
    env.create::<Template>(template("firefox")).await;
    env.create::<Session>(session("alice-1", "alice", "firefox", "running"))
        .await;

    let running = wait_object(
        &env.api::<Session>(),
        "alice-1",
        "phase Running",
        is_phase(SessionPhase::Running),
    )
    .await;
    let uid = running.uid().expect("uid");

    let deployment = env
        .api::<Deployment>()
        .get("ss-alice-1")
        .await
        .expect("deployment ss-alice-1");
    let expected_labels = BTreeMap::from([
        ("app".to_string(), "streamspace-session".to_string()),
        ("user".to_string(), "alice".to_string()),
        ("template".to_string(), "firefox".to_string()),
        ("session".to_string(), "alice-1".to_string()),
    ]);
    assert_eq!(deployment.labels(), &expected_labels);
    let owner = &deployment.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("Session", uid.as_str(), Some(true))
    );
    let spec = deployment.spec.expect("spec");
    assert_eq!(spec.replicas, Some(1));
    let pod_template = spec.template;
    assert_eq!(
        pod_template.metadata.and_then(|m| m.labels),
        Some(expected_labels.clone())
    );
    let container = &pod_template.spec.expect("pod spec").containers[0];
    assert_eq!(container.name, "session");
    let port = &container.ports.as_ref().expect("ports")[0];
    assert_eq!(
        (port.name.as_deref(), port.container_port),
        (Some("vnc"), 3000)
    );

    let service = env
        .api::<Service>()
        .get("ss-alice-1")
        .await
        .expect("service");
    assert_eq!(service.labels(), &expected_labels);
    assert_eq!(service.owner_references()[0].uid, uid);
    let service_port = &service.spec.and_then(|s| s.ports).expect("ports")[0];
    assert_eq!(
        (service_port.name.as_deref(), service_port.port),
        (Some("vnc"), 3000)
    );

    let ingress = env
        .api::<Ingress>()
        .get("ss-alice-1")
        .await
        .expect("ingress");
    let host = ingress
        .spec
        .and_then(|s| s.rules)
        .and_then(|r| r[0].host.clone());
    assert_eq!(host.as_deref(), Some("alice-1.test.local"));

    let claim = env
        .api::<PersistentVolumeClaim>()
        .get("home-alice")
        .await
        .expect("home claim");
    assert!(
        claim.owner_references().is_empty(),
        "home claim must not be owned"
    );
    assert_eq!(
        claim.labels().get("app").map(String::as_str),
        Some("streamspace-user-home")
    );
    assert_eq!(
        claim.spec.and_then(|s| s.access_modes),
        Some(vec!["ReadWriteMany".to_string()])
    );

    let pods = env
        .api::<Pod>()
        .list(&ListParams::default().labels("session=alice-1"))
        .await
        .expect("pods");
    assert_eq!(pods.items.len(), 1);
    let status = running.status.expect("status");
    assert_eq!(
        status.pod_name.as_deref(),
        Some(pods.items[0].name_any().as_str())
    );
    assert_eq!(status.url.as_deref(), Some("https://alice-1.test.local"));
    assert_eq!(status.observed_generation, running.metadata.generation);
    assert!(status.reconciled_at.is_some());
    for type_ in ["Ready", "TemplateResolved", "DeploymentReady"] {
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect(type_);
        assert_eq!(c.status, "True", "{type_}: {c:?}");
    }
    env.cleanup().await;
}

#[tokio::test]
async fn hibernate_and_wake_scale_the_deployment() {
    let env = TestEnv::new("hibernate").await;
    env.create::<Template>(template("firefox")).await;
    env.create::<Session>(session("bob-1", "bob", "firefox", "running"))
        .await;
    let sessions = env.api::<Session>();
    wait_object(
        &sessions,
        "bob-1",
        "Running",
        is_phase(SessionPhase::Running),
    )
    .await;

    set_state(&env, "bob-1", "hibernated").await;
    let hibernated = wait_object(
        &sessions,
        "bob-1",
        "Hibernated",
        is_phase(SessionPhase::Hibernated),
    )
    .await;
    assert_eq!(replicas(&env, "ss-bob-1").await, Some(0));
    assert_eq!(hibernated.status.and_then(|s| s.pod_name), None);
    env.api::<Service>()
        .get("ss-bob-1")
        .await
        .expect("service kept while hibernated");
    env.api::<PersistentVolumeClaim>()
        .get("home-bob")
        .await
        .expect("claim kept while hibernated");

    set_state(&env, "bob-1", "running").await;
    wait_object(
        &sessions,
        "bob-1",
        "Running again",
        is_phase(SessionPhase::Running),
    )
    .await;
    assert_eq!(replicas(&env, "ss-bob-1").await, Some(1));
    env.cleanup().await;
}

#[tokio::test]
async fn terminate_deletes_the_deployment_and_keeps_the_claim() {
    let env = TestEnv::new("terminate").await;
    env.create::<Template>(template("firefox")).await;
    env.create::<Session>(session("carol-1", "carol", "firefox", "running"))
        .await;
    let sessions = env.api::<Session>();
    wait_object(
        &sessions,
        "carol-1",
        "Running",
        is_phase(SessionPhase::Running),
    )
    .await;

    set_state(&env, "carol-1", "terminated").await;
    wait_object(
        &sessions,
        "carol-1",
        "Terminated",
        is_phase(SessionPhase::Terminated),
    )
    .await;
    wait_gone(&env.api::<Deployment>(), "ss-carol-1", "deployment deleted").await;
    env.api::<PersistentVolumeClaim>()
        .get("home-carol")
        .await
        .expect("claim kept");
    env.cleanup().await;
}

#[tokio::test]
async fn deleting_a_session_collects_its_objects_but_not_the_home_claim() {
    let env = TestEnv::new("delete").await;
    env.create::<Template>(template("firefox")).await;
    env.create::<Session>(session("dan-1", "dan", "firefox", "running"))
        .await;
    let sessions = env.api::<Session>();
    wait_object(
        &sessions,
        "dan-1",
        "Running",
        is_phase(SessionPhase::Running),
    )
    .await;

    sessions
        .delete("dan-1", &DeleteParams::foreground())
        .await
        .expect("delete session");
    wait_gone(
        &env.api::<Deployment>(),
        "ss-dan-1",
        "deployment garbage-collected",
    )
    .await;
    wait_gone(
        &env.api::<Service>(),
        "ss-dan-1",
        "service garbage-collected",
    )
    .await;
    wait_gone(&sessions, "dan-1", "session gone").await;
    env.api::<PersistentVolumeClaim>()
        .get("home-dan")
        .await
        .expect("home claim survives");
    env.cleanup().await;
}

#[tokio::test]
async fn missing_template_waits_then_proceeds_and_invalid_template_fails() {
    let env = TestEnv::new("template-gate").await;
    let sessions = env.api::<Session>();
    env.create::<Session>(session("erin-1", "erin", "later", "running"))
        .await;
    let waiting = wait_object(&sessions, "erin-1", "TemplateResolved=False", |s| {
        condition(s, "TemplateResolved").is_some_and(|c| c.status == "False")
    })
    .await;
    assert_eq!(phase(&waiting), Some(SessionPhase::Pending));
    let resolved = condition(&waiting, "TemplateResolved").expect("condition");
    assert_eq!(resolved.reason, "TemplateNotFound");
    assert!(resolved.message.contains("'later'"), "{}", resolved.message);
    assert!(
        env.api::<Deployment>()
            .get_opt("ss-erin-1")
            .await
            .expect("get")
            .is_none()
    );

    env.create::<Template>(template("later")).await;
    wait_object(
        &sessions,
        "erin-1",
        "Running after the template appears",
        is_phase(SessionPhase::Running),
    )
    .await;

    env.create::<Template>(json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "Template",
        "metadata": {"name": "broken"},
        "spec": {"displayName": "Bad port", "baseImage": "img", "vnc": {"enabled": true, "port": 80}}
    }))
    .await;
    env.create::<Session>(session("erin-2", "erin", "broken", "running"))
        .await;
    let failed = wait_object(
        &sessions,
        "erin-2",
        "Failed",
        is_phase(SessionPhase::Failed),
    )
    .await;
    let ready = condition(&failed, "Ready").expect("Ready condition");
    assert_eq!(
        ready.message,
        "VNC port must be between 1024 and 65535 (got 80)"
    );
    let templates = env.api::<Template>();
    let broken = wait_object(&templates, "broken", "template status", |t| {
        t.status.is_some()
    })
    .await;
    let status = broken.status.expect("status");
    assert!(!status.valid);
    assert_eq!(
        status.message,
        "VNC port must be between 1024 and 65535 (got 80)"
    );
    let good = wait_object(&templates, "later", "template status", |t| {
        t.status.is_some()
    })
    .await;
    assert_eq!(
        good.status.map(|s| (s.valid, s.message)),
        Some((true, "Template is valid and ready to use".to_string()))
    );
    env.cleanup().await;
}

#[tokio::test]
async fn legacy_flat_resources_become_requests_and_limits() {
    let env = TestEnv::new("flat-resources").await;
    env.create::<Template>(template("firefox")).await;
    let mut body = session("fay-1", "fay", "firefox", "running");
    body["spec"]["resources"] = json!({"memory": "2Gi", "cpu": "1000m"});
    body["spec"]["persistentHome"] = json!(false);
    env.create::<Session>(body).await;
    let stored = env.api::<Session>().get("fay-1").await.expect("session");
    assert!(
        !stored.spec.persistent_home,
        "persistentHome: false survives the API server"
    );

    let deployment =
        wait_object(&env.api::<Deployment>(), "ss-fay-1", "deployment", |_| true).await;
    let container = deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod")
        .containers[0]
        .clone();
    let resources = container.resources.expect("resources");
    for map in [
        resources.requests.expect("requests"),
        resources.limits.expect("limits"),
    ] {
        assert_eq!(map.get("memory").map(|q| q.0.as_str()), Some("2Gi"));
        assert_eq!(map.get("cpu").map(|q| q.0.as_str()), Some("1"));
    }
    assert!(
        container.volume_mounts.is_none(),
        "no home mount without persistentHome"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn last_activity_written_by_others_survives_reconciles() {
    let env = TestEnv::new("last-activity").await;
    env.create::<Template>(template("firefox")).await;
    env.create::<Session>(session("gus-1", "gus", "firefox", "running"))
        .await;
    let sessions = env.api::<Session>();
    wait_object(
        &sessions,
        "gus-1",
        "Running",
        is_phase(SessionPhase::Running),
    )
    .await;

    let stamp = "2026-01-02T03:04:05Z";
    sessions
        .patch_status(
            "gus-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"lastActivity": stamp}})),
        )
        .await
        .expect("heartbeat-style patch");
    set_state(&env, "gus-1", "hibernated").await;
    let hibernated = wait_object(
        &sessions,
        "gus-1",
        "Hibernated",
        is_phase(SessionPhase::Hibernated),
    )
    .await;
    let kept = hibernated
        .status
        .and_then(|s| s.last_activity)
        .map(|t| t.0.to_string());
    assert_eq!(kept.as_deref(), Some(stamp));
    env.cleanup().await;
}

#[tokio::test]
async fn restart_mid_way_converges_without_duplicates() {
    let mut env = TestEnv::new("restart").await;
    env.create::<Template>(template("firefox")).await;
    let names: Vec<String> = (0..6).map(|i| format!("hank-{i}")).collect();
    for name in &names {
        env.create::<Session>(session(name, "hank", "firefox", "running"))
            .await;
    }
    // Crash as soon as the first Deployment exists, with the rest still to do.
    let deployments = env.api::<Deployment>();
    wait_for(
        "a first deployment",
        || async {
            deployments
                .list(&ListParams::default())
                .await
                .map(|l| l.items.len())
                .unwrap_or(0)
        },
        |n| *n >= 1,
    )
    .await;
    env.controller.take().expect("controller").kill().await;
    env.start_controller().await;

    let sessions = env.api::<Session>();
    for name in &names {
        wait_object(
            &sessions,
            name,
            "Running after restart",
            is_phase(SessionPhase::Running),
        )
        .await;
    }
    let all = deployments
        .list(&ListParams::default())
        .await
        .expect("list");
    assert_eq!(all.items.len(), names.len(), "one deployment per session");
    let pods = env
        .api::<Pod>()
        .list(&ListParams::default().labels("app=streamspace-session"))
        .await
        .expect("pods");
    let live = pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .count();
    assert_eq!(live, names.len(), "one pod per session");
    let claims = env
        .api::<PersistentVolumeClaim>()
        .list(&ListParams::default())
        .await
        .expect("claims");
    assert_eq!(claims.items.len(), 1, "one shared home claim for the user");
    env.cleanup().await;
}

/// Waits until Deployment `name`'s status has settled (the controller manager has nothing
/// left to write) and no session reconcile is in flight.
async fn wait_settled(env: &TestEnv, name: &str) {
    wait_object(
        &env.api::<Deployment>(),
        name,
        "the Deployment's status to settle",
        |d| {
            let generation = d.metadata.generation;
            d.status.as_ref().is_some_and(|s| {
                s.observed_generation == generation
                    && s.replicas == Some(1)
                    && s.updated_replicas == Some(1)
                    && s.ready_replicas == Some(1)
                    && s.available_replicas == Some(1)
            })
        },
    )
    .await;
    let (_, finished) = env.reconciles("session");
    env.wait_reconciled("session", finished).await;
}

#[tokio::test]
async fn steady_state_reconcile_writes_nothing() {
    let mut env = TestEnv::new("steady").await;
    env.create::<Template>(template("firefox")).await;
    env.create::<Session>(session("ida-1", "ida", "firefox", "running"))
        .await;
    let sessions = env.api::<Session>();
    wait_object(
        &sessions,
        "ida-1",
        "Running",
        is_phase(SessionPhase::Running),
    )
    .await;
    // Before the snapshot: the Deployment's status settled (the controller manager has nothing
    // left to write) and no session reconcile in flight.
    wait_settled(&env, "ss-ida-1").await;

    let versions = |env: &TestEnv| {
        let (s, d, svc, i) = (
            env.api::<Session>(),
            env.api::<Deployment>(),
            env.api::<Service>(),
            env.api::<Ingress>(),
        );
        async move {
            (
                s.get("ida-1").await.expect("s").resource_version(),
                d.get("ss-ida-1").await.expect("d").resource_version(),
                svc.get("ss-ida-1").await.expect("svc").resource_version(),
                i.get("ss-ida-1").await.expect("i").resource_version(),
            )
        }
    };
    let before = versions(&env).await;
    // A restarted controller reconciles every session once, from its initial list.
    env.controller.take().expect("controller").stop().await;
    env.start_controller().await;
    // Evidence first: it finished a reconcile of the session (its initial list) and has none
    // in flight; only then is the absence of writes meaningful.
    env.wait_reconciled("session", 1.0).await;
    let controller = env.controller.as_ref().expect("controller");
    assert_eq!(
        controller.writes(),
        "",
        "a steady-state reconcile must not write"
    );
    assert_eq!(versions(&env).await, before);
    env.cleanup().await;
}

/// Writes of kind `kind` by the session reconciler so far.
fn session_writes(env: &TestEnv, kind: &str) -> f64 {
    env.metric(
        "streamspace_controller_api_writes_total",
        &format!("controller=\"session\",kind=\"{kind}\""),
    )
}

#[tokio::test]
async fn one_write_per_child_and_no_reconcile_for_heartbeats() {
    let mut env = TestEnv::new("heartbeat-only").await;
    env.create::<Template>(template("firefox")).await;
    env.create::<Session>(session("kai-1", "kai", "firefox", "running"))
        .await;
    let sessions = env.api::<Session>();
    // Running, and the idle side's start clock written (a change the reconciler ignores too).
    wait_object(&sessions, "kai-1", "Running with startedAt", |s| {
        is_phase(SessionPhase::Running)(s)
            && s.status.as_ref().is_some_and(|s| s.started_at.is_some())
    })
    .await;
    wait_settled(&env, "ss-kai-1").await;
    // Each child was written once, however many reconciles ran before its write reached the
    // cache: a write the cache does not show yet is not repeated.
    for kind in ["deployment", "service", "ingress", "persistentvolumeclaim"] {
        assert_eq!(session_writes(&env, kind), 1.0, "{kind} writes");
    }

    // A fresh controller has exactly one reconcile of the settled session to do (its initial
    // list) and nothing queued after it but the long resync.
    env.controller.take().expect("controller").stop().await;
    env.start_controller().await;
    env.wait_reconciled("session", 1.0).await;

    let ignored = || env.metric("streamspace_controller_ignored_changes_total", "session");
    // A window of heartbeats the session controller saw (the ignored-changes counter) in which
    // it started no reconcile proves the filter: without it every heartbeat starts one. Other
    // causes can start reconciles during a window on a loaded machine (the restarted
    // controller's other watches delivering their initial objects late, kube-controller-manager
    // updating the Deployment's status), so a window with reconciles is tried again; heartbeats
    // that started reconciles would do so in every window.
    let heartbeats = 3;
    let mut started_per_window = Vec::new();
    for window in 1..=5 {
        let ignored_before = ignored();
        let (started_before, _) = env.reconciles("session");
        for minute in 0..heartbeats {
            let stamp = format!("2026-01-02T0{window}:0{minute}:00Z");
            sessions
                .patch_status(
                    "kai-1",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"lastActivity": stamp}})),
                )
                .await
                .expect("heartbeat-style patch");
        }
        wait_for(
            "the heartbeats to reach the session controller",
            || async { ignored() },
            |n| *n >= ignored_before + f64::from(heartbeats),
        )
        .await;
        started_per_window.push(env.reconciles("session").0 - started_before);
        if started_per_window.last() == Some(&0.0) {
            break;
        }
    }
    assert_eq!(
        started_per_window.last(),
        Some(&0.0),
        "reconciles started in each window of {heartbeats} heartbeats: {started_per_window:?}"
    );

    // A change the reconciler reads still starts one.
    set_state(&env, "kai-1", "hibernated").await;
    wait_object(
        &sessions,
        "kai-1",
        "Hibernated",
        is_phase(SessionPhase::Hibernated),
    )
    .await;
    env.cleanup().await;
}

#[tokio::test]
async fn malformed_sessions_fail_clearly_without_blocking_others() {
    let env = TestEnv::new("malformed").await;
    env.create::<Template>(template("firefox")).await;

    // The schema rejects an unknown state outright, with a message naming the field.
    let unknown: Session =
        serde_json::from_value(session("jo-0", "jo", "firefox", "paused")).expect("typed");
    let error = env
        .api::<Session>()
        .create(&PostParams::default(), &unknown)
        .await
        .expect_err("rejected");
    assert!(error.to_string().contains("spec.state"), "{error}");

    let mut bad = session("jo-1", "jo", "firefox", "running");
    bad["spec"]["resources"] = json!({"requests": {"cpu": "lots"}});
    env.create::<Session>(bad).await;
    env.create::<Session>(session("jo-2", "jo", "firefox", "running"))
        .await;

    let sessions = env.api::<Session>();
    let failed = wait_object(&sessions, "jo-1", "Failed", is_phase(SessionPhase::Failed)).await;
    let ready = condition(&failed, "Ready").expect("Ready");
    assert_eq!(ready.reason, "InvalidResources");
    assert!(
        ready.message.contains("resources.requests.cpu"),
        "{}",
        ready.message
    );
    wait_object(
        &sessions,
        "jo-2",
        "the valid neighbour Running",
        is_phase(SessionPhase::Running),
    )
    .await;
    assert!(
        env.api::<Deployment>()
            .get_opt("ss-jo-1")
            .await
            .expect("get")
            .is_none()
    );

    let events: Api<Event> = env.api();
    let warning = wait_for(
        "a warning event",
        || async {
            events
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default()
        },
        |items| {
            items
                .iter()
                .any(|e| e.reason.as_deref() == Some("InvalidResources"))
        },
    )
    .await;
    assert!(
        warning
            .iter()
            .any(|e| e.type_.as_deref() == Some("Warning"))
    );
    env.cleanup().await;
}
