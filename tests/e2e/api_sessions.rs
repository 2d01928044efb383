//! The sessions API: legacy and controller handlers chosen per session by the
//! `sessions` flag, quota in the API or in the webhook by the `quota` flag, against the real
//! control plane, with the API on a real socket.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use streamspace_controller::api::auth::{AuthError, Authenticator, Permission, Principal};
use streamspace_controller::api::sessions::LEGACY_FIELD_MANAGER;
use streamspace_controller::controller::FIELD_MANAGER as CONTROLLER_MANAGER;
use streamspace_controller::crd::{FeatureFlag, FlagMode, Session, SessionPhase, Template};
use streamspace_controller::ownership::ResourceType;
use streamspace_controller::ownership::handoff::{
    ACTED_BY_ANNOTATION, LEGACY_OPERATION_ANNOTATION,
};

use crate::admission::{Certs, WebhookEnv};
use crate::http_client::{API_TOKEN, Http, RunningApi};
use crate::support::{TestEnv, wait_for, wait_gone, wait_object};

// ---------------------------------------------------------------------------------------------
// Flags

/// Sets this test's flag of `resource` (a cluster-scoped FeatureFlag named with the test's
/// prefix) and waits until the API's index has it.
pub(crate) async fn set_flag(
    env: &TestEnv,
    api: &RunningApi,
    resource: ResourceType,
    mode: &str,
    percent: u8,
) {
    let name = format!("{}{}", env.flag_settings().name_prefix, resource.as_str());
    let flag: FeatureFlag = serde_json::from_value(json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "FeatureFlag",
        "metadata": {"name": name},
        "spec": {"mode": mode, "percent": percent}
    }))
    .expect("flag");
    Api::<FeatureFlag>::all(env.client.clone())
        .patch(
            &name,
            &PatchParams::apply("api-sessions-test").force(),
            &Patch::Apply(&flag),
        )
        .await
        .expect("apply flag");
    let wanted = FlagMode::from(mode);
    wait_for(
        "the API to see the flag",
        || async { api.flags.effective(resource) },
        |e| e.mode == wanted && e.percent == percent,
    )
    .await;
}

pub(crate) async fn delete_flags(env: &TestEnv) {
    let flags = Api::<FeatureFlag>::all(env.client.clone());
    for resource in ResourceType::ALL {
        let name = format!("{}{}", env.flag_settings().name_prefix, resource.as_str());
        let _ = flags.delete(&name, &DeleteParams::default()).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Objects and requests

pub(crate) async fn template(env: &TestEnv, name: &str) {
    env.create::<Template>(json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "Template",
        "metadata": {"name": name},
        "spec": {
            "displayName": "Firefox", "baseImage": "lscr.io/linuxserver/firefox:latest",
            "defaultResources": {"memory": "1Gi", "cpu": "500m"},
            "vnc": {"enabled": true, "port": 3000}
        }
    }))
    .await;
    // The controller starts sessions only from a validated Template.
    wait_object(
        &env.api::<Template>(),
        name,
        "the template to be validated",
        |t| t.status.as_ref().is_some_and(|s| s.valid),
    )
    .await;
}

async fn request(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    Http::connect(addr)
        .await
        .request(method, path, Some(API_TOKEN), body.as_deref())
        .await
}

/// `POST /api/v1/sessions`; the new session's name on 202.
async fn create(addr: SocketAddr, body: Value) -> String {
    let (code, reply) = request(addr, "POST", "/api/v1/sessions", Some(body)).await;
    assert_eq!(code, 202, "{reply}");
    assert_eq!(reply["state"], "pending", "{reply}");
    assert_eq!(reply["status"]["phase"], "Pending", "{reply}");
    reply["name"].as_str().expect("name").to_string()
}

async fn set_state(addr: SocketAddr, name: &str, state: &str) {
    let (code, reply) = request(
        addr,
        "PATCH",
        &format!("/api/v1/sessions/{name}"),
        Some(json!({"state": state})),
    )
    .await;
    assert_eq!(code, 202, "{name} -> {state}: {reply}");
    assert_eq!(reply["state"], state);
}

