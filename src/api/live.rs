//! Read-only and real-time views served from the API's watch caches:
//!
//! - `GET /api/v1/cluster/stats` ([`Permission::ReadCluster`]): nodes (total, ready, not
//!   ready, cordoned, capacity and allocatable sums) and sessions by phase and by state.
//! - `GET /api/v1/ws/sessions` (WebSocket): `{type: "sessions_update", sessions, count,
//!   timestamp}` once at connect, then after every change the session watch reports
//!   (coalesced over [`DEBOUNCE`]) that changes what the client sees. A user sees their own
//!   sessions; a caller with `OperateSessions("list")` sees all of them. Browsers cannot set
//!   headers on a WebSocket, so the token may also come as a `token` query parameter.
//!
//! Streams are bounded ([`StreamSettings`]): a few per user and a total per replica (429
//! beyond), incoming messages of a few KiB at most (clients have nothing to send), and the
//! token and rights are checked again every [`StreamSettings::reauth_interval`]: a revoked
//! token or right ends the stream with close code 1008 and the reason.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Query, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::{debug, info};

use super::ApiState;
use super::auth::{AuthError, Permission, Principal};
use super::connections::StreamSlot;
use super::handlers::ApiError;
use crate::crd::Session;
use crate::quantity::{self, Milli};

/// How long a burst of session changes is gathered into one message: a create or a wake
/// touches a session several times within a few hundred milliseconds.
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// Limits of the sessions WebSocket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSettings {
    /// Streams one user may have open through this replica (a few browser tabs).
    pub max_per_user: usize,
    /// Streams this replica serves in total.
    pub max_total: usize,
    /// How often an open stream's token and rights are checked again.
    pub reauth_interval: Duration,
    /// Largest message or frame accepted from a client; larger ones close the stream.
    pub max_message_bytes: usize,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            max_per_user: 8,
            max_total: 4096,
            reauth_interval: Duration::from_secs(30),
            max_message_bytes: 4096,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster statistics (pure)

#[derive(Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStats {
    pub nodes: NodeCounts,
    /// Sum over all nodes, per resource: CPU in cores (`"%.1f"`), memory in `Gi` (`"%.1fGi"`),
    /// other resources in whole units.
    pub capacity: BTreeMap<String, String>,
    pub allocatable: BTreeMap<String, String>,
    pub sessions: SessionCounts,
}

#[derive(Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeCounts {
    pub total: usize,
    pub ready: usize,
    pub not_ready: usize,
    /// `spec.unschedulable`, whatever the readiness.
    pub cordoned: usize,
}

#[derive(Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionCounts {
    pub total: usize,
    /// By `status.phase`; a session without a phase yet counts as `Pending`.
    pub by_phase: BTreeMap<String, usize>,
    /// By `spec.state` (default `running`).
    pub by_state: BTreeMap<String, usize>,
}

pub fn cluster_stats(nodes: &[Arc<Node>], sessions: &[Arc<Session>]) -> ClusterStats {
    let mut stats = ClusterStats::default();
    let mut capacity = BTreeMap::<String, Milli>::new();
    let mut allocatable = BTreeMap::<String, Milli>::new();
    for node in nodes {
        stats.nodes.total += 1;
        if is_ready(node) {
            stats.nodes.ready += 1;
        } else {
            stats.nodes.not_ready += 1;
        }
        let spec = node.spec.as_ref();
        if spec.and_then(|s| s.unschedulable).unwrap_or(false) {
            stats.nodes.cordoned += 1;
        }
        let status = node.status.as_ref();
        add_quantities(&mut capacity, status.and_then(|s| s.capacity.as_ref()));
        add_quantities(
            &mut allocatable,
            status.and_then(|s| s.allocatable.as_ref()),
        );
    }
    stats.capacity = format_quantities(capacity);
    stats.allocatable = format_quantities(allocatable);
    for session in sessions {
        stats.sessions.total += 1;
        let phase = session
            .status
            .as_ref()
            .and_then(|s| s.phase.as_ref())
            .map_or("Pending", |p| p.as_str());
        *stats.sessions.by_phase.entry(phase.into()).or_default() += 1;
        let state = session.spec.desired_state();
        *stats
            .sessions
            .by_state
            .entry(state.as_str().into())
            .or_default() += 1;
    }
    stats
}

/// A node is ready when its `Ready` condition is `True`.
fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

fn add_quantities(
    sums: &mut BTreeMap<String, Milli>,
    quantities: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
) {
    for (resource, value) in quantities.into_iter().flatten() {
        // A malformed quantity on one node must not hide the others' figures.
        if let Ok(value) = quantity::parse(&value.0) {
            let sum = sums.entry(resource.clone()).or_default();
            *sum = Milli(sum.0.saturating_add(value.0));
        }
    }
}

