//! The connection event the API sends to the controller (`POST /events/connection`), its wire
//! shape, and a small HTTP/1.1 client for it (plain HTTP inside the cluster network).

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Longest wait for the controller; past it the `wake-requested` annotation does the work.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(3);

pub use crate::wire::{ConnectionEvent, EventReply};

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("controller URL {0:?} is not http://host:port[/path]")]
    BadUrl(String),
    #[error("connecting to the controller: {0}")]
    Connect(#[source] std::io::Error),
    #[error("HTTP exchange with the controller: {0}")]
    Http(#[from] hyper::Error),
    #[error("building the request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("the controller answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the controller's answer is not an event reply: {0}")]
    Reply(#[source] serde_json::Error),
    #[error("no answer from the controller within {0:?}")]
    Timeout(Duration),
}

impl SendError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            SendError::BadUrl(_) => "bad_url",
            SendError::Connect(_) => "connect",
            SendError::Http(_) | SendError::Request(_) => "http",
            SendError::Status { .. } => "status",
            SendError::Reply(_) => "reply",
            SendError::Timeout(_) => "timeout",
        }
    }
}

/// Sends connection events to one controller base URL, such as `http://controller:8080`.
#[derive(Clone, Debug)]
pub struct EventSender {
    authority: String,
    path: String,
    token: String,
}

impl EventSender {
    pub fn new(base_url: &str, token: &str) -> Result<Self, SendError> {
        let rest = base_url
            .strip_prefix("http://")
            .ok_or_else(|| SendError::BadUrl(base_url.into()))?;
        let (authority, prefix) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(SendError::BadUrl(base_url.into()));
        }
        Ok(EventSender {
            authority: authority.to_string(),
            path: format!("{}/events/connection", prefix.trim_end_matches('/')),
            token: token.to_string(),
        })
    }

    pub async fn send(&self, event: &ConnectionEvent) -> Result<EventReply, SendError> {
        tokio::time::timeout(EVENT_TIMEOUT, self.exchange(event))
            .await
            .map_err(|_| SendError::Timeout(EVENT_TIMEOUT))?
    }

    async fn exchange(&self, event: &ConnectionEvent) -> Result<EventReply, SendError> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(SendError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let body = serde_json::to_vec(event).map_err(SendError::Reply)?;
        let request = hyper::Request::post(&self.path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .body(Full::new(Bytes::from(body)))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            return Err(SendError::Status {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            });
        }
        serde_json::from_slice(&bytes).map_err(SendError::Reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let sender = EventSender::new("http://controller:8080", "t");
        assert!(
            matches!(sender, Ok(ref s) if s.authority == "controller:8080" && s.path == "/events/connection")
        );
        let sender = EventSender::new("http://10.0.0.1:9000/prefix/", "t");
        assert!(matches!(sender, Ok(ref s) if s.path == "/prefix/events/connection"));
        assert!(EventSender::new("https://controller", "t").is_err());
        assert!(EventSender::new("http:///x", "t").is_err());
    }
}
