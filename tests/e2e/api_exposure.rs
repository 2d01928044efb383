//! The API's exposure, attacked over real sockets against the real API server: probing
//! session ids, Kubernetes error text, tokens not issued for the API, floods of random tokens,
//! connect loops, WebSocket floods, oversized messages, revoked tokens and rights on open
//! streams (plaintext against the TLS listener is in `api_tls`). Each attack is refused with a
//! clear message and changes nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use streamspace_controller::api::auth::KubernetesAuth;
use streamspace_controller::api::live::StreamSettings;
use streamspace_controller::crd::Session;
use streamspace_controller::metrics::Metrics;
use streamspace_controller::rbac;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::http_client::{API_TOKEN, RunningApi, call, call_json};
use crate::support::{TestEnv, WAIT, dev_token, kube_config, wait_for, wait_object};

const FIELD_MANAGER: &str = "streamspace-tests";

/// The API of `env` checking tokens with `auth` (the API itself talks to Kubernetes as admin).
async fn api_with(
    env: &TestEnv,
    auth: KubernetesAuth,
    customise: impl FnOnce(&mut streamspace_controller::api::ApiConfig),
) -> (RunningApi, Arc<KubernetesAuth>) {
    let auth = Arc::new(auth);
    let api = RunningApi::start_with(env, auth.clone(), |config| {
        config.flush_interval = Duration::from_millis(200);
        customise(config);
    })
    .await;
    (api, auth)
}

async fn session(env: &TestEnv, name: &str, user: &str) -> Session {
    env.create::<Session>(json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "Session",
        "metadata": {"name": name},
        "spec": {"user": user, "template": "firefox"},
    }))
    .await
}

/// A token of ServiceAccount `name` of the test namespace (created if missing), issued by the
/// TokenRequest API for `audience` (`None`: the API server's own audience).
pub async fn account_token(env: &TestEnv, name: &str, audience: Option<&str>) -> String {
    let accounts: Api<ServiceAccount> = env.api();
    if accounts.get_opt(name).await.expect("get account").is_none() {
        let account: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": name}})).expect("account");
        accounts
            .create(&PostParams::default(), &account)
            .await
            .expect("create the service account");
    }
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.map(|a| vec![a.to_string()]).unwrap_or_default(),
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let issued: TokenRequest = accounts
        .create_subresource("token", name, &PostParams::default(), &request)
        .await
        .expect("token request");
    issued.status.expect("token status").token
}

/// A client of the test cluster authenticated with `token`.
pub async fn token_client(token: String) -> Client {
    let mut config = kube_config().await;
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..kube::config::AuthInfo::default()
    };
    Client::try_from(config).expect("token client")
}

fn error_text(body: &Value) -> String {
    body["error"].as_str().unwrap_or_default().to_string()
}

// ---------------------------------------------------------------------------------------------
// 403 before 404; no Kubernetes error text

#[tokio::test]
async fn probing_session_ids_cannot_tell_missing_from_foreign() {
    let env = TestEnv::without_controller("api-probe").await;
    rbac::apply_dev(&env.client, FIELD_MANAGER)
        .await
        .expect("apply the RBAC");
    let auth = KubernetesAuth::new(env.client.clone(), env.namespace.clone());
    let (api, _) = api_with(&env, auth, |_| {}).await;
    let addr = api.addr;
    session(&env, "bob-s", "bob").await;
    session(&env, "alice-s", "alice").await;
    let bob_before = env.api::<Session>().get("bob-s").await.expect("bob-s");
    let alice = dev_token("alice");
    let operator = dev_token("operator");

    let probes = [
        ("GET", "/api/v1/sessions/{}", None),
        (
            "PATCH",
            "/api/v1/sessions/{}",
            Some(json!({"state": "hibernated"})),
        ),
        ("DELETE", "/api/v1/sessions/{}", None),
        ("POST", "/api/v1/sessions/{}/heartbeat", None),
        ("GET", "/api/v1/sessions/{}/connect", None),
        (
            "POST",
            "/api/v1/sessions/{}/disconnect?connectionId=c1",
            None,
        ),
    ];
    for (method, path, body) in &probes {
        let mut answers = Vec::new();
        for id in ["bob-s", "no-such-session"] {
            let path = path.replace("{}", id);
            let (code, reply) = match body {
                Some(body) => call_json(addr, method, &path, Some(&alice), body).await,
                None => call(addr, method, &path, Some(&alice)).await,
            };
            assert_eq!(code, 403, "{method} {path}: {reply}");
            assert_eq!(reply["success"], false, "{reply}");
            // The same words for both, apart from the id the caller sent.
            answers.push(error_text(&reply).replace(id, "<id>"));
        }
        assert_eq!(answers[0], answers[1], "{method} {path}");
        assert!(
            answers[0].contains("only its owner or an operator may"),
            "{}",
            answers[0]
        );
    }
    // An operator may see all sessions: a missing one is a 404 for them.
    let (code, reply) = call(
        addr,
        "GET",
        "/api/v1/sessions/no-such-session",
        Some(&operator),
    )
    .await;
    assert_eq!(code, 404, "{reply}");
    let (code, reply) = call(addr, "GET", "/api/v1/sessions/bob-s", Some(&operator)).await;
    assert_eq!(code, 200, "{reply}");

    // Nothing changed: alice's own heartbeat is written (so the flusher ran after the refused
    // ones), bob's session is untouched and still there.
    let (code, reply) = call(
        addr,
        "POST",
        "/api/v1/sessions/alice-s/heartbeat",
        Some(&alice),
    )
    .await;
    assert_eq!(code, 200, "{reply}");
    wait_object(
        &env.api::<Session>(),
        "alice-s",
        "alice's heartbeat written",
        |s| s.status.as_ref().is_some_and(|s| s.last_activity.is_some()),
    )
    .await;
    let bob_after = env.api::<Session>().get("bob-s").await.expect("bob-s");
    assert_eq!(bob_after.resource_version(), bob_before.resource_version());
    drop(api);
    env.cleanup().await;
}

