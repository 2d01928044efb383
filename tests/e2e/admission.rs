//! Admission webhooks against the real API server, which calls them over TLS.
//!
//! Every test registers its own Validating/MutatingWebhookConfiguration, scoped by a
//! `namespaceSelector` to a label only its namespace carries, so Sessions of tests running in
//! parallel never reach these webhooks; the configurations are deleted at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use streamspace_controller::admission::certs::{
    CertFiles, SelfManagedConfig, issue_serving, new_ca,
};
use streamspace_controller::admission::{
    self, AdmissionConfig, CertSource, MUTATE_PATH, VALIDATE_PATH, Webhook,
};
use streamspace_controller::crd::{FeatureFlag, FlagMode, QuotaPolicy, Session, Template};
use streamspace_controller::metrics::Metrics;
use streamspace_controller::ownership::index::FlagIndex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::quota::RoundRobin;
use crate::support::{TestEnv, wait_for};

/// Label that selects a test's namespace in its webhook configurations.
const SELECTOR_LABEL: &str = "admission-test";

/// Creates or replaces the test's `quota` FeatureFlag and waits until `flags` sees it.
pub(crate) async fn set_quota_flag(
    env: &TestEnv,
    flags: &std::sync::Arc<FlagIndex>,
    mode: FlagMode,
) {
    use streamspace_controller::ownership::ResourceType;
    let name = format!("{}quota", env.flag_settings().name_prefix);
    let flag = json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "FeatureFlag",
        "metadata": {"name": name},
        "spec": {"mode": mode.to_string(), "percent": 100}
    });
    Api::<FeatureFlag>::all(env.client.clone())
        .patch(
            &name,
            &PatchParams::apply("e2e-test").force(),
            &Patch::Apply(flag),
        )
        .await
        .expect("apply the quota flag");
    // The index may not be running yet (the webhook starts it): then it reads the flag on start.
    if flags.loaded() {
        wait_for(
            "the quota flag to reach the index",
            || async { flags.effective(ResourceType::Quota).mode },
            |seen| *seen == mode,
        )
        .await;
    }
}

pub(crate) struct WebhookEnv {
    pub(crate) env: TestEnv,
    /// The webhook's ownership flags.
    pub(crate) flags: std::sync::Arc<FlagIndex>,
    pub(crate) webhook: Webhook,
    pub(crate) metrics: Arc<Metrics>,
    /// Further replicas (same certificate Secret, own caches and metrics) and the round-robin
    /// proxy the API server calls in front of all of them.
    pub(crate) replicas: Vec<(Webhook, Arc<Metrics>)>,
    _proxy: Option<RoundRobin>,
    config_name: String,
    _stop: watch::Sender<bool>,
}

pub(crate) enum Certs {
    SelfManaged,
    /// (certificate file, key file, CA PEM)
    Files(CertFiles, String),
}

pub(crate) fn webhook_entry(name: &str, url: String, namespace: &str, ca: Option<&str>) -> Value {
    let mut client_config = json!({"url": url});
    if let Some(ca) = ca {
        client_config["caBundle"] = json!(base64(ca.as_bytes()));
    }
    json!({
        "name": name,
        "clientConfig": client_config,
        "rules": [{
            "apiGroups": ["stream.space"], "apiVersions": ["v1alpha1"],
            "operations": ["CREATE", "UPDATE"], "resources": ["sessions"], "scope": "Namespaced"
        }],
        "namespaceSelector": {"matchLabels": {SELECTOR_LABEL: namespace}},
        "failurePolicy": "Fail",
        "sideEffects": "NoneOnDryRun",
        "timeoutSeconds": 10,
        "admissionReviewVersions": ["v1"]
    })
}

fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl WebhookEnv {
    pub(crate) async fn new(test: &str, certs: Certs) -> WebhookEnv {
        Self::with_quota_flag(test, certs, FlagMode::Controller).await
    }

    /// A webhook whose `quota` flag has `mode` (a FeatureFlag object of this test's prefix).
    pub(crate) async fn with_quota_flag(test: &str, certs: Certs, mode: FlagMode) -> WebhookEnv {
        Self::with_replicas(test, certs, mode, 1).await
    }

    /// `replicas` webhook servers; with more than one, the API server calls a TCP round-robin
    /// proxy that alternates connections between them.
    pub(crate) async fn with_replicas(
        test: &str,
        certs: Certs,
        mode: FlagMode,
        replicas: usize,
    ) -> WebhookEnv {
        let env = TestEnv::without_controller(test).await;
        let ns = env.namespace.clone();
        let flags = FlagIndex::new(env.flag_settings());
        if mode != FlagMode::Controller {
            set_quota_flag(&env, &flags, mode.clone()).await;
        }
        Api::<Namespace>::all(env.client.clone())
            .patch(
                &ns,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {SELECTOR_LABEL: ns}}})),
            )
            .await
            .expect("label namespace");
        let config_name = format!("admission-test-{ns}");
        let (stop, stopped) = watch::channel(false);
        let (cert_source, ca) = match certs {
            Certs::SelfManaged => (
                CertSource::SelfManaged(SelfManagedConfig {
                    namespace: ns.clone(),
                    secret: "webhook-tls".into(),
                    names: vec!["127.0.0.1".into(), "localhost".into()],
                    validating_configs: vec![config_name.clone()],
                    mutating_configs: vec![config_name.clone()],
                }),
                None,
            ),
            Certs::Files(files, ca) => (CertSource::Files(files), Some(ca)),
        };
        let config = AdmissionConfig {
            addr: "127.0.0.1:0".parse().expect("address"),
            certs: cert_source,
            flags: flags.clone(),
            policy_namespace: Some(ns.clone()),
            session_namespace: Some(ns.clone()),
            ledger_namespace: ns.clone(),
            client_ca: None,
            allow_disabled_timers: false,
        };
        let mut started = Vec::new();
        for _ in 0..replicas.max(1) {
            let mut stopped = stopped.clone();
            let metrics = Arc::new(Metrics::default());
            let webhook = admission::start(
                env.client.clone(),
                config.clone(),
                metrics.admission.clone(),
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
            )
            .await
            .expect("webhook starts");
            assert!(webhook.ready().await, "webhook caches load");
            started.push((webhook, metrics));
        }
        let (webhook, metrics) = started.remove(0);
        let proxy = match started.is_empty() {
            true => None,
            false => {
                let mut upstreams = vec![webhook.addr];
                upstreams.extend(started.iter().map(|(w, _)| w.addr));
                Some(RoundRobin::start(upstreams).await)
            }
        };
        let port = proxy
            .as_ref()
            .map_or(webhook.addr.port(), |p| p.addr.port());
        let validating: ValidatingWebhookConfiguration = serde_json::from_value(json!({
            "metadata": {"name": config_name},
            "webhooks": [webhook_entry(
                "quota.stream.space",
                format!("https://127.0.0.1:{port}{VALIDATE_PATH}"),
                &ns,
                ca.as_deref(),
            )]
        }))
        .expect("validating configuration");
        let mut mutating_entry = webhook_entry(
            "defaults.stream.space",
            format!("https://127.0.0.1:{port}{MUTATE_PATH}"),
            &ns,
            ca.as_deref(),
        );
        mutating_entry["reinvocationPolicy"] = json!("Never");
        let mutating: MutatingWebhookConfiguration = serde_json::from_value(json!({
            "metadata": {"name": config_name},
            "webhooks": [mutating_entry]
        }))
        .expect("mutating configuration");
        Api::<ValidatingWebhookConfiguration>::all(env.client.clone())
            .create(&PostParams::default(), &validating)
            .await
            .expect("create validating configuration");
        Api::<MutatingWebhookConfiguration>::all(env.client.clone())
            .create(&PostParams::default(), &mutating)
            .await
            .expect("create mutating configuration");
        if let Some(manager) = &webhook.self_managed {
            // The configurations exist now: write their caBundle.
            manager.refresh(false).await.expect("caBundle written");
        }
        let this = WebhookEnv {
            env,
            flags,
            webhook,
            metrics,
            replicas: started,
            _proxy: proxy,
            config_name,
            _stop: stop,
        };
        this.wait_until_webhooks_are_called(mode == FlagMode::Controller)
            .await;
        this
    }

    /// The API server picks up new configurations asynchronously: dry-run until both
    /// webhooks are called.
    async fn wait_until_webhooks_are_called(&self, enforcing: bool) {
        let api = self.env.api::<Session>();
        if enforcing {
            wait_until_quota_webhook_is_called(&api).await;
        }
        // The mutating webhook is registered at the same time; make sure it is active too.
        let labelled: Session = serde_json::from_value(json!({
            "apiVersion": "stream.space/v1alpha1", "kind": "Session",
            "metadata": {"name": "probe"},
            "spec": {"user": "probe", "template": "none", "state": "hibernated"}
        }))
        .expect("probe session");
        wait_for(
            "the API server to call the mutating webhook",
            || async {
                api.create(
                    &PostParams {
                        dry_run: true,
                        ..PostParams::default()
                    },
                    &labelled,
                )
                .await
                .ok()
                .and_then(|s| s.metadata.labels)
                .and_then(|l| l.get("user").cloned())
            },
            |user| user.as_deref() == Some("probe"),
        )
        .await;
    }

    pub(crate) async fn cleanup(self) {
        let _ = Api::<ValidatingWebhookConfiguration>::all(self.env.client.clone())
            .delete(&self.config_name, &DeleteParams::default())
            .await;
        let _ = Api::<MutatingWebhookConfiguration>::all(self.env.client.clone())
            .delete(&self.config_name, &DeleteParams::default())
            .await;
        drop(self.webhook);
        drop(self.replicas);
        self.env.cleanup().await;
    }

    pub(crate) async fn policy(&self, name: &str, subject: Value, limits: Value) {
        let policy: QuotaPolicy = serde_json::from_value(json!({
            "apiVersion": "stream.space/v1alpha1", "kind": "QuotaPolicy",
            "metadata": {"name": name},
            "spec": {"subject": subject, "limits": limits}
        }))
        .expect("policy");
        let api = self.env.api::<QuotaPolicy>();
        api.patch(
            name,
            &PatchParams::apply("admission-test").force(),
            &Patch::Apply(&policy),
        )
        .await
        .expect("apply policy");
        // The webhook reads policies from its watch cache: wait until it has this version.
        let stored = api.get(name).await.expect("policy stored");
        let version = stored.metadata.resource_version.clone();
        let webhooks = std::iter::once(&self.webhook).chain(self.replicas.iter().map(|(w, _)| w));
        for webhook in webhooks {
            let store = webhook.state.policies().clone();
            wait_for(
                "the webhook to see the policy",
                || async {
                    store
                        .get(
                            &kube::runtime::reflector::ObjectRef::new(name)
                                .within(&self.env.namespace),
                        )
                        .and_then(|p| p.metadata.resource_version.clone())
                },
                |seen| *seen == version,
            )
            .await;
        }
    }

    pub(crate) async fn create_session(
        &self,
        name: &str,
        spec: Value,
    ) -> Result<Session, kube::Error> {
        let session: Session = serde_json::from_value(json!({
            "apiVersion": "stream.space/v1alpha1", "kind": "Session",
            "metadata": {"name": name},
            "spec": spec
        }))
        .expect("session");
        self.env
            .api::<Session>()
            .create(&PostParams::default(), &session)
            .await
    }

    async fn set_state(&self, name: &str, state: &str) -> Result<Session, kube::Error> {
        self.env
            .api::<Session>()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"state": state}})),
            )
            .await
    }
}

