//! The objects of our kinds in `examples/` (every YAML file, every document).

use std::path::{Path, PathBuf};

use serde_json::Value;
use streamspace_controller::crd;

/// `(file, document)` for every document in `examples/` whose kind is one of our CRDs.
/// Other documents (GitSync-only kinds such as `NodeConfig`, overlays) are not CRD objects.
pub fn all() -> Vec<(String, Value)> {
    let kinds: Vec<String> = crd::all().into_iter().map(|c| c.spec.names.kind).collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files = Vec::new();
    collect(&root, &mut files);
    files.sort();
    let mut documents = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("example readable");
        let parsed: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let name = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        for document in parsed {
            let ours = document["apiVersion"].as_str() == Some("stream.space/v1alpha1")
                && kinds.iter().any(|k| document["kind"].as_str() == Some(k));
            if ours {
                documents.push((name.clone(), document));
            }
        }
    }
    documents
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).expect("examples directory");
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(path);
        }
    }
}
