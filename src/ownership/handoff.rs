//! Hand-off of one object between the two sides when its owner changes.
//!
//! The side that acts records itself on the object ([`ACTED_BY_ANNOTATION`]) with optimistic
//! concurrency (the write carries the `resourceVersion` it decided on), so when the flag moves
//! an object while an operation is in flight exactly one side finishes it:
//! - the legacy API folds its record into the same guarded write as the intent (for example
//!   `spec.state` and the annotation in one patch) and marks the operation in flight
//!   ([`LEGACY_OPERATION_ANNOTATION`]) until its direct Kubernetes work is done;
//! - the controller does not take over an object while a legacy operation is in flight (up to
//!   [`IN_FLIGHT_TIMEOUT`], after which the operation counts as abandoned), and claims it with a
//!   guarded write before acting; a conflict means someone else moved first: decide again.
//!
//! An object no side has recorded was never touched by the legacy handlers (they always
//! record), so the controller acts on it without a claim.
//!
//! The controller also finishes what it accepted: an object recorded as the controller's whose
//! operation has not settled yet (for a session: the desired state not reached at the current
//! generation) is still the controller's after the flag moves it to legacy, until it settles
//! or the legacy side claims it for a new request. Otherwise intent written by the API's
//! controller handler just before a flip would be left to nobody, since the legacy side acts
//! only on requests. The legacy side, for its part, waits for that operation to settle
//! ([`Handoff::WaitSettled`]) before it claims the object: acting at once would race the
//! controller's last writes. How long it waits before counting the operation as stuck is the
//! caller's patience (a request's, a monitor pass's), since the record carries no start time
//! for the controller's operation.
//!
//! Callers do not interpret a [`Handoff`] themselves: [`super::gate()`] turns it, with shadow
//! mode, into what one actor does.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::{Owner, Side};

/// Which side last acted on the object: `legacy` or `controller`.
pub const ACTED_BY_ANNOTATION: &str = "stream.space/acted-by";
/// A legacy operation in progress: `<operation> <RFC 3339 start>`; removed when it completes.
pub const LEGACY_OPERATION_ANNOTATION: &str = "stream.space/legacy-operation";
/// A legacy operation older than this is treated as abandoned (the API replica died).
pub const IN_FLIGHT_TIMEOUT: Duration = Duration::from_secs(60);

/// What one side should do about one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handoff {
    /// This side owns it and is recorded (or nobody is): act.
    Act,
    /// This side owns it but the other side is recorded: write the record (guarded by
    /// `resourceVersion`), then act.
    Claim,
    /// This side owns it, but the other side's operation is still in flight: look again then.
    WaitUntil(Timestamp),
    /// The legacy side owns it, but the controller is finishing an operation it accepted
    /// before the flag moved the object: look again once it settles.
    WaitSettled,
    /// The other side owns it.
    Leave,
}

/// The record on an object, read from its annotations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub acted_by: Option<Side>,
    /// Start of a legacy operation in flight.
    pub legacy_operation_started: Option<Timestamp>,
    /// The controller has an operation on this object that has not settled (set by the
    /// caller, which knows what settled means for its kind).
    pub controller_in_flight: bool,
}

impl Record {
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Record {
        Record {
            acted_by: annotations
                .get(ACTED_BY_ANNOTATION)
                .and_then(|v| Side::parse(v)),
            legacy_operation_started: annotations
                .get(LEGACY_OPERATION_ANNOTATION)
                .and_then(|v| v.rsplit(' ').next())
                .and_then(|v| v.parse::<Timestamp>().ok()),
            controller_in_flight: false,
        }
    }

    /// The record with the controller's operation marked as still in flight or not.
    pub fn with_controller_in_flight(self, in_flight: bool) -> Record {
        Record {
            controller_in_flight: in_flight,
            ..self
        }
    }
}

/// The value of [`LEGACY_OPERATION_ANNOTATION`] for `operation` started at `now`.
pub fn legacy_operation_value(operation: &str, now: Timestamp) -> String {
    format!("{operation} {now}")
}

/// The decision for `side`, given who the flag says owns the object and its record.
pub fn decide(side: Side, owner: Owner, record: &Record, now: Timestamp) -> Handoff {
    let controller_finishing =
        record.acted_by == Some(Side::Controller) && record.controller_in_flight;
    if owner.acting_side() != side {
        return if side == Side::Controller && controller_finishing {
            Handoff::Act
        } else {
            Handoff::Leave
        };
    }
    match (side, record.acted_by) {
        (_, Some(recorded)) if recorded == side => Handoff::Act,
        (Side::Controller, None) => Handoff::Act,
        (Side::Controller, Some(Side::Legacy)) => match legacy_in_flight_until(record, now) {
            Some(deadline) => Handoff::WaitUntil(deadline),
            None => Handoff::Claim,
        },
        (Side::Legacy, _) if controller_finishing => Handoff::WaitSettled,
        (Side::Legacy, _) | (Side::Controller, Some(Side::Controller)) => Handoff::Claim,
    }
}

