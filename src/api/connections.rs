//! What this replica remembers about open connections, keyed by what clients send and
//! therefore bounded:
//!
//! - [`ConnectionTracker`]: connection ids handed out by `connect` per session, for
//!   `activeConnections`. At most [`MAX_PER_SESSION`] per session (the oldest is forgotten
//!   first: a client that connects in a loop and never disconnects cannot grow it), each kept
//!   at most [`CONNECTION_TTL`], and sessions that no longer exist are dropped by
//!   [`ConnectionTracker::sweep`].
//! - [`StreamSlots`]: open WebSocket streams per user and in total; a stream holds a
//!   [`StreamSlot`] that gives its place back when dropped, so a user's entry exists only while
//!   they have a stream open.
//!
//! The clock is passed in, so expiry is tested without waiting.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Connection ids remembered per session; past it the oldest is forgotten.
pub const MAX_PER_SESSION: usize = 64;
/// Longest a connection without a disconnect counts as open (longer than any session's
/// default `maxSessionDuration`).
pub const CONNECTION_TTL: Duration = Duration::from_secs(24 * 3600);
/// How often forgotten sessions and expired connections are swept.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Open connections per session (see the module docs for the bounds).
#[derive(Debug, Default)]
pub struct ConnectionTracker {
    sessions: Mutex<HashMap<String, VecDeque<(String, Instant)>>>,
}

impl ConnectionTracker {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, VecDeque<(String, Instant)>>> {
        // Every write leaves the map consistent, so a poisoned lock is still usable.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records connection `id` to `session`, forgetting the session's oldest past the cap.
    pub fn open(&self, session: &str, id: String, now: Instant) {
        let mut sessions = self.lock();
        let open = sessions.entry(session.to_string()).or_default();
        open.push_back((id, now));
        while open.len() > MAX_PER_SESSION {
            open.pop_front();
        }
    }

    /// Forgets connection `id` of `session`; returns how many remain open.
    pub fn close(&self, session: &str, id: &str) -> usize {
        let mut sessions = self.lock();
        let Some(open) = sessions.get_mut(session) else {
            return 0;
        };
        open.retain(|(open_id, _)| open_id != id);
        let remaining = open.len();
        if remaining == 0 {
            sessions.remove(session);
        }
        remaining
    }

    /// Open connections to `session`.
    pub fn count(&self, session: &str) -> usize {
        self.lock().get(session).map_or(0, VecDeque::len)
    }

    /// Open connections of every session (one lock for a whole list).
    pub fn counts(&self) -> HashMap<String, usize> {
        self.lock()
            .iter()
            .map(|(session, open)| (session.clone(), open.len()))
            .collect()
    }

    /// Drops connections older than [`CONNECTION_TTL`] and every session `exists` denies.
    pub fn sweep(&self, now: Instant, exists: impl Fn(&str) -> bool) {
        self.lock().retain(|session, open| {
            open.retain(|(_, opened)| now.saturating_duration_since(*opened) < CONNECTION_TTL);
            !open.is_empty() && exists(session)
        });
    }

    /// Sessions with an entry.
    pub fn sessions(&self) -> usize {
        self.lock().len()
    }
}

/// Why a stream was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SlotRefused {
    #[error("{user} already has {limit} session streams open; close one first")]
    User { user: String, limit: usize },
    #[error("this API replica already serves {0} session streams; retry later")]
    Total(usize),
}

#[derive(Debug, Default)]
struct Open {
    per_user: HashMap<String, usize>,
    total: usize,
}

/// Open WebSocket streams per user and in total, each capped.
#[derive(Debug)]
pub struct StreamSlots {
    per_user: usize,
    total: usize,
    open: Mutex<Open>,
}

/// One open stream's place; given back when dropped.
#[derive(Debug)]
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
    user: String,
}

impl StreamSlots {
    pub fn new(per_user: usize, total: usize) -> Arc<StreamSlots> {
        Arc::new(StreamSlots {
            per_user,
            total,
            open: Mutex::new(Open::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for one more stream of `user`, unless they or the replica are at the cap.
    pub fn acquire(self: &Arc<Self>, user: &str) -> Result<StreamSlot, SlotRefused> {
        let mut open = self.lock();
        if open.total >= self.total {
            return Err(SlotRefused::Total(self.total));
        }
        let mine = open.per_user.get(user).copied().unwrap_or(0);
        if mine >= self.per_user {
            return Err(SlotRefused::User {
                user: user.to_string(),
                limit: self.per_user,
            });
        }
        open.per_user.insert(user.to_string(), mine + 1);
        open.total += 1;
        Ok(StreamSlot {
            slots: self.clone(),
            user: user.to_string(),
        })
    }

    /// Streams open now: (users with one, total).
    pub fn open(&self) -> (usize, usize) {
        let open = self.lock();
        (open.per_user.len(), open.total)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.slots.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(mine) = open.per_user.get_mut(&self.user) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                open.per_user.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_loop_without_disconnects_stays_bounded() {
        let tracker = ConnectionTracker::default();
        let now = Instant::now();
        for n in 0..10_000 {
            tracker.open("s", format!("c{n}"), now);
        }
        assert_eq!(tracker.count("s"), MAX_PER_SESSION);
        // The newest are kept: closing the last one opened counts down.
        assert_eq!(tracker.close("s", "c9999"), MAX_PER_SESSION - 1);
        assert_eq!(
            tracker.close("s", "c0"),
            MAX_PER_SESSION - 1,
            "c0 was forgotten"
        );
    }

    #[test]
    fn closing_the_last_connection_forgets_the_session() {
        let tracker = ConnectionTracker::default();
        let now = Instant::now();
        tracker.open("s", "a".into(), now);
        tracker.open("s", "b".into(), now);
        assert_eq!(tracker.close("s", "a"), 1);
        assert_eq!(tracker.close("s", "b"), 0);
        assert_eq!(tracker.sessions(), 0);
        assert_eq!(tracker.close("never", "x"), 0);
        assert_eq!(tracker.sessions(), 0, "closing nothing creates no entry");
    }

    #[test]
    fn sweeps_drop_expired_connections_and_gone_sessions() {
        let tracker = ConnectionTracker::default();
        let start = Instant::now();
        tracker.open("kept", "old".into(), start);
        tracker.open("kept", "new".into(), start + Duration::from_secs(3600));
        tracker.open("deleted", "x".into(), start);
        tracker.sweep(start + CONNECTION_TTL, |s| s != "deleted");
        assert_eq!(tracker.counts(), HashMap::from([("kept".to_string(), 1)]));
        tracker.sweep(start + CONNECTION_TTL * 2, |_| true);
        assert_eq!(tracker.sessions(), 0);
    }

    #[test]
    fn streams_are_capped_per_user_and_in_total() {
        let slots = StreamSlots::new(2, 3);
        let a1 = slots.acquire("alice");
        let a2 = slots.acquire("alice");
        assert!(a1.is_ok() && a2.is_ok());
        assert_eq!(
            slots.acquire("alice").err(),
            Some(SlotRefused::User {
                user: "alice".into(),
                limit: 2
            })
        );
        let b1 = slots.acquire("bob");
        assert!(b1.is_ok());
        assert_eq!(slots.acquire("carol").err(), Some(SlotRefused::Total(3)));
        drop(a1);
        assert!(
            slots.acquire("alice").is_ok(),
            "a closed stream frees its slot"
        );
        drop((a2, b1));
        assert_eq!(slots.open(), (0, 0), "no entry outlives its streams");
    }
}
