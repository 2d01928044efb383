//! The rollout console: one page for operators at `/console`, its state as JSON and live over
//! a WebSocket.
//!
//! | method | path | |
//! |---|---|---|
//! | GET | `/console`, `/console/console.js`, `/console/console.css` | the page (compiled in, no external assets; unauthenticated, it holds no data) |
//! | GET | `/api/v1/console/state` | per type: the flag, owned counts, the last flips; the last shadow differences |
//! | GET (WebSocket) | `/api/v1/ws/flags[?token=]` | the same state, pushed whenever it changes |
//!
//! The page keeps the token in the browser's session storage and sends it as the API's
//! bearer token; changes go through the flag endpoints ([`super::flags`]), so the console can
//! do nothing the token could not do with curl. Its state (who flipped what and why, shadow
//! differences of every user's sessions) is for operators: the state and the stream need
//! [`CONSOLE_PERMISSION`], anyone else gets 403.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Event;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

use super::ApiState;
use super::auth::Permission;
use super::handlers::ApiError;
use crate::crd::FeatureFlag;
use crate::ownership::ResourceType;
use crate::ownership::shadow::SHADOW_EVENT_REASON;

const PAGE: &str = include_str!("../../assets/console/index.html");
const SCRIPT: &str = include_str!("../../assets/console/console.js");
const STYLE: &str = include_str!("../../assets/console/console.css");
/// Namespace of the Events of cluster-scoped FeatureFlags.
const FLAG_EVENT_NAMESPACE: &str = "default";
/// Flips shown per type, newest first.
const FLIPS_PER_TYPE: usize = 5;
/// Shadow differences shown, newest first.
const SHADOW_SHOWN: usize = 10;
/// How often an open stream looks for changes the flag watch does not carry (owned counts,
/// Events); a flip itself is pushed as soon as the watch delivers it.
const STATUS_POLL: Duration = Duration::from_secs(2);

/// `GET /console`: the page.
pub(super) async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// `GET /console/console.js`.
pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /console/console.css`.
pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:",
            ),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// What reading the console's state needs: the operator right over every user's sessions,
/// since the state names every user's shadow differences and the reasons of every flip.
pub(super) const CONSOLE_PERMISSION: Permission = Permission::OperateSessions("list");

/// 401 without a valid token, 403 for a caller who is no operator.
async fn require_operator(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    let principal = state.principal(headers).await?;
    state.require(&principal, CONSOLE_PERMISSION).await
}

pub(super) async fn state_handler(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Response {
    let reply = async {
        require_operator(&state, &headers).await?;
        Ok::<_, ApiError>(Json(snapshot(&state).await).into_response())
    }
    .await;
    reply.into_response()
}

/// Everything the page shows. Reads that fail leave their part empty and name the failure in
/// `errors`, so the flags still show when, say, Events may not be listed.
pub(super) async fn snapshot(state: &ApiState) -> Value {
    let mut errors = Vec::new();
    let index = state.flags();
    let objects = match Api::<FeatureFlag>::all(state.client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => list.items,
        Err(error) => {
            errors.push(format!("listing FeatureFlags: {error}"));
            Vec::new()
        }
    };
    let flag_events = list_events(state, FLAG_EVENT_NAMESPACE, None, &mut errors).await;
    let shadow_events = list_events(
        state,
        &state.namespace,
        Some(format!("reason={SHADOW_EVENT_REASON}")),
        &mut errors,
    )
    .await;
    let flags: Vec<Value> = ResourceType::ALL
        .into_iter()
        .map(|resource| {
            let name = index.object_name(resource);
            let mut view = super::flags::view(
                resource,
                &name,
                index.spec(resource).as_ref(),
                &index.effective(resource),
            );
            let status = objects
                .iter()
                .find(|f| f.name_any() == name)
                .and_then(|f| f.status.clone())
                .unwrap_or_default();
            view["owned"] = json!(status.owned.unwrap_or_default());
            view["lastChanged"] = json!(status.last_changed.map(|t| t.0.to_string()));
            view["flips"] = Value::Array(
                flag_events
                    .iter()
                    .filter(|e| e.involved_object.name.as_deref() == Some(name.as_str()))
                    .take(FLIPS_PER_TYPE)
                    .map(event_view)
                    .collect(),
            );
            view
        })
        .collect();
    let shadow: Vec<Value> = shadow_events
        .iter()
        .take(SHADOW_SHOWN)
        .map(|e| {
            let mut view = event_view(e);
            view["object"] = json!(format!(
                "{}/{}",
                e.involved_object.kind.as_deref().unwrap_or_default(),
                e.involved_object.name.as_deref().unwrap_or_default()
            ));
            view
        })
        .collect();
    json!({"flags": flags, "shadowDifferences": shadow, "loaded": index.loaded(), "errors": errors})
}

/// Events of `namespace` (matching `selector`), newest first.
async fn list_events(
    state: &ApiState,
    namespace: &str,
    selector: Option<String>,
    errors: &mut Vec<String>,
) -> Vec<Event> {
    let mut params = ListParams::default();
    if let Some(selector) = selector {
        params = params.fields(&selector);
    }
    match Api::<Event>::namespaced(state.client.clone(), namespace)
        .list(&params)
        .await
    {
        Ok(list) => {
            let mut events = list.items;
            events.sort_by_key(|e| std::cmp::Reverse(event_time(e)));
            events
        }
        Err(error) => {
            errors.push(format!("listing Events in {namespace}: {error}"));
            Vec::new()
        }
    }
}

/// When an Event happened, whichever field its writer filled.
fn event_time(event: &Event) -> Option<String> {
    event
        .event_time
        .as_ref()
        .map(|t| t.0.to_string())
        .or_else(|| event.last_timestamp.as_ref().map(|t| t.0.to_string()))
        .or_else(|| {
            event
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
        })
}

fn event_view(event: &Event) -> Value {
    json!({
        "time": event_time(event),
        "reason": event.reason,
        "note": event.message,
        "by": event.reporting_component.clone().or_else(|| event.source.as_ref().and_then(|s| s.component.clone())),
    })
}

pub(super) async fn flags_ws(
    State(state): State<Arc<ApiState>>,
    mut headers: HeaderMap,
    Query(query): Query<super::live::WsQuery>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    super::live::add_query_token(&mut headers, query.token.as_deref());
    match (require_operator(&state, &headers).await, upgrade) {
        (Err(error), _) => error.into_response(),
        (Ok(_), Err(rejection)) => rejection.into_response(),
        (Ok(_), Ok(upgrade)) => {
            let state = state.clone();
            upgrade.on_upgrade(move |socket| stream(state, socket))
        }
    }
}

/// Sends the state, then again whenever it changes, until the client goes away.
async fn stream(state: Arc<ApiState>, mut socket: WebSocket) {
    let mut flips = state.flags().subscribe();
    let mut last = Value::Null;
    loop {
        let current = snapshot(&state).await;
        if current != last {
            if socket
                .send(Message::Text(current.to_string().into()))
                .await
                .is_err()
            {
                return;
            }
            last = current;
        }
        tokio::select! {
            changed = flips.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(STATUS_POLL) => {}
            message = socket.recv() => match message {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
