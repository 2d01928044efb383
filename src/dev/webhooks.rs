//! The admission webhooks on `dev`'s local control plane: configurations pointing at the
//! loopback listener, a self-managed certificate whose CA `dev` writes into them, and a wait
//! until the API server really calls them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::FIELD_MANAGER;
use crate::admission::certs::SelfManagedConfig;
use crate::admission::{
    self, AdmissionConfig, CertSource, MUTATE_PATH, SharedCaches, VALIDATE_PATH, Webhook,
};
use crate::crd::Session;
use crate::metrics::Metrics;
use crate::ownership::index::FlagIndex;

/// Name of both webhook configurations `dev` registers.
pub const CONFIG_NAME: &str = "streamspace-dev";
/// Secret of the self-managed certificate.
const SECRET: &str = "streamspace-dev-webhook-tls";
/// Longest wait for the API server to start calling new webhooks.
const REGISTRATION_WAIT: Duration = Duration::from_secs(30);

/// Where the webhooks serve and read.
pub struct DevWebhooks {
    pub listener: tokio::net::TcpListener,
    /// Namespace of the certificate Secret, the QuotaPolicies and the quota ledgers.
    pub namespace: String,
    /// Namespace of the Sessions (`None`: all).
    pub session_namespace: Option<String>,
    pub flags: Arc<FlagIndex>,
    pub caches: SharedCaches,
}

fn entry(name: &str, url: String) -> Value {
    json!({
        "name": name,
        "clientConfig": {"url": url},
        "rules": [{
            "apiGroups": ["stream.space"], "apiVersions": ["v1alpha1"],
            "operations": ["CREATE", "UPDATE"], "resources": ["sessions"], "scope": "Namespaced"
        }],
        "failurePolicy": "Fail",
        "sideEffects": "NoneOnDryRun",
        "timeoutSeconds": 10,
        "admissionReviewVersions": ["v1"]
    })
}

/// Registers the configurations and starts the webhook server (its caches load once the
/// supervisor runs; [`wait_until_called`] tells when the API server calls it). The server stops
/// when `stopping` resolves.
pub async fn start(
    client: &Client,
    hooks: DevWebhooks,
    metrics: &Metrics,
    stopping: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Webhook> {
    let port = hooks.listener.local_addr()?.port();
    let mut mutating = entry(
        "defaults.stream.space",
        format!("https://127.0.0.1:{port}{MUTATE_PATH}"),
    );
    mutating["reinvocationPolicy"] = json!("Never");
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .patch(
            CONFIG_NAME,
            &params,
            &Patch::Apply(json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingWebhookConfiguration",
                "metadata": {"name": CONFIG_NAME},
                "webhooks": [entry("quota.stream.space", format!("https://127.0.0.1:{port}{VALIDATE_PATH}"))]
            })),
        )
        .await
        .context("registering the validating webhook")?;
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch(
            CONFIG_NAME,
            &params,
            &Patch::Apply(json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": CONFIG_NAME},
                "webhooks": [mutating]
            })),
        )
        .await
        .context("registering the mutating webhook")?;
    let config = AdmissionConfig {
        addr: hooks.listener.local_addr()?,
        certs: CertSource::SelfManaged(SelfManagedConfig {
            namespace: hooks.namespace.clone(),
            secret: SECRET.into(),
            names: vec!["127.0.0.1".into(), "localhost".into()],
            validating_configs: vec![CONFIG_NAME.into()],
            mutating_configs: vec![CONFIG_NAME.into()],
        }),
        flags: hooks.flags,
        policy_namespace: Some(hooks.namespace.clone()),
        session_namespace: hooks.session_namespace.clone(),
        ledger_namespace: hooks.namespace.clone(),
        client_ca: None,
        allow_disabled_timers: false,
    };
    let webhook = admission::start_on(
        client.clone(),
        config,
        hooks.listener,
        Some(hooks.caches),
        metrics.admission.clone(),
        stopping,
    )
    .await
    .context("starting the admission webhooks")?;
    Ok(webhook)
}

/// Dry-runs a Session until the mutating webhook's defaults (its `user` label) come back: the
/// API server picks new configurations up asynchronously.
pub async fn wait_until_called(client: &Client, namespace: &str) -> anyhow::Result<()> {
    let api: Api<Session> = Api::namespaced(client.clone(), namespace);
    let probe: Session = serde_json::from_value(json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "Session",
        "metadata": {"name": "dev-webhook-probe"},
        "spec": {"user": "probe", "template": "none", "state": "hibernated"}
    }))?;
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let deadline = tokio::time::Instant::now() + REGISTRATION_WAIT;
    loop {
        let labelled = api
            .create(&dry_run, &probe)
            .await
            .ok()
            .and_then(|s| s.metadata.labels)
            .is_some_and(|l| l.get("user").map(String::as_str) == Some("probe"));
        if labelled {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the API server did not call the admission webhooks within {REGISTRATION_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
