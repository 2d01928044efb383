//! Push-hook secrets on every replica. The hook listener answers from memory (nothing before a
//! verified request calls the API); the GitSync reconciler refreshes that memory on each fetch,
//! but it runs only on the leader. [`keep_loaded`] runs on every replica, so a hook that reaches
//! a follower is verified there too: once per [`REFRESH`] it lists the GitSyncs of the allowed
//! namespaces, reads each one's webhook Secret, and forgets GitSyncs that are gone.

use std::collections::HashSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use tracing::warn;

use super::hook_guard::HookGuard;
use super::signature::SECRET_KEY;
use super::trust::NamespacePolicy;
use crate::crd::GitSync;

/// How often every replica re-reads the hook secrets: the longest a new or rotated secret
/// waits on a follower.
pub const REFRESH: Duration = Duration::from_secs(30);

/// Reads the webhook secret of `sync` into `guard` (forgets it when the GitSync has none); a
/// failed read keeps the last one.
pub async fn load(client: &Client, guard: &HookGuard, sync: &GitSync, namespace: &str) {
    let name = sync.name_any();
    let Some(reference) = &sync.spec.webhook_secret_ref else {
        guard.keys.set(namespace, &name, None);
        return;
    };
    let read = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(&reference.name)
        .await;
    match read {
        Ok(secret) => {
            let key = secret
                .and_then(|s| s.data)
                .and_then(|mut data| data.remove(SECRET_KEY))
                .map(|value| value.0);
            guard.keys.set(namespace, &name, key);
        }
        Err(error) => {
            warn!(gitsync = %format!("{namespace}/{name}"), %error, "could not read the webhook Secret; keeping the last one");
        }
    }
}

/// Keeps `guard` loaded with the secrets of the GitSyncs in `scope` (one namespace, or all)
/// that `namespaces` allows, until the task is dropped.
pub async fn keep_loaded(
    client: Client,
    scope: Option<String>,
    namespaces: NamespacePolicy,
    guard: HookGuard,
) {
    let api: Api<GitSync> = match &scope {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let mut ticker = tokio::time::interval(REFRESH);
    loop {
        ticker.tick().await;
        let list = match api.list(&Default::default()).await {
            Ok(list) => list,
            Err(error) => {
                warn!(%error, "could not list GitSyncs for their hook secrets; keeping the last ones");
                continue;
            }
        };
        let mut present = HashSet::new();
        for sync in &list.items {
            let Some(namespace) = sync.namespace() else {
                continue;
            };
            if !namespaces.allows(&namespace) {
                continue;
            }
            present.insert((namespace.clone(), sync.name_any()));
            load(&client, &guard, sync, &namespace).await;
        }
        guard
            .keys
            .retain(|namespace, name| present.contains(&(namespace.to_string(), name.to_string())));
    }
}
