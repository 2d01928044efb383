//! Values shared by the session unit tests.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::objects::{SessionContext, SessionSettings};
use crate::crd::{SessionSpec, TemplateSpec};

pub fn spec(state: &str) -> SessionSpec {
    serde_json::from_value(serde_json::json!({
        "user": "alice", "template": "firefox", "state": state
    }))
    .expect("spec")
}

pub fn template() -> TemplateSpec {
    serde_json::from_value(serde_json::json!({
        "displayName": "Firefox", "baseImage": "lscr.io/linuxserver/firefox:latest",
        "env": [{"name": "PUID", "value": "1000"}],
        "defaultResources": {"memory": "2Gi", "cpu": "1000m"}
    }))
    .expect("template")
}

pub fn owner() -> OwnerReference {
    OwnerReference {
        api_version: "stream.space/v1alpha1".into(),
        kind: "Session".into(),
        name: "s1".into(),
        uid: "uid-1".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Runs `f` with the context of a session `s1` in namespace `ns` and default settings.
pub fn with_ctx<R>(spec: &SessionSpec, f: impl FnOnce(&SessionContext<'_>) -> R) -> R {
    let settings = SessionSettings::default();
    let ctx = SessionContext {
        name: "s1",
        namespace: "ns",
        spec,
        owner: owner(),
        settings: &settings,
    };
    f(&ctx)
}
