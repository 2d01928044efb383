//! Authentication and authorisation of API requests, behind one pluggable [`Authenticator`]:
//! a static bearer token ([`StaticToken`], an administrator credential) or the Kubernetes
//! TokenReview and SubjectAccessReview APIs ([`KubernetesAuth`]).

pub mod cache;
pub mod kubernetes;

pub use kubernetes::KubernetesAuth;

use axum::http::HeaderMap;
use futures::FutureExt;
use futures::future::BoxFuture;

/// Who made a request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal {
    /// User name as the authenticator knows it; compared with `spec.user` of sessions.
    pub name: String,
    pub groups: Vec<String>,
}

/// What a request needs beyond being authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Set or clear ownership flag overrides.
    ManageFlags,
    /// Node actions: labels, taints, cordon, uncordon, drain.
    ManageNodes,
    /// Read nodes and cluster statistics.
    ReadCluster,
    /// Act on sessions of other users (operators); the verb is a Kubernetes verb (`get`,
    /// `list`, `create`, `update`, `delete`) on `sessions.stream.space`.
    OperateSessions(&'static str),
}

impl Permission {
    /// For messages: "`<principal>` may not `<this>`".
    pub fn describe(self) -> String {
        match self {
            Permission::ManageFlags => "change ownership flags".into(),
            Permission::ManageNodes => "change nodes".into(),
            Permission::ReadCluster => "read cluster information".into(),
            Permission::OperateSessions(verb) => format!("{verb} sessions of other users"),
        }
    }
}

/// Decides who a request comes from, and what they may do.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate<'a>(
        &'a self,
        headers: &'a HeaderMap,
    ) -> BoxFuture<'a, Result<Principal, AuthError>>;

    /// Whether `principal` has `permission`; `Unavailable` when that cannot be decided now.
    fn authorize<'a>(
        &'a self,
        principal: &'a Principal,
        permission: Permission,
    ) -> BoxFuture<'a, Result<bool, AuthError>>;
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

/// The principal of the static token.
pub const STATIC_TOKEN_PRINCIPAL: &str = "static-token";

impl Authenticator for StaticToken {
    fn authenticate<'a>(
        &'a self,
        headers: &'a HeaderMap,
    ) -> BoxFuture<'a, Result<Principal, AuthError>> {
        let result = check_bearer(headers, &self.token).map(|()| Principal {
            name: STATIC_TOKEN_PRINCIPAL.into(),
            groups: Vec::new(),
        });
        futures::future::ready(result).boxed()
    }

    /// The static token is an administrator credential: it may do everything.
    fn authorize<'a>(
        &'a self,
        _principal: &'a Principal,
        _permission: Permission,
    ) -> BoxFuture<'a, Result<bool, AuthError>> {
        futures::future::ready(Ok(true)).boxed()
    }
}

pub use crate::wire::{AuthError, bearer_token, check_bearer, constant_time_eq};

#[cfg(test)]
mod tests {
    use axum::http::header::AUTHORIZATION;

    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Ok(value) = value.parse() {
            headers.insert(AUTHORIZATION, value);
        }
        headers
    }

    #[tokio::test]
    async fn bearer_tokens() {
        let auth = StaticToken::new("s3cret");
        assert!(auth.authenticate(&headers("Bearer s3cret")).await.is_ok());
        assert_eq!(
            auth.authenticate(&headers("Bearer s3cre")).await,
            Err(AuthError::Invalid)
        );
        assert_eq!(
            auth.authenticate(&headers("Basic s3cret")).await,
            Err(AuthError::Missing)
        );
        assert_eq!(
            auth.authenticate(&HeaderMap::new()).await,
            Err(AuthError::Missing)
        );
        assert!(auth.authenticate(&headers("bearer s3cret")).await.is_ok());
        assert_eq!(
            auth.authenticate(&headers("Bearer ")).await,
            Err(AuthError::Missing)
        );
        assert_eq!(bearer_token(&headers("Bearer  tok ")), Ok("tok"));
        assert_eq!(bearer_token(&headers("Bear")), Err(AuthError::Missing));
    }
}
