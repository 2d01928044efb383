//! `Template` (`templates.stream.space`, short name `tpl`): the image and defaults a Session
//! starts from. The Template reconciler validates it and writes `status.valid` and `message`.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{ResourceSpec, lenient_string_enum, plain};

/// VNC port used when a Template declares none (the Go controller's default).
pub const DEFAULT_VNC_PORT: i32 = 5900;

lenient_string_enum! {
    /// How a client speaks to the session's VNC server.
    VncProtocol {
        Rfb => "rfb",
        Websocket => "websocket",
    }
}

lenient_string_enum! {
    /// Features a Template may advertise.
    Capability {
        Network => "Network",
        Audio => "Audio",
        Clipboard => "Clipboard",
        Usb => "USB",
        Printing => "Printing",
    }
}

#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stream.space",
    version = "v1alpha1",
    kind = "Template",
    plural = "templates",
    singular = "template",
    shortname = "tpl",
    namespaced,
    status = "TemplateStatus",
    printcolumn = r#"{"name":"Display Name","type":"string","jsonPath":".spec.displayName"}"#,
    printcolumn = r#"{"name":"Category","type":"string","jsonPath":".spec.category"}"#,
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.baseImage"}"#,
    printcolumn = r#"{"name":"Memory","type":"string","jsonPath":".spec.defaultResources.memory"}"#,
    printcolumn = r#"{"name":"Valid","type":"boolean","jsonPath":".status.valid"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = require_name_and_image)]
pub struct TemplateSpec {
    #[serde(default)]
    pub display_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// URL of an icon for the catalogue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    /// Container image of the session.
    #[serde(default)]
    pub base_image: String,
    /// Resources for Sessions that set none (requests/limits or the legacy flat form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_resources: Option<ResourceSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<TemplatePort>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<TemplateEnvVar>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<TemplateVolumeMount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnc: Option<VncConfig>,
    /// Legacy name of `vnc` used by many shipped templates; read when `vnc` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kasmvnc: Option<VncConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<Capability>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl TemplateSpec {
    /// The VNC settings in force: `vnc`, else the legacy `kasmvnc`.
    pub fn effective_vnc(&self) -> Option<&VncConfig> {
        self.vnc.as_ref().or(self.kasmvnc.as_ref())
    }

    /// The port sessions of this Template listen on.
    pub fn vnc_port(&self) -> i32 {
        self.effective_vnc()
            .and_then(|vnc| vnc.port)
            .filter(|port| *port != 0)
            .unwrap_or(DEFAULT_VNC_PORT)
    }
}

/// The API server requires `displayName` and `baseImage` (as the chart's CRD always did); Rust
/// reads them leniently so that an object stored without them is reported, not unreadable.
fn require_name_and_image(schema: &mut schemars::Schema) {
    let required = ["displayName", "baseImage"];
    if let Some(properties) = schema.get_mut("properties").and_then(|p| p.as_object_mut()) {
        for name in required {
            if let Some(property) = properties.get_mut(name).and_then(|p| p.as_object_mut()) {
                property.remove("default");
            }
        }
    }
    schema.insert("required".into(), serde_json::json!(required));
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplatePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub container_port: i32,
    #[serde(default = "default_tcp")]
    pub protocol: String,
}

fn default_tcp() -> String {
    "TCP".to_string()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TemplateEnvVar {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateVolumeMount {
    pub name: String,
    pub mount_path: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VncConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "plain::<VncProtocol>")]
    pub protocol: Option<VncProtocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<bool>,
}

fn default_true() -> bool {
    true
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TemplateStatus {
    #[serde(default)]
    pub valid: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}
