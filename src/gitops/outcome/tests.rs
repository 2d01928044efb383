use super::*;
use crate::gitops::plan::{Managed, Owned};

fn t(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + seconds).unwrap_or_default()
}

const MIN: Duration = Duration::from_secs(60);

fn condition<'a>(status: &'a GitSyncStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// (Ready status and reason, Stalled status) of a status.
fn summary(status: &GitSyncStatus) -> (Option<(&str, &str)>, Option<&str>) {
    (
        condition(status, "Ready").map(|c| (c.status.as_str(), c.reason.as_str())),
        condition(status, "Stalled").map(|c| c.status.as_str()),
    )
}

#[test]
fn fetch_is_due_on_first_pass_request_spec_change_or_interval() {
    let last = |generation, since, handled| LastFetch {
        generation: Some(generation),
        since: Duration::from_secs(since),
        handled_request: handled,
    };
    let cases = [
        ("first pass", None, 1, None, true),
        (
            "within the interval",
            Some(last(1, 10, None)),
            1,
            None,
            false,
        ),
        ("interval passed", Some(last(1, 60, None)), 1, None, true),
        ("spec changed", Some(last(1, 10, None)), 2, None, true),
        (
            "new sync request",
            Some(last(1, 10, None)),
            1,
            Some("t1"),
            true,
        ),
        (
            "request already handled",
            Some(last(1, 10, Some("t1"))),
            1,
            Some("t1"),
            false,
        ),
        (
            "another request",
            Some(last(1, 10, Some("t1"))),
            1,
            Some("t2"),
            true,
        ),
    ];
    for (name, last, generation, request, expected) in cases {
        assert_eq!(
            fetch_due(last, Some(generation), request, MIN),
            expected,
            "{name}"
        );
    }
}

#[test]
fn requeue_is_what_is_left_of_the_interval_and_at_least_a_second() {
    let cases = [(0, 60), (20, 40), (59, 1), (60, 1), (600, 1)];
    for (since, expected) in cases {
        assert_eq!(
            requeue_after(MIN, Duration::from_secs(since)),
            Duration::from_secs(expected),
            "{since}"
        );
    }
}

fn plan() -> Plan {
    Plan {
        managed: vec![Managed {
            node: "n1".into(),
            owned: Owned {
                labels: ["tier".to_string()].into(),
                taints: ["gpu:NoSchedule".to_string()].into(),
            },
        }],
        unmatched: vec!["edge".into()],
        ..Plan::default()
    }
}

#[test]
fn applied_status_and_conditions() {
    let rejection = Rejection {
        commit: "c2".into(),
        file: "a.yaml".into(),
        reason: "bad".into(),
    };
    struct Case {
        name: &'static str,
        before: GitSyncStatus,
        fetch_error: Option<&'static str>,
        // (newly applied, Ready (status, reason), Stalled, rejection kept)
        expected: (
            bool,
            (&'static str, &'static str),
            Option<&'static str>,
            bool,
        ),
    }
    let cases = [
        Case {
            name: "first apply",
            before: GitSyncStatus::default(),
            fetch_error: None,
            expected: (true, ("True", "Synced"), None, false),
        },
        Case {
            name: "same commit again",
            before: GitSyncStatus {
                last_applied_commit: Some("c1".into()),
                ..GitSyncStatus::default()
            },
            fetch_error: None,
            expected: (false, ("True", "Synced"), None, false),
        },
        Case {
            name: "the fetch failed; the commit in force still applies",
            before: GitSyncStatus::default(),
            fetch_error: Some("timed out"),
            expected: (true, ("False", "FetchFailed"), None, false),
        },
        Case {
            name: "a newer commit was rejected",
            before: GitSyncStatus {
                last_fetched_commit: Some("c2".into()),
                rejected: Some(rejection.clone()),
                ..GitSyncStatus::default()
            },
            fetch_error: None,
            expected: (true, ("False", "CommitRejected"), Some("True"), true),
        },
        Case {
            name: "the fetched commit applies: the old rejection goes",
            before: GitSyncStatus {
                last_fetched_commit: Some("c1".into()),
                rejected: Some(rejection.clone()),
                ..GitSyncStatus::default()
            },
            fetch_error: None,
            expected: (true, ("True", "Synced"), None, false),
        },
    ];
    for case in cases {
        let mut status = case.before;
        let newly = applied(&mut status, "c1", &plan(), case.fetch_error, t(0));
        let (expected_new, ready, stalled, kept) = case.expected;
        let name = case.name;
        assert_eq!(newly, expected_new, "{name}");
        assert_eq!(summary(&status), (Some(ready), stalled), "{name}");
        assert_eq!(status.rejected.is_some(), kept, "{name}");
        assert_eq!(status.last_applied_commit.as_deref(), Some("c1"), "{name}");
        assert_eq!(status.unmatched, ["edge"], "{name}");
        assert_eq!(status.inventory.len(), 1, "{name}");
        assert_eq!(status.inventory[0].taints, ["gpu:NoSchedule"], "{name}");
        let reconciling = condition(&status, "Reconciling").map(|c| c.reason.as_str());
        assert_eq!(reconciling, Some("Idle"), "{name}");
    }
}

#[test]
fn a_rejection_is_recorded_once_and_cut() {
    let mut status = GitSyncStatus::default();
    let first = rejected(&mut status, "c2", "a.yaml", "bad field", t(0));
    assert_eq!(first.as_deref(), Some("bad field"));
    assert_eq!(
        summary(&status),
        (Some(("False", "CommitRejected")), Some("True"))
    );
    // The same rejection again: nothing new to report.
    assert_eq!(
        rejected(&mut status, "c2", "a.yaml", "bad field", t(5)),
        None
    );
    // Another commit is a new rejection.
    assert!(rejected(&mut status, "c3", "", "bad field", t(5)).is_some());
    let long = "é".repeat(MAX_REASON);
    let cut = rejected(&mut status, "c4", "", &long, t(6)).unwrap_or_default();
    assert!(
        cut.len() <= MAX_REASON + 4 && cut.ends_with(" ..."),
        "{}",
        cut.len()
    );
}

#[test]
fn nothing_in_force_reports_a_failed_fetch_only() {
    let mut status = GitSyncStatus::default();
    nothing_in_force(&mut status, None, t(0));
    assert!(status.conditions.is_empty());
    nothing_in_force(&mut status, Some("connection refused"), t(0));
    assert_eq!(summary(&status), (Some(("False", "FetchFailed")), None));
}

#[test]
fn a_condition_moves_its_transition_time_only_when_its_status_changes() {
    let mut status = GitSyncStatus::default();
    set_condition(&mut status, "Ready", false, "FetchFailed", "a", t(0));
    set_condition(&mut status, "Ready", false, "CommitRejected", "b", t(10));
    let at = |s: &GitSyncStatus| condition(s, "Ready").and_then(|c| c.last_transition_time.clone());
    assert_eq!(at(&status), Some(Time(t(0))));
    set_condition(&mut status, "Ready", true, "Synced", "c", t(20));
    assert_eq!(at(&status), Some(Time(t(20))));
    assert_eq!(status.conditions.len(), 1);
    remove_condition(&mut status, "Ready");
    assert!(status.conditions.is_empty());
}

#[test]
fn applied_note_counts_nodes_and_objects() {
    let note = applied_note("0123456789abcdef", 5, 2, 1);
    assert_eq!(
        note,
        "commit 0123456789ab: 3 node(s) and 2 object(s) changed, 1 unmatched NodeConfig(s)"
    );
}
