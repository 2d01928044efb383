//! `migrate restore FILE`: re-creates the objects of an archive, idempotently.
//!
//! Per object ([`decide`]): missing -> create; present with the archived `spec` -> unchanged;
//! present with another `spec` -> refused (it changed after the backup, or was made by someone
//! else: restoring must not undo that), unless `--force`, which replaces the spec with a write
//! guarded by the resourceVersion just read. Status is not written (the controllers compute it
//! again); the archived phase is printed beside each object. Missing namespaces are created.

use std::path::PathBuf;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, PostParams};
use kube::{Client, ResourceExt};
use serde_json::Value;

use super::archive::{self, Entry};

/// Field manager of the objects restore writes.
pub const FIELD_MANAGER: &str = "streamspace-migrate";

#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// Archive written by `migrate backup`.
    pub file: PathBuf,
    /// Print what would be done; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Replace objects whose spec differs from the archive (they changed after the backup).
    #[arg(long)]
    pub force: bool,
}

/// What restore does with one archived object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It does not exist: create it.
    Create,
    /// It exists with the archived spec: leave it.
    Unchanged,
    /// It exists with another spec and `--force` was given: replace the spec.
    Replace,
    /// It exists with another spec: leave it and report why.
    Refuse(String),
}

/// The decision for one object: the archived spec and generation against the existing
/// object's (`None`: it does not exist).
pub fn decide(
    archived_spec: &Value,
    archived_generation: Option<i64>,
    existing: Option<(&Value, Option<i64>)>,
    force: bool,
) -> Outcome {
    let Some((spec, generation)) = existing else {
        return Outcome::Create;
    };
    if spec == archived_spec {
        return Outcome::Unchanged;
    }
    if force {
        return Outcome::Replace;
    }
    let show = |g: Option<i64>| g.map_or_else(|| "?".to_string(), |g| g.to_string());
    Outcome::Refuse(format!(
        "exists with a different spec (generation {} here, {} in the archive): it changed after \
         the backup or was made by someone else; --force replaces it",
        show(generation),
        show(archived_generation)
    ))
}

/// Restores every object of the archive; exit code 1 when any was refused or failed.
pub async fn run(client: &Client, args: &RestoreArgs) -> anyhow::Result<i32> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let entries =
        archive::parse(&text).with_context(|| format!("reading {}", args.file.display()))?;
    let prefix = if args.dry_run { "(dry run) " } else { "" };
    let mut namespaces_seen = std::collections::BTreeSet::new();
    let mut problems = 0;
    let mut tally = std::collections::BTreeMap::<&str, usize>::new();
    for entry in &entries {
        if let Some(namespace) = &entry.namespace
            && namespaces_seen.insert(namespace.clone())
            && let Err(error) = ensure_namespace(client, namespace, args.dry_run, prefix).await
        {
            println!("{prefix}namespace {namespace}: failed: {error:#}");
            problems += 1;
        }
        let phase = entry
            .phase()
            .map(|p| format!(" (phase at backup: {p})"))
            .unwrap_or_default();
        match restore_one(client, entry, args).await {
            Ok(outcome) => {
                let (word, note) = match &outcome {
                    Outcome::Create if args.dry_run => ("would create", String::new()),
                    Outcome::Create => ("created", String::new()),
                    Outcome::Unchanged => ("unchanged", String::new()),
                    Outcome::Replace if args.dry_run => ("would replace", String::new()),
                    Outcome::Replace => ("replaced", String::new()),
                    Outcome::Refuse(why) => {
                        problems += 1;
                        ("refused", format!(": {why}"))
                    }
                };
                *tally.entry(word).or_default() += 1;
                println!("{prefix}{} {word}{phase}{note}", entry.describe());
            }
            Err(error) => {
                problems += 1;
                *tally.entry("failed").or_default() += 1;
                println!("{prefix}{} failed: {error:#}", entry.describe());
            }
        }
    }
    let counts: Vec<String> = tally.iter().map(|(w, n)| format!("{n} {w}")).collect();
    println!(
        "{prefix}{} objects in {}: {}",
        entries.len(),
        args.file.display(),
        if counts.is_empty() {
            "nothing to do".to_string()
        } else {
            counts.join(", ")
        }
    );
    Ok(if problems > 0 { 1 } else { 0 })
}

