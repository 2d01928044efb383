//! Verification of a push webhook's signature, as a pure function of its headers, body and
//! secret: GitHub's and Gitea's HMAC-SHA256, GitLab's shared token. Every comparison is
//! constant-time.

use axum::http::HeaderMap;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

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
