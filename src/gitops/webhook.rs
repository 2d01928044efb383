//! Push webhooks: `POST /hooks/git/{namespace}/{name}` verifies the forge's signature against
//! the `token` key of the GitSync's `webhookSecretRef` Secret and then only *triggers a fetch*:
//! the payload is never read as content.
//!
//! - GitHub (and Gitea/Forgejo, which send it too): `X-Hub-Signature-256: sha256=<hex HMAC>`;
//! - Gitea: `X-Gitea-Signature: <hex HMAC-SHA256>`;
//! - GitLab: `X-Gitlab-Token: <secret>` (a shared token, no HMAC).
//!
//! Every comparison is constant-time. The checks before a request may do anything (names, the
//! secret from memory, signature, replay, rate) are in `hook_guard`; an unknown GitSync, one
//! without a secret and a wrong signature all get the same 401.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, KeyInit, Mac};
use kube::Client;
use kube::runtime::reflector::ObjectRef;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::hook_guard::HookGuard;

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

/// Requests for an immediate fetch, shared by the webhook receiver and the reconciler.
#[derive(Clone, Default)]
pub struct SyncTriggers {
    pending: Arc<Mutex<HashSet<(String, String)>>>,
    /// Wakes the running controller; `None` until one runs.
    sender: Arc<Mutex<Option<mpsc::UnboundedSender<ObjectRef<GitSync>>>>>,
}

impl std::fmt::Debug for SyncTriggers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncTriggers")
    }
}

impl SyncTriggers {
    /// Marks the GitSync for a fetch and wakes its reconciler.
    pub fn request(&self, namespace: &str, name: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.insert((namespace.to_string(), name.to_string()));
        let sender = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = sender.as_ref() {
            let _ = sender.send(ObjectRef::new(name).within(namespace));
        }
    }

    /// Whether a fetch was requested since the last call (and forgets the request).
    pub fn take(&self, namespace: &str, name: &str) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.remove(&(namespace.to_string(), name.to_string()))
    }

    /// The stream of requests for a (re)starting controller; earlier streams end.
    pub fn stream(&self) -> tokio_stream_shim::Receiver {
        let (sender, receiver) = mpsc::unbounded_channel();
        *self.sender.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender);
        tokio_stream_shim::Receiver(receiver)
    }
}

/// A `Stream` over an unbounded receiver (what `tokio-stream` would provide).
pub mod tokio_stream_shim {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use kube::runtime::reflector::ObjectRef;

    use crate::crd::GitSync;

    pub struct Receiver(pub tokio::sync::mpsc::UnboundedReceiver<ObjectRef<GitSync>>);

    impl futures::Stream for Receiver {
        type Item = ObjectRef<GitSync>;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.0.poll_recv(cx)
        }
    }
}

#[derive(Clone)]
struct HookState {
    /// Only for what a verified request does; nothing before verification calls the API.
    #[allow(dead_code)]
    client: Client,
    guard: HookGuard,
    triggers: SyncTriggers,
    metrics: SharedMetrics,
}

/// The webhook route, to merge into the controller's HTTP router. `guard` holds the secrets
/// the GitSync reconciler read (the same one as in `GitopsSettings::hooks`).
pub fn router(
    client: Client,
    guard: HookGuard,
    triggers: SyncTriggers,
    metrics: SharedMetrics,
) -> Router {
    Router::new()
        .route("/hooks/git/{namespace}/{name}", post(receive))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(HookState {
            client,
            guard,
            triggers,
            metrics,
        })
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
    // Everything up to here is answered from memory: no API call for an unverified request.
    match state
        .guard
        .check(&namespace, &name, &headers, &body, Instant::now())
    {
        Ok(forge) => {
            outcome("accepted");
            info!(%namespace, %name, ?forge, "verified push webhook; fetching");
            state.triggers.request(&namespace, &name);
            (StatusCode::ACCEPTED, "sync requested\n")
        }
        Err(refusal) => {
            outcome(refusal.metric_label());
            debug!(reason = refusal.metric_label(), "refused push webhook");
            (refusal.status(), refusal.message())
        }
    }
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

    #[test]
    fn triggers_are_taken_once() {
        let triggers = SyncTriggers::default();
        assert!(!triggers.take("ns", "a"));
        triggers.request("ns", "a");
        assert!(triggers.take("ns", "a"));
        assert!(!triggers.take("ns", "a"));
        let mut first = triggers.stream();
        triggers.request("ns", "b");
        assert_eq!(
            first.0.try_recv().ok(),
            Some(ObjectRef::new("b").within("ns"))
        );
        let mut second = triggers.stream();
        triggers.request("ns", "c");
        assert!(first.0.try_recv().is_err(), "a replaced stream ends");
        assert_eq!(
            second.0.try_recv().ok(),
            Some(ObjectRef::new("c").within("ns"))
        );
    }
}
