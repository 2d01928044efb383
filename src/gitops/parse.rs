//! Validation of one document against the JSON Schema of its kind, and its conversion into a
//! typed document of [`Desired`]. Adding a kind is one arm in `parse_document` plus its
//! schema.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::Deserialize;
use serde_json::Value;

use super::keys::KeyPolicy;
use super::model::{
    Desired, FEATURE_FLAG, ManagedObject, ManifestError, NODE_CONFIG, NODE_OPERATION, NodeConfig,
    NodeTarget, OWNER_LABEL, ObjectKind, QUOTA_POLICY, RawDocument, Taint,
};
use super::schema::Schema;

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
            let (_, problems) = crate::quota::Policy::from_object(&policy);
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

/// Splits a file into its YAML documents, each with the line it starts on.
pub fn split_documents(content: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (index, line) in content.lines().enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") || trimmed == "..." {
            out.push((start, std::mem::take(&mut current)));
            start = index + 2;
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    out.push((start, current));
    out.into_iter()
        .filter(|(_, text)| {
            text.lines().any(|l| {
                let l = l.trim();
                !l.is_empty() && !l.starts_with('#')
            })
        })
        .map(|(start, text)| {
            // Report the first line with content, not the comment block before it.
            let skip = text
                .lines()
                .take_while(|l| l.trim().is_empty() || l.trim().starts_with('#'))
                .count();
            (start + skip, text)
        })
        .collect()
}
