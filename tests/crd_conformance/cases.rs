//! The table of invalid objects: for each, what a current API server says (a CEL rule's
//! message and the field it names) and who refuses it on Kubernetes 1.20, which has no CEL.

use serde_json::{Value, json};
use streamspace_controller::crd::{NodeOperation, QuotaPolicy};
use streamspace_controller::nodeop::state;
use streamspace_controller::ownership::ResourceType;
use streamspace_controller::quota::Policy;

/// One invalid object.
pub struct Case {
    pub name: &'static str,
    /// The whole object; namespaced kinds get the test namespace added.
    pub object: Value,
    /// The current server's refusal: the field path it reports and the rule's message.
    pub field: &'static str,
    pub message: &'static str,
    /// Who refuses it on Kubernetes 1.20.
    pub legacy: Legacy,
}

/// Who refuses an object on Kubernetes 1.20.
pub enum Legacy {
    /// The 1.20 API server itself, by the OpenAPI part of the schema.
    Schema,
    /// Stored; the controller refuses it with this check (`Some(message)` = refused).
    Controller(fn(&Value) -> Option<String>),
    /// Stored; the admission webhook refuses to use it, with this check.
    Webhook(fn(&Value) -> Option<String>),
    /// Stored; the Node update the controller derives from it is refused by the API server.
    NodeUpdate,
    /// Stored and nothing refuses it; why that is acceptable.
    Nobody(&'static str),
}

impl Legacy {
    /// How the table row reads in the docs and in failure messages.
    pub fn describe(&self) -> &'static str {
        match self {
            Legacy::Schema => "1.20 API server (OpenAPI schema)",
            Legacy::Controller(_) => "controller",
            Legacy::Webhook(_) => "admission webhook",
            Legacy::NodeUpdate => "controller (its Node update is refused)",
            Legacy::Nobody(_) => "nobody",
        }
    }
}

fn session(spec: Value) -> Value {
    json!({"apiVersion": "stream.space/v1alpha1", "kind": "Session",
           "metadata": {"name": "invalid"}, "spec": spec})
}

fn node_operation(spec: Value) -> Value {
    json!({"apiVersion": "stream.space/v1alpha1", "kind": "NodeOperation",
           "metadata": {"name": "invalid"}, "spec": spec})
}

fn quota_policy(subject: Value) -> Value {
    json!({"apiVersion": "stream.space/v1alpha1", "kind": "QuotaPolicy",
           "metadata": {"name": "invalid"}, "spec": {"subject": subject}})
}

fn feature_flag(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "stream.space/v1alpha1", "kind": "FeatureFlag",
           "metadata": {"name": name}, "spec": spec})
}

/// `nodeop::state::validate`, which fails an operation as `InvalidSpec`.
fn nodeop_check(object: &Value) -> Option<String> {
    let op: NodeOperation = serde_json::from_value(object.clone()).ok()?;
    state::validate(&op.spec).err()
}

/// The webhook's reading of a QuotaPolicy: problems, or a subject that matches nobody.
fn quota_check(object: &Value) -> Option<String> {
    let policy: QuotaPolicy = serde_json::from_value(object.clone()).ok()?;
    let (parsed, invalid) = Policy::from_object(&policy);
    if !invalid.is_empty() {
        return Some(invalid.join("; "));
    }
    match parsed.subject {
        streamspace_controller::quota::Subject::Group(members) if members.is_empty() => {
            Some("subject.members: a Group policy without members applies to nobody".into())
        }
        _ => None,
    }
}

/// The ownership index reads only flags named after a resource type.
fn flag_name_check(object: &Value) -> Option<String> {
    let name = object.pointer("/metadata/name")?.as_str()?;
    ResourceType::parse(name)
        .is_none()
        .then(|| format!("metadata.name {name:?} is not a resource type: the flag is ignored"))
}

/// Every row; each CEL rule of the CRDs has at least one.
pub fn all() -> Vec<Case> {
    let mut cases = session_cases();
    cases.extend(node_operation_cases());
    cases.extend(quota_policy_cases());
    cases.extend(feature_flag_cases());
    cases
}

fn session_cases() -> Vec<Case> {
    vec![
        Case {
            name: "session idleTimeout over a year",
            object: session(
                json!({"user": "alice", "template": "firefox", "idleTimeout": "9000h"}),
            ),
            field: "spec.idleTimeout",
            message: "spec.idleTimeout must be a duration of at most 8760h",
            legacy: Legacy::Nobody("stored; the controller honours it as 9000h"),
        },
        Case {
            name: "session maxSessionDuration over a year",
            object: session(
                json!({"user": "alice", "template": "firefox", "maxSessionDuration": "600000m"}),
            ),
            field: "spec.maxSessionDuration",
            message: "spec.maxSessionDuration must be a duration of at most 8760h",
            legacy: Legacy::Nobody("stored; the controller honours it"),
        },
        Case {
            name: "session idleTimeout without a unit (schema pattern)",
            object: session(json!({"user": "alice", "template": "firefox", "idleTimeout": "30"})),
            field: "spec.idleTimeout",
            message: "should match",
            legacy: Legacy::Schema,
        },
    ]
}

