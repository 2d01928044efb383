//! A small time-bounded, size-bounded map of recent authentication and authorisation answers,
//! so that a client's heartbeat every few seconds does not cost a TokenReview and a
//! SubjectAccessReview each time.
//!
//! The clock is passed in (`now`) rather than read, so expiry is tested without waiting.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Entries live for `ttl` after insertion; at `capacity`, expired entries are dropped first,
/// then the one closest to expiry.
#[derive(Debug)]
pub struct TtlCache<K, V> {
    entries: HashMap<K, (V, Instant)>,
    ttl: Duration,
    capacity: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        TtlCache {
            entries: HashMap::new(),
            ttl,
            capacity: capacity.max(1),
        }
    }

    /// The value stored for `key` unless it has expired at `now` (an expired entry is removed).
    pub fn get(&mut self, key: &K, now: Instant) -> Option<V> {
        match self.entries.get(key) {
            Some((value, expires)) if now < *expires => Some(value.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&mut self, key: K, value: V, now: Instant) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries.retain(|_, (_, expires)| now < *expires);
            if self.entries.len() >= self.capacity {
                let soonest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, expires))| *expires)
                    .map(|(key, _)| key.clone());
                if let Some(soonest) = soonest {
                    self.entries.remove(&soonest);
                }
            }
        }
        self.entries.insert(key, (value, now + self.ttl));
    }

    pub fn remove(&mut self, key: &K) {
        self.entries.remove(key);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Yes/no answers kept in two bounded caches, one per answer: a flood of keys that are refused
/// (random tokens cost an attacker nothing) can only push out other refusals, never an
/// accepted answer, so legitimate callers keep hitting the cache during the flood.
#[derive(Debug)]
pub struct SplitCache<K, V> {
    accepted: TtlCache<K, V>,
    rejected: TtlCache<K, ()>,
}

impl<K: Eq + Hash + Clone, V: Clone> SplitCache<K, V> {
    /// `capacity` entries of each answer, each kept for `ttl`.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        SplitCache {
            accepted: TtlCache::new(ttl, capacity),
            rejected: TtlCache::new(ttl, capacity),
        }
    }

    /// `Some(Some(value))` accepted, `Some(None)` refused, `None` unknown or expired.
    pub fn get(&mut self, key: &K, now: Instant) -> Option<Option<V>> {
        if let Some(value) = self.accepted.get(key, now) {
            return Some(Some(value));
        }
        self.rejected.get(key, now).map(|()| None)
    }

    /// Records the answer for `key` (`None`: refused), replacing any earlier one.
    pub fn insert(&mut self, key: K, answer: Option<V>, now: Instant) {
        match answer {
            Some(value) => {
                self.rejected.remove(&key);
                self.accepted.insert(key, value, now);
            }
            None => {
                self.accepted.remove(&key);
                self.rejected.insert(key, (), now);
            }
        }
    }

    /// Entries held: (accepted, refused).
    pub fn sizes(&self) -> (usize, usize) {
        (self.accepted.len(), self.rejected.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    #[test]
    fn entries_expire_after_the_ttl() {
        let start = Instant::now();
        let mut cache = TtlCache::new(TTL, 8);
        cache.insert("a", 1, start);
        assert_eq!(cache.get(&"a", start), Some(1));
        assert_eq!(cache.get(&"a", start + Duration::from_secs(9)), Some(1));
        assert_eq!(cache.get(&"a", start + TTL), None);
        assert!(cache.is_empty(), "an expired entry is removed when read");
    }

    #[test]
    fn reinserting_renews_the_entry() {
        let start = Instant::now();
        let mut cache = TtlCache::new(TTL, 8);
        cache.insert("a", 1, start);
        cache.insert("a", 2, start + Duration::from_secs(8));
        assert_eq!(cache.get(&"a", start + Duration::from_secs(15)), Some(2));
        assert_eq!(cache.get(&"a", start + Duration::from_secs(18)), None);
    }

    #[test]
    fn size_is_bounded_expired_entries_go_first() {
        let start = Instant::now();
        let mut cache = TtlCache::new(TTL, 3);
        cache.insert("old", 0, start);
        cache.insert("b", 1, start + Duration::from_secs(5));
        cache.insert("c", 2, start + Duration::from_secs(6));
        // "old" has expired at 11 s: it makes room, the live entries stay.
        let later = start + Duration::from_secs(11);
        cache.insert("d", 3, later);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&"old", later), None);
        assert_eq!(cache.get(&"b", later), Some(1));
        assert_eq!(cache.get(&"c", later), Some(2));
        assert_eq!(cache.get(&"d", later), Some(3));
    }

    #[test]
    fn when_nothing_expired_the_soonest_to_expire_is_evicted() {
        let start = Instant::now();
        let mut cache = TtlCache::new(TTL, 2);
        cache.insert("a", 1, start);
        cache.insert("b", 2, start + Duration::from_secs(1));
        cache.insert("c", 3, start + Duration::from_secs(2));
        let now = start + Duration::from_secs(2);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&"a", now), None);
        assert_eq!(cache.get(&"b", now), Some(2));
        assert_eq!(cache.get(&"c", now), Some(3));
        // Updating a present key at capacity evicts nothing.
        cache.insert("b", 4, now);
        assert_eq!(cache.get(&"c", now), Some(3));
        assert_eq!(cache.get(&"b", now), Some(4));
    }

    #[test]
    fn refusals_never_evict_accepted_answers() {
        let start = Instant::now();
        let mut cache = SplitCache::new(TTL, 4);
        for user in 0..4 {
            cache.insert(format!("good-{user}"), Some(user), start);
        }
        // Ten thousand distinct refused keys, one a microsecond, as from a flood of random
        // tokens.
        for n in 0..10_000 {
            cache.insert(format!("bad-{n}"), None, start + Duration::from_micros(n));
        }
        let now = start + Duration::from_millis(10);
        assert_eq!(cache.sizes(), (4, 4));
        for user in 0..4 {
            assert_eq!(cache.get(&format!("good-{user}"), now), Some(Some(user)));
        }
        assert_eq!(cache.get(&"bad-9999".to_string(), now), Some(None));
        assert_eq!(
            cache.get(&"bad-0".to_string(), now),
            None,
            "the oldest went first"
        );
    }

    #[test]
    fn a_new_answer_replaces_the_other_kind() {
        let start = Instant::now();
        let mut cache = SplitCache::new(TTL, 4);
        cache.insert("a", Some(1), start);
        cache.insert("a", None, start);
        assert_eq!(cache.get(&"a", start), Some(None));
        cache.insert("a", Some(2), start);
        assert_eq!(cache.get(&"a", start), Some(Some(2)));
        assert_eq!(cache.sizes(), (1, 0));
        assert_eq!(cache.get(&"a", start + TTL), None);
    }
}
