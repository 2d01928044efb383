//! Random request bodies against the parsers that face the network: the admission webhook's
//! handlers (AdmissionReview bodies as the API server would send them, driven through the real
//! router with caches loaded from the real API server) and the API's request bodies (session
//! create and patch, flag override, node actions). The property: no panic, and every input
//! answered; the slowest input and the total time are printed.
//!
//! Inputs mix raw bytes, arbitrary JSON and structure-aware documents (the real field names
//! with awkward values: huge or negative quantities, unknown enums, deep nesting), some of them
//! cut or with a byte flipped. `FUZZ_CASES` sets the number of inputs per target (default
//! 2,000); `FUZZ_SEED` replays a run (the seed is printed).
//!
//! ```sh
//! FUZZ_CASES=100000 cargo test --test e2e fuzz_ -- --nocapture --test-threads=1
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};
use streamspace_controller::admission::{self, AdmissionConfig, CertSource};
use streamspace_controller::api::flags::{OverrideRequest, build_override};
use streamspace_controller::api::nodes::request::{
    self as nodes, DrainRequest, LabelRequest, TaintRequest,
};
use streamspace_controller::api::sessions::request as sessions;
use streamspace_controller::crd::TemplateSpec;
use streamspace_controller::metrics::Metrics;
use streamspace_controller::ownership::index::FlagIndex;
use tower::ServiceExt;

use crate::support::TestEnv;

/// Inputs per target unless `FUZZ_CASES` says otherwise: enough to catch shallow panics in CI.
const DEFAULT_CASES: u32 = 2_000;

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// A runner seeded from `FUZZ_SEED`, else from the clock (printed, to replay a failure).
fn runner(target: &str) -> TestRunner {
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| Timestamp::now().as_nanosecond() as u64);
    println!("{target}: FUZZ_SEED={seed}");
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
    )
}

fn generate<S: Strategy>(runner: &mut TestRunner, strategy: &S) -> S::Value {
    match strategy.new_tree(runner) {
        Ok(tree) => tree.current(),
        Err(reason) => panic!("generating an input: {reason}"),
    }
}

/// Slowest input and total time of one target.
#[derive(Default)]
struct Timing {
    inputs: u32,
    slowest: Duration,
    total: Duration,
}

impl Timing {
    fn record(&mut self, took: Duration) {
        self.inputs += 1;
        self.slowest = self.slowest.max(took);
        self.total += took;
    }

