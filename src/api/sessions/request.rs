//! The pure half of the sessions API: request bodies and their validation, session names, and
//! the StreamSpace response shapes. No I/O happens here.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::crd::session::{DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_SESSION_DURATION};
use crate::crd::{Condition, ResourceSpec, Session, SessionState, TemplateSpec};
use crate::quota::{self, Request};
use k8s_openapi::jiff::Timestamp;

/// Longest session name: it becomes the first DNS label of the session's host name.
const MAX_NAME: usize = 63;
/// Length of the random suffix of a generated name (hex digits).
const SUFFIX_LEN: usize = 8;

/// A request the API refuses before doing anything: HTTP 400 with `error` and `message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub error: &'static str,
    pub message: String,
}

impl Invalid {
    fn body(message: impl Into<String>) -> Invalid {
        Invalid {
            error: "Invalid request body",
            message: message.into(),
        }
    }

    fn resources(message: impl Into<String>) -> Invalid {
        Invalid {
            error: "Invalid resource request",
            message: message.into(),
        }
    }
}

/// `resources` of a create request: the old API's flat form.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct FlatResources {
    #[serde(default)]
    pub memory: Option<String>,
    #[serde(default)]
    pub cpu: Option<String>,
}

/// Body of `POST /api/v1/sessions` as clients send it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateBody {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    resources: Option<FlatResources>,
    #[serde(default)]
    persistent_home: Option<bool>,
    #[serde(default)]
    idle_timeout: Option<String>,
    #[serde(default)]
    max_session_duration: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

/// A validated create request (the Template not yet looked up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSession {
    pub user: String,
    pub template: String,
    pub resources: FlatResources,
    pub persistent_home: bool,
    pub idle_timeout: String,
    pub max_session_duration: String,
    pub tags: Vec<String>,
}

/// Parses and validates a create body; every field is checked before anything is written.
pub fn parse_create(bytes: &[u8]) -> Result<NewSession, Invalid> {
    let body: CreateBody = serde_json::from_slice(bytes)
        .map_err(|e| Invalid::body(format!("the body is not a session request: {e}")))?;
    let user = body
        .user
        .filter(|u| !u.is_empty())
        .ok_or_else(|| Invalid::body("user is required"))?;
    if !is_dns_label(&user, 253) {
        return Err(Invalid::body(format!(
            "user {user:?} must be lowercase letters, digits and '-', starting and ending with a letter or digit"
        )));
    }
    let template = body
        .template
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Invalid::body("template is required"))?;
    if !is_dns_label(&template, 253) {
        return Err(Invalid::body(format!(
            "template {template:?} is not a valid Template name"
        )));
    }
    let duration = |field: &str, value: Option<String>, default: &str| match value {
        None => Ok(default.to_string()),
        Some(v) if v.is_empty() => Ok(default.to_string()),
        Some(v) if is_duration(&v) => Ok(v),
        Some(v) => Err(Invalid::body(format!(
            "{field} {v:?} must be a number followed by s, m or h (such as 30m)"
        ))),
    };
    let idle_timeout = duration("idleTimeout", body.idle_timeout, DEFAULT_IDLE_TIMEOUT)?;
    let max_session_duration = duration(
        "maxSessionDuration",
        body.max_session_duration,
        DEFAULT_MAX_SESSION_DURATION,
    )?;
    check_tags(&body.tags)?;
    Ok(NewSession {
        user,
        template,
        resources: body.resources.unwrap_or_default(),
        persistent_home: body.persistent_home.unwrap_or(true),
        idle_timeout,
        max_session_duration,
        tags: body.tags,
    })
}

