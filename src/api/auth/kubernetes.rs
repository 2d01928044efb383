//! [`KubernetesAuth`]: bearer tokens checked by the API server (TokenReview), permissions
//! decided by its authorizer (SubjectAccessReview), so operators grant API rights with
//! ordinary RBAC.
//!
//! | permission | verb | resource (group) | scope |
//! |---|---|---|---|
//! | `ManageFlags` | `update` | `featureflags` (`stream.space`) | cluster |
//! | `ManageNodes` | `update` | `nodes` (core) | cluster |
//! | `ReadCluster` | `list` | `nodes` (core) | cluster |
//! | `OperateSessions(verb)` | `verb` | `sessions` (`stream.space`) | the API's namespace |
//!
//! Answers are cached for a few seconds ([`DEFAULT_TTL`]), keyed by the SHA-256 of the token
//! (the token itself is never kept) and by principal and permission. Accepted and refused
//! answers live in separate bounded caches ([`SplitCache`]), so a flood of random tokens cannot
//! push accepted ones out.
//!
//! With an audience ([`KubernetesAuth::with_audience`]) the TokenReview asks for it and the
//! answer must confirm it: only tokens issued for this API (`kubectl create token --audience`)
//! are accepted, not a user's general Kubernetes credential.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};
use sha2::{Digest, Sha256};

use super::cache::SplitCache;
use super::{AuthError, Authenticator, Permission, Principal, bearer_token};
use crate::metrics::SharedMetrics;

/// How long an answer is reused: long enough that heartbeats (every few seconds) hit the
/// cache, short enough that a revoked token or role stops working quickly.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// Most answers kept of each kind; bounds memory whatever clients send.
pub const DEFAULT_CAPACITY: usize = 4096;

/// API group of the StreamSpace kinds.
const GROUP: &str = "stream.space";

/// Who may do what, as the Kubernetes API server says.
pub struct KubernetesAuth {
    client: Client,
    /// Namespace of the sessions (where `OperateSessions` is checked).
    namespace: String,
    /// Audience a token must be issued for; `None` accepts any token the cluster accepts.
    audience: Option<String>,
    /// SHA-256 of a token -> its principal (refused: the API server rejected it).
    tokens: Mutex<SplitCache<[u8; 32], Principal>>,
    /// Accepted: allowed; refused: denied.
    decisions: Mutex<SplitCache<(Principal, Permission), ()>>,
    token_reviews: AtomicU64,
    access_reviews: AtomicU64,
    metrics: Option<SharedMetrics>,
}

impl KubernetesAuth {
    pub fn new(client: Client, namespace: impl Into<String>) -> Self {
        Self::with_ttl(client, namespace, DEFAULT_TTL)
    }

    pub fn with_ttl(client: Client, namespace: impl Into<String>, ttl: Duration) -> Self {
        Self::with_limits(client, namespace, ttl, DEFAULT_CAPACITY)
    }

    /// Answers kept for `ttl`, at most `capacity` of each kind (accepted, refused) per cache.
    pub fn with_limits(
        client: Client,
        namespace: impl Into<String>,
        ttl: Duration,
        capacity: usize,
    ) -> Self {
        KubernetesAuth {
            client,
            namespace: namespace.into(),
            audience: None,
            tokens: Mutex::new(SplitCache::new(ttl, capacity)),
            decisions: Mutex::new(SplitCache::new(ttl, capacity)),
            token_reviews: AtomicU64::new(0),
            access_reviews: AtomicU64::new(0),
            metrics: None,
        }
    }

    /// Accepts only tokens issued for `audience` (`None`, the default: any token the cluster
    /// accepts).
    pub fn with_audience(mut self, audience: Option<String>) -> Self {
        self.audience = audience.filter(|a| !a.is_empty());
        self
    }

    /// Cached token answers: (accepted, refused).
    pub fn cached_tokens(&self) -> (usize, usize) {
        lock(&self.tokens).sizes()
    }

