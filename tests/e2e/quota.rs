//! Quota exact across replicas (two webhook servers behind a real TCP round-robin proxy; two
//! API replicas in legacy quota mode), legacy quota on every move to running, `0s` timers, and
//! the admission endpoint trusting only the API server (client certificate, reservations only
//! for real requests), against the real control plane.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use streamspace_controller::admission::certs::SelfManagedConfig;
use streamspace_controller::admission::{
    self, AdmissionConfig, CertSource, MUTATE_PATH, VALIDATE_PATH,
};
use streamspace_controller::crd::{FeatureFlag, FlagMode, QuotaPolicy, Session, Template};
use streamspace_controller::devcluster::{ControlPlane, ControlPlaneOptions};
use streamspace_controller::metrics::Metrics;
use streamspace_controller::ownership::ResourceType;
use streamspace_controller::ownership::index::{FlagIndex, FlagSettings};
use streamspace_controller::quota::store::ledger_name;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::admission::{
    Certs, WebhookEnv, race_creates, running, wait_until_quota_webhook_is_called, webhook_entry,
};
use crate::http_client::{API_TOKEN, Http, RunningApi};
use crate::support::{TestEnv, wait_for};

// ---------------------------------------------------------------------------------------------
// A real TCP round-robin proxy

/// Accepts TCP connections and hands each to the next upstream in turn, copying bytes both
/// ways (TLS passes through untouched), as a Service in front of two webhook pods does.
pub(crate) struct RoundRobin {
    pub(crate) addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for RoundRobin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RoundRobin {
    pub(crate) async fn start(upstreams: Vec<SocketAddr>) -> RoundRobin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstreams[next.fetch_add(1, Ordering::Relaxed) % upstreams.len()];
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        RoundRobin { addr, task }
    }
}

/// Validate requests a webhook replica answered (every result), from its own metrics.
fn validations(metrics: &Metrics) -> u64 {
    metrics
        .encode()
        .lines()
        .filter(|l| {
            l.starts_with("streamspace_admission_requests_total{") && l.contains("\"validate\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn session_count(env: &TestEnv) -> usize {
    env.api::<Session>()
        .list(&ListParams::default())
        .await
        .expect("list sessions")
        .items
        .len()
}

// ---------------------------------------------------------------------------------------------
// Two webhook replicas

#[tokio::test]
async fn quota_two_webhook_replicas_admit_exactly_the_limit() {
    let w = Arc::new(
        WebhookEnv::with_replicas("quota-2wh", Certs::SelfManaged, FlagMode::Controller, 2).await,
    );
    w.policy(
        "default",
        json!({"kind": "Default"}),
        json!({"maxSessions": 3, "maxCpu": "64", "maxMemory": "64Gi"}),
    )
    .await;
    let before: Vec<u64> = std::iter::once(&w.metrics)
        .chain(w.replicas.iter().map(|(_, m)| m))
        .map(|m| validations(m))
        .collect();
    let admitted = race_creates(&w, 12, "session quota exceeded: 3/3 sessions active").await;
    assert_eq!(
        admitted, 3,
        "exactly the quota is admitted across both replicas"
    );
    assert_eq!(
        session_count(&w.env).await,
        3,
        "nothing stored for a denial"
    );
    let after: Vec<u64> = std::iter::once(&w.metrics)
        .chain(w.replicas.iter().map(|(_, m)| m))
        .map(|m| validations(m))
        .collect();
    for (replica, (b, a)) in before.iter().zip(&after).enumerate() {
        assert!(
            a > b,
            "replica {replica} decided some of the creates ({b} -> {a})"
        );
    }
    match Arc::try_unwrap(w) {
        Ok(w) => w.cleanup().await,
        Err(_) => panic!("tasks still hold the environment"),
    }
}

// ---------------------------------------------------------------------------------------------
// The API in legacy quota mode

/// Applies this test's flag of `resource` (cluster-scoped FeatureFlag with the test's prefix).
async fn set_flag(env: &TestEnv, resource: ResourceType, mode: &str) {
    let name = format!("{}{}", env.flag_settings().name_prefix, resource.as_str());
    let flag: FeatureFlag = serde_json::from_value(json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "FeatureFlag",
        "metadata": {"name": name},
        "spec": {"mode": mode, "percent": 100}
    }))
    .expect("flag");
    Api::<FeatureFlag>::all(env.client.clone())
        .patch(
            &name,
            &PatchParams::apply("quota-test").force(),
            &Patch::Apply(&flag),
        )
        .await
        .expect("apply flag");
}

async fn delete_flags(env: &TestEnv) {
    let flags = Api::<FeatureFlag>::all(env.client.clone());
    for resource in ResourceType::ALL {
        let name = format!("{}{}", env.flag_settings().name_prefix, resource.as_str());
        let _ = flags.delete(&name, &Default::default()).await;
    }
}

/// A namespace with a Template, a Default policy of `max` sessions and every flag legacy, and
/// `replicas` API replicas that have loaded all of it.
async fn legacy_apis(test: &str, max: i64, replicas: usize) -> (TestEnv, Vec<RunningApi>) {
    let env = TestEnv::without_controller(test).await;
    env.create::<Template>(json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "Template",
        "metadata": {"name": "desktop"},
        "spec": {"displayName": "Desktop", "baseImage": "desktop:latest"}
    }))
    .await;
    env.create::<QuotaPolicy>(json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "QuotaPolicy",
        "metadata": {"name": "default"},
        "spec": {"subject": {"kind": "Default"},
                 "limits": {"maxSessions": max, "maxCpu": "64", "maxMemory": "64Gi"}}
    }))
    .await;
    for resource in [
        ResourceType::Sessions,
        ResourceType::Quota,
        ResourceType::Autostart,
    ] {
        set_flag(&env, resource, "legacy").await;
    }
    let mut apis = Vec::new();
    for _ in 0..replicas {
        let api = RunningApi::start_static(&env, |_| {}).await;
        for resource in [
            ResourceType::Sessions,
            ResourceType::Quota,
            ResourceType::Autostart,
        ] {
            wait_for(
                "the API to see the legacy flags",
                || async { api.flags.effective(resource).mode },
                |mode| *mode == FlagMode::Legacy,
            )
            .await;
        }
        apis.push(api);
    }
    (env, apis)
}

