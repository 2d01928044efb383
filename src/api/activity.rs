//! Heartbeats are accepted in memory and flushed to `status.lastActivity` at most once per
//! session per flush interval: the first activity after a quiet interval is written at the next
//! tick (leading edge), later ones in the same interval are coalesced into one write when the
//! interval ends (trailing edge). 1,000 heartbeats in one interval cost at most two writes.
//!
//! A flush is a merge patch of the status subresource that sets `lastActivity` and nothing else,
//! conditional on the resourceVersion it compared against (`metadata.resourceVersion` in the
//! patch is a precondition, not a change). It is skipped when the stored value is already as
//! new or newer, so the timestamp never moves backwards, also with many API replicas writing
//! the same session: a replica that lost the race gets 409, re-reads and compares again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::crd::Session;
use crate::idle::wake::rfc3339;
use crate::metrics::SharedMetrics;

/// Field manager of the API's status writes.
pub const FIELD_MANAGER: &str = "streamspace-api";
/// Default flush interval.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(15);
/// Writes in flight at once.
const FLUSH_CONCURRENCY: usize = 16;
/// Attempts of one flush that keeps losing races.
const MAX_ATTEMPTS: u32 = 3;

#[derive(Debug)]
struct Entry {
    /// Newest activity not yet written.
    pending: Option<Timestamp>,
    /// When this replica last wrote (or decided not to write) the session.
    last_flush: Option<Instant>,
}

/// The in-memory activity of this replica's sessions.
pub struct ActivityBuffer {
    entries: Mutex<HashMap<String, Entry>>,
    interval: Duration,
}

impl ActivityBuffer {
    pub fn new(interval: Duration) -> Self {
        ActivityBuffer {
            entries: Mutex::new(HashMap::new()),
            interval,
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Records activity of `session` at `at`.
    pub fn record(&self, session: &str, at: Timestamp) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.entry(session.to_string()).or_insert(Entry {
            pending: None,
            last_flush: None,
        });
        entry.pending = Some(entry.pending.map_or(at, |p| p.max(at)));
    }

    /// Takes the activity that is due at `now`: pending, and not written within the interval.
    /// Forgets sessions that have been quiet for a few intervals.
    pub fn take_due(&self, now: Instant) -> Vec<(String, Timestamp)> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut due = Vec::new();
        entries.retain(|name, entry| {
            let since = entry.last_flush.map(|at| now.saturating_duration_since(at));
            match (entry.pending, since) {
                (Some(at), since) if since.is_none_or(|s| s >= self.interval) => {
                    due.push((name.clone(), at));
                    entry.pending = None;
                    entry.last_flush = Some(now);
                    true
                }
                (None, Some(since)) => since < self.interval * 4,
                _ => true,
            }
        });
        due
    }
}

/// Writes due activity until the process stops.
pub struct Flusher {
    pub client: Client,
    pub namespace: String,
    pub buffer: Arc<ActivityBuffer>,
    pub sessions: Store<Session>,
    pub metrics: SharedMetrics,
}

