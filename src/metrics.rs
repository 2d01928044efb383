//! Prometheus metrics: one registry, a prefixed sub-registry per subsystem, and labels of low
//! cardinality only (never object names or error text).

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub controller: &'static str,
    pub kind: &'static str,
}

/// Counters and timings shared by every reconciler, labelled by controller name.
#[derive(Clone)]
pub struct ReconcilerMetrics {
    pub reconciles: Family<ControllerLabel, Counter>,
    pub failures: Family<ErrorLabels, Counter>,
    pub duration: Family<ControllerLabel, Histogram>,
    /// Writes to the API server, by kind of object written.
    pub writes: Family<WriteLabels, Counter>,
}

impl ReconcilerMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = ReconcilerMetrics {
            reconciles: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 14))
            }),
            writes: Family::default(),
        };
        registry.register(
            "reconciliations",
            "Reconciliations started",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Reconciliations that failed, by error kind",
            metrics.failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            metrics.duration.clone(),
        );
        registry.register(
            "api_writes",
            "Writes to the Kubernetes API, by object kind",
            metrics.writes.clone(),
        );
        metrics
    }

    /// Counts a reconciliation and returns a timer that records its duration when dropped.
    pub fn start(&self, controller: &'static str) -> ReconcileTimer {
        self.reconciles
            .get_or_create(&ControllerLabel { controller })
            .inc();
        ReconcileTimer {
            histogram: self
                .duration
                .get_or_create(&ControllerLabel { controller })
                .clone(),
            started: Instant::now(),
        }
    }

    pub fn failure(&self, controller: &'static str, error: &'static str) {
        self.failures
            .get_or_create(&ErrorLabels { controller, error })
            .inc();
    }

    pub fn write(&self, controller: &'static str, kind: &'static str) {
        self.writes
            .get_or_create(&WriteLabels { controller, kind })
            .inc();
    }
}

pub struct ReconcileTimer {
    histogram: Histogram,
    started: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: &'static str,
}

/// Node operations: phases reached, drain durations, evictions.
#[derive(Clone)]
pub struct NodeOperationMetrics {
    /// Operations that entered a phase.
    pub phases: Family<PhaseLabel, Counter>,
    /// Time from the start of a drain to its end (Succeeded or Failed).
    pub drain_duration: Histogram,
    /// Evictions the API server accepted.
    pub evictions: Counter,
    /// Evictions refused because a PodDisruptionBudget would be violated (HTTP 429).
    pub blocked_evictions: Counter,
}

impl NodeOperationMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = NodeOperationMetrics {
            phases: Family::default(),
            drain_duration: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            evictions: Counter::default(),
            blocked_evictions: Counter::default(),
        };
        registry.register(
            "phase_transitions",
            "Node operations that entered a phase",
            metrics.phases.clone(),
        );
        registry.register(
            "drain_duration_seconds",
            "Time from the start of a drain until it succeeded or failed",
            metrics.drain_duration.clone(),
        );
        registry.register(
            "evictions",
            "Pod evictions accepted by the API server",
            metrics.evictions.clone(),
        );
        registry.register(
            "blocked_evictions",
            "Pod evictions refused because a PodDisruptionBudget would be violated",
            metrics.blocked_evictions.clone(),
        );
        metrics
    }

    pub fn entered(&self, phase: &'static str) {
        self.phases.get_or_create(&PhaseLabel { phase }).inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    /// `validate` or `mutate`.
    pub webhook: &'static str,
    /// `allowed`, `denied`, `patched`, `invalid` or `ignored` (not a Session).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabel {
    pub webhook: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabels {
    /// `files` or `self-managed`.
    pub mode: &'static str,
    /// `ok` or the error's metric label.
    pub result: &'static str,
}

/// Admission webhook requests, latencies and certificate reloads.
#[derive(Clone)]
pub struct AdmissionMetrics {
    pub requests: Family<AdmissionLabels, Counter>,
    pub duration: Family<WebhookLabel, Histogram>,
    pub cert_reloads: Family<CertLabels, Counter>,
    /// TLS handshakes by result (`ok`, `failed`, `timeout`); failures after a rotation mean a
    /// client does not trust the CA.
    pub handshakes: Family<ResultLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

impl AdmissionMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = AdmissionMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
            }),
            cert_reloads: Family::default(),
            handshakes: Family::default(),
        };
        registry.register(
            "requests",
            "Admission requests answered, by webhook and result",
            metrics.requests.clone(),
        );
        registry.register(
            "duration_seconds",
            "Time to answer one admission request",
            metrics.duration.clone(),
        );
        registry.register(
            "certificate_reloads",
            "Serving certificate reloads and renewals, by mode and result",
            metrics.cert_reloads.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes on the webhook listener, by result",
            metrics.handshakes.clone(),
        );
        metrics
    }

    pub fn handshake(&self, result: &'static str) {
        self.handshakes.get_or_create(&ResultLabel { result }).inc();
    }

    /// Successful TLS handshakes so far.
    pub fn handshakes_ok(&self) -> u64 {
        self.handshakes
            .get_or_create(&ResultLabel { result: "ok" })
            .get()
    }

    pub fn request(&self, webhook: &'static str, result: &'static str, seconds: f64) {
        self.requests
            .get_or_create(&AdmissionLabels { webhook, result })
            .inc();
        self.duration
            .get_or_create(&WebhookLabel { webhook })
            .observe(seconds);
    }

    pub fn cert_reload(&self, mode: &'static str, result: &'static str) {
        self.cert_reloads
            .get_or_create(&CertLabels { mode, result })
            .inc();
    }
}

/// The process's metrics registry and the handles every subsystem records into.
pub struct Metrics {
    pub registry: Registry,
    pub reconcilers: ReconcilerMetrics,
    pub node_operations: NodeOperationMetrics,
    pub admission: AdmissionMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("streamspace");
        let reconcilers =
            ReconcilerMetrics::register(registry.sub_registry_with_prefix("controller"));
        let node_operations =
            NodeOperationMetrics::register(registry.sub_registry_with_prefix("nodeop"));
        let admission = AdmissionMetrics::register(registry.sub_registry_with_prefix("admission"));
        Metrics {
            registry,
            reconcilers,
            node_operations,
            admission,
        }
    }
}

impl Metrics {
    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

pub type SharedMetrics = Arc<Metrics>;