    /// Counts answers in `streamspace_api_auth_reviews_total{kind, outcome}`.
    pub fn with_metrics(mut self, metrics: SharedMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn count(&self, kind: &'static str, outcome: &'static str) {
        if let Some(metrics) = &self.metrics {
            metrics.api.auth_review(kind, outcome);
        }
    }

    /// TokenReviews sent so far (cache misses).
    pub fn token_reviews(&self) -> u64 {
        self.token_reviews.load(Ordering::Relaxed)
    }

    /// SubjectAccessReviews sent so far (cache misses).
    pub fn access_reviews(&self) -> u64 {
        self.access_reviews.load(Ordering::Relaxed)
    }

    async fn review_token(&self, token: &str) -> Result<Option<Principal>, AuthError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(known) = lock(&self.tokens).get(&key, Instant::now()) {
            self.count("token", "cached");
            return Ok(known);
        }
        self.token_reviews.fetch_add(1, Ordering::Relaxed);
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: self.audience.clone().map(|a| vec![a]),
            },
            ..TokenReview::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                self.count("token", "failed");
                // The detail stays in the log: callers learn only that it failed.
                tracing::warn!(error = %e, "TokenReview failed");
                AuthError::Unavailable(
                    "the Kubernetes API server did not answer the TokenReview".into(),
                )
            })?;
        let principal = principal_of(answer.status.as_ref(), self.audience.as_deref());
        self.count(
            "token",
            if principal.is_some() {
                "authenticated"
            } else {
                "rejected"
            },
        );
        lock(&self.tokens).insert(key, principal.clone(), Instant::now());
        Ok(principal)
    }

    async fn review_access(
        &self,
        principal: &Principal,
        permission: Permission,
    ) -> Result<bool, AuthError> {
        let key = (principal.clone(), permission);
        if let Some(allowed) = lock(&self.decisions).get(&key, Instant::now()) {
            self.count("access", "cached");
            return Ok(allowed.is_some());
        }
        self.access_reviews.fetch_add(1, Ordering::Relaxed);
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(principal.name.clone()),
                groups: Some(principal.groups.clone()),
                resource_attributes: Some(resource_attributes(permission, &self.namespace)),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                self.count("access", "failed");
                // The detail stays in the log: callers learn only that it failed.
                tracing::warn!(error = %e, "SubjectAccessReview failed");
                AuthError::Unavailable(
                    "the Kubernetes API server did not answer the SubjectAccessReview".into(),
                )
            })?;
        let allowed = answer.status.is_some_and(|s| s.allowed);
        self.count("access", if allowed { "allowed" } else { "denied" });
        lock(&self.decisions).insert(key, allowed.then_some(()), Instant::now());
        Ok(allowed)
    }
}

impl Authenticator for KubernetesAuth {
    fn authenticate<'a>(
        &'a self,
        headers: &'a HeaderMap,
    ) -> BoxFuture<'a, Result<Principal, AuthError>> {
        async move {
            let token = bearer_token(headers)?;
            self.review_token(token)
                .await?
                .ok_or_else(|| match &self.audience {
                    Some(audience) => AuthError::NotForAudience(audience.clone()),
                    None => AuthError::Invalid,
                })
        }
        .boxed()
    }

    fn authorize<'a>(
        &'a self,
        principal: &'a Principal,
        permission: Permission,
    ) -> BoxFuture<'a, Result<bool, AuthError>> {
        self.review_access(principal, permission).boxed()
    }
}

/// The principal of an answered TokenReview; `None` unless authenticated with a user name
/// and, when an audience is required, confirmed for it (an API server that ignores the
/// requested audiences answers without them: refused, never accepted by default).
fn principal_of(status: Option<&TokenReviewStatus>, audience: Option<&str>) -> Option<Principal> {
    let status = status?;
    if status.authenticated != Some(true) {
        return None;
    }
    if let Some(audience) = audience {
        let confirmed = status.audiences.iter().flatten().any(|a| a == audience);
        if !confirmed {
            return None;
        }
    }
    let user = status.user.as_ref()?;
    let name = user.username.clone().filter(|n| !n.is_empty())?;
    Some(Principal {
        name,
        groups: user.groups.clone().unwrap_or_default(),
    })
}