impl Flusher {
    /// Checks for due activity every `tick` (a tenth of the interval, at most 250 ms).
    pub async fn run(self) {
        let tick = (self.buffer.interval() / 10)
            .clamp(Duration::from_millis(10), Duration::from_millis(250));
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let due = self.buffer.take_due(Instant::now());
            if due.is_empty() {
                continue;
            }
            let this = &self;
            futures::stream::iter(due)
                .for_each_concurrent(FLUSH_CONCURRENCY, |(name, at)| async move {
                    let outcome = this.flush(&name, at).await;
                    this.metrics.api.activity_write(outcome);
                    if matches!(outcome, "error" | "contended") {
                        // Keep it for the next interval rather than losing it.
                        this.buffer.record(&name, at);
                    }
                })
                .await;
        }
    }

    /// Writes `at` to the session unless the stored activity is as new; returns the outcome
    /// label.
    pub async fn flush(&self, name: &str, at: Timestamp) -> &'static str {
        let api: Api<Session> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut session = self
            .sessions
            .get(&ObjectRef::new(name).within(&self.namespace));
        for _ in 0..MAX_ATTEMPTS {
            let current = match session.take() {
                Some(cached) => cached,
                None => match api.get_opt(name).await {
                    Ok(Some(fresh)) => Arc::new(fresh),
                    Ok(None) => return "not_found",
                    Err(error) => {
                        warn!(session = name, %error, "could not read session to flush activity");
                        return "error";
                    }
                },
            };
            let stored = current
                .status
                .as_ref()
                .and_then(|s| s.last_activity.as_ref())
                .map(|t| t.0.as_second());
            if stored.is_some_and(|stored| stored >= at.as_second()) {
                return "not_newer";
            }
            let patch = json!({
                "metadata": {"resourceVersion": current.resource_version()},
                "status": {"lastActivity": rfc3339(at)},
            });
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            };
            match api.patch_status(name, &params, &Patch::Merge(patch)).await {
                Ok(_) => return "written",
                Err(kube::Error::Api(status)) if status.is_conflict() => {
                    debug!(
                        session = name,
                        "activity write lost a race; comparing again"
                    );
                    self.metrics.api.activity_write("conflict");
                }
                Err(kube::Error::Api(status)) if status.is_not_found() => return "not_found",
                Err(error) => {
                    warn!(session = name, %error, "could not write lastActivity");
                    return "error";
                }
            }
        }
        "contended"
    }
}

/// A session's activity as clients see it (the old API's activity status): computed from
/// `status.lastActivity`, `spec.idleTimeout` and the clock, so every replica answers alike.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivityView {
    /// `status.lastActivity` (RFC 3339); `null` before the first activity.
    pub last_activity: Option<String>,
    /// Whole seconds since `lastActivity`; `null` without one.
    pub idle_duration: Option<i64>,
    /// `spec.idleTimeout` in seconds; `null` when it is `0s` (idling disabled).
    pub idle_threshold: Option<i64>,
    /// Idle at least the threshold (the controller hibernates it once its grace has passed
    /// too); never without `lastActivity` or with idling disabled.
    pub is_idle: bool,
    /// Running (`spec.state`) and not idle.
    pub is_active: bool,
}

/// What the request-time activity values derive from: one rule for a session's view and for
/// a list item rendered ahead of its requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Clock {
    /// `status.lastActivity` in seconds.
    last_activity: Option<i64>,
    /// The idle threshold in seconds (`None`: never idle).
    threshold: Option<i64>,
    /// `spec.state` is running.
    running: bool,
}

impl Clock {
    pub(crate) fn of(session: &Session) -> Clock {
        let timeout = if session.spec.idle_timeout.trim().is_empty() {
            crate::crd::session::DEFAULT_IDLE_TIMEOUT
        } else {
            session.spec.idle_timeout.as_str()
        };
        let threshold = crate::idle::deadline::parse_duration(timeout)
            .or_else(|| {
                crate::idle::deadline::parse_duration(crate::crd::session::DEFAULT_IDLE_TIMEOUT)
            })
            .filter(|d| !d.is_zero())
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        Clock {
            last_activity: last_activity(session).map(|t| t.as_second()),
            threshold,
            running: session.spec.desired_state() == crate::crd::SessionState::Running,
        }
    }

    /// `(idleDuration, isIdle, isActive)` at `now`.
    pub(crate) fn at(self, now: Timestamp) -> (Option<i64>, bool, bool) {
        let idle = self
            .last_activity
            .map(|last| now.as_second().saturating_sub(last).max(0));
        let is_idle =
            matches!((idle, self.threshold), (Some(idle), Some(threshold)) if idle >= threshold);
        (idle, is_idle, self.running && !is_idle)
    }
}

fn last_activity(session: &Session) -> Option<Timestamp> {
    session
        .status
        .as_ref()
        .and_then(|s| s.last_activity.as_ref())
        .map(|t| t.0)
}