fn acted_by(session: &Session) -> Option<String> {
    session.annotations().get(ACTED_BY_ANNOTATION).cloned()
}

fn managers(deployment: &Deployment) -> BTreeSet<String> {
    deployment
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|f| f.manager.clone())
        .collect()
}

fn replicas(deployment: &Deployment) -> Option<i32> {
    deployment.spec.as_ref().and_then(|s| s.replicas)
}

fn phase(session: &Session) -> Option<SessionPhase> {
    session.status.as_ref().and_then(|s| s.phase.clone())
}

async fn wait_phase(env: &TestEnv, name: &str, wanted: SessionPhase) {
    wait_object(
        &env.api::<Session>(),
        name,
        &format!("{name} {wanted}"),
        |s| phase(s) == Some(wanted.clone()),
    )
    .await;
}

async fn deployment(env: &TestEnv, name: &str) -> Option<Deployment> {
    env.api::<Deployment>()
        .get_opt(&format!("ss-{name}"))
        .await
        .expect("read deployment")
}

// ---------------------------------------------------------------------------------------------
// 1. legacy, then controller; both kinds keep working

#[tokio::test]
async fn api_sessions_legacy_then_controller_both_keep_working() {
    let env = TestEnv::new("api-sess-flip").await;
    let api = RunningApi::start_static(&env, |_| {}).await;
    template(&env, "firefox").await;
    set_flag(&env, &api, ResourceType::Sessions, "legacy", 100).await;

    // Legacy: the Deployment exists when the POST answers, built by the API itself.
    let legacy = create(api.addr, json!({"user": "alice", "template": "firefox"})).await;
    assert!(legacy.starts_with("alice-firefox-"), "{legacy}");
    let built = deployment(&env, &legacy)
        .await
        .expect("deployment created directly");
    assert!(
        managers(&built).contains(LEGACY_FIELD_MANAGER),
        "{:?}",
        managers(&built)
    );
    assert_eq!(replicas(&built), Some(1));
    let owner = built.owner_references().first().cloned().expect("owned");
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Session", legacy.as_str())
    );
    for (kind, found) in [
        (
            "service",
            env.api::<Service>()
                .get_opt(&format!("ss-{legacy}"))
                .await
                .ok()
                .flatten()
                .is_some(),
        ),
        (
            "ingress",
            env.api::<Ingress>()
                .get_opt(&format!("ss-{legacy}"))
                .await
                .ok()
                .flatten()
                .is_some(),
        ),
    ] {
        assert!(found, "legacy {kind} missing");
    }
    let session = env.api::<Session>().get(&legacy).await.expect("session");
    assert_eq!(acted_by(&session).as_deref(), Some("legacy"));
    assert!(
        !session
            .annotations()
            .contains_key(LEGACY_OPERATION_ANNOTATION)
    );
    assert_eq!(
        session
            .spec
            .resources
            .and_then(|r| r.requests)
            .unwrap_or_default()
            .get("cpu")
            .map(|q| q.0.as_str()),
        Some("500m")
    );
    wait_phase(&env, &legacy, SessionPhase::Running).await;

    // Legacy hibernate and wake scale the Deployment before answering.
    set_state(api.addr, &legacy, "hibernated").await;
    assert_eq!(
        deployment(&env, &legacy).await.as_ref().and_then(replicas),
        Some(0)
    );
    wait_phase(&env, &legacy, SessionPhase::Hibernated).await;
    set_state(api.addr, &legacy, "running").await;
    assert_eq!(
        deployment(&env, &legacy).await.as_ref().and_then(replicas),
        Some(1)
    );
    wait_phase(&env, &legacy, SessionPhase::Running).await;

    // Legacy delete removes the children directly, then the Session.
    let doomed = create(
        api.addr,
        json!({"user": "alice", "template": "firefox", "persistentHome": false}),
    )
    .await;
    let (code, reply) = request(
        api.addr,
        "DELETE",
        &format!("/api/v1/sessions/{doomed}"),
        None,
    )
    .await;
    assert_eq!(code, 202, "{reply}");
    assert!(
        deployment(&env, &doomed).await.is_none(),
        "deployment deleted before the answer"
    );
    wait_gone(&env.api::<Session>(), &doomed, "the legacy-deleted session").await;

    // The controller never wrote a legacy session's Deployment (its reconciler leaves
    // legacy-owned sessions alone).
    let legacy_managers = managers(&deployment(&env, &legacy).await.expect("deployment"));
    assert!(
        !legacy_managers.contains(CONTROLLER_MANAGER),
        "{legacy_managers:?}"
    );

    // Controller: the POST writes the Session only; the controller builds the Deployment.
    set_flag(&env, &api, ResourceType::Sessions, "controller", 100).await;
    let modern = create(api.addr, json!({"user": "bob", "template": "firefox"})).await;
    let session = env.api::<Session>().get(&modern).await.expect("session");
    assert_eq!(acted_by(&session).as_deref(), Some("controller"));
    let built = wait_object(
        &env.api::<Deployment>(),
        &format!("ss-{modern}"),
        "the controller's deployment",
        |_| true,
    )
    .await;
    let built_by = managers(&built);
    assert!(built_by.contains(CONTROLLER_MANAGER), "{built_by:?}");
    assert!(!built_by.contains(LEGACY_FIELD_MANAGER), "{built_by:?}");
    wait_phase(&env, &modern, SessionPhase::Running).await;

    // Both kinds keep working under the controller: hibernate, wake, delete.
    for name in [&legacy, &modern] {
        set_state(api.addr, name, "hibernated").await;
        wait_object(
            &env.api::<Deployment>(),
            &format!("ss-{name}"),
            "scaled to zero",
            |d| replicas(d) == Some(0),
        )
        .await;
        wait_phase(&env, name, SessionPhase::Hibernated).await;
        set_state(api.addr, name, "running").await;
        wait_object(
            &env.api::<Deployment>(),
            &format!("ss-{name}"),
            "scaled up",
            |d| replicas(d) == Some(1),
        )
        .await;
        wait_phase(&env, name, SessionPhase::Running).await;
        let session = env.api::<Session>().get(name).await.expect("session");
        assert_eq!(acted_by(&session).as_deref(), Some("controller"));
        let (code, reply) = request(
            api.addr,
            "DELETE",
            &format!("/api/v1/sessions/{name}"),
            None,
        )
        .await;
        assert_eq!(code, 202, "{reply}");
        wait_gone(&env.api::<Session>(), name, "the deleted session").await;
        wait_gone(
            &env.api::<Deployment>(),
            &format!("ss-{name}"),
            "the deleted session's deployment",
        )
        .await;
    }
    // The home claim outlives every session.
    let claim = env
        .api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>()
        .get_opt("home-alice")
        .await
        .expect("read claim");
    assert!(claim.is_some());
    delete_flags(&env).await;
    drop(api);
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Listing, reading, and requests refused without side effects

