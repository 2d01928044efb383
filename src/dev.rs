//! `dev`: the whole product on one machine. Starts the local control plane (building it on
//! first use), installs the CRDs, applies the examples, runs the node simulator and the
//! controller, and prints a table of sessions until Ctrl-C.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::Discovery;
use kube::{Client, ResourceExt};

use crate::cli::ControllerSettings;
use crate::controller::{self, FIELD_MANAGER, Readiness};
use crate::crd::{self, Session};
use crate::devcluster::simulator::{NodeSimulator, SimulatorConfig};
use crate::devcluster::{ControlPlane, ControlPlaneOptions};
use crate::metrics::Metrics;

/// Examples compiled into the binary, used when no `--examples` directory is given.
const EMBEDDED_EXAMPLES: &[(&str, &str)] = &[
    ("templates.yaml", include_str!("../examples/templates.yaml")),
    ("sessions.yaml", include_str!("../examples/sessions.yaml")),
];

#[derive(Args)]
pub struct DevArgs {
    /// Use this cluster instead of starting a local control plane (no node simulator).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Directory of YAML files to apply (default: the examples built into the binary).
    #[arg(long)]
    examples: Option<PathBuf>,
    /// Simulated nodes to register on the local control plane.
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// Seconds between two prints of the session table.
    #[arg(long, default_value_t = 2)]
    refresh: u64,
    /// Address of the controller's /healthz, /readyz and /metrics.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_addr: std::net::SocketAddr,
    #[command(flatten)]
    settings: ControllerSettings,
}

/// A client for `kubeconfig`, or for the in-cluster / default configuration when `None`.
pub async fn client_from(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let config = kube_config_from(kubeconfig).await?;
    Client::try_from(config).context("building the Kubernetes client")
}

/// The connection settings `client_from` uses.
pub async fn kube_config_from(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Config> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig given and no in-cluster or default configuration found")?,
    };
    Ok(config)
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let config = args.settings.to_config()?;
    let (client, control_plane) = match &args.kubeconfig {
        Some(path) => (client_from(Some(path)).await?, None),
        None => {
            eprintln!(
                "starting the local control plane (the first run builds it; this takes several minutes)..."
            );
            let control_plane = ControlPlane::start(ControlPlaneOptions::default())
                .await
                .context("starting the local control plane")?;
            eprintln!(
                "control plane ready: export KUBECONFIG={}",
                control_plane.kubeconfig_path().display()
            );
            (control_plane.client().await?, Some(control_plane))
        }
    };

    let kubeconfig_path = match (&args.kubeconfig, &control_plane) {
        (Some(path), _) => Some(path.clone()),
        (None, Some(plane)) => Some(plane.kubeconfig_path().to_path_buf()),
        (None, None) => None,
    };
    let mut config = config;
    config.node_operations.kube_config = Some(kube_config_from(kubeconfig_path.as_deref()).await?);
    crd::install::install(&client, FIELD_MANAGER).await?;
    let simulator = match control_plane {
        Some(_) => Some(NodeSimulator::spawn(
            client.clone(),
            SimulatorConfig {
                node_names: (1..=args.nodes).map(|i| format!("sim-node-{i}")).collect(),
                ..SimulatorConfig::default()
            },
        )),
        None => None,
    };
    let applied = apply_examples(&client, args.examples.as_deref()).await?;
    eprintln!("applied {applied} example objects");

    let metrics = Arc::new(Metrics::default());
    let readiness = Readiness::default();
    let events = crate::http::ConnectionEvents {
        waker: crate::idle::wake::Waker::new(client.clone(), metrics.clone()),
        token: config.connection_event_token.clone(),
        namespace: config.namespace.clone(),
    };
    let router = crate::http::router(metrics.clone(), readiness.clone(), Some(events)).merge(
        crate::gitops::webhook::router(
            client.clone(),
            config.gitops.triggers.clone(),
            metrics.clone(),
        ),
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let server = tokio::spawn(crate::http::serve(
        args.http_addr,
        router,
        stopped(stop_rx.clone()),
    ));
    let controller = tokio::spawn(controller::run(
        client.clone(),
        config,
        metrics,
        readiness,
        stopped(stop_rx),
    ));

    let mut ticker = tokio::time::interval(Duration::from_secs(args.refresh.max(1)));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = ticker.tick() => print_sessions(&client).await,
        }
    }
    eprintln!("stopping...");
    let _ = stop_tx.send(true);
    let _ = controller.await;
    let _ = server.await;
    if let Some(simulator) = simulator {
        simulator.stop().await;
    }
    if let Some(control_plane) = control_plane {
        control_plane.stop().await;
    }
    Ok(())
}

