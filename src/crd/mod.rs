//! Custom resource types of group `stream.space`, version `v1alpha1`.

pub mod cel;
pub mod common;
pub mod feature_flag;
pub mod gitsync;
pub mod install;
pub mod node_operation;
pub mod quota_policy;
pub mod session;
pub mod template;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use common::{Condition, ResourceSpec};
pub use feature_flag::{FeatureFlag, FeatureFlagSpec, FeatureFlagStatus, FlagMode, FlagOverride};
pub use gitsync::{GitSync, GitSyncSpec, GitSyncStatus};
pub use node_operation::{
    NodeOperation, NodeOperationPhase, NodeOperationSpec, NodeOperationStatus,
};
pub use quota_policy::{QuotaLimits, QuotaPolicy, QuotaPolicySpec, QuotaSubject, SubjectKind};
pub use session::{Session, SessionPhase, SessionSpec, SessionState, SessionStatus};
pub use template::{Template, TemplateSpec, TemplateStatus};

/// API group of every kind this project defines.
pub const GROUP: &str = "stream.space";

/// Every CRD this binary serves, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        Session::crd(),
        Template::crd(),
        NodeOperation::crd(),
        QuotaPolicy::crd(),
        GitSync::crd(),
        FeatureFlag::crd(),
    ]
}

/// All CRDs as one multi-document YAML stream, as `crds` prints it and the chart ships it.
pub fn to_yaml(crds: &[CustomResourceDefinition]) -> Result<String, serde_saphyr::SerializeError> {
    let mut out = String::new();
    for crd in crds {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(crd)?);
    }
    Ok(out)
}

/// A standalone JSON Schema of one kind, for editors (`# yaml-language-server: $schema=...`)
/// and offline validation: the CRD's structural schema plus the object envelope. CEL rules are
/// left out: they are not JSON Schema (the API server checks them when the object is applied).
pub fn json_schema(crd: &CustomResourceDefinition) -> serde_json::Value {
    let version = crd.spec.versions.first();
    let mut body = version
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or_default();
    install::strip_cel_rules(&mut body);
    let api_version = format!(
        "{}/{}",
        crd.spec.group,
        version.map(|v| v.name.as_str()).unwrap_or_default()
    );
    let mut properties = body
        .get("properties")
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}));
    if let Some(map) = properties.as_object_mut() {
        map.insert(
            "apiVersion".into(),
            serde_json::json!({"const": api_version}),
        );
        map.insert(
            "kind".into(),
            serde_json::json!({"const": crd.spec.names.kind}),
        );
        map.insert(
            "metadata".into(),
            serde_json::json!({
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}}
            }),
        );
    }
    serde_json::json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": crd.spec.names.kind,
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": properties,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// The chart ships one file per CRD; regenerate with `UPDATE_CRDS=1 cargo test --lib crd`.
    #[test]
    fn chart_crds_match_the_types() {
        let dir =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("charts/streamspace-controller/crds");
        for crd in all() {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let path = dir.join(format!("{name}.yaml"));
            let generated = to_yaml(std::slice::from_ref(&crd)).expect("CRD serialises");
            if std::env::var_os("UPDATE_CRDS").is_some() {
                std::fs::create_dir_all(&dir).expect("create chart dir");
                std::fs::write(&path, &generated).expect("write CRD");
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == generated,
                "{} differs from the generated CRD; run `UPDATE_CRDS=1 cargo test --lib crd` and commit",
                path.display()
            );
        }
    }

    /// `manifests-schema/` holds one JSON Schema per kind, regenerated the same way.
    #[test]
    fn manifest_schemas_match_the_types() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests-schema");
        for crd in all() {
            let kind = crd.spec.names.kind.to_lowercase();
            let path = dir.join(format!("{kind}.schema.json"));
            let generated = format!(
                "{}\n",
                serde_json::to_string_pretty(&json_schema(&crd)).expect("schema serialises")
            );
            if std::env::var_os("UPDATE_CRDS").is_some() {
                std::fs::create_dir_all(&dir).expect("create schema dir");
                std::fs::write(&path, &generated).expect("write schema");
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == generated,
                "{} differs from the generated schema; run `UPDATE_CRDS=1 cargo test --lib crd` and commit",
                path.display()
            );
        }
    }

    #[test]
    fn crds_have_the_compatible_names() {
        let session = Session::crd();
        assert_eq!(session.spec.group, "stream.space");
        assert_eq!(session.spec.names.short_names, Some(vec!["ss".to_string()]));
        let template = Template::crd();
        assert_eq!(
            template.spec.names.short_names,
            Some(vec!["tpl".to_string()])
        );
        let columns: Vec<String> = session.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(
            columns,
            ["User", "Template", "State", "Phase", "URL", "Age"]
        );
    }
}
