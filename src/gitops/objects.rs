//! Whole objects a repository declares (QuotaPolicy, NodeOperation, FeatureFlag): read from
//! the watch caches, created, updated and pruned.
//!
//! A sync never adopts an object it did not create: one is created with a plain create, so an
//! object of the same name that exists without our ownership label is a conflict reported in
//! status, never taken over by a forced apply, and never pruned (the prune only ever looks at
//! objects carrying our label).

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use tracing::info;

use super::context::{CONTROLLER, Error, GitopsContext};
use super::manifest::{self, Desired, OWNER_LABEL, ObjectKind, owner_value};
use super::plan::{LiveObject, ObjectAction, ObjectChange};
use crate::FIELD_MANAGER;
use crate::api_status::KubeFailure;
use crate::crd::{FeatureFlag, NodeOperation, QuotaPolicy};

/// The QuotaPolicies (in the GitSync's namespace) and NodeOperations that carry an ownership
/// label, from the watch caches; objects being deleted are left out (their finalizer is still
/// running).
pub(crate) fn labelled_objects(ctx: &GitopsContext, namespace: &str) -> Vec<LiveObject> {
    let ours = |labels: &Option<std::collections::BTreeMap<String, String>>| {
        labels.as_ref().is_some_and(|l| l.contains_key(OWNER_LABEL))
    };
    let mut out = Vec::new();
    for quota in ctx.quotas.state() {
        if ours(&quota.metadata.labels)
            && quota.namespace().as_deref() == Some(namespace)
            && quota.metadata.deletion_timestamp.is_none()
        {
            out.push(LiveObject {
                kind: ObjectKind::QuotaPolicy,
                name: quota.name_any(),
                labels: quota.labels().clone(),
                spec: serde_json::to_value(&quota.spec).unwrap_or_default(),
            });
        }
    }
    for operation in ctx.operations.state() {
        if ours(&operation.metadata.labels) && operation.metadata.deletion_timestamp.is_none() {
            out.push(LiveObject {
                kind: ObjectKind::NodeOperation,
                name: operation.name_any(),
                labels: operation.labels().clone(),
                spec: serde_json::to_value(&operation.spec).unwrap_or_default(),
            });
        }
    }
    for flag in ctx.flags.state() {
        if ours(&flag.metadata.labels) && flag.metadata.deletion_timestamp.is_none() {
            let spec = serde_json::to_value(&flag.spec).unwrap_or_default();
            out.push(LiveObject {
                kind: ObjectKind::FeatureFlag,
                name: flag.name_any(),
                labels: flag.labels().clone(),
                spec: manifest::git_managed_spec(ObjectKind::FeatureFlag, &spec),
            });
        }
    }
    out
}

pub(crate) fn object_failed(action: &str, change: &ObjectChange, source: kube::Error) -> Error {
    Error::Object {
        action: format!("{action} {}/{}", change.kind, change.name),
        source,
    }
}

/// Creates an object the plan found missing. One of the same name that exists already (the
/// cache only holds labelled objects) is ours only if it carries our label: otherwise it was
/// made by someone else and is left alone, reported as a conflict.
async fn create_object<K>(
    api: &Api<K>,
    change: &ObjectChange,
    body: &serde_json::Value,
    owner: &str,
) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object: K = serde_json::from_value(body.clone())
        .map_err(|e| object_failed("building", change, kube::Error::SerdeError(e)))?;
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    match api.create(&params, &object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let existing = api
                .get_opt(&change.name)
                .await
                .map_err(|e| object_failed("reading", change, e))?;
            let label = existing.as_ref().and_then(|o| o.labels().get(OWNER_LABEL));
            match label {
                Some(value) if value == owner => Ok(()),
                None if existing.is_none() => Ok(()),
                other => Err(Error::NotOurs {
                    object: format!("{}/{}", change.kind, change.name),
                    owner: other.cloned(),
                }),
            }
        }
        Err(source) => Err(object_failed("creating", change, source)),
    }
}

