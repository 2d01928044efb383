//! Serving certificates of the webhook listener, swapped in place without a restart.
//!
//! Two sources: PEM files (mounted from a Secret that cert-manager maintains), polled and
//! reloaded when their contents change; or self-managed: a CA and a serving certificate kept in
//! a Secret, the CA written into the webhook configurations' `caBundle`, and the serving
//! certificate re-issued by the same CA before it expires. Because renewal keeps the CA, the
//! API server trusts old and new certificates alike and no request fails during a rotation.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::metrics::AdmissionMetrics;

/// How often mounted certificate files are compared with what is being served.
pub const FILE_POLL: Duration = Duration::from_secs(1);
/// How often the self-managed certificate's remaining validity is checked.
pub const RENEW_CHECK: Duration = Duration::from_secs(600);
/// Validity of a self-managed serving certificate.
pub const SERVING_VALIDITY: time::Duration = time::Duration::days(90);
/// A self-managed serving certificate is re-issued once less than this remains.
pub const RENEW_BEFORE: time::Duration = time::Duration::days(30);
/// Validity of the self-managed CA; renewing it is a manual step (delete the Secret).
pub const CA_VALIDITY: time::Duration = time::Duration::days(3650);
/// Tries to read or create the Secret at start-up before giving up.
const START_ATTEMPTS: u32 = 3;
/// Common name of the self-managed CA; its issuer name must stay stable across restarts.
const CA_NAME: &str = "streamspace-controller-webhook-ca";
/// Secret annotation holding the serving certificate's expiry (Unix seconds).
pub const NOT_AFTER_ANNOTATION: &str = "stream.space/serving-cert-not-after";
/// Secret annotation holding the serving certificate's names, to re-issue when they change.
pub const SANS_ANNOTATION: &str = "stream.space/serving-cert-names";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no certificate in the PEM data")]
    NoCertificate,
    #[error("unusable private key: {0}")]
    Key(String),
    #[error("generating {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("{action} failed: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
}

impl CertError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            CertError::Read { .. } => "read",
            CertError::NoCertificate => "no_certificate",
            CertError::Key(_) => "key",
            CertError::Generate { .. } => "generate",
            CertError::Kube { .. } => "kube",
        }
    }

    fn kube(action: impl Into<String>, source: kube::Error) -> CertError {
        CertError::Kube {
            action: action.into(),
            source,
        }
    }
}

/// A PEM certificate chain and key, checked to be usable by rustls.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(CertError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CertError::Key(e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified =
        CertifiedKey::from_der(chain, key, &provider).map_err(|e| CertError::Key(e.to_string()))?;
    Ok(certified)
}

/// The certificate the listener presents; replaced atomically on reload or renewal.
#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertResolver {
    pub fn new(initial: CertifiedKey) -> Arc<CertResolver> {
        Arc::new(CertResolver {
            current: RwLock::new(Arc::new(initial)),
        })
    }

    pub fn set(&self, key: CertifiedKey) {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        *current = Arc::new(key);
    }

    /// DER of the certificate being served now.
    pub fn current_cert(&self) -> Vec<u8> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        current.cert.first().map(|c| c.to_vec()).unwrap_or_default()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// Certificate files, reloaded when their contents change.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    fn read(&self) -> Result<(Vec<u8>, Vec<u8>), CertError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| CertError::Read {
                path: path.clone(),
                source,
            })
        };
        Ok((read(&self.cert)?, read(&self.key)?))
    }

    /// Loads the files once, for start-up.
    pub fn load(&self) -> Result<CertifiedKey, CertError> {
        let (cert, key) = self.read()?;
        certified_key(&cert, &key)
    }

    /// Polls the files and swaps the served certificate when they change; a half-written or
    /// broken pair is logged and the previous certificate kept.
    pub async fn watch(self, resolver: Arc<CertResolver>, metrics: AdmissionMetrics) {
        let mut last = self.read().ok();
        loop {
            tokio::time::sleep(FILE_POLL).await;
            let now = match self.read() {
                Ok(now) => now,
                Err(e) => {
                    warn!(error = %e, "reading webhook certificate files");
                    continue;
                }
            };
            if last.as_ref() == Some(&now) {
                continue;
            }
            match certified_key(&now.0, &now.1) {
                Ok(key) => {
                    resolver.set(key);
                    metrics.cert_reload("files", "ok");
                    info!(cert = %self.cert.display(), "webhook certificate reloaded");
                    last = Some(now);
                }
                Err(e) => {
                    metrics.cert_reload("files", e.metric_label());
                    warn!(error = %e, "webhook certificate files changed but are unusable; keeping the previous one");
                }
            }
        }
    }
}

