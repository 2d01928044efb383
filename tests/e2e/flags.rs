//! Ownership flags end to end: baselines from Git, overrides through the API, what every
//! replica and the controller see, status and Events.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use streamspace_controller::crd::FeatureFlag;

use crate::gitops::{Repo, create_gitsync, wait_applied};
use crate::http_client::{API_TOKEN, RunningApi, call, call_json};
use crate::support::{TestEnv, wait_for, wait_gone, wait_object};

fn flag_document(name: &str, mode: &str, percent: u8) -> String {
    format!(
        "apiVersion: stream.space/v1alpha1\nkind: FeatureFlag\nmetadata:\n  name: {name}\nspec:\n  mode: {mode}\n  percent: {percent}\n"
    )
}

/// `(mode, percent, source)` of one type as the server at `addr` decides with it (`path` is
/// `/api/v1/flags/<type>` on the API, `/flags` on the controller).
async fn seen(addr: SocketAddr, path: &str, kind: &str) -> (String, u64, String) {
    let (code, body) = call(addr, "GET", path, Some(API_TOKEN)).await;
    assert_eq!(code, 200, "{path}: {body}");
    let flag = match body.get("flags").and_then(Value::as_array) {
        Some(flags) => flags
            .iter()
            .find(|f| f["type"] == kind)
            .cloned()
            .unwrap_or_default(),
        None => body,
    };
    (
        flag["mode"].as_str().unwrap_or_default().to_string(),
        flag["percent"].as_u64().unwrap_or_default(),
        flag["source"].as_str().unwrap_or_default().to_string(),
    )
}

async fn wait_seen(addr: SocketAddr, path: &str, kind: &str, want: (&str, u64, &str)) -> Duration {
    let started = Instant::now();
    wait_for(
        &format!("{path} to show {kind} = {want:?}"),
        || seen(addr, path, kind),
        |(mode, percent, source)| (mode.as_str(), *percent, source.as_str()) == want,
    )
    .await;
    started.elapsed()
}

