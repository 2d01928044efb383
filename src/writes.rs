//! What this process last wrote to each object, until its watch cache shows the write.
//!
//! A reconcile decides from watch caches, and a write reaches the cache a moment after the API
//! server answered it. A reconcile that runs in between (triggered by a sibling object, or by
//! the status write of the previous reconcile) sees the object as it was before the write and
//! would write the same thing again. The [`WriteLog`] of a cache remembers, per object, a
//! digest of what was written and the resourceVersion the server answered with, so that second
//! write is skipped.
//!
//! Data model: one entry per `namespace/name` with a pending write. The watch of the cache
//! removes an entry when it delivers the object at the written resourceVersion, or deletes the
//! object, and forgets every entry when it lists again. The cache's store is updated before its
//! watch loop sees the event, and the loop handles events in order, so when the store shows a
//! change made after our write, our write's entry is already gone: a skip never hides a later
//! change. An entry also expires after [`PENDING_FOR`], a bound for a write the watch never
//! reported (a relist that jumped past it, an error reply after the write was made).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest time a write counts as pending; far beyond a watch's delivery delay under load.
pub const PENDING_FOR: Duration = Duration::from_secs(60);

/// Entries kept before expired ones are swept on the next write.
const SWEEP_ABOVE: usize = 1024;

#[derive(Debug)]
struct Entry {
    digest: String,
    resource_version: Option<String>,
    at: Instant,
}

/// Pending writes of one kind, by namespace then name.
#[derive(Debug, Default)]
pub struct WriteLog {
    entries: Mutex<HashMap<String, HashMap<String, Entry>>>,
}

impl WriteLog {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, Entry>>> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a write of `digest` to `namespace/name`, answered with `resource_version`.
    pub fn wrote(
        &self,
        namespace: &str,
        name: &str,
        digest: &str,
        resource_version: Option<String>,
    ) {
        self.wrote_at(namespace, name, digest, resource_version, Instant::now());
    }

    fn wrote_at(
        &self,
        namespace: &str,
        name: &str,
        digest: &str,
        resource_version: Option<String>,
        at: Instant,
    ) {
        let mut entries = self.entries();
        if entries.values().map(HashMap::len).sum::<usize>() > SWEEP_ABOVE {
            for names in entries.values_mut() {
                names.retain(|_, entry| at.duration_since(entry.at) < PENDING_FOR);
            }
            entries.retain(|_, names| !names.is_empty());
        }
        entries.entry(namespace.to_string()).or_default().insert(
            name.to_string(),
            Entry {
                digest: digest.to_string(),
                resource_version,
                at,
            },
        );
    }

    /// True when writing `digest` to `namespace/name` would repeat our last write, which the
    /// cache (now at `cached_version`, `None` when it has no such object) does not show yet.
    pub fn pending(
        &self,
        namespace: &str,
        name: &str,
        digest: &str,
        cached_version: Option<&str>,
    ) -> bool {
        self.pending_at(namespace, name, digest, cached_version, Instant::now())
    }

    fn pending_at(
        &self,
        namespace: &str,
        name: &str,
        digest: &str,
        cached_version: Option<&str>,
        now: Instant,
    ) -> bool {
        let entries = self.entries();
        let Some(entry) = entries.get(namespace).and_then(|names| names.get(name)) else {
            return false;
        };
        let shown =
            entry.resource_version.is_some() && entry.resource_version.as_deref() == cached_version;
        entry.digest == digest && !shown && now.duration_since(entry.at) < PENDING_FOR
    }

    /// The watch delivered `namespace/name` at `resource_version` (`deleted` for a delete):
    /// a pending write it shows, or any pending write of a deleted object, is done.
    pub fn observed(
        &self,
        namespace: Option<&str>,
        name: Option<&str>,
        resource_version: Option<&str>,
        deleted: bool,
    ) {
        let mut entries = self.entries();
        if entries.is_empty() {
            return;
        }
        let namespace = namespace.unwrap_or_default();
        let Some(names) = entries.get_mut(namespace) else {
            return;
        };
        let name = name.unwrap_or_default();
        let done = names.get(name).is_some_and(|entry| {
            deleted
                || (entry.resource_version.is_some()
                    && entry.resource_version.as_deref() == resource_version)
        });
        if done {
            remove(&mut entries, namespace, name);
        }
    }

    /// A write of `namespace/name` failed after it was recorded: nothing of it is pending.
    pub fn forget(&self, namespace: &str, name: &str) {
        remove(&mut self.entries(), namespace, name);
    }

    /// The watch lists again: what it will show is current, so nothing is pending any more.
    pub fn relisted(&self) {
        self.entries().clear();
    }

