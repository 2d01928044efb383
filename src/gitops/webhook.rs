//! Push webhooks: `POST /hooks/git/{namespace}/{name}` verifies the forge's signature against
//! the `token` key of the GitSync's `webhookSecretRef` Secret and then only *requests a sync*
//! (the annotation of [`super::sync_request`], acted on by the leader): the payload is never
//! read as content.
//!
//! - GitHub (and Gitea/Forgejo, which send it too): `X-Hub-Signature-256: sha256=<hex HMAC>`;
//! - Gitea: `X-Gitea-Signature: <hex HMAC-SHA256>`;
//! - GitLab: `X-Gitlab-Token: <secret>` (a shared token, no HMAC).
//!
//! Every comparison is constant-time; a missing or wrong signature is a 401 and no sync.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, KeyInit, Mac};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use crate::crd::GitSync;
use crate::metrics::SharedMetrics;

/// Largest accepted payload; push payloads are a few KiB, and we never read them anyway.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Key of the webhook Secret that holds the shared secret.
pub const SECRET_KEY: &str = "token";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forge {
    GitHub,
    Gitea,
    GitLab,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no X-Hub-Signature-256, X-Gitea-Signature or X-Gitlab-Token header")]
    Missing,
    #[error("the signature header is malformed")]
    Malformed,
    #[error("the signature does not match")]
    Mismatch,
}

impl SignatureError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            SignatureError::Missing => "missing_signature",
            SignatureError::Malformed => "malformed_signature",
            SignatureError::Mismatch => "bad_signature",
        }
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn verify_hmac(secret: &[u8], body: &[u8], hex: &str) -> Result<(), SignatureError> {
    let expected = decode_hex(hex.trim()).ok_or(SignatureError::Malformed)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| SignatureError::Mismatch)?;
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&expected)
        .map_err(|_| SignatureError::Mismatch)
}

/// Checks the request's signature with `secret`; the first signature header present decides.
pub fn verify(headers: &HeaderMap, body: &[u8], secret: &[u8]) -> Result<Forge, SignatureError> {
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().map_err(|_| SignatureError::Malformed))
    };
    if secret.is_empty() {
        return Err(SignatureError::Mismatch);
    }
    if let Some(value) = header("x-hub-signature-256") {
        let hex = value?
            .strip_prefix("sha256=")
            .ok_or(SignatureError::Malformed)?;
        return verify_hmac(secret, body, hex).map(|()| Forge::GitHub);
    }
    if let Some(value) = header("x-gitea-signature") {
        return verify_hmac(secret, body, value?).map(|()| Forge::Gitea);
    }
    if let Some(value) = header("x-gitlab-token") {
        let matches: bool = value?.as_bytes().ct_eq(secret).into();
        return if matches {
            Ok(Forge::GitLab)
        } else {
            Err(SignatureError::Mismatch)
        };
    }
    Err(SignatureError::Missing)
}

#[derive(Clone)]
struct HookState {
    client: Client,
    metrics: SharedMetrics,
}

/// The webhook route, served on the controller's hooks listener only.
pub fn router(client: Client, metrics: SharedMetrics) -> Router {
    Router::new()
        .route("/hooks/git/{namespace}/{name}", post(receive))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(HookState { client, metrics })
}

async fn receive(
    State(state): State<HookState>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let outcome = |reason: &'static str| {
        state
            .metrics
            .gitops
            .webhooks
            .get_or_create(&super::metrics::ReasonLabel { reason })
            .inc();
    };
    let secret = match webhook_secret(&state.client, &namespace, &name).await {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            outcome("no_secret");
            return (StatusCode::UNAUTHORIZED, "no webhook secret configured\n");
        }
        Err(status) => {
            outcome("lookup_failed");
            return (status, "GitSync or its webhook secret not found\n");
        }
    };
    match verify(&headers, &body, &secret) {
        Ok(forge) => {
            if let Err(error) = super::sync_request::mark(&state.client, &namespace, &name).await {
                outcome("request_failed");
                warn!(%namespace, %name, %error, "could not mark the GitSync for a sync");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "could not request a sync\n",
                );
            }
            outcome("accepted");
            info!(%namespace, %name, ?forge, "verified push webhook; sync requested");
            (StatusCode::ACCEPTED, "sync requested\n")
        }
        Err(error) => {
            outcome(error.metric_label());
            warn!(%namespace, %name, %error, "rejected push webhook");
            (StatusCode::UNAUTHORIZED, "invalid signature\n")
        }
    }
}

