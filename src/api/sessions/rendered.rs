//! The list items of `GET /api/v1/sessions` (and `/by-tags`), each rendered to JSON once per
//! version of its session instead of once per request.
//!
//! Serialising 10,000 items on every request cost about 23 ms of CPU, a third of it escaping
//! the same strings again. An item's JSON only changes with its session
//! (`metadata.resourceVersion`), except for four values that depend on the request:
//! `activeConnections` and the activity fields `idleDuration`, `isIdle` and `isActive`. So each
//! session's item is serialised once, through the same [`request::session_item`] as
//! `GET /api/v1/sessions/{id}`, and kept without those four values; an answer is those bytes
//! copied into one buffer with the four values written in between. The bytes are the same as
//! serialising the items on every request, key order included.
//!
//! An entry belongs to one session object of the watch cache, which replaces a session's
//! object whenever its `resourceVersion` changes (and on a relist) and shares it otherwise.
//! Entries are found by the object's address, a [`Weak`] to it keeping that address from being
//! reused, so checking 10,000 entries reads neither names nor versions: found by name and
//! compared by `uid` and `resourceVersion`, mostly cache misses, they cost about 4 ms of the
//! 10 ms a request took. Entries of objects no longer listed are dropped whenever there are
//! more entries than sessions, so there are never more. A list of every session reuses the
//! order by name of the previous one while no entry changed, so a steady list neither renders
//! nor sorts.
//!
//! Memory: the item's JSON plus about 210 bytes of bookkeeping (entry, map, order) per
//! session: 696 bytes for each of the benchmark's 10,000 sessions, 489 of them JSON (6.8 MiB,
//! measured with `mallinfo2`). A dropped session object's allocation (not its strings) waits
//! for its entry to go. The cache is part of the sessions API's shared state, one per API
//! instance (and so per namespace it serves).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::{Arc, RwLock, Weak};

use k8s_openapi::jiff::Timestamp;

use super::request;
use crate::api::activity::Clock;
use crate::crd::Session;

/// The keys whose values depend on the request, in the order of an item, each with the comma
/// before it. Only `activeConnections` is preceded by nothing but strings and scalars, and the
/// activity keys are the item's last (scalars only after them), so the first occurrence of the
/// one and the last of the others are the item's own: a `"` inside a JSON string is escaped,
/// so `,"` cannot occur within one.
const REQUEST_KEYS: [&[u8]; 4] = [
    b",\"activeConnections\":",
    b",\"idleDuration\":",
    b",\"isIdle\":",
    b",\"isActive\":",
];

/// Entries of the process, by the session object they were rendered from.
pub(crate) struct ListCache {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    /// By [`address`] of the session object.
    entries: HashMap<usize, Entry>,
    /// Bumped on every change of `entries`.
    version: u64,
    /// Every entry sorted by name, as of the `version` it carries.
    sorted: Option<(u64, Arc<[Arc<Rendered>]>)>,
}

struct Entry {
    /// The object `rendered` was rendered from: held so that its address stays its own.
    _object: Weak<Session>,
    rendered: Arc<Rendered>,
}

/// The key of `session`'s entry.
fn address(session: &Arc<Session>) -> usize {
    Arc::as_ptr(session) as usize
}

/// One session's item, rendered from one version of it.
pub(crate) struct Rendered {
    name: String,
    body: Body,
}

enum Body {
    /// The item's JSON without the values of [`REQUEST_KEYS`]: value `i` goes at `cuts[i]`.
    Split {
        bytes: Box<[u8]>,
        cuts: [usize; 4],
        clock: Clock,
    },
    /// Not splittable (never, unless the item's shape changes): serialised per request.
    Whole(Arc<Session>),
}

impl Rendered {
    /// Renders `session`'s item.
    pub(crate) fn of(session: &Arc<Session>) -> Rendered {
        let body = serde_json::to_vec(&request::session_item(session, 0, Timestamp::UNIX_EPOCH))
            .ok()
            .and_then(|json| split(&json))
            .map_or_else(
                || Body::Whole(session.clone()),
                |(bytes, cuts)| Body::Split {
                    bytes: bytes.into_boxed_slice(),
                    cuts,
                    clock: Clock::of(session),
                },
            );
        Rendered {
            name: session.metadata.name.clone().unwrap_or_default(),
            body,
        }
    }

    /// Bytes of the item with its request-time values, at most.
    fn size(&self) -> usize {
        match &self.body {
            Body::Split { bytes, .. } => bytes.len() + 48,
            Body::Whole(_) => 1024,
        }
    }

