//! Command-line settings of the webhooks (part of the `controller` subcommand) and their
//! translation into an [`AdmissionConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use super::certs::{CertFiles, SelfManagedConfig};
use super::{AdmissionConfig, CertSource};
use crate::ownership::index::FlagIndex;

/// Command-line settings of the webhooks (part of `controller`).
#[derive(clap::Args, Clone, Debug)]
pub struct WebhookSettings {
    /// Serve the admission webhooks over HTTPS on this address (default: no webhooks).
    #[arg(long, env = "WEBHOOK_ADDR")]
    pub webhook_addr: Option<SocketAddr>,
    /// Serving certificate: `files` (reloaded on change) or `self-managed` (CA and certificate
    /// in a Secret, caBundle written into the webhook configurations, renewed automatically).
    #[arg(
        long,
        env = "WEBHOOK_CERT_MODE",
        value_enum,
        default_value = "self-managed"
    )]
    pub webhook_cert_mode: CertMode,
    /// Certificate file in `files` mode.
    #[arg(long, env = "WEBHOOK_CERT_FILE", default_value = "/tls/tls.crt")]
    pub webhook_cert_file: PathBuf,
    /// Key file in `files` mode.
    #[arg(long, env = "WEBHOOK_KEY_FILE", default_value = "/tls/tls.key")]
    pub webhook_key_file: PathBuf,
    /// Namespace of the controller: its certificate Secret and, by default, QuotaPolicies.
    #[arg(long, env = "POD_NAMESPACE", default_value = "streamspace")]
    pub webhook_namespace: String,
    /// Secret holding the self-managed CA and serving certificate.
    #[arg(
        long,
        env = "WEBHOOK_SECRET",
        default_value = "streamspace-controller-webhook-tls"
    )]
    pub webhook_secret: String,
    /// DNS names and IPs of the self-managed certificate (default: the webhook Service's).
    #[arg(long, env = "WEBHOOK_DNS_NAMES", value_delimiter = ',')]
    pub webhook_dns_names: Vec<String>,
    /// ValidatingWebhookConfiguration whose caBundle the self-managed mode writes.
    #[arg(
        long,
        env = "VALIDATING_WEBHOOK_CONFIG",
        default_value = "streamspace-controller"
    )]
    pub validating_webhook_config: String,
    /// MutatingWebhookConfiguration whose caBundle the self-managed mode writes.
    #[arg(
        long,
        env = "MUTATING_WEBHOOK_CONFIG",
        default_value = "streamspace-controller"
    )]
    pub mutating_webhook_config: String,
    /// Namespace of QuotaPolicies and of the quota ledgers (default: the controller's
    /// namespace).
    #[arg(long, env = "QUOTA_NAMESPACE")]
    pub quota_namespace: Option<String>,
    /// PEM bundle of the CA that signed the API server's client certificate: when set, the
    /// webhook listener refuses every TLS client without a certificate signed by it.
    #[arg(long, env = "WEBHOOK_CLIENT_CA")]
    pub webhook_client_ca: Option<PathBuf>,
    /// Let Sessions switch their idle or maximum-duration timer off with `0s`.
    #[arg(long, env = "ALLOW_DISABLED_TIMERS")]
    pub allow_disabled_timers: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CertMode {
    Files,
    SelfManaged,
}

/// Name of the webhook Service the default certificate names point at.
pub const SERVICE_NAME: &str = "streamspace-controller-webhook";

impl WebhookSettings {
    /// The admission configuration, or `None` when no `--webhook-addr` is given. `flags`
    /// decide who enforces quotas (pass the controller's index when both run together).
    pub fn to_config(
        &self,
        session_namespace: Option<String>,
        flags: Arc<FlagIndex>,
    ) -> Option<AdmissionConfig> {
        let addr = self.webhook_addr?;
        let ns = &self.webhook_namespace;
        let certs = match self.webhook_cert_mode {
            CertMode::Files => CertSource::Files(CertFiles {
                cert: self.webhook_cert_file.clone(),
                key: self.webhook_key_file.clone(),
            }),
            CertMode::SelfManaged => CertSource::SelfManaged(SelfManagedConfig {
                namespace: ns.clone(),
                secret: self.webhook_secret.clone(),
                names: if self.webhook_dns_names.is_empty() {
                    vec![
                        format!("{SERVICE_NAME}.{ns}.svc"),
                        format!("{SERVICE_NAME}.{ns}.svc.cluster.local"),
                    ]
                } else {
                    self.webhook_dns_names.clone()
                },
                validating_configs: vec![self.validating_webhook_config.clone()],
                mutating_configs: vec![self.mutating_webhook_config.clone()],
            }),
        };
        let quota_namespace = self.quota_namespace.clone().unwrap_or_else(|| ns.clone());
        Some(AdmissionConfig {
            addr,
            certs,
            flags,
            policy_namespace: Some(quota_namespace.clone()),
            session_namespace,
            ledger_namespace: quota_namespace,
            client_ca: self.webhook_client_ca.clone(),
            allow_disabled_timers: self.allow_disabled_timers,
        })
    }
}