    fn print(&self, target: &str) {
        println!(
            "{target}: {} inputs, slowest {:?}, total {:?}, mean {:?}",
            self.inputs,
            self.slowest,
            self.total,
            self.total / self.inputs.max(1)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies

/// Values that sit on the edges of what the parsers accept.
const AWKWARD: &[&str] = &[
    "",
    " ",
    "running",
    "hibernated",
    "terminated",
    "Running",
    "legacy",
    "shadow",
    "controller",
    "100m",
    "64",
    "65",
    "0",
    "-1",
    "1Gi",
    "512Gi",
    "513Gi",
    "1Ei",
    "9999999999999999999999",
    "1e309",
    "0.0001m",
    "NaN",
    "1.5",
    "+1",
    "30m",
    "0s",
    "1s",
    "8h",
    "99999999999999h",
    "kubernetes.io/hostname",
    "a/b/c",
    "NoSchedule",
    "NoExecute",
    "PreferNoSchedule",
    "alice",
    "-alice",
    "a_b",
    "firefox",
    "CREATE",
    "UPDATE",
    "DELETE",
    "CONNECT",
    "\u{0}",
    "\u{202e}",
];

/// Field names of every body under test, so structured inputs reach past the first check.
const FIELDS: &[&str] = &[
    "user",
    "template",
    "state",
    "resources",
    "memory",
    "cpu",
    "requests",
    "limits",
    "persistentHome",
    "idleTimeout",
    "maxSessionDuration",
    "tags",
    "mode",
    "percent",
    "ttl",
    "reason",
    "key",
    "value",
    "effect",
    "grace_period_seconds",
    "gpu",
    "nvidia.com/gpu",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(AWKWARD).prop_map(str::to_string),
        2 => "[a-z0-9./-]{0,70}",
        1 => any::<String>(),
        1 => "[a-z]{250,300}",
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1000i64..1000).prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number(),
        text().prop_map(Value::from),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(FIELDS).prop_map(str::to_string),
        1 => "[a-zA-Z]{0,8}",
    ]
}

/// Arbitrary JSON, biased to the field names under test.
fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// `{cpu, memory}` amounts, sometimes nested as requests and limits.
fn resources() -> impl Strategy<Value = Value> {
    let amounts = (text(), text(), any::<bool>())
        .prop_map(|(cpu, memory, gpu)| {
            let mut amounts = json!({"cpu": cpu, "memory": memory});
            if gpu {
                amounts["nvidia.com/gpu"] = json!("1");
            }
            amounts
        })
        .boxed();
    prop_oneof![
        amounts.clone(),
        (amounts.clone(), amounts).prop_map(|(r, l)| json!({"requests": r, "limits": l})),
        json_value(),
    ]
}

/// A body with the real field names (a random subset) and awkward values.
fn structured() -> impl Strategy<Value = Value> {
    let value = prop_oneof![3 => leaf(), 1 => resources(), 1 => json_value()];
    prop::collection::btree_map(prop::sample::select(FIELDS), value, 0..8).prop_map(|fields| {
        Value::Object(
            fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    })
}

/// Serialised, then sometimes cut short or with one byte changed.
fn damaged(document: impl Strategy<Value = Value>) -> impl Strategy<Value = Vec<u8>> {
    (document, any::<u8>(), any::<prop::sample::Index>(), 0u8..4).prop_map(
        |(document, byte, at, damage)| {
            let mut bytes = serde_json::to_vec(&document).unwrap_or_default();
            if !bytes.is_empty() {
                let at = at.index(bytes.len());
                match damage {
                    0 => bytes.truncate(at),
                    1 => bytes[at] = byte,
                    _ => {}
                }
            }
            bytes
        },
    )
}

/// Any body: raw bytes, arbitrary JSON, or structured documents (some damaged).
fn body(document: BoxedStrategy<Value>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..256),
        2 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        5 => document.clone().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        2 => damaged(document),
    ]
}

// ---------------------------------------------------------------------------------------------
// API request bodies

/// What the API's handlers do with a body before any Kubernetes call, for every body kind.
fn parse_all(bytes: &[u8], template: Option<&TemplateSpec>, name: &str) {
    if let Ok(new) = sessions::parse_create(bytes) {
        if let Some(template) = template {
            let _ = sessions::resolve_resources(&new.resources, template);
        }
        let _ = sessions::session_name(&new.user, &new.template, "abcd1234");
    }
    let _ = sessions::parse_state(bytes);
    if let Ok(request) = serde_json::from_slice::<OverrideRequest>(bytes) {
        let _ = build_override(&request, "fuzz", Timestamp::now());
    }
    let _ = nodes::parse_body::<LabelRequest>(bytes, false).and_then(nodes::set_label);
    let _ = nodes::parse_body::<TaintRequest>(bytes, false).and_then(nodes::add_taint);
    let _ = nodes::parse_body::<DrainRequest>(bytes, true).and_then(nodes::drain);
    let _ = nodes::remove_label(name.to_string());
    let _ = nodes::remove_taint(name.to_string());
}

#[test]
fn fuzz_api_request_bodies() {
    let mut runner = runner("api bodies");
    let input = (
        body(structured().boxed()),
        resources().prop_map(|r| json!({"defaultResources": r})),
        text(),
    );
    let mut timing = Timing::default();
    for _ in 0..cases() {
        let (bytes, template, name) = generate(&mut runner, &input);
        let template: Option<TemplateSpec> = serde_json::from_value(template).ok();
        let started = Instant::now();
        parse_all(&bytes, template.as_ref(), &name);
        timing.record(started.elapsed());
    }
    timing.print("api bodies");
}

