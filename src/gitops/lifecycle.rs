//! Before and after the syncs of a GitSync: whether it is honoured at all (namespace, URL),
//! its finalizer, what its deletion removes, and forgetting it (memory, backoff, push-hook
//! secret, clone directory).
//!
//! Deleting a GitSync prunes what it owns (its labels and taints on nodes, its QuotaPolicies,
//! NodeOperations and FeatureFlags) unless `prune: false`, and then removes the finalizer. The
//! cleanup needs only the cluster (the nodes' inventory, the GitSync's own record and the
//! ownership label), never the repository, so a repository that is gone cannot block it.

use std::path::PathBuf;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::context::{CONTROLLER, Error, GitopsContext, sync_id};
use super::manifest::Desired;
use super::nodes::{self, apply, plan_against_cache};
use super::objects::apply_objects;
use super::outcome::set_condition;
use super::repo;
use super::status::write_status;
use super::trust::check_url;
use crate::api_status::KubeFailure;
use crate::crd::GitSync;

/// Finalizer that makes the deletion of a GitSync remove what it applied.
pub const FINALIZER: &str = "stream.space/gitsync-cleanup";

/// Whether the sync goes ahead.
pub enum Gate {
    Proceed,
    Done(Action),
}

/// Finalizes a deleted GitSync, refuses one this controller does not honour (with a status
/// saying why), and adds the finalizer before anything is applied.
pub async fn gate(ctx: &GitopsContext, sync: &GitSync, namespace: &str) -> Result<Gate, Error> {
    let finalizers = sync.finalizers();
    let ours = finalizers.iter().position(|f| f == FINALIZER);
    if sync.meta().deletion_timestamp.is_some() {
        // Everything is removed before the finalizer is: once the object is gone, so is all
        // that it held.
        if let Some(index) = ours {
            cleanup(ctx, sync, namespace).await?;
            forget(ctx, namespace, &sync.name_any(), Some(sync)).await;
            remove_finalizer(ctx, sync, namespace, index).await?;
        } else {
            forget(ctx, namespace, &sync.name_any(), Some(sync)).await;
        }
        return Ok(Gate::Done(Action::await_change()));
    }
    let refusal = if !ctx.settings.namespaces.allows(namespace) {
        Some((
            "NamespaceNotAllowed",
            ctx.settings.namespaces.refusal(namespace),
        ))
    } else {
        check_url(
            &sync.spec.url,
            sync.spec.secret_ref.is_some(),
            ctx.settings.allow_insecure_transports,
        )
        .err()
        .map(|reason| {
            (
                "URLRefused",
                format!("spec.url refused: {reason}; nothing is fetched"),
            )
        })
    };
    if let Some((reason, message)) = refusal {
        let current = sync.status.clone().unwrap_or_default();
        let mut status = current.clone();
        status.observed_generation = sync.meta().generation;
        set_condition(
            &mut status,
            "Ready",
            false,
            reason,
            &message,
            Timestamp::now(),
        );
        write_status(ctx, sync, namespace, &current, status).await?;
        ctx.settings.hooks.forget(namespace, &sync.name_any());
        return Ok(Gate::Done(Action::await_change()));
    }
    if ours.is_none() {
        add_finalizer(ctx, sync, namespace).await?;
    }
    if sync.spec.suspend {
        let current = sync.status.clone().unwrap_or_default();
        let mut status = current.clone();
        let suspended = "spec.suspend is true";
        set_condition(
            &mut status,
            "Reconciling",
            false,
            "Suspended",
            suspended,
            Timestamp::now(),
        );
        write_status(ctx, sync, namespace, &current, status).await?;
        return Ok(Gate::Done(Action::await_change()));
    }
    Ok(Gate::Proceed)
}

/// Removes what the GitSync applied (or, with `prune: false`, only its inventory entries):
/// the plan of an empty repository against the cluster.
async fn cleanup(ctx: &GitopsContext, sync: &GitSync, namespace: &str) -> Result<(), Error> {
    let id = sync_id(sync);
    let record = nodes::record(&sync.status.clone().unwrap_or_default());
    let empty = Desired::default();
    let prune = sync.spec.prune;
    let planned = plan_against_cache(ctx, &id, namespace, &empty, &record, prune)?;
    let nodes = apply(ctx, &id, &empty, &record, prune, &planned).await?;
    let objects = apply_objects(ctx, &id, namespace, &empty, &planned.plan.objects).await?;
    info!(gitsync = %id, nodes, objects, prune, "GitSync deleted; removed what it applied");
    Ok(())
}

async fn add_finalizer(ctx: &GitopsContext, sync: &GitSync, namespace: &str) -> Result<(), Error> {
    let patch = match sync.meta().finalizers {
        None => json!([{"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}]),
        Some(_) => json!([{"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}]),
    };
    patch_metadata(ctx, sync, namespace, patch, "adding the GitSync finalizer").await
}

async fn remove_finalizer(
    ctx: &GitopsContext,
    sync: &GitSync,
    namespace: &str,
    index: usize,
) -> Result<(), Error> {
    let path = format!("/metadata/finalizers/{index}");
    let patch = json!([
        {"op": "test", "path": path, "value": FINALIZER},
        {"op": "remove", "path": path},
    ]);
    patch_metadata(
        ctx,
        sync,
        namespace,
        patch,
        "removing the GitSync finalizer",
    )
    .await
}

async fn patch_metadata(
    ctx: &GitopsContext,
    sync: &GitSync,
    namespace: &str,
    patch: serde_json::Value,
    action: &'static str,
) -> Result<(), Error> {
    let patch: json_patch::Patch = serde_json::from_value(patch)
        .map_err(|e| Error::Api(KubeFailure::new(action, kube::Error::SerdeError(e))))?;
    ctx.metrics.reconcilers.write(CONTROLLER, "gitsync");
    Api::<GitSync>::namespaced(ctx.client.clone(), namespace)
        .patch(
            &sync.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await
        .map_err(KubeFailure::during(action))?;
    Ok(())
}

/// Forgets a GitSync that is gone: its memory, backoff, push-hook secret and clone.
pub async fn forget(ctx: &GitopsContext, namespace: &str, name: &str, sync: Option<&GitSync>) {
    let id = format!("{namespace}/{name}");
    let remembered = {
        let mut memory = ctx.memory.lock().unwrap_or_else(|e| e.into_inner());
        memory.remove(&id)
    };
    ctx.backoff.succeeded(&id);
    ctx.settings.hooks.forget(namespace, name);
    let mut dirs: Vec<PathBuf> = remembered.map(|m| m.dir).into_iter().collect();
    if let Some(sync) = sync {
        dirs.push(repo::cache_dir(
            &ctx.settings.cache_dir,
            &id,
            &sync.spec.url,
        ));
    }
    for dir in dirs {
        remove_clone(dir).await;
    }
}

/// Removes a clone directory (off the async runtime; a missing one is fine).
pub async fn remove_clone(dir: PathBuf) {
    let shown = dir.display().to_string();
    let removed = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    })
    .await;
    if let Ok(Err(error)) = removed {
        warn!(dir = %shown, %error, "could not remove a GitSync clone directory");
    }
}

/// Reads the push-hook secret into memory (the hook listener never calls the API). Called on
/// every fetch, so a rotated secret is in force from the next sync on.
pub async fn load_hook_key(ctx: &GitopsContext, sync: &GitSync, namespace: &str) {
    super::hook_keys::load(&ctx.client, &ctx.settings.hooks, sync, namespace).await;
}
