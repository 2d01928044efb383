//! The repository format: YAML files holding documents (several per file, separated by `---`),
//! each validated against the JSON Schema of its kind, then turned into typed documents.
//!
//! Data model: a [`SourceFile`] is a path (relative to the repository root) and its text, read
//! either from a directory (`validate`, `plan`) or from the tree of one commit (the sync).
//! [`load`] reads every `*.yaml`/`*.yml` below the sync path except `overlays/`, applies the
//! chosen overlay (`overlay`), validates and returns the [`Desired`] state, or every problem
//! found with its file and line (`documents` holds the reading, under the commit limits).
//! Adding a kind is one arm in [`parse_document`] plus its schema.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::Deserialize;
use serde_json::Value;

use super::documents::{self};
pub use super::documents::{Rules, read_dir, split_documents};
use super::keys::KeyPolicy;
use super::schema::Schema;

/// API version every document must carry.
pub const API_VERSION: &str = "stream.space/v1alpha1";
/// Directory (below the sync path) that holds one sub-directory per overlay.
pub const OVERLAYS_DIR: &str = "overlays";

/// One file of the repository, path relative to the repository root with `/` separators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    pub path: String,
    pub content: String,
}

/// Where a document starts: `file:line`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    pub line: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// Why a commit (or a directory) is rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("{origin}: not valid YAML: {message}")]
    Yaml { origin: Origin, message: String },
    #[error("{origin}: a document must be a mapping with apiVersion, kind and metadata.name")]
    NotADocument { origin: Origin },
    #[error("{origin}: apiVersion must be {API_VERSION}, found {found:?}")]
    ApiVersion { origin: Origin, found: String },
    #[error("{origin}: unknown kind {kind:?} (supported: {})", SUPPORTED_KINDS.join(", "))]
    UnknownKind { origin: Origin, kind: String },
    #[error("{origin}: {kind} {name:?} is invalid: {reason}")]
    Invalid {
        origin: Origin,
        kind: String,
        name: String,
        reason: String,
    },
    #[error("{origin}: {kind} {name:?} is declared twice (first at {first})")]
    Duplicate {
        origin: Origin,
        kind: String,
        name: String,
        first: Origin,
    },
    #[error("no YAML files below {dir:?}: refusing to treat a wrong path as \"remove everything\"")]
    NoFiles { dir: String },
    #[error("overlay {name:?} does not exist (no YAML files in {dir})")]
    OverlayMissing { name: String, dir: String },
    #[error("{origin}: {reason}")]
    Overlay { origin: Origin, reason: String },
    /// Over a commit limit (`Limits`) or the parse deadline.
    #[error("{}{reason}", origin.as_ref().map(|o| format!("{o}: ")).unwrap_or_default())]
    TooLarge {
        origin: Option<Origin>,
        reason: String,
    },
}

impl ManifestError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            ManifestError::Yaml { .. } => "yaml",
            ManifestError::NotADocument { .. } => "not_a_document",
            ManifestError::ApiVersion { .. } => "api_version",
            ManifestError::UnknownKind { .. } => "unknown_kind",
            ManifestError::Invalid { .. } => "schema",
            ManifestError::Duplicate { .. } => "duplicate",
            ManifestError::OverlayMissing { .. } => "overlay_missing",
            ManifestError::NoFiles { .. } => "no_files",
            ManifestError::Overlay { .. } => "overlay",
            ManifestError::TooLarge { .. } => "limit",
        }
    }

    /// `file:line` of the problem, when it is in one file.
    pub fn location(&self) -> Option<&Origin> {
        match self {
            ManifestError::Yaml { origin, .. }
            | ManifestError::NotADocument { origin }
            | ManifestError::ApiVersion { origin, .. }
            | ManifestError::UnknownKind { origin, .. }
            | ManifestError::Invalid { origin, .. }
            | ManifestError::Duplicate { origin, .. }
            | ManifestError::Overlay { origin, .. } => Some(origin),
            ManifestError::TooLarge { origin, .. } => origin.as_ref(),
            ManifestError::OverlayMissing { .. } | ManifestError::NoFiles { .. } => None,
        }
    }
}

