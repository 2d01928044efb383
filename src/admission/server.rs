//! The HTTPS listener of the webhooks: axum over rustls, with the certificate taken from a
//! [`CertResolver`] on every handshake, so a reloaded or renewed certificate applies to the
//! next connection without a restart.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
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

/// The TLS configuration of the webhook listener (HTTP/1.1: axum is built without HTTP/2).
pub fn tls_config(resolver: Arc<CertResolver>) -> rustls::ServerConfig {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap_or_else(|_| unreachable!("the ring provider supports the default versions"))
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
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

/// Serves `router` over TLS on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    resolver: Arc<CertResolver>,
    router: Router,
    metrics: AdmissionMetrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = TlsListener::new(listener, tls_config(resolver), metrics)?;
    tracing::info!(addr = %listener.local_addr, "webhook server listening (TLS)");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