async fn flag_events(env: &TestEnv, name: &str) -> Vec<(String, String)> {
    let events: Api<Event> = Api::namespaced(env.client.clone(), "default");
    let list = events
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .expect("list events");
    list.items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

/// Something else to keep in the repository (a path without YAML is refused).
fn quota_document() -> String {
    "apiVersion: stream.space/v1alpha1\nkind: QuotaPolicy\nmetadata:\n  name: everyone\nspec:\n  subject:\n    kind: Default\n".into()
}

fn effective_mode(flag: &FeatureFlag) -> Option<&str> {
    flag.status.as_ref()?.effective_mode.as_deref()
}

#[tokio::test]
async fn flags_override_with_a_ttl_rolls_back_at_once_and_the_git_baseline_returns() {
    let env = TestEnv::new("flags-ttl").await;
    let api = RunningApi::start(&env, Duration::from_millis(500), None).await;
    let controller = env.controller_http_addr();
    let name = format!("{}sessions", env.flag_settings().name_prefix);
    let flags: Api<FeatureFlag> = Api::all(env.client.clone());

    let repo = Repo::new();
    let first = repo.commit(
        &[("flags.yaml", Some(&flag_document(&name, "controller", 100)))],
        "sessions go to the controller",
    );
    create_gitsync(&env, "flags", json!({"url": repo.url(), "interval": "1h"})).await;
    wait_applied(&env, "flags", &first).await;
    let want = ("controller", 100, "baseline");
    wait_seen(api.addr, "/api/v1/flags/sessions", "sessions", want).await;
    wait_seen(controller, "/flags", "sessions", want).await;
    wait_object(&flags, &name, "status of the baseline", |f| {
        effective_mode(f) == Some("controller")
    })
    .await;

    // Roll back for 2 s: in force at once, then the baseline returns by itself.
    let (code, body) = call_json(
        api.addr,
        "PUT",
        "/api/v1/flags/sessions/override",
        Some(API_TOKEN),
        &json!({"mode": "legacy", "ttl": "2s", "reason": "rollback drill"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["mode"], "legacy", "{body}");
    assert_eq!(body["source"], "override", "{body}");
    assert_eq!(body["override"]["setBy"], "static-token", "{body}");
    let rolled_back = ("legacy", 100, "override");
    let api_took = wait_seen(api.addr, "/api/v1/flags/sessions", "sessions", rolled_back).await;
    let controller_took = wait_seen(controller, "/flags", "sessions", rolled_back).await;
    println!(
        "override seen by the API after {api_took:?}, by the controller after {controller_took:?}"
    );

    let back = wait_seen(api.addr, "/api/v1/flags/sessions", "sessions", want).await;
    wait_seen(controller, "/flags", "sessions", want).await;
    println!("baseline back {back:?} after the override was seen");
    // The override stays on the object (expired) until cleared; status follows the baseline.
    let flag = wait_object(&flags, &name, "status back to the baseline", |f| {
        effective_mode(f) == Some("controller")
            && f.status.as_ref().and_then(|s| s.source.as_deref()) == Some("baseline")
    })
    .await;
    assert!(
        flag.spec.override_.is_some(),
        "expired override kept for the record"
    );

    // Who and why are on record: the API's OverrideSet and the controller's two flips.
    let events = wait_for(
        "override and flip events",
        || flag_events(&env, &name),
        |events| {
            events.iter().any(|(r, m)| {
                r == "OverrideSet" && m.contains("rollback drill") && m.contains("static-token")
            }) && events.iter().filter(|(r, _)| r == "Flipped").count() >= 2
        },
    )
    .await;
    assert!(
        events
            .iter()
            .any(|(r, m)| r == "Flipped" && m.contains("override expired")),
        "{events:?}"
    );
    flags
        .delete(&name, &Default::default())
        .await
        .expect("delete the flag");
    env.cleanup().await;
}

#[tokio::test]
async fn flags_a_git_sync_of_the_baseline_never_clears_an_active_override() {
    let env = TestEnv::new("flags-git").await;
    let api = RunningApi::start(&env, Duration::from_millis(500), None).await;
    let name = format!("{}nodes", env.flag_settings().name_prefix);
    let flags: Api<FeatureFlag> = Api::all(env.client.clone());
    let repo = Repo::new();
    let first = repo.commit(
        &[("flags.yaml", Some(&flag_document(&name, "controller", 100)))],
        "baseline",
    );
    create_gitsync(&env, "flags", json!({"url": repo.url(), "interval": "1s"})).await;
    wait_applied(&env, "flags", &first).await;

    let (code, body) = call_json(
        api.addr,
        "PUT",
        "/api/v1/flags/nodes/override",
        Some(API_TOKEN),
        &json!({"mode": "legacy", "ttl": "1h", "reason": "drain storm"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");

    // Git moves the baseline: the sync applies it and leaves the override alone.
    let second = repo.commit(
        &[("flags.yaml", Some(&flag_document(&name, "controller", 50)))],
        "half the nodes",
    );
    wait_applied(&env, "flags", &second).await;
    let flag = wait_object(&flags, &name, "baseline 50 applied", |f| {
        f.spec.percent == 50
    })
    .await;
    let over = flag
        .spec
        .override_
        .clone()
        .expect("override survives the sync");
    assert_eq!(over.mode.as_str(), "legacy");
    assert_eq!(over.reason.as_deref(), Some("drain storm"));
    // Two more syncs change nothing.
    let (_, finished) = env.reconciles("gitsync");
    env.wait_reconciled("gitsync", finished + 2.0).await;
    let again = flags.get(&name).await.expect("flag");
    assert!(
        again.spec.override_.is_some(),
        "no sync cleared the override"
    );
    assert_eq!(
        seen(api.addr, "/api/v1/flags/nodes", "nodes").await,
        ("legacy".to_string(), 100, "override".to_string())
    );

    // Removing the flag from Git keeps it while the override is active...
    let dropped = repo.commit(
        &[
            ("flags.yaml", None),
            ("quota.yaml", Some(&quota_document())),
        ],
        "drop the flag",
    );
    wait_applied(&env, "flags", &dropped).await;
    assert!(
        flags.get_opt(&name).await.expect("get").is_some(),
        "a flag with an active override is not pruned"
    );
    // ...and prunes it once the override is cleared.
    let (code, body) = call(
        api.addr,
        "DELETE",
        "/api/v1/flags/nodes/override",
        Some(API_TOKEN),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    wait_gone(&flags, &name, "flag pruned after the override was cleared").await;

    env.cleanup().await;
}

#[tokio::test]
async fn flags_bad_override_requests_are_refused_without_a_write() {
    let env = TestEnv::new("flags-bad").await;
    let api = RunningApi::start(&env, Duration::from_millis(500), None).await;
    let name = format!("{}quota", env.flag_settings().name_prefix);
    let flags: Api<FeatureFlag> = Api::all(env.client.clone());
    let cases = [
        (
            None,
            "/api/v1/flags/quota/override",
            json!({"mode": "legacy", "reason": "x"}),
            401,
        ),
        (
            Some(API_TOKEN),
            "/api/v1/flags/gpus/override",
            json!({"mode": "legacy", "reason": "x"}),
            404,
        ),
        (
            Some(API_TOKEN),
            "/api/v1/flags/quota/override",
            json!({"mode": "sometimes", "reason": "x"}),
            400,
        ),
        (
            Some(API_TOKEN),
            "/api/v1/flags/quota/override",
            json!({"mode": "legacy"}),
            400,
        ),
        (
            Some(API_TOKEN),
            "/api/v1/flags/quota/override",
            json!({"mode": "legacy", "percent": 120, "reason": "x"}),
            400,
        ),
        (
            Some(API_TOKEN),
            "/api/v1/flags/quota/override",
            json!({"mode": "legacy", "ttl": "soon", "reason": "x"}),
            400,
        ),
        (
            Some(API_TOKEN),
            "/api/v1/flags/quota/override",
            json!({"mode": "legacy", "reason": "x", "extra": 1}),
            400,
        ),
    ];
    for (token, path, body, expected) in cases {
        let (code, reply) = call_json(api.addr, "PUT", path, token, &body).await;
        assert_eq!(code, expected, "{path} {body}: {reply}");
        assert!(reply["error"].is_string(), "{reply}");
    }
    assert!(
        flags.get_opt(&name).await.expect("get").is_none(),
        "no flag object was created"
    );
    let (code, _) = call(
        api.addr,
        "DELETE",
        "/api/v1/flags/quota/override",
        Some(API_TOKEN),
    )
    .await;
    assert_eq!(code, 404);

    // A valid override on a type without a flag object creates one whose baseline is the
    // default in force (controller), so clearing the override changes nothing.
    let (code, body) = call_json(
        api.addr,
        "PUT",
        "/api/v1/flags/quota/override",
        Some(API_TOKEN),
        &json!({"mode": "shadow", "percent": 10, "reason": "try the webhook on 10%"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["baseline"],
        json!({"mode": "controller", "percent": 100})
    );
    // A second override replaces the first whole and keeps the baseline.
    let (code, body) = call_json(
        api.addr,
        "PUT",
        "/api/v1/flags/quota/override",
        Some(API_TOKEN),
        &json!({"mode": "legacy", "ttl": "1h", "reason": "second thoughts"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["baseline"],
        json!({"mode": "controller", "percent": 100})
    );
    assert_eq!(body["override"]["mode"], "legacy", "{body}");
    assert_eq!(body["override"]["percent"], 100, "{body}");
    assert!(body["override"]["expiresAt"].is_string(), "{body}");
    let (code, body) = call(
        api.addr,
        "DELETE",
        "/api/v1/flags/quota/override",
        Some(API_TOKEN),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (body["mode"].as_str(), body["source"].as_str()),
        (Some("controller"), Some("baseline"))
    );
    flags
        .delete(&name, &Default::default())
        .await
        .expect("delete the flag");
    env.cleanup().await;
}
