//! Eviction and PodDisruptionBudget in whichever `policy` version the server offers.
//!
//! k8s-openapi only has `policy/v1` types, but Kubernetes 1.20 serves Eviction and
//! PodDisruptionBudget only as `policy/v1beta1`. As `kubectl drain` does, the eviction version is
//! read from the `pods/eviction` subresource in the core API's resource list, and budgets are
//! read as dynamic objects of the version that serves them.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use kube::{Client, ResourceExt};
use tracing::info;

use super::plan::{Budget, PodFacts};

/// The `policy` versions this server speaks.
#[derive(Clone, Debug)]
pub struct PolicyApi {
    /// `apiVersion` of Eviction bodies, such as `policy/v1beta1`.
    pub eviction_api_version: String,
    pub budgets: ApiResource,
}

/// Asks the server which versions it serves; falls back to `policy/v1beta1` when it does not
/// say (servers older than 1.22 serve only that).
pub async fn discover(client: &Client) -> Result<PolicyApi, kube::Error> {
    let core = client.list_core_api_resources("v1").await?;
    let eviction = core
        .resources
        .iter()
        .find(|r| r.name == "pods/eviction")
        .and_then(|r| Some(format!("{}/{}", r.group.as_deref()?, r.version.as_deref()?)))
        .unwrap_or_else(|| "policy/v1beta1".to_string());
    let v1_budgets = client
        .list_api_group_resources("policy/v1")
        .await
        .map(|list| {
            list.resources
                .iter()
                .any(|r| r.name == "poddisruptionbudgets")
        })
        .unwrap_or(false);
    let version = if v1_budgets { "v1" } else { "v1beta1" };
    let budgets = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("policy", version, "PodDisruptionBudget"),
        "poddisruptionbudgets",
    );
    info!(eviction = %eviction, budgets = %budgets.api_version, "policy API versions discovered");
    Ok(PolicyApi {
        eviction_api_version: eviction,
        budgets,
    })
}

/// What one eviction request came to.
#[derive(Clone, Debug, PartialEq)]
pub enum Eviction {
    Accepted,
    /// The pod no longer exists.
    Gone,
    /// HTTP 429: a PodDisruptionBudget would be violated; the server's message.
    Blocked(String),
    /// Any other refusal or failure; the server's message.
    Failed(String),
}

/// POSTs an Eviction for the pod. `client` must not retry 429 itself (see `Context`), or a
/// budget would hold the reconcile worker for minutes.
pub async fn evict(
    client: &Client,
    policy: &PolicyApi,
    pod: &PodFacts,
    grace_period_seconds: Option<i64>,
) -> Eviction {
    let mut body = serde_json::json!({
        "apiVersion": policy.eviction_api_version,
        "kind": "Eviction",
        "metadata": {"name": pod.name, "namespace": pod.namespace},
    });
    if let Some(grace) = grace_period_seconds {
        body["deleteOptions"] = serde_json::json!({"gracePeriodSeconds": grace});
    }
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
    let result = api
        .create_subresource::<_, serde_json::Value>(
            "eviction",
            &pod.name,
            &PostParams::default(),
            &body,
        )
        .await;
    match result {
        Ok(_) => Eviction::Accepted,
        Err(kube::Error::Api(status)) if status.is_not_found() => Eviction::Gone,
        Err(kube::Error::Api(status)) if status.code == 429 => Eviction::Blocked(status.message),
        Err(other) => Eviction::Failed(other.to_string()),
    }
}

/// The namespace's PodDisruptionBudgets; unreadable ones are skipped.
pub async fn budgets(
    client: &Client,
    policy: &PolicyApi,
    namespace: &str,
) -> Result<Vec<Budget>, kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &policy.budgets);
    let list = api.list(&ListParams::default()).await?;
    Ok(list
        .items
        .iter()
        .map(|object| Budget {
            namespace: namespace.to_string(),
            name: object.name_any(),
            selector: object
                .data
                .get("spec")
                .and_then(|spec| spec.get("selector"))
                .and_then(|s| serde_json::from_value::<LabelSelector>(s.clone()).ok()),
        })
        .collect())
}
