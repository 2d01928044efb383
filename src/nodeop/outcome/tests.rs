use super::*;
use crate::crd::node_operation::DrainSpec;

fn t(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + seconds).unwrap_or_default()
}

fn base(node: &str) -> NodeOperationSpec {
    NodeOperationSpec {
        node_name: node.into(),
        cordon: false,
        drain: None,
        labels: None,
        taints: None,
        ttl_seconds_after_finished: None,
    }
}

fn spec(timeout: Option<i64>, ttl: Option<i64>) -> NodeOperationSpec {
    NodeOperationSpec {
        drain: Some(DrainSpec {
            timeout_seconds: timeout,
            ..DrainSpec::default()
        }),
        ttl_seconds_after_finished: ttl,
        ..base("n1")
    }
}

fn plan_with(remaining: usize, not_evicted: usize) -> DrainPlan {
    DrainPlan {
        remaining: (0..remaining).map(|i| format!("ns/p{i}")).collect(),
        not_evicted,
        ..DrainPlan::default()
    }
}

fn started(at: i64) -> NodeOperationStatus {
    NodeOperationStatus {
        phase: Some(NodeOperationPhase::Running),
        start_time: Some(Time(t(at))),
        ..NodeOperationStatus::default()
    }
}

fn blocked(pod: &str, budget: Option<&str>) -> BlockedPod {
    BlockedPod {
        pod: pod.into(),
        reason: "eviction refused: budget".into(),
        pod_disruption_budget: budget.map(str::to_string),
    }
}

#[test]
fn drain_counts_survive_passes_and_lost_writes() {
    // (status before, remaining pods, of which not yet evicted) -> (total, evicted, remaining)
    let cases = [
        ((0, 0), 3, 3, (3, 0, 3)),
        // one evicted and still terminating
        ((3, 0), 3, 2, (3, 1, 3)),
        // a crash lost the write of two accepted evictions: derived from what is left
        ((3, 0), 1, 1, (3, 2, 1)),
        // a new pod to evict appeared on the node
        ((3, 3), 1, 1, (4, 3, 1)),
        ((3, 3), 0, 0, (3, 3, 0)),
    ];
    for ((total, evicted), remaining, not_evicted, expected) in cases {
        let mut drain = DrainStatus {
            total,
            evicted,
            ..DrainStatus::default()
        };
        record_remaining(&mut drain, &plan_with(remaining, not_evicted));
        assert_eq!(
            (drain.total, drain.evicted, drain.remaining),
            expected,
            "{total} {evicted} {remaining} {not_evicted}"
        );
    }
}

#[test]
fn condition_keeps_its_transition_time_while_the_reason_stays() {
    let mut status = NodeOperationStatus::default();
    set(
        &mut status,
        NodeOperationPhase::Running,
        "Draining",
        "a".into(),
        t(0),
    );
    set(
        &mut status,
        NodeOperationPhase::Running,
        "Draining",
        "b".into(),
        t(60),
    );
    assert_eq!(status.conditions.len(), 1);
    assert_eq!(status.conditions[0].last_transition_time, Some(Time(t(0))));
    assert_eq!(status.message.as_deref(), Some("b"));
    set(
        &mut status,
        NodeOperationPhase::Succeeded,
        "Drained",
        "c".into(),
        t(60),
    );
    assert_eq!(status.conditions[0].status, "True");
    assert_eq!(status.conditions[0].last_transition_time, Some(Time(t(60))));
}