/// Kinds a repository may hold in this version.
pub const SUPPORTED_KINDS: &[&str] = &[NODE_CONFIG, QUOTA_POLICY, NODE_OPERATION, FEATURE_FLAG];
pub const NODE_CONFIG: &str = "NodeConfig";
pub const QUOTA_POLICY: &str = "QuotaPolicy";
pub const NODE_OPERATION: &str = "NodeOperation";
pub const FEATURE_FLAG: &str = "FeatureFlag";
/// Label that marks an object as applied by a GitSync; its value is [`owner_value`].
pub const OWNER_LABEL: &str = "stream.space/gitsync";

/// The value of [`OWNER_LABEL`] for the sync `<namespace>/<name>`: `<namespace>.<name>`, or,
/// when that is longer than a label value may be, its first 50 characters and a hash.
pub fn owner_value(sync_id: &str) -> String {
    use sha2::Digest;
    let value = sync_id.replacen('/', ".", 1);
    if value.len() <= 63 {
        return value;
    }
    let digest = sha2::Sha256::digest(value.as_bytes());
    let hash: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    let head: String = value.chars().take(50).collect();
    format!("{}-{hash}", head.trim_end_matches(['.', '-']))
}

/// Kinds of whole objects a repository manages (as opposed to NodeConfig, which edits nodes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    /// Namespaced: applied into the GitSync's namespace.
    QuotaPolicy,
    /// Cluster-scoped.
    NodeOperation,
    /// Cluster-scoped; only the baseline (`spec.mode`, `spec.percent`) comes from Git, the
    /// override belongs to the API's flags endpoint.
    FeatureFlag,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::QuotaPolicy => QUOTA_POLICY,
            ObjectKind::NodeOperation => NODE_OPERATION,
            ObjectKind::FeatureFlag => FEATURE_FLAG,
        }
    }
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated `QuotaPolicy` or `NodeOperation` document: applied as a whole object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedObject {
    pub kind: ObjectKind,
    pub name: String,
    pub origin: Origin,
    /// `metadata.labels` of the document (the ownership label is added when applied).
    pub labels: BTreeMap<String, String>,
    /// The spec, normalised through the Rust type (defaults filled in), so it compares equal
    /// to the spec of the live object.
    pub spec: Value,
}

static QUOTA_POLICY_SCHEMA: LazyLock<Result<Schema, String>> = LazyLock::new(|| {
    let text = include_str!("../../manifests-schema/quotapolicy.schema.json");
    let value: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Schema::compile(&value).map_err(|e| e.to_string())
});

static NODE_OPERATION_SCHEMA: LazyLock<Result<Schema, String>> = LazyLock::new(|| {
    let text = include_str!("../../manifests-schema/nodeoperation.schema.json");
    let value: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Schema::compile(&value).map_err(|e| e.to_string())
});

static FEATURE_FLAG_SCHEMA: LazyLock<Result<Schema, String>> = LazyLock::new(|| {
    let text = include_str!("../../manifests-schema/featureflag.schema.json");
    let value: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Schema::compile(&value).map_err(|e| e.to_string())
});

/// The part of a live spec Git manages: a FeatureFlag's override is written by the API and is
/// neither compared nor replaced by a sync.
pub fn git_managed_spec(kind: ObjectKind, spec: &Value) -> Value {
    let mut spec = spec.clone();
    if kind == ObjectKind::FeatureFlag
        && let Some(map) = spec.as_object_mut()
    {
        map.remove("override");
    }
    spec
}