/// The resources a new session asks for, key by key: the request's, else the Template's
/// defaults (requests, then limits, then the flat form). `None` when neither sets anything
/// (the system defaults then apply). Written as requests and limits of the same amounts, as the
/// flat form always meant; out-of-bounds or unparsable amounts are refused.
pub fn resolve_resources(
    wanted: &FlatResources,
    template: &TemplateSpec,
) -> Result<(Option<ResourceSpec>, Request), Invalid> {
    let defaults = template
        .default_resources
        .as_ref()
        .and_then(ResourceSpec::requirements)
        .unwrap_or_default();
    let from_template = |key: &str| {
        defaults
            .requests
            .as_ref()
            .and_then(|r| r.get(key))
            .or_else(|| defaults.limits.as_ref().and_then(|l| l.get(key)))
            .cloned()
    };
    let pick = |body: &Option<String>, key: &str| {
        body.as_ref()
            .filter(|v| !v.trim().is_empty())
            .map(|v| Quantity(v.trim().to_string()))
            .or_else(|| from_template(key))
    };
    let mut amounts = BTreeMap::new();
    if let Some(memory) = pick(&wanted.memory, "memory") {
        amounts.insert("memory".to_string(), memory);
    }
    if let Some(cpu) = pick(&wanted.cpu, "cpu") {
        amounts.insert("cpu".to_string(), cpu);
    }
    let spec = (!amounts.is_empty()).then(|| ResourceSpec {
        requests: Some(amounts.clone()),
        limits: Some(amounts),
        ..ResourceSpec::default()
    });
    let request = Request::of(spec.as_ref()).map_err(Invalid::resources)?;
    if let Some(message) = quota::check_bounds(&request) {
        return Err(Invalid::resources(message));
    }
    Ok((spec, request))
}

/// Body of `PATCH /api/v1/sessions/{id}`: the state wanted.
pub fn parse_state(bytes: &[u8]) -> Result<SessionState, Invalid> {
    #[derive(Deserialize)]
    struct Body {
        state: Option<String>,
    }
    let body: Body = serde_json::from_slice(bytes)
        .map_err(|e| Invalid::body(format!("the body is not {{\"state\": ...}}: {e}")))?;
    match body.state.as_deref().map(SessionState::from) {
        Some(SessionState::Unknown(other)) => Err(Invalid::body(format!(
            "state {other:?} must be one of running, hibernated, terminated"
        ))),
        Some(state) => Ok(state),
        None => Err(Invalid::body(
            "state is required: one of running, hibernated, terminated",
        )),
    }
}

/// `{user}-{template}-{suffix}`, cut so that it stays one DNS label.
pub fn session_name(user: &str, template: &str, suffix: &str) -> String {
    let prefix: String = format!("{user}-{template}")
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() { c } else { '-' }
        })
        .take(MAX_NAME - SUFFIX_LEN - 1)
        .collect();
    let prefix = prefix.trim_matches('-');
    if prefix.is_empty() {
        format!("session-{suffix}")
    } else {
        format!("{prefix}-{suffix}")
    }
}

/// Eight hex digits from the OS-seeded hasher keys, the clock and a counter.
pub fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_i128(k8s_openapi::jiff::Timestamp::now().as_nanosecond());
    format!("{:08x}", hasher.finish() as u32)
}

fn is_dns_label(text: &str, max: usize) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= max
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

fn is_duration(text: &str) -> bool {
    (2..=10).contains(&text.len())
        && text.ends_with(['s', 'm', 'h'])
        && text[..text.len() - 1].bytes().all(|b| b.is_ascii_digit())
}

/// `{memory, cpu}` as the UI shows them: requests, else limits, else the flat form.
fn flat_resources(resources: Option<&ResourceSpec>) -> Value {
    let requirements = resources
        .and_then(ResourceSpec::requirements)
        .unwrap_or_default();
    let get = |key: &str| {
        requirements
            .requests
            .as_ref()
            .and_then(|r| r.get(key))
            .or_else(|| requirements.limits.as_ref().and_then(|l| l.get(key)))
            .map(|q| q.0.clone())
            .unwrap_or_default()
    };
    json!({"memory": get("memory"), "cpu": get("cpu")})
}

