//! The one ownership gate every actor passes before it touches an object: the session, idle and
//! node-operation reconcilers on the controller side, the API's legacy handlers and monitors on
//! the other.
//!
//! Input: who the flag says owns the object ([`Owner`], from [`super::owner`]), the object's
//! hand-off [`Record`], the asking [`Side`] and the clock. Output: a [`Gate`]. The hand-off rules
//! (claims, operations in flight on either side) are [`handoff::decide`]'s; the gate adds shadow
//! mode, so no caller interprets a [`Handoff`] or [`Owner::Shadow`] itself.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;

use super::handoff::{self, Handoff, Record};
use super::index::FlagIndex;
use super::shadow::ShadowReports;
use super::{Owner, ResourceType, Side};
use crate::metrics::OwnershipMetrics;

/// Added to a wait so the next look comes after the other side's deadline, not a hair before.
pub const LOOK_AGAIN_SLACK: Duration = Duration::from_millis(50);

/// What one actor does about one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Act: this side owns the object and is recorded (or nobody is).
    Act,
    /// Act, after first recording that this side took the object over (a write guarded by the
    /// `resourceVersion` decided on; a conflict means decide again). A caller whose first
    /// write already carries the record may treat it as [`Gate::Act`].
    Claim,
    /// Shadow mode (controller side only): compute what would change and report it; write
    /// nothing.
    Shadow,
    /// Do nothing now.
    Skip(Skip),
}

/// Why an actor leaves an object alone, and when to look again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// The other side owns it: look again when the object or its flag changes.
    NotOurs,
    /// An operation of the other side is in flight until this instant: look again then.
    Until(Timestamp),
    /// The controller is finishing an operation it accepted: look again once it settles.
    Settling,
}

impl Gate {
    /// Whether the actor writes: [`Gate::Act`] or [`Gate::Claim`].
    pub fn acts(self) -> bool {
        matches!(self, Gate::Act | Gate::Claim)
    }
}

impl Skip {
    /// How long to wait before looking again, when that is known.
    pub fn wait(self, now: Timestamp) -> Option<Duration> {
        match self {
            Skip::Until(at) => Some(now.duration_until(at).unsigned_abs()),
            Skip::NotOurs | Skip::Settling => None,
        }
    }
}

/// The gate of `side` for an object whose flag names `owner`.
pub fn gate(side: Side, owner: Owner, record: &Record, now: Timestamp) -> Gate {
    match handoff::decide(side, owner, record, now) {
        Handoff::Act => Gate::Act,
        Handoff::Claim => Gate::Claim,
        Handoff::WaitUntil(at) => Gate::Skip(Skip::Until(at)),
        Handoff::WaitSettled => Gate::Skip(Skip::Settling),
        // The cluster is half-way through a legacy operation: compare once it is done.
        Handoff::Leave if side == Side::Controller && owner == Owner::Shadow => {
            match handoff::legacy_in_flight_until(record, now) {
                Some(at) => Gate::Skip(Skip::Until(at)),
                None => Gate::Shadow,
            }
        }
        Handoff::Leave => Gate::Skip(Skip::NotOurs),
    }
}

/// The controller's gate for `namespace/name` of `resource` (cluster-scoped objects: empty
/// namespace): its owner from the flags, the decision counted in the ownership metrics.
pub fn controller_gate(
    flags: &FlagIndex,
    metrics: &OwnershipMetrics,
    resource: ResourceType,
    (namespace, name): (&str, &str),
    record: &Record,
    now: Timestamp,
) -> Gate {
    let owner = flags.owner(resource, namespace, name);
    metrics.decision(resource.as_str(), owner.as_str());
    gate(Side::Controller, owner, record, now)
}