/// The label rules of the NodeConfig schema (Kubernetes label keys and values), reused for the
/// `metadata.labels` of whole objects, so a bad label rejects the commit instead of the apply.
static LABELS_SCHEMA: LazyLock<Result<Schema, String>> = LazyLock::new(|| {
    let text = include_str!("../../manifests-schema/nodeconfig.schema.json");
    let value: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let labels = value
        .pointer("/properties/spec/properties/labels")
        .ok_or("the NodeConfig schema has no labels")?;
    Schema::compile(labels).map_err(|e| e.to_string())
});

static OBJECT_NAME: LazyLock<Result<regex::Regex, regex::Error>> =
    LazyLock::new(|| regex::Regex::new("^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"));

static NODE_CONFIG_SCHEMA: LazyLock<Result<Schema, String>> = LazyLock::new(|| {
    let text = include_str!("../../manifests-schema/nodeconfig.schema.json");
    let value: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Schema::compile(&value).map_err(|e| e.to_string())
});

/// A taint wanted on a node; identified by `key` and `effect`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub struct Taint {
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
    pub effect: String,
}

impl Taint {
    /// The identity of a taint: `key:Effect`.
    pub fn id(&self) -> String {
        taint_id(&self.key, &self.effect)
    }
}

pub fn taint_id(key: &str, effect: &str) -> String {
    format!("{key}:{effect}")
}

/// Which nodes a NodeConfig configures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeTarget {
    Name(String),
    /// Every node whose labels include all of these.
    Selector(BTreeMap<String, String>),
}

impl NodeTarget {
    pub fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        match self {
            NodeTarget::Name(wanted) => wanted == name,
            NodeTarget::Selector(selector) => selector
                .iter()
                .all(|(key, value)| labels.get(key) == Some(value)),
        }
    }
}

/// A validated `NodeConfig` document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    pub name: String,
    pub origin: Origin,
    pub target: NodeTarget,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
}

/// Everything a repository declares, after overlays and validation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub node_configs: Vec<NodeConfig>,
    /// QuotaPolicies and NodeOperations, sorted by kind and name.
    pub objects: Vec<ManagedObject>,
}

/// A document before validation: its origin, kind, name and raw value.
#[derive(Clone, Debug)]
pub struct RawDocument {
    pub origin: Origin,
    pub kind: String,
    pub name: String,
    pub value: Value,
}

/// Loads every document below `base` (a directory relative to the repository root, empty for
/// the root), applies `overlay` and validates the result, under the default [`Rules`].
pub fn load(
    files: &[SourceFile],
    base: &str,
    overlay: Option<&str>,
) -> Result<Desired, Vec<ManifestError>> {
    documents::load(files, base, overlay, &Rules::default())
}