/// The 202 answer to a create: the old API's shape, state `pending`, phase `Pending`.
pub fn created_response(
    name: &str,
    namespace: &str,
    new: &NewSession,
    resources: Option<&ResourceSpec>,
    message: &str,
) -> Value {
    json!({
        "name": name,
        "namespace": namespace,
        "user": new.user,
        "template": new.template,
        "state": "pending",
        "persistentHome": new.persistent_home,
        "idleTimeout": new.idle_timeout,
        "maxSessionDuration": new.max_session_duration,
        "tags": new.tags,
        "resources": flat_resources(resources),
        "status": {"phase": "Pending", "message": message},
    })
}

/// One session as `GET /api/v1/sessions` lists it. Borrowed from the cached object and
/// serialised directly (no intermediate JSON tree): a list of thousands is built per request.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionItem<'a> {
    name: &'a str,
    namespace: &'a str,
    user: &'a str,
    template: &'a str,
    state: &'a str,
    persistent_home: bool,
    idle_timeout: &'a str,
    max_session_duration: &'a str,
    tags: &'a [String],
    created_at: Option<String>,
    active_connections: usize,
    /// `metadata.generation`: compare with `status.observedGeneration` to tell whether the
    /// status describes the current spec.
    generation: Option<i64>,
    status: ItemStatus<'a>,
    resources: ItemResources,
    #[serde(flatten)]
    activity: super::super::activity::ActivityView,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ItemStatus<'a> {
    phase: &'a str,
    url: &'a str,
    pod_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_activity: Option<String>,
    /// The generation the controller computed this status from (`null` before its first).
    observed_generation: Option<i64>,
    /// When the controller last changed this status (`null` before its first).
    reconciled_at: Option<String>,
    conditions: &'a [Condition],
}

#[derive(Debug, Serialize)]
struct ItemResources {
    memory: String,
    cpu: String,
}

fn item_resources(resources: Option<&ResourceSpec>) -> ItemResources {
    ItemResources {
        memory: requested_amount(resources, "memory"),
        cpu: requested_amount(resources, "cpu"),
    }
}

/// The amount of `key` (`memory` or `cpu`) `resources` asks for, as written: the request, else
/// the limit, else the legacy flat field; empty when none is set. Read in place:
/// `requirements()` would clone both maps for every listed session.
pub(crate) fn requested_amount(resources: Option<&ResourceSpec>, key: &str) -> String {
    resources
        .and_then(|r| {
            r.requests
                .as_ref()
                .and_then(|m| m.get(key))
                .or_else(|| r.limits.as_ref().and_then(|m| m.get(key)))
                .or(match key {
                    "memory" => r.memory.as_ref(),
                    _ => r.cpu.as_ref(),
                })
        })
        .map(|q| q.0.clone())
        .unwrap_or_default()
}

/// The list item of `session` at `now` (for the activity fields).
pub fn session_item(
    session: &Session,
    active_connections: usize,
    now: Timestamp,
) -> SessionItem<'_> {
    let spec = &session.spec;
    let status = session.status.as_ref();
    SessionItem {
        name: session.metadata.name.as_deref().unwrap_or_default(),
        namespace: session.metadata.namespace.as_deref().unwrap_or_default(),
        user: &spec.user,
        template: &spec.template,
        state: spec.state.as_ref().map_or("running", |s| s.as_str()),
        persistent_home: spec.persistent_home,
        idle_timeout: &spec.idle_timeout,
        max_session_duration: &spec.max_session_duration,
        tags: &spec.tags,
        created_at: session
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string()),
        active_connections,
        generation: session.metadata.generation,
        status: ItemStatus {
            phase: status
                .and_then(|s| s.phase.as_ref())
                .map_or("Pending", |p| p.as_str()),
            url: status.and_then(|s| s.url.as_deref()).unwrap_or_default(),
            pod_name: status
                .and_then(|s| s.pod_name.as_deref())
                .unwrap_or_default(),
            last_activity: status
                .and_then(|s| s.last_activity.as_ref())
                .map(|t| t.0.to_string()),
            observed_generation: status.and_then(|s| s.observed_generation),
            reconciled_at: status
                .and_then(|s| s.reconciled_at.as_ref())
                .map(|t| t.0.to_string()),
            conditions: status.map_or(&[], |s| s.conditions.as_slice()),
        },
        resources: item_resources(spec.resources.as_ref()),
        activity: super::super::activity::view(session, now),
    }
}

