//! Node operations: cordon, drain, uncordon, label and taint edits, declared by `NodeOperation`
//! objects.
//!
//! Pure decisions: `plan` (which pods a drain evicts, skips or refuses, and the next batch),
//! `edits` (label, taint and cordon changes), `state` (ordering of operations on one node, prior
//! state, validation, timeouts), `outcome` (drain progress and verdict, the status and Events
//! a pass reports). I/O: `policy` (Eviction and PodDisruptionBudget, in whichever
//! `policy` version the server offers) and `reconciler`.

pub mod edits;
pub mod outcome;
pub mod plan;
pub mod policy;
pub mod reconciler;
pub mod shadow;
pub mod shared;
pub mod state;

/// Errors of the node operation reconciler; each has a fixed label for metrics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] KubeFailure),
    #[error("the node kept changing under us; gave up after {0} attempts")]
    TooManyConflicts(u32),
    #[error(transparent)]
    CacheClosed(#[from] crate::caches::CachesClosed),
}

impl ReconcileError for Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Error::Api(failure) => failure.metric_label(),
            Error::TooManyConflicts(_) => "too_many_conflicts",
            Error::CacheClosed(_) => "cache_closed",
        }
    }

    /// Conflicts resolve themselves on the next attempt with fresh data: retry quickly.
    fn is_transient(&self) -> bool {
        match self {
            Error::Api(failure) => failure.is_conflict(),
            Error::TooManyConflicts(_) => true,
            Error::CacheClosed(_) => false,
        }
    }
}

use crate::api_status::KubeFailure;
pub(crate) use crate::api_status::is_not_found;
use crate::backoff::ReconcileError;

pub type Result<T, E = Error> = std::result::Result<T, E>;
