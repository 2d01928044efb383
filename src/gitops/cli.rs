//! `validate <dir>` and `plan <dir>`: the checks and the plan of a sync, offline, for a
//! pull-request check or a dry run.

use std::path::{Path, PathBuf};

use clap::Args;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::manifest::{self, Desired, OWNER_LABEL, ObjectKind, owner_value};
use super::plan::{self, LiveNode, LiveObject, Record};
use crate::crd::{FeatureFlag, GitSync, NodeOperation, QuotaPolicy};

/// The sync id `plan` uses offline, where no GitSync is read.
const OFFLINE_GITSYNC: &str = "default/gitops";

#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// Directory holding the documents (the GitSync's `path` inside a checkout).
    pub dir: PathBuf,
    /// Also apply and check this overlay.
    #[arg(long)]
    pub overlay: Option<String>,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Directory holding the documents (the GitSync's `path` inside a checkout).
    pub dir: PathBuf,
    /// Overlay to apply.
    #[arg(long)]
    pub overlay: Option<String>,
    /// Plan against this cluster's nodes and objects; without it, against an empty cluster.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// `<namespace>/<name>` of the GitSync to plan as (with `--kubeconfig`): its inventory,
    /// `path`, `overlay` and `prune` are used, and `<dir>` is a checkout of its repository.
    /// Default: the one GitSync whose URL is `<dir>` or a remote of the repository at `<dir>`.
    #[arg(long)]
    pub gitsync: Option<String>,
    /// Plan with pruning off.
    #[arg(long)]
    pub no_prune: bool,
}

fn load(dir: &Path, overlay: Option<&str>) -> Result<Desired, String> {
    load_below(dir, "", overlay)
}

/// The documents below `base` (a GitSync's `path`) of the checkout at `dir`.
fn load_below(dir: &Path, base: &str, overlay: Option<&str>) -> Result<Desired, String> {
    let files = manifest::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    manifest::load(&files, base, overlay).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        lines.join("\n")
    })
}

/// Prints every problem as `file:line: reason`; the exit code is 1 when there is one.
pub fn validate(args: &ValidateArgs) -> i32 {
    match load(&args.dir, args.overlay.as_deref()) {
        Ok(desired) => {
            let count =
                |kind: ObjectKind| desired.objects.iter().filter(|o| o.kind == kind).count();
            println!(
                "ok: {} NodeConfig, {} QuotaPolicy, {} NodeOperation and {} FeatureFlag document(s)",
                desired.node_configs.len(),
                count(ObjectKind::QuotaPolicy),
                count(ObjectKind::NodeOperation),
                count(ObjectKind::FeatureFlag)
            );
            0
        }
        Err(report) => {
            eprintln!("{report}");
            1
        }
    }
}

/// What `plan` plans as: the sync id, the documents' directory below the checkout, the overlay,
/// whether pruning is on, and the GitSync's record of what it applied.
#[derive(Debug, PartialEq)]
struct PlanSource {
    sync_id: String,
    base: String,
    overlay: Option<String>,
    prune: bool,
    record: Record,
}

impl PlanSource {
    /// Offline: the directory is the documents' directory; nothing was applied before.
    fn offline(args: &PlanArgs) -> PlanSource {
        PlanSource {
            sync_id: args
                .gitsync
                .clone()
                .unwrap_or_else(|| OFFLINE_GITSYNC.to_string()),
            base: String::new(),
            overlay: args.overlay.clone(),
            prune: !args.no_prune,
            record: None,
        }
    }

    /// As the GitSync `sync`: its path, its overlay unless `--overlay` names another, its
    /// prune setting (`--no-prune` can only turn pruning off) and its inventory.
    fn of(args: &PlanArgs, sync: &GitSync) -> PlanSource {
        PlanSource {
            sync_id: super::reconciler::sync_id(sync),
            base: sync.spec.path.clone().unwrap_or_default(),
            overlay: args.overlay.clone().or_else(|| sync.spec.overlay.clone()),
            prune: sync.spec.prune && !args.no_prune,
            record: super::nodes::record(&sync.status.clone().unwrap_or_default()),
        }
    }
}

/// The URL forms that name the local directory `dir` (canonical): its path and `file://` URL.
fn local_urls(dir: &Path) -> Vec<String> {
    let path = dir.display().to_string();
    vec![format!("file://{path}"), path]
}

/// The remote URLs of the Git repository whose work tree (or bare directory) is `dir`.
fn remote_urls(dir: &Path) -> Vec<String> {
    let Ok(repo) = git2::Repository::open(dir) else {
        return Vec::new();
    };
    let Ok(names) = repo.remotes() else {
        return Vec::new();
    };
    let mut urls = Vec::new();
    for name in names.iter().flatten().flatten() {
        if let Ok(remote) = repo.find_remote(name)
            && let Ok(url) = remote.url()
        {
            urls.push(url.to_string());
        }
    }
    urls
}

