//! `validate <dir>` and `plan <dir>`: the checks and the plan of a sync, offline, for a
//! pull-request check or a dry run.

use std::path::{Path, PathBuf};

use clap::Args;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::manifest::{self, Desired, OWNER_LABEL, ObjectKind, owner_value};
use super::plan::{self, LiveNode, LiveObject};
use crate::crd::{FeatureFlag, NodeOperation, QuotaPolicy};

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
    /// Plan against this cluster's nodes; without it, against an empty cluster.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// `<namespace>/<name>` of the GitSync whose inventory (what it applied before) to use.
    #[arg(long, default_value = "default/gitops")]
    pub gitsync: String,
    /// Plan with pruning off.
    #[arg(long)]
    pub no_prune: bool,
}

fn load(dir: &Path, overlay: Option<&str>) -> Result<Desired, String> {
    let files = manifest::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    manifest::load(&files, "", overlay).map_err(|errors| {
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

/// Prints the changes a sync would make; exit code 1 when the documents are invalid.
pub async fn plan(args: &PlanArgs) -> anyhow::Result<i32> {
    let desired = match load(&args.dir, args.overlay.as_deref()) {
        Ok(desired) => desired,
        Err(report) => {
            eprintln!("{report}");
            return Ok(1);
        }
    };
    let (nodes, objects) = match &args.kubeconfig {
        Some(path) => {
            let client = crate::dev::client_from(Some(path)).await?;
            let objects = live_objects(&client, &args.gitsync).await?;
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
            (nodes, objects)
        }
        None => (Vec::new(), Vec::new()),
    };
    match plan::plan(
        &args.gitsync,
        &desired.node_configs,
        &nodes,
        &None,
        !args.no_prune,
    ) {
        Ok(mut plan) => {
            match plan::plan_objects(
                &desired.objects,
                &objects,
                &owner_value(&args.gitsync),
                !args.no_prune,
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