#[tokio::test]
async fn kubernetes_error_text_is_not_passed_to_callers() {
    let env = TestEnv::without_controller("api-kube-errors").await;
    // The API runs as a ServiceAccount without any right: every Kubernetes call is refused by
    // the API server with text that names the account and the rule.
    let powerless = token_client(account_token(&env, "no-rights", None).await).await;
    let api = RunningApi::start_as(
        &env,
        powerless,
        Arc::new(streamspace_controller::api::auth::StaticToken::new(
            API_TOKEN,
        )),
        Arc::new(Metrics::default()),
        |_| {},
    )
    .await;
    for (method, path) in [
        ("GET", "/api/v1/sessions/some-session"),
        ("DELETE", "/api/v1/sessions/some-session"),
        ("POST", "/api/v1/sessions/some-session/heartbeat"),
    ] {
        let (code, reply) = call(api.addr, method, path, Some(API_TOKEN)).await;
        let text = error_text(&reply);
        assert_eq!(code, 502, "{method} {path}: {reply}");
        assert!(
            text.contains("the API is not allowed to do this in Kubernetes"),
            "{method} {path}: {text}"
        );
        for leaked in ["forbidden", "serviceaccount", "cannot", "stream.space"] {
            assert!(
                !text.contains(leaked),
                "{method} {path} leaks {leaked:?}: {text}"
            );
        }
    }
    drop(api);
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Token audience

#[tokio::test]
async fn only_tokens_issued_for_the_api_audience_are_accepted() {
    let env = TestEnv::without_controller("api-audience").await;
    rbac::apply_dev(&env.client, FIELD_MANAGER)
        .await
        .expect("apply the RBAC");
    let audience = format!("streamspace-api-{}", env.namespace);
    let auth = KubernetesAuth::new(env.client.clone(), env.namespace.clone())
        .with_audience(Some(audience.clone()));
    let (api, _) = api_with(&env, auth, |_| {}).await;
    let addr = api.addr;
    // Carol operates sessions (the operator role, bound in the namespace).
    let scoped = account_token(&env, "carol", Some(&audience)).await;
    let general = account_token(&env, "carol", None).await;
    let other_api = account_token(&env, "carol", Some("some-other-api")).await;
    bind_operator(&env, "carol").await;
    session(&env, "bob-s", "bob").await;
    let before = env.api::<Session>().get("bob-s").await.expect("bob-s");

    // Her general Kubernetes credential (a token for the API server), a token for another
    // service and a static token of the API server are all refused.
    for (what, token) in [
        ("service account token", general.as_str()),
        ("token for another audience", other_api.as_str()),
        ("static token", dev_token("operator").as_str()),
    ] {
        for (method, path) in [
            ("POST", "/api/v1/sessions/bob-s/heartbeat"),
            ("DELETE", "/api/v1/sessions/bob-s"),
            ("GET", "/api/v1/sessions"),
        ] {
            let (code, reply) = call(addr, method, path, Some(token)).await;
            assert_eq!(code, 401, "{what} {method} {path}: {reply}");
            let text = error_text(&reply);
            assert!(text.contains(&audience), "{what}: {text}");
            assert!(text.contains("kubectl create token"), "{what}: {text}");
        }
    }
    // The token issued for the API works, and its heartbeat is the first write to the session.
    // (The new binding reaches the API server's authorizer after a moment.)
    wait_for(
        "carol to see every session",
        || call(addr, "GET", "/api/v1/sessions", Some(&scoped)),
        |(code, reply)| *code == 200 && reply["total"] == 1,
    )
    .await;
    let (code, reply) = call(
        addr,
        "POST",
        "/api/v1/sessions/bob-s/heartbeat",
        Some(&scoped),
    )
    .await;
    assert_eq!(code, 200, "{reply}");
    let after = wait_object(
        &env.api::<Session>(),
        "bob-s",
        "the heartbeat written",
        |s| s.status.as_ref().is_some_and(|s| s.last_activity.is_some()),
    )
    .await;
    assert!(before.status.is_none(), "nothing was written before");
    assert!(
        after.metadata.deletion_timestamp.is_none(),
        "the refused DELETE deleted nothing"
    );
    drop(api);
    env.cleanup().await;
}

/// Binds the chart's `streamspace-operator` role to ServiceAccount `account` in the namespace.
async fn bind_operator(env: &TestEnv, account: &str) -> String {
    let name = format!("{account}-operator");
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "streamspace-operator"},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": env.namespace}],
    }))
    .expect("binding");
    env.api::<RoleBinding>()
        .create(&PostParams::default(), &binding)
        .await
        .expect("bind the operator role");
    name
}

