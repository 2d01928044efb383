//! The error type of the development cluster.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while starting, talking to or stopping the local control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The control-plane binaries could not be located or built.
    #[error("control-plane binaries unavailable: {0}")]
    Binaries(String),

    /// A file-system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Generating a certificate or key failed.
    #[error("failed to generate {what}: {source}")]
    Certificate {
        /// Which certificate or key.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },

    /// A child process could not be started.
    #[error("failed to start {name} ({program}): {source}")]
    Spawn {
        /// Short name of the component (`etcd`, `kube-apiserver`, ...).
        name: &'static str,
        /// The executable.
        program: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A child process exited while the control plane was starting.
    #[error("{name} exited unexpectedly ({status}); last lines of {log}:\n{tail}")]
    ProcessExited {
        /// Short name of the component.
        name: &'static str,
        /// How it exited.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log file.
        tail: String,
    },

    /// A start-up step did not finish in time.
    #[error("timed out after {timeout:?} waiting for {what}; last lines of {log}:\n{tail}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long we waited.
        timeout: Duration,
        /// The log file of the component most likely at fault.
        log: PathBuf,
        /// The last lines of that log file.
        tail: String,
    },

    /// The generated kubeconfig could not be loaded.
    #[error("invalid kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),

    /// A request to the API server failed.
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),

    /// Serializing a generated file failed.
    #[error("failed to serialize {what}: {source}")]
    Serialize {
        /// Which file.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// Builds an [`Error::Io`] with a description of the failed operation.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