// ---------------------------------------------------------------------------------------------
// AdmissionReview bodies

/// A Session AdmissionReview as the API server sends it, with an awkward spec.
fn admission_review(namespace: String) -> impl Strategy<Value = Value> {
    let spec = prop_oneof![4 => structured(), 1 => json_value()];
    let old = prop::option::of(structured());
    let operation = prop::sample::select(&["CREATE", "UPDATE", "DELETE", "CONNECT", "create"][..]);
    let kind = prop::sample::select(&["Session", "Template", "session"][..]);
    (spec, old, operation, kind, text(), any::<bool>(), any::<bool>()).prop_map(
        move |(spec, old, operation, kind, name, dry_run, own_namespace)| {
            let namespace = if own_namespace {
                namespace.clone()
            } else {
                "elsewhere".to_string()
            };
            let object = |spec: Value| {
                json!({
                    "apiVersion": "stream.space/v1alpha1", "kind": kind,
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": spec,
                })
            };
            json!({
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {
                    "uid": "0b8f7e0a-fuzz",
                    "kind": {"group": "stream.space", "version": "v1alpha1", "kind": kind},
                    "resource": {"group": "stream.space", "version": "v1alpha1", "resource": "sessions"},
                    "name": name, "namespace": namespace, "operation": operation,
                    "userInfo": {"username": "fuzz"},
                    "object": object(spec),
                    "oldObject": old.map(object),
                    "dryRun": dry_run,
                },
            })
        },
    )
}

#[tokio::test]
async fn fuzz_admission_review_bodies() {
    let env = TestEnv::without_controller("fuzz-admission").await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let files = crate::api_tls::write_cert(dir.path(), "webhook").await;
    let config = AdmissionConfig {
        addr: "127.0.0.1:0".parse().expect("address"),
        certs: CertSource::Files(files),
        flags: FlagIndex::new(env.flag_settings()),
        policy_namespace: Some(env.namespace.clone()),
        session_namespace: Some(env.namespace.clone()),
        ledger_namespace: env.namespace.clone(),
        client_ca: None,
        allow_disabled_timers: false,
    };
    let metrics = Arc::new(Metrics::default());
    let webhook = admission::start(
        env.client.clone(),
        config,
        metrics.admission.clone(),
        std::future::pending(),
    )
    .await
    .expect("start the webhooks");
    crate::support::wait_for("the webhook caches", || webhook.ready(), |ready| *ready).await;
    let router = admission::router(webhook.state.clone());
    let mut runner = runner("admission reviews");
    let input = body(admission_review(env.namespace.clone()).boxed());
    for path in [admission::VALIDATE_PATH, admission::MUTATE_PATH] {
        let mut timing = Timing::default();
        for _ in 0..cases() {
            let bytes = generate(&mut runner, &input);
            let request = Request::post(path)
                .header("content-type", "application/json")
                .body(Body::from(bytes.clone()))
                .expect("request");
            let started = Instant::now();
            let response = router.clone().oneshot(request).await.expect("infallible");
            let status = response.status();
            let answer = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            timing.record(started.elapsed());
            assert!(
                status == StatusCode::OK || status == StatusCode::BAD_REQUEST,
                "{path} answered {status} to {}",
                String::from_utf8_lossy(&bytes)
            );
            let review: Value = serde_json::from_slice(&answer).unwrap_or_else(|e| {
                panic!(
                    "{path}: the answer to {} is not JSON: {e}",
                    String::from_utf8_lossy(&bytes)
                )
            });
            // An AdmissionReview answer for the API server: 400s say why, others decide.
            let response = &review["response"];
            assert!(
                response["allowed"].is_boolean() || status == StatusCode::BAD_REQUEST,
                "{path}: {review}"
            );
        }
        timing.print(path);
    }
    drop(webhook);
    env.cleanup().await;
}
