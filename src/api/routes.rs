//! The route table: every route the API serves, with what its OpenAPI document says about it.
//! The router (`router`) and the document ([`openapi`], served at `/api/v1/openapi.json`)
//! are both built from [`table`], so a route cannot be served without being documented, nor
//! documented without being served; the tests check the served router against the document.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::handler::Handler;
use axum::http::Method;
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use axum::routing::{MethodFilter, MethodRouter, on};
use serde_json::{Map, Value, json};

use super::timing::{self, RouteMetrics};
use super::{ApiState, console, flags, handlers, live, nodes, sessions, ui};
use crate::metrics::SharedMetrics;

/// One query parameter: name, whether required, description.
pub type Param = (&'static str, bool, &'static str);

/// One route: a method on a path, its handler, and its documentation.
pub struct Endpoint {
    pub method: Method,
    /// Axum's path syntax (`{id}`, `{*key}` for a rest of the path).
    pub path: &'static str,
    pub operation_id: &'static str,
    /// The `endpoint` label of the route's request metrics (`api::timing`): fixed, so
    /// dashboards keep working when a path or an operation id changes.
    pub metric: &'static str,
    pub tag: &'static str,
    pub summary: &'static str,
    /// Needs a bearer token.
    pub authenticated: bool,
    pub query: &'static [Param],
    /// The JSON request body, described.
    pub body: Option<&'static str>,
    /// Status codes and what each means.
    pub responses: &'static [(u16, &'static str)],
    handler: MethodRouter<Arc<ApiState>>,
}

impl Endpoint {
    fn new<H, T>(
        method: Method,
        path: &'static str,
        operation_id: &'static str,
        tag: &'static str,
        summary: &'static str,
        handler: H,
    ) -> Endpoint
    where
        H: Handler<T, Arc<ApiState>>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).unwrap_or(MethodFilter::GET);
        Endpoint {
            method,
            path,
            operation_id,
            metric: "",
            tag,
            summary,
            authenticated: true,
            query: &[],
            body: None,
            responses: &[],
            handler: on(filter, handler),
        }
    }

    fn metric(mut self, label: &'static str) -> Self {
        self.metric = label;
        self
    }

    fn public(mut self) -> Self {
        self.authenticated = false;
        self
    }

    fn query(mut self, query: &'static [Param]) -> Self {
        self.query = query;
        self
    }

    fn body(mut self, body: &'static str) -> Self {
        self.body = Some(body);
        self
    }

    fn responses(mut self, responses: &'static [(u16, &'static str)]) -> Self {
        self.responses = responses;
        self
    }

    /// The path in OpenAPI's syntax (`{*key}` becomes `{key}`).
    pub fn openapi_path(&self) -> String {
        self.path.replace("{*", "{")
    }

    /// Names of the path parameters.
    pub fn path_params(&self) -> Vec<&'static str> {
        self.path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| name.trim_start_matches('*'))
            .collect()
    }
}

const SESSION_ERRORS: &[(u16, &str)] = &[
    (400, "invalid session id or request"),
    (401, "missing or invalid bearer token"),
    (
        403,
        "not the caller's session and the caller is no operator (the same answer whether it exists or not)",
    ),
    (404, "no such session (owners and operators only)"),
];