/// Validates one document against its kind's schema and adds it to `desired`.
pub(crate) fn parse_document(
    document: RawDocument,
    desired: &mut Desired,
    keys: &KeyPolicy,
) -> Result<(), ManifestError> {
    match document.kind.as_str() {
        NODE_CONFIG => {
            let config = parse_node_config(&document, keys)?;
            desired.node_configs.push(config);
            Ok(())
        }
        QUOTA_POLICY => {
            let object = parse_object::<crate::crd::QuotaPolicySpec>(
                &document,
                ObjectKind::QuotaPolicy,
                &QUOTA_POLICY_SCHEMA,
            )?;
            // The admission webhook's own reading: limits it would ignore reject the commit.
            let spec: crate::crd::QuotaPolicySpec = serde_json::from_value(object.spec.clone())
                .map_err(|e| invalid(&document, format!("/spec: {e}")))?;
            let policy = crate::crd::QuotaPolicy::new(&object.name, spec);
            let (_, problems) = crate::admission::quota::Policy::from_object(&policy);
            if !problems.is_empty() {
                let reasons: Vec<String> = problems
                    .iter()
                    .map(|p| match p.starts_with("subject") {
                        true => format!("/spec/{p}"),
                        false => format!("/spec/limits/{p}"),
                    })
                    .collect();
                return Err(invalid(&document, reasons.join("; ")));
            }
            desired.objects.push(object);
            Ok(())
        }
        NODE_OPERATION => {
            let object = parse_object::<crate::crd::NodeOperationSpec>(
                &document,
                ObjectKind::NodeOperation,
                &NODE_OPERATION_SCHEMA,
            )?;
            if object.spec.get("ttlSecondsAfterFinished").is_some() {
                // The operation would delete itself and the next sync would create it again.
                return Err(invalid(
                    &document,
                    "/spec/ttlSecondsAfterFinished: not allowed in Git; delete the file to end the operation".into(),
                ));
            }
            desired.objects.push(object);
            Ok(())
        }
        FEATURE_FLAG => {
            if document.value.pointer("/spec/override").is_some() {
                return Err(invalid(
                    &document,
                    "/spec/override: set through the API's flags endpoint, not in Git (Git holds the baseline)".into(),
                ));
            }
            let known = crate::ownership::ResourceType::ALL;
            if !known.iter().any(|t| document.name.ends_with(t.as_str())) {
                return Err(invalid(
                    &document,
                    "/metadata/name: must be a resource type (sessions, idle, autostart, nodes, quota), optionally after the installation's flag name prefix".into(),
                ));
            }
            let object = parse_object::<crate::crd::FeatureFlagSpec>(
                &document,
                ObjectKind::FeatureFlag,
                &FEATURE_FLAG_SCHEMA,
            )?;
            let spec: crate::crd::FeatureFlagSpec = serde_json::from_value(object.spec.clone())
                .map_err(|e| invalid(&document, format!("/spec: {e}")))?;
            if let crate::crd::FlagMode::Unknown(mode) = &spec.mode {
                return Err(invalid(
                    &document,
                    format!("/spec/mode: {mode:?} is not one of legacy, shadow, controller"),
                ));
            }
            desired.objects.push(object);
            Ok(())
        }
        _ => Err(ManifestError::UnknownKind {
            origin: document.origin,
            kind: document.kind,
        }),
    }
}

fn invalid(document: &RawDocument, reason: String) -> ManifestError {
    ManifestError::Invalid {
        origin: document.origin.clone(),
        kind: document.kind.clone(),
        name: document.name.clone(),
        reason,
    }
}

/// Validates a whole-object document against the schema of its kind, then reads its spec
/// through the Rust type `S` (which fills in defaults, so it compares with live objects).
fn parse_object<S>(
    document: &RawDocument,
    kind: ObjectKind,
    schema: &Result<Schema, String>,
) -> Result<ManagedObject, ManifestError>
where
    S: serde::de::DeserializeOwned + serde::Serialize,
{
    let schema = schema
        .as_ref()
        .map_err(|e| invalid(document, format!("the {kind} schema is broken: {e}")))?;
    let violations = schema.validate(&document.value);
    if !violations.is_empty() {
        let reasons: Vec<String> = violations.iter().map(ToString::to_string).collect();
        return Err(invalid(document, reasons.join("; ")));
    }
    let name_ok = document.name.len() <= 253
        && OBJECT_NAME
            .as_ref()
            .is_ok_and(|pattern| pattern.is_match(&document.name));
    if !name_ok {
        return Err(invalid(
            document,
            "/metadata/name: must be a lowercase DNS subdomain name".into(),
        ));
    }
    if document.value.pointer("/metadata/namespace").is_some() {
        return Err(invalid(
            document,
            "/metadata/namespace: leave it out; objects are applied into the GitSync's namespace"
                .into(),
        ));
    }
    let labels: BTreeMap<String, String> = match document.value.pointer("/metadata/labels") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(labels) => {
            let schema = LABELS_SCHEMA
                .as_ref()
                .map_err(|e| invalid(document, format!("the label schema is broken: {e}")))?;
            let violations = schema.validate(labels);
            if !violations.is_empty() {
                let reasons: Vec<String> = violations
                    .iter()
                    .map(|v| format!("/metadata/labels{}", v))
                    .collect();
                return Err(invalid(document, reasons.join("; ")));
            }
            serde_json::from_value(labels.clone())
                .map_err(|e| invalid(document, format!("/metadata/labels: {e}")))?
        }
    };
    if labels.contains_key(OWNER_LABEL) {
        return Err(invalid(
            document,
            format!("/metadata/labels: {OWNER_LABEL} is set by the GitSync itself"),
        ));
    }
    let spec = document.value.get("spec").cloned().unwrap_or(Value::Null);
    let typed: S =
        serde_json::from_value(spec).map_err(|e| invalid(document, format!("/spec: {e}")))?;
    let spec = serde_json::to_value(&typed).map_err(|e| invalid(document, e.to_string()))?;
    Ok(ManagedObject {
        kind,
        name: document.name.clone(),
        origin: document.origin.clone(),
        labels,
        spec,
    })
}