fn format_quantities(sums: BTreeMap<String, Milli>) -> BTreeMap<String, String> {
    const GI: f64 = 1024.0 * 1024.0 * 1024.0;
    sums.into_iter()
        .map(|(resource, sum)| {
            let text = match resource.as_str() {
                "cpu" => format!("{:.1}", sum.0 as f64 / 1000.0),
                "memory" | "ephemeral-storage" => format!("{:.1}Gi", sum.0 as f64 / 1000.0 / GI),
                _ => sum.ceil_units().to_string(),
            };
            (resource, text)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Session list of the WebSocket (pure)

/// One session as the UI's session list shows it (behaviour spec §10), with its activity at
/// `now` and what tells a stale status (`generation` against `status.observedGeneration`).
pub fn session_item(session: &Session, active_connections: usize, now: Timestamp) -> Value {
    let status = session.status.clone().unwrap_or_default();
    let activity = super::activity::view(session, now);
    json!({
        "name": session.name_any(),
        "namespace": session.namespace(),
        "user": session.spec.user,
        "template": session.spec.template,
        "state": session.spec.desired_state().as_str(),
        "tags": session.spec.tags,
        "generation": session.metadata.generation,
        "status": {
            "phase": status.phase.as_ref().map_or("Pending", |p| p.as_str()),
            "url": status.url.unwrap_or_default(),
            "podName": status.pod_name.unwrap_or_default(),
            "observedGeneration": status.observed_generation,
            "reconciledAt": status.reconciled_at.map(|t| t.0.to_string()),
            "conditions": status.conditions,
        },
        "lastActivity": activity.last_activity,
        "idleDuration": activity.idle_duration,
        "idleThreshold": activity.idle_threshold,
        "isIdle": activity.is_idle,
        "isActive": activity.is_active,
        "activeConnections": active_connections,
    })
}

/// What decides whether a stream resends: the items without the fields that only move with
/// the clock (`idleDuration`), so time alone sends nothing.
fn without_clock(items: &[Value]) -> Vec<Value> {
    items
        .iter()
        .map(|item| {
            let mut item = item.clone();
            if let Some(object) = item.as_object_mut() {
                object.remove("idleDuration");
            }
            item
        })
        .collect()
}

/// The sessions `principal` may see (all of them with `see_all`), sorted by name.
pub fn visible_sessions(
    sessions: &[Arc<Session>],
    principal: &Principal,
    see_all: bool,
    connections: impl Fn(&str) -> usize,
    now: Timestamp,
) -> Vec<Value> {
    let mut visible: Vec<&Arc<Session>> = sessions
        .iter()
        .filter(|s| see_all || s.spec.user == principal.name)
        .collect();
    visible.sort_by_key(|s| s.name_any());
    visible
        .into_iter()
        .map(|s| session_item(s, connections(&s.name_any()), now))
        .collect()
}

/// The message of the cluster stream.
pub fn cluster_update(stats: &ClusterStats, now: Timestamp) -> Value {
    json!({
        "type": "cluster_update",
        "nodes": stats.nodes,
        "sessions": stats.sessions,
        "capacity": stats.capacity,
        "allocatable": stats.allocatable,
        "timestamp": now.to_string(),
    })
}

pub fn sessions_update(sessions: &[Value], now: Timestamp) -> Value {
    json!({
        "type": "sessions_update",
        "sessions": sessions,
        "count": sessions.len(),
        "timestamp": now.to_string(),
    })
}

// ---------------------------------------------------------------------------------------------
// Handlers

pub(super) async fn cluster_stats_handler(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Response {
    let reply = async {
        let principal = state.principal(&headers).await?;
        state.require(&principal, Permission::ReadCluster).await?;
        if !(state.nodes.cache_loaded() && state.sessions_loaded.load(Ordering::Relaxed)) {
            return Ok(loading());
        }
        let stats = cluster_stats(&state.nodes.cached_nodes(), &state.sessions.state());
        Ok::<_, ApiError>(Json(stats).into_response())
    }
    .await;
    reply.unwrap_or_else(IntoResponse::into_response)
}

fn loading() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"success": false, "error": "the cluster cache is still loading"})),
    )
        .into_response()
}

#[derive(Deserialize)]
pub(super) struct WsQuery {
    pub(super) token: Option<String>,
}

pub(super) async fn sessions_ws(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Query(query): Query<WsQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    open_stream(state, headers, query, upgrade, sessions_view).await
}