/// Most tags one session may have.
pub const MAX_TAGS: usize = 64;
/// Longest tag (it becomes part of a label key of the session's objects).
pub const MAX_TAG_LEN: usize = 63;

/// The rules every tag list follows, at create and at `PATCH .../tags`.
pub fn check_tags(tags: &[String]) -> Result<(), Invalid> {
    if tags.len() > MAX_TAGS {
        return Err(Invalid::body(format!(
            "at most {MAX_TAGS} tags, not {}",
            tags.len()
        )));
    }
    if let Some(tag) = tags.iter().find(|t| t.len() > MAX_TAG_LEN) {
        return Err(Invalid::body(format!(
            "tag {tag:?} is longer than {MAX_TAG_LEN} characters"
        )));
    }
    Ok(())
}

/// Body of `PATCH /api/v1/sessions/{id}/tags`: `{"tags": [...]}`, the whole new list
/// (duplicates dropped, order kept).
pub fn parse_tags(bytes: &[u8]) -> Result<Vec<String>, Invalid> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        tags: Option<Vec<String>>,
    }
    let body: Body = serde_json::from_slice(bytes)
        .map_err(|e| Invalid::body(format!("the body must be {{\"tags\": [...]}}: {e}")))?;
    let tags = body
        .tags
        .ok_or_else(|| Invalid::body("tags is required (an empty list removes every tag)"))?;
    if let Some(empty) = tags.iter().position(String::is_empty) {
        return Err(Invalid::body(format!("tag {empty} is empty")));
    }
    check_tags(&tags)?;
    let mut seen = std::collections::BTreeSet::new();
    Ok(tags
        .into_iter()
        .filter(|t| seen.insert(t.clone()))
        .collect())
}

/// The query of `GET /api/v1/sessions/by-tags`: `tags` (comma-separated, repeatable, at
/// least one) and an optional `user` filter.
pub fn parse_tag_query(query: &str) -> Result<(Vec<String>, Option<String>), Invalid> {
    let mut tags = Vec::new();
    let mut user = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "tags" | "tags[]" => tags.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_string),
            ),
            "user" => user = Some(value.into_owned()),
            _ => {}
        }
    }
    if tags.is_empty() {
        return Err(Invalid::body(
            "tags is required: ?tags=a,b (sessions with any of them)",
        ));
    }
    check_tags(&tags)?;
    Ok((tags, user))
}

/// Whether `tags` holds any of `wanted` (the old API's OR match).
pub fn has_any_tag(tags: &[String], wanted: &[String]) -> bool {
    tags.iter().any(|t| wanted.contains(t))
}