/// Every route the API serves, area by area.
pub fn table() -> Vec<Endpoint> {
    [
        session_routes(),
        connection_routes(),
        template_and_quota_routes(),
        flag_routes(),
        console_routes(),
        node_routes(),
        live_routes(),
        operation_routes(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Sessions: create, list, get, change and delete.
#[rustfmt::skip]
fn session_routes() -> Vec<Endpoint> {
    use Method as M;
    vec![
        Endpoint::new(M::POST, "/api/v1/sessions", "createSession", "sessions", "Create a session", sessions::create)
            .metric("sessions_create")
            .body("{user, template, resources?{memory, cpu}, persistentHome?, idleTimeout?, maxSessionDuration?, tags?}")
            .responses(&[(202, "accepted: {name, namespace, user, template, state: pending, ..., status{phase: Pending, message}}"), (400, "invalid body, resources or template"), (401, "missing or invalid bearer token"), (403, "another user's session without the operator right, or over quota")]),
        Endpoint::new(M::GET, "/api/v1/sessions", "listSessions", "sessions", "List sessions", sessions::list)
            .metric("sessions_list")
            .query(&[("user", false, "only this user's sessions: a filter, never an identity (another user's needs the operator right)")])
            .responses(&[(200, "{sessions: [SessionItem], total}"), (401, "missing or invalid bearer token"), (403, "?user= names another user and the caller is no operator")]),
        Endpoint::new(M::GET, "/api/v1/sessions/by-tags", "listSessionsByTags", "sessions", "List sessions with any of the tags", sessions::by_tags)
            .metric("sessions_by_tags")
            .query(&[("tags", true, "comma-separated and/or repeated; a session matches with any of them"), ("user", false, "only this user's sessions (a filter, as on the list)")])
            .responses(&[(200, "{sessions: [SessionItem], total}"), (400, "no tags, or a tag over 63 characters"), (401, "missing or invalid bearer token"), (403, "?user= names another user and the caller is no operator")]),
        Endpoint::new(M::GET, "/api/v1/sessions/{id}", "getSession", "sessions", "One session", sessions::get_one)
            .metric("sessions_get")
            .responses(&[(200, "SessionItem")]),
        Endpoint::new(M::PATCH, "/api/v1/sessions/{id}", "setSessionState", "sessions", "Change a session's state", sessions::patch)
            .metric("sessions_patch")
            .body("{state: running | hibernated | terminated}")
            .responses(&[(202, "{name, state, message}"), (409, "the session kept changing; retry")]),
        Endpoint::new(M::DELETE, "/api/v1/sessions/{id}", "deleteSession", "sessions", "Delete a session", sessions::delete)
            .metric("sessions_delete")
            .responses(&[(202, "{name, message}")]),
        Endpoint::new(M::PATCH, "/api/v1/sessions/{id}/tags", "setSessionTags", "sessions", "Replace a session's tags", sessions::set_tags)
            .metric("sessions_tags")
            .body("{tags: [string]} (the whole new list; [] removes every tag)")
            .responses(&[(200, "SessionItem after the change"), (409, "the session changed during the write; retry")]),
        Endpoint::new(M::GET, "/api/v1/sessions/{id}/activity", "getSessionActivity", "sessions", "A session's activity", sessions::activity)
            .metric("sessions_activity")
            .responses(&[(200, "{sessionId, state, lastActivity, idleDuration, idleThreshold, isIdle, isActive, activeConnections}")]),
    ]
}

/// Activity and connections.
#[rustfmt::skip]
fn connection_routes() -> Vec<Endpoint> {
    use Method as M;
    vec![
        Endpoint::new(M::POST, "/api/v1/sessions/{id}/heartbeat", "heartbeat", "connections", "Record activity (and renew a connection)", handlers::heartbeat)
            .metric("heartbeat")
            .query(&[("connectionId", false, "renew this connection (from connect)")])
            .responses(&[(200, "{success, message, sessionId, connectionId?, connectionExpiresAt?}"), (404, "the connection is not open (closed, expired, never made): connect again")]),
        Endpoint::new(M::GET, "/api/v1/sessions/{id}/connect", "connect", "connections", "Open (or renew) a connection; wakes a hibernated session", handlers::connect)
            .metric("connect")
            .query(&[("connectionId", false, "the client's connection id: repeated connects with it are one connection"), ("user", false, "passed on to the controller's connection event")])
            .responses(&[(200, "{connectionId, newConnection, sessionUrl, state, ready, message}"), (429, "the session has 64 open connections")]),
        Endpoint::new(M::POST, "/api/v1/sessions/{id}/disconnect", "disconnect", "connections", "Close a connection", handlers::disconnect)
            .metric("disconnect")
            .query(&[("connectionId", true, "the connection to close")])
            .responses(&[(200, "{message, connectionId, activeConnections}")]),
        Endpoint::new(M::GET, "/api/v1/sessions/{id}/connections", "listConnections", "connections", "A session's open connections", handlers::connections)
            .metric("connections")
            .responses(&[(200, "{sessionId, activeConnections, connections: [{connectionId, user, connectedAt, lastHeartbeat, expiresAt}], expirySeconds}")]),
    ]
}

/// Templates and the caller's quota.
#[rustfmt::skip]
fn template_and_quota_routes() -> Vec<Endpoint> {
    use Method as M;
    vec![
        Endpoint::new(M::GET, "/api/v1/templates", "listTemplates", "templates", "List templates", ui::list_templates)
            .metric("templates_list")
            .query(&[("category", false, "only templates of this category (case-insensitive)")])
            .responses(&[(200, "{templates: [TemplateItem], total}"), (400, "category too long"), (401, "missing or invalid bearer token"), (503, "the template cache is still loading")]),
        Endpoint::new(M::GET, "/api/v1/templates/{name}", "getTemplate", "templates", "One template", ui::get_template)
            .metric("templates_get")
            .responses(&[(200, "TemplateItem"), (400, "invalid template name"), (401, "missing or invalid bearer token"), (404, "no such template"), (503, "the template cache is still loading")]),
        Endpoint::new(M::GET, "/api/v1/quota", "getQuota", "quota", "The caller's quota limits and usage", ui::quota)
            .metric("quota")
            .query(&[("user", false, "another user's quota (operators only)")])
            .responses(&[(200, "{user, limits{maxSessions, maxCpuPerSession, maxMemoryPerSession, maxCpu, maxMemory, maxGpu}, usage{sessions, cpu, memory, gpu}, remaining{...}}"), (400, "invalid user name"), (401, "missing or invalid bearer token"), (403, "another user's quota and the caller is no operator"), (503, "the quota caches or ledger cannot be read yet")]),
    ]
}

/// Ownership flags and their overrides.
#[rustfmt::skip]
fn flag_routes() -> Vec<Endpoint> {
    use Method as M;
    vec![
        Endpoint::new(M::GET, "/api/v1/flags", "listFlags", "flags", "Ownership flags as this replica sees them", flags::list)
            .metric("flags_list")
            .responses(&[(200, "[flag]"), (401, "missing or invalid bearer token")]),
        Endpoint::new(M::GET, "/api/v1/flags/{type}", "getFlag", "flags", "One ownership flag", flags::get)
            .metric("flags_get")
            .responses(&[(200, "flag"), (400, "unknown resource type"), (401, "missing or invalid bearer token")]),
        Endpoint::new(M::PUT, "/api/v1/flags/{type}/override", "setFlagOverride", "flags", "Set a break-glass override", flags::put_override)
            .metric("flags_override_put")
            .body("{mode, ttl?, reason}")
            .responses(&[(200, "the flag"), (400, "invalid body"), (401, "missing or invalid bearer token"), (403, "the caller may not manage flags")]),
        Endpoint::new(M::DELETE, "/api/v1/flags/{type}/override", "clearFlagOverride", "flags", "Clear the override", flags::delete_override)
            .metric("flags_override_delete")
            .responses(&[(200, "the flag"), (401, "missing or invalid bearer token"), (403, "the caller may not manage flags")]),
        Endpoint::new(M::PUT, "/api/v1/flags/{type}/baseline", "setFlagBaseline", "flags", "Set the baseline of a flag no GitSync applied", flags::put_baseline)
            .metric("flags_baseline_put")
            .body("{mode, percent?, reason}")
            .responses(&[(200, "the flag"), (400, "invalid body"), (401, "missing or invalid bearer token"), (403, "the caller may not manage flags"), (409, "the flag comes from a GitSync: commit to its repository")]),
    ]
}

/// The rollout console: its page, assets, state and WebSocket.
#[rustfmt::skip]
fn console_routes() -> Vec<Endpoint> {
    use Method as M;
    vec![
        Endpoint::new(M::GET, "/console", "console", "console", "The rollout console page", console::page)
            .metric("console_page")
            .public()
            .responses(&[(200, "HTML")]),
        Endpoint::new(M::GET, "/console/console.js", "consoleScript", "console", "The console's script", console::script)
            .metric("console_script")
            .public()
            .responses(&[(200, "JavaScript")]),
        Endpoint::new(M::GET, "/console/console.css", "consoleStyle", "console", "The console's style sheet", console::style)
            .metric("console_style")
            .public()
            .responses(&[(200, "CSS")]),
        Endpoint::new(M::GET, "/api/v1/console/state", "consoleState", "console", "Per type: the flag, owned counts, last flips; the last shadow differences", console::state_handler)
            .metric("console_state")
            .responses(&[(200, "{flags, shadowDifferences, loaded, errors}"), (401, "missing or invalid bearer token")]),
        Endpoint::new(M::GET, "/api/v1/ws/flags", "flagsWebSocket", "console", "WebSocket: the console state, pushed on change", console::flags_ws)
            .metric("ws_flags")
            .query(&[("token", false, "the bearer token, for browsers (the header wins)")])
            .responses(&[(101, "upgraded; messages are the console state"), (401, "missing or invalid bearer token")]),
    ]
}

/// Admin node operations.
#[rustfmt::skip]
fn node_routes() -> Vec<Endpoint> {
    use Method as M;
    vec![
        Endpoint::new(M::GET, "/api/v1/admin/nodes", "listNodes", "nodes", "List nodes", nodes::list)
            .metric("nodes_list")
            .responses(&[(200, "[NodeInfo]"), (401, "missing or invalid bearer token"), (403, "the caller may not read cluster information")]),
        Endpoint::new(M::GET, "/api/v1/admin/nodes/stats", "nodeStats", "nodes", "Node totals", nodes::stats)
            .metric("nodes_stats")
            .responses(&[(200, "{totalNodes, readyNodes, notReadyNodes, totalCapacity, totalAllocatable}")]),
        Endpoint::new(M::GET, "/api/v1/admin/nodes/{name}", "getNode", "nodes", "One node", nodes::get_one)
            .metric("nodes_get")
            .responses(&[(200, "NodeInfo"), (404, "no such node")]),
        Endpoint::new(M::PUT, "/api/v1/admin/nodes/{name}/labels", "setNodeLabel", "nodes", "Set a node label", nodes::set_label)
            .metric("nodes_label")
            .body("{key, value}")
            .responses(&[(200, "{message}"), (202, "NodeOperation created (controller)"), (400, "invalid key or value"), (403, "the caller may not manage nodes")]),
        Endpoint::new(M::DELETE, "/api/v1/admin/nodes/{name}/labels/{*key}", "removeNodeLabel", "nodes", "Remove a node label", nodes::remove_label)
            .metric("nodes_unlabel")
            .responses(&[(200, "{message}"), (202, "NodeOperation created (controller)")]),
        Endpoint::new(M::POST, "/api/v1/admin/nodes/{name}/taints", "addNodeTaint", "nodes", "Add a node taint", nodes::add_taint)
            .metric("nodes_taint")
            .body("{key, value, effect}")
            .responses(&[(200, "{message}"), (202, "NodeOperation created (controller)"), (409, "Taint already exists")]),
        Endpoint::new(M::DELETE, "/api/v1/admin/nodes/{name}/taints/{*key}", "removeNodeTaint", "nodes", "Remove a node taint", nodes::remove_taint)
            .metric("nodes_untaint")
            .responses(&[(200, "{message}"), (202, "NodeOperation created (controller)"), (404, "Taint not found")]),
        Endpoint::new(M::POST, "/api/v1/admin/nodes/{name}/cordon", "cordonNode", "nodes", "Cordon a node", nodes::cordon)
            .metric("nodes_cordon")
            .responses(&[(200, "{message}"), (202, "NodeOperation created (controller)")]),
        Endpoint::new(M::POST, "/api/v1/admin/nodes/{name}/uncordon", "uncordonNode", "nodes", "Uncordon a node", nodes::uncordon)
            .metric("nodes_uncordon")
            .responses(&[(200, "{message}"), (202, "NodeOperation deleted or created (controller)")]),
        Endpoint::new(M::POST, "/api/v1/admin/nodes/{name}/drain", "drainNode", "nodes", "Drain a node", nodes::drain)
            .metric("nodes_drain")
            .body("{grace_period_seconds?}")
            .responses(&[(202, "drain started"), (409, "this replica is draining the node already")]),
    ]
}

/// Live views: cluster statistics and the WebSockets of sessions and of the cluster.
#[rustfmt::skip]
fn live_routes() -> Vec<Endpoint> {
    use Method as M;
    vec![
        Endpoint::new(M::GET, "/api/v1/cluster/stats", "clusterStats", "cluster", "Node and session counts", live::cluster_stats_handler)
            .metric("cluster_stats")
            .responses(&[(200, "{nodes, capacity, allocatable, sessions}"), (401, "missing or invalid bearer token"), (403, "the caller may not read cluster information"), (503, "the caches are still loading")]),
        Endpoint::new(M::GET, "/api/v1/ws/sessions", "sessionsWebSocket", "cluster", "WebSocket: the visible sessions, pushed on change", live::sessions_ws)
            .metric("ws_sessions")
            .query(&[("token", false, "the bearer token, for browsers (the header wins)")])
            .responses(&[(101, "upgraded; messages {type: sessions_update, sessions, count, timestamp}"), (401, "missing or invalid bearer token"), (429, "too many streams")]),
        Endpoint::new(M::GET, "/api/v1/ws/cluster", "clusterWebSocket", "cluster", "WebSocket: node and session counts, pushed on change", live::cluster_ws)
            .metric("ws_cluster")
            .query(&[("token", false, "the bearer token, for browsers (the header wins)")])
            .responses(&[(101, "upgraded; messages {type: cluster_update, nodes, sessions, capacity, allocatable, timestamp}"), (401, "missing or invalid bearer token"), (403, "the caller may not read cluster information"), (429, "too many streams")]),
    ]
}

/// Operations: this document, liveness, readiness and metrics.
#[rustfmt::skip]
fn operation_routes() -> Vec<Endpoint> {
    use Method as M;
    vec![
        Endpoint::new(M::GET, "/api/v1/openapi.json", "openapi", "meta", "This document", openapi_handler)
            .metric("openapi")
            .public()
            .responses(&[(200, "the OpenAPI 3.0 document of every route")]),
        Endpoint::new(M::GET, "/healthz", "healthz", "meta", "Liveness", healthz)
            .metric("healthz")
            .public()
            .responses(&[(200, "ok")]),
        Endpoint::new(M::GET, "/readyz", "readyz", "meta", "Readiness: every watch cache loaded", super::readyz)
            .metric("readyz")
            .public()
            .responses(&[(200, "ready"), (503, "a cache is still loading")]),
        Endpoint::new(M::GET, "/metrics", "metrics", "meta", "Prometheus metrics (OpenMetrics text)", metrics)
            .metric("metrics")
            .public()
            .responses(&[(200, "OpenMetrics text")]),
    ]
}

async fn healthz() -> &'static str {
    "ok"
}

async fn metrics(State(state): State<Arc<ApiState>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn openapi_handler() -> Json<Value> {
    Json(openapi(&table()))
}

/// The router of every endpoint of `table`, each counted and timed in `metrics` under its
/// own label ([`timing`]).
pub(crate) fn router(table: Vec<Endpoint>, metrics: &SharedMetrics) -> Router<Arc<ApiState>> {
    table.into_iter().fold(Router::new(), |router, endpoint| {
        let route = RouteMetrics {
            metrics: metrics.clone(),
            endpoint: endpoint.metric,
        };
        let timed = endpoint
            .handler
            .layer(from_fn_with_state(route, timing::timed));
        router.route(endpoint.path, timed)
    })
}

/// The OpenAPI 3.0 document of `table`.
pub fn openapi(table: &[Endpoint]) -> Value {
    let mut paths = Map::new();
    for endpoint in table {
        let entry = paths
            .entry(endpoint.openapi_path())
            .or_insert_with(|| json!({}));
        if let Some(entry) = entry.as_object_mut() {
            entry.insert(endpoint.method.as_str().to_lowercase(), operation(endpoint));
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "streamspace-controller API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The StreamSpace-compatible API. Errors are {\"success\": false, \"error\": \"<message>\"}. See docs/api.md.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {
                "type": "object",
                "properties": {"success": {"type": "boolean"}, "error": {"type": "string"}},
            }},
        },
        "paths": paths,
    })
}