    /// Appends the item with `active_connections` at `now` to `out`.
    fn write(
        &self,
        out: &mut Vec<u8>,
        active_connections: usize,
        now: Timestamp,
    ) -> serde_json::Result<()> {
        let (bytes, cuts, clock) = match &self.body {
            Body::Split { bytes, cuts, clock } => (bytes, cuts, clock),
            Body::Whole(session) => {
                let item = request::session_item(session, active_connections, now);
                return serde_json::to_writer(out, &item);
            }
        };
        let (idle, is_idle, is_active) = clock.at(now);
        out.extend_from_slice(&bytes[..cuts[0]]);
        write!(out, "{active_connections}").map_err(serde_json::Error::io)?;
        out.extend_from_slice(&bytes[cuts[0]..cuts[1]]);
        match idle {
            Some(idle) => write!(out, "{idle}").map_err(serde_json::Error::io)?,
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(&bytes[cuts[1]..cuts[2]]);
        out.extend_from_slice(json_bool(is_idle));
        out.extend_from_slice(&bytes[cuts[2]..cuts[3]]);
        out.extend_from_slice(json_bool(is_active));
        out.extend_from_slice(&bytes[cuts[3]..]);
        Ok(())
    }
}

fn json_bool(value: bool) -> &'static [u8] {
    if value { b"true" } else { b"false" }
}

/// `json` (one item) without the values of [`REQUEST_KEYS`], and where each went; `None` if a
/// key is missing.
fn split(json: &[u8]) -> Option<(Vec<u8>, [usize; 4])> {
    let find = |key: &[u8]| json.windows(key.len()).position(|w| w == key);
    let rfind = |key: &[u8]| json.windows(key.len()).rposition(|w| w == key);
    let [connections, idle, is_idle, is_active] = REQUEST_KEYS;
    let starts = [
        find(connections)?,
        rfind(idle)?,
        rfind(is_idle)?,
        rfind(is_active)?,
    ];
    let mut stable = Vec::with_capacity(json.len());
    let mut cuts = [0; 4];
    let mut from = 0;
    for (i, (start, key)) in starts.into_iter().zip(REQUEST_KEYS).enumerate() {
        if start < from {
            return None;
        }
        let value = start + key.len();
        stable.extend_from_slice(&json[from..value]);
        cuts[i] = stable.len();
        from = value
            + json[value..]
                .iter()
                .position(|b| matches!(b, b',' | b'}'))?;
    }
    stable.extend_from_slice(&json[from..]);
    Some((stable, cuts))
}

impl ListCache {
    pub(crate) fn new() -> ListCache {
        ListCache {
            inner: RwLock::new(Inner::default()),
        }
    }

    /// The items of the sessions of `all` (every session object of the watch cache) that
    /// `keep` holds, sorted by name; `keep` `None` for all of them.
    pub(crate) fn items(
        &self,
        all: &[Arc<Session>],
        keep: Option<&dyn Fn(&Session) -> bool>,
    ) -> Arc<[Arc<Rendered>]> {
        let whole = keep.is_none();
        let mut items = Vec::new();
        let mut stale = Vec::new();
        let (entries, version) = {
            let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
            if whole
                && inner.entries.len() == all.len()
                && let Some((version, sorted)) = &inner.sorted
                && *version == inner.version
                && all.iter().all(|s| inner.entries.contains_key(&address(s)))
            {
                // Every session has its entry and there are no others: the entries are the
                // list, and have not changed since it was sorted.
                return sorted.clone();
            }
            for session in all.iter().filter(|s| keep.is_none_or(|keep| keep(s))) {
                match inner.entries.get(&address(session)) {
                    Some(entry) => items.push(entry.rendered.clone()),
                    None => stale.push(session),
                }
            }
            (inner.entries.len(), inner.version)
        };
        let fresh: Vec<(&Arc<Session>, Arc<Rendered>)> = stale
            .into_iter()
            .map(|s| (s, Arc::new(Rendered::of(s))))
            .collect();
        let version = if fresh.is_empty() && entries <= all.len() {
            version
        } else {
            self.update(&fresh, all)
        };
        items.extend(fresh.into_iter().map(|(_, rendered)| rendered));
        items.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        let items: Arc<[Arc<Rendered>]> = items.into();
        if whole {
            let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
            if inner.version == version {
                inner.sorted = Some((version, items.clone()));
            }
        }
        items
    }

