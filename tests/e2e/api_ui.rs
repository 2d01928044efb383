//! The API the StreamSpace UI calls: templates, tags, activity, connections shared by API
//! replicas, quota, the cluster WebSocket and the OpenAPI document, against the real control
//! plane, with the API running as its own ServiceAccount (the development API role) and
//! checking development users' tokens.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use streamspace_controller::api::ApiConfig;
use streamspace_controller::api::auth::KubernetesAuth;
use streamspace_controller::api::connections::{APP_CONNECTION, lease_name};
use streamspace_controller::crd::{QuotaPolicy, Session, Template};
use streamspace_controller::metrics::Metrics;
use streamspace_controller::quota::ledger::{self, SessionKey};
use streamspace_controller::quota::{self as quota_rules};
use streamspace_controller::rbac;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::http_client::{Http, RunningApi};
use crate::support::{TestEnv, WAIT, dev_token, wait_for};

const FIELD_MANAGER: &str = "streamspace-tests";
const API_ACCOUNT: &str = "streamspace-api";
/// Short connection expiry of these tests (whole seconds, as the flag requires).
const EXPIRY: Duration = Duration::from_secs(2);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A test namespace with the RBAC applied and API replicas running as the development API
/// ServiceAccount with [`KubernetesAuth`].
struct World {
    env: TestEnv,
    api_client: Client,
    binding: String,
}

impl World {
    async fn new(test: &str) -> World {
        let env = TestEnv::without_controller(test).await;
        rbac::apply_dev(&env.client, FIELD_MANAGER)
            .await
            .expect("apply the RBAC");
        let binding = format!("{API_ACCOUNT}-{}", env.namespace);
        let token = crate::api_exposure::account_token(&env, API_ACCOUNT, None).await;
        let role_binding: ClusterRoleBinding = serde_json::from_value(json!({
            "metadata": {"name": binding},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                "name": rbac::API_CLUSTER_ROLE,
            },
            "subjects": [{"kind": "ServiceAccount", "name": API_ACCOUNT, "namespace": env.namespace}],
        }))
        .expect("binding");
        Api::<ClusterRoleBinding>::all(env.client.clone())
            .patch(
                &binding,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&role_binding),
            )
            .await
            .expect("bind the API role");
        let api_client = crate::api_exposure::token_client(token).await;
        World {
            env,
            api_client,
            binding,
        }
    }

    /// One API replica (connection expiry [`EXPIRY`]), ready (every cache loaded).
    async fn replica(&self) -> RunningApi {
        self.replica_with(|_| {}).await
    }

    async fn replica_with(&self, customise: impl FnOnce(&mut ApiConfig)) -> RunningApi {
        let metrics = Arc::new(Metrics::default());
        let auth = Arc::new(
            KubernetesAuth::new(self.api_client.clone(), self.env.namespace.clone())
                .with_metrics(metrics.clone()),
        );
        let api = RunningApi::start_as(
            &self.env,
            self.api_client.clone(),
            auth,
            metrics,
            |config| {
                config.flush_interval = Duration::from_millis(200);
                config.connection_expiry = EXPIRY;
                customise(config);
            },
        )
        .await;
        let addr = api.addr;
        wait_for(
            "the API replica to be ready",
            || async move { get(addr, "/readyz", None).await.0 },
            |code| *code == 200,
        )
        .await;
        api
    }

    async fn session(&self, name: &str, user: &str, spec: Value) -> Session {
        let mut full = json!({"user": user, "template": "firefox"});
        if let (Some(full), Some(extra)) = (full.as_object_mut(), spec.as_object()) {
            full.extend(extra.clone());
        }
        self.env
            .create::<Session>(json!({
                "apiVersion": "stream.space/v1alpha1", "kind": "Session",
                "metadata": {"name": name},
                "spec": full,
            }))
            .await
    }

    async fn stored(&self, name: &str) -> Session {
        self.env
            .api::<Session>()
            .get(name)
            .await
            .expect("get session")
    }

    async fn leases(&self) -> Vec<Lease> {
        self.env
            .api::<Lease>()
            .list(&ListParams::default().labels(&format!("app={APP_CONNECTION}")))
            .await
            .expect("list connection leases")
            .items
    }

    async fn cleanup(self) {
        let _ = Api::<ClusterRoleBinding>::all(self.env.client.clone())
            .delete(&self.binding, &DeleteParams::default())
            .await;
        self.env.cleanup().await;
    }
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    Http::connect(addr)
        .await
        .request(method, path, token, body.as_deref())
        .await
}

async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, Value) {
    request(addr, "GET", path, token, None).await
}