async fn call(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    Http::connect(addr)
        .await
        .request(method, path, Some(API_TOKEN), body.as_deref())
        .await
}

/// `PATCH /api/v1/sessions/{name}` with `{"state": state}`.
async fn set_state(addr: SocketAddr, name: &str, state: &str) -> (u16, Value) {
    let path = format!("/api/v1/sessions/{name}");
    call(addr, "PATCH", &path, Some(json!({"state": state}))).await
}

fn desktop(user: &str) -> Value {
    json!({"user": user, "template": "desktop", "resources": {"cpu": "500m", "memory": "1Gi"}})
}

#[tokio::test]
async fn quota_two_api_replicas_in_legacy_mode_admit_exactly_the_limit() {
    let (env, apis) = legacy_apis("quota-2api", 3, 2).await;
    let addrs: Vec<SocketAddr> = apis.iter().map(|a| a.addr).collect();
    let attempts: Vec<_> = (0..12)
        .map(|i| {
            let addr = addrs[i % addrs.len()];
            tokio::spawn(async move {
                call(addr, "POST", "/api/v1/sessions", Some(desktop("alice"))).await
            })
        })
        .collect();
    let mut admitted = 0;
    for attempt in attempts {
        let (code, reply) = attempt.await.expect("task");
        match code {
            202 => admitted += 1,
            403 => {
                assert_eq!(reply["error"], "Quota exceeded", "{reply}");
                assert_eq!(
                    reply["message"],
                    "session quota exceeded: 3/3 sessions active"
                );
            }
            _ => panic!("unexpected answer {code}: {reply}"),
        }
    }
    assert_eq!(
        admitted, 3,
        "exactly the quota is admitted across both API replicas"
    );
    assert_eq!(session_count(&env).await, 3, "nothing stored for a denial");
    for api in &apis {
        assert!(
            api.counter("streamspace_api_requests", "sessions_create") > 0,
            "both replicas served creates"
        );
    }
    delete_flags(&env).await;
    drop(apis);
    env.cleanup().await;
}

