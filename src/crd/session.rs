//! `Session` (`sessions.stream.space`, short name `ss`): one containerised desktop of one user.
//!
//! `spec.state` is what the user wants (running, hibernated, terminated); `status.phase` is what
//! the controller observed. Field names, enums, defaults and printer columns match the objects
//! StreamSpace already stores, so existing Sessions keep working unchanged.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    Condition, ResourceSpec, conditions_schema, lenient_string_enum, lenient_time, plain,
};

/// Default idle time before a running session is hibernated.
pub const DEFAULT_IDLE_TIMEOUT: &str = "30m";
/// Default longest time a session may run before it is stopped.
pub const DEFAULT_MAX_SESSION_DURATION: &str = "8h";

lenient_string_enum! {
    /// The state the user asks for.
    SessionState {
        Running => "running",
        Hibernated => "hibernated",
        Terminated => "terminated",
    }
}

lenient_string_enum! {
    /// The state the controller observed; the UI keys on these exact capitalised strings.
    SessionPhase {
        Pending => "Pending",
        Running => "Running",
        Hibernated => "Hibernated",
        Failed => "Failed",
        Terminated => "Terminated",
    }
}

/// CEL: a duration of the `<number><s|m|h>` shape is at most a year (the pattern itself is
/// checked by the schema on every server; an overlong value would overflow the controller's
/// timers and silently fall back to the default).
const AT_MOST_A_YEAR: &str =
    "!self.matches('^[0-9]+(s|m|h)$') || duration(self) <= duration('8760h')";

#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "stream.space",
    version = "v1alpha1",
    kind = "Session",
    plural = "sessions",
    singular = "session",
    shortname = "ss",
    namespaced,
    status = "SessionStatus",
    printcolumn = r#"{"name":"User","type":"string","jsonPath":".spec.user"}"#,
    printcolumn = r#"{"name":"Template","type":"string","jsonPath":".spec.template"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".spec.state"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.url"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SessionSpec {
    /// The user who owns the session.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub user: String,
    /// Name of the `Template` in the same namespace.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub template: String,
    /// Desired state; a missing state means `running`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "plain::<SessionState>")]
    pub state: Option<SessionState>,
    /// Compute resources; when absent the Template's defaults apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceSpec>,
    /// Mount the user's shared home volume `home-<user>` at `/config`.
    #[serde(default = "default_true")]
    pub persistent_home: bool,
    /// Idle time before hibernation, such as `30m`.
    #[serde(default = "default_idle_timeout")]
    #[schemars(length(min = 2, max = 10), regex(pattern = r"^[0-9]+(s|m|h)$"))]
    #[x_kube(validation = Rule::new(AT_MOST_A_YEAR)
        .message("spec.idleTimeout must be a duration of at most 8760h, such as 30m"))]
    pub idle_timeout: String,
    /// Longest time the session may run, such as `8h`.
    #[serde(default = "default_max_session_duration")]
    #[schemars(length(min = 2, max = 10), regex(pattern = r"^[0-9]+(s|m|h)$"))]
    #[x_kube(validation = Rule::new(AT_MOST_A_YEAR)
        .message("spec.maxSessionDuration must be a duration of at most 8760h, such as 8h"))]
    pub max_session_duration: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl SessionSpec {
    /// The desired state, with the documented default for a missing value.
    pub fn desired_state(&self) -> SessionState {
        self.state.clone().unwrap_or(SessionState::Running)
    }
}

fn default_true() -> bool {
    true
}

fn default_idle_timeout() -> String {
    DEFAULT_IDLE_TIMEOUT.to_string()
}

fn default_max_session_duration() -> String {
    DEFAULT_MAX_SESSION_DURATION.to_string()
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "plain::<SessionPhase>")]
    pub phase: Option<SessionPhase>,
    /// Name of the pod that serves the session, once one exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Last user activity (heartbeat, connect); written by the API, never by the reconciler.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_time"
    )]
    pub last_activity: Option<Time>,
    /// When the session last started running (`spec.state` became `running`); the start of
    /// `maxSessionDuration`. Written by the idle reconciler, cleared when the session stops.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_time"
    )]
    pub started_at: Option<Time>,
    /// Kept for compatibility; not filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_usage: Option<ResourceUsage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// `metadata.generation` the status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the controller last changed this status.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_time"
    )]
    pub reconciled_at: Option<Time>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResourceUsage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persistent_home_false_survives_a_round_trip() {
        let spec: SessionSpec = serde_json::from_value(serde_json::json!({
            "user": "alice", "template": "firefox", "state": "running", "persistentHome": false
        }))
        .expect("valid spec");
        let written = serde_json::to_value(&spec).expect("serialises");
        assert_eq!(written["persistentHome"], serde_json::json!(false));
        let again: SessionSpec = serde_json::from_value(written).expect("reads back");
        assert!(!again.persistent_home);
    }

    #[test]
    fn defaults_apply_to_missing_fields() {
        let spec: SessionSpec =
            serde_json::from_value(serde_json::json!({"user": "a", "template": "t"}))
                .expect("valid spec");
        assert!(spec.persistent_home);
        assert_eq!(spec.idle_timeout, "30m");
        assert_eq!(spec.max_session_duration, "8h");
        assert_eq!(spec.desired_state(), SessionState::Running);
    }

    #[test]
    fn unknown_state_and_phase_are_kept_not_rejected() {
        let session: Session = serde_json::from_value(serde_json::json!({
            "apiVersion": "stream.space/v1alpha1", "kind": "Session",
            "metadata": {"name": "s"},
            "spec": {"user": "a", "template": "t", "state": "paused"},
            "status": {"phase": "Sleeping", "lastActivity": "not a time"}
        }))
        .expect("lenient read");
        assert_eq!(
            session.spec.desired_state(),
            SessionState::Unknown("paused".into())
        );
        let status = session.status.unwrap_or_default();
        assert_eq!(status.phase, Some(SessionPhase::Unknown("Sleeping".into())));
        assert_eq!(status.last_activity, None);
    }
}