    /// Writes still pending (for tests and figures).
    pub fn len(&self) -> usize {
        self.entries().values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Objects this process deleted, by UID, until their watch cache has surely dropped them.
///
/// A delete reaches the cache a moment after the server answered it, like any write. A UID is
/// never reused, so a cached object whose UID is here is already gone: a reconcile in between
/// must not act on it (delete it again, count the adoption twice). An entry expires after
/// [`PENDING_FOR`].
#[derive(Debug, Default)]
pub struct Deletions {
    uids: Mutex<HashMap<String, Instant>>,
}

impl Deletions {
    fn uids(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.uids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records that the object with `uid` was deleted.
    pub fn deleted(&self, uid: &str) {
        self.deleted_at(uid, Instant::now());
    }

    fn deleted_at(&self, uid: &str, at: Instant) {
        let mut uids = self.uids();
        if uids.len() > SWEEP_ABOVE {
            uids.retain(|_, when| at.duration_since(*when) < PENDING_FOR);
        }
        uids.insert(uid.to_string(), at);
    }

    /// True when the object with `uid` (`None`: an object without one) was deleted by us.
    pub fn is_deleted(&self, uid: Option<&str>) -> bool {
        self.is_deleted_at(uid, Instant::now())
    }

    fn is_deleted_at(&self, uid: Option<&str>, now: Instant) -> bool {
        uid.and_then(|uid| self.uids().get(uid).copied())
            .is_some_and(|at| now.duration_since(at) < PENDING_FOR)
    }
}

/// Drops the entry of `namespace/name`, and the namespace's map once empty.
fn remove(entries: &mut HashMap<String, HashMap<String, Entry>>, namespace: &str, name: &str) {
    if let Some(names) = entries.get_mut(namespace) {
        names.remove(name);
        if names.is_empty() {
            entries.remove(namespace);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rv(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn pending_until_the_cache_shows_the_write() {
        struct Row {
            case: &'static str,
            digest: &'static str,
            cached: Option<&'static str>,
            age: Duration,
            pending: bool,
        }
        let rows = [
            Row {
                case: "same write, cache still before it",
                digest: "h1",
                cached: Some("5"),
                age: Duration::ZERO,
                pending: true,
            },
            Row {
                case: "same write, object not in the cache yet",
                digest: "h1",
                cached: None,
                age: Duration::ZERO,
                pending: true,
            },
            Row {
                case: "cache shows our write",
                digest: "h1",
                cached: Some("7"),
                age: Duration::ZERO,
                pending: false,
            },
            Row {
                case: "a different write",
                digest: "h2",
                cached: Some("5"),
                age: Duration::ZERO,
                pending: false,
            },
            Row {
                case: "expired",
                digest: "h1",
                cached: Some("5"),
                age: PENDING_FOR,
                pending: false,
            },
        ];
        for row in rows {
            let log = WriteLog::default();
            let at = Instant::now();
            log.wrote_at("ns", "a", "h1", rv("7"), at);
            let pending = log.pending_at("ns", "a", row.digest, row.cached, at + row.age);
            assert_eq!(pending, row.pending, "{}", row.case);
        }
    }

    #[test]
    fn a_deleted_uid_stays_deleted_until_it_expires() {
        let deletions = Deletions::default();
        let at = Instant::now();
        deletions.deleted_at("u1", at);
        assert!(deletions.is_deleted_at(Some("u1"), at));
        assert!(!deletions.is_deleted_at(Some("u2"), at), "another object");
        assert!(
            !deletions.is_deleted_at(None, at),
            "an object without a UID"
        );
        assert!(
            !deletions.is_deleted_at(Some("u1"), at + PENDING_FOR),
            "expired"
        );
    }

    #[test]
    fn other_objects_are_never_pending() {
        let log = WriteLog::default();
        log.wrote("ns", "a", "h1", rv("7"));
        assert!(!log.pending("ns", "b", "h1", None));
        assert!(!log.pending("other", "a", "h1", None));
    }

    #[test]
    fn the_watch_clears_entries_it_shows_deletes_or_relists() {
        let log = WriteLog::default();
        log.wrote("ns", "a", "h1", rv("7"));
        log.observed(Some("ns"), Some("a"), Some("5"), false);
        assert!(log.pending("ns", "a", "h1", Some("5")), "an older event");
        log.observed(Some("ns"), Some("a"), Some("7"), false);
        assert!(log.is_empty(), "our write arrived");
        // Once cleared, a later change (someone edits the object) is decided afresh.
        assert!(!log.pending("ns", "a", "h1", Some("9")));

        log.wrote("ns", "a", "h1", rv("11"));
        log.observed(Some("ns"), Some("a"), Some("10"), true);
        assert!(!log.pending("ns", "a", "h1", None), "deleted: create again");

        log.wrote("ns", "a", "h1", rv("12"));
        log.wrote("ns", "b", "h1", rv("13"));
        log.relisted();
        assert!(log.is_empty());
    }

    #[test]
    fn a_write_without_a_version_waits_for_a_delete_or_expiry_only() {
        let log = WriteLog::default();
        let at = Instant::now();
        log.wrote_at("ns", "a", "delete", None, at);
        assert!(log.pending_at("ns", "a", "delete", Some("3"), at));
        log.observed(Some("ns"), Some("a"), None, false);
        assert!(log.pending_at("ns", "a", "delete", Some("3"), at));
        assert!(!log.pending_at("ns", "a", "delete", Some("3"), at + PENDING_FOR));
        log.observed(Some("ns"), Some("a"), Some("4"), true);
        assert!(log.is_empty());
    }

    #[test]
    fn expired_entries_are_swept_once_many_are_kept() {
        let log = WriteLog::default();
        let old = Instant::now();
        for i in 0..=SWEEP_ABOVE {
            log.wrote_at("ns", &format!("o{i}"), "h", rv("1"), old);
        }
        log.wrote_at("ns", "new", "h", rv("2"), old + PENDING_FOR);
        assert_eq!(log.len(), 1);
    }
}
