use super::*;

const T0: i64 = 1_700_000_000;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(T0 + seconds).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn req(cpu: i128) -> Request {
    Request {
        cpu: Milli(cpu),
        memory: Milli(1024 * 1024 * 1000),
        gpu: Milli::ZERO,
    }
}

fn reservation(name: &str, uid: Option<&str>, generation: i64, cpu: i128) -> Reservation {
    Reservation::new(
        &SessionKey::new("ns", name),
        uid.map(str::to_string),
        generation,
        &req(cpu),
        at(30),
    )
}

fn view<'a>(name: &'a str, uid: &'a str, generation: i64, running: bool) -> SessionView<'a> {
    SessionView {
        namespace: "ns",
        name,
        uid: Some(uid),
        generation,
        user: "alice",
        running,
        request: req(1000),
    }
}

/// Sessions in the cache, reservations in the ledger, at time 0 unless a row says otherwise.
struct Row {
    name: &'static str,
    sessions: Vec<SessionView<'static>>,
    reservations: Vec<Reservation>,
    now: i64,
    /// (sessions counted, millicores)
    expected: (i64, i128),
}

#[test]
fn usage_counts_each_session_once() {
    let rows = [
        Row {
            name: "cache only: running counted, hibernated not",
            sessions: vec![view("a", "u1", 1, true), view("b", "u2", 1, false)],
            reservations: vec![],
            now: 0,
            expected: (1, 1000),
        },
        Row {
            name: "a create the cache has not seen counts",
            sessions: vec![view("a", "u1", 1, true)],
            reservations: vec![reservation("b", None, 1, 500)],
            now: 0,
            expected: (2, 1500),
        },
        Row {
            name: "a create the cache shows counts once",
            sessions: vec![view("b", "u2", 1, true)],
            reservations: vec![reservation("b", None, 1, 500)],
            now: 0,
            expected: (1, 1000),
        },
        Row {
            name: "a wake the cache still shows hibernated counts",
            sessions: vec![view("b", "u2", 3, false)],
            reservations: vec![reservation("b", Some("u2"), 4, 500)],
            now: 0,
            expected: (1, 500),
        },
        Row {
            name: "hibernated after the wake: the slot is free",
            sessions: vec![view("b", "u2", 5, false)],
            reservations: vec![reservation("b", Some("u2"), 4, 500)],
            now: 0,
            expected: (0, 0),
        },
        Row {
            name: "a resize the cache has not seen: the new amounts, not both",
            sessions: vec![view("b", "u2", 2, true)],
            reservations: vec![reservation("b", Some("u2"), 3, 2000)],
            now: 0,
            expected: (1, 2000),
        },
        Row {
            name: "same name, other uid: the reservation counts",
            sessions: vec![view("b", "old", 7, false)],
            reservations: vec![reservation("b", Some("new"), 1, 500)],
            now: 0,
            expected: (1, 500),
        },
        Row {
            name: "an expired reservation no longer counts",
            sessions: vec![],
            reservations: vec![reservation("b", None, 1, 500)],
            now: 30,
            expected: (0, 0),
        },
        Row {
            name: "the session being admitted is excluded both ways",
            sessions: vec![view("me", "u9", 1, true)],
            reservations: vec![reservation("me", None, 1, 500)],
            now: 0,
            expected: (0, 0),
        },
    ];
    for row in rows {
        let reservations: Vec<&Reservation> = row.reservations.iter().collect();
        let mut sessions = row.sessions.clone();
        // Another user's session never counts.
        sessions.push(SessionView {
            user: "bob",
            ..view("x", "ux", 1, true)
        });
        let usage = usage(
            "alice",
            &SessionKey::new("ns", "me"),
            sessions,
            &reservations,
            at(row.now),
        );
        assert_eq!((usage.sessions, usage.cpu.0), row.expected, "{}", row.name);
    }
}

#[test]
fn reserve_replaces_its_session_and_drops_expired_entries() {
    let mut old = reservation("a", None, 1, 100);
    old.expires = at(-1);
    let ledger = Ledger {
        reservations: vec![old, reservation("b", None, 1, 100)],
    };
    let next = ledger
        .reserve(reservation("b", None, 2, 700), at(0))
        .expect("room");
    assert_eq!(next.reservations.len(), 1);
    assert_eq!(next.reservations[0].generation, 2);
    assert_eq!(next.reservations[0].request().cpu, Milli(700));
    let freed = next.without(&SessionKey::new("ns", "b"), at(0));
    assert!(freed.reservations.is_empty());
}

#[test]
fn a_full_ledger_refuses_more() {
    let ledger = Ledger {
        reservations: (0..MAX_RESERVATIONS)
            .map(|i| reservation(&format!("s{i}"), None, 1, 100))
            .collect(),
    };
    assert!(
        ledger
            .reserve(reservation("one-more", None, 1, 100), at(0))
            .is_none()
    );
    // Replacing an existing entry still fits.
    assert!(
        ledger
            .reserve(reservation("s0", None, 2, 100), at(0))
            .is_some()
    );
}

#[test]
fn text_round_trips_and_garbage_reads_as_empty() {
    let ledger = Ledger {
        reservations: vec![reservation("a", Some("u"), 2, 250)],
    };
    assert_eq!(Ledger::parse(Some(&ledger.to_text())), Ok(ledger));
    assert_eq!(Ledger::parse(None), Ok(Ledger::default()));
    let (empty, reason) = Ledger::parse(Some("{not json")).expect_err("garbage");
    assert!(empty.reservations.is_empty());
    assert!(reason.starts_with("unreadable quota ledger"), "{reason}");
    let mut mangled = reservation("a", None, 1, 1);
    mangled.cpu = "lots".into();
    assert_eq!(mangled.request().cpu, Request::SYSTEM_DEFAULT.cpu);
}
