//! A minimal HTTPS probe of the API server's `GET /readyz`.
//!
//! `/readyz` answers 500 until every post-start hook has run, and kube's client logs each 5xx
//! and each refused connection at ERROR level, which would spam every test's output during
//! start-up. This probe speaks just enough HTTP/1.1 over rustls to read the status line.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, IpAddr, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::Error;

/// Upper bound for connecting, writing and reading.
const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// Probes `https://127.0.0.1:<port>/readyz` with a bearer token, trusting only the given CA.
#[derive(Clone)]
pub(crate) struct ReadyzProbe {
    tls: Arc<ClientConfig>,
    port: u16,
    /// Bearer token; none for an anonymous probe.
    token: Option<String>,
    path: &'static str,
}

impl ReadyzProbe {
    /// Prepares a probe that trusts `ca_pem`.
    pub(crate) fn new(ca_pem: &str, port: u16, token: &str) -> Result<Self, Error> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| tls_error("parsing the CA certificate", e))?;
            roots
                .add(cert)
                .map_err(|e| tls_error("trusting the CA certificate", e))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("configuring TLS", e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            tls: Arc::new(tls),
            port,
            token: Some(token.to_owned()),
            path: "/readyz",
        })
    }

    /// Prepares an anonymous probe of `path` (a `/readyz` with query parameters, say).
    pub(crate) fn anonymous(ca_pem: &str, port: u16, path: &'static str) -> Result<Self, Error> {
        let probe = Self::new(ca_pem, port, "")?;
        Ok(Self {
            token: None,
            path,
            ..probe
        })
    }

    /// Whether `/readyz` answers 200 (any failure counts as "not yet").
    pub(crate) async fn is_ready(&self) -> bool {
        let probe = self.clone();
        match tokio::task::spawn_blocking(move || probe.status()).await {
            Ok(Ok(status)) => status == 200,
            Ok(Err(e)) => {
                tracing::trace!(error = %e, "/readyz probe failed");
                false
            }
            Err(_) => false,
        }
    }

    /// Performs the request and returns the HTTP status code.
    fn status(&self) -> std::io::Result<u16> {
        let address = (Ipv4Addr::LOCALHOST, self.port).into();
        let tcp = TcpStream::connect_timeout(&address, IO_TIMEOUT)?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        let name = ServerName::IpAddress(IpAddr::from(std::net::IpAddr::from(Ipv4Addr::LOCALHOST)));
        let tls = ClientConnection::new(self.tls.clone(), name).map_err(std::io::Error::other)?;
        let mut stream = StreamOwned::new(tls, tcp);
        let authorization = self
            .token
            .as_ref()
            .map(|token| format!("Authorization: Bearer {token}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{authorization}Connection: close\r\n\r\n",
            self.path, self.port
        );
        stream.write_all(request.as_bytes())?;
        let head = read_status_line(&mut stream)?;
        parse_status(&head).ok_or_else(|| std::io::Error::other("malformed HTTP status line"))
    }
}

/// Reads until the end of the first line (or 128 bytes, or end of stream).
fn read_status_line(stream: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(128);
    let mut buffer = [0u8; 128];
    while head.len() < 128 && !head.contains(&b'\n') {
        let read = stream.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    Ok(head)
}

/// The status code of an HTTP/1.x status line at the start of `response`.
fn parse_status(response: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(response).ok()?;
    let mut parts = text.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

/// An [`Error::Io`] for TLS set-up problems.
fn tls_error(context: &str, error: impl std::fmt::Display) -> Error {
    Error::io(context, std::io::Error::other(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.1 500 Internal"), Some(500));
        assert_eq!(parse_status(b"garbage"), None);
        assert_eq!(parse_status(b""), None);
    }

    #[test]
    fn reads_status_line_in_pieces() {
        let mut input: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let head = read_status_line(&mut input).expect("read");
        assert_eq!(parse_status(&head), Some(200));
    }

    #[tokio::test]
    async fn closed_port_is_not_ready() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = crate::devcluster::certs::generate(dir.path()).expect("pki");
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let probe = ReadyzProbe::new(&pki.ca_pem, port, "t").expect("probe");
        assert!(!probe.is_ready().await);
    }
}
