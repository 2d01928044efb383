//! Per-object retry delays: each consecutive failure of the same object doubles its delay, a
//! success forgets it. A conflict (someone else wrote first) starts lower than other errors
//! because fresh data usually fixes it at once.
//!
//! The error pattern every reconciler shares: one error enum per module (thiserror) that
//! implements [`ReconcileError`] (a fixed metric label per variant, and whether fresh data
//! will fix it); its `error_policy` calls [`FailureBackoff::failed_with`], which counts the
//! failure and picks the delay, and only logs and requeues itself.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

const TRANSIENT_BASE: Duration = Duration::from_millis(500);
const BASE: Duration = Duration::from_secs(2);
/// Longest wait between two attempts: a broken object is still retried a few times an hour.
const MAX: Duration = Duration::from_secs(300);

/// Delay before the next attempt after `failures` consecutive failures (1 = first failure).
pub fn delay(failures: u32, transient: bool) -> Duration {
    let base = if transient { TRANSIENT_BASE } else { BASE };
    let doublings = failures.saturating_sub(1).min(16);
    base.saturating_mul(1 << doublings).min(MAX)
}

/// What a reconciler's error tells its error policy.
pub trait ReconcileError: std::fmt::Display {
    /// A fixed label for metrics: never the error text or an object name.
    fn metric_label(&self) -> &'static str;
    /// Fresh data will likely fix it (a conflict): retried soon instead of with the full
    /// backoff.
    fn is_transient(&self) -> bool;
}

/// Consecutive failure counts by object key.
#[derive(Default)]
pub struct FailureBackoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl FailureBackoff {
    /// Records a failure of `key` and returns how long to wait before retrying it.
    pub fn failed(&self, key: String, transient: bool) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures.entry(key).or_insert(0);
        *count = count.saturating_add(1);
        delay(*count, transient)
    }

    /// The shared half of every `error_policy`: counts the failure of `controller` under the
    /// error's label and returns how long `key` waits before its retry.
    pub fn failed_with(
        &self,
        metrics: &crate::metrics::ReconcilerMetrics,
        controller: &'static str,
        key: String,
        error: &impl ReconcileError,
    ) -> Duration {
        metrics.failure(controller, error.metric_label());
        self.failed(key, error.is_transient())
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn succeeded(&self, key: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_and_cap() {
        let cases = [
            (1, false, 2_000),
            (2, false, 4_000),
            (3, false, 8_000),
            (8, false, 256_000),
            (9, false, 300_000),
            (u32::MAX, false, 300_000),
            (1, true, 500),
            (2, true, 1_000),
        ];
        for (failures, transient, millis) in cases {
            assert_eq!(
                delay(failures, transient),
                Duration::from_millis(millis),
                "{failures} {transient}"
            );
        }
    }

    #[test]
    fn success_resets_the_count() {
        let backoff = FailureBackoff::default();
        assert_eq!(backoff.failed("a".into(), false), Duration::from_secs(2));
        assert_eq!(backoff.failed("a".into(), false), Duration::from_secs(4));
        assert_eq!(backoff.failed("b".into(), false), Duration::from_secs(2));
        backoff.succeeded("a");
        assert_eq!(backoff.failed("a".into(), false), Duration::from_secs(2));
    }
}
