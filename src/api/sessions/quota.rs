//! Quota checked by the API itself, for sessions whose `quota` owner is legacy: the webhook's
//! decision ([`crate::admission::quota::decide`]) fed from the API's QuotaPolicy and Session
//! watch caches, so both give the same answer with the same message.
//!
//! Creates admitted here count as "reservations" until the Session cache shows them (or
//! [`RESERVATION_TTL`] passes), and checks are serialised, so two concurrent creates cannot
//! both take a user's last free slot.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::runtime::reflector::Store;

use crate::admission::quota::{self, Decision, Policy, Request, Usage};
use crate::crd::{QuotaPolicy, Session, SessionState};

/// How long an admitted create counts before the Session watch has delivered it.
pub const RESERVATION_TTL: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
struct Reservation {
    user: String,
    request: Request,
    at: Instant,
}

/// Admitted creates not yet seen in the Session cache, by session name.
#[derive(Default)]
pub struct Reservations(Mutex<HashMap<String, Reservation>>);

impl Reservations {
    /// Decides, and reserves the slot when allowed; the lock makes check-and-reserve atomic.
    pub fn admit(
        &self,
        policies: &Store<QuotaPolicy>,
        sessions: &Store<Session>,
        user: &str,
        name: &str,
        request: &Request,
    ) -> Decision {
        let mut reservations = self.0.lock().unwrap_or_else(|p| p.into_inner());
        reservations.retain(|_, r| r.at.elapsed() < RESERVATION_TTL);
        let policies: Vec<Policy> = policies
            .state()
            .iter()
            .map(|p| Policy::from_object(p).0)
            .collect();
        let limits = quota::effective_limits(user, &policies);
        let cached = sessions.state();
        let reserved = reservations
            .iter()
            .filter(|(reserved, _)| {
                !cached
                    .iter()
                    .any(|s| s.metadata.name.as_ref() == Some(reserved))
            })
            .map(|(_, r)| (r.user.as_str(), &r.request));
        let usage = usage(user, cached.iter().map(AsRef::as_ref), reserved);
        let decision = quota::decide(&limits, &usage, request);
        if decision == Decision::Allowed {
            reservations.insert(
                name.to_string(),
                Reservation {
                    user: user.to_string(),
                    request: *request,
                    at: Instant::now(),
                },
            );
        }
        decision
    }

    /// Frees the slot of a create that did not happen.
    pub fn release(&self, name: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }
}

/// What `user`'s running sessions use: the cached ones plus reservations of creates the cache
/// does not show yet. A stored session whose resources no longer parse counts with the defaults,
/// as in the webhook.
pub fn usage<'a>(
    user: &str,
    sessions: impl IntoIterator<Item = &'a Session>,
    reserved: impl IntoIterator<Item = (&'a str, &'a Request)>,
) -> Usage {
    let mut usage = Usage::default();
    for session in sessions {
        let running = session.spec.desired_state() == SessionState::Running;
        if session.spec.user == user && running {
            usage.add(
                &Request::of(session.spec.resources.as_ref()).unwrap_or(Request::SYSTEM_DEFAULT),
            );
        }
    }
    for (owner, request) in reserved {
        if owner == user {
            usage.add(request);
        }
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantity::Milli;
    use serde_json::json;

    fn session(name: &str, user: &str, state: &str, cpu: &str) -> Session {
        serde_json::from_value(json!({
            "apiVersion": "stream.space/v1alpha1", "kind": "Session",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"user": user, "template": "t", "state": state,
                     "resources": {"requests": {"cpu": cpu, "memory": "1Gi"}}}
        }))
        .expect("session")
    }

    #[test]
    fn usage_counts_running_sessions_of_the_user_and_reservations() {
        let sessions = [
            session("a", "alice", "running", "500m"),
            session("b", "alice", "hibernated", "1"),
            session("c", "bob", "running", "1"),
            session("d", "alice", "running", "250m"),
        ];
        let reserved = Request {
            cpu: Milli(100),
            memory: Milli::ZERO,
            gpu: Milli::ZERO,
        };
        let usage = usage(
            "alice",
            sessions.iter(),
            [("alice", &reserved), ("bob", &reserved)],
        );
        assert_eq!(usage.sessions, 3);
        assert_eq!(usage.cpu, Milli(850));
    }
}
