//! Reading a commit: which files hold documents, splitting them into YAML documents with their
//! line numbers, and the whole load (documents -> overlay -> validation) under the commit
//! [`Limits`] and a deadline.
//!
//! Every limit is checked before the work it bounds: file sizes before parsing, the YAML budget
//! (aliases, depth, nodes) over each whole file before any document of it is built, documents
//! as they are counted, overlay operations as they are applied.

use std::collections::HashMap;
use std::time::Instant;

use serde_json::Value;

use super::keys::KeyPolicy;
use super::limits::{Budget, Limits, json_size};
use super::model::{
    API_VERSION, Desired, ManifestError, OVERLAYS_DIR, Origin, RawDocument, SourceFile,
};
use super::overlay;
use super::parse::{parse_document, split_documents};

/// What a controller allows in a commit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    pub limits: Limits,
    pub keys: KeyPolicy,
}

/// Loads every document below `base` (a directory relative to the repository root, empty for
/// the root), applies `overlay` and validates the result.
pub fn load(
    files: &[SourceFile],
    base: &str,
    overlay: Option<&str>,
    rules: &Rules,
) -> Result<Desired, Vec<ManifestError>> {
    let base = base.trim_matches('/');
    let prefix = if base.is_empty() {
        String::new()
    } else {
        format!("{base}/")
    };
    let overlays_prefix = format!("{prefix}{OVERLAYS_DIR}/");
    let sources: Vec<&SourceFile> = files
        .iter()
        .filter(|f| {
            is_yaml(&f.path) && f.path.starts_with(&prefix) && !f.path.starts_with(&overlays_prefix)
        })
        .collect();
    let overlay_dir = overlay.map(|name| format!("{overlays_prefix}{name}/"));
    let patches: Vec<&SourceFile> = files
        .iter()
        .filter(|f| is_yaml(&f.path))
        .filter(|f| overlay_dir.as_ref().is_some_and(|d| f.path.starts_with(d)))
        .collect();
    let sizes: Vec<(String, u64)> = sources
        .iter()
        .chain(&patches)
        .map(|f| (f.path.clone(), f.content.len() as u64))
        .collect();
    rules.limits.check_files(&sizes).map_err(|reason| {
        vec![ManifestError::TooLarge {
            origin: None,
            reason,
        }]
    })?;
    let mut budget = Budget {
        limits: &rules.limits,
        deadline: Instant::now() + rules.limits.parse_deadline,
        documents: 0,
        operations: 0,
    };
    let mut errors = Vec::new();
    if sources.is_empty() {
        // A file with only comments is a deliberate "nothing"; no file at all is a wrong path.
        errors.push(ManifestError::NoFiles {
            dir: if base.is_empty() {
                "/".into()
            } else {
                base.to_string()
            },
        });
    }
    let mut documents = Vec::new();
    for file in sources {
        budget.check_deadline().map_err(|e| vec![e])?;
        let (found, mut problems) = read_documents(file, &mut budget)?;
        documents.extend(found);
        errors.append(&mut problems);
    }
    if let (Some(name), Some(dir)) = (overlay, overlay_dir) {
        if patches.is_empty() {
            errors.push(ManifestError::OverlayMissing {
                name: name.to_string(),
                dir,
            });
        }
        for file in patches {
            budget.check_deadline().map_err(|e| vec![e])?;
            if let Err(mut found) = overlay::apply_file(file, &mut documents, &mut budget) {
                errors.append(&mut found);
            }
        }
    }
    let desired = validate(documents, &rules.keys, &budget, &mut errors)?;
    if errors.is_empty() {
        Ok(desired)
    } else {
        Err(errors)
    }
}

/// Validates every document (a kind and name declared twice is an error).
fn validate(
    documents: Vec<RawDocument>,
    keys: &KeyPolicy,
    budget: &Budget,
    errors: &mut Vec<ManifestError>,
) -> Result<Desired, Vec<ManifestError>> {
    let mut desired = Desired::default();
    let mut seen: HashMap<(String, String), Origin> = HashMap::new();
    for document in documents {
        budget.check_deadline().map_err(|e| vec![e])?;
        let key = (document.kind.clone(), document.name.clone());
        if let Some(first) = seen.get(&key) {
            errors.push(ManifestError::Duplicate {
                origin: document.origin.clone(),
                kind: document.kind.clone(),
                name: document.name.clone(),
                first: first.clone(),
            });
            continue;
        }
        seen.insert(key, document.origin.clone());
        if let Err(error) = parse_document(document, &mut desired, keys) {
            errors.push(error);
        }
    }
    desired.node_configs.sort_by(|a, b| a.name.cmp(&b.name));
    desired
        .objects
        .sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    Ok(desired)
}

