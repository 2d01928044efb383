//! The idle and maximum-duration deadlines of one Session, as a pure function of the stored
//! fields, the settings and the clock (passed in, never read here).
//!
//! ```text
//! wake-requested mark   spec.state   clocks                             -> decision
//! present, == generation hibernated  any                                -> Wake
//! present, otherwise    any          any                                -> DropWakeRequest
//! absent                running      lastActivity or startedAt missing  -> Initialise
//! absent                running      now >= startedAt + maxDuration     -> Stop(MaxDurationReached)
//! absent                running      now >= lastActivity + idle + grace -> Stop(Idle)
//! absent                running      otherwise                          -> RequeueAt(earlier deadline)
//! absent                stopped      startedAt stored                   -> ClearStartedAt
//! absent                otherwise    -                                  -> Nothing
//! ```
//!
//! A timeout of zero (`0s`) disables that timer. Every deadline is derived from stored fields
//! only, so a restarted controller computes the same deadlines.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::crd::SessionState;
use crate::crd::session::{DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_SESSION_DURATION};

/// Default extra time after `idleTimeout` before hibernating: it absorbs the heartbeat flush
/// interval of the API and clock skew between API replicas and the controller.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(300);

/// What `maxSessionDuration` does to a session that reaches it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MaxDurationAction {
    /// Set `spec.state=hibernated` (the home volume and the session object stay).
    #[default]
    Hibernate,
    /// Set `spec.state=terminated` (the Deployment is deleted; the home volume stays).
    Terminate,
}

impl MaxDurationAction {
    pub fn state(self) -> SessionState {
        match self {
            MaxDurationAction::Hibernate => SessionState::Hibernated,
            MaxDurationAction::Terminate => SessionState::Terminated,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdleSettings {
    /// Added to `idleTimeout` before a session counts as idle.
    pub grace: Duration,
    pub max_duration_action: MaxDurationAction,
}

impl Default for IdleSettings {
    fn default() -> Self {
        IdleSettings {
            grace: DEFAULT_GRACE,
            max_duration_action: MaxDurationAction::default(),
        }
    }
}

/// Why the controller stopped a session; also the Event and condition reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Idle,
    MaxDurationReached,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Idle => "Idle",
            StopReason::MaxDurationReached => "MaxDurationReached",
        }
    }
}

/// The stored fields the deadlines depend on.
#[derive(Clone, Debug)]
pub struct Clocks<'a> {
    pub desired: &'a SessionState,
    pub idle_timeout: &'a str,
    pub max_session_duration: &'a str,
    pub last_activity: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub generation: Option<i64>,
    /// Value of the wake-requested annotation: the generation the waker saw.
    pub wake_requested: Option<&'a str>,
}

impl<'a> Clocks<'a> {
    /// The clocks of `session`, whose desired state (`spec.state` with its default) is
    /// `desired`.
    pub fn of(session: &'a crate::crd::Session, desired: &'a SessionState) -> Clocks<'a> {
        let status = session.status.as_ref();
        Clocks {
            desired,
            idle_timeout: &session.spec.idle_timeout,
            max_session_duration: &session.spec.max_session_duration,
            last_activity: status.and_then(|s| s.last_activity.as_ref()).map(|t| t.0),
            started_at: status.and_then(|s| s.started_at.as_ref()).map(|t| t.0),
            generation: session.metadata.generation,
            wake_requested: session
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(super::WAKE_ANNOTATION))
                .map(String::as_str),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do and nothing to wait for.
    Nothing,
    /// A wake request that still matches the session: set it running.
    Wake,
    /// A wake request made stale by a later change of the spec: remove the mark.
    DropWakeRequest,
    /// Set the missing clocks to now (running sessions only).
    Initialise {
        last_activity: bool,
        started_at: bool,
    },
    /// The session is stopped; its run no longer has a start time.
    ClearStartedAt,
    /// Look again at this instant (the earlier of the two deadlines).
    RequeueAt(Timestamp),
    /// Write `spec.state = state`.
    Stop {
        state: SessionState,
        reason: StopReason,
    },
}

