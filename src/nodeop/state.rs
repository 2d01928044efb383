//! Operation-level rules as pure functions of plain values and `now`: which operation of a node
//! goes first, what the node's state was before we cordoned it, whether deleting an operation
//! uncordons the node, validation, timeouts and time-to-live.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::crd::node_operation::{NodeOperationSpec, TaintEffect};

/// Another operation on the same node, as the ordering rules see it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sibling {
    pub name: String,
    pub created: Option<Timestamp>,
    pub finished: bool,
    pub deleting: bool,
    pub cordons: bool,
}

/// The operation that must finish before `name` (created at `created`) may run: the oldest
/// unfinished one of the node that is older than ours (creation time, then name). Operations
/// being deleted do not count.
pub fn waits_for<'a>(
    name: &str,
    created: Option<Timestamp>,
    siblings: &'a [Sibling],
) -> Option<&'a Sibling> {
    let me = (created, name);
    siblings
        .iter()
        .filter(|s| s.name != name && !s.finished && !s.deleting)
        .filter(|s| (s.created, s.name.as_str()) < me)
        .min_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)))
}

/// The node's schedulability before any of our operations cordoned it: a cordon marked as
/// ours (see `edits::CORDON_ANNOTATION`) does not count as "cordoned by someone else".
pub fn prior_unschedulable(node_unschedulable: bool, cordoned_by_us: bool) -> bool {
    node_unschedulable && !cordoned_by_us
}

/// Whether deleting an operation releases its cordon: when it holds one and no other live
/// operation of the node does. (Releasing uncordons only a cordon marked as ours.)
pub fn release_cordon_on_delete(cordons: bool, siblings: &[Sibling]) -> bool {
    cordons && !siblings.iter().any(|s| !s.deleting && s.cordons)
}

/// Checks what the schema cannot (or what older objects may hold); the message says what to fix.
pub fn validate(spec: &NodeOperationSpec) -> Result<(), String> {
    if spec.node_name.is_empty() {
        return Err("spec.nodeName is empty".into());
    }
    if spec.is_empty() {
        return Err("nothing to do: set cordon, drain, labels or taints".into());
    }
    if let Some(drain) = &spec.drain {
        if drain.grace_period_seconds.is_some_and(|g| g < 0) {
            return Err("drain.gracePeriodSeconds must not be negative".into());
        }
        if drain.timeout_seconds.is_some_and(|t| t <= 0) {
            return Err("drain.timeoutSeconds must be positive".into());
        }
    }
    if spec.ttl_seconds_after_finished.is_some_and(|t| t < 0) {
        return Err("ttlSecondsAfterFinished must not be negative".into());
    }
    let taints = spec.taints.iter().flat_map(|t| {
        t.add
            .iter()
            .map(|a| Some(&a.effect))
            .chain(t.remove.iter().map(|r| r.effect.as_ref()))
    });
    for effect in taints.flatten() {
        if let TaintEffect::Unknown(other) = effect {
            return Err(format!(
                "unknown taint effect {other:?} (use NoSchedule, PreferNoSchedule or NoExecute)"
            ));
        }
    }
    Ok(())
}

/// Whether a drain that started at `start` ran out of time.
pub fn timed_out(start: Option<Timestamp>, timeout_seconds: Option<i64>, now: Timestamp) -> bool {
    match (start, timeout_seconds) {
        (Some(start), Some(timeout)) => elapsed(start, now) >= seconds(timeout),
        _ => false,
    }
}

/// Time left until a finished operation is deleted; `Some(ZERO)` when it is due.
pub fn ttl_left(
    completion: Option<Timestamp>,
    ttl_seconds: Option<i64>,
    now: Timestamp,
) -> Option<Duration> {
    let (completion, ttl) = (completion?, ttl_seconds?);
    Some(seconds(ttl).saturating_sub(elapsed(completion, now)))
}

pub fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO)
}

fn seconds(value: i64) -> Duration {
    Duration::from_secs(u64::try_from(value).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Option<Timestamp> {
        Timestamp::from_second(1_700_000_000 + seconds).ok()
    }

    fn sib(name: &str, created: i64) -> Sibling {
        Sibling {
            name: name.into(),
            created: at(created),
            ..Sibling::default()
        }
    }

    #[test]
    fn oldest_unfinished_operation_goes_first() {
        let older = sib("a", 0);
        let same_time = sib("b", 10);
        let finished = Sibling {
            finished: true,
            ..sib("c", 0)
        };
        let deleting = Sibling {
            deleting: true,
            ..sib("d", 0)
        };
        let newer = sib("z", 20);
        let cases: Vec<(Vec<Sibling>, Option<&str>)> = vec![
            (vec![], None),
            (vec![older.clone()], Some("a")),
            (vec![same_time.clone()], Some("b")), // same second: name decides ("b" < "m")
            (vec![finished, deleting], None),
            (vec![newer], None),
            (vec![same_time, older], Some("a")),
        ];
        for (siblings, expected) in cases {
            let got = waits_for("m", at(10), &siblings).map(|s| s.name.as_str());
            assert_eq!(got, expected, "{siblings:?}");
        }
    }

    #[test]
    fn prior_state_and_release() {
        let holder = Sibling {
            cordons: true,
            ..sib("a", 0)
        };
        let leaving = Sibling {
            deleting: true,
            ..holder.clone()
        };
        // Cordoned by someone else vs. by one of our operations.
        assert!(prior_unschedulable(true, false));
        assert!(!prior_unschedulable(true, true));
        assert!(!prior_unschedulable(false, false));
        // The last live holder releases.
        assert!(release_cordon_on_delete(true, &[]));
        assert!(!release_cordon_on_delete(false, &[]));
        assert!(!release_cordon_on_delete(true, &[holder]));
        assert!(release_cordon_on_delete(true, &[leaving]));
    }

    #[test]
    fn validation_messages() {
        let spec = |json: serde_json::Value| -> NodeOperationSpec {
            serde_json::from_value(json).expect("spec")
        };
        let cases = [
            (serde_json::json!({"nodeName": "n", "cordon": true}), None),
            (serde_json::json!({"nodeName": "n"}), Some("nothing to do")),
            (
                serde_json::json!({"nodeName": "", "cordon": true}),
                Some("empty"),
            ),
            (
                serde_json::json!({"nodeName": "n", "drain": {"gracePeriodSeconds": -1}}),
                Some("negative"),
            ),
            (
                serde_json::json!({"nodeName": "n", "taints": {"add": [{"key": "k", "effect": "Sometimes"}]}}),
                Some("unknown taint effect"),
            ),
        ];
        for (json, expected) in cases {
            let result = validate(&spec(json.clone()));
            match expected {
                None => assert!(result.is_ok(), "{json}: {result:?}"),
                Some(text) => assert!(
                    result.as_ref().is_err_and(|m| m.contains(text)),
                    "{json}: {result:?}"
                ),
            }
        }
    }

    #[test]
    fn timeouts_and_ttl() {
        let now = at(100).unwrap_or_default();
        assert!(timed_out(at(0), Some(100), now));
        assert!(!timed_out(at(1), Some(100), now));
        assert!(!timed_out(at(0), None, now));
        assert!(!timed_out(None, Some(1), now));
        assert_eq!(
            ttl_left(at(90), Some(30), now),
            Some(Duration::from_secs(20))
        );
        assert_eq!(ttl_left(at(0), Some(30), now), Some(Duration::ZERO));
        assert_eq!(ttl_left(None, Some(30), now), None);
        assert_eq!(ttl_left(at(0), None, now), None);
    }
}