/// Every session for a caller who may list them, else their own.
fn sessions_view<'a>(
    state: &'a ApiState,
    principal: &'a Principal,
) -> futures::future::BoxFuture<'a, Result<View, ApiError>> {
    Box::pin(async move {
        let see_all = state
            .auth
            .authorize(principal, Permission::OperateSessions("list"))
            .await?;
        Ok(View::Sessions { see_all })
    })
}

/// Node and session counts, for a caller who may read cluster information (403 otherwise).
fn cluster_view<'a>(
    state: &'a ApiState,
    principal: &'a Principal,
) -> futures::future::BoxFuture<'a, Result<View, ApiError>> {
    Box::pin(async move {
        state.require(principal, Permission::ReadCluster).await?;
        Ok(View::Cluster)
    })
}

pub(super) async fn cluster_ws(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Query(query): Query<WsQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    open_stream(state, headers, query, upgrade, cluster_view).await
}

/// Decides which view a caller gets (or refuses them) before the upgrade.
type Choose = for<'a> fn(
    &'a ApiState,
    &'a Principal,
) -> futures::future::BoxFuture<'a, Result<View, ApiError>>;

/// Authenticates (401/503), lets `choose` authorise (403), takes a stream slot (429) and
/// upgrades.
async fn open_stream(
    state: Arc<ApiState>,
    mut headers: HeaderMap,
    query: WsQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    choose: Choose,
) -> Response {
    add_query_token(&mut headers, query.token.as_deref());
    let reply = async {
        let principal = state.principal(&headers).await?;
        let view = choose(&state, &principal).await?;
        Ok::<_, ApiError>((principal, view))
    }
    .await;
    match (reply, upgrade) {
        (Err(error), _) => error.into_response(),
        (Ok(_), Err(rejection)) => rejection.into_response(),
        (Ok((principal, view)), Ok(upgrade)) => match state.streams.acquire(&principal.name) {
            Err(refused) => ApiError::TooMany(refused.to_string()).into_response(),
            Ok(slot) => {
                let limit = state.stream_settings.max_message_bytes;
                let stream = Stream {
                    state: state.clone(),
                    principal,
                    view,
                    credentials: credentials(&headers),
                    _slot: slot,
                };
                upgrade
                    .max_message_size(limit)
                    .max_frame_size(limit)
                    .on_upgrade(move |socket| stream.run(socket))
            }
        },
    }
}

/// Browsers cannot set headers on a WebSocket: a `token` query parameter stands in for the
/// `Authorization` header, which wins when both are present.
pub(super) fn add_query_token(headers: &mut HeaderMap, token: Option<&str>) {
    if headers.contains_key(AUTHORIZATION) {
        return;
    }
    if let Some(Ok(value)) = token.map(|token| HeaderValue::from_str(&format!("Bearer {token}"))) {
        headers.insert(AUTHORIZATION, value);
    }
}

/// Only the credentials of a request, kept for the stream's re-authorisation.
fn credentials(headers: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::new();
    if let Some(value) = headers.get(AUTHORIZATION) {
        kept.insert(AUTHORIZATION, value.clone());
    }
    kept
}

/// What a periodic check decides for an open stream.
#[derive(Debug, PartialEq, Eq)]
enum Recheck {
    Keep,
    /// Close with code 1008 and this reason.
    End(&'static str),
}

/// What a stream shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum View {
    /// The sessions the caller may see (every one with `see_all`).
    Sessions { see_all: bool },
    /// Node and session counts.
    Cluster,
}

/// One open stream.
struct Stream {
    state: Arc<ApiState>,
    principal: Principal,
    view: View,
    credentials: HeaderMap,
    /// Held while the stream is open.
    _slot: StreamSlot,
}

impl Stream {
    /// The current message of this stream and what decides whether it changed; `None` while
    /// the caches it reads are loading.
    fn snapshot(&self) -> Option<(Value, Value)> {
        let state = &self.state;
        let now = Timestamp::now();
        match self.view {
            View::Sessions { see_all } => {
                if !state.sessions_loaded.load(Ordering::Relaxed) {
                    return None;
                }
                let counts = state.connection_counts();
                let sessions = visible_sessions(
                    &state.sessions.state(),
                    &self.principal,
                    see_all,
                    |s| counts.get(s).copied().unwrap_or(0),
                    now,
                );
                let key = Value::Array(without_clock(&sessions));
                Some((sessions_update(&sessions, now), key))
            }
            View::Cluster => {
                if !(state.nodes.cache_loaded() && state.sessions_loaded.load(Ordering::Relaxed)) {
                    return None;
                }
                let stats = cluster_stats(&state.nodes.cached_nodes(), &state.sessions.state());
                let key = serde_json::to_value(&stats).unwrap_or_default();
                Some((cluster_update(&stats, now), key))
            }
        }
    }

