//! `dev`: the whole product on one machine. Starts the local control plane (building it on
//! first use), installs the CRDs, applies the examples, runs the node simulator and the
//! controller, and prints a table of sessions until Ctrl-C.

use std::path::{Path, PathBuf};
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
use crate::controller;
use crate::crd;
use crate::devcluster::simulator::{NodeSimulator, SimulatorConfig};
use crate::devcluster::{ControlPlane, ControlPlaneOptions};
use components::run_components;

pub mod block;
mod components;
mod table;
mod webhooks;

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
    /// Use this cluster instead of starting a local control plane (no node simulator, no
    /// admission webhooks, a static admin token for the API).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Directory of YAML files to apply (default: the examples built into the binary).
    #[arg(long)]
    examples: Option<PathBuf>,
    /// Simulated nodes to register on the local control plane.
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// Seconds between two refreshes of the session table.
    #[arg(long, default_value_t = 2)]
    refresh: u64,
    /// A Git repository of your own for the GitSync to follow, kept on exit (created from
    /// `examples/gitops/` when the directory is not a repository yet). Default: a fresh
    /// repository in a directory of this run, removed on exit.
    #[arg(long)]
    gitops_repo: Option<PathBuf>,
    /// Do not create and sync the GitOps example repository.
    #[arg(long)]
    no_gitops: bool,
    /// Address of the controller's /healthz, /readyz, /metrics and connection events.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_addr: std::net::SocketAddr,
    /// Address of the API and its rollout console (`/console`).
    #[arg(long, default_value = "127.0.0.1:8000")]
    api_addr: std::net::SocketAddr,
    /// HTTPS address of the admission webhooks (local control plane only).
    #[arg(long, default_value = "127.0.0.1:8443")]
    webhook_addr: std::net::SocketAddr,
    /// Do not register the admission webhooks (quota and defaults).
    #[arg(long)]
    no_webhooks: bool,
    /// Where the logs go (default: `streamspace-dev.log` in the temp directory).
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// Also print the logs on standard error.
    #[arg(short, long)]
    verbose: bool,
    #[command(flatten)]
    settings: ControllerSettings,
}

pub use crate::kube_client::{client_from, kube_config_from};

impl DevArgs {
    /// The log file of this run.
    pub fn log_file(&self) -> PathBuf {
        self.log_file
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("streamspace-dev.log"))
    }

    /// Whether logs are also printed on standard error.
    pub fn verbose(&self) -> bool {
        self.verbose
    }
}

/// A fresh random token.
fn new_token() -> anyhow::Result<String> {
    crate::devcluster::random_token().context("generating a token")
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let mut config = args.settings.to_config()?;
    // Every port first: one that is taken fails here, naming its address.
    let listener = crate::http::bind("--http-addr", args.http_addr).await?;
    let api_listener = crate::http::bind("--api-addr", args.api_addr).await?;
    let webhook_listener = match args.kubeconfig.is_none() && !args.no_webhooks {
        true => Some(crate::http::bind("--webhook-addr", args.webhook_addr).await?),
        false => None,
    };
    // What this run creates and removes on exit: the example repository, the bare clones.
    let run_dir = tempfile::Builder::new()
        .prefix("streamspace-dev-")
        .tempdir()
        .context("creating the run directory")?;
    config.gitops.cache_dir = run_dir.path().join("git-cache");
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
    let result = run_on(
        &args,
        config,
        &client,
        control_plane.as_ref(),
        run_dir.path(),
        listeners(listener, api_listener, webhook_listener),
    )
    .await;
    if let Some(control_plane) = control_plane {
        control_plane.stop().await;
    }
    let removed = run_dir.path().display().to_string();
    match run_dir.close() {
        Ok(()) => eprintln!("removed {removed}"),
        Err(error) => eprintln!("could not remove {removed}: {error}"),
    }
    result
}

