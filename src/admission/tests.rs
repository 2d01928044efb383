//! The webhooks' request handling without a cluster: reviews go through the router into a
//! state whose caches are filled with synthetic watch events. Paths that need the ledger (an
//! admission the controller's quota decides) are covered end to end in tests/e2e.

use std::collections::BTreeMap;

use axum::body::Body;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::review::{quota_check, reservation_target};
use super::*;
use crate::crd::{FeatureFlagSpec, FlagMode, Session, SessionSpec};
use crate::metrics::Metrics;
use crate::ownership::ResourceType;
use crate::ownership::index::FlagSettings;
use crate::quota;
use kube::core::admission::Operation;

/// A store that has had its initial list, holding `objects`.
fn loaded<K>(objects: Vec<K>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let mut writer: Writer<K> = Writer::default();
    let store = writer.as_reader();
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(object));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    store
}

/// A state with empty caches and the `quota` flag in `mode`. Its client points nowhere: these
/// tests only take paths that never reach the ledger.
fn state(mode: FlagMode, allow_disabled_timers: bool) -> Arc<AdmissionState> {
    let config = kube::Config::new("https://127.0.0.1:1".parse().expect("url"));
    let client = Client::try_from(config).expect("client");
    let flags = FlagIndex::fixed(
        FlagSettings::default(),
        BTreeMap::from([(
            ResourceType::Quota,
            FeatureFlagSpec {
                mode,
                percent: 100,
                override_: None,
            },
        )]),
    );
    Arc::new(AdmissionState {
        policies: loaded(vec![]),
        sessions: loaded(vec![]),
        templates: loaded(vec![]),
        flags,
        ledger: LedgerStore::new(client, "ns"),
        allow_disabled_timers,
        metrics: Metrics::default().admission,
    })
}

fn review(operation: &str, spec: Value, old_spec: Option<Value>, dry_run: bool) -> Value {
    let mut request = json!({
        "uid": "review-1",
        "kind": {"group": "stream.space", "version": "v1alpha1", "kind": "Session"},
        "resource": {"group": "stream.space", "version": "v1alpha1", "resource": "sessions"},
        "operation": operation, "namespace": "ns", "name": "s1",
        "userInfo": {"username": "someone"}, "dryRun": dry_run,
        "object": {"apiVersion": "stream.space/v1alpha1", "kind": "Session",
                   "metadata": {"name": "s1", "namespace": "ns"}, "spec": spec}
    });
    if let Some(old) = old_spec {
        request["oldObject"] = json!({"apiVersion": "stream.space/v1alpha1", "kind": "Session",
            "metadata": {"name": "s1", "namespace": "ns", "generation": 4}, "spec": old});
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
}

/// Posts `body` to `path`: (HTTP status, the review's response).
async fn post(state: &Arc<AdmissionState>, path: &str, body: Vec<u8>) -> (u16, Value) {
    let request = axum::http::Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("request");
    let response = router(state.clone())
        .oneshot(request)
        .await
        .expect("infallible");
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let value: Value = serde_json::from_slice(&bytes).expect("JSON answer");
    (status, value["response"].clone())
}

fn spec(value: Value) -> SessionSpec {
    serde_json::from_value(value).expect("spec")
}

#[tokio::test]
async fn bodies_that_are_not_reviews_get_400_and_a_reason() {
    let state = state(FlagMode::Controller, false);
    let rows: &[(&[u8], &str)] = &[
        (b"{not json", "the body is not an AdmissionReview"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
            "the AdmissionReview has no request",
        ),
    ];
    for path in [VALIDATE_PATH, MUTATE_PATH] {
        for (body, reason) in rows {
            let (status, response) = post(&state, path, body.to_vec()).await;
            assert_eq!(status, 400, "{path}");
            assert_eq!(response["allowed"], json!(false));
            let message = response["status"]["message"].as_str().unwrap_or_default();
            assert!(message.contains(reason), "{path}: {message}");
        }
    }
}

#[tokio::test]
async fn other_kinds_and_subresources_pass_untouched() {
    let state = state(FlagMode::Controller, false);
    let mut other = review("CREATE", json!({"user": "a", "template": "t"}), None, false);
    other["request"]["kind"]["kind"] = json!("Template");
    let mut status = review("UPDATE", json!({"user": "a", "template": "t"}), None, false);
    status["request"]["subResource"] = json!("status");
    for body in [other, status] {
        for path in [VALIDATE_PATH, MUTATE_PATH] {
            let (code, response) = post(&state, path, body.to_string().into_bytes()).await;
            assert_eq!(code, 200);
            assert_eq!(response["allowed"], json!(true), "{path}");
            assert!(response.get("patch").is_none(), "{path}: {response}");
        }
    }
}

#[tokio::test]
async fn validation_without_a_quota_check_never_reaches_the_ledger() {
    let state = state(FlagMode::Controller, false);
    let hibernated = json!({"user": "a", "template": "t", "state": "hibernated"});
    // (review, allowed, HTTP-level code of a denial)
    let rows = [
        (review("CREATE", hibernated.clone(), None, false), true, 0),
        (
            review(
                "UPDATE",
                hibernated,
                Some(json!({"user": "a", "template": "t"})),
                false,
            ),
            true,
            0,
        ),
        (
            review("CREATE", json!({"user": 5}), None, false),
            false,
            400,
        ),
        (
            review(
                "CREATE",
                json!({"user": "a", "template": "t", "resources": {"cpu": "lots"}}),
                None,
                false,
            ),
            false,
            403,
        ),
        (
            review(
                "CREATE",
                json!({"user": "a", "template": "t", "resources": {"cpu": "1m"}}),
                None,
                true,
            ),
            false,
            403,
        ),
    ];
    for (body, allowed, code) in rows {
        let (_, response) = post(&state, VALIDATE_PATH, body.to_string().into_bytes()).await;
        assert_eq!(response["allowed"], json!(allowed), "{body}: {response}");
        if !allowed {
            assert_eq!(response["status"]["code"], json!(code), "{response}");
        }
    }
}

#[tokio::test]
async fn legacy_quota_mode_admits_without_checking() {
    let state = state(FlagMode::Legacy, false);
    let body = review(
        "CREATE",
        json!({"user": "a", "template": "t", "resources": {"cpu": "500"}}),
        None,
        false,
    );
    let (_, response) = post(&state, VALIDATE_PATH, body.to_string().into_bytes()).await;
    assert_eq!(response["allowed"], json!(true), "{response}");
}

#[tokio::test]
async fn zero_timers_are_refused_unless_the_operator_allows_them() {
    let body = review(
        "CREATE",
        json!({"user": "a", "template": "t", "idleTimeout": "0s"}),
        None,
        false,
    )
    .to_string()
    .into_bytes();
    let (_, refused) = post(
        &state(FlagMode::Controller, false),
        MUTATE_PATH,
        body.clone(),
    )
    .await;
    assert_eq!(refused["allowed"], json!(false));
    assert_eq!(refused["status"]["code"], json!(400));
    let message = refused["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("idleTimeout \"0s\" would switch idle hibernation off"),
        "{message}"
    );
    let (_, allowed) = post(&state(FlagMode::Controller, true), MUTATE_PATH, body).await;
    assert_eq!(allowed["allowed"], json!(true), "{allowed}");
    assert!(
        allowed.get("patch").is_some(),
        "the other defaults still apply"
    );
}

