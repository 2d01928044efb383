//! Admin node endpoints (`/api/v1/admin/nodes`), served by the legacy or the controller
//! handler per node as the `nodes` ownership flag says.
//!
//! | method | path | |
//! |---|---|---|
//! | GET | `/admin/nodes` | `[NodeInfo]` from the watch cache ([`info`]) |
//! | GET | `/admin/nodes/stats` | totals: nodes ready and not, capacity, allocatable |
//! | GET | `/admin/nodes/{name}` | `NodeInfo` or 404 |
//! | PUT | `/admin/nodes/{name}/labels` | `{key, value}` |
//! | DELETE | `/admin/nodes/{name}/labels/{key}` | |
//! | POST | `/admin/nodes/{name}/taints` | `{key, value, effect}`; 409 if key and effect exist |
//! | DELETE | `/admin/nodes/{name}/taints/{key}` | every effect of the key; 404 if none |
//! | POST | `/admin/nodes/{name}/cordon`, `/uncordon` | |
//! | POST | `/admin/nodes/{name}/drain` | `{grace_period_seconds}` (default 30); 202 |
//!
//! Reads need the read-cluster permission, actions the manage-nodes permission. A request is
//! checked completely (token, permission, node name, body syntax) before anything is written.
//! Then `owner(nodes, "", node)` picks the handler: [`legacy`] patches and evicts itself,
//! `controller` creates a `NodeOperation` and answers 202 with its name.

mod cache;
mod controller;
pub mod info;
pub mod intent;
pub mod legacy;
pub mod request;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client};
use serde_json::json;

use super::ApiState;
use super::auth::Permission;
use super::handlers::ApiError;
use crate::metrics::SharedMetrics;
use crate::ownership::{Owner, ResourceType};
use request::NodeAction;

/// How the node endpoints act.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    /// Labels added to every NodeOperation the API creates (for example to route them to one
    /// controller instance with its `--node-operation-selector`).
    pub operation_labels: BTreeMap<String, String>,
    /// Connection settings for evictions of legacy drains, used with kube's HTTP 429 retry
    /// turned off (a blocked eviction must come back at once); the shared client when `None`.
    pub eviction_config: Option<kube::Config>,
    /// Legacy drains running at once; more wait for a slot.
    pub concurrent_drains: usize,
    /// A legacy drain gives up (leaving the node cordoned) after this long.
    pub drain_timeout: Duration,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            operation_labels: BTreeMap::new(),
            eviction_config: None,
            concurrent_drains: 4,
            // The old API's drain context.
            drain_timeout: Duration::from_secs(300),
        }
    }
}

/// Parses `key=value` labels (from the command line), checking Kubernetes label syntax.
pub fn parse_labels(pairs: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for pair in pairs.iter().filter(|p| !p.trim().is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not key=value"))?;
        let (key, value) = (key.trim(), value.trim());
        request::check_qualified_name("label key", key)?;
        request::check_label_value("label value", value)?;
        labels.insert(key.to_string(), value.to_string());
    }
    Ok(labels)
}

/// What the node endpoints keep in the API process.
pub(crate) struct NodeState {
    cache: cache::NodeCache,
    settings: NodeSettings,
    drainer: Arc<legacy::Drainer>,
}

impl NodeState {
    /// Changes of the node cache.
    pub(crate) fn node_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.cache.subscribe()
    }

    /// Whether the node and pod caches have their first full lists.
    pub(crate) fn cache_loaded(&self) -> bool {
        self.cache.is_loaded()
    }

    /// Every node in the cache.
    pub(crate) fn cached_nodes(&self) -> Vec<Arc<Node>> {
        self.cache.nodes()
    }

    /// The state and the future that keeps its caches (runs until dropped).
    pub(crate) fn start(
        client: &Client,
        settings: NodeSettings,
        metrics: SharedMetrics,
    ) -> Result<(NodeState, BoxFuture<'static, ()>), kube::Error> {
        let eviction_client = match &settings.eviction_config {
            Some(config) => {
                let mut config = config.clone();
                config.default_retry = false;
                Client::try_from(config)?
            }
            None => {
                tracing::warn!(
                    "no kube config for evictions: a blocked eviction of a legacy drain is retried inside the client"
                );
                client.clone()
            }
        };
        let (cache, watch) = cache::NodeCache::start(client);
        let drainer = Arc::new(legacy::Drainer::new(
            client.clone(),
            eviction_client,
            settings.concurrent_drains,
            settings.drain_timeout,
            metrics,
        ));
        Ok((
            NodeState {
                cache,
                settings,
                drainer,
            },
            watch,
        ))
    }
}

async fn read_permission(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    let principal = state.principal(headers).await?;
    state.require(&principal, Permission::ReadCluster).await?;
    Ok(())
}

/// Every node, from the cache (from the API server until the cache has loaded).
async fn all_nodes(state: &ApiState) -> Result<Vec<Arc<Node>>, ApiError> {
    let nodes = &state.nodes.cache;
    if nodes.is_loaded() {
        return Ok(nodes.nodes());
    }
    let listed = Api::<Node>::all(state.client.clone())
        .list(&Default::default())
        .await?;
    Ok(listed.items.into_iter().map(Arc::new).collect())
}