    /// Stores `fresh` and drops the entries of objects not in `all` when there are more
    /// entries than sessions; the version of the entries afterwards.
    fn update(&self, fresh: &[(&Arc<Session>, Arc<Rendered>)], all: &[Arc<Session>]) -> u64 {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let mut changed = false;
        for (session, rendered) in fresh {
            let entry = Entry {
                _object: Arc::downgrade(session),
                rendered: rendered.clone(),
            };
            inner.entries.insert(address(session), entry);
            changed = true;
        }
        if inner.entries.len() > all.len() {
            let listed: HashSet<usize> = all.iter().map(address).collect();
            inner.entries.retain(|key, _| listed.contains(key));
            changed = true;
        }
        if changed {
            inner.version = inner.version.wrapping_add(1);
        }
        inner.version
    }
}

/// `{"sessions": [items], "total": n}` at `now`, each item with the open connections
/// `connections` counts for its session name.
pub(crate) fn answer(
    items: &[Arc<Rendered>],
    connections: impl Fn(&str) -> usize,
    now: Timestamp,
) -> serde_json::Result<Vec<u8>> {
    let size = 32 + items.iter().map(|i| i.size() + 1).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(b"{\"sessions\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        item.write(&mut out, connections(&item.name), now)?;
    }
    write!(out, "],\"total\":{}}}", items.len()).map_err(serde_json::Error::io)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// Strings that need escaping, and ones that look like the keys the split looks for.
    const ODD: [&str; 6] = [
        "quote \" and \\ backslash",
        "controls \u{1}\t\n\u{7f}",
        "ünïcödé ☃ 🦀 \u{2028}",
        ",\"activeConnections\":7,\"idleDuration\":",
        "\\\",\"isIdle\":true,\"isActive\":false}",
        "</script><!--",
    ];

    fn session(name: &str, rv: &str, extra: Value) -> Arc<Session> {
        let mut object = json!({
            "apiVersion": "stream.space/v1alpha1", "kind": "Session",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                         "resourceVersion": rv, "creationTimestamp": "2026-01-02T03:04:05Z"},
            "spec": {"user": "alice", "template": "firefox"},
        });
        merge(&mut object, extra);
        Arc::new(serde_json::from_value(object).expect("session"))
    }

    fn merge(into: &mut Value, from: Value) {
        match (into, from) {
            (Value::Object(into), Value::Object(from)) => {
                for (key, value) in from {
                    merge(into.entry(key).or_insert(Value::Null), value);
                }
            }
            (into, from) => *into = from,
        }
    }

    /// Sessions of every shape the item has: odd strings, no status, a full status, idle,
    /// hibernated, idling off.
    fn sessions() -> Vec<Arc<Session>> {
        vec![
            session("a-plain", "1", json!({})),
            session(
                "b-odd",
                "2",
                json!({
                    "metadata": {"generation": 3},
                    "spec": {"tags": ODD, "user": ODD[0], "template": ODD[3], "idleTimeout": "10m",
                             "resources": {"requests": {"memory": "1Gi"}, "limits": {"cpu": "2"}}},
                    "status": {"phase": "Running", "url": ODD[4], "podName": ODD[1],
                               "lastActivity": "2026-01-02T04:00:00Z", "observedGeneration": 3,
                               "reconciledAt": "2026-01-02T04:00:01Z",
                               "conditions": [{"type": "Ready", "status": "True",
                                               "reason": ODD[2], "message": ODD[5],
                                               "lastTransitionTime": "2026-01-02T04:00:01Z"}]},
                }),
            ),
            session(
                "c-hibernated",
                "3",
                json!({"spec": {"state": "hibernated", "persistentHome": false},
                       "status": {"phase": "Hibernated", "lastActivity": "2026-01-01T00:00:00Z"}}),
            ),
            session(
                "d-no-idling",
                "4",
                json!({"spec": {"idleTimeout": "0s", "tags": ["x"]},
                       "status": {"lastActivity": "2026-01-02T03:00:00Z"}}),
            ),
            session(ODD[0], "5", json!({"spec": {"idleTimeout": "soon"}})),
        ]
    }

    /// The answer as serialising every item on every request gives it.
    fn serde_answer(sessions: &[Arc<Session>], active: usize, now: Timestamp) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct List<'a> {
            sessions: Vec<request::SessionItem<'a>>,
            total: usize,
        }
        let mut sorted: Vec<&Arc<Session>> = sessions.iter().collect();
        sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let list = List {
            sessions: sorted
                .iter()
                .map(|s| request::session_item(s, active, now))
                .collect(),
            total: sorted.len(),
        };
        serde_json::to_vec(&list).expect("serialises")
    }

    fn answer_of(items: &[Arc<Rendered>], active: usize, now: Timestamp) -> Vec<u8> {
        answer(items, |_| active, now).expect("renders")
    }

    fn names(items: &[Arc<Rendered>]) -> Vec<&str> {
        items.iter().map(|i| i.name.as_str()).collect()
    }

    fn at(time: &str) -> Timestamp {
        time.parse().expect("time")
    }

    #[test]
    fn answers_are_the_bytes_of_serialising_every_item() {
        let cache = ListCache::new();
        let all = sessions();
        for (active, now) in [
            (0, "2026-01-02T04:00:00Z"),
            (3, "2026-01-02T04:09:59Z"),
            (12, "2026-01-02T04:10:00Z"),
            (1, "2026-01-03T00:00:00Z"),
            (0, "2025-12-31T00:00:00Z"),
        ] {
            let now = at(now);
            let items = cache.items(&all, None);
            assert!(items.iter().all(|i| matches!(i.body, Body::Split { .. })));
            let ours = answer_of(&items, active, now);
            let theirs = serde_answer(&all, active, now);
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs)
            );
        }
        let empty = cache.items(&[], None);
        assert_eq!(
            answer_of(&empty, 0, at("2026-01-02T04:00:00Z")),
            br#"{"sessions":[],"total":0}"#
        );
    }

    #[test]
    fn connections_are_counted_per_session() {
        let all = sessions();
        let items = ListCache::new().items(&all, None);
        let counts = |name: &str| usize::from(name == "c-hibernated") * 4;
        let answer: Value = serde_json::from_slice(
            &answer(&items, counts, at("2026-01-02T04:00:00Z")).expect("renders"),
        )
        .expect("json");
        let active: Vec<(&str, u64)> = answer["sessions"]
            .as_array()
            .expect("list")
            .iter()
            .map(|i| {
                (
                    i["name"].as_str().unwrap_or(""),
                    i["activeConnections"].as_u64().unwrap_or(99),
                )
            })
            .collect();
        assert_eq!(
            active,
            [
                ("a-plain", 0),
                ("b-odd", 0),
                ("c-hibernated", 4),
                ("d-no-idling", 0),
                (ODD[0], 0)
            ]
        );
    }

    #[test]
    fn an_entry_is_rendered_again_only_for_another_object() {
        let cache = ListCache::new();
        let one = session("s", "10", json!({"spec": {"tags": ["old"]}}));
        let first = cache.items(std::slice::from_ref(&one), None);
        let again = cache.items(std::slice::from_ref(&one), None);
        assert!(
            Arc::ptr_eq(&first, &again),
            "neither rendered nor sorted again"
        );
        let filtered = cache.items(std::slice::from_ref(&one), Some(&|_| true));
        assert!(Arc::ptr_eq(&first[0], &filtered[0]));

        // The watch cache's object of a new resourceVersion.
        let changed = session("s", "11", json!({"spec": {"tags": ["new"]}}));
        let after = cache.items(std::slice::from_ref(&changed), None);
        assert!(!Arc::ptr_eq(&first[0], &after[0]));
        let now = at("2026-01-02T04:00:00Z");
        assert_eq!(answer_of(&after, 0, now), serde_answer(&[changed], 0, now));
        assert_eq!(entries(&cache), ["s"], "the old object's entry is gone");

        // Deleted and created again under the same name, even with the same resourceVersion.
        let recreated = session("s", "11", json!({"spec": {"tags": ["other"]}}));
        let items = cache.items(std::slice::from_ref(&recreated), None);
        assert_eq!(
            answer_of(&items, 0, now),
            serde_answer(&[recreated], 0, now)
        );
    }

    fn entries(cache: &ListCache) -> Vec<String> {
        let inner = cache.inner.read().expect("lock");
        let mut names: Vec<String> = inner
            .entries
            .values()
            .map(|e| e.rendered.name.clone())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn entries_of_sessions_gone_are_dropped() {
        let cache = ListCache::new();
        let [a, b, c] = ["a", "b", "c"].map(|n| session(n, "1", json!({})));
        cache.items(&[a.clone(), b.clone(), c.clone()], None);
        assert_eq!(entries(&cache), ["a", "b", "c"]);
        let items = cache.items(&[c.clone(), a.clone()], None);
        assert_eq!(names(&items), ["a", "c"]);
        assert_eq!(entries(&cache), ["a", "c"]);

        // A filtered list renders only what it lists, and prunes as well.
        let d = session("d", "1", json!({"spec": {"user": "bob"}}));
        let bob = |s: &Session| s.spec.user == "bob";
        let items = cache.items(&[d.clone(), a.clone()], Some(&bob));
        assert_eq!(names(&items), ["d"]);
        assert_eq!(entries(&cache), ["a", "d"]);
        // b is gone and e (new) not rendered yet: at most one entry per session.
        let e = session("e", "1", json!({"spec": {"user": "bob"}}));
        cache.items(
            &[a.clone(), e.clone()],
            Some(&|s: &Session| s.spec.user == "alice"),
        );
        assert!(entries(&cache).len() <= 2);
        let items = cache.items(&[e, a], None);
        assert_eq!(names(&items), ["a", "e"]);
        assert_eq!(entries(&cache), ["a", "e"]);
    }

    #[test]
    fn a_list_of_everything_reuses_its_order_until_an_entry_changes() {
        let cache = ListCache::new();
        let all: Vec<Arc<Session>> = ["m", "b", "z", "a"]
            .iter()
            .map(|n| session(n, "1", json!({})))
            .collect();
        let first = cache.items(&all, None);
        assert_eq!(names(&first), ["a", "b", "m", "z"]);
        let mut shuffled = all.clone();
        shuffled.reverse();
        assert!(Arc::ptr_eq(&first, &cache.items(&shuffled, None)));

        // A filtered list that renders nothing keeps the order; one that renders drops it.
        let subset = cache.items(
            &all,
            Some(&|s: &Session| s.metadata.name.as_deref() < Some("c")),
        );
        assert_eq!(names(&subset), ["a", "b"]);
        assert!(Arc::ptr_eq(&first, &cache.items(&all, None)));
        let mut more = all.clone();
        more.push(session("c", "1", json!({})));
        cache.items(
            &more,
            Some(&|s: &Session| s.metadata.name.as_deref() == Some("c")),
        );
        let fresh = cache.items(&more, None);
        assert_eq!(names(&fresh), ["a", "b", "c", "m", "z"]);
        assert!(!Arc::ptr_eq(&first, &fresh));
        assert_eq!(names(&cache.items(&all, None)), ["a", "b", "m", "z"]);
    }

    #[test]
    fn request_time_values_are_spliced_as_serialising_gives_them() {
        // (state, idleTimeout, lastActivity)
        let rows: &[(&str, &str, Option<&str>)] = &[
            ("running", "30m", None),
            ("running", "30m", Some("2026-01-02T04:00:00Z")),
            ("running", "1s", Some("2026-01-02T04:00:00Z")),
            ("hibernated", "30m", Some("2026-01-02T04:00:00Z")),
            ("terminated", "30m", None),
            ("running", "0s", Some("2026-01-01T00:00:00Z")),
            ("running", "", Some("2026-01-01T00:00:00Z")),
            ("running", "bad", Some("2026-01-02T03:59:00Z")),
            ("running", "10m", Some("2030-01-01T00:00:00Z")),
        ];
        let nows = [
            "2026-01-02T04:00:00Z",
            "2026-01-02T04:00:01Z",
            "2026-01-02T04:30:00Z",
            "2026-02-01T00:00:00Z",
        ];
        for (state, timeout, last) in rows {
            let mut extra = json!({"spec": {"state": state, "idleTimeout": timeout}});
            if let Some(last) = last {
                extra["status"] = json!({"lastActivity": last});
            }
            let session = session("s", "1", extra);
            let items = [Arc::new(Rendered::of(&session))];
            assert!(matches!(items[0].body, Body::Split { .. }));
            for now in nows.map(at) {
                assert_eq!(
                    String::from_utf8_lossy(&answer_of(&items, 2, now)),
                    String::from_utf8_lossy(&serde_answer(std::slice::from_ref(&session), 2, now)),
                    "{state} {timeout} {last:?} {now}"
                );
            }
        }
    }

    #[test]
    fn items_without_the_request_keys_are_serialised_per_request() {
        assert_eq!(split(br#"{"name":"x","activeConnections":0}"#), None);
        assert_eq!(
            split(br#"{"a":1,"activeConnections":0,"idleDuration":null,"isIdle":false,"isActive":true}"#),
            Some((
                br#"{"a":1,"activeConnections":,"idleDuration":,"isIdle":,"isActive":}"#.to_vec(),
                [27, 43, 53, 65]
            ))
        );
        let one = session(
            "s",
            "1",
            json!({"status": {"lastActivity": "2026-01-02T04:00:00Z"}}),
        );
        let whole = Arc::new(Rendered {
            name: "s".into(),
            body: Body::Whole(one.clone()),
        });
        let now = at("2026-01-02T05:00:00Z");
        assert_eq!(answer_of(&[whole], 2, now), serde_answer(&[one], 2, now));
    }
}