/// The Kubernetes request a permission stands for (the table in the module docs).
pub fn resource_attributes(permission: Permission, namespace: &str) -> ResourceAttributes {
    let (verb, group, resource, namespace) = match permission {
        Permission::ManageFlags => ("update", GROUP, "featureflags", None),
        Permission::ManageNodes => ("update", "", "nodes", None),
        Permission::ReadCluster => ("list", "", "nodes", None),
        Permission::OperateSessions(verb) => (verb, GROUP, "sessions", Some(namespace)),
    };
    ResourceAttributes {
        verb: Some(verb.to_string()),
        group: Some(group.to_string()),
        resource: Some(resource.to_string()),
        namespace: namespace.map(str::to_string),
        ..ResourceAttributes::default()
    }
}

/// A poisoned cache is still a valid cache: every write leaves it consistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    #[test]
    fn permissions_map_to_kubernetes_requests() {
        let rows: [(Permission, &str, &str, &str, Option<&str>); 5] = [
            (
                Permission::ManageFlags,
                "update",
                "stream.space",
                "featureflags",
                None,
            ),
            (Permission::ManageNodes, "update", "", "nodes", None),
            (Permission::ReadCluster, "list", "", "nodes", None),
            (
                Permission::OperateSessions("update"),
                "update",
                "stream.space",
                "sessions",
                Some("team-a"),
            ),
            (
                Permission::OperateSessions("list"),
                "list",
                "stream.space",
                "sessions",
                Some("team-a"),
            ),
        ];
        for (permission, verb, group, resource, namespace) in rows {
            let attributes = resource_attributes(permission, "team-a");
            assert_eq!(attributes.verb.as_deref(), Some(verb), "{permission:?}");
            assert_eq!(attributes.group.as_deref(), Some(group), "{permission:?}");
            assert_eq!(
                attributes.resource.as_deref(),
                Some(resource),
                "{permission:?}"
            );
            assert_eq!(attributes.namespace.as_deref(), namespace, "{permission:?}");
            assert_eq!(attributes.name, None);
            assert_eq!(attributes.subresource, None);
        }
    }

    fn status(authenticated: Option<bool>, username: Option<&str>) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated,
            audiences: Some(vec!["streamspace-api".into()]),
            user: Some(UserInfo {
                username: username.map(str::to_string),
                groups: Some(vec!["streamspace:users".into()]),
                ..UserInfo::default()
            }),
            ..TokenReviewStatus::default()
        }
    }

    #[test]
    fn only_authenticated_reviews_with_a_user_name_give_a_principal() {
        let alice = Some(Principal {
            name: "alice".into(),
            groups: vec!["streamspace:users".into()],
        });
        let rows: [(TokenReviewStatus, Option<&str>, bool); 9] = [
            (status(Some(true), Some("alice")), None, true),
            (status(Some(false), Some("alice")), None, false),
            (status(None, Some("alice")), None, false),
            (status(Some(true), Some("")), None, false),
            (status(Some(true), None), None, false),
            // With an audience required, the answer must name it.
            (
                status(Some(true), Some("alice")),
                Some("streamspace-api"),
                true,
            ),
            (status(Some(true), Some("alice")), Some("other-api"), false),
            (
                TokenReviewStatus {
                    audiences: None,
                    ..status(Some(true), Some("alice"))
                },
                Some("streamspace-api"),
                false,
            ),
            (
                status(Some(false), Some("alice")),
                Some("streamspace-api"),
                false,
            ),
        ];
        for (answer, audience, accepted) in rows {
            let expected = if accepted { alice.clone() } else { None };
            assert_eq!(
                principal_of(Some(&answer), audience),
                expected,
                "{answer:?} {audience:?}"
            );
        }
        assert_eq!(principal_of(None, None), None);
    }
}
