//! Ownership flags seen from the controller side, against the real control plane: legacy mode
//! leaves objects alone, shadow mode reports and writes nothing, a flip takes effect at once,
//! hand-off waits for a legacy operation in flight and adopts what legacy built, and the quota
//! webhook and the connect handler follow their flags.
//!
//! Every test names its FeatureFlags with its own prefix (`<namespace>-<type>`), so tests
//! flipping flags in parallel never affect each other, and deletes them at the end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Node, PersistentVolumeClaim, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde_json::{Value, json};
use streamspace_controller::crd::{
    FeatureFlag, FlagMode, NodeOperation, NodeOperationPhase, Session, SessionPhase, SessionState,
    Template,
};
use streamspace_controller::devcluster::ADOPTED_NODE_LABEL;
use streamspace_controller::idle::deadline::{IdleSettings, MaxDurationAction};
use streamspace_controller::nodeop::edits::CORDON_ANNOTATION;
use streamspace_controller::ownership::handoff::{
    ACTED_BY_ANNOTATION, LEGACY_OPERATION_ANNOTATION, legacy_operation_value,
};
use streamspace_controller::session::objects::{self, SessionContext};

use crate::admission::{Certs, WebhookEnv, denial, running, set_quota_flag};
use crate::http_client::RunningApi;
use crate::idle::{connect, session, template};
use crate::support::{TEST_ENV_LABEL, TestEnv, wait_for, wait_object};

/// Field manager of the objects the tests build as the legacy API would.
const LEGACY: &str = "streamspace-api-legacy";

// ---------------------------------------------------------------------------------------------
// Helpers

fn flag_name(env: &TestEnv, resource: &str) -> String {
    format!("{}{resource}", env.flag_settings().name_prefix)
}

/// Creates or replaces this test's flag of `resource`.
async fn set_flag(env: &TestEnv, resource: &str, mode: &str) {
    let name = flag_name(env, resource);
    let flag = json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "FeatureFlag",
        "metadata": {"name": name},
        "spec": {"mode": mode, "percent": 100}
    });
    Api::<FeatureFlag>::all(env.client.clone())
        .patch(
            &name,
            &PatchParams::apply("e2e-test").force(),
            &Patch::Apply(flag),
        )
        .await
        .unwrap_or_else(|e| panic!("applying flag {name}: {e}"));
}

async fn delete_flags(env: &TestEnv) {
    let api = Api::<FeatureFlag>::all(env.client.clone());
    for resource in ["sessions", "idle", "autostart", "nodes", "quota"] {
        let _ = api
            .delete(&flag_name(env, resource), &DeleteParams::default())
            .await;
    }
}

async fn get(env: &TestEnv, name: &str) -> Session {
    env.api::<Session>().get(name).await.expect("get session")
}

fn phase(session: &Session) -> Option<SessionPhase> {
    session.status.as_ref().and_then(|s| s.phase.clone())
}

fn acted_by(session: &Session) -> Option<String> {
    session.annotations().get(ACTED_BY_ANNOTATION).cloned()
}

/// Field managers that wrote the object.
fn managers<K: Resource>(object: &K) -> Vec<String> {
    object
        .meta()
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|f| f.manager.clone())
        .collect()
}

fn written_by_controller<K: Resource>(object: &K) -> bool {
    managers(object)
        .iter()
        .any(|m| m.starts_with("streamspace-controller"))
}

async fn events(env: &TestEnv, object: &str, reason: &str) -> Vec<String> {
    env.api::<Event>()
        .list(&ListParams::default())
        .await
        .map(|list| {
            list.items
                .into_iter()
                .filter(|e| {
                    e.involved_object.name.as_deref() == Some(object)
                        && e.reason.as_deref() == Some(reason)
                })
                .filter_map(|e| e.message)
                .collect()
        })
        .unwrap_or_default()
}

