//! An index of a shared cache by the value of one label, fed by the same watch events as the
//! cache (never a watch of its own): the session reconciler finds a session's pods by their
//! `session` label in time proportional to that session's pods, not to every pod cached.
//!
//! Data model: per (namespace, label value), the objects carrying it, by name; and per
//! (namespace, name), the value the object was indexed under, so an object whose label
//! changes moves and one that loses the label leaves. The objects are the cache's own `Arc`s
//! where the watch loop has them, so the index costs its keys, not a second copy.
//!
//! Events: an applied object is (re)indexed, a deleted one removed; after a relist the index
//! is rebuilt from the cache's new contents ([`LabelIndex::reset`]), so objects deleted while
//! the watch was down leave it as they leave the cache.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use kube::Resource;

/// How the watch delivered an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Created or changed.
    Applied,
    /// Part of a (re)list; the cache holds it only once the list is complete.
    Relisted,
    Deleted,
}

/// (namespace, label value or object name).
type Key = (String, String);

#[derive(Debug)]
struct Entries<K> {
    /// Objects per (namespace, label value), by name.
    by_value: HashMap<Key, BTreeMap<String, Arc<K>>>,
    /// The label value each indexed object is filed under, per (namespace, name).
    value_of: HashMap<Key, String>,
}

impl<K> Default for Entries<K> {
    fn default() -> Self {
        Entries {
            by_value: HashMap::new(),
            value_of: HashMap::new(),
        }
    }
}

/// Objects of kind `K` by the value of label `label`.
#[derive(Debug)]
pub struct LabelIndex<K> {
    label: &'static str,
    entries: RwLock<Entries<K>>,
}

fn object_key<K: Resource>(object: &K) -> Option<Key> {
    let meta = object.meta();
    Some((
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone()?,
    ))
}

