//! Prometheus metrics: one registry, a prefixed sub-registry per subsystem, and labels of low
//! cardinality only (never object names or error text).

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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
    /// Writes not made because they would repeat one the watch cache does not show yet.
    pub skipped_writes: Family<ControllerLabel, Counter>,
    /// Watched changes that start no reconcile (a session's heartbeat-only change).
    pub ignored_changes: Family<ControllerLabel, Counter>,
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
            skipped_writes: Family::default(),
            ignored_changes: Family::default(),
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
        registry.register(
            "skipped_writes",
            "Writes not made because the same write is made and not yet in the watch cache",
            metrics.skipped_writes.clone(),
        );
        registry.register(
            "ignored_changes",
            "Watched changes that start no reconcile, such as a heartbeat-only Session change",
            metrics.ignored_changes.clone(),
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

    pub fn skipped_write(&self, controller: &'static str) {
        self.skipped_writes
            .get_or_create(&ControllerLabel { controller })
            .inc();
    }

    pub fn ignored_change(&self, controller: &'static str) {
        self.ignored_changes
            .get_or_create(&ControllerLabel { controller })
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WakeLabels {
    pub source: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// Sessions stopped and woken by the idle reconciler and the waker.
#[derive(Clone, Default)]
pub struct IdleMetrics {
    pub stops: Family<ReasonLabel, Counter>,
    pub wakes: Family<WakeLabels, Counter>,
}

impl IdleMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = IdleMetrics::default();
        registry.register(
            "session_stops",
            "Sessions stopped for idleness or duration (the controller's idle reconciler, the API's legacy idle monitor), by reason (Idle, MaxDurationReached)",
            metrics.stops.clone(),
        );
        registry.register(
            "session_wakes",
            "Wake requests handled, by source (event, annotation) and outcome",
            metrics.wakes.clone(),
        );
        metrics
    }

    pub fn stop(&self, reason: &'static str) {
        self.stops.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn wake(&self, source: &'static str, outcome: &'static str) {
        self.wakes
            .get_or_create(&WakeLabels { source, outcome })
            .inc();
    }
}

/// Taking over from the old StreamSpace controller: adoptions and fencing.
#[derive(Clone, Default)]
pub struct MigrationMetrics {
    pub adoptions: Family<OutcomeLabel, Counter>,
    /// 1 while the last check found the old controller active, else 0.
    pub legacy_controller_active: Gauge,
    /// Session reconciles that did nothing because the old controller is active.
    pub fenced: Counter,
}

impl MigrationMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = MigrationMetrics::default();
        registry.register(
            "adoptions",
            "Sessions of the old controller adopted, by outcome (adopted, failed)",
            metrics.adoptions.clone(),
        );
        registry.register(
            "legacy_controller_active",
            "Whether the old StreamSpace controller was found active at the last check",
            metrics.legacy_controller_active.clone(),
        );
        registry.register(
            "fenced_reconciles",
            "Session reconciles skipped because the old controller is active",
            metrics.fenced.clone(),
        );
        metrics
    }

    pub fn adoption(&self, outcome: &'static str) {
        self.adoptions
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }
}

/// The `api` subcommand's hot path: heartbeats in, coalesced status writes out.
#[derive(Clone)]
pub struct ApiMetrics {
    /// Requests by endpoint and response class.
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<EndpointLabel, Histogram>,
    /// `status.lastActivity` writes by outcome (written, skipped_not_newer, conflict, error).
    pub activity_writes: Family<OutcomeLabel, Counter>,
    /// Connection events sent to the controller, by outcome.
    pub connection_events: Family<OutcomeLabel, Counter>,
    /// TokenReview and SubjectAccessReview answers, by kind and outcome (`cached` when
    /// answered from the cache).
    pub auth_reviews: Family<ReviewLabels, Counter>,
    /// Reloads of the listener's certificate files (with `--tls-cert`), by result.
    pub cert_reloads: Family<CertLabels, Counter>,
    /// TLS handshakes on the listener (with `--tls-cert`), by result.
    pub tls_handshakes: Family<ResultLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    /// `token` or `access`.
    pub kind: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub endpoint: &'static str,
}