/// A reconciler's next look at an object it skips. An object that is not the controller's any
/// more no longer counts as differing in shadow mode.
pub fn skipped(
    shadow: &ShadowReports,
    (resource, key): (ResourceType, &str),
    skip: Skip,
    now: Timestamp,
) -> Action {
    match skip.wait(now) {
        Some(wait) => Action::requeue(wait + LOOK_AGAIN_SLACK),
        None => {
            if skip == Skip::NotOurs {
                shadow.clear(resource, key);
            }
            Action::await_change()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn record(acted_by: Option<Side>, legacy_since: Option<i64>, in_flight: bool) -> Record {
        Record {
            acted_by,
            legacy_operation_started: legacy_since.map(ts),
            controller_in_flight: in_flight,
        }
    }

    #[test]
    fn table() {
        use Owner::{Controller as C, Legacy as L, Shadow as S};
        use Side::{Controller as SC, Legacy as SL};
        let now = ts(1_000);
        let (act, claim, shadow) = (Gate::Act, Gate::Claim, Gate::Shadow);
        let skip = Gate::Skip(Skip::NotOurs);
        let until = |s| Gate::Skip(Skip::Until(ts(s)));
        let settling = Gate::Skip(Skip::Settling);
        let rows = [
            // (name, side, owner, acted_by, legacy operation since, controller in flight, gate)
            ("ours, unrecorded", SC, C, None, None, false, act),
            ("ours, recorded", SC, C, Some(SC), None, false, act),
            (
                "ours, legacy acted last",
                SC,
                C,
                Some(SL),
                None,
                false,
                claim,
            ),
            (
                "legacy op in flight",
                SC,
                C,
                Some(SL),
                Some(990),
                false,
                until(1_050),
            ),
            (
                "legacy op abandoned",
                SC,
                C,
                Some(SL),
                Some(900),
                false,
                claim,
            ),
            ("legacy owns it", SC, L, None, None, false, skip),
            (
                "legacy owns it, recorded ours",
                SC,
                L,
                Some(SC),
                None,
                false,
                skip,
            ),
            ("controller finishing", SC, L, Some(SC), None, true, act),
            (
                "controller finishing, shadow",
                SC,
                S,
                Some(SC),
                None,
                true,
                act,
            ),
            ("shadow", SC, S, None, None, false, shadow),
            (
                "shadow, legacy recorded",
                SC,
                S,
                Some(SL),
                None,
                false,
                shadow,
            ),
            (
                "shadow, legacy op in flight",
                SC,
                S,
                Some(SL),
                Some(990),
                false,
                until(1_050),
            ),
            (
                "shadow, legacy op abandoned",
                SC,
                S,
                Some(SL),
                Some(900),
                false,
                shadow,
            ),
            ("legacy: not ours", SL, C, Some(SL), None, false, skip),
            ("legacy: unrecorded", SL, L, None, None, false, claim),
            ("legacy: recorded", SL, L, Some(SL), None, false, act),
            (
                "legacy: shadow mode acts",
                SL,
                S,
                Some(SL),
                None,
                false,
                act,
            ),
            (
                "legacy: controller acted last",
                SL,
                L,
                Some(SC),
                None,
                false,
                claim,
            ),
            (
                "legacy: controller finishing",
                SL,
                L,
                Some(SC),
                None,
                true,
                settling,
            ),
            (
                "legacy: shadow, finishing",
                SL,
                S,
                Some(SC),
                None,
                true,
                settling,
            ),
            (
                "legacy: recorded, in flight",
                SL,
                L,
                Some(SL),
                None,
                true,
                act,
            ),
        ];
        for (name, side, owner, acted_by, since, in_flight, expected) in rows {
            let record = record(acted_by, since, in_flight);
            assert_eq!(gate(side, owner, &record, now), expected, "{name}");
        }
    }

    #[test]
    fn skips_say_when_to_look_again() {
        let now = ts(1_000);
        assert_eq!(
            Skip::Until(ts(1_050)).wait(now),
            Some(Duration::from_secs(50))
        );
        assert_eq!(Skip::NotOurs.wait(now), None);
        assert_eq!(Skip::Settling.wait(now), None);
        assert!(Gate::Act.acts() && Gate::Claim.acts());
        assert!(!Gate::Shadow.acts() && !Gate::Skip(Skip::NotOurs).acts());
    }
}