fn is_yaml(path: &str) -> bool {
    path.ends_with(".yaml") || path.ends_with(".yml")
}

/// Whether a parser error is a budget breach (the file is too costly), not a syntax error.
fn over_budget(mut error: &serde_saphyr::Error) -> bool {
    use serde_saphyr::Error as E;
    // Parser errors arrive wrapped with their source snippet or alias locations.
    while let E::WithSnippet { error: inner, .. } | E::AliasError { error: inner, .. } = error {
        error = inner;
    }
    matches!(
        error,
        E::Budget { .. }
            | E::AliasReplayCounterOverflow { .. }
            | E::AliasReplayLimitExceeded { .. }
            | E::AliasExpansionLimitExceeded { .. }
            | E::AliasReplayStackDepthExceeded { .. }
    )
}

#[cfg(test)]
#[test]
fn alias_bombs_are_over_budget_even_when_wrapped() {
    let laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n";
    let parsed: Result<Value, _> =
        serde_saphyr::from_str_with_options(laughs, Limits::default().yaml_options());
    assert!(parsed.as_ref().is_err_and(over_budget), "{parsed:?}");
    let syntax: Result<Value, _> =
        serde_saphyr::from_str_with_options("a: [", Limits::default().yaml_options());
    assert!(
        syntax.as_ref().is_err_and(|e| !over_budget(e)),
        "{syntax:?}"
    );
}

fn too_costly(limits: &Limits, origin: Origin, error: &serde_saphyr::Error) -> ManifestError {
    // The parser's message quotes the file; its first line names the limit.
    let first = error.to_string();
    let first = first.lines().next().unwrap_or_default().to_string();
    ManifestError::TooLarge {
        origin: Some(origin),
        reason: format!(
            "the file exceeds the YAML limits (--gitsync-max-yaml-aliases {}, --gitsync-max-yaml-depth {}, --gitsync-max-yaml-nodes {}): {first}",
            limits.max_yaml_aliases, limits.max_yaml_depth, limits.max_yaml_nodes
        ),
    }
}

/// Parses every document of `file` into a [`RawDocument`], and lists the ones that are not.
/// A file over the YAML budget, or documents past the commit's limit, fail the whole load.
pub(crate) fn read_documents(
    file: &SourceFile,
    budget: &mut Budget,
) -> Result<(Vec<RawDocument>, Vec<ManifestError>), Vec<ManifestError>> {
    let limits = budget.limits;
    let origin = |line: usize| Origin {
        file: file.path.clone(),
        line,
    };
    // The YAML budget counts over the whole file, so aliases and nodes cannot be spread over
    // many small documents.
    let whole: Result<Vec<serde::de::IgnoredAny>, _> =
        serde_saphyr::from_multiple_with_options(&file.content, limits.yaml_options());
    if let Err(error) = &whole
        && over_budget(error)
    {
        let line = error.location().map_or(1, |l| l.line() as usize);
        return Err(vec![too_costly(limits, origin(line.max(1)), error)]);
    }
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    for (line, text) in split_documents(&file.content) {
        let origin = origin(line);
        budget.count_document(&origin).map_err(|e| vec![e])?;
        let value: Value = match serde_saphyr::from_str_with_options(&text, limits.yaml_options()) {
            Ok(value) => value,
            // Alias expansion is counted per document: over it, the whole commit stops.
            Err(e) if over_budget(&e) => return Err(vec![too_costly(limits, origin, &e)]),
            Err(e) => {
                errors.push(ManifestError::Yaml {
                    origin,
                    message: e.to_string(),
                });
                continue;
            }
        };
        if json_size(&value, limits.max_document_bytes) > limits.max_document_bytes {
            return Err(vec![ManifestError::TooLarge {
                origin: Some(origin),
                reason: format!(
                    "the document is larger than {} bytes (--gitsync-max-document-bytes)",
                    limits.max_document_bytes
                ),
            }]);
        }
        let kind = value.get("kind").and_then(Value::as_str);
        let name = value.pointer("/metadata/name").and_then(Value::as_str);
        let (Some(kind), Some(name)) = (kind, name) else {
            errors.push(ManifestError::NotADocument { origin });
            continue;
        };
        let api_version = value.get("apiVersion").and_then(Value::as_str);
        if api_version != Some(API_VERSION) {
            errors.push(ManifestError::ApiVersion {
                origin,
                found: api_version.unwrap_or_default().to_string(),
            });
            continue;
        }
        documents.push(RawDocument {
            origin,
            kind: kind.to_string(),
            name: name.to_string(),
            value,
        });
    }
    Ok((documents, errors))
}