/// The activity of `session` at `now`.
pub fn view(session: &Session, now: Timestamp) -> ActivityView {
    let clock = Clock::of(session);
    let (idle_duration, is_idle, is_active) = clock.at(now);
    ActivityView {
        last_activity: last_activity(session).map(|t| t.to_string()),
        idle_duration,
        idle_threshold: clock.threshold,
        is_idle,
        is_active,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(state: &str, idle_timeout: &str, last: Option<i64>) -> Session {
        let mut object = serde_json::json!({
            "apiVersion": "stream.space/v1alpha1", "kind": "Session",
            "metadata": {"name": "s", "namespace": "ns"},
            "spec": {"user": "alice", "template": "t", "state": state, "idleTimeout": idle_timeout},
        });
        if let Some(last) = last {
            object["status"] = serde_json::json!({"lastActivity": rfc3339(ts(last))});
        }
        serde_json::from_value(object).expect("session")
    }

    #[test]
    fn activity_views() {
        // (state, idleTimeout, lastActivity, now) -> (idleDuration, threshold, isIdle, isActive)
        type Row = (
            &'static str,
            &'static str,
            Option<i64>,
            i64,
            Option<i64>,
            Option<i64>,
            bool,
            bool,
        );
        let rows: &[Row] = &[
            ("running", "30m", None, 100, None, Some(1800), false, true),
            (
                "running",
                "30m",
                Some(0),
                1799,
                Some(1799),
                Some(1800),
                false,
                true,
            ),
            (
                "running",
                "30m",
                Some(0),
                1800,
                Some(1800),
                Some(1800),
                true,
                false,
            ),
            (
                "running",
                "0s",
                Some(0),
                99_999,
                Some(99_999),
                None,
                false,
                true,
            ),
            (
                "running",
                "",
                Some(0),
                1800,
                Some(1800),
                Some(1800),
                true,
                false,
            ),
            (
                "running",
                "bogus",
                Some(0),
                60,
                Some(60),
                Some(1800),
                false,
                true,
            ),
            (
                "hibernated",
                "1m",
                Some(0),
                30,
                Some(30),
                Some(60),
                false,
                false,
            ),
            (
                "hibernated",
                "1m",
                Some(0),
                90,
                Some(90),
                Some(60),
                true,
                false,
            ),
            // A clock behind the stored activity never reports a negative idle time.
            (
                "running",
                "1m",
                Some(50),
                10,
                Some(0),
                Some(60),
                false,
                true,
            ),
        ];
        for (state, timeout, last, now, idle, threshold, is_idle, is_active) in rows {
            let got = view(&session(state, timeout, *last), ts(*now));
            assert_eq!(
                (
                    got.idle_duration,
                    got.idle_threshold,
                    got.is_idle,
                    got.is_active
                ),
                (*idle, *threshold, *is_idle, *is_active),
                "{state} {timeout} {last:?} at {now}"
            );
            assert_eq!(got.last_activity.is_some(), last.is_some());
        }
    }

    fn ts(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn coalesces_to_leading_and_trailing_writes() {
        let buffer = ActivityBuffer::new(Duration::from_secs(15));
        let start = Instant::now();
        for i in 0..1000 {
            buffer.record("a", ts(i % 10));
        }
        assert_eq!(buffer.take_due(start), vec![("a".to_string(), ts(9))]);
        for i in 0..1000 {
            buffer.record("a", ts(10 + i % 5));
        }
        // Within the interval: nothing is due however many heartbeats arrive.
        assert!(buffer.take_due(start + Duration::from_secs(14)).is_empty());
        assert_eq!(
            buffer.take_due(start + Duration::from_secs(15)),
            vec![("a".to_string(), ts(14))]
        );
        assert!(buffer.take_due(start + Duration::from_secs(31)).is_empty());
    }

    #[test]
    fn never_takes_an_older_time_than_recorded() {
        let buffer = ActivityBuffer::new(Duration::from_secs(1));
        buffer.record("a", ts(5));
        buffer.record("a", ts(3));
        assert_eq!(
            buffer.take_due(Instant::now()),
            vec![("a".to_string(), ts(5))]
        );
    }

    #[test]
    fn quiet_sessions_are_forgotten() {
        let buffer = ActivityBuffer::new(Duration::from_secs(1));
        let start = Instant::now();
        buffer.record("a", ts(1));
        let _ = buffer.take_due(start);
        let _ = buffer.take_due(start + Duration::from_secs(5));
        let entries = buffer.entries.lock().map(|e| e.len()).unwrap_or(usize::MAX);
        assert_eq!(entries, 0);
    }
}
