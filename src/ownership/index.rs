//! The flags as a watch keeps them, shared by every decision of one process.
//!
//! Fed by a watch on FeatureFlags (not a poll), so a flip reaches every API replica and the
//! controller as soon as the API server sends the event. [`FlagIndex::changes`] also fires when
//! an override expires, from a timer, since no object changes then.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{Stream, StreamExt};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{Effective, Owner, ResourceType, effective, owner};
use crate::crd::{FeatureFlag, FeatureFlagSpec, FlagMode};

/// How this process finds and reads its flags.
#[derive(Clone, Debug)]
pub struct FlagSettings {
    /// Prepended to each type to name its FeatureFlag object (empty: `sessions`, `idle`, ...).
    /// Lets several installations share one cluster.
    pub name_prefix: String,
    /// Mode of a type whose FeatureFlag does not exist.
    pub default_mode: FlagMode,
}

impl Default for FlagSettings {
    fn default() -> Self {
        FlagSettings {
            name_prefix: String::new(),
            default_mode: FlagMode::Controller,
        }
    }
}

/// Flags as last seen; `loaded` once the first full list arrived.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlagSnapshot {
    pub specs: BTreeMap<ResourceType, FeatureFlagSpec>,
    pub loaded: bool,
}

pub struct FlagIndex {
    settings: FlagSettings,
    snapshot: watch::Sender<FlagSnapshot>,
    /// Set by the first [`FlagIndex::run`]; later calls return at once.
    running: AtomicBool,
}

impl std::fmt::Debug for FlagIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlagIndex")
            .field("settings", &self.settings)
            .field("snapshot", &*self.snapshot.borrow())
            .finish()
    }
}

impl FlagIndex {
    pub fn new(settings: FlagSettings) -> Arc<FlagIndex> {
        Arc::new(FlagIndex {
            settings,
            snapshot: watch::Sender::new(FlagSnapshot::default()),
            running: AtomicBool::new(false),
        })
    }

    /// An index with fixed flags and no watch, for tests and offline tools.
    pub fn fixed(
        settings: FlagSettings,
        specs: BTreeMap<ResourceType, FeatureFlagSpec>,
    ) -> Arc<FlagIndex> {
        let index = FlagIndex::new(settings);
        index.snapshot.send_replace(FlagSnapshot {
            specs,
            loaded: true,
        });
        index
    }

    pub fn settings(&self) -> &FlagSettings {
        &self.settings
    }

    /// Name of the FeatureFlag object of `resource`.
    pub fn object_name(&self, resource: ResourceType) -> String {
        format!("{}{}", self.settings.name_prefix, resource.as_str())
    }

    fn resource_of(&self, object_name: &str) -> Option<ResourceType> {
        object_name
            .strip_prefix(&self.settings.name_prefix)
            .and_then(ResourceType::parse)
    }

    /// The spec of `resource`'s flag object, if it exists.
    pub fn spec(&self, resource: ResourceType) -> Option<FeatureFlagSpec> {
        self.snapshot.borrow().specs.get(&resource).cloned()
    }

    pub fn effective_at(&self, resource: ResourceType, now: Timestamp) -> Effective {
        match self.snapshot.borrow().specs.get(&resource) {
            Some(spec) => effective(spec, now),
            None => Effective::default_for(self.settings.default_mode.clone()),
        }
    }

    pub fn effective(&self, resource: ResourceType) -> Effective {
        self.effective_at(resource, Timestamp::now())
    }

    /// Who acts on `namespace/name` of `resource` now.
    pub fn owner(&self, resource: ResourceType, namespace: &str, name: &str) -> Owner {
        owner(&self.effective(resource), resource, namespace, name)
    }

    pub fn loaded(&self) -> bool {
        self.snapshot.borrow().loaded
    }

    /// Resolves once the first full list of flags has arrived (any number of waiters).
    pub async fn wait_loaded(&self) {
        let mut receiver = self.snapshot.subscribe();
        // Errors only when the sender is gone, which `self` prevents.
        let _ = receiver.wait_for(|snapshot| snapshot.loaded).await;
    }