impl<K: Resource> LabelIndex<K> {
    pub fn new(label: &'static str) -> Self {
        LabelIndex {
            label,
            entries: RwLock::new(Entries::default()),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Entries<K>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Entries<K>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }

    /// One object as the watch delivered it. Objects of a relist wait for [`Self::reset`] at
    /// its end, as the cache keeps its old contents until then.
    pub fn observe(&self, object: &Arc<K>, seen: Seen) {
        match seen {
            Seen::Applied => self.apply(object.clone()),
            Seen::Deleted => self.delete(object),
            Seen::Relisted => {}
        }
    }

    /// An object the watch applied: filed under its label's value (moved if the value
    /// changed, removed if it has none any more).
    pub fn apply(&self, object: Arc<K>) {
        let Some(key) = object_key(object.as_ref()) else {
            return;
        };
        let value = object
            .meta()
            .labels
            .as_ref()
            .and_then(|l| l.get(self.label));
        let mut entries = self.write();
        remove(&mut entries, &key);
        if let Some(value) = value.cloned() {
            let bucket = (key.0.clone(), value.clone());
            entries
                .by_value
                .entry(bucket)
                .or_default()
                .insert(key.1.clone(), object);
            entries.value_of.insert(key, value);
        }
    }

    /// An object the watch deleted.
    pub fn delete(&self, object: &K) {
        if let Some(key) = object_key(object) {
            remove(&mut self.write(), &key);
        }
    }

    /// The cache's whole contents after a relist: the index holds exactly these.
    pub fn reset(&self, objects: impl IntoIterator<Item = Arc<K>>) {
        let fresh = LabelIndex::new(self.label);
        for object in objects {
            fresh.apply(object);
        }
        let fresh = fresh
            .entries
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        *self.write() = fresh;
    }

    /// The objects in `namespace` whose label has `value`, by name.
    pub fn get(&self, namespace: &str, value: &str) -> Vec<Arc<K>> {
        let key = (namespace.to_string(), value.to_string());
        self.read()
            .by_value
            .get(&key)
            .map(|objects| objects.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Objects indexed, and distinct (namespace, value) pairs.
    #[cfg(test)]
    fn sizes(&self) -> (usize, usize) {
        let entries = self.read();
        (entries.value_of.len(), entries.by_value.len())
    }
}

/// Takes the object at `key` out of the index, dropping its bucket when that empties.
fn remove<K>(entries: &mut Entries<K>, key: &Key) {
    let Some(value) = entries.value_of.remove(key) else {
        return;
    };
    let bucket = (key.0.clone(), value);
    if let Some(objects) = entries.by_value.get_mut(&bucket) {
        objects.remove(&key.1);
        if objects.is_empty() {
            entries.by_value.remove(&bucket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    fn pod(namespace: &str, name: &str, session: Option<&str>) -> Arc<Pod> {
        let mut pod = Pod::default();
        pod.metadata.namespace = Some(namespace.into());
        pod.metadata.name = Some(name.into());
        pod.metadata.labels = session.map(|s| [("session".to_string(), s.to_string())].into());
        Arc::new(pod)
    }

    enum Step {
        Apply(&'static str, &'static str, Option<&'static str>),
        /// Delivered as part of a relist, before its end.
        Listed(&'static str, &'static str, Option<&'static str>),
        Delete(&'static str, &'static str),
        /// A relist: the cache now holds exactly these.
        Reset(Vec<(&'static str, &'static str, Option<&'static str>)>),
    }

    /// (namespace, session, the pods found there by name).
    type Expect = (&'static str, &'static str, Vec<&'static str>);
    /// (why, steps, expected lookups, (objects, buckets) indexed).
    type Row = (&'static str, Vec<Step>, Vec<Expect>, (usize, usize));

    fn names(index: &LabelIndex<Pod>, namespace: &str, session: &str) -> Vec<String> {
        index
            .get(namespace, session)
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect()
    }

    #[test]
    fn applies_deletes_and_relists_keep_the_index_equal_to_the_cache() {
        use Step::*;
        #[rustfmt::skip]
        let rows: Vec<Row> = vec![
            ("apply files a pod under its session",
             vec![Apply("ns", "p1", Some("s1")), Apply("ns", "p2", Some("s1"))],
             vec![("ns", "s1", vec!["p1", "p2"])], (2, 1)),
            ("a repeated apply replaces, never duplicates",
             vec![Apply("ns", "p1", Some("s1")), Apply("ns", "p1", Some("s1"))],
             vec![("ns", "s1", vec!["p1"])], (1, 1)),
            ("a changed label moves the pod",
             vec![Apply("ns", "p1", Some("s1")), Apply("ns", "p1", Some("s2"))],
             vec![("ns", "s1", vec![]), ("ns", "s2", vec!["p1"])], (1, 1)),
            ("a removed label takes it out",
             vec![Apply("ns", "p1", Some("s1")), Apply("ns", "p1", None)],
             vec![("ns", "s1", vec![])], (0, 0)),
            ("a pod without the label is not indexed",
             vec![Apply("ns", "p1", None)],
             vec![("ns", "", vec![])], (0, 0)),
            ("delete removes it and its empty bucket",
             vec![Apply("ns", "p1", Some("s1")), Apply("ns", "p2", Some("s1")), Delete("ns", "p1"), Delete("ns", "p2")],
             vec![("ns", "s1", vec![])], (0, 0)),
            ("deleting an unknown pod is no error",
             vec![Apply("ns", "p1", Some("s1")), Delete("ns", "other")],
             vec![("ns", "s1", vec!["p1"])], (1, 1)),
            ("namespaces are apart",
             vec![Apply("a", "p1", Some("s1")), Apply("b", "p1", Some("s1")), Delete("a", "p1")],
             vec![("a", "s1", vec![]), ("b", "s1", vec!["p1"])], (1, 1)),
            ("a relist drops what went while the watch was down and adds what came",
             vec![Apply("ns", "p1", Some("s1")), Apply("ns", "p2", Some("s2")),
                  Reset(vec![("ns", "p2", Some("s2")), ("ns", "p3", Some("s1")), ("ns", "p4", None)])],
             vec![("ns", "s1", vec!["p3"]), ("ns", "s2", vec!["p2"])], (2, 2)),
            ("changes after a relist apply as before",
             vec![Reset(vec![("ns", "p1", Some("s1"))]), Apply("ns", "p2", Some("s1")), Delete("ns", "p1")],
             vec![("ns", "s1", vec!["p2"])], (1, 1)),
            ("objects of a relist wait for its end, as the cache does",
             vec![Apply("ns", "p1", Some("s1")), Listed("ns", "p2", Some("s1"))],
             vec![("ns", "s1", vec!["p1"])], (1, 1)),
            ("... and the end of the relist holds exactly what it listed",
             vec![Apply("ns", "p1", Some("s1")), Listed("ns", "p2", Some("s1")), Reset(vec![("ns", "p2", Some("s1"))])],
             vec![("ns", "s1", vec!["p2"])], (1, 1)),
            ("an empty relist empties it",
             vec![Apply("ns", "p1", Some("s1")), Reset(vec![])],
             vec![("ns", "s1", vec![])], (0, 0)),
        ];
        for (why, steps, expected, sizes) in rows {
            let index = LabelIndex::new("session");
            for step in steps {
                match step {
                    Apply(namespace, name, session) => {
                        index.observe(&pod(namespace, name, session), Seen::Applied)
                    }
                    Listed(namespace, name, session) => {
                        index.observe(&pod(namespace, name, session), Seen::Relisted)
                    }
                    Delete(namespace, name) => {
                        index.observe(&pod(namespace, name, None), Seen::Deleted)
                    }
                    Reset(all) => index.reset(all.into_iter().map(|(ns, n, s)| pod(ns, n, s))),
                }
            }
            for (namespace, session, pods) in expected {
                assert_eq!(
                    names(&index, namespace, session),
                    pods,
                    "{why}: {namespace}/{session}"
                );
            }
            assert_eq!(index.sizes(), sizes, "{why}: objects and buckets");
        }
    }
}
