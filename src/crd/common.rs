//! Shapes shared by several kinds: resource requests in both the current and the legacy flat
//! form, conditions, and string enums that tolerate values this version does not know.
//!
//! Everything here deserialises leniently on purpose: one object that an older or newer writer
//! stored must never break a watch stream for all the others.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize};

/// Declares a string enum whose unknown values survive as `Unknown(text)` instead of failing to
/// deserialise, and whose schema lists the known values (so the API server still validates
/// what new writers send).
macro_rules! lenient_string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant,)+
            /// A value this version does not know; kept verbatim so it can be reported.
            Unknown(String),
        }

        impl $name {
            pub const KNOWN: &'static [&'static str] = &[$($text),+];

            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)+
                    Self::Unknown(other) => other,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                match text {
                    $($text => Self::$variant,)+
                    other => Self::Unknown(other.to_string()),
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <String as serde::Deserialize>::deserialize(deserializer)?;
                Ok(Self::from(text.as_str()))
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn inline_schema() -> bool {
                true
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({ "type": "string", "enum": Self::KNOWN })
            }
        }
    };
}
pub(crate) use lenient_string_enum;

/// Compute resources in either shape StreamSpace objects use.
///
/// Current shape: `{requests: {...}, limits: {...}}`. Legacy flat shape: `{memory, cpu}`, which
/// older API versions wrote and which means "this much, requested and limited". Reading accepts
/// both (requests/limits win key by key); writing always uses requests/limits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResourceSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "quantity_map_schema")]
    pub requests: Option<BTreeMap<String, Quantity>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "quantity_map_schema")]
    pub limits: Option<BTreeMap<String, Quantity>>,
    /// Legacy flat form: memory requested and limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "quantity_schema")]
    pub memory: Option<Quantity>,
    /// Legacy flat form: CPU requested and limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "quantity_schema")]
    pub cpu: Option<Quantity>,
}

impl ResourceSpec {
    /// Normalises both shapes into requests/limits; `None` when nothing is set at all.
    pub fn requirements(&self) -> Option<ResourceRequirements> {
        let mut requests = self.requests.clone().unwrap_or_default();
        let mut limits = self.limits.clone().unwrap_or_default();
        for (key, flat) in [("memory", &self.memory), ("cpu", &self.cpu)] {
            if let Some(value) = flat {
                requests
                    .entry(key.to_string())
                    .or_insert_with(|| value.clone());
                limits
                    .entry(key.to_string())
                    .or_insert_with(|| value.clone());
            }
        }
        if requests.is_empty() && limits.is_empty() {
            return None;
        }
        Some(ResourceRequirements {
            requests: (!requests.is_empty()).then_some(requests),
            limits: (!limits.is_empty()).then_some(limits),
            ..ResourceRequirements::default()
        })
    }

    /// The same resources written in the current shape only.
    pub fn normalized(&self) -> ResourceSpec {
        let requirements = self.requirements().unwrap_or_default();
        ResourceSpec {
            requests: requirements.requests,
            limits: requirements.limits,
            memory: None,
            cpu: None,
        }
    }
}

pub(crate) fn quantity_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "A Kubernetes quantity such as 500m, 2, 512Mi or 4Gi.",
        "x-kubernetes-int-or-string": true
    })
}

fn quantity_map_schema(generator: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": quantity_schema(generator)
    })
}

/// A status condition in the `metav1.Condition` shape. Every field but `type` is optional when
/// reading, because objects written by older controllers may lack some of them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[serde(default)]
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_time"
    )]
    pub last_transition_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// Schema for a conditions list: a map keyed by `type`, so several writers can each own their
/// own conditions under server-side apply.
pub(crate) fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut item = generator.subschema_for::<Condition>();
    if let Some(object) = item.as_object_mut() {
        object.insert("required".into(), serde_json::json!(["type", "status"]));
        // Reading tolerates missing fields; the schema should not invent values for them.
        if let Some(properties) = object.get_mut("properties").and_then(|p| p.as_object_mut()) {
            for property in properties.values_mut() {
                if let Some(property) = property.as_object_mut() {
                    property.remove("default");
                }
            }
        }
    }
    json_schema!({
        "type": "array",
        "items": item,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"]
    })
}

/// The schema of `T` as is: for optional enum fields, whose derived schema would otherwise
/// list `null` among the allowed values.
pub(crate) fn plain<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    T::json_schema(generator)
}

/// Reads an RFC 3339 timestamp; anything unparsable reads as absent rather than failing the
/// whole object.
pub(crate) fn lenient_time<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Time>, D::Error> {
    let raw = Option::<serde_json::Value>::deserialize(deserializer)?;
    Ok(raw.and_then(|value| serde_json::from_value::<Time>(value).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> Quantity {
        Quantity(text.to_string())
    }

    #[test]
    fn flat_resources_become_requests_and_limits() {
        let flat = ResourceSpec {
            memory: Some(q("2Gi")),
            cpu: Some(q("1000m")),
            ..ResourceSpec::default()
        };
        let requirements = flat.requirements().unwrap_or_default();
        let requests = requirements.requests.unwrap_or_default();
        let limits = requirements.limits.unwrap_or_default();
        assert_eq!(requests.get("memory"), Some(&q("2Gi")));
        assert_eq!(requests.get("cpu"), Some(&q("1000m")));
        assert_eq!(limits.get("memory"), Some(&q("2Gi")));
        assert_eq!(limits.get("cpu"), Some(&q("1000m")));
    }

    #[test]
    fn requests_and_limits_win_over_flat_keys() {
        let mixed = ResourceSpec {
            requests: Some(BTreeMap::from([("cpu".to_string(), q("500m"))])),
            cpu: Some(q("2")),
            ..ResourceSpec::default()
        };
        let requirements = mixed.requirements().unwrap_or_default();
        assert_eq!(
            requirements.requests.unwrap_or_default().get("cpu"),
            Some(&q("500m"))
        );
        assert_eq!(
            requirements.limits.unwrap_or_default().get("cpu"),
            Some(&q("2"))
        );
    }

    #[test]
    fn empty_resources_are_none() {
        assert_eq!(ResourceSpec::default().requirements(), None);
    }

    #[test]
    fn unparsable_time_reads_as_absent() {
        let condition: Condition = serde_json::from_value(serde_json::json!({
            "type": "Ready", "status": "True", "lastTransitionTime": "yesterday"
        }))
        .unwrap_or_default();
        assert_eq!(condition.type_, "Ready");
        assert_eq!(condition.last_transition_time, None);
    }
}