/// The API server picks up a new configuration asynchronously: dry-runs an out-of-bounds
/// create in `api`'s namespace until the quota webhook's denial comes back.
pub(crate) async fn wait_until_quota_webhook_is_called(api: &Api<Session>) {
    let probe: Session = serde_json::from_value(json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "Session",
        "metadata": {"name": "probe"},
        "spec": {"user": "probe", "template": "none", "resources": {"cpu": "1m"}}
    }))
    .expect("probe session");
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let _ = wait_for(
        "the API server to call the quota webhook",
        || async {
            api.create(&dry, &probe)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
        |result| {
            result
                .as_ref()
                .err()
                .is_some_and(|e| e.contains("invalid resource request: CPU 1m"))
        },
    )
    .await;
}

/// `n` creates of running sessions for alice at once; how many were admitted (every denial
/// must contain `denial`).
pub(crate) async fn race_creates(w: &Arc<WebhookEnv>, n: usize, denial: &str) -> usize {
    let attempts: Vec<_> = (0..n)
        .map(|i| {
            let w = w.clone();
            tokio::spawn(async move {
                w.create_session(&format!("r{i}"), running("alice", "1", "1Gi"))
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    let mut admitted = 0;
    for attempt in attempts {
        match attempt.await.expect("task") {
            Ok(_) => admitted += 1,
            Err(e) => assert!(e.contains(denial), "{e}"),
        }
    }
    admitted
}

pub(crate) fn running(user: &str, cpu: &str, memory: &str) -> Value {
    json!({"user": user, "template": "desktop", "state": "running",
           "resources": {"requests": {"cpu": cpu, "memory": memory}}})
}

/// The 403 denial's message, or a panic describing what happened instead.
pub(crate) fn denial(result: Result<Session, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403, "{status:?}");
            status.message.clone()
        }
        other => panic!("expected a 403 denial, got {other:?}"),
    }
}

#[tokio::test]
async fn admission_defaults_and_admits_a_session_within_quota() {
    let w = WebhookEnv::new("adm-defaults", Certs::SelfManaged).await;
    w.env
        .create::<Template>(json!({
            "apiVersion": "stream.space/v1alpha1", "kind": "Template",
            "metadata": {"name": "firefox"},
            "spec": {"displayName": "Firefox", "baseImage": "firefox:latest",
                     "defaultResources": {"memory": "1Gi", "cpu": "500m"}}
        }))
        .await;
    wait_for(
        "the webhook to see the Template",
        || async { w.webhook.state.templates().state().len() },
        |n| *n == 1,
    )
    .await;
    let session = w
        .create_session("s1", json!({"user": "alice", "template": "firefox"}))
        .await
        .expect("admitted");
    let labels = session.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("user").map(String::as_str), Some("alice"));
    assert_eq!(labels.get("template").map(String::as_str), Some("firefox"));
    assert_eq!(
        session.spec.state.as_ref().map(|s| s.as_str()),
        Some("running")
    );
    assert_eq!(session.spec.idle_timeout, "30m");
    assert_eq!(session.spec.max_session_duration, "8h");
    assert!(session.spec.persistent_home);
    let requests = session
        .spec
        .resources
        .and_then(|r| r.requests)
        .unwrap_or_default();
    assert_eq!(requests.get("cpu").map(|q| q.0.as_str()), Some("500m"));
    assert_eq!(requests.get("memory").map(|q| q.0.as_str()), Some("1Gi"));
    // The stored object has the defaults too, and `kubectl get ss -l user=alice` works.
    let listed = w
        .env
        .api::<Session>()
        .list(&kube::api::ListParams::default().labels("user=alice"))
        .await
        .expect("list by label");
    assert_eq!(listed.items.len(), 1);
    // An update that drops the labels gets them back, and leaves the spec alone.
    let updated = w
        .env
        .api::<Session>()
        .patch(
            "s1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"user": null, "team": "a"}}})),
        )
        .await
        .expect("label update");
    let labels = updated.metadata.labels.unwrap_or_default();
    assert_eq!(labels.get("user").map(String::as_str), Some("alice"));
    assert_eq!(labels.get("team").map(String::as_str), Some("a"));
    let text = w.metrics.encode();
    assert!(
        text.contains(r#"streamspace_admission_requests_total{webhook="mutate",result="patched"}"#),
        "{text}"
    );
    w.cleanup().await;
}

#[tokio::test]
async fn admission_rejects_the_sixth_running_session() {
    let w = WebhookEnv::new("adm-sixth", Certs::SelfManaged).await;
    w.policy(
        "default",
        json!({"kind": "Default"}),
        json!({"maxSessions": 5, "maxCpu": "64", "maxMemory": "64Gi"}),
    )
    .await;
    for i in 0..5 {
        w.create_session(&format!("s{i}"), running("alice", "500m", "1Gi"))
            .await
            .unwrap_or_else(|e| panic!("session {i} within quota: {e}"));
    }
    let message = denial(
        w.create_session("s5", running("alice", "500m", "1Gi"))
            .await,
    );
    assert!(
        message.contains("session quota exceeded: 5/5 sessions active"),
        "{message}"
    );
    // Another user is unaffected; a hibernated sixth session is fine.
    w.create_session("b0", running("bob", "500m", "1Gi"))
        .await
        .expect("bob within quota");
    w.create_session(
        "s6",
        json!({"user": "alice", "template": "desktop", "state": "hibernated"}),
    )
    .await
    .expect("hibernated sessions do not count");
    w.cleanup().await;
}

#[tokio::test]
async fn admission_rejects_each_limit_with_its_own_message() {
    let w = WebhookEnv::new("adm-limits", Certs::SelfManaged).await;
    w.policy(
        "default",
        json!({"kind": "Default"}),
        json!({"maxSessions": 10, "maxCpuPerSession": "2", "maxCpu": "16",
               "maxMemory": "4Gi", "maxGpu": 1}),
    )
    .await;
    w.policy(
        "small-team",
        json!({"kind": "Group", "members": ["bob"]}),
        json!({"maxSessions": 1}),
    )
    .await;
    let cpu = denial(
        w.create_session("a-cpu", running("alice", "3", "1Gi"))
            .await,
    );
    assert!(
        cpu.contains("CPU quota exceeded: requested 3000m, limit is 2000m per session"),
        "{cpu}"
    );
    w.create_session("a1", running("alice", "1", "2Gi"))
        .await
        .expect("first 2Gi");
    w.create_session("a2", running("alice", "1", "2048Mi"))
        .await
        .expect("second 2Gi, spelled in Mi");
    let memory = denial(w.create_session("a3", running("alice", "1", "1Gi")).await);
    assert!(
        memory.contains(
            "total memory quota exceeded: would use 5120Mi, limit is 4096Mi (in use 4096Mi, requested 1024Mi)"
        ),
        "{memory}"
    );
    let first = json!({"user": "carol", "template": "desktop", "state": "running",
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"},
                      "limits": {"nvidia.com/gpu": "1"}}});
    w.create_session("g1", first.clone())
        .await
        .expect("first GPU");
    let gpu = denial(w.create_session("g2", first).await);
    assert!(
        gpu.contains("GPU quota exceeded: would use 2, limit is 1 (in use 1, requested 1)"),
        "{gpu}"
    );
    // The Group policy applies to its member only.
    w.create_session("b1", running("bob", "1", "1Gi"))
        .await
        .expect("bob's first");
    let group = denial(w.create_session("b2", running("bob", "1", "1Gi")).await);
    assert!(
        group.contains("session quota exceeded: 1/1 sessions active"),
        "{group}"
    );
    w.create_session("d1", running("dave", "1", "1Gi"))
        .await
        .expect("dave's first");
    w.create_session("d2", running("dave", "1", "1Gi"))
        .await
        .expect("dave is not in the group");
    let bounds = denial(w.create_session("tiny", running("erin", "1", "64Mi")).await);
    assert!(
        bounds.contains("invalid resource request: memory 64Mi is outside 128Mi-524288Mi"),
        "{bounds}"
    );
    w.cleanup().await;
}

