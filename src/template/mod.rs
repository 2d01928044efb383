//! Template validation (pure) and the reconciler that records it in `status`.

pub mod reconciler;

use crate::crd::{ResourceSpec, TemplateSpec};
use crate::quantity;

/// `status.message` of a valid Template; clients of the old controller compare against it.
pub const VALID_MESSAGE: &str = "Template is valid and ready to use";

/// Lowest and highest VNC port a Template may declare.
const VNC_PORTS: std::ops::RangeInclusive<i32> = 1024..=65535;

/// Checks a Template, returning the first problem found as a message a person can act on.
pub fn validate(spec: &TemplateSpec) -> Result<(), String> {
    if spec.base_image.trim().is_empty() {
        return Err("baseImage is required".into());
    }
    if spec.display_name.trim().is_empty() {
        return Err("displayName is required".into());
    }
    if let Some(vnc) = spec.effective_vnc().filter(|vnc| vnc.enabled)
        && !VNC_PORTS.contains(&spec.vnc_port())
    {
        return Err(format!(
            "VNC port must be between 1024 and 65535 (got {})",
            vnc.port.unwrap_or_default()
        ));
    }
    if let Some(resources) = &spec.default_resources {
        validate_resources("defaultResources", resources)?;
    }
    Ok(())
}

/// Checks that every quantity in a resource block parses, naming the first bad one.
pub fn validate_resources(path: &str, resources: &ResourceSpec) -> Result<(), String> {
    let maps = [
        ("requests", &resources.requests),
        ("limits", &resources.limits),
    ];
    for (section, map) in maps {
        for (key, value) in map.iter().flatten() {
            quantity::parse(&value.0).map_err(|e| format!("{path}.{section}.{key}: {e}"))?;
        }
    }
    for (key, value) in [("memory", &resources.memory), ("cpu", &resources.cpu)] {
        if let Some(value) = value {
            quantity::parse(&value.0).map_err(|e| format!("{path}.{key}: {e}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(value: serde_json::Value) -> TemplateSpec {
        serde_json::from_value(value).expect("template spec")
    }

    #[test]
    fn validation_table() {
        let cases = [
            (
                serde_json::json!({"displayName": "F", "baseImage": "img"}),
                Ok(()),
            ),
            (
                serde_json::json!({"displayName": "F"}),
                Err("baseImage is required".to_string()),
            ),
            (
                serde_json::json!({"baseImage": "img"}),
                Err("displayName is required".to_string()),
            ),
            (
                serde_json::json!({"displayName": "F", "baseImage": "img", "vnc": {"enabled": true, "port": 80}}),
                Err("VNC port must be between 1024 and 65535 (got 80)".to_string()),
            ),
            (
                serde_json::json!({"displayName": "F", "baseImage": "img", "vnc": {"enabled": false, "port": 80}}),
                Ok(()),
            ),
            (
                serde_json::json!({"displayName": "F", "baseImage": "img", "vnc": {"enabled": true}}),
                Ok(()),
            ),
            (
                serde_json::json!({"displayName": "F", "baseImage": "img", "defaultResources": {"cpu": "lots"}}),
                Err("defaultResources.cpu: quantity \"lots\" is not a number with an optional unit suffix".to_string()),
            ),
        ];
        for (spec, expected) in cases {
            assert_eq!(validate(&template(spec.clone())), expected, "{spec}");
        }
    }
}