/// Evidence before asserting that nothing happened: waits until `controller` has decided
/// `owner` for `resource_type` at least `decisions` times in all, has finished at least
/// `finished` reconciles, and has none in flight. An absence checked afterwards is the
/// controller's choice, not a controller that has not looked yet.
async fn wait_decided(
    env: &TestEnv,
    controller: &str,
    resource_type: &str,
    owner: &str,
    decisions: f64,
    finished: f64,
) {
    let label = format!("resource_type=\"{resource_type}\",owner=\"{owner}\"");
    wait_for(
        &format!("{controller} reconciles deciding {owner} for {resource_type}"),
        || async {
            let decided = env.metric("streamspace_ownership_decisions_total", &label);
            let (started, done) = env.reconciles(controller);
            (decided, started, done)
        },
        |(decided, started, done)| *decided >= decisions && *done >= finished && started == done,
    )
    .await;
}

async fn deployments_of(env: &TestEnv, session: &str) -> Vec<Deployment> {
    env.api::<Deployment>()
        .list(&ListParams::default().labels(&format!("session={session}")))
        .await
        .expect("list deployments")
        .items
}

async fn apply_as<K>(env: &TestEnv, manager: &str, object: &K)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Serialize
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let mut body = serde_json::to_value(object).expect("object to json");
    body["apiVersion"] = json!(K::api_version(&()));
    body["kind"] = json!(K::kind(&()));
    env.api::<K>()
        .patch(
            &object.name_any(),
            &PatchParams::apply(manager).force(),
            &Patch::Apply(body),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {} as {manager}: {e}", K::kind(&())));
}

/// Builds the session's children with the controller's own builders and applies them as the
/// legacy API does (its field manager), the way the legacy create handler leaves a session.
async fn build_as_legacy(env: &TestEnv, session: &Session) {
    let template: Template = env
        .api::<Template>()
        .get(&session.spec.template)
        .await
        .expect("template");
    let settings = TestEnv::settings();
    let name = session.name_any();
    let ctx = SessionContext {
        name: &name,
        namespace: &env.namespace,
        spec: &session.spec,
        owner: session.controller_owner_ref(&()).expect("owner reference"),
        settings: &settings,
    };
    let claim = objects::home_claim(&ctx);
    let _ = env
        .api::<PersistentVolumeClaim>()
        .create(&PostParams::default(), &claim)
        .await;
    apply_as(env, LEGACY, &objects::deployment(&ctx, &template.spec, 1)).await;
    apply_as(env, LEGACY, &objects::service(&ctx, &template.spec)).await;
    if let Some(ingress) = objects::ingress(&ctx, &template.spec) {
        apply_as(env, LEGACY, &ingress).await;
    }
}

async fn create_session(env: &TestEnv, name: &str, annotations: BTreeMap<String, String>) {
    let mut body = session(name, "running", "30m", "8h");
    body["metadata"]["annotations"] = json!(annotations);
    env.create::<Session>(body).await;
}

async fn merge_annotations(env: &TestEnv, name: &str, annotations: Value) {
    env.api::<Session>()
        .patch(
            name,
            &PatchParams {
                field_manager: Some(LEGACY.into()),
                ..PatchParams::default()
            },
            &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
        )
        .await
        .expect("annotate session");
}

/// Resource versions of the session and its children.
async fn versions(env: &TestEnv, name: &str) -> Vec<(String, Option<String>)> {
    let child = format!("ss-{name}");
    let s = get(env, name).await;
    let d = env.api::<Deployment>().get_opt(&child).await.ok().flatten();
    let svc = env.api::<Service>().get_opt(&child).await.ok().flatten();
    let i = env.api::<Ingress>().get_opt(&child).await.ok().flatten();
    vec![
        ("session".into(), s.resource_version()),
        ("deployment".into(), d.and_then(|d| d.resource_version())),
        ("service".into(), svc.and_then(|s| s.resource_version())),
        ("ingress".into(), i.and_then(|i| i.resource_version())),
    ]
}