#[tokio::test]
async fn admission_rejects_waking_over_quota_but_never_hibernating() {
    let w = WebhookEnv::new("adm-wake", Certs::SelfManaged).await;
    w.policy(
        "default",
        json!({"kind": "Default"}),
        json!({"maxSessions": 1}),
    )
    .await;
    w.create_session("s1", running("alice", "1", "1Gi"))
        .await
        .expect("first running");
    w.create_session(
        "s2",
        json!({"user": "alice", "template": "desktop", "state": "hibernated",
               "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}),
    )
    .await
    .expect("hibernated is admitted");
    let wake = denial(w.set_state("s2", "running").await);
    assert!(
        wake.contains("session quota exceeded: 1/1 sessions active"),
        "{wake}"
    );
    // Over quota (the policy shrinks to 0): hibernating is still allowed.
    w.policy(
        "default",
        json!({"kind": "Default"}),
        json!({"maxSessions": 0}),
    )
    .await;
    w.set_state("s1", "hibernated")
        .await
        .expect("hibernating is never rejected");
    w.policy(
        "default",
        json!({"kind": "Default"}),
        json!({"maxSessions": 1}),
    )
    .await;
    // s1's hibernation frees the slot once the Session watch has delivered it.
    let _ = wait_for(
        "waking s2 to be admitted",
        || async {
            w.set_state("s2", "running")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
        Result::is_ok,
    )
    .await;
    let again = denial(w.set_state("s1", "running").await);
    assert!(again.contains("1/1"), "{again}");
    w.cleanup().await;
}

#[tokio::test]
async fn admission_policy_changes_apply_without_restart() {
    let w = WebhookEnv::new("adm-policy", Certs::SelfManaged).await;
    w.policy(
        "default",
        json!({"kind": "Default"}),
        json!({"maxSessions": 1}),
    )
    .await;
    w.create_session("s1", running("alice", "1", "1Gi"))
        .await
        .expect("first");
    denial(w.create_session("s2", running("alice", "1", "1Gi")).await);
    // Change the policy directly (not through the helper, which waits for the cache).
    let changed = Instant::now();
    w.env
        .api::<QuotaPolicy>()
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"limits": {"maxSessions": 2}}})),
        )
        .await
        .expect("raise the limit");
    let _ = wait_for(
        "the raised limit to apply",
        || async {
            w.create_session("s2", running("alice", "1", "1Gi"))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
        Result::is_ok,
    )
    .await;
    let took = changed.elapsed();
    eprintln!("policy change applied after {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // A User policy overrides the Default for that user only.
    w.policy(
        "alice",
        json!({"kind": "User", "name": "alice"}),
        json!({"maxSessions": 3}),
    )
    .await;
    w.create_session("s3", running("alice", "1", "1Gi"))
        .await
        .expect("alice's own policy allows three");
    w.cleanup().await;
}

/// The certificate the webhook presents to a new TLS connection, verified against `ca`.
async fn presented_cert(addr: std::net::SocketAddr, ca: &str) -> Vec<u8> {
    let (stream, _) = tls_connect(addr, ca).await;
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default()
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    ca: &str,
) -> (tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ()) {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()).flatten() {
        roots.add(cert).expect("CA certificate");
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("server name");
    (
        connector.connect(name, tcp).await.expect("TLS handshake"),
        (),
    )
}

/// One HTTP/1.1 POST over TLS: (status code, body).
async fn post(addr: std::net::SocketAddr, ca: &str, path: &str, body: &[u8]) -> (u16, String) {
    let (mut stream, _) = tls_connect(addr, ca).await;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.write_all(body).await.expect("write body");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

async fn ca_of(w: &WebhookEnv) -> String {
    let secret = w
        .env
        .api::<Secret>()
        .get("webhook-tls")
        .await
        .expect("certificate Secret");
    let data = secret.data.unwrap_or_default();
    String::from_utf8(data.get("ca.crt").map(|b| b.0.clone()).unwrap_or_default()).expect("PEM")
}

#[tokio::test]
async fn admission_self_managed_rotation_fails_no_request() {
    let w = Arc::new(WebhookEnv::new("adm-rotate", Certs::SelfManaged).await);
    w.policy(
        "default",
        json!({"kind": "Default"}),
        json!({"maxSessions": 100000, "maxCpu": "100000", "maxMemory": "100Ti"}),
    )
    .await;
    let ca = ca_of(&w).await;
    let created = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut writers = Vec::new();
    for writer in 0..4 {
        let w = w.clone();
        let created = created.clone();
        let failures = failures.clone();
        let stop_rx = stop_rx.clone();
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !*stop_rx.borrow() {
                // A fresh client per request forces fresh connections to the apiserver; the
                // apiserver's own webhook connections are what the rotation must not break.
                match w
                    .create_session(&format!("w{writer}-{i}"), running("loop", "100m", "128Mi"))
                    .await
                {
                    Ok(_) => {
                        created.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(e.to_string()),
                }
                i += 1;
            }
        }));
    }
    let manager = w.webhook.self_managed.clone().expect("self-managed mode");
    let mut served = vec![presented_cert(w.webhook.addr, &ca).await];
    // Requests answered so far, admitted or not: the writers must make progress on every
    // certificate, not merely be given time to.
    let answered = || {
        let failed = failures.lock().unwrap_or_else(|p| p.into_inner()).len();
        created.load(Ordering::Relaxed) + failed
    };
    let progress = |what: &'static str| {
        let before = answered();
        wait_for(
            what,
            move || async move { answered() },
            move |n| *n >= before + 3,
        )
    };
    for _ in 0..3 {
        progress("writers to be answered on the current certificate").await;
        manager.reissue().await.expect("re-issue");
        let now = presented_cert(w.webhook.addr, &ca).await;
        assert!(
            !served.contains(&now),
            "a new certificate is served after re-issue"
        );
        served.push(now);
    }
    progress("writers to be answered on the last certificate").await;
    let _ = stop_tx.send(true);
    for writer in writers {
        writer.await.expect("writer");
    }
    // The API server keeps its webhook connections alive, so it may not have handshaken since
    // the rotations: point the configurations at `localhost` (a new client in the API server)
    // and require a new successful handshake, which can only present the re-issued certificate.
    let handshakes = w.metrics.admission.handshakes_ok();
    let url = |path: &str| json!(format!("https://localhost:{}{path}", w.webhook.addr.port()));
    let switch = |path: &str| json!([{"op": "replace", "path": "/webhooks/0/clientConfig/url", "value": url(path)}]);
    Api::<ValidatingWebhookConfiguration>::all(w.env.client.clone())
        .patch(
            &w.config_name,
            &PatchParams::default(),
            &Patch::<Value>::Json(serde_json::from_value(switch(VALIDATE_PATH)).expect("patch")),
        )
        .await
        .expect("switch the validating URL");
    Api::<MutatingWebhookConfiguration>::all(w.env.client.clone())
        .patch(
            &w.config_name,
            &PatchParams::default(),
            &Patch::<Value>::Json(serde_json::from_value(switch(MUTATE_PATH)).expect("patch")),
        )
        .await
        .expect("switch the mutating URL");
    let mut after = 0;
    let _ = wait_for(
        "the API server to handshake again",
        || {
            after += 1;
            let name = format!("after-{after}");
            let w = w.clone();
            let failures = failures.clone();
            async move {
                if let Err(e) = w
                    .create_session(&name, running("loop", "100m", "128Mi"))
                    .await
                {
                    failures
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(e.to_string());
                }
                w.metrics.admission.handshakes_ok()
            }
        },
        |now| *now > handshakes,
    )
    .await;
    let failures = failures.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let created = created.load(Ordering::Relaxed);
    eprintln!("created {created} sessions across 3 rotations");
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(created >= 8, "only {created} sessions created");
    // The Secret holds the certificate being served, and the caBundle is unchanged.
    assert_eq!(ca_of(&w).await, ca);
    match Arc::try_unwrap(w) {
        Ok(w) => w.cleanup().await,
        Err(_) => panic!("writers still hold the environment"),
    }
}

