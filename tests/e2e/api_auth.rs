//! API authentication and authorisation against the real API server (TokenReview,
//! SubjectAccessReview and the chart's RBAC, with the API itself running as a ServiceAccount
//! bound to the chart's `streamspace-api` ClusterRole), cluster statistics and the sessions
//! WebSocket, all over real sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use streamspace_controller::api::auth::{
    AuthError, Authenticator, KubernetesAuth, Permission, Principal,
};
use streamspace_controller::crd::{FeatureFlag, Session};
use streamspace_controller::metrics::Metrics;
use streamspace_controller::rbac;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::http_client::{RunningApi, call, call_json};
use crate::support::{TestEnv, WAIT, dev_token, kube_config, wait_for, wait_object};

const FIELD_MANAGER: &str = "streamspace-tests";
const FLUSH: Duration = Duration::from_millis(200);
const API_ACCOUNT: &str = "streamspace-api";

/// A test namespace with the RBAC applied and the API running as its own ServiceAccount with
/// [`KubernetesAuth`].
struct AuthWorld {
    env: TestEnv,
    api: RunningApi,
    auth: Arc<KubernetesAuth>,
    binding: String,
}

impl AuthWorld {
    async fn new(test: &str) -> AuthWorld {
        let env = TestEnv::without_controller(test).await;
        rbac::apply_dev(&env.client, FIELD_MANAGER)
            .await
            .expect("apply the RBAC");
        let binding = format!("{API_ACCOUNT}-{}", env.namespace);
        let api_client = service_account_client(&env, &binding).await;
        let metrics = Arc::new(Metrics::default());
        let auth = Arc::new(
            KubernetesAuth::new(api_client.clone(), env.namespace.clone())
                .with_metrics(metrics.clone()),
        );
        let api = RunningApi::start_as(&env, api_client, auth.clone(), metrics, |config| {
            config.flush_interval = FLUSH;
        })
        .await;
        AuthWorld {
            env,
            api,
            auth,
            binding,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.api.addr
    }

    async fn session(&self, name: &str, user: &str, state: Option<&str>) -> Session {
        let mut spec = json!({"user": user, "template": "firefox"});
        if let Some(state) = state {
            spec["state"] = json!(state);
        }
        self.env
            .create::<Session>(json!({
                "apiVersion": "stream.space/v1alpha1", "kind": "Session",
                "metadata": {"name": name},
                "spec": spec,
            }))
            .await
    }

    async fn get(&self, name: &str) -> Session {
        self.env
            .api::<Session>()
            .get(name)
            .await
            .expect("get session")
    }

    async fn principal(&self, token: &str) -> Principal {
        self.auth
            .authenticate(&bearer(token))
            .await
            .expect("authenticated")
    }

    async fn cleanup(self) {
        drop(self.api);
        let bindings: Api<ClusterRoleBinding> = Api::all(self.env.client.clone());
        let _ = bindings
            .delete(&self.binding, &DeleteParams::default())
            .await;
        self.env.cleanup().await;
    }
}

/// A client authenticated as a new ServiceAccount of the test namespace that is bound to the
/// chart's API ClusterRole (token from the TokenRequest API), so the test proves the role
/// is enough.
async fn service_account_client(env: &TestEnv, binding: &str) -> Client {
    let token = crate::api_exposure::account_token(env, API_ACCOUNT, None).await;
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
            binding,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&role_binding),
        )
        .await
        .expect("bind the API role");
    crate::api_exposure::token_client(token).await
}

fn bearer(token: &str) -> axum::http::HeaderMap {
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        axum::http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    headers
}

fn resource_version(session: &Session) -> String {
    session.resource_version().unwrap_or_default()
}

async fn session_call(addr: SocketAddr, action: &str, id: &str, token: Option<&str>) -> u16 {
    let (method, path) = match action {
        "heartbeat" => ("POST", format!("/api/v1/sessions/{id}/heartbeat")),
        "connect" => ("GET", format!("/api/v1/sessions/{id}/connect")),
        _ => (
            "POST",
            format!("/api/v1/sessions/{id}/disconnect?connectionId=c1"),
        ),
    };
    let (code, body) = call(addr, method, &path, token).await;
    if code >= 400 {
        assert_eq!(body["success"], false, "{action} {id}: {body}");
        assert!(body["error"].is_string(), "{action} {id}: {body}");
    }
    code
}

// ---------------------------------------------------------------------------------------------
// 401 / 403 / 200

