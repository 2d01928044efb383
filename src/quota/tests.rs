use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn q(text: &str) -> Quantity {
    Quantity(text.to_string())
}

fn m(text: &str) -> Milli {
    quantity::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn request(cpu: &str, memory: &str, gpu: &str) -> Request {
    Request {
        cpu: m(cpu),
        memory: m(memory),
        gpu: m(gpu),
    }
}

fn usage(sessions: i64, cpu: &str, memory: &str, gpu: &str) -> Usage {
    Usage {
        sessions,
        cpu: m(cpu),
        memory: m(memory),
        gpu: m(gpu),
    }
}

fn policy(name: &str, subject: Subject, limits: PartialLimits) -> Policy {
    Policy {
        name: name.into(),
        subject,
        limits,
    }
}

fn denied(decision: Decision) -> String {
    match decision {
        Decision::Denied { message } => message,
        Decision::Allowed => panic!("expected a denial"),
    }
}

#[test]
fn decisions_table() {
    let limits = Limits {
        max_gpu: 1,
        ..Limits::BUILT_IN
    };
    // (usage, request, expected message or None when allowed)
    let rows: &[(Usage, Request, Option<&str>)] = &[
        (usage(0, "0", "0", "0"), request("1", "2Gi", "0"), None),
        (usage(4, "0", "0", "0"), request("100m", "128Mi", "0"), None),
        (
            usage(5, "0", "0", "0"),
            request("1", "2Gi", "0"),
            Some("session quota exceeded: 5/5 sessions active"),
        ),
        (
            usage(0, "0", "0", "0"),
            request("2500m", "2Gi", "0"),
            Some("CPU quota exceeded: requested 2500m, limit is 2000m per session"),
        ),
        (
            usage(0, "0", "0", "0"),
            request("1", "6Gi", "0"),
            Some("memory quota exceeded: requested 6144Mi, limit is 4096Mi per session"),
        ),
        (
            usage(2, "3", "2Gi", "0"),
            request("2", "2Gi", "0"),
            Some(
                "total CPU quota exceeded: would use 5000m, limit is 4000m (in use 3000m, requested 2000m)",
            ),
        ),
        (
            usage(2, "1", "6Gi", "0"),
            request("1", "4Gi", "0"),
            Some(
                "total memory quota exceeded: would use 10240Mi, limit is 8192Mi (in use 6144Mi, requested 4096Mi)",
            ),
        ),
        (
            usage(1, "1", "1Gi", "1"),
            request("1", "1Gi", "1"),
            Some("GPU quota exceeded: would use 2, limit is 1 (in use 1, requested 1)"),
        ),
        (usage(1, "1", "1Gi", "0"), request("1", "1Gi", "1"), None),
        (
            usage(0, "0", "0", "0"),
            request("50m", "1Gi", "0"),
            Some("invalid resource request: CPU 50m is outside 100m-64000m"),
        ),
        (
            usage(0, "0", "0", "0"),
            request("1", "64Mi", "0"),
            Some("invalid resource request: memory 64Mi is outside 128Mi-524288Mi"),
        ),
        (
            usage(0, "0", "0", "0"),
            request("65", "1Gi", "0"),
            Some("invalid resource request: CPU 65000m is outside 100m-64000m"),
        ),
        // Exactly at every limit is allowed.
        (usage(4, "2", "4Gi", "0"), request("2", "4Gi", "1"), None),
    ];
    for (usage, request, expected) in rows {
        let decision = decide(&limits, usage, request);
        match expected {
            None => assert_eq!(decision, Decision::Allowed, "{usage:?} {request:?}"),
            Some(message) => assert_eq!(denied(decision), *message, "{usage:?} {request:?}"),
        }
    }
}

#[test]
fn user_policy_wins_over_default_and_groups_only_tighten() {
    let default = policy(
        "default",
        Subject::Default,
        PartialLimits {
            max_sessions: Some(3),
            ..PartialLimits::default()
        },
    );
    let alice = policy(
        "alice",
        Subject::User("alice".into()),
        PartialLimits {
            max_sessions: Some(10),
            max_cpu: Some(m("8")),
            ..PartialLimits::default()
        },
    );
    let small = policy(
        "small",
        Subject::Group(vec!["alice".into(), "bob".into()]),
        PartialLimits {
            max_cpu: Some(m("6")),
            max_sessions: Some(20),
            ..PartialLimits::default()
        },
    );
    let policies = [default, alice, small];
    let for_alice = effective_limits("alice", &policies);
    assert_eq!(for_alice.max_sessions, 10);
    assert_eq!(for_alice.max_cpu, m("6"));
    assert_eq!(for_alice.max_memory, Limits::BUILT_IN.max_memory);
    let for_bob = effective_limits("bob", &policies);
    assert_eq!(for_bob.max_sessions, 3);
    assert_eq!(for_bob.max_cpu, m("4"));
    let for_carol = effective_limits("carol", &policies);
    assert_eq!(for_carol.max_sessions, 3);
    assert_eq!(effective_limits("dave", &[]), Limits::BUILT_IN);
}

#[test]
fn competing_policies_of_one_subject_pick_the_smallest_name() {
    let a = policy(
        "a",
        Subject::Default,
        PartialLimits {
            max_sessions: Some(1),
            ..PartialLimits::default()
        },
    );
    let b = policy(
        "b",
        Subject::Default,
        PartialLimits {
            max_sessions: Some(2),
            ..PartialLimits::default()
        },
    );
    assert_eq!(effective_limits("x", [&b, &a]).max_sessions, 1);
    assert_eq!(effective_limits("x", [&a, &b]).max_sessions, 1);
}

#[test]
fn requests_come_from_requests_then_limits_then_flat_then_defaults() {
    let spec = ResourceSpec {
        requests: Some(BTreeMap::from([("cpu".to_string(), q("500m"))])),
        limits: Some(BTreeMap::from([
            ("memory".to_string(), q("1Gi")),
            (GPU_RESOURCE.to_string(), q("1")),
        ])),
        ..ResourceSpec::default()
    };
    assert_eq!(Request::of(Some(&spec)), Ok(request("500m", "1Gi", "1")));
    let flat = ResourceSpec {
        cpu: Some(q("2")),
        ..ResourceSpec::default()
    };
    assert_eq!(Request::of(Some(&flat)), Ok(request("2", "2Gi", "0")));
    assert_eq!(Request::of(None), Ok(request("1", "2Gi", "0")));
    let bad = ResourceSpec {
        memory: Some(q("2GB")),
        ..ResourceSpec::default()
    };
    let error = Request::of(Some(&bad)).expect_err("2GB is not a quantity");
    assert!(
        error.starts_with("invalid resource request: memory"),
        "{error}"
    );
}

#[test]
fn unparsable_policy_limits_are_reported_and_ignored() {
    let limits = QuotaLimits {
        max_cpu: Some(q("lots")),
        max_memory: Some(q("-1Gi")),
        max_sessions: Some(2),
        ..QuotaLimits::default()
    };
    let mut invalid = Vec::new();
    let parsed = PartialLimits::parse(&limits, &mut invalid);
    assert_eq!(parsed.max_cpu, None);
    assert_eq!(parsed.max_memory, None);
    assert_eq!(parsed.max_sessions, Some(2));
    assert_eq!(invalid.len(), 2, "{invalid:?}");
}

#[test]
fn same_request_compares_amounts_not_spelling() {
    let a = ResourceSpec {
        memory: Some(q("1Gi")),
        cpu: Some(q("1")),
        ..ResourceSpec::default()
    };
    let b = ResourceSpec {
        requests: Some(BTreeMap::from([
            ("memory".to_string(), q("1024Mi")),
            ("cpu".to_string(), q("1000m")),
        ])),
        ..ResourceSpec::default()
    };
    assert!(same_request(Some(&a), Some(&b)));
    assert!(!same_request(Some(&a), None));
}

/// Every spelling Kubernetes accepts of an amount of memory in MiB.
fn memory_spellings(mib: i64) -> Vec<String> {
    let bytes = i128::from(mib) * 1024 * 1024;
    vec![
        format!("{mib}Mi"),
        format!("{}Ki", i128::from(mib) * 1024),
        format!("{bytes}"),
        format!("{bytes}e0"),
        format!("{}k", bytes / 1000) + "", // only exact when divisible; filtered below
        format!("{}m", bytes * 1000),
    ]
    .into_iter()
    .filter(|s| {
        quantity::parse(s)
            .map(|v| v == Milli(bytes * 1000))
            .unwrap_or(false)
    })
    .collect()
}

fn cpu_spellings(millis: i64) -> Vec<String> {
    let mut out = vec![
        format!("{millis}m"),
        format!("{}u", i128::from(millis) * 1000),
    ];
    if millis % 1000 == 0 {
        out.push(format!("{}", millis / 1000));
    }
    if millis % 100 == 0 {
        out.push(format!("{}.{}", millis / 1000, (millis % 1000) / 100));
        out.push(format!("{}e-1", millis / 100));
    }
    out
}

fn arb_limits() -> impl Strategy<Value = Limits> {
    (
        0i64..8,
        100i64..8000,
        128i64..8192,
        0i64..16000,
        0i64..32768,
        0i64..4,
    )
        .prop_map(
            |(sessions, cpu, memory, total_cpu, total_memory, gpu)| Limits {
                max_sessions: sessions,
                max_cpu_per_session: Milli(i128::from(cpu)),
                max_memory_per_session: Milli(i128::from(memory) * MI),
                max_cpu: Milli(i128::from(total_cpu)),
                max_memory: Milli(i128::from(total_memory) * MI),
                max_gpu: gpu,
            },
        )
}

fn arb_usage() -> impl Strategy<Value = Usage> {
    (0i64..8, 0i64..16000, 0i64..32768, 0i64..4).prop_map(|(sessions, cpu, memory, gpu)| Usage {
        sessions,
        cpu: Milli(i128::from(cpu)),
        memory: Milli(i128::from(memory) * MI),
        gpu: Milli::from_units(i128::from(gpu)),
    })
}

fn arb_partial() -> impl Strategy<Value = PartialLimits> {
    (
        proptest::option::of(0i64..8),
        proptest::option::of(100i64..8000),
        proptest::option::of(0i64..16000),
        proptest::option::of(0i64..32768),
        proptest::option::of(0i64..4),
    )
        .prop_map(
            |(sessions, cpu, total_cpu, total_memory, gpu)| PartialLimits {
                max_sessions: sessions,
                max_cpu_per_session: cpu.map(|c| Milli(i128::from(c))),
                max_memory_per_session: None,
                max_cpu: total_cpu.map(|c| Milli(i128::from(c))),
                max_memory: total_memory.map(|m| Milli(i128::from(m) * MI)),
                max_gpu: gpu,
            },
        )
}

proptest! {
    /// Allowed exactly when every bound and limit holds (a model written independently).
    #[test]
    fn allowed_iff_within_every_limit(
        limits in arb_limits(), usage in arb_usage(),
        cpu in 0i64..70_000, memory in 0i64..600_000, gpu in 0i64..3,
    ) {
        let request = Request {
            cpu: Milli(i128::from(cpu)),
            memory: Milli(i128::from(memory) * MI),
            gpu: Milli::from_units(i128::from(gpu)),
        };
        let within = (100..=64_000).contains(&cpu)
            && (128..=524_288).contains(&memory)
            && usage.sessions < limits.max_sessions
            && request.cpu <= limits.max_cpu_per_session
            && request.memory <= limits.max_memory_per_session
            && usage.cpu.0 + request.cpu.0 <= limits.max_cpu.0
            && usage.memory.0 + request.memory.0 <= limits.max_memory.0
            && usage.gpu.0 + request.gpu.0 <= i128::from(limits.max_gpu) * 1000;
        let decision = decide(&limits, &usage, &request);
        prop_assert_eq!(decision == Decision::Allowed, within, "{:?}", decision);
    }

    /// A Group policy never turns a denial into an admission.
    #[test]
    fn groups_only_tighten(
        base in arb_partial(), group in arb_partial(), usage in arb_usage(),
        cpu in 100i64..8000, memory in 128i64..8192,
    ) {
        let request = Request { cpu: Milli(i128::from(cpu)), memory: Milli(i128::from(memory) * MI), gpu: Milli::ZERO };
        let without = [policy("d", Subject::Default, base.clone())];
        let with = [
            policy("d", Subject::Default, base),
            policy("g", Subject::Group(vec!["u".into()]), group),
        ];
        let loose = decide(&effective_limits("u", &without), &usage, &request);
        let tight = decide(&effective_limits("u", &with), &usage, &request);
        prop_assert!(loose == Decision::Allowed || tight != Decision::Allowed);
    }

    /// More usage never turns a denial into an admission.
    #[test]
    fn more_usage_never_helps(limits in arb_limits(), usage in arb_usage(), extra in 0i64..4000) {
        let request = Request { cpu: Milli(500), memory: Milli(512 * MI), gpu: Milli::ZERO };
        let mut more = usage;
        more.cpu = Milli(more.cpu.0 + i128::from(extra));
        more.memory = Milli(more.memory.0 + i128::from(extra) * MI);
        let before = decide(&limits, &usage, &request);
        let after = decide(&limits, &more, &request);
        prop_assert!(before == Decision::Allowed || after != Decision::Allowed);
    }

    /// The decision depends on amounts, never on how a quantity is spelled.
    #[test]
    fn every_spelling_decides_the_same(
        limits in arb_limits(), usage in arb_usage(),
        cpu in 1i64..700, memory in 64i64..8192,
    ) {
        let cpu = cpu * 100;
        let decisions: Vec<Decision> = cpu_spellings(cpu)
            .iter()
            .flat_map(|c| memory_spellings(memory).into_iter().map(move |m| (c.clone(), m)))
            .map(|(c, m)| {
                let spec = ResourceSpec { cpu: Some(q(&c)), memory: Some(q(&m)), ..ResourceSpec::default() };
                let request = Request::of(Some(&spec)).unwrap_or_default();
                decide(&limits, &usage, &request)
            })
            .collect();
        prop_assert!(decisions.len() >= 4);
        prop_assert!(decisions.windows(2).all(|w| w[0] == w[1]), "{:?}", decisions);
    }

    /// A denial names the limit it breaks.
    #[test]
    fn denials_name_their_limit(limits in arb_limits(), usage in arb_usage(), cpu in 100i64..8000) {
        let request = Request { cpu: Milli(i128::from(cpu)), memory: Milli(256 * MI), gpu: Milli::ZERO };
        if let Decision::Denied { message } = decide(&limits, &usage, &request) {
            let named = message.contains(&limits.max_sessions.to_string())
                || message.contains(&format!("{}m", limits.max_cpu_per_session.0))
                || message.contains(&format!("{}m", limits.max_cpu.0))
                || message.contains("Mi")
                || message.contains("GPU");
            prop_assert!(named, "{}", message);
        }
    }
}