// ---------------------------------------------------------------------------------------------
// Sessions

#[tokio::test]
async fn ownership_sessions_legacy_are_left_alone_until_the_flag_flips() {
    let mut env = TestEnv::without_controller("own-legacy").await;
    set_flag(&env, "sessions", "legacy").await;
    set_flag(&env, "idle", "legacy").await;
    env.start_controller().await;
    env.create::<Template>(template()).await;
    create_session(&env, "s1", BTreeMap::new()).await;

    wait_decided(&env, "session", "sessions", "legacy", 1.0, 1.0).await;
    let untouched = get(&env, "s1").await;
    assert!(untouched.status.is_none(), "{:?}", untouched.status);
    assert!(deployments_of(&env, "s1").await.is_empty());
    assert!(
        !written_by_controller(&untouched),
        "{:?}",
        managers(&untouched)
    );

    let flipped = Instant::now();
    set_flag(&env, "sessions", "controller").await;
    wait_for(
        "the controller to create the deployment after the flip",
        || async { deployments_of(&env, "s1").await.len() },
        |count| *count == 1,
    )
    .await;
    let acted = flipped.elapsed();
    let running = wait_object(&env.api::<Session>(), "s1", "phase Running", |s| {
        phase(s) == Some(SessionPhase::Running)
    })
    .await;
    eprintln!(
        "sessions flag flip legacy -> controller: deployment after {:.2} s, Running after {:.2} s",
        acted.as_secs_f64(),
        flipped.elapsed().as_secs_f64()
    );
    // No record: never touched by legacy, so acted on without a claim.
    assert_eq!(acted_by(&running), None);
    assert!(env.metric("streamspace_ownership_decisions_total", "owner=\"legacy\"") >= 1.0);
    delete_flags(&env).await;
    env.cleanup().await;
}

#[tokio::test]
async fn ownership_percent_splits_sessions_by_the_ownership_function() {
    use streamspace_controller::ownership::{Effective, Owner, ResourceType, Source, owner};

    let mut env = TestEnv::without_controller("own-percent").await;
    let name = flag_name(&env, "sessions");
    Api::<FeatureFlag>::all(env.client.clone())
        .patch(
            &name,
            &PatchParams::apply("e2e-test").force(),
            &Patch::Apply(json!({
                "apiVersion": "stream.space/v1alpha1", "kind": "FeatureFlag",
                "metadata": {"name": name},
                "spec": {"mode": "controller", "percent": 50}
            })),
        )
        .await
        .expect("flag");
    set_flag(&env, "idle", "legacy").await;
    env.start_controller().await;
    env.create::<Template>(template()).await;
    let flag = Effective {
        mode: FlagMode::Controller,
        percent: 50,
        source: Source::Baseline,
        expires_at: None,
    };
    let names: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
    let (mine, theirs): (Vec<&String>, Vec<&String>) = names.iter().partition(|n| {
        owner(&flag, ResourceType::Sessions, &env.namespace, n) == Owner::Controller
    });
    eprintln!(
        "percent 50: controller owns {} of {} sessions",
        mine.len(),
        names.len()
    );
    for n in &names {
        env.create::<Session>(session(n, "hibernated", "30m", "8h"))
            .await;
    }
    for n in &mine {
        wait_object(
            &env.api::<Session>(),
            n,
            "controller-owned reconciled",
            |s| phase(s) == Some(SessionPhase::Hibernated),
        )
        .await;
    }
    wait_decided(
        &env,
        "session",
        "sessions",
        "legacy",
        theirs.len() as f64,
        names.len() as f64,
    )
    .await;
    for n in &theirs {
        let s = get(&env, n).await;
        assert!(s.status.is_none(), "{n} is legacy-owned: {:?}", s.status);
    }
    // Raising to 100 hands the rest to the controller at once.
    set_flag(&env, "sessions", "controller").await;
    for n in &theirs {
        wait_object(&env.api::<Session>(), n, "reconciled after raising", |s| {
            phase(s) == Some(SessionPhase::Hibernated)
        })
        .await;
    }
    delete_flags(&env).await;
    env.cleanup().await;
}

