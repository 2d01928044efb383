//! Authentication of API requests: a pluggable [`Authenticator`]; for now a static bearer token
//! ([`StaticToken`]). The flags issue adds JWT and the rest behind the same trait.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;

/// Who made a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing bearer token (Authorization: Bearer <token>)")]
    Missing,
    #[error("invalid bearer token")]
    Invalid,
}

impl AuthError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Invalid => "invalid",
        }
    }
}

/// Decides who a request comes from, from its headers.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError>;
}

/// One shared bearer token.
pub struct StaticToken {
    token: String,
}

impl StaticToken {
    pub fn new(token: impl Into<String>) -> Self {
        StaticToken {
            token: token.into(),
        }
    }
}

impl Authenticator for StaticToken {
    fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        check_bearer(headers, &self.token)?;
        Ok(Principal {
            name: "static-token".into(),
        })
    }
}

/// Checks `Authorization: Bearer <expected>` in constant time.
pub fn check_bearer(headers: &HeaderMap, expected: &str) -> Result<(), AuthError> {
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(AuthError::Missing)?;
    if constant_time_eq(presented.trim().as_bytes(), expected.as_bytes()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Ok(value) = value.parse() {
            headers.insert(AUTHORIZATION, value);
        }
        headers
    }

    #[test]
    fn bearer_tokens() {
        let auth = StaticToken::new("s3cret");
        assert!(auth.authenticate(&headers("Bearer s3cret")).is_ok());
        assert_eq!(
            auth.authenticate(&headers("Bearer s3cre")),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            auth.authenticate(&headers("Basic s3cret")),
            Err(AuthError::Missing)
        );
        assert_eq!(
            auth.authenticate(&HeaderMap::new()),
            Err(AuthError::Missing)
        );
    }
}
