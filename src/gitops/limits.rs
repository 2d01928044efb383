//! Bounds on what one commit may hold, so a hostile repository is rejected in bounded time and
//! memory instead of taking the controller down.
//!
//! Every limit is counted before the expensive step it guards: file count and sizes from the
//! tree (blob headers, before a blob is read), YAML aliases, depth and nodes by the parser's
//! budget over a whole file, overlay operations before patching, and the size of a patched
//! document after every operation (so `copy`/`move` bombs stop at the limit, not at the
//! allocator). The defaults are far above any real configuration repository.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::model::{ManifestError, Origin};

/// Limits of one commit; `--gitsync-max-*` flags (`docs/gitops.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// YAML files read below the sync path (overlays included).
    pub max_files: usize,
    /// Bytes of one YAML file.
    pub max_file_bytes: u64,
    /// Bytes of every YAML file of the commit together.
    pub max_total_bytes: u64,
    /// Documents in the whole commit.
    pub max_documents: usize,
    /// JSON Patch operations of the chosen overlay, all files together.
    pub max_overlay_operations: usize,
    /// Size (as compact JSON) a document may reach, after overlays.
    pub max_document_bytes: usize,
    /// Nesting depth of YAML collections.
    pub max_yaml_depth: usize,
    /// Alias (`*ref`) uses in one file.
    pub max_yaml_aliases: usize,
    /// Parser nodes in one file, alias expansions included.
    pub max_yaml_nodes: usize,
    /// Longest parsing and validation of one commit may take.
    pub parse_deadline: Duration,
    /// Bytes one fetch may transfer.
    pub max_fetch_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_files: 1_000,
            max_file_bytes: 1024 * 1024,
            max_total_bytes: 8 * 1024 * 1024,
            max_documents: 5_000,
            max_overlay_operations: 5_000,
            max_document_bytes: 256 * 1024,
            max_yaml_depth: 32,
            max_yaml_aliases: 100,
            max_yaml_nodes: 200_000,
            parse_deadline: Duration::from_secs(20),
            max_fetch_bytes: 64 * 1024 * 1024,
        }
    }
}

impl Limits {
    /// Parser options enforcing the YAML limits over everything parsed in one call.
    pub fn yaml_options(&self) -> serde_saphyr::Options {
        let mut budget = serde_saphyr::Budget::default();
        budget.max_depth = self.max_yaml_depth;
        budget.max_aliases = self.max_yaml_aliases;
        budget.max_nodes = self.max_yaml_nodes;
        budget.max_events = self.max_yaml_nodes.saturating_mul(2);
        // Documents are counted over the whole commit by the loader (it names the one past the
        // limit); empty ones are bounded by the file size.
        budget.max_documents = usize::MAX;
        budget.max_total_scalar_bytes = usize::try_from(self.max_file_bytes).unwrap_or(usize::MAX);
        let mut options = serde_saphyr::Options::default();
        options.budget = Some(budget);
        options.alias_limits.max_total_replayed_events = self.max_yaml_nodes;
        options.alias_limits.max_replay_stack_depth = self.max_yaml_depth;
        options
    }

    /// Checks the YAML files of a commit, `(path, bytes)`, before any is read.
    pub fn check_files(&self, files: &[(String, u64)]) -> Result<(), String> {
        if files.len() > self.max_files {
            return Err(format!(
                "{} YAML files; at most {} are read (--gitsync-max-files)",
                files.len(),
                self.max_files
            ));
        }
        if let Some((path, size)) = files.iter().find(|(_, size)| *size > self.max_file_bytes) {
            return Err(format!(
                "{path}: {size} bytes; a file may hold at most {} (--gitsync-max-file-bytes)",
                self.max_file_bytes
            ));
        }
        let total: u64 = files.iter().map(|(_, size)| *size).sum();
        if total > self.max_total_bytes {
            return Err(format!(
                "the YAML files hold {total} bytes together; at most {} (--gitsync-max-total-bytes)",
                self.max_total_bytes
            ));
        }
        Ok(())
    }
}

/// The size of `value` as compact JSON, counted only up to `cap`: the walk stops as soon as
/// the size is known to exceed it, so measuring a huge value costs no more than the cap.
pub fn json_size(value: &Value, cap: usize) -> usize {
    let mut size = 0usize;
    let mut pending = vec![value];
    while let Some(value) = pending.pop() {
        if size > cap {
            break;
        }
        let own = match value {
            Value::Null => 4,
            Value::Bool(_) => 5,
            Value::Number(n) => n.to_string().len(),
            Value::String(s) => s.len() + 2,
            Value::Array(items) => {
                pending.extend(items.iter());
                2 + items.len()
            }
            Value::Object(map) => {
                pending.extend(map.values());
                2 + map.keys().map(|k| k.len() + 4).sum::<usize>()
            }
        };
        size = size.saturating_add(own);
    }
    size
}