pub(crate) async fn list(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    read_permission(&state, &headers).await?;
    let mut nodes = all_nodes(&state).await?;
    nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let pods = state.nodes.cache.pods();
    let counts = info::pods_per_node(pods.iter().map(AsRef::as_ref));
    let now = Timestamp::now();
    let infos: Vec<info::NodeInfo> = nodes
        .iter()
        .map(|node| {
            let name = node.metadata.name.as_deref().unwrap_or_default();
            info::node_info(node, counts.get(name).copied().unwrap_or(0), now)
        })
        .collect();
    Ok(Json(infos).into_response())
}

pub(crate) async fn stats(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    read_permission(&state, &headers).await?;
    let nodes = all_nodes(&state).await?;
    Ok(Json(info::stats(nodes.iter().map(AsRef::as_ref))).into_response())
}

pub(crate) async fn get_one(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    read_permission(&state, &headers).await?;
    check_node_name(&name)?;
    // The cache first; the API server when the cache does not have it (not loaded yet, or
    // a node registered a moment ago).
    let node = match state.nodes.cache.node(&name) {
        Some(node) => node,
        None => Api::<Node>::all(state.client.clone())
            .get_opt(&name)
            .await?
            .map(Arc::new)
            .ok_or_else(|| legacy::node_missing(&name))?,
    };
    let pods = state.nodes.cache.pods();
    let count = info::pods_per_node(pods.iter().map(AsRef::as_ref))
        .get(&name)
        .copied()
        .unwrap_or(0);
    Ok(Json(info::node_info(&node, count, Timestamp::now())).into_response())
}

fn check_node_name(name: &str) -> Result<(), ApiError> {
    if super::valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "{name:?} is not a valid node name"
        )))
    }
}

/// Checks token, permission, node name and request, then hands the action to the side that
/// owns the node.
async fn act(
    state: &ApiState,
    headers: &HeaderMap,
    node: &str,
    parse: impl FnOnce() -> Result<NodeAction, String>,
) -> Result<Response, ApiError> {
    let principal = state.principal(headers).await?;
    state.require(&principal, Permission::ManageNodes).await?;
    check_node_name(node)?;
    let action = parse().map_err(ApiError::BadRequest)?;
    let owner = state.flags().owner(ResourceType::Nodes, "", node);
    tracing::debug!(%node, action = action.verb(), owner = owner.as_str(), "node action");
    match owner {
        Owner::Controller => {
            controller::act(
                &state.client,
                &state.nodes.settings.operation_labels,
                node,
                &action,
            )
            .await
        }
        Owner::Legacy | Owner::Shadow => legacy_act(state, node, &action).await,
    }
}

async fn legacy_act(
    state: &ApiState,
    node: &str,
    action: &NodeAction,
) -> Result<Response, ApiError> {
    if let NodeAction::Drain {
        grace_period_seconds,
    } = *action
    {
        state
            .nodes
            .drainer
            .start(node, grace_period_seconds)
            .await?;
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({"message": legacy::message(action)})),
        )
            .into_response());
    }
    let nodes: Api<Node> = Api::all(state.client.clone());
    let now = Timestamp::now();
    legacy::edit_node(&nodes, node, |view| legacy::edit_for(view, action, now)).await?;
    Ok(Json(json!({"message": legacy::message(action)})).into_response())
}

pub(crate) async fn set_label(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    act(&state, &headers, &name, || {
        request::set_label(request::parse_body(&body, false)?)
    })
    .await
}

pub(crate) async fn remove_label(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((name, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    act(&state, &headers, &name, || request::remove_label(key)).await
}

pub(crate) async fn add_taint(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    act(&state, &headers, &name, || {
        request::add_taint(request::parse_body(&body, false)?)
    })
    .await
}

pub(crate) async fn remove_taint(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((name, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    act(&state, &headers, &name, || request::remove_taint(key)).await
}

pub(crate) async fn cordon(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    act(&state, &headers, &name, || Ok(NodeAction::Cordon)).await
}

pub(crate) async fn uncordon(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    act(&state, &headers, &name, || Ok(NodeAction::Uncordon)).await
}

pub(crate) async fn drain(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    act(&state, &headers, &name, || {
        request::drain(request::parse_body(&body, true)?)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_labels_from_the_command_line() {
        let parsed = parse_labels(&[
            "stream.space/test-env=ns1".into(),
            " team = ops ".into(),
            String::new(),
        ]);
        assert_eq!(
            parsed,
            Ok(BTreeMap::from([
                ("stream.space/test-env".to_string(), "ns1".to_string()),
                ("team".to_string(), "ops".to_string()),
            ]))
        );
        for bad in ["novalue", "bad key=v", "k=bad value", "=v"] {
            assert!(parse_labels(&[bad.to_string()]).is_err(), "{bad}");
        }
    }
}
