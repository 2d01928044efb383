//! What every reconciler shares: the [`Context`] (client, recorder, metrics, configuration,
//! caches), the controller [`Config`] it is built from, and the process's [`Readiness`].
//!
//! Reconcilers depend on this module; it depends on none of them, so the wiring in
//! [`crate::controller`] sits on top of both.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kube::Client;
use kube::runtime::events::Recorder;
use tokio::sync::watch;

use crate::backoff::FailureBackoff;
pub use crate::caches::SessionStores;
use crate::idle::deadline::IdleSettings;
use crate::idle::wake::Waker;
use crate::metrics::SharedMetrics;
use crate::nodeop::shared::NodeOpShared;
use crate::ownership::index::{FlagIndex, FlagSettings};
use crate::ownership::shadow::ShadowReports;
use crate::session::objects::SessionSettings;

/// Field manager of every server-side apply this controller makes.
pub const FIELD_MANAGER: &str = crate::FIELD_MANAGER;

#[derive(Clone, Debug)]
pub struct Config {
    /// Namespace to watch; `None` watches all namespaces.
    pub namespace: Option<String>,
    /// Sessions reconciled at the same time.
    pub concurrency: u16,
    pub session: SessionSettings,
    pub node_operations: NodeOperationSettings,
    /// Idle grace and what `maxSessionDuration` does.
    pub idle: IdleSettings,
    /// Bearer token of `POST /events/connection`; `None` refuses every event (the
    /// `wake-requested` annotation still wakes sessions).
    pub connection_event_token: Option<String>,
    pub gitops: crate::gitops::context::GitopsSettings,
    /// Ownership flags: who acts on each resource type. Shared with the admission webhooks
    /// when they run in the same process; `run` keeps it fed from a watch.
    pub flags: Arc<FlagIndex>,
    /// Leader election: `None` acts at once (a single replica); with settings, only the lease
    /// holder runs the reconcilers while every replica keeps its caches warm.
    pub leader_election: Option<crate::leader::LeaderSettings>,
    /// How the old StreamSpace controller is detected and whether sessions are fenced while it
    /// is active ([`crate::session::fence`]).
    pub legacy_controller: crate::session::fence::FenceSettings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            namespace: None,
            concurrency: 16,
            session: SessionSettings::default(),
            node_operations: NodeOperationSettings::default(),
            idle: IdleSettings::default(),
            connection_event_token: None,
            gitops: Default::default(),
            flags: FlagIndex::new(FlagSettings::default()),
            leader_election: None,
            legacy_controller: Default::default(),
        }
    }
}

/// Which NodeOperations this instance handles, and how.
#[derive(Clone, Debug)]
pub struct NodeOperationSettings {
    pub enabled: bool,
    /// Label selector on NodeOperations (all when `None`); NodeOperations are cluster-scoped,
    /// so `Config::namespace` does not narrow them.
    pub selector: Option<String>,
    /// NodeOperations reconciled at the same time.
    pub concurrency: u16,
    /// Connection settings for the eviction client. kube's default client retries HTTP 429 for
    /// minutes, which would hold a reconcile worker while a PodDisruptionBudget blocks an
    /// eviction; with these settings evictions use a client that does not. Without them the
    /// shared client is used (and a warning logged).
    pub kube_config: Option<kube::Config>,
}

impl Default for NodeOperationSettings {
    fn default() -> Self {
        NodeOperationSettings {
            enabled: true,
            selector: None,
            concurrency: 4,
            kube_config: None,
        }
    }
}

/// What every reconciler shares: client, event recorder, metrics, configuration, caches.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    /// Events a reconcile sends without waiting for them (the same recorder behind it).
    pub events: crate::events::EventQueue,
    /// Session Service writes a reconcile does not wait for.
    pub session_services: Arc<crate::session::detached::Detached>,
    pub metrics: SharedMetrics,
    pub config: Config,
    pub session_stores: SessionStores,
    /// Becomes true once every watch cache has its initial list.
    pub caches_loaded: watch::Receiver<bool>,
    /// Retry delays of objects whose reconcile keeps failing.
    pub backoff: FailureBackoff,
    /// Shared state of the node operation reconciler; `None` when it is disabled.
    pub node_operations: Option<NodeOpShared>,
    /// Wakes hibernated sessions (wake-requested annotation and connection events).
    pub waker: Waker,
    /// Who acts on what ([`crate::ownership`]).
    pub flags: Arc<FlagIndex>,
    /// Differences found in shadow mode, per object.
    pub shadow: ShadowReports,
    /// Reads the old controller's Lease and Deployments for fencing.
    pub fence: Arc<crate::session::fence::Observer>,
}

/// Readiness of the controller: true once every watch cache has loaded.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
