//! HTTPS for the API listener (`--tls-cert`, `--tls-key`), with the webhook listener's
//! machinery: the certificate files are polled and a changed, valid pair is served from the
//! next handshake on, without a restart (a broken pair is logged and the previous one kept);
//! handshakes run in their own tasks with a timeout. Without certificate files the API serves
//! plain HTTP, for a TLS-terminating proxy or mesh in front of it.

use std::net::SocketAddr;

use axum::Router;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tokio::net::TcpListener;

use crate::admission::certs::{CertError, CertFiles, CertResolver};
use crate::admission::server::{TlsListener, tls_config};
use crate::metrics::{AdmissionMetrics, SharedMetrics};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("API certificate: {0}")]
    Certs(#[from] CertError),
    #[error("API listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves `router` on `addr` (HTTPS with `tls`) until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    tls: Option<CertFiles>,
    metrics: &SharedMetrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let listener = TcpListener::bind(addr).await?;
    serve_on(listener, router, tls, metrics, shutdown).await
}

/// Serves `router` on a bound listener (tests bind `127.0.0.1:0` first).
pub async fn serve_on(
    listener: TcpListener,
    router: Router,
    tls: Option<CertFiles>,
    metrics: &SharedMetrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let Some(files) = tls else {
        return Ok(crate::http::serve_on(listener, router, shutdown).await?);
    };
    let resolver = CertResolver::new(files.load()?);
    let counters = listener_metrics(metrics);
    let reload = tokio::spawn(files.watch(resolver.clone(), counters.clone()));
    let listener = TlsListener::new(listener, tls_config(resolver), counters)?;
    if let Ok(addr) = axum::serve::Listener::local_addr(&listener) {
        tracing::info!(%addr, "api server listening (TLS)");
    }
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await;
    reload.abort();
    Ok(served?)
}

/// The webhook listener counts reloads and handshakes in an [`AdmissionMetrics`]; the API's
/// go to its own families (`streamspace_api_certificate_reloads`,
/// `streamspace_api_tls_handshakes`). The request families are not used by a listener.
fn listener_metrics(metrics: &SharedMetrics) -> AdmissionMetrics {
    AdmissionMetrics {
        requests: Family::default(),
        duration: Family::new_with_constructor(|| Histogram::new([1.0])),
        cert_reloads: metrics.api.cert_reloads.clone(),
        handshakes: metrics.api.tls_handshakes.clone(),
    }
}
