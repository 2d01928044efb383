//! Rollback: with the `idle` flag legacy the API's legacy idle monitor hibernates idle
//! sessions; with the controller stopped and every flag legacy the API alone creates,
//! hibernates, wakes (by request and on connect) and idles sessions.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use streamspace_controller::api::idle::IdleMonitorSettings;
use streamspace_controller::crd::{Session, SessionPhase, SessionState, Template};
use streamspace_controller::idle::deadline::IdleSettings;
use streamspace_controller::ownership::ResourceType;

use crate::api_sessions::delete_flags;
use crate::http_client::{API_TOKEN, Http, RunningApi, counter};
use crate::support::{TestEnv, wait_for, wait_object};

/// The monitor of a test: a pass every 200 ms, 1 s of grace, a Lease of its own.
fn monitor(env: &TestEnv) -> IdleMonitorSettings {
    let mut settings = IdleMonitorSettings::new(&env.namespace);
    settings.interval = Duration::from_millis(200);
    settings.idle = IdleSettings {
        grace: Duration::from_secs(1),
        ..IdleSettings::default()
    };
    settings.lease_name = "api-idle".into();
    settings
}

async fn set_flag(env: &TestEnv, api: &RunningApi, resource: ResourceType, mode: &str) {
    crate::api_sessions::set_flag(env, api, resource, mode, 100).await;
}

async fn request(api: &RunningApi, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    Http::connect(api.addr)
        .await
        .request(method, path, Some(API_TOKEN), body.as_deref())
        .await
}

async fn create(api: &RunningApi) -> String {
    let (code, reply) = request(
        api,
        "POST",
        "/api/v1/sessions",
        Some(json!({"user": "alice", "template": "firefox", "idleTimeout": "1h"})),
    )
    .await;
    assert_eq!(code, 202, "{reply}");
    reply["name"].as_str().expect("name").to_string()
}

async fn set_state(api: &RunningApi, name: &str, state: &str) {
    let (code, reply) = request(
        api,
        "PATCH",
        &format!("/api/v1/sessions/{name}"),
        Some(json!({"state": state})),
    )
    .await;
    assert_eq!(code, 202, "{name} -> {state}: {reply}");
}

fn phase(session: &Session) -> Option<SessionPhase> {
    session.status.as_ref().and_then(|s| s.phase.clone())
}

async fn wait_phase(
    env: &TestEnv,
    name: &str,
    state: SessionState,
    wanted: SessionPhase,
) -> Session {
    wait_object(
        &env.api::<Session>(),
        name,
        &format!("{state} and {wanted}"),
        |s| s.spec.desired_state() == state && phase(s) == Some(wanted.clone()),
    )
    .await
}

async fn wait_replicas(env: &TestEnv, name: &str, replicas: i32) {
    wait_object(
        &env.api::<Deployment>(),
        &format!("ss-{name}"),
        &format!("{replicas} replicas"),
        |d| d.spec.as_ref().and_then(|s| s.replicas) == Some(replicas),
    )
    .await;
}

/// An operator shortens the idle timeout of a running session (the clocks must be set first,
/// so the short timeout counts from a known instant).
async fn shorten_idle_timeout(env: &TestEnv, name: &str) {
    wait_object(&env.api::<Session>(), name, "clocks initialised", |s| {
        let status = s.status.clone().unwrap_or_default();
        status.last_activity.is_some() && status.started_at.is_some()
    })
    .await;
    env.api::<Session>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"idleTimeout": "1s"}})),
        )
        .await
        .expect("shorten idleTimeout");
}

fn api_idle_stops(api: &RunningApi) -> u64 {
    counter(
        &api.metrics,
        "streamspace_idle_session_stops",
        "reason=\"Idle\"",
    )
}

/// The monitor's idle stops once it counted one. It counts after its last write (clearing the
/// operation mark), so the session can read hibernated a moment before the count.
async fn wait_idle_stops(api: &RunningApi) -> u64 {
    wait_for(
        "the API's monitor to count its stop",
        || async { api_idle_stops(api) },
        |n| *n >= 1,
    )
    .await
}

