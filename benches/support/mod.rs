//! Measurement helpers shared by the benchmark binaries (each uses a subset).
//!
//! Every benchmark runs in two modes: the real measurement under `cargo bench` (which passes
//! `--bench`), and a smoke run with tiny sizes when `cargo test` runs it, so a benchmark that
//! no longer works fails the test suite instead of printing figures of failed requests.
#![allow(dead_code)]

pub mod floor;
pub mod heap;
pub mod results;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// True when run by `cargo test` (no `--bench` argument): tiny sizes, same code paths.
pub fn smoke() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

/// A size from the environment variable `name`, else `full` under `cargo bench` and `tiny` in a
/// smoke run.
pub fn size(name: &str, full: usize, tiny: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke() { tiny } else { full })
}

/// Starts the real `api` binary on `port` with one static admin token (`--auth static`).
pub fn spawn_api(
    kubeconfig: &Path,
    namespace: &str,
    port: u16,
    token: &str,
) -> std::io::Result<tokio::process::Child> {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_streamspace-controller"))
        .args(["api", "--namespace", namespace, "--auth", "static"])
        .args(["--http-addr", &format!("127.0.0.1:{port}")])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env("API_TOKEN", token)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
}

/// Starts the real `controller` binary watching `namespace`, its HTTP server on `port`, with
/// `extra` arguments appended.
pub fn spawn_controller(
    kubeconfig: &Path,
    namespace: &str,
    port: u16,
    extra: &[&str],
) -> anyhow::Result<tokio::process::Child> {
    spawn_controller_with_hooks(kubeconfig, namespace, port, free_port()?, extra)
}

/// [`spawn_controller`] with the push hooks listener (`--hooks-addr`) on `hooks_port`.
pub fn spawn_controller_with_hooks(
    kubeconfig: &Path,
    namespace: &str,
    port: u16,
    hooks_port: u16,
    extra: &[&str],
) -> anyhow::Result<tokio::process::Child> {
    Ok(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_streamspace-controller"))
            .args(["controller", "--watch-namespace", namespace])
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            .args(["--hooks-addr", &format!("127.0.0.1:{hooks_port}")])
            .args(extra)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()?,
    )
}

/// A local control plane with the CRDs installed and a node simulator with `nodes` nodes
/// (`bench-node-1`..), each taking up to 1,000 pods.
pub async fn cluster_with_nodes(
    nodes: usize,
) -> anyhow::Result<(
    streamspace_controller::devcluster::ControlPlane,
    kube::Client,
    streamspace_controller::devcluster::NodeSimulator,
)> {
    use streamspace_controller::devcluster::{
        ControlPlane, ControlPlaneOptions, NodeSimulator, SimulatorConfig,
    };
    let plane = ControlPlane::start(ControlPlaneOptions::default()).await?;
    let client = plane.client().await?;
    streamspace_controller::crd::install::install(
        &client,
        streamspace_controller::controller::FIELD_MANAGER,
    )
    .await?;
    let simulator = NodeSimulator::spawn(
        client.clone(),
        SimulatorConfig {
            node_names: (1..=nodes).map(|i| format!("bench-node-{i}")).collect(),
            node_pods: "1000".into(),
            ..SimulatorConfig::default()
        },
    );
    Ok((plane, client, simulator))
}

/// Creates Template `desktop` (image `desktop:latest`) in `namespace`.
pub async fn create_template(client: &kube::Client, namespace: &str) -> anyhow::Result<()> {
    kube::Api::<streamspace_controller::crd::Template>::namespaced(client.clone(), namespace)
        .create(
            &kube::api::PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "apiVersion": "stream.space/v1alpha1", "kind": "Template",
                "metadata": {"name": "desktop"},
                "spec": {"displayName": "Desktop", "baseImage": "desktop:latest"}
            }))?,
        )
        .await?;
    Ok(())
}

/// One keep-alive HTTP/1.1 connection on loopback, for latency loops.
pub struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Connection {
    pub async fn open(port: u16) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Connection { sender })
    }

    /// Sends one request with a bearer token and an empty body; the status, the body and the
    /// time from sending to the whole body read.
    pub async fn send(
        &mut self,
        method: hyper::Method,
        path: &str,
        token: &str,
    ) -> anyhow::Result<(hyper::StatusCode, Bytes, Duration)> {
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))?;
        self.sender.ready().await?;
        let sent = Instant::now();
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body, sent.elapsed()))
    }
}

/// A plain HTTP/1.0 GET on loopback; the whole response, headers included.
pub async fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

/// User plus system CPU time of a process, from `/proc/<pid>/stat` (Linux).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz.max(1.0))
}

/// Peak resident set size of a process, from `/proc/<pid>/status` (Linux).
pub fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    proc_status_kib(pid, "VmHWM:")
}

/// Resident set size of a process now, from `/proc/<pid>/status` (Linux).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    proc_status_kib(pid, "VmRSS:")
}

fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {field} in /proc/{pid}/status"))
}

/// Sum of every sample of a Prometheus text exposition whose line starts with `prefix` (all
/// label combinations).
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A free loopback port (free when asked; good enough for a benchmark on one machine).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until `GET path` on `port` answers 200 (at most a minute).
pub async fn wait_http_ok(port: u16, path: &str) -> anyhow::Result<()> {
    for _ in 0..600 {
        if http_get(port, path)
            .await
            .is_ok_and(|r| r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200"))
        {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::bail!("127.0.0.1:{port}{path} did not answer 200 within a minute")
}

/// An HTTP/1.0 request with an optional bearer token and JSON body; the status code and the
/// response body.
pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// The `p`-th percentile (0..=100) of `samples`, nearest rank; zero when empty.
pub fn percentile(samples: &[std::time::Duration], p: f64) -> std::time::Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return std::time::Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Creates the namespace `name` (one that exists already is fine).
pub async fn create_namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let namespace: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
    match kube::Api::all(client.clone())
        .create(&kube::api::PostParams::default(), &namespace)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Creates `count` Sessions in `namespace`, the `i`-th one from `session(i)` (its JSON), 16 at
/// a time; any failed create fails the run.
pub async fn create_sessions(
    client: &kube::Client,
    namespace: &str,
    count: usize,
    session: impl Fn(usize) -> serde_json::Value,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let api: kube::Api<streamspace_controller::crd::Session> =
        kube::Api::namespaced(client.clone(), namespace);
    let failures = futures::stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            let object = serde_json::from_value(session(i));
            async move {
                api.create(&kube::api::PostParams::default(), &object?)
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .filter(|r| futures::future::ready(r.is_err()))
        .count()
        .await;
    anyhow::ensure!(failures == 0, "{failures} session creates failed");
    Ok(())
}
