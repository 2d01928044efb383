//! The controller handler: the API only writes intent. Each action becomes a `NodeOperation`
//! (see [`super::intent`]) that the controller carries out; the answer is 202 with its name.
//! An uncordon deletes the API's cordoning operations of the node (their finalizer makes the
//! node schedulable), and refuses with 409 while operations from elsewhere hold the cordon.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::info;

use super::intent::{self, Uncordon};
use super::legacy::{self, node_missing};
use super::request::NodeAction;
use crate::api::error::ApiError;
use crate::api_status::is_not_found;
use crate::crd::NodeOperation;
use crate::nodeop::edits::NodeView;

/// Attempts at a free generated name (a clash of 5 random characters is rare).
const NAME_ATTEMPTS: u32 = 3;

pub async fn act(
    client: &Client,
    extra_labels: &BTreeMap<String, String>,
    node_name: &str,
    action: &NodeAction,
) -> Result<Response, ApiError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes
        .get_opt(node_name)
        .await?
        .ok_or_else(|| node_missing(node_name))?;
    let operations: Api<NodeOperation> = Api::all(client.clone());
    if *action == NodeAction::Uncordon {
        return uncordon(&operations, &node).await;
    }
    // The same refusals as the legacy handler (taint exists, taint not found), decided on the
    // node as it is now.
    legacy::edit_for(&NodeView::of(&node), action, Timestamp::now()).map_err(legacy::refused)?;
    let name = create(&operations, node_name, action, extra_labels).await?;
    info!(node = %node_name, operation = %name, action = action.verb(), "node operation created");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "name": name,
            "message": format!(
                "Node {} requested successfully: NodeOperation {name} created",
                action.verb()
            ),
        })),
    )
        .into_response())
}

async fn create(
    operations: &Api<NodeOperation>,
    node: &str,
    action: &NodeAction,
    extra_labels: &BTreeMap<String, String>,
) -> Result<String, ApiError> {
    for _ in 0..NAME_ATTEMPTS {
        let suffix = intent::suffix_from(&entropy(node));
        let Some(op) = intent::operation(node, action, extra_labels, &suffix) else {
            break;
        };
        match operations.create(&PostParams::default(), &op).await {
            Ok(created) => return Ok(created.name_any()),
            Err(kube::Error::Api(status)) if status.is_already_exists() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Conflict(format!(
        "could not find a free NodeOperation name for node {node}; try again"
    )))
}

async fn uncordon(operations: &Api<NodeOperation>, node: &Node) -> Result<Response, ApiError> {
    let name = node.name_any();
    let all = operations.list(&ListParams::default()).await?.items;
    match intent::uncordon(&name, &all) {
        Uncordon::Delete(names) => {
            for op in &names {
                match operations.delete(op, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            info!(node = %name, operations = ?names, "cordoning node operations deleted");
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({
                    "names": names,
                    "message": format!(
                        "Node uncordon requested successfully: deleting NodeOperation {}",
                        names.join(", ")
                    ),
                })),
            )
                .into_response())
        }
        Uncordon::HeldByOthers(names) => Err(ApiError::Conflict(format!(
            "node {name} is held cordoned by NodeOperation {} not created through the API; delete {} (or its file in Git) to uncordon",
            names.join(", "),
            if names.len() == 1 { "it" } else { "them" }
        ))),
        Uncordon::NotHeld => {
            let unschedulable = node
                .spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false);
            if unschedulable {
                Err(ApiError::Conflict(format!(
                    "node {name} is cordoned, but by no NodeOperation: uncordon it where it was cordoned (kubectl uncordon), or switch nodes to legacy"
                )))
            } else {
                Ok(Json(json!({
                    "names": Vec::<String>::new(),
                    "message": "Node is already schedulable",
                }))
                .into_response())
            }
        }
    }
}

/// Bytes that differ on every call of this process and between replicas.
fn entropy(node: &str) -> Vec<u8> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = Sha256::new();
    hasher.update(Timestamp::now().as_nanosecond().to_le_bytes());
    hasher.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hasher.update(std::process::id().to_le_bytes());
    hasher.update(node.as_bytes());
    hasher.finalize().to_vec()
}