async fn restore_one(
    client: &Client,
    entry: &Entry,
    args: &RestoreArgs,
) -> anyhow::Result<Outcome> {
    let kind = archive::kinds()
        .into_iter()
        .find(|k| k.kind == entry.kind)
        .context("unknown kind")?;
    let api: Api<DynamicObject> = match &entry.namespace {
        Some(namespace) => Api::namespaced_with(client.clone(), namespace, &kind.resource),
        None => Api::all_with(client.clone(), &kind.resource),
    };
    let existing = api.get_opt(&entry.name).await.context("reading it")?;
    let existing_spec = existing
        .as_ref()
        .map(|o| o.data.get("spec").unwrap_or(&Value::Null));
    let outcome = decide(
        entry.spec(),
        entry.generation,
        existing_spec.zip(existing.as_ref().map(|o| o.metadata.generation)),
        args.force,
    );
    if args.dry_run {
        return Ok(outcome);
    }
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    match (&outcome, existing) {
        (Outcome::Create, _) => {
            let object: DynamicObject =
                serde_json::from_value(entry.object.clone()).context("archived object")?;
            api.create(&params, &object).await.context("creating it")?;
        }
        (Outcome::Replace, Some(mut current)) => {
            // Guarded by the resourceVersion just read: a change in between fails with 409.
            if let Some(data) = current.data.as_object_mut() {
                data.insert("spec".into(), entry.spec().clone());
                data.remove("status");
            }
            api.replace(&current.name_any(), &params, &current)
                .await
                .context("replacing its spec")?;
        }
        _ => {}
    }
    Ok(outcome)
}

async fn ensure_namespace(
    client: &Client,
    name: &str,
    dry_run: bool,
    prefix: &str,
) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(name).await?.is_some() {
        return Ok(());
    }
    if !dry_run {
        let mut namespace = Namespace::default();
        namespace.metadata.name = Some(name.to_string());
        match api.create(&PostParams::default(), &namespace).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_already_exists() => return Ok(()),
            Err(error) => return Err(error.into()),
        }
    }
    let word = if dry_run { "would create" } else { "created" };
    println!("{prefix}Namespace {name} {word}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn word(outcome: &Outcome) -> &'static str {
        match outcome {
            Outcome::Create => "create",
            Outcome::Unchanged => "unchanged",
            Outcome::Replace => "replace",
            Outcome::Refuse(_) => "refuse",
        }
    }

    #[test]
    fn decisions() {
        let archived = json!({"user": "alice", "state": "running"});
        let other = json!({"user": "alice", "state": "hibernated"});
        let rows = [
            ("missing is created", None, false, "create"),
            ("missing is created with force too", None, true, "create"),
            (
                "same spec is unchanged",
                Some((&archived, Some(1))),
                false,
                "unchanged",
            ),
            (
                "same spec, other generation",
                Some((&archived, Some(9))),
                true,
                "unchanged",
            ),
            (
                "a newer spec is refused",
                Some((&other, Some(5))),
                false,
                "refuse",
            ),
            (
                "force replaces a newer spec",
                Some((&other, Some(5))),
                true,
                "replace",
            ),
        ];
        for (name, existing, force, expected) in rows {
            let outcome = decide(&archived, Some(3), existing, force);
            assert_eq!(word(&outcome), expected, "{name}: {outcome:?}");
        }
    }

    #[test]
    fn a_refusal_names_both_generations_and_the_way_out() {
        let Outcome::Refuse(why) = decide(
            &json!({"a": 1}),
            Some(3),
            Some((&json!({"a": 2}), Some(7))),
            false,
        ) else {
            panic!("refused");
        };
        assert!(why.contains("generation 7 here, 3 in the archive"), "{why}");
        assert!(why.contains("--force"), "{why}");
        let Outcome::Refuse(why) = decide(&json!({"a": 1}), None, Some((&json!({}), None)), false)
        else {
            panic!("refused");
        };
        assert!(why.contains("generation ? here, ? in the archive"), "{why}");
    }
}
