//! `FeatureFlag` (`featureflags.stream.space`, short name `ff`, cluster-scoped): who acts on one
//! resource type, the legacy API handlers or the controller.
//!
//! One object per resource type, named after it (`sessions`, `idle`, `autostart`, `nodes`,
//! `quota`). The baseline (`spec.mode`, `spec.percent`) usually comes from Git; the break-glass
//! `spec.override` is written only by the API's flags endpoint (a different server-side apply
//! field manager), so a Git sync never erases it. The decision itself is
//! [`crate::ownership::owner`].

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::{Message, Rule};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{lenient_string_enum, lenient_time, plain};

lenient_string_enum! {
    /// Who acts on a resource type. `legacy`: the API's legacy handlers do the Kubernetes
    /// work and the controller does not act; `shadow`: legacy acts and the controller reports
    /// what it would have done, acting on nothing; `controller`: the API writes intent only and
    /// the controller acts (on `percent` of the objects).
    FlagMode {
        Legacy => "legacy",
        Shadow => "shadow",
        Controller => "controller",
    }
}

fn default_percent() -> u8 {
    100
}

/// The names a FeatureFlag may have: one per resource type the ownership flags switch.
pub const FLAG_NAMES: [&str; 5] = ["sessions", "idle", "autostart", "nodes", "quota"];

/// Longest `spec.override.reason` (the flags endpoint refuses longer ones too).
pub const MAX_OVERRIDE_REASON: usize = 1024;

/// CEL: the object is named after a resource type.
fn flag_name_rule() -> Rule {
    let names = FLAG_NAMES.map(|n| format!("'{n}'")).join(", ");
    Rule::new(format!("self.metadata.name in [{names}]")).message(Message::Message(format!(
        "metadata.name must be a resource type: {}",
        FLAG_NAMES.join(", ")
    )))
}

#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    validation = flag_name_rule(),
    group = "stream.space",
    version = "v1alpha1",
    kind = "FeatureFlag",
    plural = "featureflags",
    singular = "featureflag",
    shortname = "ff",
    status = "FeatureFlagStatus",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".status.effectiveMode"}"#,
    printcolumn = r#"{"name":"Percent","type":"integer","jsonPath":".status.effectivePercent"}"#,
    printcolumn = r#"{"name":"Override","type":"string","jsonPath":".status.override"}"#,
    printcolumn = r#"{"name":"Controller","type":"integer","jsonPath":".status.owned.controller"}"#,
    printcolumn = r#"{"name":"Legacy","type":"integer","jsonPath":".status.owned.legacy"}"#,
    printcolumn = r#"{"name":"Shadowed","type":"integer","jsonPath":".status.owned.shadowed"}"#,
    printcolumn = r#"{"name":"Changed","type":"date","jsonPath":".status.lastChanged"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct FeatureFlagSpec {
    /// Baseline mode.
    #[schemars(schema_with = "plain::<FlagMode>")]
    pub mode: FlagMode,
    /// Share of objects (by stable hash bucket) the controller owns or shadows in `controller`
    /// and `shadow` modes.
    #[serde(default = "default_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub percent: u8,
    /// Break-glass value that wins over the baseline until it expires or is cleared.
    #[serde(default, rename = "override", skip_serializing_if = "Option::is_none")]
    pub override_: Option<FlagOverride>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(r"has(self.reason) && self.reason.matches('\\S')")
    .message("spec.override.reason is required: say why the override is needed")
    .field_path(".reason"))]
pub struct FlagOverride {
    #[schemars(schema_with = "plain::<FlagMode>")]
    pub mode: FlagMode,
    #[serde(default = "default_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub percent: u8,
    /// When the override stops applying; never when absent.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_time"
    )]
    pub expires_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_OVERRIDE_REASON))]
    pub reason: Option<String>,
    /// Who set it (the authenticated user of the flags endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_by: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureFlagStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_percent: Option<u8>,
    /// `baseline` or `override`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The override in `spec.override`: its mode while it applies, `expired` once its
    /// `expiresAt` has passed (it stays in spec until cleared); absent without one.
    #[serde(default, rename = "override", skip_serializing_if = "Option::is_none")]
    pub override_: Option<String>,
    /// When the effective mode or percent last changed.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_time"
    )]
    pub last_changed: Option<Time>,
    /// Objects of this type each side owns now, as the controller counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owned: Option<OwnedCounts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OwnedCounts {
    pub controller: u64,
    pub legacy: u64,
    /// Legacy-owned objects the controller shadows (a subset of `legacy`).
    #[serde(default)]
    pub shadowed: u64,
}
