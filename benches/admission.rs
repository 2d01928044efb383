//! Latency of the admission webhooks with many Sessions in the cache.
//!
//! Starts the local control plane, creates `BENCH_EXISTING` running Sessions (default 10,000)
//! for 2,000 users before any webhook is registered, then starts the webhooks in-process
//! (self-managed certificate) and measures:
//! - at the webhook: the handler (JSON in, decision, JSON out) called through the router,
//!   `BENCH_CALLS` times (default 2,000) for each webhook: the quota webhook once with dry-run
//!   reviews (reads the user's ledger), once with real ones for users without a ledger yet
//!   (a read and a create) and once more with real ones for the same users (the ledger this
//!   process wrote last: one guarded write);
//! - as seen by a client: `BENCH_CREATES` sequential Session creates (default 300) through the
//!   API server, in a namespace the webhooks select and, as the baseline, in one they do not.
//!
//! Every latency is printed beside the API server's one-write latency measured just before.
//!
//! Run with `cargo bench --bench admission`.

mod support;

use std::time::{Duration, Instant};

use axum::body::Body;
use futures::{StreamExt, stream};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use streamspace_controller::admission::certs::SelfManagedConfig;
use streamspace_controller::admission::{
    self, AdmissionConfig, CertSource, MUTATE_PATH, VALIDATE_PATH,
};
use streamspace_controller::controller::FIELD_MANAGER;
use streamspace_controller::crd::{QuotaPolicy, Session, Template};
use streamspace_controller::devcluster::{ControlPlane, ControlPlaneOptions};
use streamspace_controller::metrics::Metrics;
use streamspace_controller::ownership::index::{FlagIndex, FlagSettings};
use support::floor::{self, ms};
use support::results::Results;
use support::{percentile, size};
use tower::ServiceExt;

const NAMESPACE: &str = "bench-admission";
const BASELINE_NAMESPACE: &str = "bench-admission-baseline";
const CONFIG: &str = "bench-admission";
const USERS: usize = 2000;
const IN_FLIGHT: usize = 16;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let existing = size("BENCH_EXISTING", 10_000, 20);
    let calls = size("BENCH_CALLS", 2_000, 5);
    let creates = size("BENCH_CREATES", 300, 3);
    let results = Results::new("admission")?;
    let plane = ControlPlane::start(ControlPlaneOptions::default()).await?;
    let client = plane.client().await?;
    streamspace_controller::crd::install::install(&client, FIELD_MANAGER).await?;
    let floor = floor::measure(&client, 1).await?;
    let write_p50 = ms(floor.write_p50);
    for (name, labelled) in [(NAMESPACE, true), (BASELINE_NAMESPACE, false)] {
        let labels = if labelled {
            json!({"bench": "admission"})
        } else {
            json!({})
        };
        Api::<Namespace>::all(client.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))?,
            )
            .await?;
        Api::<Template>::namespaced(client.clone(), name)
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "stream.space/v1alpha1", "kind": "Template",
                    "metadata": {"name": "desktop"},
                    "spec": {"displayName": "Desktop", "baseImage": "desktop:latest",
                             "defaultResources": {"cpu": "100m", "memory": "128Mi"}}
                }))?,
            )
            .await?;
    }
    Api::<QuotaPolicy>::namespaced(client.clone(), NAMESPACE)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "stream.space/v1alpha1", "kind": "QuotaPolicy",
                "metadata": {"name": "default"},
                "spec": {"subject": {"kind": "Default"},
                         "limits": {"maxSessions": 1000, "maxCpu": "1000", "maxMemory": "1Ti"}}
            }))?,
        )
        .await?;

    let started = Instant::now();
    create_many(&client, existing).await?;
    println!(
        "existing sessions             {existing} (created in {:.1} s)",
        started.elapsed().as_secs_f64()
    );

    let metrics = Metrics::default();
    let webhook = admission::start(
        client.clone(),
        AdmissionConfig {
            addr: "127.0.0.1:0".parse()?,
            certs: CertSource::SelfManaged(SelfManagedConfig {
                namespace: NAMESPACE.into(),
                secret: "webhook-tls".into(),
                names: vec!["127.0.0.1".into()],
                validating_configs: vec![CONFIG.into()],
                mutating_configs: vec![CONFIG.into()],
            }),
            // No flag objects under this prefix: the controller (this webhook) enforces.
            flags: FlagIndex::new(FlagSettings {
                name_prefix: "bench-admission-".into(),
                ..FlagSettings::default()
            }),
            policy_namespace: Some(NAMESPACE.into()),
            session_namespace: Some(NAMESPACE.into()),
            ledger_namespace: NAMESPACE.into(),
            client_ca: None,
            allow_disabled_timers: false,
        },
        metrics.admission.clone(),
        std::future::pending(),
    )
    .await?;
    anyhow::ensure!(webhook.ready().await, "webhook caches did not load");
    while webhook_sessions(&webhook) < existing {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let router = admission::router(webhook.state.clone());
    // The second reserving pass admits new sessions of the same users: their ledgers exist
    // and this process wrote them last (the first pass creates each one).
    let passes = [
        ("validate (dry run)", VALIDATE_PATH, true, 0),
        ("validate (reserving, new ledger)", VALIDATE_PATH, false, 0),
        (
            "validate (reserving, known ledger)",
            VALIDATE_PATH,
            false,
            calls,
        ),
        ("mutate", MUTATE_PATH, true, 0),
    ];
    for (name, path, dry_run, offset) in passes {
        let mut samples = Vec::with_capacity(calls);
        for i in offset..offset + calls {
            let body = review(i, dry_run);
            let request = axum::http::Request::post(path)
                .header("content-type", "application/json")
                .body(Body::from(body))?;
            let t = Instant::now();
            let response = router.clone().oneshot(request).await?;
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await?;
            samples.push(t.elapsed());
            anyhow::ensure!(
                serde_json::from_slice::<Value>(&bytes)?["response"]["allowed"] == json!(true),
                "{name} call {i} was not allowed: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        report(
            &results,
            &format!("at the webhook: {name}"),
            &samples,
            write_p50,
        )?;
    }

    register(&client, &webhook).await?;
    manager_refresh(&webhook).await?;
    wait_active(&client).await?;
    for (label, namespace) in [
        ("client create, webhooks", NAMESPACE),
        ("client create, baseline", BASELINE_NAMESPACE),
    ] {
        let api: Api<Session> = Api::namespaced(client.clone(), namespace);
        let mut samples = Vec::with_capacity(creates);
        for i in 0..creates {
            let session = session(&format!("c-{i}"), &format!("client-{}", i % 100));
            let t = Instant::now();
            api.create(&PostParams::default(), &session).await?;
            samples.push(t.elapsed());
        }
        report(&results, label, &samples, write_p50)?;
    }
    let _ = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .delete(CONFIG, &Default::default())
        .await;
    let _ = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .delete(CONFIG, &Default::default())
        .await;
    drop(webhook);
    plane.stop().await;
    Ok(())
}

fn webhook_sessions(webhook: &admission::Webhook) -> usize {
    webhook.state.sessions().state().len()
}

async fn manager_refresh(webhook: &admission::Webhook) -> anyhow::Result<()> {
    if let Some(manager) = &webhook.self_managed {
        manager.refresh(false).await?;
    }
    Ok(())
}

fn session(name: &str, user: &str) -> Session {
    serde_json::from_value(json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "Session",
        "metadata": {"name": name},
        "spec": {"user": user, "template": "desktop", "state": "running",
                 "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}
    }))
    .unwrap_or_else(|e| unreachable!("static session JSON: {e}"))
}