/// Decides what the idle reconciler does with one session at `now`.
pub fn decide(clocks: &Clocks<'_>, now: Timestamp, settings: &IdleSettings) -> Decision {
    if let Some(requested) = clocks.wake_requested {
        let matches = requested.trim().parse::<i64>().ok() == clocks.generation;
        return if matches && *clocks.desired == SessionState::Hibernated {
            Decision::Wake
        } else {
            Decision::DropWakeRequest
        };
    }
    match clocks.desired {
        SessionState::Running => running(clocks, now, settings),
        SessionState::Hibernated | SessionState::Terminated if clocks.started_at.is_some() => {
            Decision::ClearStartedAt
        }
        SessionState::Hibernated | SessionState::Terminated | SessionState::Unknown(_) => {
            Decision::Nothing
        }
    }
}

fn running(clocks: &Clocks<'_>, now: Timestamp, settings: &IdleSettings) -> Decision {
    let (Some(last_activity), Some(started_at)) = (clocks.last_activity, clocks.started_at) else {
        return Decision::Initialise {
            last_activity: clocks.last_activity.is_none(),
            started_at: clocks.started_at.is_none(),
        };
    };
    let (max_deadline, idle_deadline) = deadlines(clocks, last_activity, started_at, settings);
    if let Some(deadline) = max_deadline
        && now >= deadline
    {
        return Decision::Stop {
            state: settings.max_duration_action.state(),
            reason: StopReason::MaxDurationReached,
        };
    }
    if let Some(deadline) = idle_deadline
        && now >= deadline
    {
        return Decision::Stop {
            state: SessionState::Hibernated,
            reason: StopReason::Idle,
        };
    }
    match (max_deadline, idle_deadline) {
        (Some(a), Some(b)) => Decision::RequeueAt(a.min(b)),
        (Some(a), None) | (None, Some(a)) => Decision::RequeueAt(a),
        (None, None) => Decision::Nothing,
    }
}

/// The deadline of `reason` for a running session, when its clocks are set and its timer is
/// enabled: when it stops (or stopped) the session.
pub fn stop_deadline(
    clocks: &Clocks<'_>,
    settings: &IdleSettings,
    reason: StopReason,
) -> Option<Timestamp> {
    let (max, idle) = deadlines(clocks, clocks.last_activity?, clocks.started_at?, settings);
    match reason {
        StopReason::MaxDurationReached => max,
        StopReason::Idle => idle,
    }
}

/// (maxSessionDuration deadline, idle deadline); `None` where the timer is disabled.
fn deadlines(
    clocks: &Clocks<'_>,
    last_activity: Timestamp,
    started_at: Timestamp,
    settings: &IdleSettings,
) -> (Option<Timestamp>, Option<Timestamp>) {
    let idle_timeout = timeout_or(clocks.idle_timeout, DEFAULT_IDLE_TIMEOUT);
    let max_duration = timeout_or(clocks.max_session_duration, DEFAULT_MAX_SESSION_DURATION);
    (
        max_duration.map(|max| add(started_at, max)),
        idle_timeout.map(|idle| add(add(last_activity, idle), settings.grace)),
    )
}

/// The timeout in `text`, `None` when it is zero (disabled); unparsable text falls back to
/// `default` (the CRD schema normally rejects it first).
fn timeout_or(text: &str, default: &str) -> Option<Duration> {
    let duration = parse_duration(text)
        .or_else(|| parse_duration(default))
        .unwrap_or_default();
    (!duration.is_zero()).then_some(duration)
}

fn add(at: Timestamp, duration: Duration) -> Timestamp {
    let signed = SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX);
    at.checked_add(signed).unwrap_or(Timestamp::MAX)
}

