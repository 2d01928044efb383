//! The `api` service in-process on a real loopback socket, and a small HTTP/1.1 client for it.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use streamspace_controller::api::{self, ApiConfig, auth::Authenticator};
use streamspace_controller::metrics::Metrics;
use tokio::task::JoinHandle;

use crate::support::TestEnv;

/// One keep-alive HTTP/1.1 connection.
pub struct Http {
    sender: SendRequest<Full<Bytes>>,
    authority: String,
}

impl Http {
    pub async fn connect(addr: SocketAddr) -> Http {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to server");
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("http handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Http {
            sender,
            authority: addr.to_string(),
        }
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.authority);
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        if body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
            .expect("request");
        let response = self.sender.send_request(request).await.expect("response");
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }
}

/// One request on a fresh connection.
pub async fn call(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    Http::connect(addr)
        .await
        .request(method, path, token, None)
        .await
}

/// The API service on `127.0.0.1:<random>`; stopped when dropped.
pub struct RunningApi {
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for RunningApi {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl RunningApi {
    /// Starts the API with `config` and `auth`, using the test's admin client.
    pub async fn start_with(
        env: &TestEnv,
        config: ApiConfig,
        auth: Arc<dyn Authenticator>,
    ) -> RunningApi {
        let metrics = Arc::new(Metrics::default());
        Self::start_as(env.client.clone(), config, auth, metrics).await
    }

    /// Starts the API talking to Kubernetes as `client`, recording into `metrics`.
    pub async fn start_as(
        client: kube::Client,
        config: ApiConfig,
        auth: Arc<dyn Authenticator>,
        metrics: Arc<Metrics>,
    ) -> RunningApi {
        let service = api::build(client, config, auth, metrics.clone()).expect("api service");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind api");
        let addr = listener.local_addr().expect("api address");
        let background = tokio::spawn(service.background);
        let server = tokio::spawn(async move {
            let _ = streamspace_controller::http::serve_on(
                listener,
                service.router,
                std::future::pending(),
            )
            .await;
        });
        RunningApi {
            addr,
            metrics,
            tasks: vec![background, server],
        }
    }

    pub fn counter(&self, name: &str, label: &str) -> u64 {
        counter(&self.metrics, name, label)
    }
}

/// Sum of the samples of counter `name` whose labels contain `label`.
pub fn counter(metrics: &Metrics, name: &str, label: &str) -> u64 {
    metrics
        .encode()
        .lines()
        .filter(|line| line.starts_with(name) && line.contains(label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
