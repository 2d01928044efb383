//! Names and labels of the objects a Session owns.
//!
//! Objects are named after the Session (`ss-<session>`), not after user + template as the old
//! controller did, so two sessions of one user and template never share a Deployment. Names and
//! label values that would exceed Kubernetes' limits are shortened with a stable hash suffix.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// `app` label value on everything that belongs to a session.
pub const APP_SESSION: &str = "streamspace-session";
/// `app` label value on a user's home volume claim.
pub const APP_USER_HOME: &str = "streamspace-user-home";
/// Label naming the session (its [`label_value`]) on everything that belongs to one.
pub const SESSION_LABEL: &str = "session";
/// Container name inside the session pod.
pub const CONTAINER_NAME: &str = "session";
/// Name of the VNC port on the container and the Service.
pub const VNC_PORT_NAME: &str = "vnc";
/// Volume name and mount path of the persistent home.
pub const HOME_VOLUME: &str = "user-home";
pub const HOME_MOUNT_PATH: &str = "/config";
/// Prefix of the per-tag labels.
pub const TAG_LABEL_PREFIX: &str = "tag.stream.space/";

/// Longest DNS label (Service names, label values).
const MAX_LABEL: usize = 63;

/// Name of the Deployment, Service and Ingress of a session: a valid DNS-1035 label.
pub fn child_name(session: &str) -> String {
    let base: String = format!("ss-{session}")
        .chars()
        .map(|c| if c == '.' { '-' } else { c })
        .collect();
    shorten(&base, MAX_LABEL)
}

/// Name of the user's shared home volume claim.
pub fn home_claim_name(user: &str) -> String {
    format!("home-{user}")
}

/// Label value for arbitrary text: kept as is when valid, else cleaned and shortened with a
/// hash so that distinct inputs stay distinct.
pub fn label_value(text: &str) -> String {
    if is_valid_label_value(text) {
        return text.to_string();
    }
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cleaned = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    with_hash(cleaned, text, MAX_LABEL)
}

/// Labels on the Deployment, pod template, Service and Ingress of a session.
pub fn session_labels(
    session: &str,
    user: &str,
    template: &str,
    tags: &[String],
) -> BTreeMap<String, String> {
    let mut labels = selector_labels(session);
    labels.insert("user".into(), label_value(user));
    labels.insert("template".into(), label_value(template));
    for tag in tags.iter().filter(|tag| !tag.is_empty()) {
        if let Some(key) = tag_label_key(tag) {
            labels.insert(key, "true".into());
        }
    }
    labels
}

/// The immutable selector of a session's pods: `app` + `session` only, so that changing tags
/// or labels never hits the Deployment's immutable selector.
pub fn selector_labels(session: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app".to_string(), APP_SESSION.to_string()),
        (SESSION_LABEL.to_string(), label_value(session)),
    ])
}

fn tag_label_key(tag: &str) -> Option<String> {
    let name = label_value(&tag.to_ascii_lowercase());
    (!name.is_empty()).then(|| format!("{TAG_LABEL_PREFIX}{name}"))
}

fn is_valid_label_value(text: &str) -> bool {
    text.len() <= MAX_LABEL
        && (text.is_empty()
            || (text.starts_with(|c: char| c.is_ascii_alphanumeric())
                && text.ends_with(|c: char| c.is_ascii_alphanumeric())
                && text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))))
}

fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        text.to_string()
    } else {
        with_hash(text, text, max)
    }
}

/// `prefix` cut so that `<prefix>-<8 hex of hash(original)>` fits in `max`.
fn with_hash(prefix: &str, original: &str, max: usize) -> String {
    if prefix.len() <= max && prefix == original {
        return prefix.to_string();
    }
    let digest = Sha256::digest(original.as_bytes());
    let suffix: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let keep = max - suffix.len() - 1;
    let head: String = prefix.chars().take(keep).collect();
    let head = head.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    if head.is_empty() {
        suffix
    } else {
        format!("{head}-{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_names_follow_the_session() {
        assert_eq!(
            child_name("alice-firefox-1a2b3c4d"),
            "ss-alice-firefox-1a2b3c4d"
        );
        assert_eq!(child_name("a.b"), "ss-a-b");
        let long = "x".repeat(100);
        let name = child_name(&long);
        assert!(name.len() <= 63, "{name}");
        assert_ne!(child_name(&long), child_name(&"x".repeat(101)));
    }

    #[test]
    fn label_values_are_valid_and_distinct() {
        assert_eq!(label_value("alice"), "alice");
        let long = label_value(&"u".repeat(80));
        assert!(is_valid_label_value(&long), "{long}");
        assert!(is_valid_label_value(&label_value("Team A/B")));
        assert_ne!(label_value("a b"), label_value("a/b"));
    }

    #[test]
    fn labels_include_identity_and_tags() {
        let labels = session_labels("s1", "alice", "firefox", &["GPU".into(), String::new()]);
        assert_eq!(labels.get("app").map(String::as_str), Some(APP_SESSION));
        assert_eq!(labels.get("user").map(String::as_str), Some("alice"));
        assert_eq!(labels.get("template").map(String::as_str), Some("firefox"));
        assert_eq!(labels.get("session").map(String::as_str), Some("s1"));
        assert_eq!(
            labels.get("tag.stream.space/gpu").map(String::as_str),
            Some("true")
        );
        assert_eq!(labels.len(), 5);
    }
}
