//! The HTTPS listener of the webhooks: axum over rustls, with the certificate taken from a
//! [`CertResolver`] on every handshake, so a reloaded or renewed certificate applies to the
//! next connection without a restart.
//!
//! With a client CA (`--webhook-client-ca`) the listener only completes handshakes with
//! clients presenting a certificate that CA signed: the API server, configured with that
//! client certificate in its admission configuration. Anyone else is refused before a byte of
//! HTTP is read.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::debug;

use super::certs::CertResolver;
use crate::metrics::AdmissionMetrics;

/// A handshake that takes longer than this is dropped, so slow clients cannot pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Completed handshakes waiting for the HTTP server to pick them up.
const ACCEPT_QUEUE: usize = 128;

/// The TLS configuration of a listener that accepts any client (HTTP/1.1: axum is built
/// without HTTP/2).
pub fn tls_config(resolver: Arc<CertResolver>) -> rustls::ServerConfig {
    tls_config_for_clients(resolver, None)
        .unwrap_or_else(|_| unreachable!("no client verifier to build"))
}

/// The TLS configuration of the webhook listener; with `client_ca`, a client certificate
/// signed by it is required.
pub fn tls_config_for_clients(
    resolver: Arc<CertResolver>,
    client_ca: Option<Arc<RootCertStore>>,
) -> Result<rustls::ServerConfig, VerifierBuilderError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| unreachable!("the ring provider supports the default versions"));
    let builder = match client_ca {
        Some(roots) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots, provider).build()?,
        ),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The CA certificates of a PEM bundle, or why they cannot be used.
pub fn client_roots(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("it holds no certificate".into());
    }
    Ok(Arc::new(roots))
}

/// An [`axum::serve::Listener`] yielding TLS streams. Handshakes run in their own tasks, so one
/// slow or broken client never delays the others.
pub struct TlsListener {
    incoming: mpsc::Receiver<(TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(
        listener: TcpListener,
        config: rustls::ServerConfig,
        metrics: AdmissionMetrics,
    ) -> std::io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (tx, incoming) = mpsc::channel(ACCEPT_QUEUE);
        let accept_task = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        debug!(error = %e, "webhook accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            metrics.handshake("ok");
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => {
                            metrics.handshake("failed");
                            debug!(%peer, error = %e, "webhook TLS handshake failed");
                        }
                        Err(_) => {
                            metrics.handshake("timeout");
                            debug!(%peer, "webhook TLS handshake timed out");
                        }
                    }
                });
            }
        });
        Ok(TlsListener {
            incoming,
            local_addr,
            accept_task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(accepted) => accepted,
            // The accept task only ends when the listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

/// Serves `router` over TLS (`config`, see [`tls_config`]) on `listener` until `shutdown`
/// resolves.
pub async fn serve(
    listener: TcpListener,
    config: rustls::ServerConfig,
    router: Router,
    metrics: AdmissionMetrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = TlsListener::new(listener, config, metrics)?;
    tracing::info!(addr = %listener.local_addr, "webhook server listening (TLS)");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
