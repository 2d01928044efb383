//! Command-line settings of the API's exposure: which tokens it accepts, whether it serves
//! HTTPS, and the limits of its WebSocket streams.

use std::path::PathBuf;

use clap::Args;

use super::live::StreamSettings;
use crate::admission::certs::CertFiles;
use crate::idle::deadline::parse_duration;

#[derive(Args, Clone, Debug)]
pub struct ExposureArgs {
    /// With --auth kubernetes: accept only bearer tokens issued for this audience (the
    /// TokenReview asks for it), such as those of `kubectl create token <service-account>
    /// --audience <this>`, so users hand the API a token scoped to it rather than their
    /// Kubernetes credential. Unset: any token the cluster accepts.
    #[arg(long, env = "API_TOKEN_AUDIENCE")]
    pub token_audience: Option<String>,
    /// PEM certificate chain of the API listener; with --tls-key the API serves HTTPS and
    /// reloads the pair when the files change (unset: plain HTTP).
    #[arg(long, env = "API_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "API_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Session WebSocket streams one user may have open through one replica.
    #[arg(long, env = "API_WS_MAX_PER_USER", default_value_t = StreamSettings::default().max_per_user)]
    pub ws_max_per_user: usize,
    /// Session WebSocket streams one replica serves in total.
    #[arg(long, env = "API_WS_MAX_TOTAL", default_value_t = StreamSettings::default().max_total)]
    pub ws_max_total: usize,
    /// How often an open WebSocket stream's token and rights are checked again (s, m or h).
    #[arg(long, env = "API_WS_REAUTH_INTERVAL", default_value = "30s")]
    pub ws_reauth_interval: String,
    /// How long a connection stays open after its last `connect` or heartbeat with its
    /// connectionId (whole seconds: s, m or h). Every replica must use the same.
    #[arg(long, env = "API_CONNECTION_EXPIRY", default_value = "60s")]
    pub connection_expiry: String,
    /// Hibernate a running session when its last connection disconnects (the old API's
    /// auto-hibernate). Off by default: the idle reconciler hibernates idle sessions.
    #[arg(long, env = "API_HIBERNATE_ON_LAST_DISCONNECT")]
    pub hibernate_on_last_disconnect: bool,
}

impl ExposureArgs {
    /// The certificate files to serve HTTPS with, if both were given.
    pub fn tls(&self) -> Option<CertFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(CertFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }

    /// `--connection-expiry`, checked: whole seconds, at least 1s.
    pub fn connection_expiry(&self) -> Result<std::time::Duration, String> {
        parse_duration(&self.connection_expiry)
            .filter(|d| d.as_secs() >= 1 && d.subsec_nanos() == 0)
            .ok_or_else(|| {
                format!(
                    "--connection-expiry {:?} must be whole seconds (s, m or h), at least 1s",
                    self.connection_expiry
                )
            })
    }

    /// The WebSocket limits, checked.
    pub fn streams(&self) -> Result<StreamSettings, String> {
        let reauth_interval = parse_duration(&self.ws_reauth_interval)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                format!(
                    "--ws-reauth-interval {:?} must be a number followed by s, m or h, above 0",
                    self.ws_reauth_interval
                )
            })?;
        if reauth_interval.is_zero() {
            return Err("--ws-reauth-interval must be longer than 0s".into());
        }
        if self.ws_max_per_user == 0 || self.ws_max_total == 0 {
            return Err("--ws-max-per-user and --ws-max-total must be at least 1".into());
        }
        Ok(StreamSettings {
            max_per_user: self.ws_max_per_user,
            max_total: self.ws_max_total,
            reauth_interval,
            ..StreamSettings::default()
        })
    }
}
