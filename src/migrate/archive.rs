//! The backup archive, as pure functions.
//!
//! An archive is a multi-document YAML stream that `kubectl apply -f` also accepts: one
//! document per object, ordered by kind (in restore order: flags and quota policies before
//! the templates and sessions that depend on them), then namespace, then name. Each object
//! keeps `apiVersion`, `kind`, `spec` and the metadata a user sets (name, namespace, labels,
//! annotations); what the API server sets (uid, resourceVersion, generation, managedFields,
//! creationTimestamp, owner references, finalizers) is stripped. The status and the generation
//! at backup time travel as two annotations ([`STATUS_ANNOTATION`], [`GENERATION_ANNOTATION`])
//! so that restore can report them; restore removes them again.

use std::collections::BTreeMap;

use kube::api::ApiResource;
use serde_json::{Map, Value};

use crate::crd::{FeatureFlag, GitSync, QuotaPolicy, Session, Template};

/// The status of the object at backup time, as JSON.
pub const STATUS_ANNOTATION: &str = "stream.space/backup-status";
/// `metadata.generation` of the object at backup time.
pub const GENERATION_ANNOTATION: &str = "stream.space/backup-generation";
/// Metadata fields a user sets; everything else in `metadata` is the API server's.
const KEPT_METADATA: [&str; 4] = ["name", "namespace", "labels", "annotations"];

/// One kind the archive holds.
#[derive(Clone, Debug)]
pub struct ArchivedKind {
    pub kind: &'static str,
    pub resource: ApiResource,
    pub namespaced: bool,
}

/// The archived kinds, in restore order.
pub fn kinds() -> Vec<ArchivedKind> {
    let kind = |kind, resource, namespaced| ArchivedKind {
        kind,
        resource,
        namespaced,
    };
    vec![
        kind("FeatureFlag", ApiResource::erase::<FeatureFlag>(&()), false),
        kind("QuotaPolicy", ApiResource::erase::<QuotaPolicy>(&()), true),
        kind("Template", ApiResource::erase::<Template>(&()), true),
        kind("GitSync", ApiResource::erase::<GitSync>(&()), true),
        kind("Session", ApiResource::erase::<Session>(&()), true),
    ]
}

/// Position of `kind` in restore order, `None` for a kind the archive does not hold.
pub fn kind_rank(kind: &str) -> Option<usize> {
    kinds().iter().position(|k| k.kind == kind)
}

/// One object of an archive, as restore reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    /// The object to create: the archived document without the two backup annotations.
    pub object: Value,
    /// Status at backup time.
    pub status: Option<Value>,
    /// `metadata.generation` at backup time.
    pub generation: Option<i64>,
}