impl ApiMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = ApiMetrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 2.0, 16))
            }),
            activity_writes: Family::default(),
            connection_events: Family::default(),
            auth_reviews: Family::default(),
            cert_reloads: Family::default(),
            tls_handshakes: Family::default(),
        };
        registry.register(
            "requests",
            "Requests by endpoint and status code",
            metrics.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer a request, by endpoint",
            metrics.request_duration.clone(),
        );
        registry.register(
            "activity_writes",
            "Flushes of status.lastActivity, by outcome",
            metrics.activity_writes.clone(),
        );
        registry.register(
            "connection_events",
            "Connection events sent to the controller, by outcome",
            metrics.connection_events.clone(),
        );
        registry.register(
            "auth_reviews",
            "Authentication and authorisation answers, by kind and outcome",
            metrics.auth_reviews.clone(),
        );
        registry.register(
            "certificate_reloads",
            "Reloads of the listener's certificate files, by result",
            metrics.cert_reloads.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes on the listener, by result",
            metrics.tls_handshakes.clone(),
        );
        metrics
    }

    pub fn auth_review(&self, kind: &'static str, outcome: &'static str) {
        self.auth_reviews
            .get_or_create(&ReviewLabels { kind, outcome })
            .inc();
    }

    pub fn request(&self, endpoint: &'static str, code: u16, started: Instant) {
        self.requests
            .get_or_create(&RequestLabels { endpoint, code })
            .inc();
        self.request_duration
            .get_or_create(&EndpointLabel { endpoint })
            .observe(started.elapsed().as_secs_f64());
    }

    pub fn activity_write(&self, outcome: &'static str) {
        self.activity_writes
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    pub fn connection_event(&self, outcome: &'static str) {
        self.connection_events
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceTypeLabel {
    pub resource_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OwnerLabels {
    pub resource_type: &'static str,
    /// `legacy`, `shadow` or `controller`.
    pub owner: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClaimLabels {
    pub resource_type: &'static str,
    /// `claimed` or `conflict`.
    pub result: &'static str,
}

/// Ownership: who decided to act, hand-off claims, and what shadow mode found.
#[derive(Clone, Default)]
pub struct OwnershipMetrics {
    /// Ownership decisions taken by the controller, by type and owner.
    pub decisions: Family<OwnerLabels, Counter>,
    /// Claims of objects last acted on by the legacy side, by result.
    pub claims: Family<ClaimLabels, Counter>,
    /// Differences reported in shadow mode (counted when an object's difference set changes).
    pub shadow_differences: Family<ResourceTypeLabel, Counter>,
    /// Objects whose last shadow comparison found differences.
    pub shadow_objects_differing: Family<ResourceTypeLabel, Gauge>,
}

impl OwnershipMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = OwnershipMetrics::default();
        registry.register(
            "ownership_decisions",
            "Ownership decisions of the controller, by resource type and owner",
            metrics.decisions.clone(),
        );
        registry.register(
            "ownership_claims",
            "Claims of objects last acted on by the legacy side, by result (claimed, conflict)",
            metrics.claims.clone(),
        );
        registry.register(
            "shadow_differences",
            "Differences between what the controller would do and what legacy did, reported in shadow mode",
            metrics.shadow_differences.clone(),
        );
        registry.register(
            "shadow_objects_differing",
            "Objects whose latest shadow comparison found differences",
            metrics.shadow_objects_differing.clone(),
        );
        metrics
    }

    pub fn decision(&self, resource_type: &'static str, owner: &'static str) {
        self.decisions
            .get_or_create(&OwnerLabels {
                resource_type,
                owner,
            })
            .inc();
    }

    pub fn claim(&self, resource_type: &'static str, result: &'static str) {
        self.claims
            .get_or_create(&ClaimLabels {
                resource_type,
                result,
            })
            .inc();
    }
}

/// The process's metrics registry and the handles every subsystem records into.
pub struct Metrics {
    pub registry: Registry,
    pub process: ProcessMetrics,
    pub reconcilers: ReconcilerMetrics,
    pub node_operations: NodeOperationMetrics,
    pub admission: AdmissionMetrics,
    pub idle: IdleMetrics,
    pub api: ApiMetrics,
    pub gitops: crate::gitops::metrics::GitopsMetrics,
    pub ownership: OwnershipMetrics,
    pub migration: MigrationMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        // Root without a prefix, so `process_start_time_seconds` keeps its standard name.
        let mut root = Registry::default();
        let process = ProcessMetrics::register(&mut root);
        let registry = root.sub_registry_with_prefix("streamspace");
        let reconcilers =
            ReconcilerMetrics::register(registry.sub_registry_with_prefix("controller"));
        let node_operations =
            NodeOperationMetrics::register(registry.sub_registry_with_prefix("nodeop"));
        let admission = AdmissionMetrics::register(registry.sub_registry_with_prefix("admission"));
        let idle = IdleMetrics::register(registry.sub_registry_with_prefix("idle"));
        let api = ApiMetrics::register(registry.sub_registry_with_prefix("api"));
        let gitops = crate::gitops::metrics::GitopsMetrics::register(
            registry.sub_registry_with_prefix("gitops"),
        );
        let migration = MigrationMetrics::register(registry);
        let ownership = OwnershipMetrics::register(registry);
        Metrics {
            registry: root,
            process,
            reconcilers,
            node_operations,
            admission,
            idle,
            api,
            gitops,
            ownership,
            migration,
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
    /// Git commit the binary was built from, `unknown` when the build did not record it.
    pub commit: &'static str,
}

/// Process-wide facts: uptime, leadership and what is running.
#[derive(Clone)]
pub struct ProcessMetrics {
    /// 1 while this replica holds the leader lease (or runs without leader election).
    pub leader: Gauge,
    /// Unix time the process started, the standard name dashboards compute uptime from.
    pub start_time: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub build_info: Family<BuildLabels, Gauge>,
}

impl ProcessMetrics {
    fn register(root: &mut Registry) -> Self {
        let metrics = ProcessMetrics {
            leader: Gauge::default(),
            start_time: Gauge::default(),
            build_info: Family::default(),
        };
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        metrics.start_time.set(started);
        metrics
            .build_info
            .get_or_create(&BuildLabels {
                version: crate::version::VERSION,
                commit: crate::version::COMMIT,
            })
            .set(1);
        root.register(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch",
            metrics.start_time.clone(),
        );
        let ours = root.sub_registry_with_prefix("streamspace");
        ours.register(
            "leader",
            "1 while this replica holds the leader lease and runs the reconcilers",
            metrics.leader.clone(),
        );
        ours.register(
            "build_info",
            "Version and commit of the running binary (always 1)",
            metrics.build_info.clone(),
        );
        metrics
    }
}