/// `a` and `b` name the same repository, ignoring a trailing `/` or `.git`.
fn same_url(a: &str, b: &str) -> bool {
    let norm = |u: &str| {
        let u = u.trim_end_matches('/');
        u.strip_suffix(".git").unwrap_or(u).to_string()
    };
    norm(a) == norm(b)
}

/// The GitSyncs of `syncs` that follow the repository at `dir`: by its path or `file://` URL,
/// or by one of its remotes.
fn following<'a>(syncs: &'a [GitSync], dir: &Path) -> Vec<&'a GitSync> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut urls = local_urls(&dir);
    urls.extend(remote_urls(&dir));
    syncs
        .iter()
        .filter(|s| urls.iter().any(|u| same_url(u, &s.spec.url)))
        .collect()
}

/// The GitSync to plan as: the one `--gitsync` names, else the one that follows `dir`.
async fn find_gitsync(client: &kube::Client, args: &PlanArgs) -> anyhow::Result<GitSync> {
    if let Some(id) = &args.gitsync {
        let Some((namespace, name)) = id.split_once('/') else {
            anyhow::bail!("--gitsync {id:?}: expected <namespace>/<name>");
        };
        return Api::<GitSync>::namespaced(client.clone(), namespace)
            .get_opt(name)
            .await?
            .ok_or_else(|| anyhow::anyhow!("GitSync {id} does not exist in this cluster"));
    }
    let syncs = Api::<GitSync>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let list = |syncs: &[&GitSync]| {
        syncs
            .iter()
            .map(|s| format!("{} ({})", super::reconciler::sync_id(s), s.spec.url))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let found = following(&syncs, &args.dir);
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] => anyhow::bail!(
            "no GitSync follows {} (its URL is neither this directory nor a remote of the repository there); GitSyncs in the cluster: {}; name one with --gitsync <namespace>/<name>",
            args.dir.display(),
            if syncs.is_empty() {
                "none".to_string()
            } else {
                list(&syncs.iter().collect::<Vec<_>>())
            }
        ),
        several => anyhow::bail!(
            "several GitSyncs follow {}: {}; name one with --gitsync <namespace>/<name>",
            args.dir.display(),
            list(several)
        ),
    }
}

/// Prints the changes a sync would make; exit code 1 when the documents are invalid.
pub async fn plan(args: &PlanArgs) -> anyhow::Result<i32> {
    let (source, nodes, objects) = match &args.kubeconfig {
        Some(path) => {
            let client = crate::dev::client_from(Some(path)).await?;
            let sync = find_gitsync(&client, args).await?;
            let source = PlanSource::of(args, &sync);
            eprintln!(
                "planning as GitSync {} (path {:?}, overlay {:?}, prune {})",
                source.sync_id,
                if source.base.is_empty() {
                    "/"
                } else {
                    &source.base
                },
                source.overlay.as_deref().unwrap_or("none"),
                source.prune
            );
            let objects = live_objects(&client, &source.sync_id).await?;
            let nodes = Api::<Node>::all(client)
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .map(|n| LiveNode {
                    name: n.name_any(),
                    resource_version: n.resource_version(),
                    labels: n.metadata.labels.clone(),
                    annotations: n.metadata.annotations.clone(),
                    taints: n.spec.as_ref().and_then(|s| s.taints.clone()),
                })
                .collect();
            (source, nodes, objects)
        }
        None => (PlanSource::offline(args), Vec::new(), Vec::new()),
    };
    let desired = match load_below(&args.dir, &source.base, source.overlay.as_deref()) {
        Ok(desired) => desired,
        Err(report) => {
            eprintln!("{report}");
            return Ok(1);
        }
    };
    match plan::plan(
        &source.sync_id,
        &desired.node_configs,
        &nodes,
        &source.record,
        source.prune,
    ) {
        Ok(mut plan) => {
            match plan::plan_objects(
                &desired.objects,
                &objects,
                &owner_value(&source.sync_id),
                source.prune,
            ) {
                Ok(objects) => plan.objects = objects,
                Err(error) => {
                    eprintln!("{error}");
                    return Ok(1);
                }
            }
            print!("{}", plan::render(&plan));
            Ok(0)
        }
        Err(error) => {
            eprintln!("{error}");
            Ok(1)
        }
    }
}