#[tokio::test]
async fn rollback_idle_legacy_is_hibernated_by_the_api() {
    let env = TestEnv::new("rollback-idle").await;
    crate::api_sessions::template(&env, "firefox").await;
    let api = RunningApi::start_static(&env, |config| {
        config.idle_monitor = Some(monitor(&env));
    })
    .await;
    set_flag(&env, &api, ResourceType::Idle, "legacy").await;
    // The controller sees the flag too before the session exists.
    wait_for(
        "the controller to see the idle flag",
        || async {
            let (_, body) = Http::connect(env.controller_http_addr())
                .await
                .request("GET", "/flags", None, None)
                .await;
            body["flags"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|f| f["type"] == "idle" && f["mode"] == "legacy")
        },
        |legacy| *legacy,
    )
    .await;

    let name = create(&api).await;
    wait_phase(&env, &name, SessionState::Running, SessionPhase::Running).await;
    // The controller leaves idle clocks of legacy-idle sessions alone: the monitor sets them.
    shorten_idle_timeout(&env, &name).await;
    wait_phase(
        &env,
        &name,
        SessionState::Hibernated,
        SessionPhase::Hibernated,
    )
    .await;
    wait_replicas(&env, &name, 0).await;
    assert_eq!(
        wait_idle_stops(&api).await,
        1,
        "the API's monitor stopped it"
    );
    assert_eq!(
        env.metric("streamspace_idle_session_stops", "reason=\"Idle\""),
        0.0,
        "the controller, whose session reconciler scaled it down, did not stop it"
    );
    let lease = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
        env.client.clone(),
        &env.namespace,
    )
    .get("api-idle")
    .await
    .expect("the monitor's Lease");
    assert!(
        lease.spec.and_then(|s| s.holder_identity).is_some(),
        "one replica holds the monitor's Lease"
    );
    drop(api);
    delete_flags(&env).await;
    env.cleanup().await;
}

#[tokio::test]
async fn rollback_controller_stopped_every_flag_legacy_the_api_does_everything() {
    let env = TestEnv::without_controller("rollback-all-legacy").await;
    // No controller validates the Template; the legacy handlers build from its spec.
    env.create::<Template>(json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "Template",
        "metadata": {"name": "firefox"},
        "spec": {
            "displayName": "Firefox", "baseImage": "lscr.io/linuxserver/firefox:latest",
            "vnc": {"enabled": true, "port": 3000}
        }
    }))
    .await;
    let api = RunningApi::start_static(&env, |config| {
        config.idle_monitor = Some(monitor(&env));
    })
    .await;
    for resource in ResourceType::ALL {
        set_flag(&env, &api, resource, "legacy").await;
    }

    // Create.
    let name = create(&api).await;
    wait_phase(&env, &name, SessionState::Running, SessionPhase::Running).await;
    wait_replicas(&env, &name, 1).await;

    // Hibernate and wake by request.
    set_state(&api, &name, "hibernated").await;
    wait_phase(
        &env,
        &name,
        SessionState::Hibernated,
        SessionPhase::Hibernated,
    )
    .await;
    wait_replicas(&env, &name, 0).await;
    set_state(&api, &name, "running").await;
    wait_phase(&env, &name, SessionState::Running, SessionPhase::Running).await;
    wait_replicas(&env, &name, 1).await;

    // Wake on connect.
    set_state(&api, &name, "hibernated").await;
    wait_phase(
        &env,
        &name,
        SessionState::Hibernated,
        SessionPhase::Hibernated,
    )
    .await;
    let (code, reply) = request(
        &api,
        "GET",
        &format!("/api/v1/sessions/{name}/connect?user=alice"),
        None,
    )
    .await;
    assert_eq!(code, 200, "{reply}");
    assert_eq!(reply["state"], "running", "{reply}");
    wait_phase(&env, &name, SessionState::Running, SessionPhase::Running).await;
    wait_replicas(&env, &name, 1).await;

    // Idle.
    shorten_idle_timeout(&env, &name).await;
    wait_phase(
        &env,
        &name,
        SessionState::Hibernated,
        SessionPhase::Hibernated,
    )
    .await;
    wait_replicas(&env, &name, 0).await;
    assert_eq!(
        wait_idle_stops(&api).await,
        1,
        "the API's monitor stopped it"
    );

    drop(api);
    delete_flags(&env).await;
    env.cleanup().await;
}

