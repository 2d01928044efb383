//! Shared by the tests that talk to HTTP servers: a keep-alive HTTP/1.1 client over real
//! sockets and the `api` service started in-process on loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use streamspace_controller::api::{self, ApiConfig, auth::Authenticator, auth::StaticToken};
use streamspace_controller::metrics::Metrics;
use streamspace_controller::ownership::index::FlagIndex;
use tokio::task::JoinHandle;

use crate::support::TestEnv;

/// Bearer token of the API in tests that use the static token.
pub const API_TOKEN: &str = "test-api-token";
/// Token of the controller's connection-event endpoint in tests.
pub const EVENT_TOKEN: &str = "test-event-token";

// ---------------------------------------------------------------------------------------------
// HTTP over real sockets

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

/// One request with a JSON body on a fresh connection.
pub async fn call_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    Http::connect(addr)
        .await
        .request(method, path, token, Some(&body.to_string()))
        .await
}

// ---------------------------------------------------------------------------------------------
// The API process, in-process on loopback

pub struct RunningApi {
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    /// The API's ownership flags (fed by its own watch).
    pub flags: Arc<FlagIndex>,
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
    /// The API of `env`'s namespace and flags with the static [`API_TOKEN`].
    pub async fn start(
        env: &TestEnv,
        flush: Duration,
        controller: Option<SocketAddr>,
    ) -> RunningApi {
        RunningApi::start_with(env, Arc::new(StaticToken::new(API_TOKEN)), |config| {
            config.flush_interval = flush;
            config.controller_url = controller.map(|addr| format!("http://{addr}"));
        })
        .await
    }

    /// The API with the static [`API_TOKEN`] and the test defaults changed by `customise`.
    pub async fn start_static(env: &TestEnv, customise: impl FnOnce(&mut ApiConfig)) -> RunningApi {
        RunningApi::start_with(env, Arc::new(StaticToken::new(API_TOKEN)), customise).await
    }

    /// The API with `auth` and the test defaults changed by `customise`.
    pub async fn start_with(
        env: &TestEnv,
        auth: Arc<dyn Authenticator>,
        customise: impl FnOnce(&mut ApiConfig),
    ) -> RunningApi {
        let metrics = Arc::new(Metrics::default());
        RunningApi::start_as(env, env.client.clone(), auth, metrics, customise).await
    }

    /// Like [`RunningApi::start_with`], talking to Kubernetes as `client` and recording into
    /// `metrics`.
    pub async fn start_as(
        env: &TestEnv,
        client: kube::Client,
        auth: Arc<dyn Authenticator>,
        metrics: Arc<Metrics>,
        customise: impl FnOnce(&mut ApiConfig),
    ) -> RunningApi {
        let mut config = ApiConfig {
            namespace: env.namespace.clone(),
            flush_interval: Duration::from_millis(500),
            controller_url: None,
            connection_event_token: Some(EVENT_TOKEN.into()),
            flags: FlagIndex::new(env.flag_settings()),
            session: TestEnv::settings(),
            ..ApiConfig::default()
        };
        customise(&mut config);
        let flags = config.flags.clone();
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
            flags,
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