fn node_operation_cases() -> Vec<Case> {
    vec![
        Case {
            name: "node operation with nothing to do",
            object: node_operation(json!({"nodeName": "n1"})),
            field: "spec",
            message: "spec has nothing to do: set cordon, drain, labels or taints",
            legacy: Legacy::Controller(nodeop_check),
        },
        Case {
            name: "node operation draining with cordon false",
            object: node_operation(json!({"nodeName": "n1", "cordon": false, "drain": {}})),
            field: "spec.cordon",
            message: "spec.cordon must not be false when spec.drain is set",
            legacy: Legacy::Nobody("stored; the drain cordons the node anyway"),
        },
        Case {
            name: "node operation adding a malformed label key",
            object: node_operation(json!({"nodeName": "n1", "labels": {"add": {"bad key": "v"}}})),
            field: "spec.labels.add",
            message: "spec.labels.add: every key must be a label key",
            legacy: Legacy::NodeUpdate,
        },
        Case {
            name: "node operation adding a malformed label value",
            object: node_operation(json!({"nodeName": "n1", "labels": {"add": {"tier": "-gold"}}})),
            field: "spec.labels.add",
            message: "spec.labels.add: every value must be a label value",
            legacy: Legacy::NodeUpdate,
        },
        Case {
            name: "node operation removing a malformed label key",
            object: node_operation(json!({"nodeName": "n1", "labels": {"remove": ["a/b/c"]}})),
            field: "spec.labels.remove",
            message: "spec.labels.remove: every entry must be a label key",
            legacy: Legacy::Nobody("stored; no node label has that key, so nothing is removed"),
        },
        Case {
            name: "node operation adding a taint with a malformed key",
            object: node_operation(json!({"nodeName": "n1",
                "taints": {"add": [{"key": "maintenance window", "effect": "NoSchedule"}]}})),
            field: "spec.taints.add[0].key",
            message: "taint key must be a qualified name",
            legacy: Legacy::NodeUpdate,
        },
        Case {
            name: "node operation adding a taint with a malformed value",
            object: node_operation(json!({"nodeName": "n1",
                "taints": {"add": [{"key": "maintenance", "value": "until friday", "effect": "NoSchedule"}]}})),
            field: "spec.taints.add[0].value",
            message: "taint value must be at most 63 letters",
            legacy: Legacy::NodeUpdate,
        },
        Case {
            name: "node operation removing a taint with a malformed key",
            object: node_operation(
                json!({"nodeName": "n1", "taints": {"remove": [{"key": "-maintenance"}]}}),
            ),
            field: "spec.taints.remove[0].key",
            message: "taint key must be a qualified name",
            legacy: Legacy::Nobody("stored; no taint has that key, so nothing is removed"),
        },
        Case {
            name: "node operation with an unknown taint effect (schema enum)",
            object: node_operation(json!({"nodeName": "n1",
                "taints": {"add": [{"key": "maintenance", "effect": "Sometimes"}]}})),
            field: "spec.taints.add[0].effect",
            message: "Unsupported value",
            legacy: Legacy::Schema,
        },
    ]
}

fn quota_policy_cases() -> Vec<Case> {
    vec![
        Case {
            name: "user quota policy without a name",
            object: quota_policy(json!({"kind": "User"})),
            field: "spec.subject.name",
            message: "spec.subject.name is required when spec.subject.kind is User",
            legacy: Legacy::Webhook(quota_check),
        },
        Case {
            name: "default quota policy with a name",
            object: quota_policy(json!({"kind": "Default", "name": "alice"})),
            field: "spec.subject.name",
            message: "spec.subject.name is only allowed when spec.subject.kind is User",
            legacy: Legacy::Nobody("stored; the webhook ignores the name and applies the Default"),
        },
        Case {
            name: "group quota policy without members",
            object: quota_policy(json!({"kind": "Group"})),
            field: "spec.subject.members",
            message: "spec.subject.members must name at least one user",
            legacy: Legacy::Webhook(quota_check),
        },
        Case {
            name: "user quota policy with members",
            object: quota_policy(json!({"kind": "User", "name": "alice", "members": ["bob"]})),
            field: "spec.subject.members",
            message: "spec.subject.members is only allowed when spec.subject.kind is Group",
            legacy: Legacy::Nobody(
                "stored; the webhook ignores the members and applies it to alice",
            ),
        },
    ]
}

fn feature_flag_cases() -> Vec<Case> {
    vec![
        Case {
            name: "feature flag not named after a resource type",
            object: feature_flag("session", json!({"mode": "controller"})),
            field: "metadata.name",
            message: "metadata.name must be a resource type",
            legacy: Legacy::Controller(flag_name_check),
        },
        Case {
            name: "feature flag override without a reason",
            object: feature_flag(
                "sessions",
                json!({"mode": "legacy", "override": {"mode": "controller", "percent": 100}}),
            ),
            field: "spec.override.reason",
            message: "spec.override.reason is required",
            legacy: Legacy::Nobody(
                "stored and honoured; the API's flags endpoint, the only writer of overrides, \
                 refuses one without a reason",
            ),
        },
        Case {
            name: "feature flag percent over 100 (schema maximum)",
            object: feature_flag("idle", json!({"mode": "controller", "percent": 101})),
            field: "spec.percent",
            message: "should be less than or equal to 100",
            legacy: Legacy::Schema,
        },
    ]
}
