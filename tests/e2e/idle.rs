//! Idle hibernation, maxSessionDuration, heartbeats and wake on connection, against
//! the real control plane, with the API and the controller's event endpoint on real sockets.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use streamspace_controller::crd::{Condition, Session, SessionPhase, SessionState, Template};
use streamspace_controller::idle::WAKE_ANNOTATION;
use streamspace_controller::idle::deadline::{IdleSettings, MaxDurationAction};

use crate::http_client::{API_TOKEN, EVENT_TOKEN, Http, RunningApi, call, counter};
use crate::support::{TestEnv, wait_for, wait_object};

async fn heartbeat(addr: SocketAddr, session: &str) -> (u16, Value) {
    call(
        addr,
        "POST",
        &format!("/api/v1/sessions/{session}/heartbeat"),
        Some(API_TOKEN),
    )
    .await
}

pub(crate) async fn connect(addr: SocketAddr, session: &str) -> (u16, Value) {
    call(
        addr,
        "GET",
        &format!("/api/v1/sessions/{session}/connect?user=alice"),
        Some(API_TOKEN),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Objects and observations

pub(crate) fn template() -> Value {
    json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "Template",
        "metadata": {"name": "firefox"},
        "spec": {
            "displayName": "Firefox", "baseImage": "lscr.io/linuxserver/firefox:latest",
            "vnc": {"enabled": true, "port": 3000}
        }
    })
}

pub(crate) fn session(name: &str, state: &str, idle: &str, max: &str) -> Value {
    json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "Session",
        "metadata": {"name": name},
        "spec": {
            "user": "alice", "template": "firefox", "state": state,
            "idleTimeout": idle, "maxSessionDuration": max
        }
    })
}

fn state(session: &Session) -> SessionState {
    session.spec.desired_state()
}

fn phase(session: &Session) -> Option<SessionPhase> {
    session.status.as_ref().and_then(|s| s.phase.clone())
}

fn last_activity(session: &Session) -> Option<Timestamp> {
    session.status.as_ref()?.last_activity.as_ref().map(|t| t.0)
}

