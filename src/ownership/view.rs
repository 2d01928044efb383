//! How a flag is shown to people: the effective decision next to the baseline and the
//! override it comes from. One shape for the API's flags endpoint and the controller's
//! `GET /flags`.

use serde_json::{Value, json};

use super::{Effective, ResourceType};
use crate::crd::FeatureFlagSpec;

/// One flag as the API shows it.
pub fn view(
    resource: ResourceType,
    object_name: &str,
    spec: Option<&FeatureFlagSpec>,
    effective: &Effective,
) -> Value {
    let override_ = spec.and_then(|s| s.override_.as_ref()).map(|o| {
        json!({
            "mode": o.mode.as_str(),
            "percent": o.percent,
            "expiresAt": o.expires_at.as_ref().map(|t| t.0.to_string()),
            "reason": o.reason,
            "setBy": o.set_by,
        })
    });
    json!({
        "type": resource.as_str(),
        "name": object_name,
        "exists": spec.is_some(),
        "mode": effective.mode_str(),
        "percent": effective.percent,
        "source": effective.source.as_str(),
        "expiresAt": effective.expires_at.map(|t| t.to_string()),
        "baseline": spec.map(|s| json!({"mode": s.mode.as_str(), "percent": s.percent})),
        "override": override_,
    })
}
