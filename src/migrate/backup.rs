//! `migrate backup -o FILE`: every archived object (see [`super::archive`]) into one file.

use std::path::PathBuf;

use anyhow::Context as _;
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams};
use serde_json::Value;

use super::archive::{self, ArchivedKind};

#[derive(clap::Args, Debug)]
pub struct BackupArgs {
    /// File to write the archive to (`-`: standard output).
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Only objects of this namespace (FeatureFlags, cluster-scoped, are always included).
    #[arg(short = 'n', long, conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,
    /// Objects of every namespace (the default).
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Only objects matching this label selector (`key=value,...`, as kubectl's -l).
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
}

/// Lists every archived kind, writes the archive, prints the summary; exit code 0.
pub async fn run(client: &Client, args: &BackupArgs) -> anyhow::Result<i32> {
    let mut objects = Vec::new();
    for kind in archive::kinds() {
        let listed = list(client, &kind, args).await?;
        objects.extend(listed.iter().map(archive::strip));
    }
    let objects = archive::sorted(objects);
    let text = archive::to_yaml(&objects).context("writing the archive as YAML")?;
    let to_stdout = args.output.as_os_str() == "-";
    if to_stdout {
        print!("{text}");
    } else {
        std::fs::write(&args.output, &text)
            .with_context(|| format!("writing {}", args.output.display()))?;
    }
    let counts = archive::counts(
        objects
            .iter()
            .filter_map(|o| o.get("kind").and_then(Value::as_str)),
    );
    let report = format!(
        "backed up {} objects to {}:\n{}",
        objects.len(),
        if to_stdout {
            "standard output".to_string()
        } else {
            args.output.display().to_string()
        },
        archive::summary(&counts)
    );
    // With the archive on standard output, the summary goes to standard error.
    if to_stdout {
        eprint!("{report}");
    } else {
        print!("{report}");
    }
    Ok(0)
}

/// Every object of `kind` the arguments select (the namespace applies to namespaced kinds), as
/// JSON with its apiVersion and kind set.
async fn list(
    client: &Client,
    kind: &ArchivedKind,
    args: &BackupArgs,
) -> anyhow::Result<Vec<Value>> {
    let api: Api<DynamicObject> = match args.namespace.as_deref() {
        Some(namespace) if kind.namespaced => {
            Api::namespaced_with(client.clone(), namespace, &kind.resource)
        }
        _ => Api::all_with(client.clone(), &kind.resource),
    };
    let mut params = ListParams::default();
    if let Some(selector) = &args.selector {
        params = params.labels(selector);
    }
    let list = api
        .list(&params)
        .await
        .with_context(|| format!("listing {}s (is the CRD installed?)", kind.kind))?;
    let mut objects = Vec::with_capacity(list.items.len());
    for item in list.items {
        let mut value = serde_json::to_value(&item)
            .with_context(|| format!("reading a {} as JSON", kind.kind))?;
        if let Some(map) = value.as_object_mut() {
            map.insert(
                "apiVersion".into(),
                kind.resource.api_version.clone().into(),
            );
            map.insert("kind".into(), kind.kind.into());
        }
        objects.push(value);
    }
    Ok(objects)
}