fn condition(session: &Session, type_: &str) -> Option<Condition> {
    session
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

async fn get(env: &TestEnv, name: &str) -> Session {
    env.api::<Session>().get(name).await.expect("get session")
}

async fn set_state(env: &TestEnv, name: &str, state: &str) {
    env.api::<Session>()
        .patch(
            name,
            &PatchParams {
                field_manager: Some("test-user".into()),
                ..PatchParams::default()
            },
            &Patch::Merge(json!({"spec": {"state": state}})),
        )
        .await
        .expect("user sets the state");
}

async fn wait_state(env: &TestEnv, name: &str, expected: SessionState) -> Session {
    wait_object(
        &env.api::<Session>(),
        name,
        &format!("state {expected}"),
        move |s| state(s) == expected,
    )
    .await
}

async fn wait_phase(env: &TestEnv, name: &str, expected: SessionPhase) -> Session {
    wait_object(
        &env.api::<Session>(),
        name,
        &format!("phase {expected}"),
        move |s| phase(s) == Some(expected.clone()),
    )
    .await
}

async fn event_reasons(env: &TestEnv, name: &str) -> Vec<String> {
    env.api::<Event>()
        .list(&ListParams::default())
        .await
        .map(|list| {
            list.items
                .into_iter()
                .filter(|e| e.involved_object.name.as_deref() == Some(name))
                .filter_map(|e| e.reason)
                .collect()
        })
        .unwrap_or_default()
}

/// Waits for the Event with `reason` about the session and returns when it was recorded.
async fn stop_event(env: &TestEnv, name: &str, reason: &str) -> Timestamp {
    let event = wait_for(
        &format!("a {reason} event about {name}"),
        || async {
            env.api::<Event>()
                .list(&ListParams::default())
                .await
                .ok()
                .and_then(|list| {
                    list.items.into_iter().find(|e| {
                        e.involved_object.name.as_deref() == Some(name)
                            && e.reason.as_deref() == Some(reason)
                    })
                })
        },
        Option::is_some,
    )
    .await;
    let event = event.unwrap_or_default();
    event
        .event_time
        .map(|t| t.0)
        .or(event.first_timestamp.map(|t| t.0))
        .or(event.metadata.creation_timestamp.map(|t| t.0))
        .unwrap_or_else(Timestamp::now)
}

fn idle_settings(
    grace: Duration,
    action: MaxDurationAction,
) -> impl FnOnce(&mut streamspace_controller::controller::Config) {
    move |config| {
        config.idle = IdleSettings {
            grace,
            max_duration_action: action,
        };
        config.connection_event_token = Some(EVENT_TOKEN.into());
    }
}

/// The status without `lastActivity`: what a heartbeat must leave alone.
fn status_without_activity(session: &Session) -> Value {
    let mut status =
        serde_json::to_value(session.status.clone().unwrap_or_default()).unwrap_or_default();
    if let Some(map) = status.as_object_mut() {
        map.remove("lastActivity");
    }
    status
}

// ---------------------------------------------------------------------------------------------
// Tests

/// Acceptance 1 and 2.
#[tokio::test]
async fn heartbeats_keep_a_session_running_and_their_end_hibernates_it() {
    let mut env = TestEnv::without_controller("idle-heartbeats").await;
    env.start_controller_with(idle_settings(
        Duration::from_secs(1),
        MaxDurationAction::Hibernate,
    ))
    .await;
    let api = RunningApi::start(&env, Duration::from_millis(500), None).await;
    env.create::<Template>(template()).await;
    // Started with a long timeout so a slow start under load cannot hibernate it first; the
    // 3 s timeout under test applies once it runs.
    env.create::<Session>(session("s1", "running", "1h", "1h"))
        .await;
    wait_phase(&env, "s1", SessionPhase::Running).await;
    // Activity now, so the shorter timeout counts from here, not from the creation.
    env.api::<Session>()
        .patch_status(
            "s1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"lastActivity": Timestamp::now().to_string()}})),
        )
        .await
        .expect("fresh lastActivity");
    env.api::<Session>()
        .patch(
            "s1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"idleTimeout": "3s"}})),
        )
        .await
        .expect("shorten the idle timeout");
    wait_object(
        &env.api::<Session>(),
        "s1",
        "ready at the new generation",
        |s| {
            s.status.as_ref().and_then(|st| st.observed_generation) == s.metadata.generation
                && condition(s, "Ready").is_some_and(|c| c.is_true())
        },
    )
    .await;

    // Acceptance 2: a heartbeat changes lastActivity and nothing else in the status.
    let before = get(&env, "s1").await;
    let mut http = Http::connect(api.addr).await;
    let (code, body) = http
        .request(
            "POST",
            "/api/v1/sessions/s1/heartbeat",
            Some(API_TOKEN),
            None,
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        json!({"success": true, "message": "Activity recorded", "sessionId": "s1"})
    );
    // lastActivity has second precision: a heartbeat in the second it was set changes nothing.
    let after = wait_for(
        "lastActivity to move",
        || async {
            let (code, _) = heartbeat(api.addr, "s1").await;
            assert_eq!(code, 200);
            tokio::time::sleep(Duration::from_millis(300)).await;
            get(&env, "s1").await
        },
        |s| last_activity(s) > last_activity(&before),
    )
    .await;
    assert_eq!(
        status_without_activity(&after),
        status_without_activity(&before),
        "a heartbeat changed more than lastActivity"
    );
    assert!(condition(&after, "Ready").is_some_and(|c| c.is_true()));

    // Heartbeats every second for 10 s keep it running (the deadline is 4 s after each).
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        let (code, _) = http
            .request(
                "POST",
                "/api/v1/sessions/s1/heartbeat",
                Some(API_TOKEN),
                None,
            )
            .await;
        assert_eq!(code, 200);
        let now = get(&env, "s1").await;
        assert_eq!(state(&now), SessionState::Running, "hibernated while busy");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // Without heartbeats it hibernates at lastActivity + 3 s + 1 s.
    tokio::time::sleep(Duration::from_millis(800)).await; // let the last flush land
    let last = last_activity(&get(&env, "s1").await).expect("lastActivity");
    let hibernated = wait_state(&env, "s1", SessionState::Hibernated).await;
    let noticed = Timestamp::now();
    let deadline = last + Duration::from_secs(4);
    let acted = stop_event(&env, "s1", "Idle").await;
    let lag = acted.duration_since(deadline);
    eprintln!(
        "idle hibernation: deadline {deadline}, written {acted} (lag {:.1} s), noticed by the test {noticed}",
        lag.as_secs_f64()
    );
    assert!(
        lag.as_secs_f64() <= 2.0 && lag.as_secs_f64() >= -1.0,
        "hibernated {lag:?} after the deadline"
    );
    assert_eq!(
        last_activity(&hibernated),
        Some(last),
        "lastActivity untouched"
    );

    wait_phase(&env, "s1", SessionPhase::Hibernated).await;
    wait_for(
        "deployment scaled to 0",
        || async {
            env.api::<Deployment>()
                .get_opt("ss-s1")
                .await
                .ok()
                .flatten()
                .and_then(|d| d.spec?.replicas)
        },
        |r| *r == Some(0),
    )
    .await;
    assert!(
        env.api::<PersistentVolumeClaim>()
            .get_opt("home-alice")
            .await
            .expect("get claim")
            .is_some(),
        "home claim kept"
    );
    eprintln!("events of s1: {:?}", event_reasons(&env, "s1").await);
    drop(api);
    env.cleanup().await;
}

/// Acceptance 3: the event path, and no re-hibernation right after waking.
#[tokio::test]
async fn connect_wakes_a_hibernated_session_through_the_event() {
    let mut env = TestEnv::without_controller("idle-connect").await;
    env.start_controller_with(idle_settings(
        Duration::from_secs(1),
        MaxDurationAction::Hibernate,
    ))
    .await;
    let controller_addr = env.controller.as_ref().map(|c| c.http_addr);
    let api = RunningApi::start(&env, Duration::from_millis(500), controller_addr).await;
    env.create::<Template>(template()).await;
    env.create::<Session>(session("s1", "hibernated", "20s", "1h"))
        .await;
    wait_phase(&env, "s1", SessionPhase::Hibernated).await;
    // Last activity long ago: the old code re-hibernated such a session at once on waking.
    let an_hour_ago = Timestamp::now() - Duration::from_secs(3600);
    env.api::<Session>()
        .patch_status(
            "s1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"lastActivity": an_hour_ago.to_string()}})),
        )
        .await
        .expect("old lastActivity");

    let asked = Timestamp::now();
    let (code, body) = connect(api.addr, "s1").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["state"], "running", "{body}");
    assert_eq!(body["ready"], false, "{body}");
    assert!(
        body["connectionId"]
            .as_str()
            .is_some_and(|id| id.len() == 36),
        "{body}"
    );
    assert!(body["sessionUrl"].as_str().is_some(), "{body}");
    let controller = env.controller.as_ref().expect("controller");
    let wakes = || {
        counter(
            &controller.metrics,
            "streamspace_idle_session_wakes",
            "outcome=\"woken\"",
        )
    };
    // When the mark's path wins, the event's path can read the session running (and answer
    // "not needed") a moment before the mark's path counts its wake: wait for the count.
    wait_for(
        "the controller to count the wake",
        || async { wakes() },
        |n| *n >= 1,
    )
    .await;
    assert_eq!(
        wakes(),
        1,
        "woken exactly once, by the event or the mark, whichever the controller saw first"
    );
    assert_eq!(
        api.counter("streamspace_api_connection_events", "delivered"),
        1
    );

    let woken = get(&env, "s1").await;
    assert_eq!(state(&woken), SessionState::Running);
    assert!(
        !woken.annotations().contains_key(WAKE_ANNOTATION),
        "mark cleared"
    );
    let activity = last_activity(&woken).expect("lastActivity");
    assert!(
        activity >= asked - Duration::from_secs(1),
        "lastActivity refreshed: {activity}"
    );
    let running = wait_phase(&env, "s1", SessionPhase::Running).await;
    assert!(condition(&running, "Ready").is_some_and(|c| c.is_true()));

    // Stays running well past "right after waking" (3 s), without any heartbeat.
    let (code, body) = connect(api.addr, "s1").await;
    assert_eq!((code, body["ready"].clone()), (200, json!(true)), "{body}");
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(
            state(&get(&env, "s1").await),
            SessionState::Running,
            "re-hibernated"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(wakes(), 1, "no second wake");
    drop(api);
    env.cleanup().await;
}

/// Acceptance 4: the annotation alone wakes the session when the event cannot be delivered.
#[tokio::test]
async fn connect_wakes_through_the_annotation_when_the_event_endpoint_is_down() {
    let mut env = TestEnv::without_controller("idle-annotation").await;
    env.start_controller_with(idle_settings(
        Duration::from_secs(1),
        MaxDurationAction::Hibernate,
    ))
    .await;
    // A port that nothing listens on.
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        listener.local_addr().expect("addr")
    };
    let api = RunningApi::start(&env, Duration::from_millis(500), Some(closed)).await;
    env.create::<Template>(template()).await;
    env.create::<Session>(session("s1", "hibernated", "30s", "1h"))
        .await;
    wait_phase(&env, "s1", SessionPhase::Hibernated).await;

    let (code, body) = connect(api.addr, "s1").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["message"], "Session is waking up", "{body}");
    assert_eq!(
        api.counter("streamspace_api_connection_events", "connect"),
        1
    );

    let woken = wait_state(&env, "s1", SessionState::Running).await;
    assert!(
        !woken.annotations().contains_key(WAKE_ANNOTATION),
        "mark cleared"
    );
    wait_phase(&env, "s1", SessionPhase::Running).await;
    let controller = env.controller.as_ref().expect("controller");
    assert_eq!(
        counter(
            &controller.metrics,
            "streamspace_idle_session_wakes",
            "source=\"annotation\",outcome=\"woken\""
        ),
        1
    );
    drop(api);
    env.cleanup().await;
}

