//! The reservation ledger: pure values, no I/O (the ConfigMap that holds it is
//! [`super::store`]'s business).
//!
//! A reservation is an admitted move to running (a create, a wake, a resize) that the deciding
//! replica's Session cache may not show yet. Each user has one ledger, shared by every webhook
//! and API replica through the API server, so a decision counts what every other replica
//! admitted a moment before.
//!
//! **How a reservation and the cache are combined** (per session key, exactly one of them
//! counts): a reservation stands in for its session until the cache shows that session (same
//! uid, when known) at the reserved `generation` or later; from then on the cache is the truth
//! (running: counted; hibernated or gone: not). So a session is never counted twice, a wake is
//! counted before the cache sees it, and a hibernation after an admission frees the slot as soon
//! as the cache shows it. A reservation whose write never happened keeps counting until it
//! expires, which errs on the side of denying.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{Request, Usage};
use crate::crd::{Session, SessionState};
use crate::quantity::Milli;

/// How long a reservation counts when nothing supersedes it: far longer than a Session watch
/// normally lags and than clocks of replicas differ, short enough that a create that failed
/// after admission stops counting soon.
pub const RESERVATION_TTL: Duration = Duration::from_secs(30);

/// Most reservations one user's ledger holds at once; beyond it admissions wait (503), so the
/// ledger object stays far below the API server's size limit whatever the limits say.
pub const MAX_RESERVATIONS: usize = 512;

/// Which session a reservation is for: namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionKey {
    pub namespace: String,
    pub name: String,
}

impl SessionKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> SessionKey {
        SessionKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// One admitted move to running, as stored in the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    pub namespace: String,
    pub name: String,
    /// The Session's uid when the decider knew it (webhook; API wakes), so a reservation is
    /// never matched to another session that later took the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The `metadata.generation` the session has once the admitted write is stored.
    pub generation: i64,
    /// Millicores.
    pub cpu: String,
    /// Millibytes.
    pub memory: String,
    /// Thousandths of a GPU.
    #[serde(default)]
    pub gpu: String,
    /// When the reservation stops counting.
    pub expires: Timestamp,
}

impl Reservation {
    pub fn new(
        key: &SessionKey,
        uid: Option<String>,
        generation: i64,
        request: &Request,
        expires: Timestamp,
    ) -> Reservation {
        Reservation {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            uid,
            generation,
            cpu: request.cpu.0.to_string(),
            memory: request.memory.0.to_string(),
            gpu: request.gpu.0.to_string(),
            expires,
        }
    }

    pub fn is_for(&self, key: &SessionKey) -> bool {
        self.namespace == key.namespace && self.name == key.name
    }

    /// The amounts reserved; a value someone mangled in the object counts as the system
    /// default rather than as nothing.
    pub fn request(&self) -> Request {
        let milli = |text: &str, default: Milli| text.parse().map(Milli).unwrap_or(default);
        Request {
            cpu: milli(&self.cpu, Request::SYSTEM_DEFAULT.cpu),
            memory: milli(&self.memory, Request::SYSTEM_DEFAULT.memory),
            gpu: milli(&self.gpu, Milli::ZERO),
        }
    }

    fn live(&self, now: Timestamp) -> bool {
        self.expires > now
    }
}

/// One user's reservations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub reservations: Vec<Reservation>,
}

impl Ledger {
    /// Reads the stored text; an unreadable ledger is reported and read as empty (the next
    /// admission rewrites it).
    pub fn parse(text: Option<&str>) -> Result<Ledger, (Ledger, String)> {
        match text {
            None => Ok(Ledger::default()),
            Some(text) => serde_json::from_str(text)
                .map_err(|e| (Ledger::default(), format!("unreadable quota ledger: {e}"))),
        }
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{\"reservations\":[]}".into())
    }

    /// The reservations that still count at `now`.
    pub fn live(&self, now: Timestamp) -> impl Iterator<Item = &Reservation> {
        self.reservations.iter().filter(move |r| r.live(now))
    }

    /// This ledger with `reservation` replacing any earlier one of its session, expired ones
    /// dropped; `None` when the ledger is full.
    pub fn reserve(&self, reservation: Reservation, now: Timestamp) -> Option<Ledger> {
        let key = SessionKey::new(&reservation.namespace, &reservation.name);
        let mut next = self.without(&key, now);
        if next.reservations.len() >= MAX_RESERVATIONS {
            return None;
        }
        next.reservations.push(reservation);
        Some(next)
    }