/// Parses `<digits><s|m|h>` (the CRD's pattern), plus `ms` for test settings.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits.parse().ok()?;
    let seconds = match unit {
        "ms" => return Some(Duration::from_millis(value)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return None,
    };
    value.checked_mul(seconds).map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(T0 + seconds).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    struct Row {
        name: &'static str,
        desired: SessionState,
        idle: &'static str,
        max: &'static str,
        last_activity: Option<i64>,
        started_at: Option<i64>,
        wake: Option<&'static str>,
        now: i64,
        action: MaxDurationAction,
        expected: Decision,
    }

    fn row(name: &'static str, now: i64, expected: Decision) -> Row {
        Row {
            name,
            desired: SessionState::Running,
            idle: "30s",
            max: "1h",
            last_activity: Some(0),
            started_at: Some(0),
            wake: None,
            now,
            action: MaxDurationAction::Hibernate,
            expected,
        }
    }

    fn stop(reason: StopReason) -> Decision {
        Decision::Stop {
            state: SessionState::Hibernated,
            reason,
        }
    }

    #[test]
    fn decisions() {
        let settings = |action| IdleSettings {
            grace: Duration::from_secs(5),
            max_duration_action: action,
        };
        let rows = vec![
            row(
                "active session waits for idle deadline",
                10,
                Decision::RequeueAt(at(35)),
            ),
            row(
                "idle timeout alone is not enough",
                31,
                Decision::RequeueAt(at(35)),
            ),
            row(
                "idle at timeout plus grace exactly",
                35,
                stop(StopReason::Idle),
            ),
            row("idle long after", 500, stop(StopReason::Idle)),
            Row {
                last_activity: Some(3590),
                ..row(
                    "max duration wins over activity",
                    3600,
                    stop(StopReason::MaxDurationReached),
                )
            },
            Row {
                last_activity: Some(3580),
                ..row(
                    "max duration is the earlier deadline",
                    3590,
                    Decision::RequeueAt(at(3600)),
                )
            },
            Row {
                last_activity: Some(3590),
                action: MaxDurationAction::Terminate,
                ..row(
                    "max duration can terminate",
                    3600,
                    Decision::Stop {
                        state: SessionState::Terminated,
                        reason: StopReason::MaxDurationReached,
                    },
                )
            },
            Row {
                idle: "0s",
                ..row(
                    "zero idle timeout disables idling",
                    1000,
                    Decision::RequeueAt(at(3600)),
                )
            },
            Row {
                idle: "0s",
                max: "0h",
                ..row("both disabled", 1000, Decision::Nothing)
            },
            Row {
                idle: "soon",
                ..row(
                    "unparsable timeout uses the 30m default",
                    100,
                    Decision::RequeueAt(at(1805)),
                )
            },
            Row {
                last_activity: None,
                ..row(
                    "missing lastActivity is initialised",
                    10,
                    Decision::Initialise {
                        last_activity: true,
                        started_at: false,
                    },
                )
            },
            Row {
                started_at: None,
                last_activity: None,
                ..row(
                    "both clocks missing",
                    10,
                    Decision::Initialise {
                        last_activity: true,
                        started_at: true,
                    },
                )
            },
            Row {
                desired: SessionState::Hibernated,
                ..row(
                    "hibernated session forgets its start",
                    10,
                    Decision::ClearStartedAt,
                )
            },
            Row {
                desired: SessionState::Terminated,
                started_at: None,
                ..row("terminated session without start", 10, Decision::Nothing)
            },
            Row {
                desired: SessionState::Unknown("paused".into()),
                started_at: None,
                ..row("unknown state is left alone", 10, Decision::Nothing)
            },
            Row {
                desired: SessionState::Hibernated,
                wake: Some("4"),
                ..row("matching wake request wakes", 10, Decision::Wake)
            },
            Row {
                desired: SessionState::Hibernated,
                wake: Some("3"),
                ..row(
                    "wake request older than the spec is dropped",
                    10,
                    Decision::DropWakeRequest,
                )
            },
            Row {
                wake: Some("4"),
                ..row(
                    "wake request of a running session is dropped",
                    10,
                    Decision::DropWakeRequest,
                )
            },
            Row {
                desired: SessionState::Hibernated,
                wake: Some("yes"),
                ..row(
                    "malformed wake request is dropped",
                    10,
                    Decision::DropWakeRequest,
                )
            },
        ];
        for r in rows {
            let clocks = Clocks {
                desired: &r.desired,
                idle_timeout: r.idle,
                max_session_duration: r.max,
                last_activity: r.last_activity.map(at),
                started_at: r.started_at.map(at),
                generation: Some(4),
                wake_requested: r.wake,
            };
            assert_eq!(
                decide(&clocks, at(r.now), &settings(r.action)),
                r.expected,
                "{}",
                r.name
            );
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3s"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("8h"), Some(Duration::from_secs(28_800)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        for bad in ["", "s", "5", "5d", "-5s", "1.5h", "99999999999999999999h"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }
}
