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

/// The process's metrics registry and the handles every subsystem records into.
pub struct Metrics {
    pub registry: Registry,
    pub reconcilers: ReconcilerMetrics,
    pub gitops: crate::gitops::metrics::GitopsMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("streamspace");
        let reconcilers =
            ReconcilerMetrics::register(registry.sub_registry_with_prefix("controller"));
        let gitops = crate::gitops::metrics::GitopsMetrics::register(
            registry.sub_registry_with_prefix("gitops"),
        );
        Metrics {
            registry,
            reconcilers,
            gitops,
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