#[tokio::test]
async fn quota_legacy_wake_over_the_limit_is_refused() {
    let (env, apis) = legacy_apis("quota-wake", 2, 1).await;
    let addr = apis[0].addr;
    let mut names = Vec::new();
    for _ in 0..2 {
        let (code, reply) = call(addr, "POST", "/api/v1/sessions", Some(desktop("alice"))).await;
        assert_eq!(code, 202, "{reply}");
        names.push(reply["name"].as_str().expect("name").to_string());
    }
    let (code, reply) = set_state(addr, &names[0], "hibernated").await;
    assert_eq!(code, 202, "{reply}");
    let (code, reply) = call(addr, "POST", "/api/v1/sessions", Some(desktop("alice"))).await;
    assert_eq!(code, 202, "a hibernated session frees its slot: {reply}");
    let third = reply["name"].as_str().expect("name").to_string();
    let sessions = env.api::<Session>();
    let before = sessions.get(&names[0]).await.expect("hibernated session");

    // Waking the hibernated one would make three running: refused, nothing written.
    let (code, reply) = set_state(addr, &names[0], "running").await;
    assert_eq!(code, 403, "{reply}");
    assert_eq!(reply["error"], "Quota exceeded");
    assert_eq!(
        reply["message"],
        "session quota exceeded: 2/2 sessions active"
    );
    let connect = format!("/api/v1/sessions/{}/connect?user=alice", names[0]);
    let (code, reply) = call(addr, "GET", &connect, None).await;
    assert_eq!(code, 403, "connect auto-start is a wake too: {reply}");
    assert_eq!(
        reply["message"],
        "session quota exceeded: 2/2 sessions active"
    );
    let after = sessions.get(&names[0]).await.expect("session");
    assert_eq!(
        after.spec.state.as_ref().map(|s| s.as_str()),
        Some("hibernated")
    );
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "a refused wake writes nothing"
    );

    // Within the limit again, the same wake is admitted.
    let (code, reply) = set_state(addr, &third, "hibernated").await;
    assert_eq!(code, 202, "{reply}");
    let (code, reply) = set_state(addr, &names[0], "running").await;
    assert_eq!(code, 202, "{reply}");
    delete_flags(&env).await;
    drop(apis);
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// `0s` timers

#[tokio::test]
async fn quota_zero_timers_are_refused_with_a_clear_message() {
    let w = WebhookEnv::new("quota-zero", Certs::SelfManaged).await;
    let error = w
        .create_session(
            "s0",
            json!({"user": "alice", "template": "t", "idleTimeout": "0s"}),
        )
        .await
        .expect_err("the mutating webhook refuses a disabled idle timer");
    let text = error.to_string();
    assert!(
        text.contains(r#"idleTimeout "0s" would switch idle hibernation off"#),
        "{text}"
    );
    assert!(text.contains("--allow-disabled-timers"), "{text}");
    assert_eq!(session_count(&w.env).await, 0, "nothing stored");

    // The API refuses it before writing anything.
    let api = RunningApi::start_static(&w.env, |_| {}).await;
    let (code, reply) = call(
        api.addr,
        "POST",
        "/api/v1/sessions",
        Some(json!({"user": "alice", "template": "t", "maxSessionDuration": "0h"})),
    )
    .await;
    assert_eq!(code, 400, "{reply}");
    assert_eq!(reply["error"], "Invalid request body");
    let message = reply["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(
            r#"maxSessionDuration "0h" would switch the maximum session duration off"#
        ),
        "{message}"
    );
    assert_eq!(session_count(&w.env).await, 0, "nothing stored");
    drop(api);
    w.cleanup().await;

    // Where the operator allows it, the API accepts it.
    let env = TestEnv::without_controller("quota-zero-allowed").await;
    env.create::<Template>(json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "Template",
        "metadata": {"name": "desktop"},
        "spec": {"displayName": "Desktop", "baseImage": "desktop:latest"}
    }))
    .await;
    let api = RunningApi::start_static(&env, |c| c.allow_disabled_timers = true).await;
    let (code, reply) = call(
        api.addr,
        "POST",
        "/api/v1/sessions",
        Some(json!({"user": "alice", "template": "desktop", "idleTimeout": "0s"})),
    )
    .await;
    assert_eq!(code, 202, "{reply}");
    let name = reply["name"].as_str().expect("name");
    let stored = env.api::<Session>().get(name).await.expect("stored");
    assert_eq!(stored.spec.idle_timeout, "0s");
    drop(api);
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Only the API server: client certificates