fn operation(endpoint: &Endpoint) -> Value {
    let mut parameters: Vec<Value> = endpoint
        .path_params()
        .into_iter()
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    parameters.extend(endpoint.query.iter().map(|(name, required, description)| {
        json!({"name": name, "in": "query", "required": required, "description": description, "schema": {"type": "string"}})
    }));
    let mut responses = Map::new();
    // Every route of one session answers the same refusals.
    let common: &[(u16, &str)] = if endpoint.path.starts_with("/api/v1/sessions/{id}") {
        SESSION_ERRORS
    } else {
        &[]
    };
    let specific = endpoint.responses.iter().map(|(c, d)| (*c, *d));
    let merged = common
        .iter()
        .filter(|(code, _)| !endpoint.responses.iter().any(|(c, _)| c == code))
        .map(|(c, d)| (*c, *d))
        .chain(specific);
    for (code, description) in merged {
        let mut response = json!({"description": description});
        if code >= 400 {
            response["content"] =
                json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}});
        }
        responses.insert(code.to_string(), response);
    }
    if endpoint.authenticated && !responses.contains_key("401") {
        responses.insert(
            "401".into(),
            json!({"description": "missing or invalid bearer token"}),
        );
    }
    if responses.is_empty() {
        responses.insert("200".into(), json!({"description": "OK"}));
    }
    let mut operation = json!({
        "operationId": endpoint.operation_id,
        "tags": [endpoint.tag],
        "summary": endpoint.summary,
        "parameters": parameters,
        "responses": responses,
    });
    if endpoint.authenticated {
        operation["security"] = json!([{"bearer": []}]);
    }
    if let Some(body) = endpoint.body {
        operation["requestBody"] = json!({
            "required": true,
            "description": body,
            "content": {"application/json": {"schema": {"type": "object"}}},
        });
    }
    operation
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn the_document_has_one_operation_per_route() {
        let table = table();
        let document = openapi(&table);
        let documented: BTreeSet<(String, String)> = document["paths"]
            .as_object()
            .into_iter()
            .flatten()
            .flat_map(|(path, methods)| {
                methods
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(move |(method, _)| (path.clone(), method.to_uppercase()))
            })
            .collect();
        let routes: BTreeSet<(String, String)> = table
            .iter()
            .map(|e| (e.openapi_path(), e.method.as_str().to_string()))
            .collect();
        assert_eq!(documented, routes);
        assert_eq!(routes.len(), table.len(), "a route is listed twice");
        let ids: BTreeSet<&str> = table.iter().map(|e| e.operation_id).collect();
        assert_eq!(ids.len(), table.len(), "operation ids are unique");
        let labels: BTreeSet<&str> = table.iter().map(|e| e.metric).collect();
        assert_eq!(labels.len(), table.len(), "metric labels are unique");
        assert!(!labels.contains(""), "every route has a metric label");
        let remove = &document["paths"]["/api/v1/admin/nodes/{name}/labels/{key}"]["delete"];
        let names: Vec<&str> = remove["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(names, ["name", "key"]);
        assert_eq!(document["paths"]["/healthz"]["get"].get("security"), None);
        assert_eq!(
            document["paths"]["/api/v1/quota"]["get"]["security"],
            json!([{"bearer": []}])
        );
    }

    /// The router is built from the table alone: no module adds a route of its own.
    #[test]
    fn every_route_comes_from_the_table() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/src/api");
        let mut stack = vec![std::path::PathBuf::from(root)];
        let mut offenders = Vec::new();
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let routing = [
                    ".route(",
                    ".nest(",
                    ".merge(",
                    ".route_service(",
                    ".fallback(",
                ];
                // Tests may build routers of their own; served code may not.
                let served = text.split("#[cfg(test)]").next().unwrap_or_default();
                let found = served
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .any(|l| routing.iter().any(|r| l.contains(r)));
                if found && !path.ends_with("routes.rs") {
                    offenders.push(path.display().to_string());
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "routes added outside the route table: {offenders:?}"
        );
    }
}
