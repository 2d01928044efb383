//! The data model of a repository: files, where a document starts, why a commit is
//! rejected, and the validated documents ([`Desired`]): NodeConfigs and whole objects. Plain
//! values, used by every step of the pipeline; [`super::manifest`] is its public face.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

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