#[tokio::test]
async fn tokens_and_rights_decide_access_without_side_effects() {
    let world = AuthWorld::new("api-auth").await;
    let addr = world.addr();
    world.session("alice-s", "alice", None).await;
    world.session("bob-s", "bob", None).await;
    let alice = dev_token("alice");
    let operator = dev_token("operator");
    let admin = dev_token("streamspace-admin");
    let bob_before = resource_version(&world.get("bob-s").await);

    // No token, or one the API server does not know: 401.
    for action in ["heartbeat", "connect", "disconnect"] {
        assert_eq!(session_call(addr, action, "alice-s", None).await, 401);
        assert_eq!(
            session_call(addr, action, "alice-s", Some("not-a-token")).await,
            401
        );
    }
    // Another user's session: 403.
    for action in ["heartbeat", "connect", "disconnect"] {
        assert_eq!(
            session_call(addr, action, "bob-s", Some(&alice)).await,
            403,
            "{action}"
        );
    }
    // Only administrators read cluster statistics.
    let stats = "/api/v1/cluster/stats";
    assert_eq!(call(addr, "GET", stats, Some(&alice)).await.0, 403);
    assert_eq!(call(addr, "GET", stats, Some(&operator)).await.0, 403);
    assert_eq!(call(addr, "GET", stats, None).await.0, 401);

    // Own session: allowed, and the activity is written.
    assert_eq!(
        session_call(addr, "heartbeat", "alice-s", Some(&alice)).await,
        200
    );
    wait_object(
        &world.env.api::<Session>(),
        "alice-s",
        "alice's heartbeat written",
        |s| s.status.as_ref().is_some_and(|s| s.last_activity.is_some()),
    )
    .await;
    // The flusher has run since the refused heartbeats on bob's session: had one been
    // recorded, it would have been written by now.
    assert_eq!(resource_version(&world.get("bob-s").await), bob_before);
    // An operator may act on anyone's session; an administrator reads the statistics.
    assert_eq!(
        session_call(addr, "heartbeat", "bob-s", Some(&operator)).await,
        200
    );
    assert_eq!(
        session_call(addr, "connect", "bob-s", Some(&operator)).await,
        200
    );
    wait_for(
        "the administrator to read statistics",
        || call(addr, "GET", stats, Some(&admin)),
        |(code, _)| *code == 200,
    )
    .await;

    // Flag overrides: only the admin role, and a refused request writes nothing.
    let flag_name = format!("{}sessions", world.env.flag_settings().name_prefix);
    let flags: Api<FeatureFlag> = Api::all(world.env.client.clone());
    let override_path = "/api/v1/flags/sessions/override";
    let rollback = json!({"mode": "legacy", "ttl": "1h", "reason": "auth test"});
    for (token, code) in [(None, 401), (Some(&alice), 403), (Some(&operator), 403)] {
        let (got, body) = call_json(
            addr,
            "PUT",
            override_path,
            token.map(|t| t.as_str()),
            &rollback,
        )
        .await;
        assert_eq!(got, code, "{body}");
        assert_eq!(body["success"], false, "{body}");
    }
    assert!(
        flags.get_opt(&flag_name).await.expect("get flag").is_none(),
        "a refused override wrote the flag"
    );
    let (code, body) = call_json(addr, "PUT", override_path, Some(&admin), &rollback).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["override"]["setBy"], "streamspace-admin", "{body}");
    let written = flags.get(&flag_name).await.expect("flag written");
    let (code, body) = call(addr, "DELETE", override_path, Some(&alice)).await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        flags
            .get(&flag_name)
            .await
            .expect("flag")
            .resource_version(),
        written.resource_version(),
        "a refused clear changed the flag"
    );
    let (code, body) = call(addr, "DELETE", override_path, Some(&admin)).await;
    assert_eq!(code, 200, "{body}");
    let events: Api<Event> = Api::namespaced(world.env.client.clone(), "default");
    wait_for(
        "the override recorded as an Event by the API's account",
        || async {
            events
                .list(&Default::default())
                .await
                .expect("events")
                .items
        },
        |items| {
            items.iter().any(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(flag_name.as_str())
                    && e.note
                        .as_deref()
                        .is_some_and(|n| n.starts_with("streamspace-admin set override"))
            })
        },
    )
    .await;
    let _ = flags.delete(&flag_name, &DeleteParams::default()).await;

    // The node endpoints require ManageNodes: only the admin role has it.
    let alice_principal = world.principal(&alice).await;
    assert_eq!(alice_principal.name, "alice");
    assert!(
        alice_principal
            .groups
            .contains(&"streamspace:users".to_string())
    );
    let operator_principal = world.principal(&operator).await;
    let admin_principal = world.principal(&admin).await;
    for permission in [Permission::ManageFlags, Permission::ManageNodes] {
        for (principal, allowed) in [
            (&alice_principal, false),
            (&operator_principal, false),
            (&admin_principal, true),
        ] {
            assert_eq!(
                world.auth.authorize(principal, permission).await,
                Ok(allowed),
                "{} {permission:?}",
                principal.name
            );
        }
    }
    assert_eq!(
        world
            .auth
            .authorize(&operator_principal, Permission::OperateSessions("delete"))
            .await,
        Ok(true)
    );
    assert_eq!(
        world
            .auth
            .authorize(&alice_principal, Permission::OperateSessions("get"))
            .await,
        Ok(false)
    );

    // Heartbeats hit the cache: no TokenReview or SubjectAccessReview per request.
    let (tokens, accesses) = (world.auth.token_reviews(), world.auth.access_reviews());
    for _ in 0..5 {
        assert_eq!(
            session_call(addr, "heartbeat", "bob-s", Some(&operator)).await,
            200
        );
    }
    assert!(world.auth.token_reviews() <= tokens + 1);
    assert!(world.auth.access_reviews() <= accesses + 1);
    assert!(
        world
            .api
            .counter("streamspace_api_auth_reviews", "outcome=\"cached\"")
            >= 8
    );
    println!(
        "auth reviews for {} requests so far: {} TokenReviews, {} SubjectAccessReviews",
        world.api.counter("streamspace_api_requests", "code"),
        world.auth.token_reviews(),
        world.auth.access_reviews()
    );

    // An API server that cannot answer: 503, not 401.
    let mut config = kube_config().await;
    config.cluster_url = "https://127.0.0.1:1".parse().expect("url");
    let unreachable = Client::try_from(config).expect("client");
    let broken = KubernetesAuth::new(unreachable, world.env.namespace.clone());
    assert!(matches!(
        broken.authenticate(&bearer(&alice)).await,
        Err(AuthError::Unavailable(_))
    ));
    let broken_api = RunningApi::start_with(&world.env, Arc::new(broken), |_| {}).await;
    assert_eq!(
        session_call(broken_api.addr, "heartbeat", "alice-s", Some(&alice)).await,
        503
    );
    drop(broken_api);
    world.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// WebSocket

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn open_ws(addr: SocketAddr, token: Option<&str>, in_query: bool) -> Result<Ws, u16> {
    let url = match (token, in_query) {
        (Some(token), true) => format!("ws://{addr}/api/v1/ws/sessions?token={token}"),
        _ => format!("ws://{addr}/api/v1/ws/sessions"),
    };
    let mut request = url.into_client_request().expect("request");
    if let (Some(token), false) = (token, in_query) {
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

pub(crate) async fn next_update(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("an update in time")
            .expect("stream open")
            .expect("message");
        if let Message::Text(text) = message {
            let update: Value = serde_json::from_str(text.as_str()).expect("JSON update");
            assert_eq!(update["type"], "sessions_update", "{update}");
            assert_eq!(
                update["count"].as_u64(),
                update["sessions"].as_array().map(|s| s.len() as u64),
                "{update}"
            );
            return update;
        }
    }
}

async fn wait_update(ws: &mut Ws, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let update = next_update(ws).await;
        if check(&update) {
            return update;
        }
        assert!(
            Instant::now() < deadline,
            "no update with {what}; last {update}"
        );
    }
}