/// The QuotaPolicies (in the GitSync's namespace) and NodeOperations that carry an ownership
/// label (of this GitSync or another).
async fn live_objects(client: &kube::Client, gitsync: &str) -> anyhow::Result<Vec<LiveObject>> {
    let namespace = gitsync.split_once('/').map_or("default", |(ns, _)| ns);
    let selector = ListParams::default().labels(OWNER_LABEL);
    let mut out = Vec::new();
    for quota in Api::<QuotaPolicy>::namespaced(client.clone(), namespace)
        .list(&selector)
        .await?
        .items
    {
        out.push(LiveObject {
            kind: ObjectKind::QuotaPolicy,
            name: quota.name_any(),
            labels: quota.labels().clone(),
            spec: serde_json::to_value(&quota.spec)?,
        });
    }
    for operation in Api::<NodeOperation>::all(client.clone())
        .list(&selector)
        .await?
        .items
    {
        out.push(LiveObject {
            kind: ObjectKind::NodeOperation,
            name: operation.name_any(),
            labels: operation.labels().clone(),
            spec: serde_json::to_value(&operation.spec)?,
        });
    }
    for flag in Api::<FeatureFlag>::all(client.clone())
        .list(&selector)
        .await?
        .items
    {
        out.push(LiveObject {
            kind: ObjectKind::FeatureFlag,
            name: flag.name_any(),
            labels: flag.labels().clone(),
            spec: manifest::git_managed_spec(
                ObjectKind::FeatureFlag,
                &serde_json::to_value(&flag.spec)?,
            ),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_exits_non_zero_on_an_invalid_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("a.yaml"),
            "apiVersion: stream.space/v1alpha1\nkind: NodeConfig\nmetadata: {name: a}\nspec: {nodeName: node-a}\n",
        )
        .expect("write");
        let args = |overlay: Option<&str>| ValidateArgs {
            dir: dir.path().to_path_buf(),
            overlay: overlay.map(str::to_string),
        };
        assert_eq!(validate(&args(None)), 0);
        assert_eq!(validate(&args(Some("missing"))), 1);
        std::fs::write(dir.path().join("b.yaml"), "kind: NodeConfig\n").expect("write");
        assert_eq!(validate(&args(None)), 1);
    }

    fn gitsync(namespace: &str, name: &str, url: &str) -> GitSync {
        let mut sync: GitSync = serde_json::from_value(serde_json::json!({
            "apiVersion": "stream.space/v1alpha1",
            "kind": "GitSync",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"url": url, "path": "clusters/prod", "overlay": "production", "prune": true},
        }))
        .expect("gitsync");
        sync.status = None;
        sync
    }

    fn plan_args(gitsync: Option<&str>, overlay: Option<&str>, no_prune: bool) -> PlanArgs {
        PlanArgs {
            dir: PathBuf::from("."),
            overlay: overlay.map(str::to_string),
            kubeconfig: None,
            gitsync: gitsync.map(str::to_string),
            no_prune,
        }
    }

    #[test]
    fn plan_uses_the_gitsyncs_path_overlay_and_prune() {
        let sync = gitsync("platform", "prod", "https://git.example/cfg.git");
        let source = PlanSource::of(&plan_args(None, None, false), &sync);
        assert_eq!(source.sync_id, "platform/prod");
        assert_eq!(source.base, "clusters/prod");
        assert_eq!(source.overlay.as_deref(), Some("production"));
        assert!(source.prune);
        assert_eq!(
            source.record,
            Some(Default::default()),
            "its (empty) inventory"
        );
        let mine = PlanSource::of(&plan_args(None, Some("staging"), true), &sync);
        assert_eq!(mine.overlay.as_deref(), Some("staging"), "--overlay wins");
        assert!(!mine.prune, "--no-prune turns pruning off");
        let offline = PlanSource::offline(&plan_args(None, None, false));
        assert_eq!(offline.sync_id, OFFLINE_GITSYNC);
        assert_eq!((offline.base.as_str(), offline.record), ("", None));
    }

    #[test]
    fn the_gitsync_that_follows_a_directory_is_found_by_path_file_url_or_remote() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().canonicalize().expect("canonical");
        let repo = git2::Repository::init(&path).expect("init");
        repo.remote("origin", "https://git.example/platform/cfg.git")
            .expect("remote");
        let syncs = [
            gitsync("a", "by-file-url", &format!("file://{}/", path.display())),
            gitsync("b", "by-remote", "https://git.example/platform/cfg"),
            gitsync("c", "other", "https://git.example/platform/other.git"),
            gitsync("d", "by-path", &path.display().to_string()),
        ];
        let names: Vec<String> = following(&syncs, &path)
            .iter()
            .map(|s| s.name_any())
            .collect();
        assert_eq!(names, ["by-file-url", "by-remote", "by-path"]);
        let elsewhere = tempfile::tempdir().expect("tempdir");
        assert!(following(&syncs, elsewhere.path()).is_empty());
    }

    #[test]
    fn the_example_repository_validates_with_and_without_its_overlay() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/gitops");
        let base = load(&dir, None).expect("example is valid");
        assert!(!base.node_configs.is_empty());
        assert!(!base.objects.is_empty(), "the example QuotaPolicy");
        let prod = load(&dir, Some("production")).expect("overlay applies");
        assert_ne!(base, prod, "the overlay changes something");
    }
}