/// The listeners `dev` binds before starting anything.
struct Listeners {
    http: tokio::net::TcpListener,
    api: tokio::net::TcpListener,
    webhooks: Option<tokio::net::TcpListener>,
}

fn listeners(
    http: tokio::net::TcpListener,
    api: tokio::net::TcpListener,
    webhooks: Option<tokio::net::TcpListener>,
) -> Listeners {
    Listeners {
        http,
        api,
        webhooks,
    }
}

async fn run_on(
    args: &DevArgs,
    mut config: controller::Config,
    client: &Client,
    control_plane: Option<&ControlPlane>,
    run_dir: &Path,
    listeners: Listeners,
) -> anyhow::Result<()> {
    let kubeconfig_path = match (&args.kubeconfig, control_plane) {
        (Some(path), _) => Some(path.clone()),
        (None, Some(plane)) => Some(plane.kubeconfig_path().to_path_buf()),
        (None, None) => None,
    };
    let kube_config = kube_config_from(kubeconfig_path.as_deref()).await?;
    config.node_operations.kube_config = Some(kube_config.clone());
    // The API's connection events reach the controller with a token both hold.
    if config.connection_event_token.is_none() {
        config.connection_event_token = Some(new_token()?);
    }
    crd::install::install(client, FIELD_MANAGER).await?;
    crate::rbac::apply_dev(client, FIELD_MANAGER)
        .await
        .context("applying the API's RBAC")?;
    let simulator = control_plane.map(|_| {
        NodeSimulator::spawn(
            client.clone(),
            SimulatorConfig {
                node_names: (1..=args.nodes).map(|i| format!("sim-node-{i}")).collect(),
                ..SimulatorConfig::default()
            },
        )
    });
    let result = run_components(
        args,
        config,
        client,
        control_plane,
        kube_config,
        kubeconfig_path.as_deref(),
        run_dir,
        listeners,
    )
    .await;
    if let Some(simulator) = simulator {
        simulator.stop().await;
    }
    result
}