/// The 202 answer to a state change.
pub fn state_response(name: &str, state: &SessionState) -> Value {
    let message = match state {
        SessionState::Running => "Session is starting",
        SessionState::Hibernated => "Session is hibernating",
        SessionState::Terminated => "Session is terminating",
        SessionState::Unknown(_) => "Session state updated",
    };
    json!({"name": name, "state": state.as_str(), "message": message})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(defaults: Option<Value>) -> TemplateSpec {
        serde_json::from_value(json!({
            "displayName": "Firefox", "baseImage": "firefox:latest",
            "defaultResources": defaults,
        }))
        .expect("template")
    }

    /// user, template, persistentHome, idleTimeout
    type Parsed<'a> = (&'a str, &'a str, bool, &'a str);

    #[test]
    fn create_bodies() {
        let cases: &[(&str, Result<Parsed, &str>)] = &[
            (
                r#"{"user":"alice","template":"firefox"}"#,
                Ok(("alice", "firefox", true, "30m")),
            ),
            (
                r#"{"user":"bob","template":"code","persistentHome":false,"idleTimeout":"2h"}"#,
                Ok(("bob", "code", false, "2h")),
            ),
            (r#"{"template":"firefox"}"#, Err("user is required")),
            (r#"{"user":"alice"}"#, Err("template is required")),
            (
                r#"{"user":"Alice","template":"firefox"}"#,
                Err("user \"Alice\""),
            ),
            (
                r#"{"user":"alice","template":"fire_fox"}"#,
                Err("template \"fire_fox\""),
            ),
            (
                r#"{"user":"alice","template":"firefox","idleTimeout":"soon"}"#,
                Err("idleTimeout \"soon\""),
            ),
            (r#"not json"#, Err("not a session request")),
        ];
        for (body, expected) in cases {
            let parsed = parse_create(body.as_bytes());
            match (expected, parsed) {
                (Ok((user, template, home, idle)), Ok(new)) => {
                    assert_eq!(
                        (
                            new.user.as_str(),
                            new.template.as_str(),
                            new.persistent_home
                        ),
                        (*user, *template, *home),
                        "{body}"
                    );
                    assert_eq!(new.idle_timeout, *idle, "{body}");
                    assert_eq!(new.max_session_duration, "8h", "{body}");
                }
                (Err(fragment), Err(invalid)) => {
                    assert!(invalid.message.contains(fragment), "{body}: {invalid:?}");
                    assert_eq!(invalid.error, "Invalid request body");
                }
                (expected, parsed) => panic!("{body}: expected {expected:?}, got {parsed:?}"),
            }
        }
    }

    #[test]
    fn resources_come_from_the_request_then_the_template() {
        let flat = |memory: Option<&str>, cpu: Option<&str>| FlatResources {
            memory: memory.map(str::to_string),
            cpu: cpu.map(str::to_string),
        };
        let tpl = template(Some(json!({"memory": "1Gi", "cpu": "500m"})));
        let (spec, request) =
            resolve_resources(&flat(Some("4Gi"), None), &tpl).expect("within bounds");
        let requests = spec.and_then(|s| s.requests).unwrap_or_default();
        assert_eq!(requests.get("memory"), Some(&Quantity("4Gi".into())));
        assert_eq!(requests.get("cpu"), Some(&Quantity("500m".into())));
        assert_eq!(request.cpu, crate::quantity::Milli(500));

        let (spec, request) =
            resolve_resources(&FlatResources::default(), &template(None)).expect("defaults");
        assert_eq!(spec, None);
        assert_eq!(request, Request::SYSTEM_DEFAULT);

        for (memory, cpu) in [
            (Some("64Mi"), None),
            (Some("1Ti"), None),
            (None, Some("50m")),
            (None, Some("65")),
            (Some("lots"), None),
        ] {
            let invalid = resolve_resources(&flat(memory, cpu), &tpl).expect_err("refused");
            assert_eq!(
                invalid.error, "Invalid resource request",
                "{memory:?} {cpu:?}"
            );
        }
    }

    #[test]
    fn states() {
        assert_eq!(
            parse_state(br#"{"state":"hibernated"}"#),
            Ok(SessionState::Hibernated)
        );
        assert_eq!(
            parse_state(br#"{"state":"running"}"#),
            Ok(SessionState::Running)
        );
        for bad in [
            &br#"{"state":"paused"}"#[..],
            br#"{}"#,
            b"",
            br#"{"state":1}"#,
        ] {
            assert!(
                parse_state(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn names_are_one_dns_label() {
        assert_eq!(
            session_name("alice", "firefox", "0a1b2c3d"),
            "alice-firefox-0a1b2c3d"
        );
        let long = session_name(&"u".repeat(100), "firefox", "0a1b2c3d");
        assert!(long.len() <= 63, "{long}");
        assert!(long.ends_with("-0a1b2c3d"));
        assert!(crate::api::valid_name(&long));
        let cut_at_dash = session_name(&"a".repeat(53), "b", "0a1b2c3d");
        assert!(!cut_at_dash.contains("--"), "{cut_at_dash}");
        let suffix = random_suffix();
        assert_eq!(suffix.len(), 8);
        assert!(suffix.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(random_suffix(), random_suffix());
    }

    #[test]
    fn tag_bodies_and_queries() {
        assert_eq!(
            parse_tags(br#"{"tags": ["a", "b", "a"]}"#),
            Ok(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(parse_tags(br#"{"tags": []}"#), Ok(vec![]));
        let long = format!(r#"{{"tags": ["{}"]}}"#, "x".repeat(64));
        let too_many = format!(r#"{{"tags": [{}]}}"#, vec![r#""t""#; 65].join(","));
        for bad in [
            r#"{}"#,
            r#"{"tags": "a"}"#,
            r#"{"tags": [""]}"#,
            r#"{"tags": ["a"], "other": 1}"#,
            "not json",
            long.as_str(),
            too_many.as_str(),
        ] {
            assert!(parse_tags(bad.as_bytes()).is_err(), "{bad}");
        }
        let tags = parse_tag_query;
        assert_eq!(
            tags("tags=a,b&tags=c&user=bob"),
            Ok((vec!["a".into(), "b".into(), "c".into()], Some("bob".into())))
        );
        assert_eq!(tags("tags=%20a%20,,"), Ok((vec!["a".into()], None)));
        assert!(tags("").is_err());
        assert!(tags("tags=,").is_err());
        assert!(has_any_tag(
            &["a".into(), "b".into()],
            &["c".into(), "b".into()]
        ));
        assert!(!has_any_tag(&[], &["a".into()]));
    }

    #[test]
    fn response_shapes() {
        let new = parse_create(br#"{"user":"alice","template":"firefox"}"#).expect("valid");
        let (resources, _) = resolve_resources(
            &FlatResources {
                memory: Some("2Gi".into()),
                cpu: Some("1".into()),
            },
            &template(None),
        )
        .expect("valid");
        let created = created_response("n", "ns", &new, resources.as_ref(), "queued");
        assert_eq!(created["state"], "pending");
        assert_eq!(created["status"]["phase"], "Pending");
        assert_eq!(created["resources"], json!({"memory": "2Gi", "cpu": "1"}));
        assert_eq!(created["persistentHome"], true);

        let session: Session = serde_json::from_value(json!({
            "apiVersion": "stream.space/v1alpha1", "kind": "Session",
            "metadata": {"name": "s1", "namespace": "ns", "creationTimestamp": "2026-01-02T03:04:05Z"},
            "spec": {"user": "alice", "template": "firefox", "state": "hibernated",
                     "resources": {"memory": "1Gi", "cpu": "500m"}},
            "status": {"phase": "Hibernated", "url": "https://s1.example", "lastActivity": "2026-01-02T04:00:00Z"}
        }))
        .expect("session");
        let now: Timestamp = "2026-01-02T04:10:00Z".parse().expect("time");
        let item = serde_json::to_value(session_item(&session, 2, now)).expect("serialises");
        assert_eq!(item["state"], "hibernated");
        assert_eq!(item["status"]["phase"], "Hibernated");
        assert_eq!(item["status"]["podName"], "");
        assert_eq!(item["status"]["lastActivity"], "2026-01-02T04:00:00Z");
        assert_eq!(item["createdAt"], "2026-01-02T03:04:05Z");
        assert_eq!(item["activeConnections"], 2);
        assert_eq!(item["resources"], json!({"memory": "1Gi", "cpu": "500m"}));
        assert_eq!(item["idleTimeout"], "30m");
        assert_eq!(item["idleDuration"], 600);
        assert_eq!(item["isActive"], false, "hibernated");
        assert_eq!(item["generation"], Value::Null);
        assert_eq!(item["status"]["observedGeneration"], Value::Null);
        assert_eq!(item["status"]["conditions"], json!([]));

        let patched = state_response("s1", &SessionState::Hibernated);
        assert_eq!(
            patched,
            json!({"name": "s1", "state": "hibernated", "message": "Session is hibernating"})
        );
    }
}