/// Applies every YAML document of the examples (server-side apply), creating namespaces first.
async fn apply_examples(client: &Client, dir: Option<&Path>) -> anyhow::Result<usize> {
    let files: Vec<(String, String)> = match dir {
        Some(dir) => read_yaml_dir(dir)?,
        None => EMBEDDED_EXAMPLES
            .iter()
            .map(|(name, text)| (name.to_string(), text.to_string()))
            .collect(),
    };
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .context("discovering the cluster's API resources")?;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut applied = 0;
    for (file, text) in files {
        let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text)
            .with_context(|| format!("{file}: not valid YAML"))?;
        for document in documents.into_iter().filter(|d| !d.is_null()) {
            let object: DynamicObject = serde_json::from_value(document)
                .with_context(|| format!("{file}: not a Kubernetes object"))?;
            let types = object
                .types
                .as_ref()
                .with_context(|| format!("{file}: a document has no apiVersion/kind"))?;
            let gvk = GroupVersionKind::try_from(types)
                .with_context(|| format!("{file}: bad apiVersion {:?}", types.api_version))?;
            let (resource, _) = discovery
                .resolve_gvk(&gvk)
                .with_context(|| format!("{file}: the cluster does not serve {gvk:?}"))?;
            if let Some(namespace) = object.namespace() {
                ensure_namespace(client, &namespace).await?;
            }
            let api: Api<DynamicObject> = match object.namespace() {
                Some(namespace) => Api::namespaced_with(client.clone(), &namespace, &resource),
                None => Api::all_with(client.clone(), &resource),
            };
            api.patch(&object.name_any(), &params, &Patch::Apply(&object))
                .await
                .with_context(|| format!("{file}: applying {} {}", gvk.kind, object.name_any()))?;
            applied += 1;
        }
    }
    Ok(applied)
}

fn read_yaml_dir(dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            files.push((path.display().to_string(), text));
        }
    }
    files.sort();
    Ok(files)
}

async fn ensure_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let namespace = serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
    });
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(namespace),
    )
    .await
    .with_context(|| format!("creating namespace {name}"))?;
    Ok(())
}

async fn print_sessions(client: &Client) {
    let api: Api<Session> = Api::all(client.clone());
    let sessions = match api.list(&Default::default()).await {
        Ok(list) => list.items,
        Err(error) => {
            eprintln!("listing sessions failed: {error}");
            return;
        }
    };
    println!(
        "\n{:<16} {:<16} {:<8} {:<16} {:<11} {:<11} POD / REASON",
        "NAMESPACE", "NAME", "USER", "TEMPLATE", "STATE", "PHASE"
    );
    for session in sessions {
        let status = session.status.clone().unwrap_or_default();
        let detail = status.pod_name.clone().unwrap_or_else(|| {
            status
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready" && !c.is_true())
                .map(|c| c.message.clone())
                .unwrap_or_default()
        });
        println!(
            "{:<16} {:<16} {:<8} {:<16} {:<11} {:<11} {}",
            session.namespace().unwrap_or_default(),
            session.name_any(),
            session.spec.user,
            session.spec.template,
            session.spec.desired_state(),
            status.phase.map(|p| p.to_string()).unwrap_or_default(),
            detail
        );
    }
}
