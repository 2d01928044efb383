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

use crate::FIELD_MANAGER;
use crate::cli::ControllerSettings;
use crate::controller::{self, Readiness};
use crate::crd::{self, Session};
use crate::devcluster::simulator::{NodeSimulator, SimulatorConfig};
use crate::devcluster::{ControlPlane, ControlPlaneOptions};
use crate::metrics::Metrics;
use crate::supervisor::Supervisor;

/// The GitOps example repository compiled into the binary (`examples/gitops/`), used when the
/// `--examples` directory has no `gitops/` sub-directory.
const EMBEDDED_GITOPS: &[(&str, &str)] = &[
    ("nodes.yaml", include_str!("../examples/gitops/nodes.yaml")),
    ("quota.yaml", include_str!("../examples/gitops/quota.yaml")),
    ("flags.yaml", include_str!("../examples/gitops/flags.yaml")),
    (
        "maintenance.yaml",
        include_str!("../examples/gitops/maintenance.yaml"),
    ),
    (
        "overlays/production/tier.yaml",
        include_str!("../examples/gitops/overlays/production/tier.yaml"),
    ),
];

/// Namespace of the dev GitSync when the controller watches every namespace.
const DEV_GITSYNC_NAMESPACE: &str = "streamspace";
const DEV_GITSYNC_NAME: &str = "examples";

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
    /// Where to create the local Git repository of `examples/gitops/` (kept across runs, so
    /// your commits survive a restart; delete it to start over).
    #[arg(long)]
    gitops_repo: Option<PathBuf>,
    /// Do not create and sync the GitOps example repository.
    #[arg(long)]
    no_gitops: bool,
    /// Address of the controller's /healthz, /readyz and /metrics.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_addr: std::net::SocketAddr,
    #[command(flatten)]
    settings: ControllerSettings,
}

pub use crate::kube_client::{client_from, kube_config_from};

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
    crate::rbac::apply_dev(&client, FIELD_MANAGER)
        .await
        .context("applying the API's RBAC")?;
    if let Some(plane) = &control_plane {
        eprintln!(
            "API users {:?} (groups bound to the streamspace-operator/-admin roles); tokens in {}",
            plane
                .dev_users()
                .iter()
                .map(|u| u.name.as_str())
                .collect::<Vec<_>>(),
            crate::devcluster::dev_users::dev_users_path(plane.kubeconfig_path()).display()
        );
    }
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
    if !args.no_gitops {
        let repo = args
            .gitops_repo
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("streamspace-dev-gitops"));
        let namespace = config
            .namespace
            .clone()
            .unwrap_or_else(|| DEV_GITSYNC_NAMESPACE.to_string());
        // The dev repository is a local directory: honour its GitSync and its file:// URL.
        if let crate::gitops::trust::NamespacePolicy::Only(names) = &mut config.gitops.namespaces {
            names.insert(namespace.clone());
        }
        config.gitops.allow_insecure_transports = true;
        sync_gitops_examples(&client, &repo, args.examples.as_deref(), &namespace).await?;
    }

    let metrics = Arc::new(Metrics::default());
    let readiness = Readiness::default();
    let listener = crate::http::bind("--http-addr", args.http_addr).await?;
    let supervisor = Supervisor::new();
    let tasks = supervisor.handle();
    controller::start(
        &tasks,
        client.clone(),
        config.clone(),
        metrics.clone(),
        readiness.clone(),
    )
    .await?;
    // Local only: the push hooks share the one port (`controller` serves them on --hooks-addr).
    let router =
        crate::http::controller_endpoints(&client, &config, metrics.clone(), readiness).merge(
            crate::http::hooks_router(client.clone(), config.gitops.hooks.clone(), metrics),
        );
    crate::http::serve_supervised(&tasks, "http server", listener, router);
    let refresh = Duration::from_secs(args.refresh.max(1));
    let printer = client.clone();
    tasks.spawn("session printer", async move {
        let mut ticker = tokio::time::interval(refresh);
        loop {
            ticker.tick().await;
            print_sessions(&printer).await;
        }
    });
    let result = supervisor
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("stopping...");
        })
        .await;
    if let Some(simulator) = simulator {
        simulator.stop().await;
    }
    if let Some(control_plane) = control_plane {
        control_plane.stop().await;
    }
    result.map_err(anyhow::Error::from)
}