#[tokio::test]
async fn api_sessions_list_get_and_bad_requests() {
    let env = TestEnv::new("api-sess-list").await;
    let api = RunningApi::start_static(&env, |_| {}).await;
    template(&env, "firefox").await;
    set_flag(&env, &api, ResourceType::Sessions, "legacy", 100).await;
    let a = create(
        api.addr,
        json!({"user": "alice", "template": "firefox", "resources": {"memory": "2Gi", "cpu": "1"}}),
    )
    .await;
    let b = create(
        api.addr,
        json!({"user": "bob", "template": "firefox", "idleTimeout": "1h", "tags": ["gpu"]}),
    )
    .await;

    let listed = wait_for(
        "both sessions in the list",
        || async { request(api.addr, "GET", "/api/v1/sessions", None).await },
        |(code, body)| *code == 200 && body["total"] == 2,
    )
    .await
    .1;
    let names: Vec<&str> = listed["sessions"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    let mut sorted = vec![a.as_str(), b.as_str()];
    sorted.sort();
    assert_eq!(names, sorted);
    let (_, only_bob) = request(api.addr, "GET", "/api/v1/sessions?user=bob", None).await;
    assert_eq!(only_bob["total"], 1);
    let item = &only_bob["sessions"][0];
    assert_eq!(item["user"], "bob");
    assert_eq!(item["state"], "running");
    assert_eq!(item["idleTimeout"], "1h");
    assert_eq!(item["resources"], json!({"memory": "1Gi", "cpu": "500m"}));
    assert_eq!(item["namespace"], env.namespace.as_str());
    assert!(item["createdAt"].is_string());
    let (code, one) = request(api.addr, "GET", &format!("/api/v1/sessions/{a}"), None).await;
    assert_eq!(code, 200);
    assert_eq!(one["resources"], json!({"memory": "2Gi", "cpu": "1"}));
    let ready = wait_for(
        "the session to report Running with its pod",
        || async {
            request(api.addr, "GET", &format!("/api/v1/sessions/{a}"), None)
                .await
                .1
        },
        |s| s["status"]["phase"] == "Running",
    )
    .await;
    assert!(
        ready["status"]["podName"]
            .as_str()
            .is_some_and(|p| p.starts_with(&format!("ss-{a}-"))),
        "{ready}"
    );
    assert_eq!(ready["status"]["url"], format!("https://{a}.test.local"));

    // Refused requests: clear status and message, and nothing written.
    let before = env
        .api::<Session>()
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .len();
    let cases = [
        (
            "POST",
            "/api/v1/sessions".to_string(),
            Some(json!({"user": "alice", "template": "nope"})),
            400,
            "Template not found",
        ),
        (
            "POST",
            "/api/v1/sessions".to_string(),
            Some(json!({"user": "alice", "template": "firefox", "resources": {"cpu": "50m"}})),
            400,
            "Invalid resource request",
        ),
        (
            "POST",
            "/api/v1/sessions".to_string(),
            Some(json!({"user": "alice", "template": "firefox", "resources": {"memory": "1Ti"}})),
            400,
            "Invalid resource request",
        ),
        (
            "POST",
            "/api/v1/sessions".to_string(),
            Some(json!({"template": "firefox"})),
            400,
            "Invalid request body",
        ),
        (
            "PATCH",
            format!("/api/v1/sessions/{a}"),
            Some(json!({"state": "paused"})),
            400,
            "Invalid request body",
        ),
        (
            "PATCH",
            "/api/v1/sessions/missing".to_string(),
            Some(json!({"state": "hibernated"})),
            404,
            "not found",
        ),
        (
            "GET",
            "/api/v1/sessions/missing".to_string(),
            None,
            404,
            "not found",
        ),
        (
            "DELETE",
            "/api/v1/sessions/missing".to_string(),
            None,
            404,
            "not found",
        ),
        (
            "GET",
            "/api/v1/sessions/Bad_Id".to_string(),
            None,
            400,
            "not a valid session id",
        ),
    ];
    for (method, path, body, code, fragment) in cases {
        let (got, reply) = request(api.addr, method, &path, body.clone()).await;
        assert_eq!(got, code, "{method} {path} {body:?}: {reply}");
        assert!(
            reply["error"]
                .as_str()
                .is_some_and(|e| e.contains(fragment)),
            "{reply}"
        );
    }
    let (code, _) = Http::connect(api.addr)
        .await
        .request("GET", "/api/v1/sessions", None, None)
        .await;
    assert_eq!(code, 401);
    let after = env
        .api::<Session>()
        .list(&ListParams::default())
        .await
        .expect("list")
        .items;
    assert_eq!(after.len(), before);
    let unchanged = after.iter().find(|s| s.name_any() == a).expect("a");
    assert_eq!(unchanged.spec.desired_state().as_str(), "running");
    delete_flags(&env).await;
    drop(api);
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Users see and change only their own sessions

/// Bearer `user:<name>` is the user `<name>`; `user:ops` may act on every session.
struct UserTokens;

impl Authenticator for UserTokens {
    fn authenticate<'a>(
        &'a self,
        headers: &'a axum::http::HeaderMap,
    ) -> BoxFuture<'a, Result<Principal, AuthError>> {
        let name = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer user:"))
            .map(str::to_string);
        futures::future::ready(name.map_or(Err(AuthError::Missing), |name| {
            Ok(Principal {
                name,
                groups: Vec::new(),
            })
        }))
        .boxed()
    }

    fn authorize<'a>(
        &'a self,
        principal: &'a Principal,
        permission: Permission,
    ) -> BoxFuture<'a, Result<bool, AuthError>> {
        let allowed =
            principal.name == "ops" && matches!(permission, Permission::OperateSessions(_));
        futures::future::ready(Ok(allowed)).boxed()
    }
}