/// PEM material of the self-managed mode, as kept in the Secret.
#[derive(Clone, Debug, PartialEq)]
pub struct Bundle {
    pub ca_cert: String,
    pub ca_key: String,
    pub cert: String,
    pub key: String,
    pub not_after: OffsetDateTime,
    pub names: String,
}

fn generate_error<T>(what: &'static str, r: Result<T, rcgen::Error>) -> Result<T, CertError> {
    r.map_err(|source| CertError::Generate { what, source })
}

fn ca_params(now: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + CA_VALIDITY;
    params
}

/// A new CA: (certificate PEM, key PEM).
pub fn new_ca(now: OffsetDateTime) -> Result<(String, String), CertError> {
    let key = generate_error("the CA key", KeyPair::generate())?;
    let cert = generate_error("the CA certificate", ca_params(now).self_signed(&key))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A serving certificate for `names` (DNS names or IP addresses) signed by the CA.
pub fn issue_serving(
    ca_key_pem: &str,
    names: &[String],
    now: OffsetDateTime,
) -> Result<(String, String, OffsetDateTime), CertError> {
    let ca_key = generate_error("reading the CA key", KeyPair::from_pem(ca_key_pem))?;
    let issuer = Issuer::new(ca_params(now), ca_key);
    let mut params = generate_error("the serving names", CertificateParams::new(names.to_vec()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + SERVING_VALIDITY;
    let key = generate_error("the serving key", KeyPair::generate())?;
    let cert = generate_error("the serving certificate", params.signed_by(&key, &issuer))?;
    Ok((cert.pem(), key.serialize_pem(), params.not_after))
}

/// Where the self-managed mode keeps its Secret and which configurations it patches.
#[derive(Clone, Debug)]
pub struct SelfManagedConfig {
    pub namespace: String,
    pub secret: String,
    /// DNS names and IP addresses of the serving certificate.
    pub names: Vec<String>,
    pub validating_configs: Vec<String>,
    pub mutating_configs: Vec<String>,
}

/// The self-managed CA and serving certificate.
pub struct SelfManaged {
    client: Client,
    config: SelfManagedConfig,
    resolver: Arc<CertResolver>,
    metrics: AdmissionMetrics,
    /// Serialises start-up, renewal and forced re-issues.
    lock: Mutex<()>,
}

impl SelfManaged {
    /// Loads or creates the Secret, writes the caBundle, and returns the manager with a
    /// resolver serving the current certificate.
    pub async fn start(
        client: Client,
        config: SelfManagedConfig,
        metrics: AdmissionMetrics,
    ) -> Result<Arc<SelfManaged>, CertError> {
        // Replicas starting together race to create the Secret; the loser re-reads it.
        let mut attempt = 1;
        let bundle = loop {
            match Self::ensure_secret(&client, &config, false).await {
                Ok(bundle) => break bundle,
                Err(e) if attempt < START_ATTEMPTS => {
                    warn!(error = %e, attempt, "preparing the webhook certificate; retrying");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let key = certified_key(bundle.cert.as_bytes(), bundle.key.as_bytes())?;
        let manager = Arc::new(SelfManaged {
            client,
            config,
            resolver: CertResolver::new(key),
            metrics,
            lock: Mutex::new(()),
        });
        manager.write_ca_bundle(&bundle.ca_cert).await?;
        Ok(manager)
    }

    pub fn resolver(&self) -> Arc<CertResolver> {
        self.resolver.clone()
    }

    /// Re-issues the serving certificate now (same CA), whatever its remaining validity.
    pub async fn reissue(&self) -> Result<(), CertError> {
        self.refresh(true).await
    }

    /// Renews the serving certificate when due; also picks up a Secret another replica renewed.
    pub async fn refresh(&self, force: bool) -> Result<(), CertError> {
        let _guard = self.lock.lock().await;
        let result = async {
            let bundle = Self::ensure_secret(&self.client, &self.config, force).await?;
            // The CA may have been replaced (Secret deleted): trust it before serving with it.
            self.write_ca_bundle(&bundle.ca_cert).await?;
            let key = certified_key(bundle.cert.as_bytes(), bundle.key.as_bytes())?;
            if key.cert.first().map(|c| c.to_vec()) != Some(self.resolver.current_cert()) {
                self.resolver.set(key);
                info!(not_after = %bundle.not_after, "webhook serving certificate renewed");
            }
            Ok(())
        }
        .await;
        self.metrics.cert_reload(
            "self-managed",
            result
                .as_ref()
                .map_or_else(CertError::metric_label, |_| "ok"),
        );
        result
    }

    /// Checks for renewal every [`RENEW_CHECK`], until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        loop {
            tokio::time::sleep(RENEW_CHECK).await;
            if let Err(e) = self.refresh(false).await {
                warn!(error = %e, "renewing the webhook certificate; will retry");
            }
        }
    }

    /// Reads the Secret, creating or updating it when the CA or serving cert is missing,
    /// unusable, due for renewal, for other names, or when `force` asks for a new serving cert.
    async fn ensure_secret(
        client: &Client,
        config: &SelfManagedConfig,
        force: bool,
    ) -> Result<Bundle, CertError> {
        let api: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
        let existing = api
            .get_opt(&config.secret)
            .await
            .map_err(|e| CertError::kube(format!("reading Secret {}", config.secret), e))?;
        let now = OffsetDateTime::now_utc();
        let names = config.names.join(",");
        let current = existing.as_ref().and_then(bundle_of);
        let (ca_cert, ca_key) = match &current {
            Some(b) if KeyPair::from_pem(&b.ca_key).is_ok() => {
                (b.ca_cert.clone(), b.ca_key.clone())
            }
            _ => new_ca(now)?,
        };
        let keep = current.as_ref().filter(|b| {
            !force
                && b.ca_cert == ca_cert
                && b.names == names
                && b.not_after - now > RENEW_BEFORE
                && certified_key(b.cert.as_bytes(), b.key.as_bytes()).is_ok()
        });
        if let Some(bundle) = keep {
            return Ok(bundle.clone());
        }
        let (cert, key, not_after) = issue_serving(&ca_key, &config.names, now)?;
        let bundle = Bundle {
            ca_cert,
            ca_key,
            cert,
            key,
            not_after,
            names,
        };
        let mut secret = secret_of(&bundle, &config.secret);
        match existing {
            Some(existing) => {
                secret.metadata.resource_version = existing.metadata.resource_version;
                api.replace(&config.secret, &PostParams::default(), &secret)
                    .await
                    .map_err(|e| {
                        CertError::kube(format!("updating Secret {}", config.secret), e)
                    })?;
            }
            None => {
                api.create(&PostParams::default(), &secret)
                    .await
                    .map_err(|e| {
                        CertError::kube(format!("creating Secret {}", config.secret), e)
                    })?;
            }
        }
        Ok(bundle)
    }

    /// Sets `caBundle` of every webhook in the named configurations, writing only on change.
    async fn write_ca_bundle(&self, ca_pem: &str) -> Result<(), CertError> {
        let wanted = ByteString(ca_pem.as_bytes().to_vec());
        let validating: Api<ValidatingWebhookConfiguration> = Api::all(self.client.clone());
        for name in &self.config.validating_configs {
            let Some(mut object) = validating
                .get_opt(name)
                .await
                .map_err(|e| CertError::kube(format!("reading {name}"), e))?
            else {
                warn!(%name, "ValidatingWebhookConfiguration not found; caBundle not written");
                continue;
            };
            let hooks = object.webhooks.iter_mut().flatten();
            let mut changed = false;
            for hook in hooks {
                if hook.client_config.ca_bundle.as_ref() != Some(&wanted) {
                    hook.client_config.ca_bundle = Some(wanted.clone());
                    changed = true;
                }
            }
            if changed {
                validating
                    .replace(name, &PostParams::default(), &object)
                    .await
                    .map_err(|e| CertError::kube(format!("writing caBundle of {name}"), e))?;
            }
        }
        let mutating: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        for name in &self.config.mutating_configs {
            let Some(mut object) = mutating
                .get_opt(name)
                .await
                .map_err(|e| CertError::kube(format!("reading {name}"), e))?
            else {
                warn!(%name, "MutatingWebhookConfiguration not found; caBundle not written");
                continue;
            };
            let mut changed = false;
            for hook in object.webhooks.iter_mut().flatten() {
                if hook.client_config.ca_bundle.as_ref() != Some(&wanted) {
                    hook.client_config.ca_bundle = Some(wanted.clone());
                    changed = true;
                }
            }
            if changed {
                mutating
                    .replace(name, &PostParams::default(), &object)
                    .await
                    .map_err(|e| CertError::kube(format!("writing caBundle of {name}"), e))?;
            }
        }
        Ok(())
    }
}

/// The bundle stored in a Secret, when every part is present.
fn bundle_of(secret: &Secret) -> Option<Bundle> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| {
        data.get(key)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    let annotations = secret.metadata.annotations.as_ref()?;
    let not_after = annotations
        .get(NOT_AFTER_ANNOTATION)?
        .parse::<i64>()
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())?;
    Some(Bundle {
        ca_cert: text("ca.crt")?,
        ca_key: text("ca.key")?,
        cert: text("tls.crt")?,
        key: text("tls.key")?,
        not_after,
        names: annotations
            .get(SANS_ANNOTATION)
            .cloned()
            .unwrap_or_default(),
    })
}

fn secret_of(bundle: &Bundle, name: &str) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            annotations: Some(
                [
                    (
                        NOT_AFTER_ANNOTATION.to_string(),
                        bundle.not_after.unix_timestamp().to_string(),
                    ),
                    (SANS_ANNOTATION.to_string(), bundle.names.clone()),
                ]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                ("ca.crt".to_string(), bytes(&bundle.ca_cert)),
                ("ca.key".to_string(), bytes(&bundle.ca_key)),
                ("tls.crt".to_string(), bytes(&bundle.cert)),
                ("tls.key".to_string(), bytes(&bundle.key)),
            ]
            .into(),
        ),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_load_into_rustls() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let now = OffsetDateTime::now_utc();
        let (_ca, ca_key) = new_ca(now).expect("CA");
        let names = vec!["127.0.0.1".to_string(), "webhook.ns.svc".to_string()];
        let (cert, key, not_after) = issue_serving(&ca_key, &names, now).expect("serving");
        assert!(not_after > now + RENEW_BEFORE);
        certified_key(cert.as_bytes(), key.as_bytes()).expect("usable by rustls");
    }

    #[test]
    fn broken_pem_is_an_error_not_a_panic() {
        assert!(matches!(
            certified_key(b"garbage", b"garbage"),
            Err(CertError::NoCertificate)
        ));
        let now = OffsetDateTime::now_utc();
        let (ca, _) = new_ca(now).expect("CA");
        assert!(matches!(
            certified_key(
                ca.as_bytes(),
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
            ),
            Err(CertError::Key(_))
        ));
    }

    #[test]
    fn secret_round_trips_the_bundle() {
        let now = OffsetDateTime::now_utc();
        let (ca_cert, ca_key) = new_ca(now).expect("CA");
        let (cert, key, not_after) =
            issue_serving(&ca_key, &["localhost".to_string()], now).expect("serving");
        let bundle = Bundle {
            ca_cert,
            ca_key,
            cert,
            key,
            not_after: OffsetDateTime::from_unix_timestamp(not_after.unix_timestamp())
                .expect("time"),
            names: "localhost".into(),
        };
        assert_eq!(bundle_of(&secret_of(&bundle, "s")), Some(bundle));
    }
}