/// Turns the GitOps examples into a local Git repository (unless `repo` already is one) and
/// creates a GitSync that follows it, so editing and committing there changes the nodes.
async fn sync_gitops_examples(
    client: &Client,
    repo: &Path,
    examples: Option<&Path>,
    namespace: &str,
) -> anyhow::Result<()> {
    let files = match examples
        .map(|dir| dir.join("gitops"))
        .filter(|d| d.is_dir())
    {
        Some(dir) => crate::gitops::manifest::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .into_iter()
            .map(|f| (f.path, f.content))
            .collect(),
        None => EMBEDDED_GITOPS
            .iter()
            .map(|(path, text)| (path.to_string(), text.to_string()))
            .collect::<Vec<_>>(),
    };
    let created = init_example_repo(repo, &files)?;
    let url = format!("file://{}", repo.display());
    ensure_namespace(client, namespace).await?;
    let sync = serde_json::json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "GitSync",
        "metadata": {"name": DEV_GITSYNC_NAME, "namespace": namespace},
        "spec": {"url": url, "branch": "main", "interval": "5s"}
    });
    Api::<crd::GitSync>::namespaced(client.clone(), namespace)
        .patch(
            DEV_GITSYNC_NAME,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&sync),
        )
        .await
        .context("creating the dev GitSync")?;
    eprintln!(
        "GitOps: {} the repository {} (GitSync {namespace}/{DEV_GITSYNC_NAME}, polled every 5s).\n  \
         Edit a file there and `git commit -am ...`: the simulated nodes follow.\n  \
         kubectl get gitsyncs -A; kubectl get nodes --show-labels",
        if created { "created" } else { "reusing" },
        repo.display()
    );
    Ok(())
}

/// Creates a Git repository in `dir` holding `files` in one commit on `main`; returns false,
/// changing nothing, when `dir` already is a repository (the user's commits are kept).
pub fn init_example_repo(dir: &Path, files: &[(String, String)]) -> anyhow::Result<bool> {
    if git2::Repository::open(dir).is_ok() {
        return Ok(false);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let repo = git2::Repository::init(dir).context("git init")?;
    repo.set_head("refs/heads/main").context("git HEAD")?;
    for (path, text) in files {
        let full = dir.join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&full, text).with_context(|| format!("writing {}", full.display()))?;
    }
    let mut index = repo.index().context("git index")?;
    index
        .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
        .context("git add")?;
    index.write().context("git index")?;
    let tree = repo
        .find_tree(index.write_tree().context("git write-tree")?)
        .context("git tree")?;
    let signature = git2::Signature::now("streamspace dev", "dev@streamspace.invalid")
        .context("git signature")?;
    repo.commit(
        Some("refs/heads/main"),
        &signature,
        &signature,
        "The GitOps examples",
        &tree,
        &[],
    )
    .context("git commit")?;
    Ok(true)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_gitops_examples_become_a_repository_that_validates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("gitops");
        let files: Vec<(String, String)> = EMBEDDED_GITOPS
            .iter()
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .collect();
        assert!(init_example_repo(&repo, &files).expect("init"));
        // What the GitSync does: fetch (a bare clone) and read the commit.
        let cache = dir.path().join("cache");
        let commit = crate::gitops::repo::fetch(crate::gitops::repo::FetchRequest {
            url: format!("file://{}", repo.display()),
            branch: "main".into(),
            dir: cache.clone(),
            credentials: None,
            timeout: Duration::from_secs(30),
            max_bytes: usize::MAX,
        })
        .await
        .expect("fetch");
        let read = crate::gitops::repo::read_commit(cache, commit)
            .await
            .expect("read");
        let mut paths: Vec<&str> = read.iter().map(|f| f.path.as_str()).collect();
        paths.sort_unstable();
        let mut expected: Vec<&str> = EMBEDDED_GITOPS.iter().map(|(p, _)| *p).collect();
        expected.sort_unstable();
        assert_eq!(paths, expected);
        let desired = crate::gitops::manifest::load(&read, "", Some("production")).expect("valid");
        assert!(!desired.node_configs.is_empty());
        assert!(
            desired
                .objects
                .iter()
                .any(|o| o.kind == crate::gitops::manifest::ObjectKind::QuotaPolicy)
        );
        // A second start keeps the repository (and the user's commits) as it is.
        std::fs::write(repo.join("nodes.yaml"), "# edited\n").expect("edit");
        assert!(!init_example_repo(&repo, &files).expect("reuse"));
        assert_eq!(
            std::fs::read_to_string(repo.join("nodes.yaml")).expect("read"),
            "# edited\n"
        );
    }
}
