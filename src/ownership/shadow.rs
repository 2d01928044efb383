//! Reports of shadow mode: what the controller would do differently from what the legacy side
//! did, per object.
//!
//! Each reconciler computes its differences with a pure function and hands them here. A set of
//! differences is reported only once it has stayed the same for [`SETTLE`]: the legacy side
//! builds an object in several writes (the Session first, its children next), and a comparison
//! made in between is not a disagreement. An Event is due only when an object's settled set
//! changes (remembered in memory as a hash per object), so a steady disagreement is reported
//! once, not on every resync; the metrics count reported differences and the objects currently
//! differing, by resource type.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use tracing::{info, warn};

use super::ResourceType;
use crate::metrics::{OwnershipMetrics, ResourceTypeLabel};

/// How long a set of differences must stay the same before it is reported.
pub const SETTLE: Duration = Duration::from_secs(2);

/// Longest Event note written; the API server refuses notes over 1 kB.
pub const MAX_NOTE: usize = 1000;

/// Reason of the Event that reports a shadow difference.
pub const SHADOW_EVENT_REASON: &str = "ShadowDifference";

/// What [`ShadowReports::record`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Same differences as reported last time (or none, as last time): nothing to publish.
    Unchanged,
    /// New differences, not settled yet: compare again after this long.
    Settling(Duration),
    /// A new settled set of differences: publish it.
    Differs,
    /// The object differed before and agrees now.
    Agrees,
}

struct Seen {
    hash: u64,
    since: Instant,
    reported: bool,
}

/// The last differences of every object, by hash.
pub struct ShadowReports {
    seen: Mutex<HashMap<(ResourceType, String), Seen>>,
    metrics: OwnershipMetrics,
    settle: Duration,
}

impl ShadowReports {
    pub fn new(metrics: OwnershipMetrics) -> Self {
        Self::with_settle(metrics, SETTLE)
    }

    pub fn with_settle(metrics: OwnershipMetrics, settle: Duration) -> Self {
        ShadowReports {
            seen: Mutex::default(),
            metrics,
            settle,
        }
    }

    /// Records the differences of the object `key` of `resource`, found at `now`.
    pub fn record(
        &self,
        resource: ResourceType,
        key: &str,
        differences: &[String],
        now: Instant,
    ) -> Change {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let id = (resource, key.to_string());
        let change = if differences.is_empty() {
            match seen.remove(&id) {
                Some(previous) if previous.reported => Change::Agrees,
                _ => Change::Unchanged,
            }
        } else {
            let hash = hash_of(differences);
            let entry = seen.entry(id).or_insert(Seen {
                hash,
                since: now,
                reported: false,
            });
            if entry.hash != hash {
                *entry = Seen {
                    hash,
                    since: now,
                    reported: false,
                };
            }
            let age = now.saturating_duration_since(entry.since);
            if entry.reported {
                Change::Unchanged
            } else if age < self.settle {
                Change::Settling(self.settle - age)
            } else {
                entry.reported = true;
                let count = u64::try_from(differences.len()).unwrap_or(u64::MAX);
                self.metrics
                    .shadow_differences
                    .get_or_create(&label(resource))
                    .inc_by(count);
                Change::Differs
            }
        };
        self.update_gauge(&seen, resource);
        change
    }

    /// Records the differences of `subject` found now and publishes them as a
    /// [`SHADOW_EVENT_REASON`] Event when they are a new settled set (note: `lead: difference;
    /// ...`). The one report path of every reconciler in shadow mode. `Some(wait)`: the set is
    /// still settling, compare again after `wait`.
    pub async fn report(
        &self,
        recorder: &Recorder,
        subject: &Subject<'_>,
        lead: &str,
        differences: &[String],
    ) -> Option<Duration> {
        let (resource, key) = (subject.resource, subject.key);
        match self.record(resource, key, differences, Instant::now()) {
            Change::Unchanged => None,
            Change::Settling(wait) => Some(wait),
            Change::Agrees => {
                info!(%resource, object = %key, "shadow: legacy and controller agree");
                None
            }
            Change::Differs => {
                info!(%resource, object = %key, ?differences, "shadow: the controller would act differently");
                let event = Event {
                    type_: EventType::Normal,
                    reason: SHADOW_EVENT_REASON.into(),
                    note: Some(note(lead, differences)),
                    action: subject.action.into(),
                    secondary: None,
                };
                if let Err(error) = recorder.publish(&event, &subject.reference).await {
                    warn!(%error, %resource, object = %key, "could not publish shadow event");
                }
                None
            }
        }
    }

    /// Forgets the object: it is acted on (or gone), so it no longer counts as differing.
    pub fn clear(&self, resource: ResourceType, key: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.remove(&(resource, key.to_string())).is_some() {
            self.update_gauge(&seen, resource);
        }
    }