// ---------------------------------------------------------------------------------------------
// Bounded maps

#[tokio::test]
async fn random_token_floods_and_connect_loops_stay_bounded() {
    let env = TestEnv::without_controller("api-bounded").await;
    const CAPACITY: usize = 8;
    let auth = KubernetesAuth::with_limits(
        env.client.clone(),
        env.namespace.clone(),
        Duration::from_secs(300),
        CAPACITY,
    );
    let (api, auth) = api_with(&env, auth, |_| {}).await;
    let addr = api.addr;
    session(&env, "alice-s", "alice").await;
    let alice = dev_token("alice");
    let path = "/api/v1/sessions/alice-s/heartbeat";
    assert_eq!(call(addr, "POST", path, Some(&alice)).await.0, 200);
    let reviews = auth.token_reviews();

    // A flood of distinct made-up tokens: each is refused, and each is reviewed once.
    const FLOOD: u64 = 200;
    for n in 0..FLOOD {
        let (code, reply) = call(addr, "POST", path, Some(&format!("made-up-{n}"))).await;
        assert_eq!(code, 401, "{reply}");
        assert_eq!(error_text(&reply), "invalid bearer token");
    }
    assert_eq!(auth.token_reviews(), reviews + FLOOD);
    assert_eq!(
        auth.cached_tokens(),
        (1, CAPACITY),
        "refusals are bounded apart"
    );
    // Alice's accepted token survived the flood: no new review.
    assert_eq!(call(addr, "POST", path, Some(&alice)).await.0, 200);
    assert_eq!(auth.token_reviews(), reviews + FLOOD);

    // A client that connects in a loop and never disconnects: the count is capped, further
    // connections are refused until one closes or expires.
    let cap = streamspace_controller::api::connections::MAX_PER_SESSION;
    for n in 0..100 {
        let (code, reply) = call(
            addr,
            "GET",
            "/api/v1/sessions/alice-s/connect",
            Some(&alice),
        )
        .await;
        let wanted = if n < cap { 200 } else { 429 };
        assert_eq!(code, wanted, "connect {n}: {reply}");
    }
    crate::support::wait_for(
        "the capped connection count",
        || async { call(addr, "GET", "/api/v1/sessions/alice-s", Some(&alice)).await },
        |(code, reply)| *code == 200 && reply["activeConnections"] == cap,
    )
    .await;
    drop(api);
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// WebSocket limits and re-authorisation

use crate::api_auth::{Ws, next_update};

async fn open_ws(addr: SocketAddr, token: &str) -> Result<Ws, (u16, String)> {
    let mut request = format!("ws://{addr}/api/v1/ws/sessions")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((response.status().as_u16(), body))
        }
        Err(e) => panic!("websocket connect: {e}"),
    }
}

