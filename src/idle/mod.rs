//! Idle hibernation, `maxSessionDuration` and wake on connection.
//!
//! - [`deadline`]: the pure decision (deadlines from stored fields, settings and the clock);
//! - [`reconciler`]: the Controller shell that requeues each Session for its own deadline and
//!   writes `spec.state` with optimistic concurrency;
//! - [`wake`]: waking a hibernated session, shared by the `wake-requested` annotation path
//!   and the `POST /events/connection` endpoint.
//!
//! Writes of this module use their own field manager ([`FIELD_MANAGER`]) and touch only
//! `spec.state`, the wake annotation, `status.lastActivity` and `status.startedAt`; why it
//! stopped a session is recorded as a Kubernetes Event (reason `Idle` or
//! `MaxDurationReached`), not as a condition (see `docs/activity-and-idle.md`).

pub mod deadline;
pub mod reconciler;
pub mod wake;

/// Field manager of every write of the idle reconciler and the waker.
pub const FIELD_MANAGER: &str = "streamspace-controller-idle";
/// Annotation the API sets to ask for a wake; its value is the `metadata.generation` the API
/// saw, so that a later change of the spec (a user hibernating again) makes it stale.
pub const WAKE_ANNOTATION: &str = "stream.space/wake-requested";

/// Errors of the idle reconciler and the waker; each has a fixed label for metrics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] KubeFailure),
    #[error("session has no namespace")]
    NoNamespace,
    #[error("session was changed by someone else {0} times in a row")]
    Contended(u32),
    #[error("the ownership flags have not loaded yet")]
    FlagsNotLoaded,
}

impl ReconcileError for Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Error::Api(failure) => failure.metric_label(),
            Error::NoNamespace => "no_namespace",
            Error::Contended(_) => "contended",
            Error::FlagsNotLoaded => "flags_not_loaded",
        }
    }

    fn is_transient(&self) -> bool {
        matches!(self, Error::Api(failure) if failure.is_conflict())
            || matches!(self, Error::Contended(_) | Error::FlagsNotLoaded)
    }
}

impl Error {
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Api(failure) if failure.is_not_found())
    }
}

use crate::api_status::KubeFailure;
use crate::backoff::ReconcileError;

pub type Result<T, E = Error> = std::result::Result<T, E>;