/// Webhook configurations for this test's namespace only, calling an address where nothing
/// listens (the controller is down), with `policy` as their failurePolicy.
async fn unreachable_webhooks(env: &TestEnv, policy: &str) {
    use k8s_openapi::api::admissionregistration::v1::{
        MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
    };
    let webhook = |name: &str| {
        json!({
            "name": format!("{name}.{}.rollback.stream.space", env.namespace),
            "clientConfig": {"url": "https://127.0.0.1:1/admission"},
            "rules": [{
                "apiGroups": ["stream.space"], "apiVersions": ["v1alpha1"],
                "operations": ["CREATE", "UPDATE"], "resources": ["sessions"],
            }],
            "namespaceSelector": {"matchLabels": {WEBHOOK_TEST_LABEL: env.namespace}},
            "failurePolicy": policy,
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 2,
        })
    };
    let name = format!("{}-rollback", env.namespace);
    let params = PatchParams::apply("rollback-test").force();
    let validating: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name}, "webhooks": [webhook("quota")],
    }))
    .expect("validating configuration");
    Api::<ValidatingWebhookConfiguration>::all(env.client.clone())
        .patch(&name, &params, &Patch::Apply(&validating))
        .await
        .expect("apply validating configuration");
    let mutating: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name}, "webhooks": [webhook("defaults")],
    }))
    .expect("mutating configuration");
    Api::<MutatingWebhookConfiguration>::all(env.client.clone())
        .patch(&name, &params, &Patch::Apply(&mutating))
        .await
        .expect("apply mutating configuration");
}

async fn delete_webhooks(env: &TestEnv) {
    use k8s_openapi::api::admissionregistration::v1::{
        MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
    };
    let name = format!("{}-rollback", env.namespace);
    let _ = Api::<ValidatingWebhookConfiguration>::all(env.client.clone())
        .delete(&name, &DeleteParams::default())
        .await;
    let _ = Api::<MutatingWebhookConfiguration>::all(env.client.clone())
        .delete(&name, &DeleteParams::default())
        .await;
}

/// Namespace label the test's webhook configurations select.
const WEBHOOK_TEST_LABEL: &str = "stream.space/rollback-webhook-test";

#[tokio::test]
async fn rollback_webhooks_without_a_controller_need_failure_policy_ignore() {
    let env = TestEnv::without_controller("rollback-webhooks").await;
    Api::<k8s_openapi::api::core::v1::Namespace>::all(env.client.clone())
        .patch(
            &env.namespace,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {WEBHOOK_TEST_LABEL: env.namespace}}})),
        )
        .await
        .expect("label the namespace");
    env.create::<Template>(json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "Template",
        "metadata": {"name": "firefox"},
        "spec": {"displayName": "Firefox", "baseImage": "lscr.io/linuxserver/firefox:latest"}
    }))
    .await;
    let api = RunningApi::start_static(&env, |_| {}).await;
    for resource in ResourceType::ALL {
        set_flag(&env, &api, resource, "legacy").await;
    }
    let try_create = || async {
        request(
            &api,
            "POST",
            "/api/v1/sessions",
            Some(json!({"user": "alice", "template": "firefox"})),
        )
        .await
    };

    // failurePolicy Fail and nobody answering: the API's legacy create is refused.
    unreachable_webhooks(&env, "Fail").await;
    let (code, reply) = wait_for(
        "the API server to call the webhooks",
        try_create,
        |(code, _)| *code != 202,
    )
    .await;
    assert!(code >= 500, "{code} {reply}");
    let count = || async {
        env.api::<Session>()
            .list(&Default::default())
            .await
            .expect("list")
            .items
            .len()
    };
    let before = count().await;
    let (code, reply) = try_create().await;
    assert!(code >= 500, "{code} {reply}");
    assert_eq!(
        count().await,
        before,
        "a refused create leaves no Session behind"
    );

    // Ignore: requests go through; the API fills the defaults and checks the quota itself.
    unreachable_webhooks(&env, "Ignore").await;
    let (_, reply) = wait_for("the new failurePolicy", try_create, |(code, _)| {
        *code == 202
    })
    .await;
    let name = reply["name"].as_str().expect("name").to_string();
    let session = env.api::<Session>().get(&name).await.expect("created");
    assert_eq!(session.spec.idle_timeout, "30m");
    assert_eq!(
        session
            .metadata
            .labels
            .unwrap_or_default()
            .get("user")
            .map(String::as_str),
        Some("alice"),
        "labelled by the API, not by the webhook"
    );
    // State changes (Session updates) go through as well.
    set_state(&api, &name, "hibernated").await;
    wait_phase(
        &env,
        &name,
        SessionState::Hibernated,
        SessionPhase::Hibernated,
    )
    .await;

    delete_webhooks(&env).await;
    drop(api);
    delete_flags(&env).await;
    env.cleanup().await;
}