async fn create_many(client: &Client, n: usize) -> anyhow::Result<()> {
    let api: Api<Session> = Api::namespaced(client.clone(), NAMESPACE);
    let results: Vec<kube::Result<Session>> = stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                api.create(
                    &PostParams::default(),
                    &session(&format!("s-{i}"), &format!("user-{}", i % USERS)),
                )
                .await
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let failures = results.iter().filter(|r| r.is_err()).count();
    anyhow::ensure!(failures == 0, "{failures} creates failed");
    Ok(())
}

/// An AdmissionReview for creating a session of an existing user (5 running sessions each);
/// a real one (not `dry_run`) writes a reservation into the user's ledger.
fn review(i: usize, dry_run: bool) -> Vec<u8> {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": format!("uid-{i}"),
            "kind": {"group": "stream.space", "version": "v1alpha1", "kind": "Session"},
            "resource": {"group": "stream.space", "version": "v1alpha1", "resource": "sessions"},
            "operation": "CREATE", "namespace": NAMESPACE, "name": format!("new-{i}"),
            "userInfo": {"username": "bench"}, "dryRun": dry_run,
            "object": {
                "apiVersion": "stream.space/v1alpha1", "kind": "Session",
                "metadata": {"name": format!("new-{i}"), "namespace": NAMESPACE},
                "spec": {"user": format!("user-{}", i % USERS), "template": "desktop",
                         "state": "running",
                         "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}
            }
        }
    })
    .to_string()
    .into_bytes()
}

async fn register(client: &Client, webhook: &admission::Webhook) -> anyhow::Result<()> {
    let port = webhook.addr.port();
    let entry = |name: &str, path: &str| {
        json!({
            "name": name,
            "clientConfig": {"url": format!("https://127.0.0.1:{port}{path}")},
            "rules": [{"apiGroups": ["stream.space"], "apiVersions": ["v1alpha1"],
                       "operations": ["CREATE", "UPDATE"], "resources": ["sessions"]}],
            "namespaceSelector": {"matchLabels": {"bench": "admission"}},
            "failurePolicy": "Fail", "sideEffects": "NoneOnDryRun", "timeoutSeconds": 5,
            "admissionReviewVersions": ["v1"]
        })
    };
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": CONFIG},
                "webhooks": [entry("quota.stream.space", VALIDATE_PATH)]
            }))?,
        )
        .await?;
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": CONFIG},
                "webhooks": [entry("defaults.stream.space", MUTATE_PATH)]
            }))?,
        )
        .await?;
    Ok(())
}

/// Waits until a dry-run create comes back labelled, i.e. the API server calls the webhooks.
async fn wait_active(client: &Client) -> anyhow::Result<()> {
    let api: Api<Session> = Api::namespaced(client.clone(), NAMESPACE);
    let probe = session("probe", "probe");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let dry = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        if let Ok(created) = api.create(&dry, &probe).await
            && created
                .metadata
                .labels
                .is_some_and(|l| l.contains_key("user"))
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "webhooks never became active");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Records p50, p99 and max of `samples`, p50 and p99 beside the API server's write latency.
fn report(
    results: &Results,
    label: &str,
    samples: &[Duration],
    write_p50: f64,
) -> anyhow::Result<()> {
    println!("{label}: n={}", samples.len());
    results.record(
        &format!("{label} p50"),
        ms(percentile(samples, 50.0)),
        "ms",
        Some(write_p50),
    )?;
    results.record(
        &format!("{label} p99"),
        ms(percentile(samples, 99.0)),
        "ms",
        Some(write_p50),
    )?;
    results.record(
        &format!("{label} max"),
        ms(percentile(samples, 100.0)),
        "ms",
        None,
    )
}