/// When the legacy operation recorded on the object stops counting as in flight, if it still
/// does at `now`.
pub fn legacy_in_flight_until(record: &Record, now: Timestamp) -> Option<Timestamp> {
    let started = record.legacy_operation_started?;
    let deadline = started
        .checked_add(IN_FLIGHT_TIMEOUT)
        .unwrap_or(Timestamp::MAX);
    (now < deadline).then_some(deadline)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn record(acted_by: Option<Side>, started: Option<i64>) -> Record {
        Record {
            acted_by,
            legacy_operation_started: started.map(ts),
            controller_in_flight: false,
        }
    }

    #[test]
    fn the_controller_finishes_what_it_accepted() {
        let now = ts(1_000);
        let ours = record(Some(Side::Controller), None).with_controller_in_flight(true);
        assert_eq!(
            decide(Side::Controller, Owner::Legacy, &ours, now),
            Handoff::Act
        );
        assert_eq!(
            decide(Side::Controller, Owner::Shadow, &ours, now),
            Handoff::Act
        );
        // Settled: the flag decides again.
        let settled = ours.clone().with_controller_in_flight(false);
        assert_eq!(
            decide(Side::Controller, Owner::Legacy, &settled, now),
            Handoff::Leave
        );
        // Once the legacy side claimed it for a request, it is theirs.
        let claimed = record(Some(Side::Legacy), None).with_controller_in_flight(true);
        assert_eq!(
            decide(Side::Controller, Owner::Legacy, &claimed, now),
            Handoff::Leave
        );
        // The legacy side waits for it to settle, then claims with a guarded write.
        assert_eq!(
            decide(Side::Legacy, Owner::Legacy, &ours, now),
            Handoff::WaitSettled
        );
        assert_eq!(
            decide(Side::Legacy, Owner::Shadow, &ours, now),
            Handoff::WaitSettled
        );
        assert_eq!(
            decide(Side::Legacy, Owner::Legacy, &settled, now),
            Handoff::Claim
        );
        // A legacy record is legacy's own, whatever the controller's state says.
        assert_eq!(
            decide(Side::Legacy, Owner::Legacy, &claimed, now),
            Handoff::Act
        );
    }

    #[test]
    fn table() {
        use Handoff::*;
        let now = ts(1_000);
        let cases = [
            // side, owner, acted_by, in flight since, expected
            (Side::Controller, Owner::Controller, None, None, Act),
            (
                Side::Controller,
                Owner::Controller,
                Some(Side::Controller),
                None,
                Act,
            ),
            (
                Side::Controller,
                Owner::Controller,
                Some(Side::Legacy),
                None,
                Claim,
            ),
            (
                Side::Controller,
                Owner::Controller,
                Some(Side::Legacy),
                Some(990),
                WaitUntil(ts(1_050)),
            ),
            (
                Side::Controller,
                Owner::Controller,
                Some(Side::Legacy),
                Some(940),
                Claim,
            ),
            (Side::Controller, Owner::Legacy, None, None, Leave),
            (
                Side::Controller,
                Owner::Shadow,
                Some(Side::Controller),
                None,
                Leave,
            ),
            (Side::Legacy, Owner::Legacy, None, None, Claim),
            (Side::Legacy, Owner::Shadow, Some(Side::Legacy), None, Act),
            (
                Side::Legacy,
                Owner::Legacy,
                Some(Side::Controller),
                None,
                Claim,
            ),
            (
                Side::Legacy,
                Owner::Controller,
                Some(Side::Legacy),
                None,
                Leave,
            ),
        ];
        for (side, owner, acted_by, started, expected) in cases {
            assert_eq!(
                decide(side, owner, &record(acted_by, started), now),
                expected,
                "{side:?} {owner:?} {acted_by:?} {started:?}"
            );
        }
    }

    #[test]
    fn records_read_from_annotations() {
        let now = ts(1_700_000_000);
        let annotations = BTreeMap::from([
            (ACTED_BY_ANNOTATION.to_string(), "legacy".to_string()),
            (
                LEGACY_OPERATION_ANNOTATION.to_string(),
                legacy_operation_value("hibernate", now),
            ),
        ]);
        assert_eq!(
            Record::from_annotations(&annotations),
            record(Some(Side::Legacy), Some(1_700_000_000))
        );
        let odd = BTreeMap::from([
            (ACTED_BY_ANNOTATION.to_string(), "someone".to_string()),
            (LEGACY_OPERATION_ANNOTATION.to_string(), "x".to_string()),
        ]);
        assert_eq!(Record::from_annotations(&odd), Record::default());
    }
}