/// Resolves once the API server calls the webhooks (when registered), the API answers
/// `/readyz` and, with a repository, the GitSync applied its first commit: what the printed
/// commands need. Runs under the supervisor, which is what makes the caches load.
async fn wait_ready(
    client: &Client,
    api_url: &str,
    namespace: &str,
    webhooks: bool,
    gitops: bool,
) -> anyhow::Result<()> {
    if webhooks {
        webhooks::wait_until_called(client, namespace).await?;
    }
    let deadline = tokio::time::Instant::now() + READY_WAIT;
    let url = format!("{api_url}/readyz");
    while !crate::api_client::get_ok(&url).await {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the API was not ready within {READY_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !gitops {
        return Ok(());
    }
    let syncs: Api<crd::GitSync> = Api::namespaced(client.clone(), namespace);
    loop {
        let applied = syncs
            .get_opt(DEV_GITSYNC_NAME)
            .await?
            .and_then(|s| s.status)
            .is_some_and(|s| s.last_applied_commit.is_some());
        if applied {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the GitSync applied no commit within {READY_WAIT:?} (kubectl describe gitsync -n {namespace} {DEV_GITSYNC_NAME})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Longest wait for the API and the first Git sync before `dev` gives up.
const READY_WAIT: Duration = Duration::from_secs(120);

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

/// Turns the GitOps examples into a local Git repository (unless `repo` already is one) and
/// creates a GitSync that follows it, so editing and committing there changes the nodes.
/// Returns whether the repository was created now.
async fn sync_gitops_examples(
    client: &Client,
    repo: &Path,
    examples: Option<&Path>,
    namespace: &str,
) -> anyhow::Result<bool> {
    let files = match examples
        .map(|dir| dir.join("gitops"))
        .filter(|d| d.is_dir())
    {
        Some(dir) => crate::gitops::manifest::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .into_iter()
            .map(|f| (f.path, f.content))
            .collect(),
        None => embedded_gitops_files(),
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
    let whose = if created {
        "created from the examples"
    } else {
        "an existing repository, used as it is"
    };
    eprintln!(
        "GitOps: {} ({whose}), followed by GitSync {namespace}/{DEV_GITSYNC_NAME} every 5s",
        repo.display()
    );
    Ok(created)
}

/// The GitOps examples built into the binary, with the JSON Schemas their modelines name
/// (under `manifests-schema/` of the repository, each modeline rewritten to reach it).
fn embedded_gitops_files() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = EMBEDDED_GITOPS
        .iter()
        .map(|(path, text)| (path.to_string(), relocate_modeline(path, text)))
        .collect();
    files.extend(
        EMBEDDED_SCHEMAS
            .iter()
            .map(|(name, text)| (format!("{SCHEMA_DIR}/{name}"), text.to_string())),
    );
    files
}

/// Directory of the schemas in the dev repository.
const SCHEMA_DIR: &str = "manifests-schema";

/// The schemas the examples' modelines name.
const EMBEDDED_SCHEMAS: &[(&str, &str)] = &[
    (
        "featureflag.schema.json",
        include_str!("../manifests-schema/featureflag.schema.json"),
    ),
    (
        "nodeconfig.schema.json",
        include_str!("../manifests-schema/nodeconfig.schema.json"),
    ),
    (
        "nodeoperation.schema.json",
        include_str!("../manifests-schema/nodeoperation.schema.json"),
    ),
    (
        "quotapolicy.schema.json",
        include_str!("../manifests-schema/quotapolicy.schema.json"),
    ),
];

/// `text` (the file `path` of the repository) with its schema modelines pointing into the
/// repository's own [`SCHEMA_DIR`] (in `examples/gitops/` they point two levels up).
fn relocate_modeline(path: &str, text: &str) -> String {
    let up = "../".repeat(path.matches('/').count());
    text.replace(
        "$schema=../../manifests-schema/",
        &format!("$schema={up}{SCHEMA_DIR}/"),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_go_to_the_temp_directory_unless_told_and_v_also_prints_them() {
        #[derive(clap::Parser)]
        struct Command {
            #[command(flatten)]
            dev: DevArgs,
        }
        use clap::Parser as _;
        let plain = Command::try_parse_from(["dev"]).expect("parses").dev;
        assert_eq!(
            plain.log_file(),
            std::env::temp_dir().join("streamspace-dev.log")
        );
        assert!(!plain.verbose());
        let told = Command::try_parse_from(["dev", "-v", "--log-file", "/x/dev.log"])
            .expect("parses")
            .dev;
        assert_eq!(told.log_file(), Path::new("/x/dev.log"));
        assert!(told.verbose());
        let long = Command::try_parse_from(["dev", "--verbose"])
            .expect("parses")
            .dev;
        assert!(long.verbose());
    }

    #[tokio::test]
    async fn the_gitops_examples_become_a_repository_that_validates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("gitops");
        let files = embedded_gitops_files();
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
        // The GitSync reads the YAML documents; the schemas are there for editors.
        let mut expected: Vec<&str> = files
            .iter()
            .map(|(p, _)| p.as_str())
            .filter(|p| p.ends_with(".yaml"))
            .collect();
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
        // Every schema modeline names a file of the repository.
        for (path, text) in &files {
            for line in text.lines() {
                if let Some(schema) = line.strip_prefix("# yaml-language-server: $schema=") {
                    let base = repo.join(path);
                    let target = base.parent().expect("a directory").join(schema);
                    assert!(target.is_file(), "{path}: {schema} does not resolve");
                }
            }
        }
        // A second start keeps the repository (and the user's commits) as it is.
        std::fs::write(repo.join("nodes.yaml"), "# edited\n").expect("edit");
        assert!(!init_example_repo(&repo, &files).expect("reuse"));
        assert_eq!(
            std::fs::read_to_string(repo.join("nodes.yaml")).expect("read"),
            "# edited\n"
        );
    }
}