fn names(update: &Value) -> Vec<String> {
    update["sessions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect()
}

fn item<'a>(update: &'a Value, name: &str) -> Option<&'a Value> {
    update["sessions"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
}

#[tokio::test]
async fn sessions_websocket_pushes_changes_each_user_sees_their_own() {
    let world = AuthWorld::new("api-ws").await;
    let addr = world.addr();
    world.session("alice-1", "alice", None).await;
    let alice_token = dev_token("alice");
    let bob_token = dev_token("bob");
    let operator_token = dev_token("operator");

    assert_eq!(open_ws(addr, None, false).await.err(), Some(401));
    assert_eq!(
        open_ws(addr, Some("not-a-token"), true).await.err(),
        Some(401)
    );

    // Browsers pass the token as a query parameter; other clients as a header.
    let mut alice = open_ws(addr, Some(&alice_token), true)
        .await
        .expect("alice connects");
    let mut bob = open_ws(addr, Some(&bob_token), false)
        .await
        .expect("bob connects");
    let mut operator = open_ws(addr, Some(&operator_token), false)
        .await
        .expect("operator connects");
    let first = wait_update(&mut alice, "alice-1", |u| names(u) == ["alice-1"]).await;
    let alice_1 = item(&first, "alice-1").expect("alice-1");
    assert_eq!(alice_1["user"], "alice");
    assert_eq!(alice_1["template"], "firefox");
    assert_eq!(alice_1["state"], "running");
    assert_eq!(alice_1["status"]["phase"], "Pending");
    assert_eq!(alice_1["activeConnections"], 0);
    assert!(first["timestamp"].is_string());
    assert_eq!(names(&next_update(&mut bob).await), Vec::<String>::new());
    wait_update(&mut operator, "alice-1", |u| names(u) == ["alice-1"]).await;

    // A new session reaches its owner and operators, pushed by the watch.
    let created = Instant::now();
    world.session("alice-2", "alice", None).await;
    wait_update(&mut alice, "alice-2", |u| {
        names(u) == ["alice-1", "alice-2"]
    })
    .await;
    let pushed = created.elapsed();
    wait_update(&mut operator, "alice-2", |u| {
        names(u) == ["alice-1", "alice-2"]
    })
    .await;
    // Bob's view did not change, so he is sent nothing.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), bob.next())
            .await
            .is_err(),
        "bob was sent an update about alice's sessions"
    );

    // A state change is pushed too.
    let patched = Instant::now();
    world
        .env
        .api::<Session>()
        .patch(
            "alice-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"state": "hibernated"}})),
        )
        .await
        .expect("hibernate alice-1");
    wait_update(&mut alice, "alice-1 hibernated", |u| {
        item(u, "alice-1").is_some_and(|s| s["state"] == "hibernated")
    })
    .await;
    let state_pushed = patched.elapsed();

    world.session("bob-1", "bob", Some("running")).await;
    wait_update(&mut bob, "bob-1", |u| names(u) == ["bob-1"]).await;
    wait_update(&mut operator, "all three", |u| {
        names(u) == ["alice-1", "alice-2", "bob-1"]
    })
    .await;
    println!("websocket push after a create: {pushed:?}; after a state change: {state_pushed:?}");

    let _ = alice.close(None).await;
    let _ = bob.close(None).await;
    let _ = operator.close(None).await;
    world.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Cluster statistics

