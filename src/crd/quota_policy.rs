//! `QuotaPolicy` (`quotapolicies.stream.space`, short name `qp`): the Session limits of one
//! subject, read by the validating admission webhook (`crate::admission`).
//!
//! A user's limits are the `User` policy naming them, else the `Default` policy; every `Group`
//! policy listing the user among its `members` can only tighten them. A limit a policy leaves
//! out falls back to the built-in default (the old API's hard-coded values) for `Default` and
//! `User` policies, and does not tighten anything for `Group` policies.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{lenient_string_enum, plain, quantity_schema};

lenient_string_enum! {
    /// Whom a policy applies to.
    SubjectKind {
        Default => "Default",
        Group => "Group",
        User => "User",
    }
}

#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stream.space",
    version = "v1alpha1",
    kind = "QuotaPolicy",
    plural = "quotapolicies",
    singular = "quotapolicy",
    shortname = "qp",
    namespaced,
    printcolumn = r#"{"name":"Subject","type":"string","jsonPath":".spec.subject.kind"}"#,
    printcolumn = r#"{"name":"User","type":"string","jsonPath":".spec.subject.name"}"#,
    printcolumn = r#"{"name":"Sessions","type":"integer","jsonPath":".spec.limits.maxSessions"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct QuotaPolicySpec {
    pub subject: QuotaSubject,
    #[serde(default)]
    pub limits: QuotaLimits,
}

/// `{kind: Default}`, `{kind: Group, members: [...]}` or `{kind: User, name: ...}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.kind != 'User' || (has(self.name) && size(self.name) > 0)")
        .message("spec.subject.name is required when spec.subject.kind is User")
        .field_path(".name"),
    validation = Rule::new("self.kind == 'User' || !has(self.name)")
        .message("spec.subject.name is only allowed when spec.subject.kind is User")
        .field_path(".name"),
    validation = Rule::new("self.kind != 'Group' || (has(self.members) && size(self.members) > 0)")
        .message("spec.subject.members must name at least one user when spec.subject.kind is Group")
        .field_path(".members"),
    validation = Rule::new("self.kind == 'Group' || !has(self.members) || size(self.members) == 0")
        .message("spec.subject.members is only allowed when spec.subject.kind is Group")
        .field_path(".members")
)]
pub struct QuotaSubject {
    #[schemars(schema_with = "plain::<SubjectKind>")]
    pub kind: SubjectKind,
    /// Users of a `Group` policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    /// The user of a `User` policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Limits of one subject; a missing limit means "the built-in default" (Default and User
/// policies) or "no tightening" (Group policies).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaLimits {
    /// Sessions in state `running` at the same time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_sessions: Option<i64>,
    /// CPU requested by one session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "quantity_schema")]
    pub max_cpu_per_session: Option<Quantity>,
    /// Memory requested by one session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "quantity_schema")]
    pub max_memory_per_session: Option<Quantity>,
    /// CPU requested by all running sessions together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "quantity_schema")]
    pub max_cpu: Option<Quantity>,
    /// Memory requested by all running sessions together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "quantity_schema")]
    pub max_memory: Option<Quantity>,
    /// GPUs (`nvidia.com/gpu`) requested by all running sessions together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_gpu: Option<i64>,
}