/// Acceptance 6.
#[tokio::test]
async fn ownership_shadow_reports_differences_and_changes_nothing() {
    let mut env = TestEnv::without_controller("own-shadow").await;
    set_flag(&env, "sessions", "shadow").await;
    set_flag(&env, "idle", "shadow").await;
    env.start_controller().await;
    env.create::<Template>(template()).await;
    // s1: legacy has not built anything (yet); s2: legacy built everything.
    create_session(&env, "s1", BTreeMap::new()).await;
    let legacy = BTreeMap::from([(ACTED_BY_ANNOTATION.to_string(), "legacy".to_string())]);
    create_session(&env, "s2", legacy).await;
    let s2 = get(&env, "s2").await;
    build_as_legacy(&env, &s2).await;
    wait_object(
        &env.api::<Deployment>(),
        "ss-s2",
        "legacy deployment available",
        |d| {
            d.status
                .as_ref()
                .and_then(|s| s.available_replicas)
                .unwrap_or(0)
                >= 1
        },
    )
    .await;

    let reported = wait_for(
        "a ShadowDifference event about s1",
        || events(&env, "s1", "ShadowDifference"),
        |messages| !messages.is_empty(),
    )
    .await;
    eprintln!("shadow report: {}", reported[0]);
    for expected in [
        "Deployment ss-s1 missing",
        "Service ss-s1 missing",
        "status.phase <unset> -> Pending",
    ] {
        assert!(reported[0].contains(expected), "{expected}: {reported:?}");
    }
    assert!(
        env.metric(
            "streamspace_shadow_differences_total",
            "resource_type=\"sessions\""
        ) >= 3.0
    );
    assert!(
        env.metric(
            "streamspace_shadow_objects_differing",
            "resource_type=\"sessions\""
        ) >= 1.0
    );
    assert!(env.metric("streamspace_ownership_decisions_total", "owner=\"shadow\"") >= 2.0);

    // Nothing written: resourceVersions stay while the controller reconciles both sessions again
    // (the legacy deployment settled above, so nobody else writes either).
    let before = (versions(&env, "s1").await, versions(&env, "s2").await);
    let shadow_label = "resource_type=\"sessions\",owner=\"shadow\"";
    let decided = env.metric("streamspace_ownership_decisions_total", shadow_label);
    let (_, finished) = env.reconciles("session");
    // A change of their Template makes the controller look at both sessions again; the
    // Template is not among the versions compared.
    env.api::<Template>()
        .patch(
            "firefox",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"poke": "1"}}})),
        )
        .await
        .expect("poke the template");
    wait_decided(
        &env,
        "session",
        "sessions",
        "shadow",
        decided + 2.0,
        finished + 2.0,
    )
    .await;
    let after = (versions(&env, "s1").await, versions(&env, "s2").await);
    assert_eq!(before, after, "shadow mode wrote something");
    for name in ["s1", "s2"] {
        let s = get(&env, name).await;
        assert!(!written_by_controller(&s), "{name}: {:?}", managers(&s));
    }
    let deployment = env
        .api::<Deployment>()
        .get("ss-s2")
        .await
        .expect("deployment");
    assert!(
        !written_by_controller(&deployment),
        "{:?}",
        managers(&deployment)
    );
    assert!(deployments_of(&env, "s1").await.is_empty());
    delete_flags(&env).await;
    env.cleanup().await;
}