/// Applies one owned object; when the stored spec still differs afterwards (server-side apply
/// cannot remove a field another manager set), replaces the part Git manages.
async fn apply_object<K>(
    api: &Api<K>,
    change: &ObjectChange,
    spec: &serde_json::Value,
    body: &serde_json::Value,
    owner: &str,
    replace: json_patch::Patch,
) -> Result<(), Error>
where
    K: Resource
        + kube::core::object::HasSpec
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::Spec: serde::Serialize,
{
    if change.action == ObjectAction::Create {
        create_object(api, change, body, owner).await?;
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let stored = api
        .patch(&change.name, &params, &Patch::Apply(body))
        .await
        .map_err(|e| object_failed("applying", change, e))?;
    let stored = serde_json::to_value(stored.spec())
        .ok()
        .map(|s| manifest::git_managed_spec(change.kind, &s));
    if stored.as_ref() != Some(spec) {
        api.patch(
            &change.name,
            &PatchParams::default(),
            &Patch::Json::<()>(replace),
        )
        .await
        .map_err(|e| object_failed("replacing the spec of", change, e))?;
    }
    Ok(())
}

/// Creates or updates (server-side apply, forced, with our field manager) and deletes the
/// owned objects of the plan; returns how many were written.
pub(crate) async fn apply_objects(
    ctx: &GitopsContext,
    id: &str,
    namespace: &str,
    desired: &Desired,
    changes: &[ObjectChange],
) -> Result<usize, Error> {
    let quotas: Api<QuotaPolicy> = Api::namespaced(ctx.client.clone(), namespace);
    let operations: Api<NodeOperation> = Api::all(ctx.client.clone());
    let flags: Api<FeatureFlag> = Api::all(ctx.client.clone());
    let failed = |action: &'static str| move |source| Error::Api(KubeFailure::new(action, source));
    for change in changes {
        ctx.metrics
            .reconcilers
            .write(CONTROLLER, change.kind.as_str());
        if change.action == ObjectAction::Delete {
            let result = match change.kind {
                ObjectKind::QuotaPolicy => quotas
                    .delete(&change.name, &Default::default())
                    .await
                    .map(|_| ()),
                ObjectKind::NodeOperation => operations
                    .delete(&change.name, &Default::default())
                    .await
                    .map(|_| ()),
                ObjectKind::FeatureFlag => {
                    // Deleting the object would take an active override with it: keep the
                    // flag until the override ends (the next sync after that prunes it).
                    let live = ctx
                        .flags
                        .state()
                        .into_iter()
                        .find(|f| f.name_any() == change.name);
                    let overridden = live.is_some_and(|f| {
                        crate::ownership::effective(&f.spec, Timestamp::now()).source
                            == crate::ownership::Source::Override
                    });
                    if overridden {
                        info!(gitsync = %id, name = %change.name, "flag removed from Git keeps its active override; pruning after it ends");
                        continue;
                    }
                    flags
                        .delete(&change.name, &Default::default())
                        .await
                        .map(|_| ())
                }
            };
            match result {
                Ok(()) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(source) => return Err(object_failed("deleting", change, source)),
            }
            info!(gitsync = %id, kind = %change.kind, name = %change.name, "pruned");
            continue;
        }
        let Some(object) = desired
            .objects
            .iter()
            .find(|o| o.kind == change.kind && o.name == change.name)
        else {
            continue;
        };
        let owner = owner_value(id);
        let mut labels = object.labels.clone();
        labels.insert(OWNER_LABEL.to_string(), owner.clone());
        let mut metadata = serde_json::json!({"name": object.name, "labels": labels});
        if object.kind == ObjectKind::QuotaPolicy {
            metadata["namespace"] = namespace.into();
        }
        let body = serde_json::json!({
            "apiVersion": manifest::API_VERSION,
            "kind": object.kind.as_str(),
            "metadata": metadata,
            "spec": object.spec,
        });
        let replace = match object.kind {
            // Only the baseline: the override belongs to the API.
            ObjectKind::FeatureFlag => serde_json::json!([
                {"op": "replace", "path": "/spec/mode", "value": object.spec.get("mode")},
                {"op": "replace", "path": "/spec/percent", "value": object.spec.get("percent")},
            ]),
            _ => serde_json::json!([{"op": "replace", "path": "/spec", "value": object.spec}]),
        };
        let replace: json_patch::Patch = serde_json::from_value(replace)
            .map_err(|e| failed("building an object patch")(kube::Error::SerdeError(e)))?;
        match object.kind {
            ObjectKind::QuotaPolicy => {
                apply_object(&quotas, change, &object.spec, &body, &owner, replace).await?
            }
            ObjectKind::NodeOperation => {
                apply_object(&operations, change, &object.spec, &body, &owner, replace).await?
            }
            ObjectKind::FeatureFlag => {
                apply_object(&flags, change, &object.spec, &body, &owner, replace).await?
            }
        }
        info!(gitsync = %id, kind = %change.kind, name = %change.name, "applied");
    }
    Ok(changes.len())
}
