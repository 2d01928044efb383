//! A small HTTP client of the API for the command line (`flags ... --api-url`) and `dev`:
//! one request per connection, `http://` or `https://` (the system's trust roots), bearer token.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Longest time one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0:?} is not an http:// or https:// URL with a host")]
    BadUrl(String),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("HTTP exchange: {0}")]
    Http(#[from] hyper::Error),
    #[error("building the request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// An answer: status code and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `method url` with an optional bearer `token` and JSON `body`.
pub async fn request(
    method: hyper::Method,
    url: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> Result<Reply, ClientError> {
    tokio::time::timeout(REQUEST_TIMEOUT, exchange(method, url, token, body))
        .await
        .map_err(|_| ClientError::Timeout(REQUEST_TIMEOUT))?
}

async fn exchange(
    method: hyper::Method,
    url: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> Result<Reply, ClientError> {
    let uri: hyper::Uri = url.parse().map_err(|_| ClientError::BadUrl(url.into()))?;
    let host = uri
        .host()
        .ok_or_else(|| ClientError::BadUrl(url.into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(ClientError::BadUrl(url.into())),
    };
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let authority = uri
        .authority()
        .map(|a| a.to_string())
        .ok_or_else(|| ClientError::BadUrl(url.into()))?;
    let addr = format!("{}:{port}", uri.host().unwrap_or_default());
    let stream = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let path = uri
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority);
    if let Some(token) = token {
        builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let payload = match body {
        Some(value) => {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
            Bytes::from(value.to_string())
        }
        None => Bytes::new(),
    };
    let request = builder.body(Full::new(payload))?;
    if tls {
        let stream = connect_tls(stream, &host).await?;
        send(TokioIo::new(stream), request).await
    } else {
        send(TokioIo::new(stream), request).await
    }
}

async fn send<T>(io: TokioIo<T>, request: hyper::Request<Full<Bytes>>) -> Result<Reply, ClientError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes().to_vec();
    Ok(Reply { status, body })
}

async fn connect_tls(
    stream: tokio::net::TcpStream,
    host: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| ClientError::Tls(format!("server name {host:?}: {e}")))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
        .map_err(|e| ClientError::Tls(e.to_string()))
}

/// Whether `GET url` answers 2xx.
pub async fn get_ok(url: &str) -> bool {
    request(hyper::Method::GET, url, None, None)
        .await
        .is_ok_and(|r| (200..300).contains(&r.status))
}