fn parse_node_config(
    document: &RawDocument,
    keys: &KeyPolicy,
) -> Result<NodeConfig, ManifestError> {
    let schema = NODE_CONFIG_SCHEMA
        .as_ref()
        .map_err(|e| invalid(document, format!("the NodeConfig schema is broken: {e}")))?;
    let violations = schema.validate(&document.value);
    if !violations.is_empty() {
        let reasons: Vec<String> = violations.iter().map(ToString::to_string).collect();
        return Err(invalid(document, reasons.join("; ")));
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Spec {
        node_name: Option<String>,
        node_selector: Option<Selector>,
        #[serde(default)]
        labels: BTreeMap<String, String>,
        #[serde(default)]
        taints: Vec<Taint>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Selector {
        match_labels: BTreeMap<String, String>,
    }
    let spec: Spec = serde_json::from_value(document.value["spec"].clone())
        .map_err(|e| invalid(document, e.to_string()))?;
    let target = match (spec.node_name, spec.node_selector) {
        (Some(name), None) => NodeTarget::Name(name),
        (None, Some(selector)) => NodeTarget::Selector(selector.match_labels),
        _ => return Err(invalid(document, "needs nodeName or nodeSelector".into())),
    };
    for key in spec.labels.keys() {
        keys.check_key(key)
            .map_err(|reason| invalid(document, format!("/spec/labels: {reason}")))?;
    }
    for taint in &spec.taints {
        keys.check_taint(&taint.key, &taint.effect)
            .map_err(|reason| invalid(document, format!("/spec/taints: {reason}")))?;
    }
    let mut ids = std::collections::BTreeSet::new();
    for taint in &spec.taints {
        if !ids.insert(taint.id()) {
            return Err(invalid(
                document,
                format!("taint {} is listed twice", taint.id()),
            ));
        }
    }
    Ok(NodeConfig {
        name: document.name.clone(),
        origin: document.origin.clone(),
        target,
        labels: spec.labels,
        taints: spec.taints,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn file(path: &str, content: &str) -> SourceFile {
        SourceFile {
            path: path.into(),
            content: content.into(),
        }
    }

    const GOOD: &str = "\
# yaml-language-server: $schema=../manifests-schema/nodeconfig.schema.json
apiVersion: stream.space/v1alpha1
kind: NodeConfig
metadata:
  name: gpu
spec:
  nodeSelector:
    matchLabels: {pool: gpu}
  labels:
    example.com/tier: gold
  taints:
    - {key: gpu, value: \"true\", effect: NoSchedule}
---
apiVersion: stream.space/v1alpha1
kind: NodeConfig
metadata:
  name: one
spec:
  nodeName: node-1
  labels: {zone: a}
";

    #[test]
    fn several_documents_per_file_with_their_lines() {
        let desired = load(&[file("nodes.yaml", GOOD)], "", None).expect("valid");
        assert_eq!(desired.node_configs.len(), 2);
        let gpu = &desired.node_configs[0];
        assert_eq!(gpu.name, "gpu");
        assert_eq!(gpu.origin.line, 2);
        assert_eq!(
            gpu.target,
            NodeTarget::Selector(BTreeMap::from([("pool".into(), "gpu".into())]))
        );
        assert_eq!(gpu.taints[0].id(), "gpu:NoSchedule");
        assert_eq!(desired.node_configs[1].origin.line, 14);
        assert_eq!(
            desired.node_configs[1].target,
            NodeTarget::Name("node-1".into())
        );
    }

    #[test]
    fn table_of_rejected_documents() {
        let header = "apiVersion: stream.space/v1alpha1\nkind: NodeConfig\nmetadata: {name: x}\n";
        let cases = [
            ("a: [unclosed\n".to_string(), "yaml"),
            ("- just\n- a list\n".to_string(), "not_a_document"),
            (
                "apiVersion: v1\nkind: NodeConfig\nmetadata: {name: x}\nspec: {}\n".into(),
                "api_version",
            ),
            (
                "apiVersion: stream.space/v1alpha1\nkind: Mystery\nmetadata: {name: x}\n".into(),
                "unknown_kind",
            ),
            (format!("{header}spec: {{labels: {{a: b}}}}\n"), "schema"),
            (
                format!(
                    "{header}spec: {{nodeName: node-a, nodeSelector: {{matchLabels: {{a: b}}}}}}\n"
                ),
                "schema",
            ),
            (
                format!("{header}spec: {{nodeName: node-a, labels: {{a: 3}}}}\n"),
                "schema",
            ),
            (
                format!("{header}spec: {{nodeName: node-a, labels: {{\"bad key!\": v}}}}\n"),
                "schema",
            ),
            (
                format!(
                    "{header}spec: {{nodeName: node-a, taints: [{{key: k, effect: Sometimes}}]}}\n"
                ),
                "schema",
            ),
            (
                format!(
                    "{header}spec: {{nodeName: node-a, taints: [{{key: k, effect: NoSchedule}}, {{key: k, value: v, effect: NoSchedule}}]}}\n"
                ),
                "schema",
            ),
            (
                format!("{header}spec: {{nodeName: node-a, colour: red}}\n"),
                "schema",
            ),
            (
                format!(
                    "{header}spec: {{nodeName: node-a}}\n---\n{header}spec: {{nodeName: node-b}}\n"
                ),
                "duplicate",
            ),
        ];
        for (content, label) in cases {
            let errors = load(&[file("bad.yaml", &content)], "", None)
                .expect_err(&format!("rejects {content}"));
            assert_eq!(errors[0].metric_label(), label, "{content}: {errors:?}");
            assert!(
                errors[0].to_string().starts_with("bad.yaml:"),
                "{}",
                errors[0]
            );
        }
    }

    #[test]
    fn schema_errors_name_the_field() {
        let content = "apiVersion: stream.space/v1alpha1\nkind: NodeConfig\nmetadata: {name: x}\nspec:\n  nodeName: node-a\n  labels: {zone: 3}\n";
        let errors = load(&[file("dir/bad.yaml", content)], "dir", None).expect_err("invalid");
        assert_eq!(
            errors[0].to_string(),
            "dir/bad.yaml:1: NodeConfig \"x\" is invalid: /spec/labels/zone: expected string, found number"
        );
    }

    #[test]
    fn only_files_below_the_path_count_and_overlays_are_not_documents() {
        let other = "kind: Whatever\n";
        let files = [
            file("clusters/prod/nodes.yaml", GOOD),
            file("clusters/prod/README.md", other),
            file("clusters/prod/overlays/x/p.yaml", other),
            file("elsewhere/nodes.yaml", other),
        ];
        let desired = load(&files, "clusters/prod", None).expect("valid");
        assert_eq!(desired.node_configs.len(), 2);
    }

    #[test]
    fn every_problem_of_a_file_is_reported() {
        let content = "apiVersion: stream.space/v1alpha1\nkind: NodeConfig\nmetadata: {name: x}\nspec: {nodeName: node-a, labels: {zone: 3}}\n---\nkind: Foo\n";
        let errors = load(&[file("bad.yaml", content)], "", None).expect_err("invalid");
        let labels: Vec<&str> = errors.iter().map(ManifestError::metric_label).collect();
        assert_eq!(labels, ["not_a_document", "schema"]);
    }

    #[test]
    fn a_path_without_files_is_rejected_but_an_empty_file_is_not() {
        let errors =
            load(&[file("other/a.yaml", GOOD)], "clusters/prod", None).expect_err("wrong path");
        assert_eq!(errors[0].metric_label(), "no_files");
        let empty = load(
            &[file("clusters/prod/a.yaml", "# nothing yet\n")],
            "clusters/prod",
            None,
        )
        .expect("an empty file is a valid, empty repository");
        assert!(empty.node_configs.is_empty());
    }

    #[test]
    fn quota_policies_and_node_operations_are_objects_with_defaults_filled_in() {
        let content = "\
apiVersion: stream.space/v1alpha1
kind: QuotaPolicy
metadata: {name: students, labels: {team: edu}}
spec:
  subject: {kind: Group, members: [ann, bob]}
  limits: {maxSessions: 2, maxMemoryPerSession: 2Gi}
---
apiVersion: stream.space/v1alpha1
kind: NodeOperation
metadata: {name: maint}
spec: {nodeName: node-1, cordon: true}
---
apiVersion: stream.space/v1alpha1
kind: QuotaPolicy
metadata: {name: everyone}
spec: {subject: {kind: Default}}
";
        let desired = load(&[file("objects.yaml", content)], "", None).expect("valid");
        let names: Vec<(ObjectKind, &str)> = desired
            .objects
            .iter()
            .map(|o| (o.kind, o.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                (ObjectKind::QuotaPolicy, "everyone"),
                (ObjectKind::QuotaPolicy, "students"),
                (ObjectKind::NodeOperation, "maint"),
            ]
        );
        let students = &desired.objects[1];
        assert_eq!(students.labels.get("team").map(String::as_str), Some("edu"));
        assert_eq!(students.spec["limits"]["maxSessions"], 2);
        assert_eq!(students.origin.line, 1);
        // The spec went through the Rust type: it equals what the API server would return.
        let typed: crate::crd::QuotaPolicySpec =
            serde_json::from_value(desired.objects[0].spec.clone()).expect("typed");
        assert_eq!(
            serde_json::to_value(&typed).expect("value"),
            desired.objects[0].spec
        );
    }

    #[test]
    fn table_of_rejected_objects() {
        let qp = |metadata: &str, spec: &str| {
            format!(
                "apiVersion: stream.space/v1alpha1\nkind: QuotaPolicy\nmetadata: {metadata}\nspec: {spec}\n"
            )
        };
        let op = |spec: &str| {
            format!(
                "apiVersion: stream.space/v1alpha1\nkind: NodeOperation\nmetadata: {{name: op}}\nspec: {spec}\n"
            )
        };
        let ff = |metadata: &str, spec: &str| {
            format!(
                "apiVersion: stream.space/v1alpha1\nkind: FeatureFlag\nmetadata: {metadata}\nspec: {spec}\n"
            )
        };
        let default = "{subject: {kind: Default}}";
        let cases = [
            (
                ff(
                    "{name: sessions}",
                    "{mode: controller, override: {mode: legacy}}",
                ),
                "set through the API",
            ),
            (
                ff("{name: gpus}", "{mode: controller}"),
                "must be a resource type",
            ),
            (ff("{name: sessions}", "{mode: sometimes}"), "/spec/mode"),
            (
                ff("{name: sessions}", "{mode: controller, percent: 101}"),
                "maximum",
            ),
            (
                ff("{name: sessions}", "{percent: 10}"),
                "missing required field \"mode\"",
            ),
            (
                qp("{name: q}", "{limits: {}}"),
                "missing required field \"subject\"",
            ),
            (
                qp(
                    "{name: q}",
                    "{subject: {kind: Default}, limits: {maxSessions: -1}}",
                ),
                "less than the minimum 0",
            ),
            (
                qp(
                    "{name: q}",
                    "{subject: {kind: Default}, limits: {maxCpu: true}}",
                ),
                "expected integer or string",
            ),
            (
                qp(
                    "{name: q}",
                    "{subject: {kind: Default}, limits: {maxCpu: lots}}",
                ),
                "/spec/",
            ),
            (
                qp("{name: q}", "{subject: {kind: User}}"),
                "/spec/subject.name: a User policy needs a name",
            ),
            (qp("{name: q, namespace: other}", default), "leave it out"),
            (qp("{name: Big_Name}", default), "DNS subdomain"),
            (
                qp("{name: q, labels: {stream.space/gitsync: x}}", default),
                "set by the GitSync itself",
            ),
            (
                qp("{name: q, labels: {a: 1}}", default),
                "/metadata/labels/a: expected string",
            ),
            (
                qp("{name: q, labels: {\"bad key!\": v}}", default),
                "/metadata/labels/bad key!",
            ),
            (
                qp("{name: q, labels: {a: \"not valid!\"}}", default),
                "does not match the pattern",
            ),
            (op("{cordon: true}"), "missing required field \"nodeName\""),
            (
                op("{nodeName: node-1, cordon: true, ttlSecondsAfterFinished: 60}"),
                "not allowed in Git",
            ),
            (
                op("{nodeName: node-1, drain: {gracePeriodSeconds: -5}}"),
                "gracePeriodSeconds",
            ),
        ];
        for (content, reason) in cases {
            let errors = load(&[file("bad.yaml", &content)], "", None)
                .expect_err(&format!("rejects {content}"));
            assert_eq!(errors[0].metric_label(), "schema", "{content}: {errors:?}");
            assert!(
                errors[0].to_string().contains(reason),
                "{content}: {}",
                errors[0]
            );
        }
    }

    #[test]
    fn feature_flags_carry_the_baseline_only() {
        let content = "apiVersion: stream.space/v1alpha1\nkind: FeatureFlag\nmetadata: {name: team-a-sessions}\nspec: {mode: controller, percent: 30}\n";
        let desired = load(&[file("flags.yaml", content)], "", None).expect("valid");
        assert_eq!(desired.objects.len(), 1);
        assert_eq!(desired.objects[0].kind, ObjectKind::FeatureFlag);
        assert_eq!(
            desired.objects[0].spec,
            serde_json::json!({"mode": "controller", "percent": 30})
        );
        let live = serde_json::json!({"mode": "controller", "percent": 30, "override": {"mode": "legacy"}});
        assert_eq!(
            git_managed_spec(ObjectKind::FeatureFlag, &live),
            desired.objects[0].spec
        );
        // Other kinds are compared whole.
        assert_eq!(git_managed_spec(ObjectKind::QuotaPolicy, &live), live);
    }

    #[test]
    fn the_owner_label_value_fits_a_label() {
        assert_eq!(owner_value("team-a/nodes"), "team-a.nodes");
        let long = format!("ns/{}", "n".repeat(120));
        let value = owner_value(&long);
        assert!(value.len() <= 63, "{value}");
        assert_ne!(value, owner_value(&format!("ns/{}", "n".repeat(121))));
        assert!(value.starts_with("ns.nnn"));
    }

    #[test]
    fn comment_only_documents_are_skipped() {
        let docs = split_documents("# header\n---\n\n# note\nkind: A\n---\n");
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].0, 5);
    }
}
