//! The defaulting decision: a Session as raw JSON plus its Template in, a JSON Patch out.
//!
//! The patch only ever adds what is missing (`idleTimeout`, `maxSessionDuration`,
//! `persistentHome`, `state`, `resources` from the Template) and the `user` and `template`
//! labels, so fields this version does not know pass through untouched. Spec fields are filled
//! on create only: on update, a Session stored before the webhook existed keeps its meaning
//! (the reconciler applies the same defaults when reading), and a label edit never turns into a
//! resource change that the quota webhook would have to check again.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use serde_json::{Value, json};

use crate::crd::TemplateSpec;
use crate::crd::session::{DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_SESSION_DURATION};
use crate::idle::deadline::parse_duration;
use crate::session::names::label_value;

fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: pointer(tokens),
        value,
    })
}

fn is_missing(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => true,
        Some(Value::Object(map)) => map.is_empty(),
        Some(Value::String(text)) => text.is_empty(),
        Some(_) => false,
    }
}

/// When a Session is defaulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Spec fields and labels.
    Create,
    /// Labels only.
    Update,
}

/// The operations that default `session`; empty when nothing is missing or it has no spec.
pub fn defaults_patch(session: &Value, template: Option<&TemplateSpec>, stage: Stage) -> Patch {
    let Some(spec) = session.get("spec").and_then(Value::as_object) else {
        return Patch(Vec::new());
    };
    let mut operations = match stage {
        Stage::Create => spec_operations(spec, template),
        Stage::Update => Vec::new(),
    };
    operations.extend(label_operations(session, spec));
    Patch(operations)
}

/// The timers a `0s` switches off, with what the message calls them.
const TIMERS: [(&str, &str); 2] = [
    ("idleTimeout", "idle hibernation"),
    ("maxSessionDuration", "the maximum session duration"),
];

/// The refusal of `field` = `value` when the value is zero (`0s`, `0m`, `0h`), which would
/// switch that timer off; `None` for any other value.
pub fn zero_timer(field: &str, value: &str) -> Option<String> {
    let what = TIMERS
        .iter()
        .find(|(name, _)| *name == field)
        .map_or("this timer", |(_, what)| what);
    parse_duration(value).filter(|d| d.is_zero()).map(|_| {
        format!(
            "{field} {value:?} would switch {what} off, which this installation does not allow \
             (the operator can allow it with --allow-disabled-timers); use a positive duration \
             such as 30m"
        )
    })
}