/// Counts the documents and overlay operations of one load against the limits.
pub(crate) struct Budget<'a> {
    pub limits: &'a Limits,
    pub deadline: Instant,
    pub documents: usize,
    pub operations: usize,
}

impl Budget<'_> {
    /// Counts one more document of the commit (base or overlay), `origin` where it starts.
    pub fn count_document(&mut self, origin: &Origin) -> Result<(), ManifestError> {
        self.documents += 1;
        if self.documents > self.limits.max_documents {
            return Err(ManifestError::TooLarge {
                origin: Some(origin.clone()),
                reason: format!(
                    "the commit holds more than {} documents (--gitsync-max-documents)",
                    self.limits.max_documents
                ),
            });
        }
        Ok(())
    }

    pub fn check_deadline(&self) -> Result<(), ManifestError> {
        if Instant::now() >= self.deadline {
            return Err(ManifestError::TooLarge {
                origin: None,
                reason: format!(
                    "parsing and validating the commit took longer than {:?}",
                    self.limits.parse_deadline
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn file_lists() {
        let limits = Limits {
            max_files: 2,
            max_file_bytes: 10,
            max_total_bytes: 15,
            ..Limits::default()
        };
        let f = |path: &str, size: u64| (path.to_string(), size);
        type Files = Vec<(String, u64)>;
        let cases: [(Files, Option<&str>); 5] = [
            (vec![], None),
            (vec![f("a.yaml", 10), f("b.yaml", 5)], None),
            (vec![f("a", 1), f("b", 1), f("c", 1)], Some("3 YAML files")),
            (vec![f("big.yaml", 11)], Some("big.yaml: 11 bytes")),
            (vec![f("a", 10), f("b", 6)], Some("16 bytes together")),
        ];
        for (files, error) in cases {
            let result = limits.check_files(&files);
            match error {
                None => assert_eq!(result, Ok(()), "{files:?}"),
                Some(text) => {
                    let message = result.expect_err("over a limit");
                    assert!(message.contains(text), "{message}");
                }
            }
        }
    }

    #[test]
    fn json_sizes_match_compact_json_and_stop_at_the_cap() {
        let cases = [
            json!(null),
            json!(true),
            json!(12.5),
            json!("text"),
            json!([1, 2, 3]),
            json!({"a": {"b": [1, "x"]}, "c": null}),
        ];
        for value in cases {
            let text = serde_json::to_string(&value).unwrap_or_default();
            // Separators make the estimate at most a few bytes larger than the text.
            let size = json_size(&value, usize::MAX);
            assert!(size >= text.len(), "{value}: {size} < {}", text.len());
            assert!(size <= text.len() + 8, "{value}: {size}");
        }
        let big = json!(vec!["x".repeat(1000); 10_000]);
        let capped = json_size(&big, 5_000);
        assert!((5_000..20_000).contains(&capped), "{capped}");
    }

    #[test]
    fn yaml_budget_refuses_alias_bombs_across_a_whole_file() {
        let limits = Limits::default();
        let laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n";
        let parsed: Result<Vec<serde::de::IgnoredAny>, _> =
            serde_saphyr::from_multiple_with_options(laughs, limits.yaml_options());
        assert!(parsed.is_err());
        // 60 aliases per document, two documents: fine alone, too many together.
        let aliases = format!("a: &a x\nb: [{}]\n", vec!["*a"; 60].join(", "));
        let one: Result<Vec<serde::de::IgnoredAny>, _> =
            serde_saphyr::from_multiple_with_options(&aliases, limits.yaml_options());
        assert!(one.is_ok(), "{one:?}");
        let two = format!("{aliases}---\n{aliases}");
        let both: Result<Vec<serde::de::IgnoredAny>, _> =
            serde_saphyr::from_multiple_with_options(&two, limits.yaml_options());
        assert!(both.is_err());
        let deep = format!("{}x{}", "[".repeat(40), "]".repeat(40));
        let nested: Result<Vec<serde::de::IgnoredAny>, _> =
            serde_saphyr::from_multiple_with_options(&deep, limits.yaml_options());
        assert!(nested.is_err());
    }
}