    /// This ledger without `key`'s reservation and without expired ones.
    pub fn without(&self, key: &SessionKey, now: Timestamp) -> Ledger {
        Ledger {
            reservations: self
                .reservations
                .iter()
                .filter(|r| r.live(now) && !r.is_for(key))
                .cloned()
                .collect(),
        }
    }
}

/// What the usage computation needs of a cached Session.
#[derive(Clone, Copy, Debug)]
pub struct SessionView<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: Option<&'a str>,
    pub generation: i64,
    pub user: &'a str,
    pub running: bool,
    pub request: Request,
}

impl<'a> SessionView<'a> {
    /// The view of a cached Session; a stored session whose resources no longer parse counts
    /// with the system defaults.
    pub fn of(session: &'a Session) -> SessionView<'a> {
        SessionView {
            namespace: session.metadata.namespace.as_deref().unwrap_or_default(),
            name: session.metadata.name.as_deref().unwrap_or_default(),
            uid: session.metadata.uid.as_deref(),
            generation: session.metadata.generation.unwrap_or(0),
            user: &session.spec.user,
            running: session.spec.desired_state() == SessionState::Running,
            request: Request::of(session.spec.resources.as_ref())
                .unwrap_or(Request::SYSTEM_DEFAULT),
        }
    }

    fn is(&self, key_namespace: &str, key_name: &str) -> bool {
        self.namespace == key_namespace && self.name == key_name
    }

    /// Whether this cached view already shows what `reservation` admitted (or something later).
    fn supersedes(&self, reservation: &Reservation) -> bool {
        self.is(&reservation.namespace, &reservation.name)
            && reservation
                .uid
                .as_deref()
                .is_none_or(|uid| self.uid == Some(uid))
            && self.generation >= reservation.generation
    }
}

/// What `user` uses besides the session `admitting`, from the objects of a Session cache and
/// the user's live reservations: the one usage figure the validating webhook, the API's own
/// checks and the API's quota report all compute. Only the user's sessions are parsed, as this
/// runs on every check.
pub fn cached_usage<'a>(
    user: &str,
    admitting: &SessionKey,
    sessions: impl IntoIterator<Item = &'a Session>,
    reservations: &[&Reservation],
    now: Timestamp,
) -> Usage {
    let views = sessions
        .into_iter()
        .filter(|s| s.spec.user == user)
        .map(SessionView::of);
    usage(user, admitting, views, reservations, now)
}

/// What `user` uses, the session `admitting` excluded: running cached sessions plus live
/// reservations, one of the two per session (see the module docs). `sessions` may hold every
/// user's sessions; `reservations` are the user's ledger.
pub fn usage<'a>(
    user: &str,
    admitting: &SessionKey,
    sessions: impl IntoIterator<Item = SessionView<'a>>,
    reservations: &[&Reservation],
    now: Timestamp,
) -> Usage {
    let pending: Vec<&Reservation> = reservations
        .iter()
        .copied()
        .filter(|r| r.live(now) && !r.is_for(admitting))
        .collect();
    // Per reserved key: whether the cache supersedes it.
    let mut superseded: BTreeMap<(&str, &str), bool> = pending
        .iter()
        .map(|r| ((r.namespace.as_str(), r.name.as_str()), false))
        .collect();
    let mut usage = Usage::default();
    for session in sessions {
        if session.user != user || session.is(&admitting.namespace, &admitting.name) {
            continue;
        }
        let Some(seen) = superseded.get_mut(&(session.namespace, session.name)) else {
            if session.running {
                usage.add(&session.request);
            }
            continue;
        };
        let reservation = pending.iter().find(|r| session.is(&r.namespace, &r.name));
        if reservation.is_none_or(|r| session.supersedes(r)) {
            *seen = true;
            if session.running {
                usage.add(&session.request);
            }
        }
    }
    for reservation in pending {
        let key = (reservation.namespace.as_str(), reservation.name.as_str());
        if !superseded.get(&key).copied().unwrap_or(false) {
            usage.add(&reservation.request());
        }
    }
    usage
}

#[cfg(test)]
mod tests;