/// Reads every YAML file below `dir` (for `validate` and `plan`), paths relative to `dir`.
pub fn read_dir(dir: &std::path::Path) -> std::io::Result<Vec<SourceFile>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                if entry.file_name() != ".git" {
                    pending.push(path);
                }
                continue;
            }
            let relative = path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            if is_yaml(&relative) {
                files.push(SourceFile {
                    path: relative,
                    content: std::fs::read_to_string(&path)?,
                });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gitops::limits::Limits;

    fn file(path: &str, content: &str) -> SourceFile {
        SourceFile {
            path: path.into(),
            content: content.into(),
        }
    }

    const NODE: &str = "apiVersion: stream.space/v1alpha1\nkind: NodeConfig\nmetadata: {name: x1}\nspec:\n  nodeName: node-1\n  labels: {tier: gold}\n";

    fn small() -> Rules {
        Rules {
            limits: Limits {
                max_files: 3,
                max_file_bytes: 4096,
                max_total_bytes: 8192,
                max_documents: 4,
                max_overlay_operations: 5,
                max_document_bytes: 2048,
                ..Limits::default()
            },
            keys: KeyPolicy::default(),
        }
    }

    fn doubling(times: usize) -> String {
        let mut text = String::from(
            "target: {kind: NodeConfig, name: x1}\npatch:\n  - {op: add, path: /spec/x, value: [aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa]}\n",
        );
        for _ in 0..times {
            text.push_str("  - {op: copy, from: /spec/x, path: /spec/x/-}\n");
        }
        text
    }

    /// Row: files, overlay -> the error (its `file:line` prefix and a part of its reason).
    #[test]
    fn table_of_commits_over_a_limit() {
        let many = [NODE; 5].join("---\n");
        let hostname = NODE.replace("tier: gold", "kubernetes.io/hostname: x");
        let no_execute = format!("{NODE}  taints: [{{key: gpu, effect: NoExecute}}]\n");
        let cases: Vec<(Vec<SourceFile>, Option<&str>, &str)> = vec![
            (
                vec![file("a.yaml", NODE), file("b.yaml", NODE), file("c.yaml", NODE), file("d.yaml", NODE)],
                None,
                "4 YAML files",
            ),
            (vec![file("big.yaml", &"#".repeat(5000))], None, "big.yaml: 5000 bytes"),
            (vec![file("many.yaml", &many)], None, "many.yaml:29: the commit holds more than 4 documents"),
            (
                vec![file("n.yaml", NODE), file("overlays/o/p.yaml", &doubling(2).replace("- {op: add", "- {op: test, path: /kind, value: NodeConfig}\n  - {op: test, path: /kind, value: NodeConfig}\n  - {op: test, path: /kind, value: NodeConfig}\n  - {op: add"))],
                Some("o"),
                "overlays/o/p.yaml:1: the overlay holds more than 5 operations",
            ),
            (
                vec![file("n.yaml", NODE), file("overlays/o/p.yaml", &doubling(4))],
                Some("o"),
                "n.yaml:1: NodeConfig \"x1\" is invalid: /spec",
            ),
            (
                vec![file("n.yaml", NODE)],
                None,
                "",
            ),
            (vec![file("h.yaml", &hostname)], None, "h.yaml:1: NodeConfig \"x1\" is invalid: /spec/labels: \"kubernetes.io/hostname\" is under the reserved prefix"),
            (vec![file("x.yaml", &no_execute)], None, "x.yaml:1: NodeConfig \"x1\" is invalid: /spec/taints: taint gpu:NoExecute evicts running pods"),
        ];
        for (files, overlay, expected) in cases {
            let result = load(&files, "", overlay, &small());
            match result {
                Ok(_) => assert_eq!(expected, "", "{files:?}"),
                Err(errors) => {
                    let text = errors[0].to_string();
                    assert!(!expected.is_empty() && text.starts_with(expected), "{text}");
                }
            }
        }
    }

    #[test]
    fn a_copy_bomb_stops_at_the_document_size() {
        let mut rules = small();
        rules.limits.max_overlay_operations = 100;
        let files = [
            file("n.yaml", NODE),
            file("overlays/o/p.yaml", &doubling(40)),
        ];
        let errors = load(&files, "", Some("o"), &rules).expect_err("too large");
        assert_eq!(errors[0].metric_label(), "limit");
        assert!(
            errors[0].to_string().contains("larger than 2048 bytes"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn the_deadline_stops_a_load() {
        let mut rules = small();
        rules.limits.parse_deadline = std::time::Duration::ZERO;
        let errors = load(&[file("n.yaml", NODE)], "", None, &rules).expect_err("deadline");
        assert!(
            errors[0].to_string().contains("took longer than"),
            "{}",
            errors[0]
        );
    }
}
