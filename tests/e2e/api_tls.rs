//! HTTPS on the API listener, attacked over real sockets: the API answers over TLS with the
//! configured certificate, plaintext gets no HTTP answer, and a renewed certificate in the
//! files is served from the next connection on without a restart.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use streamspace_controller::metrics::Metrics;

use crate::http_client::API_TOKEN;
use crate::support::{TestEnv, WAIT};

/// A self-signed certificate for `127.0.0.1` written as `<name>.crt`/`<name>.key` in `dir`
/// (each file replaced in one rename, as a Secret volume update does); returns the files and
/// the certificate's DER.
pub async fn write_cert_der(
    dir: &std::path::Path,
    name: &str,
) -> (streamspace_controller::admission::certs::CertFiles, Vec<u8>) {
    let issued = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
        .expect("self-signed certificate");
    let files = streamspace_controller::admission::certs::CertFiles {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    for (path, pem) in [
        (&files.key, issued.signing_key.serialize_pem()),
        (&files.cert, issued.cert.pem()),
    ] {
        let staged = path.with_extension("new");
        tokio::fs::write(&staged, pem).await.expect("write PEM");
        tokio::fs::rename(&staged, path).await.expect("rename PEM");
    }
    (files, issued.cert.der().to_vec())
}

pub async fn write_cert(
    dir: &std::path::Path,
    name: &str,
) -> streamspace_controller::admission::certs::CertFiles {
    write_cert_der(dir, name).await.0
}

/// `GET path` over TLS trusting only `trusted`; `Err` when the handshake or exchange fails.
async fn https_get(addr: SocketAddr, trusted: &[u8], path: &str) -> Result<(u16, Value), String> {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(trusted.to_vec()))
        .map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header("host", "127.0.0.1")
        .header("authorization", format!("Bearer {API_TOKEN}"))
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

#[tokio::test]
async fn the_api_listener_serves_tls_and_reloads_its_certificate() {
    let env = TestEnv::without_controller("api-tls").await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let (files, first) = write_cert_der(dir.path(), "api").await;
    let metrics = Arc::new(Metrics::default());
    let config = streamspace_controller::api::ApiConfig {
        namespace: env.namespace.clone(),
        flags: streamspace_controller::ownership::index::FlagIndex::new(env.flag_settings()),
        ..streamspace_controller::api::ApiConfig::default()
    };
    let service = streamspace_controller::api::build(
        env.client.clone(),
        config,
        Arc::new(streamspace_controller::api::auth::StaticToken::new(
            API_TOKEN,
        )),
        metrics.clone(),
    )
    .expect("api service");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let background = tokio::spawn(service.background);
    let server = {
        let metrics = metrics.clone();
        let files = files.clone();
        tokio::spawn(async move {
            streamspace_controller::api::tls::serve_on(
                listener,
                service.router,
                Some(files),
                &metrics,
                std::future::pending(),
            )
            .await
        })
    };
    let (code, reply) = https_get(addr, &first, "/api/v1/sessions")
        .await
        .expect("HTTPS request");
    assert_eq!(code, 200, "{reply}");
    assert_eq!(reply["total"], 0, "{reply}");

    // Plaintext HTTP with a valid token gets no HTTP answer at all: the handshake fails.
    let mut plain = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET /api/v1/sessions HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {API_TOKEN}\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut plain, request.as_bytes())
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        WAIT,
        tokio::io::AsyncReadExt::read_to_end(&mut plain, &mut answer),
    )
    .await
    .expect("the server closes a plaintext connection");
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP/1.1"),
        "plaintext got an HTTP answer: {}",
        String::from_utf8_lossy(&answer)
    );
    assert!(crate::http_client::counter(&metrics, "streamspace_api_tls_handshakes", "failed") >= 1);

    // The files change (a renewed certificate): the next connections get the new one.
    let (_, second) = write_cert_der(dir.path(), "api").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while https_get(addr, &second, "/healthz").await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = https_get(addr, &first, "/healthz").await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("handshake")),
        "{refused:?}"
    );
    assert!(
        crate::http_client::counter(&metrics, "streamspace_api_certificate_reloads", "ok") >= 1
    );
    server.abort();
    background.abort();
    env.cleanup().await;
}
