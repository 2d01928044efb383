//! What the GitSync reconciler and its I/O helpers share: the settings, the context (client,
//! caches, per-sync memory), the error type and the identity of a sync. The helpers
//! (`lifecycle`, `nodes`, `objects`, `status`) depend on this module, never on the reconciler.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use tokio::sync::watch;

use super::documents::Rules;
use super::hook_guard::HookGuard;
use super::manifest::Desired;
use super::plan::PlanError;
use super::repo::{self, RepoError};
use super::trust::NamespacePolicy;
use crate::api_status::KubeFailure;
use crate::backoff::{FailureBackoff, ReconcileError};
use crate::crd::{FeatureFlag, GitSync, NodeOperation, QuotaPolicy};
use crate::metrics::SharedMetrics;
use crate::writes::WriteLog;

pub const CONTROLLER: &str = "gitsync";

/// GitOps settings of the controller.
#[derive(Clone, Debug)]
pub struct GitopsSettings {
    /// Where the bare clones are kept.
    pub cache_dir: PathBuf,
    pub fetch_timeout: Duration,
    /// Namespaces whose GitSyncs are honoured (`--gitsync-namespaces`).
    pub namespaces: NamespacePolicy,
    /// `http://`, `git://` and `file://` URLs (`--gitsync-allow-insecure-transports`).
    pub allow_insecure_transports: bool,
    /// Commit limits and key rules.
    pub rules: Rules,
    /// Push-hook secrets (filled here), replay and rate memory; the hook listener holds a clone.
    pub hooks: HookGuard,
}

impl Default for GitopsSettings {
    fn default() -> Self {
        GitopsSettings {
            cache_dir: std::env::temp_dir().join("streamspace-gitops"),
            fetch_timeout: repo::FETCH_TIMEOUT,
            namespaces: NamespacePolicy::default(),
            allow_insecure_transports: false,
            rules: Rules::default(),
            hooks: HookGuard::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] KubeFailure),
    #[error("{action} failed: {source}")]
    Object {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("the credentials Secret {0:?} does not exist")]
    SecretMissing(String),
    #[error("interval {0:?} is not a duration such as 30s, 5m or 1h")]
    Interval(String),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("GitSync has no namespace")]
    NoNamespace,
    #[error(transparent)]
    CacheClosed(#[from] crate::caches::CachesClosed),
    /// An object the repository declares exists and was not created by this GitSync.
    #[error("{object} exists and was not created by this GitSync ({}); it is left alone, not taken over", owner.as_ref().map_or("no stream.space/gitsync label".to_string(), |o| format!("label stream.space/gitsync={o}")))]
    NotOurs {
        object: String,
        owner: Option<String>,
    },
    #[error("parsing the commit did not finish within {0:?}")]
    ParseDeadline(Duration),
}

impl ReconcileError for Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Error::Api(failure) if is_stale_write(&failure.source) => "conflict",
            Error::Api(failure) => failure.metric_label(),
            Error::Object { source, .. } if is_stale_write(source) => "conflict",
            Error::Object { .. } => "object_apply",
            Error::Repo(e) => e.metric_label(),
            Error::SecretMissing(_) => "secret_missing",
            Error::Interval(_) => "interval",
            Error::Plan(e) => e.metric_label(),
            Error::NoNamespace => "no_namespace",
            Error::CacheClosed(_) => "cache_closed",
            Error::NotOurs { .. } => "not_ours",
            Error::ParseDeadline(_) => "deadline",
        }
    }

    /// A lost race on the GitSync itself: retried soon.
    fn is_transient(&self) -> bool {
        matches!(self, Error::Api(failure) if is_stale_write(&failure.source))
    }
}

pub(crate) fn is_stale_write(error: &kube::Error) -> bool {
    // 409: resourceVersion conflict; 422: our JSON Patch `test` of the resourceVersion failed.
    matches!(error, kube::Error::Api(status) if status.code == 409 || status.code == 422)
}

/// What a sync remembers between reconciles (rebuilt after a restart).
#[derive(Clone)]
pub(crate) struct Memory {
    /// Directory of the clone (it changes with the URL; the old one is removed).
    pub dir: PathBuf,
    pub generation: Option<i64>,
    pub fetched_at: Instant,
    /// Why the last fetch failed; cleared by the next successful fetch.
    pub fetch_error: Option<String>,
    /// The commit in force and its documents.
    pub good: Option<(String, Arc<Desired>)>,
    /// The last sync request (annotation value) acted on.
    pub handled_request: Option<String>,
}

pub struct GitopsContext {
    pub(crate) client: Client,
    pub(crate) recorder: Recorder,
    pub(crate) metrics: SharedMetrics,
    pub(crate) settings: GitopsSettings,
    pub(crate) nodes: Store<Node>,
    /// Node patches of this process the node cache does not show yet (its write log).
    pub(crate) node_writes: Arc<WriteLog>,
    /// QuotaPolicies and NodeOperations carrying the ownership label (of any GitSync).
    pub(crate) quotas: Store<QuotaPolicy>,
    pub(crate) operations: Store<NodeOperation>,
    pub(crate) flags: Store<FeatureFlag>,
    /// True once the node and the owned-object caches have loaded.
    pub(crate) nodes_loaded: watch::Receiver<bool>,
    /// One entry per GitSync, removed when it is deleted.
    pub(crate) memory: Mutex<HashMap<String, Memory>>,
    pub(crate) backoff: FailureBackoff,
}

pub(crate) fn sync_id(sync: &GitSync) -> String {
    format!(
        "{}/{}",
        sync.namespace().unwrap_or_default(),
        sync.name_any()
    )
}

pub(crate) fn memory(ctx: &GitopsContext, id: &str) -> Option<Memory> {
    let memory = ctx.memory.lock().unwrap_or_else(|e| e.into_inner());
    memory.get(id).cloned()
}

pub(crate) fn remember(ctx: &GitopsContext, id: &str, value: Memory) {
    let mut memory = ctx.memory.lock().unwrap_or_else(|e| e.into_inner());
    memory.insert(id.to_string(), value);
}
