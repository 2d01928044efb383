//! What the API and the controller processes share over HTTP: the connection event the API
//! sends to the controller (`POST /events/connection`) and its reply, the bearer-token check
//! both use, and the validation of object names taken from paths and bodies. Neither process's
//! HTTP module depends on the other; both depend on this one.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use serde::{Deserialize, Serialize};

/// Body of `POST /events/connection`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionEvent {
    /// `connect` (wakes a hibernated session) or `disconnect` (recorded only).
    #[serde(rename = "type")]
    pub type_: String,
    pub namespace: String,
    pub session: String,
    /// `metadata.generation` of the session as the API saw it; the wake is refused if the spec
    /// changed since.
    pub generation: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// The controller's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventReply {
    /// `woken` or `not_needed`.
    pub outcome: String,
    /// `spec.state` after the event was handled.
    #[serde(default)]
    pub state: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing bearer token (Authorization: Bearer <token>)")]
    Missing,
    #[error("invalid bearer token")]
    Invalid,
    /// Refused while the API accepts only tokens issued for one audience (`--token-audience`).
    #[error(
        "invalid bearer token: this API accepts only tokens issued for the audience {0:?} (kubectl create token <service-account> --audience {0})"
    )]
    NotForAudience(String),
    /// The authenticator could not decide (for example the API server did not answer).
    #[error("authentication unavailable: {0}")]
    Unavailable(String),
}

impl AuthError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Invalid | AuthError::NotForAudience(_) => "invalid",
            AuthError::Unavailable(_) => "auth_unavailable",
        }
    }
}

/// The token of `Authorization: Bearer <token>` (the scheme is case-insensitive).
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    const SCHEME: &str = "bearer ";
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            v.get(..SCHEME.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(SCHEME))
        })
        .and_then(|v| v.get(SCHEME.len()..))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or(AuthError::Missing)
}

/// Checks `Authorization: Bearer <expected>` in constant time.
pub fn check_bearer(headers: &HeaderMap, expected: &str) -> Result<(), AuthError> {
    let presented = bearer_token(headers)?;
    if constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(AuthError::Invalid)
    }
}

/// Compares without an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A Kubernetes object name (DNS-1123 subdomain): what a session id or namespace must be.
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 253
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'.')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}