/// A CA and a client certificate it signed: (CA PEM, client certificate PEM, client key PEM).
fn client_pki() -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "webhook client CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("client key");
    let mut client = CertificateParams::default();
    client
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = client.signed_by(&key, &issuer).expect("client certificate");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// Files that make the API server present `cert`/`key` to every webhook.
fn admission_config(dir: &Path, cert: &str, key: &str) -> std::path::PathBuf {
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write file");
        path
    };
    let cert = write("client.crt", cert);
    let key = write("client.key", key);
    let kubeconfig = write(
        "webhook-kubeconfig.yaml",
        &format!(
            "apiVersion: v1\nkind: Config\nusers:\n- name: \"*\"\n  user:\n    client-certificate: {}\n    client-key: {}\n",
            cert.display(),
            key.display()
        ),
    );
    let plugin = |name: &str| {
        format!(
            "- name: {name}\n  configuration:\n    apiVersion: apiserver.config.k8s.io/v1\n    kind: WebhookAdmissionConfiguration\n    kubeConfigFile: {}\n",
            kubeconfig.display()
        )
    };
    write(
        "admission.yaml",
        &format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n{}{}",
            plugin("ValidatingAdmissionWebhook"),
            plugin("MutatingAdmissionWebhook")
        ),
    )
}

/// Sends a review over TLS as a client presenting `identity` (certificate, key) or none:
/// the HTTP status, or the error that ended the exchange.
async fn post_review(
    addr: SocketAddr,
    server_ca: &str,
    identity: Option<(&str, &str)>,
    body: &[u8],
) -> Result<u16, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(server_ca.as_bytes()).flatten() {
        roots.add(cert).expect("server CA");
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .flatten()
                    .collect();
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("client key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client identity")
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let mut stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let head = format!(
        "POST {VALIDATE_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    stream.write_all(body).await.map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    String::from_utf8_lossy(&response)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "no HTTP answer".to_string())
}

fn review(namespace: &str, user: &str, dry_run: bool) -> Vec<u8> {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "forged-1",
            "kind": {"group": "stream.space", "version": "v1alpha1", "kind": "Session"},
            "resource": {"group": "stream.space", "version": "v1alpha1", "resource": "sessions"},
            "operation": "CREATE", "namespace": namespace, "name": "forged",
            "userInfo": {"username": user}, "dryRun": dry_run,
            "object": {"apiVersion": "stream.space/v1alpha1", "kind": "Session",
                       "metadata": {"name": "forged", "namespace": namespace},
                       "spec": {"user": user, "template": "t", "state": "running"}}
        }
    })
    .to_string()
    .into_bytes()
}