/// A refusal: the status and the API's error shape.
fn assert_refused(code: u16, body: &Value, wanted: u16, what: &str) {
    assert_eq!(code, wanted, "{what}: {body}");
    assert_eq!(body["success"], false, "{what}: {body}");
    assert!(body["error"].is_string(), "{what}: {body}");
}

/// A refusal whose `error` (or, in the StreamSpace shape, `message`) contains `says`.
fn assert_refused_saying(code: u16, body: &Value, wanted: u16, what: &str, says: &str) {
    assert_refused(code, body, wanted, what);
    assert!(
        ["error", "message"]
            .iter()
            .any(|field| body[field].as_str().is_some_and(|e| e.contains(says))),
        "{what}: {says:?} in {body}"
    );
}

fn names(list: &Value) -> Vec<String> {
    list["sessions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Templates

async fn template(env: &TestEnv, name: &str, category: &str) {
    env.create::<Template>(json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "Template",
        "metadata": {"name": name},
        "spec": {
            "displayName": name, "category": category, "baseImage": format!("{name}:latest"),
            "defaultResources": {"memory": "1Gi", "cpu": "500m"},
            "vnc": {"enabled": true, "port": 3000}, "tags": ["web"],
        }
    }))
    .await;
}

#[tokio::test]
async fn templates_are_listed_filtered_and_read_from_the_watch_cache() {
    let world = World::new("api-ui-templates").await;
    template(&world.env, "firefox", "Browsers").await;
    template(&world.env, "gimp", "Design").await;
    let api = world.replica().await;
    let addr = api.addr;
    let alice = dev_token("alice");

    let (code, list) = wait_for(
        "both templates in the list",
        || async { get(addr, "/api/v1/templates", Some(&alice)).await },
        |(code, list)| *code == 200 && list["total"] == 2,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(list["templates"][0]["name"], "firefox", "{list}");
    assert_eq!(list["templates"][1]["name"], "gimp", "{list}");

    let (code, browsers) = get(addr, "/api/v1/templates?category=browsers", Some(&alice)).await;
    assert_eq!(code, 200, "{browsers}");
    assert_eq!(browsers["total"], 1, "{browsers}");
    let firefox = &browsers["templates"][0];
    assert_eq!(firefox["name"], "firefox");
    assert_eq!(firefox["category"], "Browsers");
    assert_eq!(firefox["baseImage"], "firefox:latest");
    assert_eq!(
        firefox["defaultResources"],
        json!({"memory": "1Gi", "cpu": "500m"})
    );
    assert_eq!(firefox["vnc"], json!({"enabled": true, "port": 3000}));
    let (_, none) = get(addr, "/api/v1/templates?category=games", Some(&alice)).await;
    assert_eq!(none["total"], 0, "{none}");

    let (code, one) = get(addr, "/api/v1/templates/gimp", Some(&alice)).await;
    assert_eq!(code, 200, "{one}");
    assert_eq!(one["category"], "Design");

    // A change reaches the cache (the watch), not only what was there at start.
    template(&world.env, "vscode", "Development").await;
    wait_for(
        "the new template",
        || async { get(addr, "/api/v1/templates/vscode", Some(&alice)).await.0 },
        |code| *code == 200,
    )
    .await;

    let (code, body) = get(addr, "/api/v1/templates/missing", Some(&alice)).await;
    assert_refused(code, &body, 404, "unknown template");
    let (code, body) = get(addr, "/api/v1/templates/Not_A_Name", Some(&alice)).await;
    assert_refused(code, &body, 400, "invalid template name");
    let long = "x".repeat(300);
    let (code, body) = get(
        addr,
        &format!("/api/v1/templates?category={long}"),
        Some(&alice),
    )
    .await;
    assert_refused(code, &body, 400, "category too long");
    let (code, body) = get(addr, "/api/v1/templates", None).await;
    assert_refused(code, &body, 401, "no token");
    drop(api);
    world.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Sessions: tags, by-tags, status freshness, activity

#[tokio::test]
async fn tags_are_replaced_and_searched_only_within_what_the_caller_may_see() {
    let world = World::new("api-ui-tags").await;
    world
        .session("alice-a", "alice", json!({"tags": ["gpu"]}))
        .await;
    world.session("alice-b", "alice", json!({})).await;
    world
        .session("bob-a", "bob", json!({"tags": ["gpu", "big"]}))
        .await;
    let api = world.replica().await;
    let addr = api.addr;
    let (alice, operator) = (dev_token("alice"), dev_token("operator"));

    let (code, mine) = get(addr, "/api/v1/sessions/by-tags?tags=gpu", Some(&alice)).await;
    assert_eq!(code, 200, "{mine}");
    assert_eq!(names(&mine), ["alice-a"], "alice sees only her own");
    let (_, all) = get(
        addr,
        "/api/v1/sessions/by-tags?tags=big,gpu",
        Some(&operator),
    )
    .await;
    assert_eq!(names(&all), ["alice-a", "bob-a"], "{all}");
    let (_, repeated) = get(
        addr,
        "/api/v1/sessions/by-tags?tags=nothing&tags=big",
        Some(&operator),
    )
    .await;
    assert_eq!(names(&repeated), ["bob-a"], "{repeated}");
    let (_, bobs) = get(
        addr,
        "/api/v1/sessions/by-tags?tags=gpu&user=bob",
        Some(&operator),
    )
    .await;
    assert_eq!(names(&bobs), ["bob-a"], "?user= filters");
    let (code, body) = get(
        addr,
        "/api/v1/sessions/by-tags?tags=gpu&user=bob",
        Some(&alice),
    )
    .await;
    assert_refused(code, &body, 403, "?user= is no identity");
    let (code, body) = get(addr, "/api/v1/sessions/by-tags", Some(&alice)).await;
    assert_refused(code, &body, 400, "no tags");
    // A tag is at most 63 characters (a label value's length): 63 searches, 64 is refused.
    let (code, body) = get(
        addr,
        &format!("/api/v1/sessions/by-tags?tags=gpu,{}", "t".repeat(63)),
        Some(&alice),
    )
    .await;
    assert_eq!(
        (code, names(&body)),
        (200, vec!["alice-a".to_string()]),
        "{body}"
    );
    let (code, body) = get(
        addr,
        &format!("/api/v1/sessions/by-tags?tags=gpu,{}", "t".repeat(64)),
        Some(&alice),
    )
    .await;
    assert_refused_saying(
        code,
        &body,
        400,
        "a 64-character tag",
        "longer than 63 characters",
    );

    // Replace alice-b's tags.
    let (code, item) = request(
        addr,
        "PATCH",
        "/api/v1/sessions/alice-b/tags",
        Some(&alice),
        Some(json!({"tags": ["team-a", "gpu", "team-a"]})),
    )
    .await;
    assert_eq!(code, 200, "{item}");
    assert_eq!(
        item["tags"],
        json!(["team-a", "gpu"]),
        "duplicates dropped: {item}"
    );
    assert_eq!(world.stored("alice-b").await.spec.tags, ["team-a", "gpu"]);
    wait_for(
        "the tag search to see the change",
        || async {
            get(addr, "/api/v1/sessions/by-tags?tags=team-a", Some(&alice))
                .await
                .1
        },
        |list| names(list) == ["alice-b"],
    )
    .await;

    // Refusals write nothing.
    let bob_before = world.stored("bob-a").await.resource_version();
    let (code, body) = request(
        addr,
        "PATCH",
        "/api/v1/sessions/bob-a/tags",
        Some(&alice),
        Some(json!({"tags": []})),
    )
    .await;
    assert_refused(code, &body, 403, "another user's session");
    let (code, body) = request(
        addr,
        "PATCH",
        "/api/v1/sessions/missing/tags",
        Some(&operator),
        Some(json!({"tags": ["x"]})),
    )
    .await;
    assert_refused(code, &body, 404, "unknown session");
    let alice_before = world.stored("alice-b").await.resource_version();
    for bad in [
        json!({"tags": "gpu"}),
        json!({}),
        json!({"tags": ["x".repeat(64)]}),
        json!({"tags": [""]}),
    ] {
        let (code, body) = request(
            addr,
            "PATCH",
            "/api/v1/sessions/alice-b/tags",
            Some(&alice),
            Some(bad.clone()),
        )
        .await;
        assert_refused(code, &body, 400, &bad.to_string());
    }
    assert_eq!(world.stored("bob-a").await.resource_version(), bob_before);
    assert_eq!(
        world.stored("alice-b").await.resource_version(),
        alice_before
    );
    drop(api);
    world.cleanup().await;
}

#[tokio::test]
async fn session_answers_tell_a_stale_status_and_report_activity() {
    let world = World::new("api-ui-activity").await;
    world
        .session("alice-idle", "alice", json!({"idleTimeout": "1m"}))
        .await;
    world
        .session("alice-busy", "alice", json!({"idleTimeout": "30m"}))
        .await;
    world.session("bob-a", "bob", json!({})).await;
    let two_minutes_ago = k8s_openapi::jiff::Timestamp::now()
        .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(120))
        .expect("time");
    let sessions = world.env.api::<Session>();
    let status = |last: String| {
        json!({"status": {
            "lastActivity": last,
            "observedGeneration": 1,
            "reconciledAt": "2026-01-01T00:00:00Z",
            "conditions": [{"type": "Ready", "status": "False", "reason": "PodNotReady",
                "message": "waiting", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        }})
    };
    for (name, last) in [
        ("alice-idle", two_minutes_ago.to_string()),
        (
            "alice-busy",
            k8s_openapi::jiff::Timestamp::now().to_string(),
        ),
    ] {
        sessions
            .patch_status(name, &PatchParams::default(), &Patch::Merge(status(last)))
            .await
            .expect("write status");
    }
    // A spec change after the status: the status is now stale (observedGeneration 1 < 2).
    sessions
        .patch(
            "alice-busy",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"tags": ["later"]}})),
        )
        .await
        .expect("change spec");
    let api = world.replica().await;
    let addr = api.addr;
    let (alice, operator) = (dev_token("alice"), dev_token("operator"));

    let (_, busy) = wait_for(
        "the API to see the spec change",
        || async { get(addr, "/api/v1/sessions/alice-busy", Some(&alice)).await },
        |(code, item)| *code == 200 && item["generation"] == 2,
    )
    .await;
    assert_eq!(busy["status"]["observedGeneration"], 1, "{busy}");
    assert_eq!(
        busy["status"]["reconciledAt"], "2026-01-01T00:00:00Z",
        "{busy}"
    );
    assert_eq!(
        busy["status"]["conditions"][0]["reason"], "PodNotReady",
        "{busy}"
    );
    let (_, list) = get(addr, "/api/v1/sessions", Some(&alice)).await;
    assert_eq!(
        list["sessions"][0]["status"]["observedGeneration"], 1,
        "{list}"
    );

    let (code, idle) = get(addr, "/api/v1/sessions/alice-idle/activity", Some(&alice)).await;
    assert_eq!(code, 200, "{idle}");
    assert_eq!(idle["idleThreshold"], 60, "{idle}");
    assert!(
        idle["idleDuration"].as_i64().is_some_and(|d| d >= 120),
        "{idle}"
    );
    assert_eq!(
        (idle["isIdle"].clone(), idle["isActive"].clone()),
        (json!(true), json!(false))
    );
    assert_eq!(idle["activeConnections"], 0);
    let (_, active) = get(addr, "/api/v1/sessions/alice-busy/activity", Some(&alice)).await;
    assert_eq!(
        (active["isIdle"].clone(), active["isActive"].clone()),
        (json!(false), json!(true)),
        "{active}"
    );
    assert_eq!(active["idleThreshold"], 1800);

    let (code, body) = get(addr, "/api/v1/sessions/bob-a/activity", Some(&alice)).await;
    assert_refused(code, &body, 403, "another user's session");
    let (code, body) = get(addr, "/api/v1/sessions/missing/activity", Some(&operator)).await;
    assert_refused(code, &body, 404, "unknown session");
    let (code, body) = get(addr, "/api/v1/sessions/Bad_Id/activity", Some(&alice)).await;
    assert_refused(code, &body, 400, "invalid id");

    // The same fields on the sessions WebSocket.
    let mut ws = open_ws(addr, "/api/v1/ws/sessions", Some(&alice))
        .await
        .expect("ws");
    let update = next_message(&mut ws, "sessions_update").await;
    let item = update["sessions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == "alice-idle")
        .cloned()
        .expect("alice-idle in the stream");
    for field in [
        "lastActivity",
        "idleDuration",
        "idleThreshold",
        "isIdle",
        "isActive",
    ] {
        assert!(item.get(field).is_some(), "{field} missing: {item}");
    }
    assert_eq!(item["isIdle"], true, "{item}");
    assert_eq!(item["status"]["observedGeneration"], 1, "{item}");
    let _ = ws.close(None).await;
    drop(api);
    world.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Connections across replicas

async fn connections_of(addr: SocketAddr, session: &str, token: &str) -> Value {
    let (code, body) = get(
        addr,
        &format!("/api/v1/sessions/{session}/connections"),
        Some(token),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    body
}

async fn connect(addr: SocketAddr, session: &str, token: &str, id: Option<&str>) -> Value {
    let path = match id {
        Some(id) => format!("/api/v1/sessions/{session}/connect?connectionId={id}"),
        None => format!("/api/v1/sessions/{session}/connect"),
    };
    let (code, body) = get(addr, &path, Some(token)).await;
    assert_eq!(code, 200, "{body}");
    body
}

/// Waits until `replica` reports `count` live connections of `session`.
async fn wait_count(replica: SocketAddr, session: &str, token: &str, count: usize, what: &str) {
    wait_for(
        what,
        || async { connections_of(replica, session, token).await },
        |body| {
            body["activeConnections"] == count
                && body["connections"].as_array().map(Vec::len) == Some(count)
        },
    )
    .await;
}

#[tokio::test]
async fn connections_are_shared_by_replicas_deduplicated_and_expire() {
    let world = World::new("api-ui-connections").await;
    world.session("alice-s", "alice", json!({})).await;
    world.session("bob-s", "bob", json!({})).await;
    let one = world.replica().await;
    let two = world.replica().await;
    let (a, b) = (one.addr, two.addr);
    let (alice, operator) = (dev_token("alice"), dev_token("operator"));

    // Made on one replica, seen by both.
    let first = connect(a, "alice-s", &alice, Some("tab-1")).await;
    assert_eq!(first["connectionId"], "tab-1");
    assert_eq!(first["newConnection"], true);
    wait_count(b, "alice-s", &alice, 1, "replica two to see the connection").await;

    // Polling connect with the same id is one connection (7 connects, whichever replica).
    for n in 0..6 {
        let again = connect(
            if n % 2 == 0 { a } else { b },
            "alice-s",
            &alice,
            Some("tab-1"),
        )
        .await;
        assert_eq!(again["newConnection"], false, "{again}");
    }
    assert_eq!(
        world.leases().await.len(),
        1,
        "one Lease for one connection"
    );
    // ... and one disconnect closes it.
    let (code, closed) = request(
        b,
        "POST",
        "/api/v1/sessions/alice-s/disconnect?connectionId=tab-1",
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(code, 200, "{closed}");
    assert_eq!(closed["activeConnections"], 0, "{closed}");
    wait_count(a, "alice-s", &alice, 0, "replica one to see the disconnect").await;

    // Made on one, heartbeated on the other for twice the expiry: it stays.
    connect(a, "alice-s", &alice, Some("tab-2")).await;
    let kept_until = Instant::now() + EXPIRY * 2;
    while Instant::now() < kept_until {
        let (code, beat) = request(
            b,
            "POST",
            "/api/v1/sessions/alice-s/heartbeat?connectionId=tab-2",
            Some(&alice),
            None,
        )
        .await;
        assert_eq!(code, 200, "{beat}");
        assert_eq!(beat["connectionId"], "tab-2");
        tokio::time::sleep(EXPIRY / 4).await;
    }
    for replica in [a, b] {
        let body = connections_of(replica, "alice-s", &alice).await;
        assert_eq!(
            body["activeConnections"], 1,
            "kept alive through the other replica: {body}"
        );
        assert_eq!(body["connections"][0]["connectionId"], "tab-2");
        assert_eq!(body["expirySeconds"], EXPIRY.as_secs());
    }

    // The client goes away without a disconnect: the connection expires on both replicas, and
    // a replica removes its Lease (the evidence that expiry was processed).
    let lease = lease_name("alice-s", "tab-2");
    let leases = world.env.api::<Lease>();
    wait_for(
        "the expired connection's Lease to be removed",
        || async { leases.get_opt(&lease).await.expect("get lease").is_none() },
        |gone| *gone,
    )
    .await;
    for replica in [a, b] {
        let body = connections_of(replica, "alice-s", &alice).await;
        assert_eq!(body["activeConnections"], 0, "{body}");
    }
    let (code, body) = request(
        a,
        "POST",
        "/api/v1/sessions/alice-s/heartbeat?connectionId=tab-2",
        Some(&alice),
        None,
    )
    .await;
    assert_refused(code, &body, 404, "heartbeat of an expired connection");

    // Without an id, every connect is a new connection; a session list counts them the same on
    // both replicas.
    let x = connect(a, "alice-s", &alice, None).await;
    let y = connect(b, "alice-s", &alice, None).await;
    assert_ne!(x["connectionId"], y["connectionId"]);
    // Kept alive while waiting: on a slow machine the wait can outlast the 2 s expiry.
    let beats: Vec<String> = [&x, &y]
        .iter()
        .map(|c| {
            let id = c["connectionId"].as_str().unwrap_or_default();
            format!("/api/v1/sessions/alice-s/heartbeat?connectionId={id}")
        })
        .collect();
    for replica in [a, b] {
        wait_for(
            "the list to count two connections",
            || async {
                for beat in &beats {
                    request(a, "POST", beat, Some(&alice), None).await;
                }
                get(replica, "/api/v1/sessions", Some(&alice)).await.1
            },
            |list| {
                list["sessions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|s| s["name"] == "alice-s" && s["activeConnections"] == 2)
            },
        )
        .await;
    }

    // Refusals write nothing.
    let before = world.leases().await.len();
    let (code, body) = get(
        a,
        "/api/v1/sessions/alice-s/connect?connectionId=not%20valid!",
        Some(&alice),
    )
    .await;
    assert_refused(code, &body, 400, "invalid connection id");
    let (code, body) = get(
        a,
        "/api/v1/sessions/bob-s/connect?connectionId=c",
        Some(&alice),
    )
    .await;
    assert_refused(code, &body, 403, "another user's session");
    let (code, body) = get(a, "/api/v1/sessions/bob-s/connections", Some(&alice)).await;
    assert_refused(code, &body, 403, "another user's connections");
    let (code, body) = get(a, "/api/v1/sessions/missing/connections", Some(&operator)).await;
    assert_refused(code, &body, 404, "unknown session");
    let (code, body) = get(a, "/api/v1/sessions/Bad_Id/connections", Some(&alice)).await;
    assert_refused(code, &body, 400, "invalid id");
    let (code, body) = request(
        a,
        "POST",
        "/api/v1/sessions/alice-s/disconnect",
        Some(&alice),
        None,
    )
    .await;
    assert_refused(code, &body, 400, "disconnect without a connection id");
    assert_eq!(
        world.leases().await.len(),
        before,
        "a refused request made no connection"
    );

    // Deleting the session removes its connections (ownerReference).
    assert!(
        world
            .leases()
            .await
            .iter()
            .all(|l| l.owner_references().iter().any(|o| o.name == "alice-s"))
    );
    drop((one, two));
    world.cleanup().await;
}

#[tokio::test]
async fn the_last_disconnect_hibernates_only_when_configured() {
    let world = World::new("api-ui-autohib").await;
    world
        .session("alice-on", "alice", json!({"state": "running"}))
        .await;
    world
        .session("alice-off", "alice", json!({"state": "running"}))
        .await;
    let default = world.replica().await;
    let hibernating = world
        .replica_with(|config| config.hibernate_on_last_disconnect = true)
        .await;
    let alice = dev_token("alice");

    for (replica, session) in [(default.addr, "alice-off"), (hibernating.addr, "alice-on")] {
        connect(replica, session, &alice, Some("only")).await;
        let path = format!("/api/v1/sessions/{session}/disconnect?connectionId=only");
        let (code, body) = request(replica, "POST", &path, Some(&alice), None).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["activeConnections"], 0);
    }
    // The configured replica answers the disconnect after writing the state; the default one
    // never writes it (its disconnect has returned, so it has decided).
    assert_eq!(
        world.stored("alice-on").await.spec.desired_state().as_str(),
        "hibernated"
    );
    assert_eq!(
        world
            .stored("alice-off")
            .await
            .spec
            .desired_state()
            .as_str(),
        "running"
    );
    drop((default, hibernating));
    world.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Quota

#[tokio::test]
async fn quota_reports_what_the_webhook_computes() {
    let world = World::new("api-ui-quota").await;
    let policy = world
        .env
        .create::<QuotaPolicy>(json!({
            "apiVersion": "stream.space/v1alpha1", "kind": "QuotaPolicy",
            "metadata": {"name": "default"},
            "spec": {"subject": {"kind": "Default"},
                     "limits": {"maxSessions": 3, "maxCpu": "8", "maxMemory": "16Gi"}}
        }))
        .await;
    let resources = json!({"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "500m", "memory": "1Gi"}});
    let one = world
        .session(
            "alice-1",
            "alice",
            json!({"state": "running", "resources": resources}),
        )
        .await;
    let two = world
        .session("alice-2", "alice", json!({"state": "running"}))
        .await;
    let off = world
        .session("alice-3", "alice", json!({"state": "hibernated"}))
        .await;
    world
        .session("bob-1", "bob", json!({"state": "running"}))
        .await;
    let api = world.replica().await;
    let addr = api.addr;
    let (alice, operator) = (dev_token("alice"), dev_token("operator"));

    let (code, mine) = wait_for(
        "the quota of two running sessions",
        || async { get(addr, "/api/v1/quota", Some(&alice)).await },
        |(code, body)| *code == 200 && body["usage"]["sessions"] == 2,
    )
    .await;
    assert_eq!(code, 200);
    // The webhook's own functions on the same objects give the same figures.
    let limits = quota_rules::limits_for("alice", [&policy]);
    let sessions = [one, two, off];
    let usage = ledger::cached_usage(
        "alice",
        &SessionKey::new(&world.env.namespace, ""),
        &sessions,
        &[],
        k8s_openapi::jiff::Timestamp::now(),
    );
    assert_eq!(mine["user"], "alice");
    assert_eq!(mine["limits"]["maxSessions"], limits.max_sessions);
    assert_eq!(mine["limits"]["maxCpu"], quota_rules::cpu(limits.max_cpu));
    assert_eq!(
        mine["limits"]["maxMemory"],
        quota_rules::mib(limits.max_memory)
    );
    assert_eq!(mine["usage"]["cpu"], quota_rules::cpu(usage.cpu), "{mine}");
    assert_eq!(
        mine["usage"]["memory"],
        quota_rules::mib(usage.memory),
        "{mine}"
    );
    assert_eq!(
        mine["usage"]["cpu"], "1500m",
        "500m plus the 1000m system default"
    );
    assert_eq!(mine["remaining"]["sessions"], 1);

    let (code, bobs) = get(addr, "/api/v1/quota?user=bob", Some(&operator)).await;
    assert_eq!(code, 200, "{bobs}");
    assert_eq!(
        (bobs["user"].clone(), bobs["usage"]["sessions"].clone()),
        (json!("bob"), json!(1))
    );
    let (code, body) = get(addr, "/api/v1/quota?user=bob", Some(&alice)).await;
    assert_refused(code, &body, 403, "another user's quota");
    // A user nobody has heard of (no session, no User policy): the limits that user would get
    // (here the Default policy's) and nothing used. The API keeps no list of users.
    let (code, unknown) = get(addr, "/api/v1/quota?user=zed", Some(&operator)).await;
    assert_eq!(code, 200, "{unknown}");
    let limits = quota_rules::limits_for("zed", [&policy]);
    assert_eq!(unknown["user"], "zed");
    assert_eq!(
        unknown["limits"]["maxSessions"], limits.max_sessions,
        "{unknown}"
    );
    assert_eq!(
        unknown["limits"]["maxSessions"], 3,
        "the Default policy: {unknown}"
    );
    assert_eq!(
        (&unknown["usage"]["sessions"], &unknown["usage"]["cpu"]),
        (&json!(0), &json!("0m")),
        "{unknown}"
    );
    assert_eq!(unknown["remaining"]["sessions"], 3, "{unknown}");
    let (code, body) = get(addr, "/api/v1/quota?user=Not_A_User", Some(&operator)).await;
    assert_refused(code, &body, 400, "invalid user");
    let (code, body) = get(addr, "/api/v1/quota", None).await;
    assert_refused(code, &body, 401, "no token");
    drop(api);
    world.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Rollout console: its state and stream are for operators

#[tokio::test]
async fn console_state_and_stream_are_for_operators_only() {
    let world = World::new("api-ui-console").await;
    let api = world.replica().await;
    let addr = api.addr;
    let (alice, operator) = (dev_token("alice"), dev_token("operator"));

    // A user learns nothing of the flips and their reasons, nor of others' sessions.
    let (code, body) = get(addr, "/api/v1/console/state", Some(&alice)).await;
    assert_refused_saying(
        code,
        &body,
        403,
        "a user reading the console",
        "alice may not",
    );
    match open_ws(addr, "/api/v1/ws/flags", Some(&alice)).await {
        Err(code) => assert_eq!(code, 403, "a user opening the flags stream"),
        Ok(_) => panic!("a user opened the flags stream"),
    }
    let (code, body) = get(addr, "/api/v1/console/state", None).await;
    assert_refused(code, &body, 401, "no token");

    // An operator reads both: the state once, and the stream's first message.
    let (code, state) = get(addr, "/api/v1/console/state", Some(&operator)).await;
    assert_eq!(code, 200, "{state}");
    assert_eq!(state["flags"].as_array().map(Vec::len), Some(5), "{state}");
    let mut ws = open_ws(addr, "/api/v1/ws/flags", Some(&operator))
        .await
        .unwrap_or_else(|code| panic!("the operator's flags stream: {code}"));
    let first = next_json(&mut ws).await;
    assert_eq!(first["flags"], state["flags"], "{first}");
    drop(ws);
    drop(api);
    world.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Cluster WebSocket

async fn open_ws(addr: SocketAddr, path: &str, token: Option<&str>) -> Result<Ws, u16> {
    let mut request = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("request");
    if let Some(token) = token {
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("websocket connect: {e}"),
    }
}

/// The next text message of `ws`, as JSON.
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("stream open")
            .expect("message");
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).expect("JSON message");
        }
    }
}

async fn next_message(ws: &mut Ws, kind: &str) -> Value {
    let update = next_json(ws).await;
    assert_eq!(update["type"], kind, "{update}");
    update
}

#[tokio::test]
async fn cluster_stream_pushes_node_and_session_counts_on_change() {
    let world = World::new("api-ui-ws-cluster").await;
    let api = world.replica().await;
    let addr = api.addr;
    let admin = dev_token("streamspace-admin");

    assert_eq!(
        open_ws(addr, "/api/v1/ws/cluster", None).await.err(),
        Some(401)
    );
    assert_eq!(
        open_ws(addr, "/api/v1/ws/cluster", Some(&dev_token("alice")))
            .await
            .err(),
        Some(403)
    );
    let mut ws = open_ws(addr, "/api/v1/ws/cluster", Some(&admin))
        .await
        .expect("admin connects");
    let first = next_message(&mut ws, "cluster_update").await;
    let (_, stats) = get(addr, "/api/v1/cluster/stats", Some(&admin)).await;
    assert_eq!(
        first["nodes"], stats["nodes"],
        "the same counts as /cluster/stats"
    );
    assert_eq!(first["sessions"]["total"], 0, "{first}");

    let created = Instant::now();
    world
        .session("alice-1", "alice", json!({"state": "hibernated"}))
        .await;
    let mut update = next_message(&mut ws, "cluster_update").await;
    while update["sessions"]["total"] != 1 {
        assert!(
            created.elapsed() < WAIT,
            "no update with the new session: {update}"
        );
        update = next_message(&mut ws, "cluster_update").await;
    }
    assert_eq!(update["sessions"]["byState"]["hibernated"], 1, "{update}");
    println!(
        "cluster stream push after a create: {:?}",
        created.elapsed()
    );
    let _ = ws.close(None).await;
    drop(api);
    world.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// OpenAPI

/// A concrete request path for a documented one (`{param}` filled in).
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                "x1"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn the_openapi_document_lists_every_route_the_router_serves() {
    let world = World::new("api-ui-openapi").await;
    let api = world.replica().await;
    let addr = api.addr;

    let (code, document) = get(addr, "/api/v1/openapi.json", None).await;
    assert_eq!(code, 200, "{document}");
    assert_eq!(document["openapi"], "3.0.3");
    let paths = document["paths"].as_object().expect("paths");
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, methods)| {
            methods
                .as_object()
                .into_iter()
                .flatten()
                .map(move |(method, _)| (method.to_uppercase(), path.clone()))
        })
        .collect();
    // The endpoints of the UI are all there.
    for (method, path) in [
        ("GET", "/api/v1/templates"),
        ("GET", "/api/v1/templates/{name}"),
        ("GET", "/api/v1/sessions/by-tags"),
        ("PATCH", "/api/v1/sessions/{id}/tags"),
        ("GET", "/api/v1/sessions/{id}/activity"),
        ("GET", "/api/v1/sessions/{id}/connections"),
        ("GET", "/api/v1/quota"),
        ("GET", "/api/v1/ws/cluster"),
        ("GET", "/api/v1/openapi.json"),
    ] {
        assert!(
            documented.contains(&(method.into(), path.into())),
            "{method} {path} undocumented"
        );
    }

    // Every documented operation is served: a request without a token reaches its handler
    // (401 for authenticated routes, an answer of the handler for public ones), never the
    // router's 404 or 405.
    let all_methods = ["GET", "POST", "PUT", "PATCH", "DELETE"];
    let mut served_paths = BTreeSet::new();
    for (method, path) in &documented {
        let operation = &paths[path][method.to_lowercase()];
        let public = operation.get("security").is_none();
        let (code, body) = request(addr, method, &concrete(path), None, None).await;
        if public {
            assert!([200, 503].contains(&code), "{method} {path}: {code} {body}");
        } else {
            assert_refused(code, &body, 401, &format!("{method} {path}"));
        }
        served_paths.insert(path.clone());
    }
    // And the router serves nothing more on those paths: other methods are 405.
    for path in &served_paths {
        for method in all_methods {
            if documented.contains(&(method.to_string(), path.clone())) {
                continue;
            }
            let (code, body) = request(addr, method, &concrete(path), None, None).await;
            assert_eq!(
                code, 405,
                "{method} {path} is served but undocumented: {body}"
            );
        }
    }
    // A path the document does not list is not served.
    let (code, _) = get(addr, "/api/v1/not-a-route", None).await;
    assert_eq!(code, 404);
    println!(
        "{} documented operations checked against the router",
        documented.len()
    );
    drop(api);
    world.cleanup().await;
}