/// (name, plan, timeout, now) -> (phase, reason) when the pass ends the drain.
type VerdictCase = (
    &'static str,
    DrainPlan,
    Option<i64>,
    i64,
    Option<(NodeOperationPhase, &'static str)>,
);

#[test]
fn drain_verdict_before_evicting() {
    let refused = DrainPlan {
        refused: vec![("ns/bare".into(), "not managed by a controller")],
        remaining: vec!["ns/bare".into()],
        ..DrainPlan::default()
    };
    // (plan, timeout, now) -> Some((phase, reason)) when the pass ends the drain, None to evict
    let cases: [VerdictCase; 6] = [
        (
            "refused pod",
            refused,
            None,
            10,
            Some((NodeOperationPhase::Failed, "PodsRefused")),
        ),
        (
            "nothing left",
            plan_with(0, 0),
            None,
            10,
            Some((NodeOperationPhase::Succeeded, "Drained")),
        ),
        (
            "nothing left beats the timeout",
            plan_with(0, 0),
            Some(5),
            10,
            Some((NodeOperationPhase::Succeeded, "Drained")),
        ),
        (
            "past the timeout",
            plan_with(2, 1),
            Some(5),
            10,
            Some((NodeOperationPhase::Failed, "Timeout")),
        ),
        ("within the timeout", plan_with(2, 1), Some(60), 10, None),
        ("no timeout", plan_with(2, 2), None, 10_000, None),
    ];
    for (name, plan, timeout, now, expected) in cases {
        let got = drain_verdict(
            &spec(timeout, None),
            &DrainSpec {
                timeout_seconds: timeout,
                ..DrainSpec::default()
            },
            started(0),
            &plan,
            t(now),
        );
        match (got, expected) {
            (Verdict::Finished(outcome), Some((phase, reason))) => {
                assert_eq!(outcome.status.phase, Some(phase), "{name}");
                assert_eq!(outcome.status.conditions[0].reason, reason, "{name}");
                assert_eq!(outcome.status.completion_time, Some(Time(t(now))), "{name}");
                assert_eq!(outcome.events.len(), 1, "{name}");
            }
            (Verdict::Evict(status), None) => {
                let drain = status.drain.unwrap_or_default();
                assert_eq!(drain.remaining as usize, plan.remaining.len(), "{name}");
                assert!(status.completion_time.is_none(), "{name}");
            }
            (got, expected) => panic!("{name}: got {got:?}, expected {expected:?}"),
        }
    }
}

#[test]
fn refused_pods_are_listed_as_blocked_and_failed_drains_keep_the_error() {
    let plan = DrainPlan {
        refused: vec![("ns/a".into(), "using emptyDir"), ("ns/b".into(), "bare")],
        ..DrainPlan::default()
    };
    let Verdict::Finished(outcome) = drain_verdict(
        &spec(None, Some(30)),
        &DrainSpec::default(),
        started(0),
        &plan,
        t(1),
    ) else {
        panic!("a refused pod ends the drain");
    };
    let drain = outcome.status.drain.unwrap_or_default();
    let pods: Vec<&str> = drain.blocked.iter().map(|b| b.pod.as_str()).collect();
    assert_eq!(pods, ["ns/a", "ns/b"]);
    let message = outcome.status.last_error.unwrap_or_default();
    assert!(
        message.contains("ns/a is using emptyDir; ns/b is bare"),
        "{message}"
    );
    assert_eq!(
        outcome.requeue,
        Some(Duration::from_secs(30)),
        "the time to live"
    );
    assert_eq!(outcome.events[0].0, EventType::Warning);
}

#[test]
fn drain_progress_after_evicting() {
    let blocked_by = |budget: Option<&str>, event_due| Attempted::Blocked {
        message: "would violate the budget".into(),
        budget: budget.map(str::to_string),
        event_due,
    };
    struct Case {
        name: &'static str,
        blocked_before: Vec<BlockedPod>,
        attempts: Vec<(&'static str, Attempted)>,
        // (evicted, blocked pods, reason, requeue, events, last error set)
        expected: (u32, Vec<&'static str>, &'static str, Duration, usize, bool),
    }
    let cases = [
        Case {
            name: "all accepted",
            blocked_before: vec![],
            attempts: vec![("ns/p0", Attempted::Evicted), ("ns/p1", Attempted::Evicted)],
            expected: (2, vec![], "Draining", DRAIN_POLL, 0, false),
        },
        Case {
            name: "gone pods count nothing",
            blocked_before: vec![],
            attempts: vec![("ns/p0", Attempted::Gone)],
            expected: (0, vec![], "Draining", DRAIN_POLL, 0, false),
        },
        Case {
            name: "a budget blocks one, event due",
            blocked_before: vec![],
            attempts: vec![
                ("ns/p0", Attempted::Evicted),
                ("ns/p1", blocked_by(Some("ns/pdb"), true)),
            ],
            expected: (1, vec!["ns/p1"], "EvictionBlocked", BLOCKED_RETRY, 1, false),
        },
        Case {
            name: "a blocked event is rate limited",
            blocked_before: vec![],
            attempts: vec![("ns/p1", blocked_by(None, false))],
            expected: (0, vec!["ns/p1"], "EvictionBlocked", BLOCKED_RETRY, 0, false),
        },
        Case {
            name: "a block not retried this pass stands while the pod remains",
            blocked_before: vec![blocked("ns/p1", Some("ns/pdb")), blocked("ns/gone", None)],
            attempts: vec![("ns/p0", Attempted::Evicted)],
            expected: (1, vec!["ns/p1"], "EvictionBlocked", BLOCKED_RETRY, 0, false),
        },
        Case {
            name: "a retried block that is accepted clears",
            blocked_before: vec![blocked("ns/p1", Some("ns/pdb"))],
            attempts: vec![("ns/p1", Attempted::Evicted)],
            expected: (1, vec![], "Draining", DRAIN_POLL, 0, false),
        },
        Case {
            name: "a failure is the last error and blocks",
            blocked_before: vec![],
            attempts: vec![("ns/p0", Attempted::Failed("forbidden".into()))],
            expected: (0, vec!["ns/p0"], "EvictionBlocked", BLOCKED_RETRY, 0, true),
        },
    ];
    for case in cases {
        let mut status = started(0);
        status.drain = Some(DrainStatus {
            total: 2,
            remaining: 2,
            blocked: case.blocked_before,
            ..DrainStatus::default()
        });
        status.last_error = Some("from an earlier pass".into());
        let attempts = case
            .attempts
            .into_iter()
            .map(|(pod, result)| Attempt {
                pod: pod.into(),
                result,
            })
            .collect();
        let outcome = drain_progress(&spec(None, None), status, &plan_with(2, 2), attempts, t(5));
        let drain = outcome.status.drain.clone().unwrap_or_default();
        let pods: Vec<&str> = drain.blocked.iter().map(|b| b.pod.as_str()).collect();
        let (evicted, blocked_pods, reason, requeue, events, error) = case.expected;
        let name = case.name;
        assert_eq!(drain.evicted, evicted, "{name}");
        assert_eq!(pods, blocked_pods, "{name}");
        assert_eq!(outcome.status.conditions[0].reason, reason, "{name}");
        assert_eq!(
            outcome.status.phase,
            Some(NodeOperationPhase::Running),
            "{name}"
        );
        assert_eq!(outcome.requeue, Some(requeue), "{name}");
        assert_eq!(outcome.events.len(), events, "{name}");
        assert_eq!(outcome.status.last_error.is_some(), error, "{name}");
    }
}

#[test]
fn progress_message_names_the_first_blocked_pod_and_its_budget() {
    let drain = DrainStatus {
        total: 4,
        evicted: 1,
        remaining: 3,
        blocked: vec![blocked("ns/a", Some("ns/pdb")), blocked("ns/b", None)],
        ..DrainStatus::default()
    };
    let (reason, message, requeue) = progress_message("n1", &drain);
    assert_eq!(reason, "EvictionBlocked");
    assert_eq!(requeue, BLOCKED_RETRY);
    assert!(
        message.starts_with(
            "draining node n1: 1 of 4 pods evicted, 3 remaining; eviction of ns/a blocked by PodDisruptionBudget ns/pdb (2 blocked in all)"
        ),
        "{message}"
    );
}

#[test]
fn describe_lists_what_the_operation_does() {
    let mut drain = spec(None, None);
    drain.labels = Some(crate::crd::node_operation::LabelEdits {
        add: [("a".to_string(), "b".to_string())].into(),
        ..Default::default()
    });
    let cordon = NodeOperationSpec {
        cordon: true,
        ..base("n2")
    };
    assert_eq!(describe(&drain), "drain, labels node n1");
    assert_eq!(describe(&cordon), "cordon node n2");
}

#[test]
fn finish_requeues_for_the_time_to_live_only() {
    for (ttl, requeue) in [(None, None), (Some(0), Some(0)), (Some(90), Some(90))] {
        let outcome = finish(
            &spec(None, ttl),
            started(0),
            true,
            "Drained",
            "done".into(),
            t(1),
        );
        assert_eq!(outcome.requeue, requeue.map(Duration::from_secs), "{ttl:?}");
        assert!(outcome.status.last_error.is_none());
        assert_eq!(
            outcome.events,
            vec![(EventType::Normal, "Drained", "done".to_string())]
        );
    }
}