/// Acceptance 5: a wake racing with a user's hibernation ends in the last writer's intent.
#[tokio::test]
async fn wake_racing_with_a_user_ends_in_the_last_writers_intent() {
    // A pending wake request that a later user change made stale is dropped, not applied.
    let mut env = TestEnv::without_controller("idle-race").await;
    let api = RunningApi::start(&env, Duration::from_millis(500), None).await;
    env.create::<Session>(session("stale", "hibernated", "30m", "8h"))
        .await;
    let (code, body) = connect(api.addr, "stale").await;
    assert_eq!(code, 200, "{body}");
    assert!(
        get(&env, "stale")
            .await
            .annotations()
            .contains_key(WAKE_ANNOTATION)
    );
    set_state(&env, "stale", "running").await;
    set_state(&env, "stale", "hibernated").await; // the user's later intent
    env.start_controller_with(idle_settings(
        Duration::from_secs(1),
        MaxDurationAction::Hibernate,
    ))
    .await;
    wait_object(&env.api::<Session>(), "stale", "stale mark dropped", |s| {
        !s.annotations().contains_key(WAKE_ANNOTATION)
    })
    .await;
    // The reconcile that dropped the mark decided not to wake: once it has finished (none in
    // flight), the session must still be hibernated.
    env.wait_reconciled("idle", 0.0).await;
    assert_eq!(state(&get(&env, "stale").await), SessionState::Hibernated);

    // Truly concurrent: connect and a user's hibernate at once, from both starting states.
    let names: Vec<String> = (0..6).map(|i| format!("race-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let start = if i % 2 == 0 { "running" } else { "hibernated" };
        env.create::<Session>(session(name, start, "30m", "8h"))
            .await;
    }
    for name in &names {
        wait_object(
            &env.api::<Session>(),
            name,
            "clocks initialised or stopped",
            |s| state(s) != SessionState::Running || last_activity(s).is_some(),
        )
        .await;
    }
    let races = names.iter().map(|name| {
        let env = &env;
        let addr = api.addr;
        async move {
            let (connected, ()) =
                tokio::join!(connect(addr, name), set_state(env, name, "hibernated"));
            assert_eq!(connected.0, 200, "{:?}", connected.1);
        }
    });
    futures::future::join_all(races).await;

    for name in &names {
        let settled = wait_object(&env.api::<Session>(), name, "wake request handled", |s| {
            !s.annotations().contains_key(WAKE_ANNOTATION)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let settled_again = get(&env, name).await;
        assert_eq!(
            state(&settled),
            state(&settled_again),
            "{name} keeps flipping"
        );
        // The manager that last wrote spec.state is the one whose intent stands.
        let owner = settled_again
            .managed_fields()
            .iter()
            .filter(|m| {
                m.fields_v1
                    .as_ref()
                    .is_some_and(|f| f.0.pointer("/f:spec/f:state").is_some())
            })
            .filter_map(|m| m.manager.clone())
            .collect::<Vec<_>>();
        let expected = match state(&settled_again) {
            SessionState::Running => "streamspace-controller-idle",
            _ => "test-user",
        };
        eprintln!("{name}: final {} owned by {owner:?}", state(&settled_again));
        assert_eq!(owner, vec![expected.to_string()], "{name}");
    }
    let controller = env.controller.as_ref().expect("controller");
    let failures = counter(
        &controller.metrics,
        "streamspace_controller_reconcile_failures",
        "controller=\"idle\"",
    );
    assert!(failures <= 12, "error loop: {failures} idle failures");
    drop(api);
    env.cleanup().await;
}

/// Acceptance 6: maxSessionDuration stops a busy session, by hibernating or terminating it.
#[tokio::test]
async fn max_session_duration_stops_a_busy_session() {
    for (action, expected) in [
        (MaxDurationAction::Hibernate, SessionState::Hibernated),
        (MaxDurationAction::Terminate, SessionState::Terminated),
    ] {
        let mut env = TestEnv::without_controller("idle-max").await;
        env.start_controller_with(idle_settings(Duration::from_secs(1), action))
            .await;
        let api = RunningApi::start(&env, Duration::from_millis(500), None).await;
        env.create::<Session>(session("busy", "running", "1h", "5s"))
            .await;
        let started = wait_object(&env.api::<Session>(), "busy", "startedAt", |s| {
            s.status.as_ref().is_some_and(|st| st.started_at.is_some())
        })
        .await;
        let started_at = started
            .status
            .and_then(|s| s.started_at)
            .expect("startedAt")
            .0;
        let stopped = wait_for(
            "the session to stop while busy",
            || async {
                let (code, _) = heartbeat(api.addr, "busy").await;
                assert_eq!(code, 200);
                tokio::time::sleep(Duration::from_millis(500)).await;
                get(&env, "busy").await
            },
            |s| state(s) != SessionState::Running,
        )
        .await;
        assert_eq!(state(&stopped), expected);
        let acted = stop_event(&env, "busy", "MaxDurationReached").await;
        let lag = acted.duration_since(started_at + Duration::from_secs(5));
        eprintln!(
            "maxSessionDuration ({action:?}): acted {:.1} s after the deadline",
            lag.as_secs_f64()
        );
        assert!(lag.as_secs_f64() <= 2.0, "late by {lag:?}");
        drop(api);
        env.cleanup().await;
    }
}

/// Acceptance 7 (and 2 again, without a controller): coalescing, counted.
#[tokio::test]
async fn a_thousand_heartbeats_in_one_interval_cost_at_most_two_writes() {
    let env = TestEnv::without_controller("idle-coalesce").await;
    let api = RunningApi::start(&env, Duration::from_secs(10), None).await;
    env.create::<Session>(session("s1", "running", "30m", "8h"))
        .await;
    let before = get(&env, "s1").await;

    let started = Instant::now();
    let workers = (0..20).map(|_| async {
        let mut http = Http::connect(api.addr).await;
        for _ in 0..50 {
            let (code, _) = http
                .request(
                    "POST",
                    "/api/v1/sessions/s1/heartbeat",
                    Some(API_TOKEN),
                    None,
                )
                .await;
            assert_eq!(code, 200);
        }
    });
    futures::future::join_all(workers).await;
    let elapsed = started.elapsed();
    eprintln!(
        "1000 heartbeats in {elapsed:?} ({:.0}/s over 20 connections)",
        1000.0 / elapsed.as_secs_f64()
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "not within one flush interval"
    );
    assert_eq!(
        api.counter(
            "streamspace_api_requests_total",
            "endpoint=\"heartbeat\",code=\"200\""
        ),
        1000
    );

    // The leading write, then at most one trailing write at the end of the interval.
    wait_for(
        "the trailing flush",
        || async { started.elapsed() },
        |e| *e > Duration::from_secs(11),
    )
    .await;
    let written = api.counter("streamspace_api_activity_writes", "outcome=\"written\"");
    eprintln!("status writes for 1000 heartbeats: {written}");
    assert!((1..=2).contains(&written), "{written} writes");
    let after = get(&env, "s1").await;
    assert!(last_activity(&after).is_some());
    assert_eq!(
        status_without_activity(&after),
        status_without_activity(&before)
    );
    drop(api);
    env.cleanup().await;
}

/// Acceptance 8: deadlines come from stored fields, so a restart keeps them.
#[tokio::test]
async fn restarting_the_controller_keeps_every_deadline() {
    let mut env = TestEnv::without_controller("idle-restart").await;
    let settings = || idle_settings(Duration::from_secs(1), MaxDurationAction::Hibernate);
    env.start_controller_with(settings()).await;
    env.create::<Session>(session("idle", "running", "4s", "1h"))
        .await;
    env.create::<Session>(session("long", "running", "1h", "6s"))
        .await;
    let mut stored = Vec::new();
    for name in ["idle", "long"] {
        let s = wait_object(&env.api::<Session>(), name, "clocks initialised", |s| {
            s.status
                .as_ref()
                .is_some_and(|st| st.started_at.is_some() && st.last_activity.is_some())
        })
        .await;
        stored.push(s.status.unwrap_or_default());
    }
    if let Some(controller) = env.controller.take() {
        controller.kill().await;
    }
    // Both deadlines pass while no controller runs.
    tokio::time::sleep(Duration::from_secs(7)).await;
    for name in ["idle", "long"] {
        assert_eq!(state(&get(&env, name).await), SessionState::Running);
    }
    let restarted = Instant::now();
    env.start_controller_with(settings()).await;
    for (name, reason, before) in [
        ("idle", "Idle", &stored[0]),
        ("long", "MaxDurationReached", &stored[1]),
    ] {
        let stopped = wait_state(&env, name, SessionState::Hibernated).await;
        stop_event(&env, name, reason).await;
        assert_eq!(
            stopped
                .status
                .as_ref()
                .and_then(|s| s.last_activity.clone()),
            before.last_activity,
            "{name}: lastActivity not reset by the restart"
        );
    }
    eprintln!(
        "both sessions stopped {:?} after the restart",
        restarted.elapsed()
    );
    env.cleanup().await;
}

/// Acceptance 9: bad input is refused with a 4xx and a JSON message, writes nothing, and
/// panics nowhere; the controller's event endpoint likewise.
#[tokio::test]
async fn bad_input_is_refused_without_writes() {
    let mut env = TestEnv::without_controller("idle-bad-input").await;
    env.start_controller_with(idle_settings(
        Duration::from_secs(1),
        MaxDurationAction::Hibernate,
    ))
    .await;
    let controller_addr = env
        .controller
        .as_ref()
        .map(|c| c.http_addr)
        .expect("controller");
    let api = RunningApi::start(&env, Duration::from_millis(200), Some(controller_addr)).await;
    env.create::<Session>(session("s1", "hibernated", "30m", "8h"))
        .await;
    wait_phase(&env, "s1", SessionPhase::Hibernated).await;
    // The controller's own writes are done before the snapshot.
    env.wait_reconciled("session", 0.0).await;
    env.wait_reconciled("idle", 0.0).await;
    let before = get(&env, "s1").await;

    let cases: Vec<(&str, String, Option<&str>, u16)> = vec![
        (
            "POST",
            "/api/v1/sessions/nope/heartbeat".into(),
            Some(API_TOKEN),
            404,
        ),
        (
            "GET",
            "/api/v1/sessions/nope/connect?user=a".into(),
            Some(API_TOKEN),
            404,
        ),
        (
            "POST",
            "/api/v1/sessions/nope/disconnect?connectionId=x".into(),
            Some(API_TOKEN),
            404,
        ),
        (
            "POST",
            "/api/v1/sessions/Bad_Id/heartbeat".into(),
            Some(API_TOKEN),
            400,
        ),
        (
            "GET",
            "/api/v1/sessions/a..b%2F/connect".into(),
            Some(API_TOKEN),
            400,
        ),
        (
            "POST",
            format!("/api/v1/sessions/{}/heartbeat", "a".repeat(300)),
            Some(API_TOKEN),
            400,
        ),
        (
            "POST",
            "/api/v1/sessions/s1/disconnect".into(),
            Some(API_TOKEN),
            400,
        ),
        ("POST", "/api/v1/sessions/s1/heartbeat".into(), None, 401),
        (
            "POST",
            "/api/v1/sessions/s1/heartbeat".into(),
            Some("wrong"),
            401,
        ),
        (
            "GET",
            "/api/v1/sessions/s1/connect".into(),
            Some("wrong"),
            401,
        ),
    ];
    for (method, path, token, expected) in &cases {
        let (code, body) = call(api.addr, method, path, *token).await;
        assert_eq!(code, *expected, "{method} {path}: {body}");
        assert!(
            body["error"].is_string(),
            "{method} {path}: JSON message expected, got {body}"
        );
    }

    let event = |session: &str, namespace: &str| {
        json!({"type": "connect", "namespace": namespace, "session": session, "generation": 1})
            .to_string()
    };
    let ns = env.namespace.clone();
    let events: Vec<(Option<&str>, String, u16)> = vec![
        (None, event("s1", &ns), 401),
        (Some("wrong"), event("s1", &ns), 401),
        (Some(EVENT_TOKEN), "{not json".into(), 400),
        (
            Some(EVENT_TOKEN),
            json!({"type": "connect"}).to_string(),
            400,
        ),
        (Some(EVENT_TOKEN), event("Bad_Id", &ns), 400),
        (Some(EVENT_TOKEN), event("s1", "other-namespace"), 403),
        (Some(EVENT_TOKEN), event("nope", &ns), 404),
        (
            Some(EVENT_TOKEN),
            json!({"type": "reboot", "namespace": ns, "session": "s1", "generation": 1})
                .to_string(),
            400,
        ),
    ];
    for (token, body, expected) in &events {
        let (code, reply) = Http::connect(controller_addr)
            .await
            .request("POST", "/events/connection", *token, Some(body))
            .await;
        assert_eq!(code, *expected, "{body}: {reply}");
        assert!(
            reply["error"].is_string(),
            "{body}: JSON message expected, got {reply}"
        );
    }

    // Evidence that a flush ran after every refused request: a good heartbeat on another
    // session is accepted and flushed. Had a refused request been buffered, it would have been
    // flushed with it (or before): the marker must be the only activity write.
    env.create::<Session>(session("marker", "hibernated", "30m", "8h"))
        .await;
    wait_for(
        "the API to accept a heartbeat for the marker session",
        || async {
            let path = "/api/v1/sessions/marker/heartbeat";
            call(api.addr, "POST", path, Some(API_TOKEN)).await.0
        },
        |code| *code == 200,
    )
    .await;
    let flushes = |outcome: &str| api.counter("streamspace_api_activity_writes", outcome);
    wait_for(
        "the marker's heartbeat to be flushed",
        || async { flushes("outcome=\"written\"") },
        |n| *n >= 1,
    )
    .await;
    // One flush, the marker's: every outcome counts (a conflict is a retry of that flush, lost
    // to the idle reconciler initialising the new session's clocks).
    assert_eq!(
        flushes("outcome") - flushes("outcome=\"conflict\""),
        1,
        "one activity flush, the marker's"
    );
    let after = get(&env, "s1").await;
    assert_eq!(
        after.resource_version(),
        before.resource_version(),
        "nothing written"
    );
    assert_eq!(state(&after), SessionState::Hibernated);
    let (code, _) = call(api.addr, "GET", "/healthz", None).await;
    assert_eq!(code, 200);
    drop(api);
    env.cleanup().await;
}