    /// Sends the view now and after every change that alters it, until the client goes away
    /// or its token or right is revoked.
    async fn run(self, mut socket: WebSocket) {
        let state = &self.state;
        info!(user = %self.principal.name, view = ?self.view, "stream opened");
        let mut changes = state.session_changes.subscribe();
        // Session streams wait on session changes only; the cluster stream on nodes too.
        let (_no_node_changes, quiet) = tokio::sync::watch::channel(0u64);
        let mut node_changes = match self.view {
            View::Cluster => state.nodes.node_changes(),
            View::Sessions { .. } => quiet,
        };
        let mut reauth = tokio::time::interval(state.stream_settings.reauth_interval);
        reauth.reset();
        let mut last_sent: Option<Value> = None;
        let close = 'send: loop {
            if let Some((message, key)) = self.snapshot()
                && last_sent.as_ref() != Some(&key)
            {
                if socket
                    .send(Message::Text(message.to_string().into()))
                    .await
                    .is_err()
                {
                    break None;
                }
                last_sent = Some(key);
            }
            loop {
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            break 'send None;
                        }
                        tokio::time::sleep(DEBOUNCE).await;
                        changes.borrow_and_update();
                        continue 'send;
                    }
                    Ok(()) = node_changes.changed() => {
                        tokio::time::sleep(DEBOUNCE).await;
                        node_changes.borrow_and_update();
                        continue 'send;
                    }
                    _ = reauth.tick() => {
                        if let Recheck::End(reason) = self.recheck().await {
                            info!(user = %self.principal.name, reason, "session stream ended");
                            break 'send Some((close_code::POLICY, reason.to_string()));
                        }
                    }
                    incoming = socket.recv() => match incoming {
                        None | Some(Ok(Message::Close(_))) => break 'send None,
                        // The only error a healthy client can cause is a message over the cap.
                        Some(Err(error)) => {
                            debug!(user = %self.principal.name, %error, "session stream read failed");
                            let reason = format!(
                                "messages to this stream are limited to {} bytes",
                                state.stream_settings.max_message_bytes
                            );
                            break 'send Some((close_code::SIZE, reason));
                        }
                        // Pings are answered by the WebSocket layer; clients have nothing to say.
                        Some(Ok(_)) => {}
                    },
                }
            }
        };
        if let Some((code, reason)) = close {
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            let _ = socket.send(Message::Close(Some(frame))).await;
        }
        debug!(user = %self.principal.name, "stream closed");
    }

    /// Checks the token and, for a stream of every session, the right to list them. An API
    /// server that cannot answer keeps the stream (the next check tries again).
    async fn recheck(&self) -> Recheck {
        let auth = &self.state.auth;
        match auth.authenticate(&self.credentials).await {
            Ok(principal) if principal.name == self.principal.name => {}
            Ok(_) => return Recheck::End("the token now belongs to another user"),
            Err(AuthError::Unavailable(_)) => return Recheck::Keep,
            Err(_) => return Recheck::End("the token is no longer valid"),
        }
        let (permission, withdrawn) = match self.view {
            View::Sessions { see_all: false } => return Recheck::Keep,
            View::Sessions { see_all: true } => (
                Permission::OperateSessions("list"),
                "the right to see every session was withdrawn",
            ),
            View::Cluster => (
                Permission::ReadCluster,
                "the right to read cluster information was withdrawn",
            ),
        };
        if let Ok(false) = auth.authorize(&self.principal, permission).await {
            return Recheck::End(withdrawn);
        }
        Recheck::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ready: &str, cordoned: bool, cpu: &str, memory: &str) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"unschedulable": cordoned},
                "status": {
                    "conditions": [{"type": "Ready", "status": ready}],
                    "capacity": {"cpu": cpu, "memory": memory, "pods": "110"},
                    "allocatable": {"cpu": "500m", "memory": "1Gi", "pods": "100"},
                }
            }))
            .expect("node"),
        )
    }

    fn session(name: &str, user: &str, state: Option<&str>, phase: Option<&str>) -> Arc<Session> {
        let mut spec = json!({"user": user, "template": "firefox"});
        if let Some(state) = state {
            spec["state"] = json!(state);
        }
        let mut object = json!({
            "apiVersion": "stream.space/v1alpha1", "kind": "Session",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": spec,
        });
        if let Some(phase) = phase {
            object["status"] = json!({"phase": phase, "url": "http://x", "podName": "p"});
        }
        Arc::new(serde_json::from_value(object).expect("session"))
    }

    #[test]
    fn query_tokens_stand_in_for_a_missing_header() {
        let token = |headers: &HeaderMap| {
            super::super::auth::bearer_token(headers)
                .ok()
                .map(str::to_string)
        };
        let mut headers = HeaderMap::new();
        add_query_token(&mut headers, Some("from-query"));
        assert_eq!(token(&headers).as_deref(), Some("from-query"));

        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer from-header"),
        );
        add_query_token(&mut headers, Some("from-query"));
        assert_eq!(token(&headers).as_deref(), Some("from-header"));

        let mut headers = HeaderMap::new();
        add_query_token(&mut headers, None);
        add_query_token(&mut headers, Some("bad\ntoken"));
        assert!(headers.is_empty());
    }

    #[test]
    fn stats_count_nodes_and_sessions() {
        let nodes = [
            node("a", "True", false, "4", "8Gi"),
            node("b", "False", true, "2500m", "4Gi"),
            node("c", "Unknown", false, "1", "512Mi"),
            node("d", "True", true, "not-a-number", "1Gi"),
        ];
        let sessions = [
            session("s1", "alice", None, Some("Running")),
            session("s2", "alice", Some("hibernated"), Some("Hibernated")),
            session("s3", "bob", Some("running"), None),
        ];
        let stats = cluster_stats(&nodes, &sessions);
        assert_eq!(
            stats.nodes,
            NodeCounts {
                total: 4,
                ready: 2,
                not_ready: 2,
                cordoned: 2
            }
        );
        assert_eq!(stats.capacity["cpu"], "7.5");
        assert_eq!(stats.capacity["memory"], "13.5Gi");
        assert_eq!(stats.capacity["pods"], "440");
        assert_eq!(stats.allocatable["cpu"], "2.0");
        assert_eq!(stats.allocatable["memory"], "4.0Gi");
        assert_eq!(stats.sessions.total, 3);
        assert_eq!(
            stats.sessions.by_phase,
            BTreeMap::from([
                ("Hibernated".into(), 1),
                ("Pending".into(), 1),
                ("Running".into(), 1)
            ])
        );
        assert_eq!(
            stats.sessions.by_state,
            BTreeMap::from([("hibernated".into(), 1), ("running".into(), 2)])
        );
        let json = serde_json::to_value(&stats).expect("json");
        assert_eq!(json["nodes"]["notReady"], 2);
        assert_eq!(json["sessions"]["byPhase"]["Running"], 1);
    }

    #[test]
    fn users_see_their_sessions_operators_all() {
        let sessions = [
            session("b-1", "bob", None, Some("Running")),
            session("a-2", "alice", None, None),
            session("a-1", "alice", Some("hibernated"), Some("Hibernated")),
        ];
        let alice = Principal {
            name: "alice".into(),
            groups: vec![],
        };
        let connections = |name: &str| usize::from(name == "a-1") * 2;
        let names = |items: &[Value]| {
            items
                .iter()
                .map(|i| i["name"].as_str().unwrap_or_default().to_string())
                .collect::<Vec<_>>()
        };
        let own = visible_sessions(&sessions, &alice, false, connections, Timestamp::UNIX_EPOCH);
        assert_eq!(names(&own), ["a-1", "a-2"]);
        let all = visible_sessions(&sessions, &alice, true, connections, Timestamp::UNIX_EPOCH);
        assert_eq!(names(&all), ["a-1", "a-2", "b-1"]);
        assert_eq!(
            own[0],
            json!({
                "name": "a-1", "namespace": "ns", "user": "alice", "template": "firefox",
                "state": "hibernated", "tags": [], "generation": null,
                "status": {"phase": "Hibernated", "url": "http://x", "podName": "p",
                    "observedGeneration": null, "reconciledAt": null, "conditions": []},
                "lastActivity": null, "idleDuration": null, "idleThreshold": 1800,
                "isIdle": false, "isActive": false, "activeConnections": 2,
            })
        );
        assert_eq!(own[1]["status"]["phase"], "Pending");
        assert_eq!(own[1]["state"], "running");
        let message = sessions_update(&own, Timestamp::UNIX_EPOCH);
        assert_eq!(message["type"], "sessions_update");
        assert_eq!(message["count"], 2);
        assert_eq!(message["timestamp"], "1970-01-01T00:00:00Z");
    }
}
