//! Overlays: `overlays/<name>/*.yaml` below the sync path, each document an RFC 6902 JSON Patch
//! against one named base document:
//!
//! ```yaml
//! target: {kind: NodeConfig, name: gpu}
//! patch:
//!   - {op: test, path: /spec/labels/tier, value: silver}
//!   - {op: replace, path: /spec/labels/tier, value: gold}
//! ```
//!
//! A patch that names a missing document, whose `test` fails or whose path does not exist
//! rejects the whole commit; the patched document is then validated like any other.

use serde::Deserialize;

use super::limits::{Budget, json_size};
use super::model::{ManifestError, Origin, RawDocument, SourceFile};
use super::parse::split_documents;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OverlayDocument {
    target: Target,
    patch: json_patch::Patch,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Target {
    kind: String,
    name: String,
}

/// Applies every patch document of `file` to `documents`, in order, counting its operations
/// against the commit's budget.
pub(crate) fn apply_file(
    file: &SourceFile,
    documents: &mut [RawDocument],
    budget: &mut Budget,
) -> Result<(), Vec<ManifestError>> {
    let mut errors = Vec::new();
    for (line, text) in split_documents(&file.content) {
        let origin = Origin {
            file: file.path.clone(),
            line,
        };
        budget.count_document(&origin).map_err(|e| vec![e])?;
        match apply_one(&text, documents, budget) {
            Ok(()) => {}
            Err(Failure::Limit(reason)) => {
                return Err(vec![ManifestError::TooLarge {
                    origin: Some(origin),
                    reason,
                }]);
            }
            Err(Failure::Invalid(reason)) => errors.push(ManifestError::Overlay { origin, reason }),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

enum Failure {
    /// Over a limit: the whole commit stops here.
    Limit(String),
    Invalid(String),
}

fn apply_one(
    text: &str,
    documents: &mut [RawDocument],
    budget: &mut Budget,
) -> Result<(), Failure> {
    let limits = budget.limits;
    let overlay: OverlayDocument = serde_saphyr::from_str_with_options(text, limits.yaml_options())
        .map_err(|e| Failure::Invalid(format!("not an overlay document (target + patch): {e}")))?;
    budget.operations += overlay.patch.0.len();
    if budget.operations > limits.max_overlay_operations {
        return Err(Failure::Limit(format!(
            "the overlay holds more than {} operations (--gitsync-max-overlay-operations)",
            limits.max_overlay_operations
        )));
    }
    let Target { kind, name } = &overlay.target;
    let document = documents
        .iter_mut()
        .find(|d| &d.kind == kind && &d.name == name)
        .ok_or_else(|| Failure::Invalid(format!("patch target {kind} {name:?} does not exist")))?;
    let mut patched = document.value.clone();
    // One operation at a time, measuring the document after each: `copy` doubles a value, so
    // a few dozen operations could otherwise build a document of terabytes.
    for operation in &overlay.patch.0 {
        budget
            .check_deadline()
            .map_err(|e| Failure::Limit(e.to_string()))?;
        json_patch::patch(&mut patched, std::slice::from_ref(operation)).map_err(|e| {
            Failure::Invalid(format!(
                "patch of {kind} {name:?} ({}) failed: {e}",
                document.origin
            ))
        })?;
        if json_size(&patched, limits.max_document_bytes) > limits.max_document_bytes {
            return Err(Failure::Limit(format!(
                "patch of {kind} {name:?} makes it larger than {} bytes (--gitsync-max-document-bytes)",
                limits.max_document_bytes
            )));
        }
    }
    if patched.pointer("/metadata/name").and_then(|v| v.as_str()) != Some(name.as_str())
        || patched.get("kind").and_then(|v| v.as_str()) != Some(kind.as_str())
    {
        return Err(Failure::Invalid(format!(
            "patch of {kind} {name:?} may not change its kind or name"
        )));
    }
    document.value = patched;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::manifest::{Desired, NodeTarget, load};
    use super::*;

    fn file(path: &str, content: &str) -> SourceFile {
        SourceFile {
            path: path.into(),
            content: content.into(),
        }
    }

    const BASE: &str = "\
apiVersion: stream.space/v1alpha1
kind: NodeConfig
metadata: {name: gpu}
spec:
  nodeName: node-1
  labels: {tier: silver, zone: a}
";

    fn with_overlay(patch: &str) -> Result<Desired, Vec<ManifestError>> {
        load(
            &[
                file("nodes.yaml", BASE),
                file("overlays/prod/patch.yaml", patch),
            ],
            "",
            Some("prod"),
        )
    }

    #[test]
    fn a_patch_changes_the_value_for_its_overlay_only() {
        let patch = "target: {kind: NodeConfig, name: gpu}\npatch:\n  - {op: test, path: /spec/labels/tier, value: silver}\n  - {op: replace, path: /spec/labels/tier, value: gold}\n  - {op: replace, path: /spec/nodeName, value: node-2}\n";
        let prod = with_overlay(patch).expect("patch applies");
        assert_eq!(prod.node_configs[0].labels["tier"], "gold");
        assert_eq!(
            prod.node_configs[0].target,
            NodeTarget::Name("node-2".into())
        );
        let base = load(
            &[
                file("nodes.yaml", BASE),
                file("overlays/prod/patch.yaml", patch),
            ],
            "",
            None,
        )
        .expect("base is valid");
        assert_eq!(base.node_configs[0].labels["tier"], "silver");
    }

    #[test]
    fn table_of_rejected_overlays() {
        let cases = [
            (
                "target: {kind: NodeConfig, name: gpu}\npatch:\n  - {op: test, path: /spec/labels/tier, value: bronze}\n",
                "value did not match",
            ),
            (
                "target: {kind: NodeConfig, name: gpu}\npatch:\n  - {op: replace, path: /spec/missing/x, value: 1}\n",
                "path is invalid",
            ),
            (
                "target: {kind: NodeConfig, name: cpu}\npatch: []\n",
                "patch target NodeConfig \"cpu\" does not exist",
            ),
            (
                "target: {kind: NodeConfig, name: gpu}\npatch:\n  - {op: replace, path: /metadata/name, value: other}\n",
                "may not change its kind or name",
            ),
            (
                "target: {kind: NodeConfig, name: gpu}\npatch:\n  - {op: frobnicate, path: /spec}\n",
                "not an overlay document",
            ),
            (
                "target: {kind: NodeConfig, name: gpu}\npatch:\n  - {op: add, path: /spec/labels/tier, value: 7}\n",
                "expected string, found number",
            ),
        ];
        for (patch, expected) in cases {
            let errors = with_overlay(patch).expect_err(patch);
            let text = errors[0].to_string();
            assert!(text.contains(expected), "{patch}: {text}");
            assert!(
                text.starts_with("overlays/prod/patch.yaml:1") || text.starts_with("nodes.yaml:1"),
                "{text}"
            );
        }
    }

    #[test]
    fn a_missing_overlay_is_an_error() {
        let errors = load(&[file("nodes.yaml", BASE)], "", Some("staging")).expect_err("missing");
        assert_eq!(errors[0].metric_label(), "overlay_missing");
    }
}
