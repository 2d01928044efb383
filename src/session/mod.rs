//! Session lifecycle: the objects a Session owns, the pure state machine that decides what
//! they should be, and the reconciler that applies that decision.

pub mod adopt;
pub mod detached;
pub mod fence;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod names;
pub mod objects;
pub mod reconciler;
pub mod shadow;
pub mod state;
pub mod takeover;

/// The session reconciler's name in metrics; defined here so the reconciler and the takeover
/// steps it calls both use it without importing each other.
pub const CONTROLLER: &str = "session";

/// Errors of the session reconciler; each has a fixed label for metrics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] KubeFailure),
    #[error("session has no namespace")]
    NoNamespace,
    #[error(transparent)]
    CacheClosed(#[from] crate::caches::CachesClosed),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Api(failure) => failure.metric_label(),
            Error::NoNamespace => "no_namespace",
            Error::CacheClosed(_) => "cache_closed",
        }
    }

    /// Conflicts resolve themselves on the next attempt with fresh data: retry quickly.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Api(failure) if failure.is_conflict())
    }
}

use crate::api_status::KubeFailure;

pub type Result<T, E = Error> = std::result::Result<T, E>;
