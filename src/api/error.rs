//! The error every API handler answers with: a status code, a message of our own and a fixed
//! metric label. Kept apart from the handlers so feature modules can use it without depending
//! on them.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::warn;

/// Errors answered to clients; each has a status code and a fixed metric label.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(#[from] super::auth::AuthError),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("session {0:?} not found")]
    NotFound(String),
    /// Anything else that does not exist; the message says what.
    #[error("{0}")]
    Missing(String),
    /// 429: a per-user or per-replica limit is reached.
    #[error("{0}")]
    TooMany(String),
    /// 409: the change contradicts how the object is managed; the message says what to do.
    #[error("{0}")]
    Conflict(String),
    /// 503: a cache is still loading, or a store cannot be read; the message says which.
    #[error("{0}")]
    Unavailable(String),
    /// Logged in full; the caller gets [`kube_failure`]'s message of our own, never the API
    /// server's text (it names objects, service accounts and rules the caller need not see).
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
}

/// What a caller is told when a Kubernetes request of the API failed: a status and a message
/// of our own for each kind of failure. The detail goes to the log.
pub fn kube_failure(error: &kube::Error) -> (StatusCode, &'static str) {
    match error {
        kube::Error::Api(status) => match status.code {
            401 | 403 => (
                StatusCode::BAD_GATEWAY,
                "the API is not allowed to do this in Kubernetes; ask an administrator to check its RBAC",
            ),
            404 => (
                StatusCode::NOT_FOUND,
                "an object this request needs does not exist (any more)",
            ),
            409 => (
                StatusCode::CONFLICT,
                "the object was changed at the same time; retry",
            ),
            400 | 422 => (
                StatusCode::BAD_GATEWAY,
                "Kubernetes refused the change as invalid; the API's log has the detail",
            ),
            429 => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the Kubernetes API server is busy; retry shortly",
            ),
            _ => (
                StatusCode::BAD_GATEWAY,
                "the Kubernetes API server failed the request; retry, the API's log has the detail",
            ),
        },
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the Kubernetes API server did not answer; retry shortly",
        ),
    }
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(super::auth::AuthError::Unavailable(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) | ApiError::Missing(_) => StatusCode::NOT_FOUND,
            ApiError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Kube(error) => kube_failure(error).0,
        }
    }

    pub fn metric_label(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(e) => e.metric_label(),
            ApiError::Forbidden(_) => "forbidden",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NotFound(_) | ApiError::Missing(_) => "not_found",
            ApiError::TooMany(_) => "too_many",
            ApiError::Conflict(_) => "conflict",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Kube(_) => "kube",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Kube(error) = &self {
            // The request's span ([`super::timing`]) names the endpoint.
            warn!(%error, label = self.metric_label(), "request failed");
        }
        let status = self.status();
        let message = match &self {
            ApiError::Kube(error) => kube_failure(error).1.to_string(),
            other => other.to_string(),
        };
        (status, Json(json!({"success": false, "error": message}))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(message, "Reason")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn kubernetes_failures_are_answered_in_our_own_words() {
        let secret = r#"sessions.stream.space "x" is forbidden: User "system:serviceaccount:ns:api" cannot get resource"#;
        let rows = [
            (401, StatusCode::BAD_GATEWAY, "not allowed"),
            (403, StatusCode::BAD_GATEWAY, "not allowed"),
            (404, StatusCode::NOT_FOUND, "does not exist"),
            (409, StatusCode::CONFLICT, "changed at the same time"),
            (
                422,
                StatusCode::BAD_GATEWAY,
                "refused the change as invalid",
            ),
            (429, StatusCode::SERVICE_UNAVAILABLE, "busy"),
            (500, StatusCode::BAD_GATEWAY, "failed the request"),
        ];
        for (code, status, words) in rows {
            let error = api_error(code, secret);
            let (got, message) = kube_failure(&error);
            assert_eq!(got, status, "{code}");
            assert!(message.contains(words), "{code}: {message}");
            let api_error = ApiError::Kube(error);
            assert_eq!(api_error.status(), status);
            assert!(
                api_error.to_string().contains("forbidden"),
                "the log keeps the detail"
            );
        }
        let unreachable = kube::Error::Service("connection refused".into());
        assert_eq!(
            kube_failure(&unreachable),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the Kubernetes API server did not answer; retry shortly"
            )
        );
    }
}