/// The shared secret of a GitSync's webhook, `None` when it has no webhook secret.
async fn webhook_secret(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<Vec<u8>>, StatusCode> {
    let sync = Api::<GitSync>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?
        .ok_or(StatusCode::NOT_FOUND)?;
    let Some(reference) = sync.spec.webhook_secret_ref else {
        return Ok(None);
    };
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(&reference.name)
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?
        .ok_or(StatusCode::NOT_FOUND)?;
    Ok(secret
        .data
        .and_then(|mut data| data.remove(SECRET_KEY))
        .map(|value| value.0))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
        mac.update(body);
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).expect("header value"));
        }
        map
    }

    #[test]
    fn table_of_signatures() {
        let secret = b"s3cret";
        let body = br#"{"ref":"refs/heads/main"}"#;
        let good = sign(secret, body);
        let other = sign(b"other", body);
        type Case = (Vec<(&'static str, String)>, Result<Forge, SignatureError>);
        let cases: Vec<Case> = vec![
            (
                vec![("x-hub-signature-256", format!("sha256={good}"))],
                Ok(Forge::GitHub),
            ),
            (
                vec![("x-hub-signature-256", format!("sha256={other}"))],
                Err(SignatureError::Mismatch),
            ),
            (
                vec![("x-hub-signature-256", good.clone())],
                Err(SignatureError::Malformed),
            ),
            (
                vec![("x-hub-signature-256", "sha256=zz".into())],
                Err(SignatureError::Malformed),
            ),
            (
                vec![("x-hub-signature-256", format!("sha256={}", &good[..10]))],
                Err(SignatureError::Mismatch),
            ),
            (vec![("x-gitea-signature", good.clone())], Ok(Forge::Gitea)),
            (
                vec![("x-gitea-signature", other.clone())],
                Err(SignatureError::Mismatch),
            ),
            (vec![("x-gitlab-token", "s3cret".into())], Ok(Forge::GitLab)),
            (
                vec![("x-gitlab-token", "s3cre".into())],
                Err(SignatureError::Mismatch),
            ),
            (
                vec![("x-gitlab-token", "s3cret2".into())],
                Err(SignatureError::Mismatch),
            ),
            // A wrong GitHub signature is not rescued by a right GitLab token.
            (
                vec![
                    ("x-hub-signature-256", format!("sha256={other}")),
                    ("x-gitlab-token", "s3cret".into()),
                ],
                Err(SignatureError::Mismatch),
            ),
            (vec![], Err(SignatureError::Missing)),
        ];
        for (pairs, expected) in cases {
            assert_eq!(
                verify(&headers(&pairs), body, secret),
                expected,
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn an_empty_secret_verifies_nothing() {
        let body = b"x";
        let signature = sign(b"", body);
        let headers = headers(&[("x-hub-signature-256", format!("sha256={signature}"))]);
        assert_eq!(verify(&headers, body, b""), Err(SignatureError::Mismatch));
    }

    #[test]
    fn a_changed_body_fails() {
        let signature = sign(b"k", b"body");
        let headers = headers(&[("x-hub-signature-256", format!("sha256={signature}"))]);
        assert_eq!(
            verify(&headers, b"body!", b"k"),
            Err(SignatureError::Mismatch)
        );
    }
}