impl Entry {
    /// `Kind namespace/name` (or `Kind name` for cluster-scoped objects), for messages.
    pub fn describe(&self) -> String {
        match &self.namespace {
            Some(namespace) => format!("{} {namespace}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }

    /// `spec` of the archived object (`null` when it has none).
    pub fn spec(&self) -> &Value {
        self.object.get("spec").unwrap_or(&Value::Null)
    }

    /// The phase recorded in the archived status, if any.
    pub fn phase(&self) -> Option<&str> {
        self.status.as_ref()?.get("phase")?.as_str()
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ArchiveError {
    #[error("not valid YAML: {0}")]
    Yaml(String),
    #[error("document {index}: {reason}")]
    Document { index: usize, reason: String },
}

/// The archived form of a live object (as JSON): server-set metadata stripped, status and
/// generation moved into annotations.
pub fn strip(object: &Value) -> Value {
    let mut out = Map::new();
    let Some(fields) = object.as_object() else {
        return Value::Object(out);
    };
    for (key, value) in fields {
        match key.as_str() {
            "status" | "metadata" => {}
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    let metadata = fields.get("metadata").and_then(Value::as_object);
    let mut kept = Map::new();
    for key in KEPT_METADATA {
        if let Some(value) = metadata.and_then(|m| m.get(key))
            && !value.is_null()
        {
            kept.insert(key.to_string(), value.clone());
        }
    }
    let mut annotations = kept
        .get("annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(status) = fields.get("status").filter(|s| !s.is_null()) {
        annotations.insert(STATUS_ANNOTATION.into(), Value::from(status.to_string()));
    }
    if let Some(generation) = metadata
        .and_then(|m| m.get("generation"))
        .and_then(Value::as_i64)
    {
        annotations.insert(
            GENERATION_ANNOTATION.into(),
            Value::from(generation.to_string()),
        );
    }
    if !annotations.is_empty() {
        kept.insert("annotations".into(), Value::Object(annotations));
    }
    out.insert("metadata".into(), Value::Object(kept));
    Value::Object(out)
}

/// Sort key of an archived object: restore rank of its kind, namespace, name.
fn sort_key(object: &Value) -> (usize, String, String) {
    let text = |pointer: &str| {
        object
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    (
        kind_rank(&text("/kind")).unwrap_or(usize::MAX),
        text("/metadata/namespace"),
        text("/metadata/name"),
    )
}

/// Archived objects in the archive's stable order.
pub fn sorted(mut objects: Vec<Value>) -> Vec<Value> {
    objects.sort_by_key(sort_key);
    objects
}

/// Objects per kind, in restore order (kinds with none included, so a summary shows zeros).
pub fn counts<'a>(kinds_of: impl IntoIterator<Item = &'a str>) -> Vec<(&'static str, usize)> {
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for kind in kinds_of {
        if let Some(rank) = kind_rank(kind) {
            *counts.entry(rank).or_default() += 1;
        }
    }
    kinds()
        .iter()
        .enumerate()
        .map(|(rank, k)| (k.kind, counts.get(&rank).copied().unwrap_or(0)))
        .collect()
}

/// One line per kind: `Session: 3`.
pub fn summary(counts: &[(&str, usize)]) -> String {
    counts
        .iter()
        .map(|(kind, n)| format!("  {kind}: {n}\n"))
        .collect()
}

/// The archive text of already stripped and sorted objects.
pub fn to_yaml(objects: &[Value]) -> Result<String, serde_saphyr::SerializeError> {
    let mut out = format!(
        "# StreamSpace backup: {} objects (streamspace-controller migrate backup)\n",
        objects.len()
    );
    for object in objects {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(object)?);
    }
    Ok(out)
}

/// Reads an archive: every document must be a `stream.space/v1alpha1` object of an archived
/// kind, with a name (and a namespace for namespaced kinds).
pub fn parse(text: &str) -> Result<Vec<Entry>, ArchiveError> {
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| ArchiveError::Yaml(e.to_string()))?;
    let mut entries = Vec::new();
    for (index, document) in documents.into_iter().enumerate() {
        if document.is_null() {
            continue;
        }
        entries.push(entry(document).map_err(|reason| ArchiveError::Document {
            index: index + 1,
            reason,
        })?);
    }
    Ok(entries)
}

fn entry(mut object: Value) -> Result<Entry, String> {
    let text = |object: &Value, pointer: &str| {
        object
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let api_version = text(&object, "/apiVersion").unwrap_or_default();
    let expected = format!("{}/v1alpha1", crate::crd::GROUP);
    if api_version != expected {
        return Err(format!("apiVersion {api_version:?}, expected {expected:?}"));
    }
    let kind = text(&object, "/kind").unwrap_or_default();
    let archived = kinds()
        .into_iter()
        .find(|k| k.kind == kind)
        .ok_or_else(|| format!("kind {kind:?} is not one the archive holds"))?;
    let name = text(&object, "/metadata/name").ok_or("no metadata.name")?;
    let namespace = text(&object, "/metadata/namespace");
    match (archived.namespaced, &namespace) {
        (true, None) => return Err(format!("{kind} {name} has no metadata.namespace")),
        (false, Some(_)) => return Err(format!("{kind} {name} is cluster-scoped")),
        _ => {}
    }
    let mut status = None;
    let mut generation = None;
    if let Some(annotations) = object
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        if let Some(Value::String(json)) = annotations.remove(STATUS_ANNOTATION) {
            status = Some(
                serde_json::from_str(&json)
                    .map_err(|e| format!("{kind} {name}: {STATUS_ANNOTATION} is not JSON: {e}"))?,
            );
        }
        if let Some(Value::String(number)) = annotations.remove(GENERATION_ANNOTATION) {
            generation = Some(number.parse().map_err(|_| {
                format!("{kind} {name}: {GENERATION_ANNOTATION} {number:?} is not a number")
            })?);
        }
        if annotations.is_empty()
            && let Some(metadata) = object
                .pointer_mut("/metadata")
                .and_then(Value::as_object_mut)
        {
            metadata.remove("annotations");
        }
    }
    Ok(Entry {
        kind,
        namespace,
        name,
        object,
        status,
        generation,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn live_session(namespace: &str, name: &str) -> Value {
        json!({
            "apiVersion": "stream.space/v1alpha1",
            "kind": "Session",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": "0b6f",
                "resourceVersion": "41",
                "generation": 3,
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "managedFields": [{"manager": "x"}],
                "finalizers": ["f"],
                "labels": {"user": "alice"},
                "annotations": {"note": "kept"},
            },
            "spec": {"user": "alice", "template": "firefox", "state": "running"},
            "status": {"phase": "Running", "podName": "ss-s1-abc"},
        })
    }

    #[test]
    fn strip_keeps_what_users_set_and_moves_status_into_an_annotation() {
        let stripped = strip(&live_session("ns", "s1"));
        assert_eq!(
            stripped,
            json!({
                "apiVersion": "stream.space/v1alpha1",
                "kind": "Session",
                "metadata": {
                    "name": "s1",
                    "namespace": "ns",
                    "labels": {"user": "alice"},
                    "annotations": {
                        "note": "kept",
                        STATUS_ANNOTATION: r#"{"phase":"Running","podName":"ss-s1-abc"}"#,
                        GENERATION_ANNOTATION: "3",
                    },
                },
                "spec": {"user": "alice", "template": "firefox", "state": "running"},
            })
        );
    }

    #[test]
    fn objects_without_status_or_annotations_get_none() {
        let flag = json!({
            "apiVersion": "stream.space/v1alpha1", "kind": "FeatureFlag",
            "metadata": {"name": "idle", "uid": "u"},
            "spec": {"mode": "legacy"},
        });
        assert_eq!(
            strip(&flag),
            json!({
                "apiVersion": "stream.space/v1alpha1", "kind": "FeatureFlag",
                "metadata": {"name": "idle"},
                "spec": {"mode": "legacy"},
            })
        );
    }

    #[test]
    fn order_is_restore_rank_then_namespace_then_name() {
        let object = |kind: &str, namespace: Option<&str>, name: &str| json!({"kind": kind, "metadata": {"name": name, "namespace": namespace}});
        let order: Vec<(String, String)> = sorted(vec![
            object("Session", Some("b"), "a"),
            object("Session", Some("a"), "z"),
            object("Template", Some("z"), "t"),
            object("FeatureFlag", None, "sessions"),
            object("FeatureFlag", None, "idle"),
            object("GitSync", Some("a"), "g"),
            object("QuotaPolicy", Some("a"), "q"),
        ])
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap_or_default().to_string(),
                o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
        let expected = [
            ("FeatureFlag", "idle"),
            ("FeatureFlag", "sessions"),
            ("QuotaPolicy", "q"),
            ("Template", "t"),
            ("GitSync", "g"),
            ("Session", "z"),
            ("Session", "a"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(k, n)| (k.to_string(), n.to_string()))
            .collect();
        assert_eq!(order, expected);
    }

    #[test]
    fn yaml_round_trip_gives_back_the_object_status_and_generation() {
        let archived = vec![
            strip(&live_session("ns", "s1")),
            strip(&live_session("ns", "s2")),
        ];
        let text = to_yaml(&archived).expect("serialises");
        assert!(
            text.starts_with("# StreamSpace backup: 2 objects"),
            "{text}"
        );
        let entries = parse(&text).expect("parses");
        assert_eq!(entries.len(), 2);
        let first = &entries[0];
        assert_eq!(first.describe(), "Session ns/s1");
        assert_eq!(first.generation, Some(3));
        assert_eq!(first.phase(), Some("Running"));
        assert_eq!(
            first.object["metadata"]["annotations"],
            json!({"note": "kept"}),
            "backup annotations are removed for restore"
        );
        assert_eq!(first.spec()["template"], "firefox");
    }

    #[test]
    fn bad_documents_are_refused_with_their_position() {
        let cases = [
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
                "apiVersion",
            ),
            (
                "apiVersion: stream.space/v1alpha1\nkind: NodeOperation\nmetadata: {name: a}\n",
                "not one the archive holds",
            ),
            (
                "apiVersion: stream.space/v1alpha1\nkind: Session\nmetadata: {name: a}\n",
                "no metadata.namespace",
            ),
            (
                "apiVersion: stream.space/v1alpha1\nkind: FeatureFlag\nmetadata: {name: idle, namespace: x}\n",
                "cluster-scoped",
            ),
            (
                "apiVersion: stream.space/v1alpha1\nkind: Session\nmetadata: {namespace: x}\n",
                "no metadata.name",
            ),
            (
                "apiVersion: stream.space/v1alpha1\nkind: Session\nmetadata: {name: a, namespace: x, annotations: {stream.space/backup-generation: two}}\n",
                "not a number",
            ),
        ];
        for (text, reason) in cases {
            let error = parse(&format!("---\n{text}")).expect_err(text);
            let message = error.to_string();
            assert!(message.starts_with("document 1: "), "{message}");
            assert!(message.contains(reason), "{text}: {message}");
        }
        assert!(matches!(parse("a: [b"), Err(ArchiveError::Yaml(_))));
    }

    #[test]
    fn counts_name_every_kind() {
        let counts = counts(["Session", "Session", "Template", "Other"]);
        assert_eq!(
            counts,
            vec![
                ("FeatureFlag", 0),
                ("QuotaPolicy", 0),
                ("Template", 1),
                ("GitSync", 0),
                ("Session", 2),
            ]
        );
        assert!(summary(&counts).contains("  Session: 2\n"));
    }
}