#[tokio::test]
async fn ownership_handoff_waits_for_legacy_then_claims_and_adopts() {
    let env = TestEnv::new("own-handoff").await;
    env.create::<Template>(template()).await;
    // A legacy create in flight: recorded with the operation mark, children applied after.
    let in_flight = BTreeMap::from([
        (ACTED_BY_ANNOTATION.to_string(), "legacy".to_string()),
        (
            LEGACY_OPERATION_ANNOTATION.to_string(),
            legacy_operation_value("create", Timestamp::now()),
        ),
    ]);
    create_session(&env, "s1", in_flight).await;
    let created = get(&env, "s1").await;
    build_as_legacy(&env, &created).await;

    // The controller owns sessions here: it looks, sees the legacy operation and waits.
    wait_decided(&env, "session", "sessions", "controller", 1.0, 1.0).await;
    let waiting = get(&env, "s1").await;
    assert_eq!(acted_by(&waiting).as_deref(), Some("legacy"));
    assert!(waiting.status.is_none(), "{:?}", waiting.status);
    assert!(!written_by_controller(&waiting), "{:?}", managers(&waiting));

    // Legacy finishes its direct work and clears the mark: the controller claims and acts.
    merge_annotations(&env, "s1", json!({LEGACY_OPERATION_ANNOTATION: null})).await;
    let claimed = wait_object(&env.api::<Session>(), "s1", "claimed and Running", |s| {
        acted_by(s).as_deref() == Some("controller") && phase(s) == Some(SessionPhase::Running)
    })
    .await;
    assert!(written_by_controller(&claimed));
    let deployments = deployments_of(&env, "s1").await;
    assert_eq!(deployments.len(), 1, "duplicate deployments");
    assert_eq!(deployments[0].name_any(), "ss-s1");
    let services = env
        .api::<Service>()
        .list(&ListParams::default().labels("session=s1"))
        .await
        .expect("services");
    assert_eq!(services.items.len(), 1, "duplicate services");
    assert!(env.metric("streamspace_ownership_claims_total", "result=\"claimed\"") >= 1.0);

    // The adopted deployment is the controller's now: hibernating scales it down.
    env.api::<Session>()
        .patch(
            "s1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"state": "hibernated"}})),
        )
        .await
        .expect("hibernate");
    wait_object(
        &env.api::<Deployment>(),
        "ss-s1",
        "adopted deployment scaled to zero",
        |d| d.spec.as_ref().and_then(|s| s.replicas) == Some(0),
    )
    .await;
    assert_eq!(deployments_of(&env, "s1").await.len(), 1);
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Idle and autostart

#[tokio::test]
async fn ownership_idle_legacy_never_hibernates_until_the_flag_flips() {
    let mut env = TestEnv::without_controller("own-idle").await;
    set_flag(&env, "idle", "legacy").await;
    env.start_controller_with(|config| {
        config.idle = IdleSettings {
            grace: Duration::from_millis(500),
            max_duration_action: MaxDurationAction::Hibernate,
        };
    })
    .await;
    env.create::<Template>(template()).await;
    env.create::<Session>(session("s1", "running", "1s", "8h"))
        .await;
    // The idle reconciler decides for s1 and leaves it to legacy: no deadline is armed.
    wait_decided(&env, "idle", "idle", "legacy", 1.0, 1.0).await;
    let still = get(&env, "s1").await;
    assert_eq!(still.spec.desired_state(), SessionState::Running);

    let flipped = Instant::now();
    set_flag(&env, "idle", "controller").await;
    let stopped = wait_object(&env.api::<Session>(), "s1", "hibernated", |s| {
        s.spec.desired_state() == SessionState::Hibernated
    })
    .await;
    eprintln!(
        "idle flag flip legacy -> controller: hibernated after {:.2} s (1 s timeout + 0.5 s grace from the first clock)",
        flipped.elapsed().as_secs_f64()
    );
    assert_eq!(acted_by(&stopped).as_deref(), Some("controller"));
    delete_flags(&env).await;
    env.cleanup().await;
}

#[tokio::test]
async fn ownership_legacy_autostart_wakes_through_the_api_directly() {
    let mut env = TestEnv::without_controller("own-autostart").await;
    set_flag(&env, "autostart", "legacy").await;
    // Legacy sessions too: a controller-owned session recorded as acted on by legacy would be
    // claimed back at once (acted-by=controller), which is right but hides the record here.
    set_flag(&env, "sessions", "legacy").await;
    env.start_controller().await;
    env.create::<Template>(template()).await;
    env.create::<Session>(session("s1", "hibernated", "30m", "8h"))
        .await;
    let api = RunningApi::start(&env, Duration::from_millis(500), None).await;
    // The API's own index loads the flag from its watch.
    let before = get(&env, "s1").await;
    let (code, body) = connect(api.addr, "s1").await;
    assert_eq!(code, 200, "{body}");
    let woken = get(&env, "s1").await;
    assert_eq!(woken.spec.desired_state(), SessionState::Running, "{body}");
    assert_eq!(acted_by(&woken).as_deref(), Some("legacy"));
    assert!(
        !woken
            .annotations()
            .contains_key(streamspace_controller::idle::WAKE_ANNOTATION)
    );
    let activity = woken.status.as_ref().and_then(|s| s.last_activity.clone());
    assert!(activity.is_some(), "lastActivity refreshed before waking");
    assert!(managers(&woken).iter().any(|m| m == LEGACY));
    assert_ne!(before.resource_version(), woken.resource_version());
    assert_eq!(body["state"], "running");

    // A stale wake mark on a legacy-autostart session is left for the API: the controller's
    // waker does not act on it.
    env.api::<Session>()
        .patch(
            "s1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"state": "hibernated"}})),
        )
        .await
        .expect("hibernate");
    let hibernated = get(&env, "s1").await;
    let generation = hibernated.metadata.generation.unwrap_or_default();
    let (_, finished) = env.reconciles("idle");
    merge_annotations(
        &env,
        "s1",
        json!({streamspace_controller::idle::WAKE_ANNOTATION: generation.to_string()}),
    )
    .await;
    // The idle reconciler hands the mark to the waker inside its reconcile: one finished after
    // the mark, with none in flight, is the waker having declined.
    env.wait_reconciled("idle", finished + 1.0).await;
    let left = get(&env, "s1").await;
    assert_eq!(left.spec.desired_state(), SessionState::Hibernated);
    // Flip to controller: the waker acts on the mark now.
    set_flag(&env, "autostart", "controller").await;
    let woken = wait_object(
        &env.api::<Session>(),
        "s1",
        "woken by the controller",
        |s| s.spec.desired_state() == SessionState::Running,
    )
    .await;
    assert_eq!(acted_by(&woken).as_deref(), Some("controller"));
    drop(api);
    delete_flags(&env).await;
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Nodes

#[tokio::test]
async fn ownership_nodes_legacy_keeps_the_operation_pending_and_the_node_untouched() {
    let mut env = TestEnv::without_controller("own-nodes").await;
    set_flag(&env, "nodes", "legacy").await;
    env.start_controller().await;
    let node_name = format!("{}-n1", env.namespace);
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": node_name, "labels": {
            ADOPTED_NODE_LABEL: "true", "kubernetes.io/hostname": node_name
        }},
        "spec": {},
    }))
    .expect("node object");
    let nodes: Api<Node> = Api::all(env.client.clone());
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
    let ops: Api<NodeOperation> = Api::all(env.client.clone());
    let op_name = format!("{}-cordon", env.namespace);
    let op: NodeOperation = serde_json::from_value(json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "NodeOperation",
        "metadata": {"name": op_name, "labels": {TEST_ENV_LABEL: env.namespace}},
        "spec": {"nodeName": node_name, "cordon": true, "labels": {"add": {"maintenance": "yes"}}},
    }))
    .expect("operation");
    ops.create(&PostParams::default(), &op)
        .await
        .expect("create operation");

    let expected = format!("node {node_name} is handled by the legacy API (flag nodes)");
    let pending = wait_object(&ops, &op_name, "the legacy message", |o| {
        o.status.as_ref().and_then(|s| s.message.as_deref()) == Some(expected.as_str())
    })
    .await;
    let status = pending.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Some(NodeOperationPhase::Pending));
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Complete" && c.reason == "LegacyOwned")
    );
    // Written once: the status write brings the operation back to the reconciler, which
    // decides again and writes nothing; the node is not touched.
    wait_decided(&env, "nodeoperation", "nodes", "legacy", 2.0, 2.0).await;
    let later = ops.get(&op_name).await.expect("operation");
    assert_eq!(later.resource_version(), pending.resource_version());
    assert!(later.finalizers().is_empty(), "{:?}", later.finalizers());
    let untouched = nodes.get(&node_name).await.expect("node");
    assert_ne!(
        untouched.spec.as_ref().and_then(|s| s.unschedulable),
        Some(true)
    );
    assert!(!untouched.labels().contains_key("maintenance"));
    assert!(!untouched.annotations().contains_key(CORDON_ANNOTATION));

    // Shadow: still nothing on the node, and the plan in the message.
    set_flag(&env, "nodes", "shadow").await;
    let shadowed = wait_object(&ops, &op_name, "the shadow plan", |o| {
        o.status
            .as_ref()
            .and_then(|s| s.message.as_deref())
            .is_some_and(|m| m.contains("the controller would: cordon node"))
    })
    .await;
    let message = shadowed.status.and_then(|s| s.message).unwrap_or_default();
    assert!(message.contains("set label maintenance=yes"), "{message}");
    let untouched = nodes.get(&node_name).await.expect("node");
    assert_ne!(
        untouched.spec.as_ref().and_then(|s| s.unschedulable),
        Some(true)
    );

    // Controller: it runs.
    set_flag(&env, "nodes", "controller").await;
    wait_object(&ops, &op_name, "Succeeded", |o| {
        o.status.as_ref().and_then(|s| s.phase.as_ref()) == Some(&NodeOperationPhase::Succeeded)
    })
    .await;
    let cordoned = nodes.get(&node_name).await.expect("node");
    assert_eq!(
        cordoned.spec.as_ref().and_then(|s| s.unschedulable),
        Some(true)
    );
    assert_eq!(
        cordoned.labels().get("maintenance").map(String::as_str),
        Some("yes")
    );

    let _ = ops.delete(&op_name, &DeleteParams::default()).await;
    crate::support::wait_gone(&ops, &op_name, "operation gone").await;
    let _ = nodes.delete(&node_name, &DeleteParams::default()).await;
    delete_flags(&env).await;
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Quota

#[tokio::test]
async fn ownership_quota_legacy_admits_over_quota_and_controller_denies() {
    let w = WebhookEnv::with_quota_flag("own-quota", Certs::SelfManaged, FlagMode::Legacy).await;
    w.policy(
        "default",
        json!({"kind": "Default"}),
        json!({"maxSessions": 1}),
    )
    .await;
    for name in ["s1", "s2"] {
        w.create_session(name, running("alice", "1", "1Gi"))
            .await
            .expect("legacy quota: the webhook admits, the API checks");
    }
    set_quota_flag(&w.env, &w.flags, FlagMode::Controller).await;
    let message = denial(w.create_session("s3", running("alice", "1", "1Gi")).await);
    assert!(message.contains("session quota exceeded"), "{message}");
    // Hibernated sessions are never over quota, whoever enforces.
    w.create_session(
        "s4",
        json!({"user": "alice", "template": "none", "state": "hibernated"}),
    )
    .await
    .expect("hibernated sessions are admitted");
    delete_flags(&w.env).await;
    w.cleanup().await;
}