fn node_counts(nodes: &[Node]) -> Value {
    let ready = |n: &Node| {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    let cordoned = |n: &Node| n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
    let total = nodes.len();
    let ready = nodes.iter().filter(|n| ready(n)).count();
    json!({
        "total": total,
        "ready": ready,
        "notReady": total - ready,
        "cordoned": nodes.iter().filter(|n| cordoned(n)).count(),
    })
}

#[tokio::test]
async fn cluster_stats_come_from_watch_caches() {
    let world = AuthWorld::new("api-stats").await;
    let admin = dev_token("streamspace-admin");
    // A node nobody simulates: not ready, and cordoned.
    let node_name = format!("{}-cordoned", world.env.namespace);
    let nodes: Api<Node> = Api::all(world.env.client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": node_name},
        "spec": {"unschedulable": true},
    }))
    .expect("node");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
    world.session("s1", "alice", None).await;
    world.session("s2", "alice", Some("hibernated")).await;
    world.session("s3", "bob", Some("running")).await;

    let (_, stats, expected) = wait_for(
        "statistics to match the cluster",
        || async {
            let (code, stats) =
                call(world.addr(), "GET", "/api/v1/cluster/stats", Some(&admin)).await;
            let listed = nodes.list(&Default::default()).await.expect("list nodes");
            let expected = node_counts(&listed.items);
            (code, stats, expected)
        },
        |(code, stats, expected)| {
            *code == 200
                && stats["nodes"] == *expected
                && stats["sessions"]["total"] == 3
                && stats["sessions"]["byState"] == json!({"running": 2, "hibernated": 1})
        },
    )
    .await;
    assert!(expected["cordoned"].as_u64() >= Some(1));
    assert_eq!(stats["sessions"]["byPhase"], json!({"Pending": 3}));
    assert!(stats["capacity"]["cpu"].is_string(), "{stats}");
    assert!(stats["allocatable"]["pods"].is_string(), "{stats}");
    println!("cluster stats: {stats}");

    let _ = nodes.delete(&node_name, &DeleteParams::default()).await;
    world.cleanup().await;
}