    fn update_gauge(&self, seen: &HashMap<(ResourceType, String), Seen>, resource: ResourceType) {
        let differing = seen
            .iter()
            .filter(|((t, _), s)| *t == resource && s.reported)
            .count();
        self.metrics
            .shadow_objects_differing
            .get_or_create(&label(resource))
            .set(i64::try_from(differing).unwrap_or(i64::MAX));
    }
}

/// The object a shadow report is about.
pub struct Subject<'a> {
    pub resource: ResourceType,
    /// The object's key in the reports (`namespace/name`, or the name when cluster-scoped).
    pub key: &'a str,
    /// Where the Event goes.
    pub reference: ObjectReference,
    /// The Event's action: what the reconciler does (`Shadow`, `Idle`, `NodeOperation`).
    pub action: &'a str,
}

fn label(resource: ResourceType) -> ResourceTypeLabel {
    ResourceTypeLabel {
        resource_type: resource.as_str(),
    }
}

fn hash_of(differences: &[String]) -> u64 {
    let mut hasher = DefaultHasher::new();
    differences.hash(&mut hasher);
    hasher.finish()
}

/// The Event note of a set of differences, cut to [`MAX_NOTE`] bytes on a character boundary.
pub fn note(prefix: &str, differences: &[String]) -> String {
    let mut note = format!("{prefix}: {}", differences.join("; "));
    if note.len() > MAX_NOTE {
        let mut cut = MAX_NOTE - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge(reports: &ShadowReports, resource: ResourceType) -> i64 {
        reports
            .metrics
            .shadow_objects_differing
            .get_or_create(&label(resource))
            .get()
    }

    #[test]
    fn an_event_is_due_only_when_a_settled_set_changes() {
        let reports =
            ShadowReports::with_settle(OwnershipMetrics::default(), Duration::from_secs(2));
        let a = vec!["Service ss-a missing".to_string()];
        let b = vec!["Service ss-a missing".to_string(), "x".to_string()];
        let s = ResourceType::Sessions;
        let t0 = Instant::now();
        let at = |seconds: u64| t0 + Duration::from_secs(seconds);
        let steps: [(u64, &[String], Change, i64); 9] = [
            (0, &[], Change::Unchanged, 0),
            (0, &a, Change::Settling(Duration::from_secs(2)), 0),
            (1, &a, Change::Settling(Duration::from_secs(1)), 0),
            (2, &a, Change::Differs, 1),
            (9, &a, Change::Unchanged, 1),
            // A different set settles again before it is reported.
            (10, &b, Change::Settling(Duration::from_secs(2)), 0),
            (12, &b, Change::Differs, 1),
            (13, &[], Change::Agrees, 0),
            (14, &[], Change::Unchanged, 0),
        ];
        for (i, (when, differences, expected, differing)) in steps.into_iter().enumerate() {
            assert_eq!(
                reports.record(s, "ns/a", differences, at(when)),
                expected,
                "step {i}"
            );
            assert_eq!(gauge(&reports, s), differing, "step {i}");
        }
        let counted = reports
            .metrics
            .shadow_differences
            .get_or_create(&label(s))
            .get();
        assert_eq!(counted, 3);
    }

    #[test]
    fn a_transient_difference_is_never_reported() {
        let reports =
            ShadowReports::with_settle(OwnershipMetrics::default(), Duration::from_secs(2));
        let t0 = Instant::now();
        let missing = vec!["Deployment ss-a missing".to_string()];
        let s = ResourceType::Sessions;
        assert!(matches!(
            reports.record(s, "ns/a", &missing, t0),
            Change::Settling(_)
        ));
        assert_eq!(
            reports.record(s, "ns/a", &[], t0 + Duration::from_secs(1)),
            Change::Unchanged
        );
        assert_eq!(gauge(&reports, s), 0);
    }

    #[test]
    fn objects_and_types_are_counted_apart() {
        let reports = ShadowReports::with_settle(OwnershipMetrics::default(), Duration::ZERO);
        let d = vec!["d".to_string()];
        let now = Instant::now();
        reports.record(ResourceType::Sessions, "ns/a", &d, now);
        reports.record(ResourceType::Sessions, "ns/b", &d, now);
        reports.record(ResourceType::Idle, "ns/a", &d, now);
        assert_eq!(gauge(&reports, ResourceType::Sessions), 2);
        assert_eq!(gauge(&reports, ResourceType::Idle), 1);
        reports.clear(ResourceType::Sessions, "ns/a");
        assert_eq!(gauge(&reports, ResourceType::Sessions), 1);
        assert_eq!(gauge(&reports, ResourceType::Idle), 1);
    }

    #[test]
    fn notes_are_cut_on_a_character_boundary() {
        let long = vec!["é".repeat(800)];
        let text = note("would", &long);
        assert!(text.len() <= MAX_NOTE);
        assert!(text.ends_with("..."));
        assert_eq!(note("would", &["a".into(), "b".into()]), "would: a; b");
    }
}