async fn as_user(
    addr: SocketAddr,
    user: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    Http::connect(addr)
        .await
        .request(method, path, Some(&format!("user:{user}")), body.as_deref())
        .await
}

#[tokio::test]
async fn api_sessions_users_reach_only_their_own_sessions() {
    let env = TestEnv::new("api-sess-users").await;
    let api = RunningApi::start_with(&env, Arc::new(UserTokens), |_| {}).await;
    template(&env, "firefox").await;
    set_flag(&env, &api, ResourceType::Sessions, "controller", 100).await;
    let body = |user: &str| Some(json!({"user": user, "template": "firefox"}));
    let (code, alice) = as_user(api.addr, "alice", "POST", "/api/v1/sessions", body("alice")).await;
    assert_eq!(code, 202, "{alice}");
    let alice = alice["name"].as_str().expect("name").to_string();
    let (code, reply) = as_user(api.addr, "alice", "POST", "/api/v1/sessions", body("bob")).await;
    assert_eq!(code, 403, "creating for someone else: {reply}");
    let (code, bob) = as_user(api.addr, "ops", "POST", "/api/v1/sessions", body("bob")).await;
    assert_eq!(code, 202, "an operator creates for others: {bob}");
    let bob = bob["name"].as_str().expect("name").to_string();

    let path = |name: &str| format!("/api/v1/sessions/{name}");
    for (method, body) in [
        ("GET", None),
        ("PATCH", Some(json!({"state": "hibernated"}))),
        ("DELETE", None),
    ] {
        let (code, reply) = as_user(api.addr, "alice", method, &path(&bob), body).await;
        assert_eq!(code, 403, "alice {method} bob's session: {reply}");
    }
    let (code, _) = as_user(api.addr, "alice", "GET", &path(&alice), None).await;
    assert_eq!(code, 200);
    let (code, reply) = as_user(api.addr, "alice", "GET", "/api/v1/sessions?user=bob", None).await;
    assert_eq!(code, 403, "{reply}");
    let own = wait_for(
        "alice's list",
        || async { as_user(api.addr, "alice", "GET", "/api/v1/sessions", None).await },
        |(code, list)| *code == 200 && list["total"] == 1,
    )
    .await
    .1;
    assert_eq!(own["sessions"][0]["name"], alice.as_str());
    let all = wait_for(
        "the operator's list",
        || async { as_user(api.addr, "ops", "GET", "/api/v1/sessions", None).await },
        |(code, list)| *code == 200 && list["total"] == 2,
    )
    .await;
    assert_eq!(all.0, 200);
    let session = env.api::<Session>().get(&bob).await.expect("bob's session");
    assert_eq!(
        session.spec.desired_state().as_str(),
        "running",
        "refused PATCH wrote nothing"
    );
    delete_flags(&env).await;
    drop(api);
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// 2. percentage rollout: stable sides, bounds, and back to 0

/// Bounds of a Binomial(n, p) count at 4.5 standard deviations.
fn bounds(n: usize, percent: u8) -> (f64, f64) {
    let p = f64::from(percent) / 100.0;
    let mean = n as f64 * p;
    let sigma = (n as f64 * p * (1.0 - p)).sqrt();
    (mean - 4.5 * sigma, mean + 4.5 * sigma)
}

async fn sides(env: &TestEnv) -> BTreeMap<String, String> {
    env.api::<Session>()
        .list(&ListParams::default())
        .await
        .expect("list sessions")
        .items
        .iter()
        .map(|s| (s.name_any(), acted_by(s).unwrap_or_default()))
        .collect()
}

async fn patch_all(addr: SocketAddr, names: &[String], state: &str) {
    stream::iter(names.iter().cloned())
        .map(|name| async move { set_state(addr, &name, state).await })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
}

fn controller_set(sides: &BTreeMap<String, String>) -> BTreeSet<String> {
    sides
        .iter()
        .filter(|(_, side)| side.as_str() == "controller")
        .map(|(name, _)| name.clone())
        .collect()
}

#[tokio::test]
async fn api_sessions_percent_rollout_is_stable_and_reversible() {
    const N: usize = 200;
    let env = TestEnv::new("api-sess-pct").await;
    let api = RunningApi::start_static(&env, |_| {}).await;
    template(&env, "firefox").await;
    set_flag(&env, &api, ResourceType::Sessions, "controller", 30).await;
    let addr = api.addr;
    let names: Vec<String> = stream::iter(0..N)
        .map(|i| async move {
            create(addr, json!({"user": format!("u{}", i % 10), "template": "firefox", "persistentHome": false})).await
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert_eq!(
        names.iter().collect::<BTreeSet<_>>().len(),
        N,
        "names are unique"
    );

    let at_30 = sides(&env).await;
    assert_eq!(at_30.len(), N);
    assert!(
        at_30.values().all(|s| s == "legacy" || s == "controller"),
        "{at_30:?}"
    );
    let controller_30 = controller_set(&at_30);
    let (low, high) = bounds(N, 30);
    println!(
        "percent 30: {} of {N} controller (bounds {low:.1}-{high:.1})",
        controller_30.len()
    );
    assert!(
        (low..=high).contains(&(controller_30.len() as f64)),
        "{}",
        controller_30.len()
    );
    // Legacy sessions have their Deployment from the API.
    for name in at_30
        .keys()
        .filter(|n| !controller_30.contains(*n))
        .take(10)
    {
        let built = deployment(&env, name).await.expect("legacy deployment");
        assert!(managers(&built).contains(LEGACY_FIELD_MANAGER));
    }

    // 60: everything the controller had stays with it.
    set_flag(&env, &api, ResourceType::Sessions, "controller", 60).await;
    patch_all(addr, &names, "hibernated").await;
    let controller_60 = controller_set(&sides(&env).await);
    let (low, high) = bounds(N, 60);
    println!(
        "percent 60: {} of {N} controller (bounds {low:.1}-{high:.1})",
        controller_60.len()
    );
    assert!(
        (low..=high).contains(&(controller_60.len() as f64)),
        "{}",
        controller_60.len()
    );
    assert!(
        controller_30.is_subset(&controller_60),
        "a session moved back to legacy"
    );

    // 100: all of them.
    set_flag(&env, &api, ResourceType::Sessions, "controller", 100).await;
    patch_all(addr, &names, "running").await;
    assert_eq!(controller_set(&sides(&env).await).len(), N);
    wait_for(
        "the controller to run every session",
        || async {
            env.api::<Deployment>()
                .list(&ListParams::default())
                .await
                .map(|l| l.items.iter().filter(|d| replicas(d) == Some(1)).count())
                .unwrap_or(0)
        },
        |n| *n == N,
    )
    .await;

    // Back to 0: the legacy handlers serve every session again and scale directly.
    set_flag(&env, &api, ResourceType::Sessions, "controller", 0).await;
    patch_all(addr, &names, "hibernated").await;
    let at_0 = sides(&env).await;
    assert!(at_0.values().all(|s| s == "legacy"), "{at_0:?}");
    let deployments = env
        .api::<Deployment>()
        .list(&ListParams::default())
        .await
        .expect("list")
        .items;
    assert_eq!(deployments.len(), N);
    for d in &deployments {
        assert_eq!(replicas(d), Some(0), "{}", d.name_any());
        assert!(
            managers(d).contains(LEGACY_FIELD_MANAGER),
            "{}",
            d.name_any()
        );
    }
    delete_flags(&env).await;
    drop(api);
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// 5. over quota: 403 from the API (legacy) and from the webhook (controller)

#[tokio::test]
async fn api_sessions_over_quota_is_403_in_both_modes() {
    let w = WebhookEnv::new("api-sess-quota", Certs::SelfManaged).await;
    let env = &w.env;
    let api = RunningApi::start_static(env, |_| {}).await;
    env.create::<Template>(json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "Template",
        "metadata": {"name": "desktop"},
        "spec": {"displayName": "Desktop", "baseImage": "desktop:latest"}
    }))
    .await;
    w.policy(
        "default",
        json!({"kind": "Default"}),
        json!({"maxSessions": 2, "maxCpu": "64", "maxMemory": "64Gi"}),
    )
    .await;
    set_flag(env, &api, ResourceType::Sessions, "legacy", 100).await;
    set_flag(env, &api, ResourceType::Quota, "legacy", 100).await;
    wait_for(
        "the API's quota caches",
        || async { request(api.addr, "GET", "/api/v1/sessions", None).await.0 },
        |code| *code == 200,
    )
    .await;
    let body = json!({"user": "alice", "template": "desktop", "resources": {"cpu": "500m", "memory": "1Gi"}});
    for _ in 0..2 {
        create(api.addr, body.clone()).await;
    }
    let count = || async {
        env.api::<Session>()
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len()
    };
    let (code, legacy_denial) =
        request(api.addr, "POST", "/api/v1/sessions", Some(body.clone())).await;
    assert_eq!(code, 403, "{legacy_denial}");
    assert_eq!(legacy_denial["error"], "Quota exceeded");
    assert_eq!(
        legacy_denial["message"],
        "session quota exceeded: 2/2 sessions active"
    );
    assert_eq!(count().await, 2, "nothing created for the denied request");

    // Controller mode: the API does not check; the webhook's denial comes back as the same 403.
    set_flag(env, &api, ResourceType::Quota, "controller", 100).await;
    set_flag(env, &api, ResourceType::Sessions, "controller", 100).await;
    let (code, webhook_denial) =
        request(api.addr, "POST", "/api/v1/sessions", Some(body.clone())).await;
    assert_eq!(code, 403, "{webhook_denial}");
    assert_eq!(webhook_denial["error"], "Quota exceeded");
    assert_eq!(webhook_denial["message"], legacy_denial["message"]);
    assert_eq!(count().await, 2);
    // Another user is within quota in either mode.
    create(api.addr, json!({"user": "bob", "template": "desktop"})).await;
    delete_flags(env).await;
    drop(api);
    let _ = Duration::ZERO;
    w.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// 7. flipping the flag back and forth while sessions are created and deleted

/// The sessions of `env` (name -> phase), their Deployments and Services (by session label).
async fn world(
    env: &TestEnv,
) -> (
    BTreeMap<String, Option<SessionPhase>>,
    Vec<String>,
    Vec<String>,
) {
    let sessions = env
        .api::<Session>()
        .list(&ListParams::default())
        .await
        .expect("list sessions");
    let selector = ListParams::default().labels("app=streamspace-session");
    let label =
        |labels: &BTreeMap<String, String>| labels.get("session").cloned().unwrap_or_default();
    let deployments = env
        .api::<Deployment>()
        .list(&selector)
        .await
        .expect("list deployments");
    let services = env
        .api::<Service>()
        .list(&selector)
        .await
        .expect("list services");
    (
        sessions
            .items
            .iter()
            .filter(|s| s.metadata.deletion_timestamp.is_none())
            .map(|s| (s.name_any(), phase(s)))
            .collect(),
        deployments
            .items
            .iter()
            .filter(|d| d.metadata.deletion_timestamp.is_none() && replicas(d) == Some(1))
            .map(|d| label(d.labels()))
            .collect(),
        services.items.iter().map(|s| label(s.labels())).collect(),
    )
}

#[tokio::test]
async fn api_sessions_flipping_the_flag_twenty_times_loses_and_duplicates_nothing() {
    let env = TestEnv::new("api-sess-churn").await;
    let api = RunningApi::start_static(&env, |_| {}).await;
    template(&env, "firefox").await;
    set_flag(&env, &api, ResourceType::Sessions, "legacy", 100).await;
    let flag = format!("{}sessions", env.flag_settings().name_prefix);
    let flags = Api::<FeatureFlag>::all(env.client.clone());

    // 20 flips, about 150 ms apart, while 100 creates (and 34 deletes) run 8 at a time.
    let flipper = tokio::spawn({
        let flags = flags.clone();
        let flag = flag.clone();
        async move {
            for flip in 0..20 {
                let mode = if flip % 2 == 0 {
                    "controller"
                } else {
                    "legacy"
                };
                flags
                    .patch(
                        &flag,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"mode": mode}})),
                    )
                    .await
                    .expect("flip the sessions flag");
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
    });
    let addr = api.addr;
    let made: Vec<(usize, String)> = stream::iter(0..100usize)
        .map(|i| async move {
            let name = create(
                addr,
                json!({"user": format!("user-{}", i % 10), "template": "firefox"}),
            )
            .await;
            if i % 3 == 0 {
                let (code, reply) =
                    request(addr, "DELETE", &format!("/api/v1/sessions/{name}"), None).await;
                assert_eq!(code, 202, "delete {name}: {reply}");
            }
            (i, name)
        })
        .buffer_unordered(8)
        .collect()
        .await;
    flipper.await.expect("flipper");
    let kept: BTreeSet<String> = made
        .iter()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(_, n)| n.clone())
        .collect();
    assert_eq!(kept.len(), 66);
    assert_eq!(
        made.iter().map(|(_, n)| n).collect::<BTreeSet<_>>().len(),
        100,
        "every create made its own session"
    );

    // Every kept session runs with exactly one Deployment and Service; every deleted one is
    // gone with its children; nothing else exists.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let summary = loop {
        let (sessions, deployments, services) = world(&env).await;
        let names: BTreeSet<String> = sessions.keys().cloned().collect();
        let not_running: BTreeMap<&String, &Option<SessionPhase>> = sessions
            .iter()
            .filter(|(_, p)| **p != Some(SessionPhase::Running))
            .collect();
        let deployment_set: BTreeSet<String> = deployments.iter().cloned().collect();
        let service_set: BTreeSet<String> = services.iter().cloned().collect();
        let done = names == kept
            && not_running.is_empty()
            && deployments.len() == kept.len()
            && deployment_set == kept
            && services.len() == kept.len()
            && service_set == kept;
        if done {
            break None;
        }
        if std::time::Instant::now() > deadline {
            break Some(format!(
                "sessions missing {:?}, extra {:?}; not Running {:?}; deployments missing {:?}, extra {:?} ({} for {}); services missing {:?}, extra {:?}",
                kept.difference(&names).collect::<Vec<_>>(),
                names.difference(&kept).collect::<Vec<_>>(),
                not_running,
                kept.difference(&deployment_set).collect::<Vec<_>>(),
                deployment_set.difference(&kept).collect::<Vec<_>>(),
                deployments.len(),
                kept.len(),
                kept.difference(&service_set).collect::<Vec<_>>(),
                service_set.difference(&kept).collect::<Vec<_>>(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(summary, None, "every session in its intended state");
    delete_flags(&env).await;
    env.cleanup().await;
}
