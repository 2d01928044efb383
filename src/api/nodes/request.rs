//! Request bodies of the node actions and their validation, as pure functions: a request
//! becomes a [`NodeAction`] or a message for a 400, before anything is read or written.
//!
//! Label keys, label values and taints follow the Kubernetes syntax, so a bad value is refused
//! here with a clear message instead of by the API server halfway through an action.

use serde::Deserialize;

use crate::crd::node_operation::{NodeTaint, TaintEffect};

/// Grace period of a drain when the request does not give one (the old API's default).
pub const DEFAULT_GRACE_PERIOD_SECONDS: i64 = 30;
/// Longest accepted grace period: one day, far above any sensible pod shutdown.
pub const MAX_GRACE_PERIOD_SECONDS: i64 = 86_400;

/// What one request asks of one node, validated.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeAction {
    SetLabel {
        key: String,
        value: String,
    },
    RemoveLabel {
        key: String,
    },
    AddTaint(NodeTaint),
    /// Every taint with this key, whatever its effect.
    RemoveTaint {
        key: String,
    },
    Cordon,
    Uncordon,
    Drain {
        grace_period_seconds: i64,
    },
}

impl NodeAction {
    /// Short name: metric label, NodeOperation name part and in-flight annotation.
    pub fn verb(&self) -> &'static str {
        match self {
            NodeAction::SetLabel { .. } => "label",
            NodeAction::RemoveLabel { .. } => "unlabel",
            NodeAction::AddTaint(_) => "taint",
            NodeAction::RemoveTaint { .. } => "untaint",
            NodeAction::Cordon => "cordon",
            NodeAction::Uncordon => "uncordon",
            NodeAction::Drain { .. } => "drain",
        }
    }
}

/// Body of `PUT /admin/nodes/{name}/labels`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRequest {
    pub key: Option<String>,
    pub value: Option<String>,
}

/// Body of `POST /admin/nodes/{name}/taints`: a Kubernetes Taint (`timeAdded` is ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaintRequest {
    pub key: Option<String>,
    pub value: Option<String>,
    pub effect: Option<String>,
}

/// Body of `POST /admin/nodes/{name}/drain` (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    pub grace_period_seconds: Option<i64>,
}

/// Parses a JSON body; an empty body is `T::default()` when `optional`.
pub fn parse_body<T>(body: &[u8], optional: bool) -> Result<T, String>
where
    T: for<'de> Deserialize<'de> + Default,
{
    if body.iter().all(u8::is_ascii_whitespace) {
        return if optional {
            Ok(T::default())
        } else {
            Err("a JSON body is required".into())
        };
    }
    serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
}

pub fn set_label(request: LabelRequest) -> Result<NodeAction, String> {
    let key = request.key.ok_or("key is required")?;
    let value = request.value.ok_or("value is required")?;
    check_qualified_name("label key", &key)?;
    check_label_value("label value", &value)?;
    Ok(NodeAction::SetLabel { key, value })
}

pub fn remove_label(key: String) -> Result<NodeAction, String> {
    check_qualified_name("label key", &key)?;
    Ok(NodeAction::RemoveLabel { key })
}

pub fn add_taint(request: TaintRequest) -> Result<NodeAction, String> {
    let key = request.key.ok_or("key is required")?;
    check_qualified_name("taint key", &key)?;
    let value = request.value.filter(|v| !v.is_empty());
    if let Some(value) = &value {
        check_label_value("taint value", value)?;
    }
    let effect = request.effect.ok_or("effect is required")?;
    let effect = match TaintEffect::from(effect.as_str()) {
        TaintEffect::Unknown(other) => {
            return Err(format!(
                "effect {other:?} is not one of NoSchedule, PreferNoSchedule, NoExecute"
            ));
        }
        known => known,
    };
    Ok(NodeAction::AddTaint(NodeTaint { key, value, effect }))
}

pub fn remove_taint(key: String) -> Result<NodeAction, String> {
    check_qualified_name("taint key", &key)?;
    Ok(NodeAction::RemoveTaint { key })
}

pub fn drain(request: DrainRequest) -> Result<NodeAction, String> {
    let grace = request
        .grace_period_seconds
        .unwrap_or(DEFAULT_GRACE_PERIOD_SECONDS);
    if !(0..=MAX_GRACE_PERIOD_SECONDS).contains(&grace) {
        return Err(format!(
            "grace_period_seconds must be between 0 and {MAX_GRACE_PERIOD_SECONDS}"
        ));
    }
    Ok(NodeAction::Drain {
        grace_period_seconds: grace,
    })
}