#[tokio::test]
async fn admission_file_certificates_reload_on_change() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let now = time::OffsetDateTime::now_utc();
    let (ca, ca_key) = new_ca(now).expect("CA");
    let names = vec!["127.0.0.1".to_string()];
    let write = |cert: &str, key: &str| {
        std::fs::write(dir.path().join("tls.crt"), cert).expect("write cert");
        std::fs::write(dir.path().join("tls.key"), key).expect("write key");
    };
    let (cert, key, _) = issue_serving(&ca_key, &names, now).expect("serving");
    write(&cert, &key);
    let files = CertFiles {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
    };
    let w = WebhookEnv::new("adm-files", Certs::Files(files, ca.clone())).await;
    let before = presented_cert(w.webhook.addr, &ca).await;
    let (cert, key, _) = issue_serving(&ca_key, &names, now).expect("second serving");
    write(&cert, &key);
    wait_for(
        "the new certificate file to be served",
        || presented_cert(w.webhook.addr, &ca),
        |now| *now != before,
    )
    .await;
    // A broken file pair keeps the previous certificate: once the watcher has counted the
    // unusable pair (evidence it read the change), the second certificate is still served.
    let unusable = |w: &WebhookEnv| {
        w.metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with("streamspace_admission_certificate_reloads_total"))
            .filter(|l| l.contains(r#"mode="files""#) && !l.contains(r#"result="ok""#))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let unusable_before = unusable(&w);
    write("garbage", "garbage");
    wait_for(
        "the watcher to refuse the broken pair",
        || async { unusable(&w) },
        |n| *n > unusable_before,
    )
    .await;
    let after = presented_cert(w.webhook.addr, &ca).await;
    assert_ne!(after, before);
    w.create_session("s1", running("alice", "1", "1Gi"))
        .await
        .expect("admitted through the reloaded certificate");
    w.cleanup().await;
}

#[tokio::test]
async fn admission_malformed_reviews_get_clear_errors() {
    let w = WebhookEnv::new("adm-malformed", Certs::SelfManaged).await;
    let ca = ca_of(&w).await;
    let addr = w.webhook.addr;
    for path in [VALIDATE_PATH, MUTATE_PATH] {
        let (status, body) = post(addr, &ca, path, b"this is not json").await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body.contains("the body is not an AdmissionReview"),
            "{body}"
        );
        let (status, body) = post(addr, &ca, path, b"{}").await;
        assert_eq!(status, 400, "{body}");
        let (status, body) = post(
            addr,
            &ca,
            path,
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("has no request"), "{body}");
        let pod = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "1234", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "operation": "CREATE", "namespace": "x", "name": "p",
                "userInfo": {"username": "test"},
                "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}
            }
        });
        let (status, body) = post(addr, &ca, path, pod.to_string().as_bytes()).await;
        assert_eq!(status, 200, "{body}");
        let review: Value = serde_json::from_str(&body).expect("JSON review");
        assert_eq!(review["response"]["uid"], json!("1234"));
        assert_eq!(review["response"]["allowed"], json!(true));
        assert!(review["response"].get("patch").is_none(), "{body}");
        // A Session whose spec has the wrong types is refused with a reason, not a panic.
        let mut bad = pod.clone();
        bad["request"]["kind"] =
            json!({"group": "stream.space", "version": "v1alpha1", "kind": "Session"});
        bad["request"]["object"] = json!({"apiVersion": "stream.space/v1alpha1", "kind": "Session",
            "metadata": {"name": "s"}, "spec": {"user": 7, "template": ["x"]}});
        let (status, body) = post(addr, &ca, path, bad.to_string().as_bytes()).await;
        assert_eq!(status, 200, "{body}");
    }
    // Still serving the API server afterwards.
    w.create_session("s1", running("alice", "1", "1Gi"))
        .await
        .expect("admitted");
    let text = w.metrics.encode();
    assert!(text.contains(r#"result="invalid""#), "{text}");
    assert!(text.contains(r#"result="ignored""#), "{text}");
    w.cleanup().await;
}

#[tokio::test]
async fn admission_concurrent_creates_never_overshoot() {
    let w = Arc::new(WebhookEnv::new("adm-race", Certs::SelfManaged).await);
    w.policy(
        "default",
        json!({"kind": "Default"}),
        json!({"maxSessions": 3, "maxCpu": "64", "maxMemory": "64Gi"}),
    )
    .await;
    let admitted = race_creates(&w, 12, "session quota exceeded: 3/3").await;
    assert_eq!(admitted, 3, "exactly the quota is admitted");
    match Arc::try_unwrap(w) {
        Ok(w) => w.cleanup().await,
        Err(_) => panic!("tasks still hold the environment"),
    }
}

#[tokio::test]
async fn admission_webhook_down_fails_closed_with_a_clear_error() {
    let mut w = WebhookEnv::new("adm-down", Certs::SelfManaged).await;
    w.create_session("s1", running("alice", "1", "1Gi"))
        .await
        .expect("admitted while up");
    // Stop serving: the listener closes, connections are refused.
    let port = w.webhook.addr.port();
    let stopped = std::mem::replace(&mut w._stop, watch::channel(false).0);
    let _ = stopped.send(true);
    wait_for(
        "the webhook port to close",
        || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
        },
        |closed| *closed,
    )
    .await;
    let error = w
        .create_session("s2", running("alice", "1", "1Gi"))
        .await
        .expect_err("failurePolicy Fail refuses while the webhook is down");
    let text = error.to_string();
    assert!(text.contains("failed calling webhook"), "{text}");
    // Namespaces the webhook does not select are unaffected.
    let other = TestEnv::without_controller("adm-down-other").await;
    other
        .api::<Session>()
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "stream.space/v1alpha1", "kind": "Session",
                "metadata": {"name": "s"}, "spec": running("alice", "1", "1Gi")
            }))
            .expect("session"),
        )
        .await
        .expect("unselected namespace unaffected");
    other.cleanup().await;
    w.cleanup().await;
}

#[tokio::test]
async fn admission_legacy_enforcement_admits_everything_but_still_defaults() {
    let w = WebhookEnv::with_quota_flag("adm-legacy", Certs::SelfManaged, FlagMode::Legacy).await;
    w.policy(
        "default",
        json!({"kind": "Default"}),
        json!({"maxSessions": 1}),
    )
    .await;
    for i in 0..3 {
        let session = w
            .create_session(&format!("s{i}"), running("alice", "1", "1Gi"))
            .await
            .expect("legacy mode leaves quotas to the old API");
        let labels = session.metadata.labels.unwrap_or_default();
        assert_eq!(labels.get("user").map(String::as_str), Some("alice"));
    }
    w.cleanup().await;
}