    /// Fires (with the new value) whenever the effective value of `resource` changes: an edit of
    /// its object or an override expiring. Does not fire for the value current at the call.
    pub fn changes(
        self: &Arc<Self>,
        resource: ResourceType,
    ) -> impl Stream<Item = Effective> + Send + 'static {
        let index = self.clone();
        let receiver = self.snapshot.subscribe();
        let first = index.effective(resource);
        futures::stream::unfold(
            (index, receiver, first),
            move |(index, mut receiver, mut last)| async move {
                loop {
                    let expiry = last.expires_at;
                    let woke = match expiry {
                        Some(at) => {
                            let wait = at.duration_since(Timestamp::now()).unsigned_abs();
                            tokio::select! {
                                changed = receiver.changed() => changed.is_ok(),
                                () = tokio::time::sleep(wait) => true,
                            }
                        }
                        None => receiver.changed().await.is_ok(),
                    };
                    if !woke {
                        return None;
                    }
                    let now = index.effective(resource);
                    if now != last {
                        last = now.clone();
                        return Some((now, (index, receiver, last)));
                    }
                }
            },
        )
    }

    /// Every change of the snapshot (any type), for status writers and tests.
    pub fn subscribe(&self) -> watch::Receiver<FlagSnapshot> {
        self.snapshot.subscribe()
    }

    /// Keeps the index up to date from the process's shared FeatureFlag cache, until the cache
    /// closes. Like [`FlagIndex::run`], only the first caller feeds the index.
    pub async fn follow(self: Arc<Self>, cache: crate::caches::Shared<FeatureFlag>) {
        let Some(_running) = self.claim() else {
            return;
        };
        let store = cache.store();
        let mut changes = std::pin::pin!(cache.subscribe());
        if cache.loaded().wait_for(|l| *l).await.is_err() {
            return;
        }
        info!(flags = store.len(), "feature flags loaded");
        loop {
            // The store already holds every change (deletions included): rebuild from it.
            let specs: BTreeMap<ResourceType, FeatureFlagSpec> = store
                .state()
                .iter()
                .filter_map(|f| Some((self.resource_of(&f.name_any())?, f.spec.clone())))
                .collect();
            self.publish(specs);
            if changes.next().await.is_none() {
                return;
            }
        }
    }

    /// Replaces every spec at once (a full list); notifies only when something changed.
    fn publish(&self, specs: BTreeMap<ResourceType, FeatureFlagSpec>) {
        self.snapshot.send_if_modified(|snapshot| {
            let next = FlagSnapshot {
                specs,
                loaded: true,
            };
            let changed = *snapshot != next;
            *snapshot = next;
            changed
        });
    }

    /// Marks the index as fed; `None` when another task already feeds it. The guard clears the
    /// mark however the feeding ends, so a restart can feed it again.
    fn claim(&self) -> Option<Running<'_>> {
        if self.running.swap(true, Ordering::SeqCst) {
            return None;
        }
        Some(Running(&self.running))
    }

    /// Keeps the index up to date until dropped. Only the first call watches; later calls
    /// (another component sharing the index) return at once.
    pub async fn run(self: Arc<Self>, client: Client) {
        let Some(_running) = self.claim() else {
            return;
        };
        let api: Api<FeatureFlag> = Api::all(client);
        let mut buffer: Option<BTreeMap<ResourceType, FeatureFlagSpec>> = None;
        let mut events = watcher(api, watcher::Config::default()).boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Init) => buffer = Some(BTreeMap::new()),
                Ok(watcher::Event::InitApply(flag)) => {
                    if let (Some(buffer), Some(resource)) =
                        (buffer.as_mut(), self.resource_of(&flag.name_any()))
                    {
                        buffer.insert(resource, flag.spec);
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    let specs = buffer.take().unwrap_or_default();
                    info!(flags = specs.len(), "feature flags loaded");
                    self.publish(specs);
                }
                Ok(watcher::Event::Apply(flag)) => {
                    if let Some(resource) = self.resource_of(&flag.name_any()) {
                        self.snapshot.send_if_modified(|snapshot| {
                            let changed = snapshot.specs.get(&resource) != Some(&flag.spec);
                            snapshot.specs.insert(resource, flag.spec);
                            changed
                        });
                    }
                }
                Ok(watcher::Event::Delete(flag)) => {
                    if let Some(resource) = self.resource_of(&flag.name_any()) {
                        self.snapshot.send_if_modified(|snapshot| {
                            snapshot.specs.remove(&resource).is_some()
                        });
                    }
                }
                Err(error) => {
                    warn!(%error, "feature flag watch failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// Clears [`FlagIndex`]'s `running` mark when dropped.
struct Running<'a>(&'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mode: FlagMode, percent: u8) -> FeatureFlagSpec {
        FeatureFlagSpec {
            mode,
            percent,
            override_: None,
        }
    }

    #[test]
    fn names_carry_the_prefix() {
        let index = FlagIndex::new(FlagSettings {
            name_prefix: "team-a-".into(),
            default_mode: FlagMode::Legacy,
        });
        assert_eq!(index.object_name(ResourceType::Nodes), "team-a-nodes");
        assert_eq!(index.resource_of("team-a-quota"), Some(ResourceType::Quota));
        assert_eq!(index.resource_of("quota"), None);
        assert_eq!(index.resource_of("team-a-other"), None);
    }

    #[test]
    fn missing_flags_use_the_default() {
        let index = FlagIndex::fixed(
            FlagSettings {
                name_prefix: String::new(),
                default_mode: FlagMode::Legacy,
            },
            BTreeMap::from([(ResourceType::Sessions, spec(FlagMode::Controller, 100))]),
        );
        assert_eq!(
            index.owner(ResourceType::Sessions, "ns", "a"),
            Owner::Controller
        );
        assert_eq!(index.owner(ResourceType::Nodes, "", "a"), Owner::Legacy);
    }

    #[tokio::test]
    async fn changes_fire_on_edits_and_on_expiry() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

        let index = FlagIndex::fixed(FlagSettings::default(), BTreeMap::new());
        let mut changes = Box::pin(index.changes(ResourceType::Sessions));
        let expires = Timestamp::now()
            .checked_add(std::time::Duration::from_millis(300))
            .unwrap_or(Timestamp::MAX);
        index.snapshot.send_modify(|s| {
            s.specs.insert(
                ResourceType::Sessions,
                FeatureFlagSpec {
                    mode: FlagMode::Controller,
                    percent: 100,
                    override_: Some(crate::crd::FlagOverride {
                        mode: FlagMode::Legacy,
                        percent: 100,
                        expires_at: Some(Time(expires)),
                        reason: None,
                        set_by: None,
                    }),
                },
            );
        });
        let first = changes.next().await.map(|e| e.mode);
        assert_eq!(first, Some(FlagMode::Legacy));
        let second = tokio::time::timeout(std::time::Duration::from_secs(5), changes.next())
            .await
            .ok()
            .flatten()
            .map(|e| e.mode);
        assert_eq!(second, Some(FlagMode::Controller));
    }
}