/// A label key or taint key: an optional DNS subdomain prefix and `/`, then a name of at most
/// 63 characters of letters, digits, `-`, `_` and `.`, starting and ending alphanumeric.
pub fn check_qualified_name(what: &str, key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && !crate::api::valid_name(prefix)
    {
        return Err(format!(
            "{what} {key:?}: the prefix must be a DNS subdomain (lowercase letters, digits, '-' and '.')"
        ));
    }
    if name.is_empty() || !label_syntax(name) {
        return Err(format!(
            "{what} {key:?}: the name must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// A label value: empty, or like the name part of a key.
pub fn check_label_value(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() || label_syntax(value) {
        Ok(())
    } else {
        Err(format!(
            "{what} {value:?} must be at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ))
    }
}

fn label_syntax(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() <= 63
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys() {
        let long_name = "a".repeat(64);
        let long_prefix = format!("{}/a", "a".repeat(254));
        let cases = [
            ("app", true),
            ("stream.space/pool", true),
            ("kubernetes.io/hostname", true),
            ("A_b-c.D", true),
            ("a", true),
            ("", false),
            ("/a", false),
            ("a/", false),
            ("-a", false),
            ("a-", false),
            ("a b", false),
            ("a\"b", false),
            ("a/b/c", false),
            ("Upper.Case/x", false),
            (long_name.as_str(), false),
            (long_prefix.as_str(), false),
            ("x\"}},\"spec\":{\"unschedulable\":true", false),
        ];
        for (key, ok) in cases {
            assert_eq!(check_qualified_name("k", key).is_ok(), ok, "{key:?}");
        }
    }

    #[test]
    fn label_values() {
        let long = "v".repeat(64);
        for (value, ok) in [
            ("", true),
            ("v1.2_3-x", true),
            ("-v", false),
            ("v v", false),
            (long.as_str(), false),
        ] {
            assert_eq!(check_label_value("v", value).is_ok(), ok, "{value:?}");
        }
    }

    #[test]
    fn requests_become_actions_or_messages() {
        let label = |key: Option<&str>, value: Option<&str>| {
            set_label(LabelRequest {
                key: key.map(Into::into),
                value: value.map(Into::into),
            })
        };
        assert_eq!(
            label(Some("zone"), Some("z1")),
            Ok(NodeAction::SetLabel {
                key: "zone".into(),
                value: "z1".into()
            })
        );
        assert_eq!(label(None, Some("z1")), Err("key is required".into()));
        assert_eq!(label(Some("zone"), None), Err("value is required".into()));
        assert!(label(Some("zone"), Some("bad value")).is_err());

        let taint = |key: &str, value: Option<&str>, effect: Option<&str>| {
            add_taint(TaintRequest {
                key: Some(key.into()),
                value: value.map(Into::into),
                effect: effect.map(Into::into),
            })
        };
        assert_eq!(
            taint("maint", Some(""), Some("NoExecute")),
            Ok(NodeAction::AddTaint(NodeTaint {
                key: "maint".into(),
                value: None,
                effect: TaintEffect::NoExecute
            }))
        );
        assert!(taint("maint", None, Some("Sometimes")).is_err());
        assert!(taint("maint", None, None).is_err());
        assert!(taint("bad key", None, Some("NoSchedule")).is_err());

        let grace = |g: Option<i64>| {
            drain(DrainRequest {
                grace_period_seconds: g,
            })
        };
        assert_eq!(
            grace(None),
            Ok(NodeAction::Drain {
                grace_period_seconds: 30
            })
        );
        assert_eq!(
            grace(Some(0)),
            Ok(NodeAction::Drain {
                grace_period_seconds: 0
            })
        );
        assert!(grace(Some(-1)).is_err());
        assert!(grace(Some(MAX_GRACE_PERIOD_SECONDS + 1)).is_err());
    }

    #[test]
    fn bodies() {
        assert!(parse_body::<DrainRequest>(b"", true).is_ok());
        assert!(parse_body::<LabelRequest>(b" ", false).is_err());
        assert!(parse_body::<LabelRequest>(b"{\"key\":", false).is_err());
        assert!(parse_body::<LabelRequest>(b"{\"key\":\"a\",\"extra\":1}", false).is_err());
        let taint: TaintRequest = parse_body(
            br#"{"key":"k","effect":"NoSchedule","timeAdded":"2024-01-01T00:00:00Z"}"#,
            false,
        )
        .expect("a Kubernetes taint is accepted");
        assert_eq!(taint.key.as_deref(), Some("k"));
    }
}
