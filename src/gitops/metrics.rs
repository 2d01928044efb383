//! GitOps metrics (prefix `streamspace_gitops_`). GitSync objects are few and named by
//! operators, so the last-applied timestamp is labelled by GitSync; failures only by reason.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabel {
    pub gitsync: String,
}

#[derive(Clone)]
pub struct GitopsMetrics {
    /// Seconds from the start of a sync (fetch included) to its status.
    pub sync_duration: Histogram,
    /// Unix time at which each GitSync's current commit was applied.
    pub last_applied: Family<SyncLabel, Gauge>,
    pub failures: Family<ReasonLabel, Counter>,
    /// Node patches that succeeded: one per changed node.
    pub node_writes: Counter,
    /// Node patches refused because someone wrote the node first (each is retried).
    pub node_conflicts: Counter,
    pub webhooks: Family<ReasonLabel, Counter>,
}

impl GitopsMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = GitopsMetrics {
            sync_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            last_applied: Family::default(),
            failures: Family::default(),
            node_writes: Counter::default(),
            node_conflicts: Counter::default(),
            webhooks: Family::default(),
        };
        registry.register(
            "sync_duration_seconds",
            "Time of one GitSync sync, fetch to status",
            metrics.sync_duration.clone(),
        );
        registry.register(
            "last_applied_commit_timestamp_seconds",
            "Unix time the commit in force was applied, by GitSync",
            metrics.last_applied.clone(),
        );
        registry.register(
            "sync_failures",
            "Syncs that failed or rejected a commit, by reason",
            metrics.failures.clone(),
        );
        registry.register(
            "node_writes",
            "Node patches applied by GitOps",
            metrics.node_writes.clone(),
        );
        registry.register(
            "node_conflicts",
            "Node patches refused by a concurrent write, then retried",
            metrics.node_conflicts.clone(),
        );
        registry.register(
            "webhooks",
            "Push webhooks received, by outcome",
            metrics.webhooks.clone(),
        );
        metrics
    }

    pub fn failure(&self, reason: &'static str) {
        self.failures.get_or_create(&ReasonLabel { reason }).inc();
    }
}
