//! The API server's floor, measured on the same control plane just before a workload: how fast
//! it takes plain writes (ConfigMap creates) one at a time and with several in flight. Every
//! benchmark figure is printed beside it, so a slow run on a busy machine reads as such.

use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Client;
use kube::api::{Api, PostParams};

use super::percentile;

/// Namespace of the floor's ConfigMaps. Left in place: deleting it would add the namespace
/// controller's deletes to the writes of the workload measured next.
const FLOOR_NAMESPACE: &str = "bench-floor";

#[derive(Clone, Copy, Debug)]
pub struct Floor {
    /// Latency of one create with nothing else in flight.
    pub write_p50: Duration,
    pub write_p99: Duration,
    /// Creates per second with `in_flight` requests outstanding.
    pub creates_per_second: f64,
    pub in_flight: usize,
}

impl Floor {
    /// Seconds the API server needs for `writes` writes at the measured throughput.
    pub fn seconds_for(&self, writes: f64) -> f64 {
        writes / self.creates_per_second.max(f64::MIN_POSITIVE)
    }

    pub fn print(&self) {
        println!(
            "floor: one write p50 {:.2} ms, p99 {:.2} ms; {:.0} creates/s with {} in flight",
            ms(self.write_p50),
            ms(self.write_p99),
            self.creates_per_second,
            self.in_flight
        );
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Measures creates one after another (`BENCH_FLOOR_WRITES`, default 200), then four times as
/// many with `in_flight` outstanding. Any failed write fails the measurement.
pub async fn measure(client: &Client, in_flight: usize) -> anyhow::Result<Floor> {
    let sequential = super::size("BENCH_FLOOR_WRITES", 200, 10);
    let concurrent = 4 * sequential;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": FLOOR_NAMESPACE}}))?;
    match namespaces.create(&PostParams::default(), &namespace).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), FLOOR_NAMESPACE);
    let run = std::process::id();
    let mut latencies = Vec::with_capacity(sequential);
    for i in 0..sequential {
        let started = Instant::now();
        api.create(
            &PostParams::default(),
            &config_map(&format!("seq-{run}-{i}")),
        )
        .await?;
        latencies.push(started.elapsed());
    }
    let started = Instant::now();
    let failures = stream::iter(0..concurrent)
        .map(|i| {
            let api = api.clone();
            async move {
                api.create(
                    &PostParams::default(),
                    &config_map(&format!("par-{run}-{i}")),
                )
                .await
            }
        })
        .buffer_unordered(in_flight.max(1))
        .filter(|r| futures::future::ready(r.is_err()))
        .count()
        .await;
    let elapsed = started.elapsed();
    anyhow::ensure!(failures == 0, "{failures} floor writes failed");
    let floor = Floor {
        write_p50: percentile(&latencies, 50.0),
        write_p99: percentile(&latencies, 99.0),
        creates_per_second: concurrent as f64 / elapsed.as_secs_f64(),
        in_flight,
    };
    floor.print();
    Ok(floor)
}

fn config_map(name: &str) -> ConfigMap {
    let mut data = std::collections::BTreeMap::new();
    data.insert("key".to_string(), "value".to_string());
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    }
}

/// The verbs of `apiserver_request_total` that write; the API server counts a server-side apply
/// as `APPLY`, not `PATCH`.
const WRITE_VERBS: [&str; 5] = ["POST", "PUT", "PATCH", "APPLY", "DELETE"];

/// Writes the API server has served since it started, from its own `apiserver_request_total`:
/// every writer counts, the controller, the controller manager and the node simulator alike.
pub async fn apiserver_writes(client: &Client) -> anyhow::Result<f64> {
    Ok(apiserver_writes_by_kind(client).await?.values().sum())
}

/// [`apiserver_writes`] per `verb resource[/subresource]`, to tell which writers a run's
/// writes came from.
pub async fn apiserver_writes_by_kind(
    client: &Client,
) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    let request = hyper::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(request).await?;
    let mut writes = std::collections::BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let label = |name: &str| {
            let start = line.find(&format!("{name}=\""))? + name.len() + 2;
            let end = line[start..].find('"')? + start;
            Some(&line[start..end])
        };
        let Some(verb) = label("verb").filter(|v| WRITE_VERBS.contains(v)) else {
            continue;
        };
        let Some(count) = line.rsplit(' ').next().and_then(|c| c.parse::<f64>().ok()) else {
            continue;
        };
        let mut kind = format!("{verb} {}", label("resource").unwrap_or_default());
        if let Some(sub) = label("subresource").filter(|s| !s.is_empty()) {
            kind = format!("{kind}/{sub}");
        }
        *writes.entry(kind).or_insert(0.0) += count;
    }
    Ok(writes)
}