#[tokio::test]
async fn quota_webhook_refuses_clients_without_the_api_servers_certificate() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, cert, key) = client_pki();
    let ca_path = dir.path().join("client-ca.crt");
    std::fs::write(&ca_path, &ca).expect("write CA");
    let config_file = admission_config(dir.path(), &cert, &key);
    // A control plane of its own, whose API server presents the client certificate.
    let plane = ControlPlane::start(ControlPlaneOptions {
        extra_apiserver_args: vec![format!(
            "--admission-control-config-file={}",
            config_file.display()
        )],
        ..ControlPlaneOptions::default()
    })
    .await
    .expect("control plane with an admission configuration");
    let client = plane.client().await.expect("client");
    streamspace_controller::crd::install::install(&client, "quota-test")
        .await
        .expect("CRDs");
    let ns = "quota-mtls";
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": ns, "labels": {"admission-test": ns}}}),
            )
            .expect("namespace"),
        )
        .await
        .expect("namespace");
    let metrics = Metrics::default();
    let webhook = admission::start(
        client.clone(),
        AdmissionConfig {
            addr: "127.0.0.1:0".parse().expect("address"),
            certs: CertSource::SelfManaged(SelfManagedConfig {
                namespace: ns.into(),
                secret: "webhook-tls".into(),
                names: vec!["127.0.0.1".into()],
                validating_configs: vec!["mtls".into()],
                mutating_configs: vec!["mtls".into()],
            }),
            flags: FlagIndex::new(FlagSettings {
                name_prefix: "quota-mtls-".into(),
                ..FlagSettings::default()
            }),
            policy_namespace: Some(ns.into()),
            session_namespace: Some(ns.into()),
            ledger_namespace: ns.into(),
            client_ca: Some(ca_path),
            allow_disabled_timers: false,
        },
        metrics.admission.clone(),
        std::future::pending(),
    )
    .await
    .expect("webhook with a client CA");
    assert!(webhook.ready().await, "caches load");
    register(&client, ns, webhook.addr.port()).await;
    if let Some(manager) = &webhook.self_managed {
        manager.refresh(false).await.expect("caBundle written");
    }
    // The API server, presenting its client certificate, gets decisions.
    let sessions: Api<Session> = Api::namespaced(client.clone(), ns);
    wait_until_quota_webhook_is_called(&sessions).await;
    sessions
        .create(&PostParams::default(), &serde_json::from_value(json!({
            "apiVersion": "stream.space/v1alpha1", "kind": "Session", "metadata": {"name": "real"},
            "spec": running("alice", "1", "1Gi")
        })).expect("session"))
        .await
        .expect("a real create is admitted through the client-certificate check");

    let secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns)
        .get("webhook-tls")
        .await
        .expect("serving Secret");
    let server_ca = String::from_utf8(
        secret
            .data
            .unwrap_or_default()
            .get("ca.crt")
            .map(|b| b.0.clone())
            .unwrap_or_default(),
    )
    .expect("PEM");
    // Attacks: no certificate, and a certificate from another CA. Both end at TLS.
    let failed_before = handshakes_failed(&metrics);
    let (_, other_cert, other_key) = client_pki();
    for identity in [None, Some((other_cert.as_str(), other_key.as_str()))] {
        let answer = post_review(
            webhook.addr,
            &server_ca,
            identity,
            &review(ns, "mallory", false),
        )
        .await;
        assert!(
            answer.is_err(),
            "refused at TLS, no HTTP answer: {answer:?}"
        );
    }
    wait_for(
        "the refused handshakes to be counted",
        || async { handshakes_failed(&metrics) },
        |failed| *failed >= failed_before + 2,
    )
    .await;
    // The certificate holder is heard; a dry run or a malformed review reserves nothing.
    let holder = Some((cert.as_str(), key.as_str()));
    let dry = post_review(
        webhook.addr,
        &server_ca,
        holder,
        &review(ns, "mallory", true),
    )
    .await;
    assert_eq!(dry, Ok(200));
    let malformed = post_review(webhook.addr, &server_ca, holder, b"{\"request\": 5}").await;
    assert_eq!(malformed, Ok(400));
    let ledgers: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    assert!(
        ledgers
            .get_opt(&ledger_name("mallory"))
            .await
            .expect("read")
            .is_none(),
        "no reservation was written for a refused, dry-run or malformed review"
    );
    assert!(
        ledgers
            .get_opt(&ledger_name("alice"))
            .await
            .expect("read")
            .is_some(),
        "the real create reserved in the ledger"
    );
    drop(webhook);
    plane.stop().await;
}

/// Webhook configurations named `mtls` calling the webhook on `port` for namespace `ns`.
async fn register(client: &kube::Client, ns: &str, port: u16) {
    let entry = |name: &str, path: &str| {
        json!({"metadata": {"name": "mtls"}, "webhooks": [
            webhook_entry(name, format!("https://127.0.0.1:{port}{path}"), ns, None)
        ]})
    };
    let validating: ValidatingWebhookConfiguration =
        serde_json::from_value(entry("quota.stream.space", VALIDATE_PATH)).expect("validating");
    let mutating: MutatingWebhookConfiguration =
        serde_json::from_value(entry("defaults.stream.space", MUTATE_PATH)).expect("mutating");
    let params = PostParams::default();
    Api::all(client.clone())
        .create(&params, &validating)
        .await
        .expect("validating configuration");
    Api::all(client.clone())
        .create(&params, &mutating)
        .await
        .expect("mutating configuration");
}

fn handshakes_failed(metrics: &Metrics) -> u64 {
    metrics
        .encode()
        .lines()
        .find(|l| {
            l.starts_with("streamspace_admission_tls_handshakes_total{") && l.contains("\"failed\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}