#[test]
fn which_requests_the_quota_checks() {
    let running = spec(json!({"user": "a", "template": "t", "state": "running"}));
    let bigger = spec(json!({"user": "a", "template": "t", "resources": {"cpu": "2"}}));
    let hibernated = spec(json!({"user": "a", "template": "t", "state": "hibernated"}));
    let tagged = spec(json!({"user": "a", "template": "t", "tags": ["x"]}));
    // (operation, old, new, checked)
    let rows = [
        (Operation::Create, None, &running, true),
        (Operation::Create, None, &hibernated, false),
        (Operation::Update, Some(&hibernated), &running, true),
        (Operation::Update, Some(&running), &bigger, true),
        (Operation::Update, Some(&running), &tagged, false),
        (Operation::Update, Some(&running), &hibernated, false),
        (Operation::Update, None, &running, true),
        (Operation::Delete, Some(&running), &running, false),
    ];
    for (operation, old, new, checked) in rows {
        assert_eq!(
            quota_check(&operation, old, new),
            checked,
            "{operation:?} {old:?} -> {new:?}"
        );
    }
}

#[test]
fn reservations_wait_for_the_stored_object() {
    let parse = |value: Value| -> AdmissionRequest<DynamicObject> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(value).expect("review");
        review.try_into().expect("request")
    };
    let spec = json!({"user": "a", "template": "t"});
    let mut generated = review("CREATE", spec.clone(), None, false);
    generated["request"]["name"] = json!("");
    generated["request"]["object"]["metadata"] =
        json!({"name": "gen-x1", "uid": "u-1", "generation": 1});
    let mut unnamed = review("CREATE", spec.clone(), None, false);
    unnamed["request"]["name"] = json!("");
    unnamed["request"]["object"]["metadata"] = json!({});
    let wake = review("UPDATE", spec.clone(), Some(spec), false);
    // (review, name, uid, generation)
    let rows = [
        (generated, "gen-x1", Some("u-1"), 1),
        (unnamed, "review-1", None, 1),
        (wake, "s1", None, 5),
    ];
    for (body, name, uid, generation) in rows {
        let (key, got_uid, got_generation) = reservation_target(&parse(body));
        assert_eq!(key, quota::ledger::SessionKey::new("ns", name));
        assert_eq!(got_uid.as_deref(), uid);
        assert_eq!(got_generation, generation, "{name}");
    }
}

