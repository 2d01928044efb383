//! Errors of the sessions endpoints: the shared API errors plus the answers only these
//! endpoints give (invalid request with a message, quota, conflict). Each has a status code and
//! a fixed metric label.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::request::Invalid;
use crate::api::error::ApiError;

/// The 409 of a write that lost a race.
pub const CHANGED_CONCURRENTLY: &str = "the session was changed at the same time; retry";

#[derive(Debug, thiserror::Error)]
pub enum SessionsError {
    /// 401, 403, 400, 404 and 502 as every endpoint answers them.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// 400 with a short `error` and a detailed `message` (as the old API answered).
    #[error("{}: {}", .0.error, .0.message)]
    Invalid(Invalid),
    /// 403 `{"error": "Quota exceeded", "message": ...}` with the quota engine's message.
    #[error("Quota exceeded: {0}")]
    QuotaExceeded(String),
    /// 409: the session changed under every attempt, or already exists.
    #[error("{0}")]
    Conflict(String),
    /// 503: a cache the decision needs has not loaded yet.
    #[error("{0}")]
    Unavailable(String),
}

impl From<Invalid> for SessionsError {
    fn from(invalid: Invalid) -> Self {
        SessionsError::Invalid(invalid)
    }
}

impl From<kube::Error> for SessionsError {
    fn from(error: kube::Error) -> Self {
        match &error {
            // The API server's text names fields and versions; callers get our own words.
            kube::Error::Api(status) if status.code == 409 || status.is_conflict() => {
                SessionsError::Conflict(CHANGED_CONCURRENTLY.into())
            }
            _ => SessionsError::Api(ApiError::Kube(error)),
        }
    }
}

impl SessionsError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            SessionsError::Api(e) => e.metric_label(),
            SessionsError::Invalid(_) => "bad_request",
            SessionsError::QuotaExceeded(_) => "quota_exceeded",
            SessionsError::Conflict(_) => "conflict",
            SessionsError::Unavailable(_) => "unavailable",
        }
    }

    pub fn not_found(name: &str) -> SessionsError {
        SessionsError::Api(ApiError::NotFound(name.to_string()))
    }
}

impl IntoResponse for SessionsError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            SessionsError::Api(error) => return error.into_response(),
            SessionsError::Invalid(Invalid { error, message }) => (
                StatusCode::BAD_REQUEST,
                json!({"success": false, "error": error, "message": message}),
            ),
            SessionsError::QuotaExceeded(message) => (
                StatusCode::FORBIDDEN,
                json!({"success": false, "error": "Quota exceeded", "message": message}),
            ),
            // The same answers as every endpoint's.
            SessionsError::Conflict(message) => {
                return ApiError::Conflict(message).into_response();
            }
            SessionsError::Unavailable(message) => {
                return ApiError::Unavailable(message).into_response();
            }
        };
        (status, Json(body)).into_response()
    }
}

/// The validating webhook's denial of a Session write, if `error` is one: the API server
/// answers 403 with `admission webhook "<name>" denied the request: <message>`.
pub fn webhook_denial(error: &kube::Error) -> Option<String> {
    const MARKER: &str = "denied the request: ";
    match error {
        kube::Error::Api(status) if status.code == 403 => status
            .message
            .split_once(MARKER)
            .filter(|(prefix, _)| prefix.contains("admission webhook"))
            .map(|(_, message)| message.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(message, "Forbidden")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn webhook_denials_are_recognised() {
        let denied = api_error(
            403,
            r#"admission webhook "quota.stream.space" denied the request: session quota exceeded: 2/2 sessions active"#,
        );
        assert_eq!(
            webhook_denial(&denied).as_deref(),
            Some("session quota exceeded: 2/2 sessions active")
        );
        let rbac = api_error(
            403,
            r#"sessions.stream.space is forbidden: User "x" cannot create resource"#,
        );
        assert_eq!(webhook_denial(&rbac), None);
        let conflict = api_error(409, "the object has been modified");
        assert_eq!(webhook_denial(&conflict), None);
        assert!(matches!(
            SessionsError::from(conflict),
            SessionsError::Conflict(_)
        ));
    }
}