/// The refusal of a Session (raw JSON) that sets a timer to zero, unless `old` (the stored
/// Session of an update) already had it at zero: a Session stored before the rule keeps what
/// it has, but nothing new switches a timer off.
pub fn disabled_timer(session: &Value, old: Option<&Value>) -> Option<String> {
    TIMERS.iter().find_map(|(field, _)| {
        let text = |v: &Value| {
            v.get("spec")
                .and_then(|s| s.get(*field))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let value = text(session)?;
        let refusal = zero_timer(field, &value)?;
        let was_zero = old
            .and_then(text)
            .is_some_and(|old| zero_timer(field, &old).is_some());
        (!was_zero).then_some(refusal)
    })
}

/// Fills the missing spec fields.
fn spec_operations(
    spec: &serde_json::Map<String, Value>,
    template: Option<&TemplateSpec>,
) -> Vec<PatchOperation> {
    let mut operations = Vec::new();
    let fields = [
        ("idleTimeout", json!(DEFAULT_IDLE_TIMEOUT)),
        ("maxSessionDuration", json!(DEFAULT_MAX_SESSION_DURATION)),
        ("persistentHome", json!(true)),
        ("state", json!("running")),
    ];
    for (field, value) in fields {
        if is_missing(spec.get(field)) {
            let op = if spec.contains_key(field) {
                PatchOperation::Replace(ReplaceOperation {
                    path: pointer(&["spec", field]),
                    value,
                })
            } else {
                add(&["spec", field], value)
            };
            operations.push(op);
        }
    }
    let template_resources = template
        .and_then(|t| t.default_resources.as_ref())
        .filter(|r| r.requirements().is_some())
        .and_then(|r| serde_json::to_value(r.normalized()).ok());
    if let Some(resources) = template_resources
        && is_missing(spec.get("resources"))
    {
        // `add` on an existing member replaces it (RFC 6902 4.1), so this also covers `{}`.
        operations.push(add(&["spec", "resources"], resources));
    }
    operations
}

/// Adds or corrects the `user` and `template` labels.
fn label_operations(session: &Value, spec: &serde_json::Map<String, Value>) -> Vec<PatchOperation> {
    let wanted: Vec<(&str, String)> = ["user", "template"]
        .into_iter()
        .filter_map(|key| {
            spec.get(key)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
                .map(|v| (key, label_value(v)))
        })
        .collect();
    let labels = session
        .pointer("/metadata/labels")
        .and_then(Value::as_object);
    let Some(labels) = labels else {
        if wanted.is_empty() || session.get("metadata").is_none() {
            return Vec::new();
        }
        let map: serde_json::Map<String, Value> = wanted
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::String(v)))
            .collect();
        return vec![add(&["metadata", "labels"], Value::Object(map))];
    };
    wanted
        .into_iter()
        .filter(|(key, value)| labels.get(*key).and_then(Value::as_str) != Some(value.as_str()))
        .map(|(key, value)| add(&["metadata", "labels", key], Value::String(value)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(resources: Value) -> TemplateSpec {
        serde_json::from_value(json!({
            "displayName": "Firefox", "baseImage": "firefox", "defaultResources": resources
        }))
        .expect("template")
    }

    fn apply(session: &Value, patch: &Patch) -> Value {
        let mut patched = session.clone();
        json_patch::patch(&mut patched, patch).expect("patch applies");
        patched
    }

    #[test]
    fn fills_every_missing_field_and_labels() {
        let session = json!({
            "metadata": {"name": "s"},
            "spec": {"user": "alice", "template": "firefox", "futureField": {"x": 1}}
        });
        let tpl = template(json!({"memory": "1Gi", "cpu": "500m"}));
        let patched = apply(
            &session,
            &defaults_patch(&session, Some(&tpl), Stage::Create),
        );
        assert_eq!(
            patched,
            json!({
                "metadata": {"name": "s", "labels": {"user": "alice", "template": "firefox"}},
                "spec": {
                    "user": "alice", "template": "firefox", "futureField": {"x": 1},
                    "idleTimeout": "30m", "maxSessionDuration": "8h",
                    "persistentHome": true, "state": "running",
                    "resources": {
                        "requests": {"memory": "1Gi", "cpu": "500m"},
                        "limits": {"memory": "1Gi", "cpu": "500m"}
                    }
                }
            })
        );
    }

    #[test]
    fn keeps_what_is_set() {
        let session = json!({
            "metadata": {"name": "s", "labels": {"user": "alice", "template": "firefox", "team": "x"}},
            "spec": {
                "user": "alice", "template": "firefox", "idleTimeout": "5m",
                "maxSessionDuration": "1h", "persistentHome": false, "state": "hibernated",
                "resources": {"cpu": "1"}
            }
        });
        let tpl = template(json!({"memory": "1Gi"}));
        assert_eq!(
            defaults_patch(&session, Some(&tpl), Stage::Create),
            Patch(vec![])
        );
    }

    #[test]
    fn corrects_a_wrong_label_and_sanitises_values() {
        let session = json!({
            "metadata": {"name": "s", "labels": {"user": "mallory"}},
            "spec": {"user": "alice", "template": "firefox", "idleTimeout": "5m",
                     "maxSessionDuration": "1h", "persistentHome": true, "state": "running"}
        });
        let patched = apply(&session, &defaults_patch(&session, None, Stage::Create));
        assert_eq!(
            patched["metadata"]["labels"],
            json!({"user": "alice", "template": "firefox"})
        );
        assert!(patched["spec"].get("resources").is_none());
    }

    #[test]
    fn null_and_empty_values_count_as_missing() {
        let session = json!({
            "metadata": {"name": "s"},
            "spec": {"user": "a", "template": "t", "state": null, "idleTimeout": "", "resources": {}}
        });
        let tpl = template(json!({"requests": {"cpu": "1"}}));
        let patched = apply(
            &session,
            &defaults_patch(&session, Some(&tpl), Stage::Create),
        );
        assert_eq!(patched["spec"]["state"], json!("running"));
        assert_eq!(patched["spec"]["idleTimeout"], json!("30m"));
        assert_eq!(
            patched["spec"]["resources"],
            json!({"requests": {"cpu": "1"}})
        );
    }

    #[test]
    fn updates_only_get_labels() {
        let session = json!({
            "metadata": {"name": "s"},
            "spec": {"user": "alice", "template": "firefox"}
        });
        let tpl = template(json!({"memory": "1Gi"}));
        let patched = apply(
            &session,
            &defaults_patch(&session, Some(&tpl), Stage::Update),
        );
        assert_eq!(
            patched,
            json!({
                "metadata": {"name": "s", "labels": {"user": "alice", "template": "firefox"}},
                "spec": {"user": "alice", "template": "firefox"}
            })
        );
    }

    proptest::proptest! {
        /// Whatever unknown fields a Session carries, the patch applies and keeps them all,
        /// and applying it twice changes nothing more (the patched object needs no patch).
        #[test]
        fn unknown_fields_survive_and_defaulting_is_idempotent(
            extra_spec in proptest::collection::btree_map("[a-z]{1,8}", "[a-z0-9]{0,8}", 0..5),
            extra_labels in proptest::collection::btree_map("[a-z]{1,8}", "[a-z0-9]{1,8}", 0..4),
            user in "[a-z]{1,10}",
        ) {
            let mut spec = json!({"user": user, "template": "firefox"});
            for (key, value) in &extra_spec {
                if spec.get(key).is_none() {
                    spec[key] = json!(value);
                }
            }
            let session = json!({"metadata": {"name": "s", "labels": extra_labels}, "spec": spec});
            let tpl = template(json!({"cpu": "1"}));
            let patched = apply(&session, &defaults_patch(&session, Some(&tpl), Stage::Create));
            for (key, value) in &extra_spec {
                if ["idleTimeout", "maxSessionDuration", "persistentHome", "state", "resources"]
                    .contains(&key.as_str()) || session["spec"][key] != json!(value) {
                    continue;
                }
                proptest::prop_assert_eq!(&patched["spec"][key], &json!(value));
            }
            for (key, value) in &extra_labels {
                if key != "user" && key != "template" {
                    proptest::prop_assert_eq!(&patched["metadata"]["labels"][key], &json!(value));
                }
            }
            proptest::prop_assert_eq!(defaults_patch(&patched, Some(&tpl), Stage::Create), Patch(vec![]));
        }
    }

    #[test]
    fn no_spec_means_no_patch() {
        assert_eq!(
            defaults_patch(&json!({"metadata": {}}), None, Stage::Create),
            Patch(vec![])
        );
        assert_eq!(
            defaults_patch(&json!("not an object"), None, Stage::Create),
            Patch(vec![])
        );
    }

    #[test]
    fn zero_timers_are_refused_unless_already_stored() {
        // (new spec, old spec, refused field)
        let rows: &[(Value, Option<Value>, Option<&str>)] = &[
            (json!({"idleTimeout": "0s"}), None, Some("idleTimeout")),
            (
                json!({"maxSessionDuration": "0m"}),
                None,
                Some("maxSessionDuration"),
            ),
            (json!({"idleTimeout": "0h"}), None, Some("idleTimeout")),
            (
                json!({"idleTimeout": "30m", "maxSessionDuration": "8h"}),
                None,
                None,
            ),
            (json!({"idleTimeout": "1s"}), None, None),
            (json!({}), None, None),
            (json!({"idleTimeout": "soon"}), None, None),
            (
                json!({"idleTimeout": "0s"}),
                Some(json!({"idleTimeout": "0s"})),
                None,
            ),
            (
                json!({"idleTimeout": "0s"}),
                Some(json!({"idleTimeout": "30m"})),
                Some("idleTimeout"),
            ),
            (
                json!({"idleTimeout": "0s", "maxSessionDuration": "0s"}),
                Some(json!({"idleTimeout": "0s"})),
                Some("maxSessionDuration"),
            ),
        ];
        for (new, old, refused) in rows {
            let wrap = |spec: &Value| json!({"spec": spec});
            let refusal = disabled_timer(&wrap(new), old.as_ref().map(wrap).as_ref());
            match refused {
                None => assert_eq!(refusal, None, "{new} {old:?}"),
                Some(field) => {
                    let message = refusal.unwrap_or_default();
                    assert!(message.starts_with(field), "{new}: {message}");
                    assert!(message.contains("--allow-disabled-timers"), "{message}");
                }
            }
        }
    }
}