/// Opens a stream once `check` accepts its first update, retrying until [`WAIT`].
async fn open_when(
    addr: SocketAddr,
    token: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Ws {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let last = match open_ws(addr, token).await {
            Ok(mut ws) => {
                let update = next_update(&mut ws).await;
                if check(&update) {
                    return ws;
                }
                update.to_string()
            }
            Err((code, body)) => format!("{code} {body}"),
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads until the server closes the stream; returns its close code and reason.
async fn closed(ws: &mut Ws) -> (CloseCode, String) {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("the stream closed in time");
        match message {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (frame.code, frame.reason.to_string());
            }
            Some(Ok(Message::Close(None))) | None => panic!("closed without a reason"),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("stream failed instead of closing: {e}"),
        }
    }
}

#[tokio::test]
async fn websocket_streams_are_capped_and_small() {
    let env = TestEnv::without_controller("api-ws-caps").await;
    let auth = KubernetesAuth::new(env.client.clone(), env.namespace.clone());
    let (api, _) = api_with(&env, auth, |config| {
        config.streams = StreamSettings {
            max_per_user: 2,
            ..StreamSettings::default()
        };
    })
    .await;
    let addr = api.addr;
    let alice = dev_token("alice");
    let mut first = open_ws(addr, &alice).await.expect("first stream");
    let mut second = open_ws(addr, &alice).await.expect("second stream");
    next_update(&mut first).await;
    next_update(&mut second).await;
    let Err((code, body)) = open_ws(addr, &alice).await else {
        panic!("a third stream was accepted");
    };
    assert_eq!(code, 429, "{body}");
    assert!(
        body.contains("alice already has 2 session streams open"),
        "{body}"
    );
    // Bob is not affected by alice's streams.
    let mut bob = open_ws(addr, &dev_token("bob"))
        .await
        .expect("bob's stream");
    next_update(&mut bob).await;

    // A message over the cap ends that stream with 1009 and says why.
    let big = "x".repeat(StreamSettings::default().max_message_bytes * 16);
    second.send(Message::Text(big.into())).await.expect("send");
    let (code, reason) = closed(&mut second).await;
    assert_eq!(code, CloseCode::Size);
    assert!(reason.contains("limited to 4096 bytes"), "{reason}");
    // Its slot is given back: alice may open another one.
    let _again = open_when(
        addr,
        &alice,
        "alice's closed stream to free its slot",
        |_| true,
    )
    .await;
    // The other streams are still served: a ping is answered.
    first
        .send(Message::Ping(b"ping".to_vec().into()))
        .await
        .expect("ping");
    loop {
        let message = tokio::time::timeout(WAIT, first.next())
            .await
            .expect("a pong in time")
            .expect("stream open")
            .expect("message");
        if let Message::Pong(payload) = message {
            assert_eq!(payload.as_ref(), b"ping");
            break;
        }
    }
    drop(api);
    env.cleanup().await;
}

#[tokio::test]
async fn revoked_tokens_and_rights_end_open_streams() {
    let env = TestEnv::without_controller("api-ws-reauth").await;
    rbac::apply_dev(&env.client, FIELD_MANAGER)
        .await
        .expect("apply the RBAC");
    let auth = KubernetesAuth::with_ttl(
        env.client.clone(),
        env.namespace.clone(),
        Duration::from_millis(200),
    );
    let (api, _) = api_with(&env, auth, |config| {
        config.streams = StreamSettings {
            reauth_interval: Duration::from_millis(300),
            ..StreamSettings::default()
        };
    })
    .await;
    let addr = api.addr;
    session(&env, "bob-s", "bob").await;

    // An account that may list every session (operator role bound in the namespace).
    let watcher = account_token(&env, "watcher", None).await;
    let binding = bind_operator(&env, "watcher").await;
    let mut stream = open_when(
        addr,
        &watcher,
        "the watcher to see bob's session",
        |update| update["count"] == 1,
    )
    .await;
    // The right is withdrawn: the open stream ends.
    env.api::<RoleBinding>()
        .delete(&binding, &DeleteParams::default())
        .await
        .expect("unbind");
    let (code, reason) = closed(&mut stream).await;
    assert_eq!(code, CloseCode::Policy);
    assert_eq!(reason, "the right to see every session was withdrawn");

    // A token whose account is deleted: the open stream ends.
    let doomed = account_token(&env, "doomed", None).await;
    let mut stream = open_ws(addr, &doomed).await.expect("doomed stream");
    next_update(&mut stream).await;
    let accounts: Api<ServiceAccount> = env.api();
    accounts
        .delete("doomed", &DeleteParams::default())
        .await
        .expect("delete the account");
    let (code, reason) = closed(&mut stream).await;
    assert_eq!(code, CloseCode::Policy);
    assert_eq!(reason, "the token is no longer valid");
    let Err((code, body)) = open_ws(addr, &doomed).await else {
        panic!("the deleted account's token was accepted");
    };
    assert_eq!(code, 401, "{body}");
    drop(api);
    env.cleanup().await;
}