#[test]
fn a_session_in_the_cache_is_found_by_the_usage_view() {
    let session: Session = serde_json::from_value(json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "Session",
        "metadata": {"name": "s", "namespace": "ns", "uid": "u", "generation": 3},
        "spec": {"user": "a", "template": "t", "resources": {"requests": {"cpu": "bad"}}}
    }))
    .expect("session");
    let view = quota::ledger::SessionView::of(&session);
    assert_eq!(
        (view.namespace, view.name, view.uid),
        ("ns", "s", Some("u"))
    );
    assert_eq!(view.generation, 3);
    assert!(view.running, "a missing state means running");
    assert_eq!(view.request, quota::Request::SYSTEM_DEFAULT);
}

#[test]
fn only_reviews_of_sessions_themselves_are_decided() {
    // (group, kind, subresource) -> decided by the webhooks
    let rows = [
        ("stream.space", "Session", None, true),
        ("stream.space", "Session", Some(""), true),
        ("stream.space", "Session", Some("status"), false),
        ("stream.space", "Template", None, false),
        ("example.com", "Session", None, false),
        ("", "Pod", None, false),
    ];
    for (group, kind, sub_resource, decided) in rows {
        let mut body = review("CREATE", json!({"user": "a", "template": "t"}), None, false);
        body["request"]["kind"]["group"] = json!(group);
        body["request"]["kind"]["kind"] = json!(kind);
        if let Some(sub) = sub_resource {
            body["request"]["subResource"] = json!(sub);
        }
        let request = parse_review(body.to_string().as_bytes()).expect("a review");
        assert_eq!(
            is_session(&request),
            decided,
            "{group} {kind} {sub_resource:?}"
        );
    }
}

#[test]
fn a_review_needs_a_request() {
    let with = review("DELETE", json!({"user": "a", "template": "t"}), None, true);
    let request = parse_review(with.to_string().as_bytes()).expect("a review");
    assert_eq!(request.uid, "review-1");
    assert!(request.dry_run);
    let rows: &[(&[u8], &str)] = &[
        (b"", "the body is not an AdmissionReview"),
        (b"[]", "the body is not an AdmissionReview"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
            "the AdmissionReview has no request",
        ),
    ];
    for (body, reason) in rows {
        let error = parse_review(body).err().unwrap_or_default();
        assert!(error.starts_with(reason), "{error}");
    }
}

#[tokio::test]
async fn every_answer_is_counted_by_webhook_and_result() {
    let state = state(FlagMode::Controller, false);
    let mut template = review("CREATE", json!({"user": "a", "template": "t"}), None, false);
    template["request"]["kind"]["kind"] = json!("Template");
    let rows = [
        (VALIDATE_PATH, b"{".to_vec(), "validate", "invalid"),
        (MUTATE_PATH, b"{".to_vec(), "mutate", "invalid"),
        (
            VALIDATE_PATH,
            template.to_string().into_bytes(),
            "validate",
            "ignored",
        ),
        (
            MUTATE_PATH,
            template.to_string().into_bytes(),
            "mutate",
            "ignored",
        ),
    ];
    for (path, body, webhook, result) in rows {
        let counter = state
            .metrics
            .requests
            .get_or_create(&crate::metrics::AdmissionLabels { webhook, result });
        let before = counter.get();
        post(&state, path, body).await;
        assert_eq!(counter.get(), before + 1, "{webhook} {result}");
    }
}

#[tokio::test]
async fn readiness_waits_for_every_cache() {
    let ready = state(FlagMode::Controller, false);
    assert!(ready.wait_ready(Duration::from_millis(50)).await);
    let mut unloaded = Arc::into_inner(state(FlagMode::Controller, false)).expect("one owner");
    // A store that never had its initial list.
    unloaded.templates = Writer::<Template>::default().as_reader();
    assert!(!unloaded.wait_ready(Duration::from_millis(50)).await);
}

#[test]
fn start_errors_have_fixed_labels() {
    let bind = AdmissionError::Bind(std::io::Error::other("in use"));
    let client_ca = AdmissionError::ClientCa {
        path: "ca.pem".into(),
        reason: "no certificate".into(),
    };
    let certs = AdmissionError::Certs(certs::CertError::NoCertificate);
    assert_eq!(bind.metric_label(), "bind");
    assert_eq!(client_ca.metric_label(), "client_ca");
    assert_eq!(certs.metric_label(), "no_certificate");
    assert!(client_ca.to_string().contains("ca.pem"), "{client_ca}");
}
