//! Property runs over the manifest parser and the overlays: random text and random JSON
//! Patches never panic, always end (every path is bounded by the commit limits), and never
//! yield a document over the size limit.
//!
//! `GITOPS_FUZZ_CASES` sets the number of cases of each property (default 2,000, for CI):
//!
//! ```sh
//! GITOPS_FUZZ_CASES=100000 cargo test --release --lib gitops::fuzz
//! ```

use std::cell::Cell;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

use super::documents::{Rules, load};
use super::limits::json_size;
use super::manifest::SourceFile;

fn cases() -> u32 {
    std::env::var("GITOPS_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000)
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    })
}

/// Fragments that make the parser take its interesting paths: anchors, aliases, flow and
/// block collections, document markers, known kinds and fields.
const FRAGMENTS: &[&str] = &[
    "apiVersion: stream.space/v1alpha1\n",
    "kind: NodeConfig\n",
    "kind: QuotaPolicy\n",
    "kind: NodeOperation\n",
    "kind: FeatureFlag\n",
    "metadata: {name: x}\n",
    "metadata:\n  name: y\n  labels: {a: b}\n",
    "spec:\n",
    "  nodeName: n\n",
    "  nodeSelector: {matchLabels: {a: b}}\n",
    "  labels: {kubernetes.io/hostname: h, tier: gold}\n",
    "  taints: [{key: k, effect: NoExecute}]\n",
    "  subject: {kind: Default}\n",
    "  limits: {maxSessions: 3, maxCpu: lots}\n",
    "  mode: controller\n  percent: 50\n",
    "---\n",
    "...\n",
    "&a ",
    "*a",
    "<<: *a\n",
    "[",
    "]",
    "{",
    "}",
    ", ",
    ": ",
    "- ",
    "\n",
    "  ",
    "\"",
    "'",
    "|\n",
    "!!binary ",
    "# comment\n",
    "\t",
    "\u{feff}",
    "é",
];

fn yaml_text() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        4 => proptest::sample::select(FRAGMENTS).prop_map(String::from),
        1 => ".{0,12}",
    ];
    proptest::collection::vec(fragment, 0..60).prop_map(|parts| parts.concat())
}

fn pointer() -> impl Strategy<Value = String> {
    proptest::sample::select(vec![
        "",
        "/spec",
        "/spec/labels",
        "/spec/labels/tier",
        "/spec/labels/-",
        "/spec/taints",
        "/spec/taints/0",
        "/spec/taints/-",
        "/metadata/name",
        "/metadata/labels",
        "/kind",
        "/x",
        "/x/-",
        "/spec/nodeName",
    ])
    .prop_map(String::from)
}

fn operation() -> impl Strategy<Value = Value> {
    let value = prop_oneof![
        Just(json!("gold")),
        Just(json!(3)),
        Just(json!(null)),
        Just(json!({"a": "b"})),
        Just(json!([{"key": "k", "effect": "NoSchedule"}])),
        ".{0,8}".prop_map(Value::String),
    ];
    (
        proptest::sample::select(vec!["add", "remove", "replace", "move", "copy", "test"]),
        pointer(),
        pointer(),
        value,
    )
        .prop_map(|(op, path, from, value)| match op {
            "move" | "copy" => json!({"op": op, "path": path, "from": from}),
            "remove" => json!({"op": op, "path": path}),
            _ => json!({"op": op, "path": path, "value": value}),
        })
}

const BASE: &str = "apiVersion: stream.space/v1alpha1\nkind: NodeConfig\nmetadata: {name: gpu}\nspec:\n  nodeName: node-1\n  labels: {tier: silver}\n";

/// Runs `load` and checks what every load must hold.
fn check(files: &[SourceFile], overlay: Option<&str>, rules: &Rules, slowest: &Cell<Duration>) {
    let started = Instant::now();
    if let Ok(desired) = load(files, "", overlay, rules) {
        for object in &desired.objects {
            let size = json_size(&object.spec, usize::MAX);
            assert!(size <= rules.limits.max_document_bytes, "{size}");
        }
    }
    slowest.set(slowest.get().max(started.elapsed()));
}

#[test]
fn random_text_never_panics_the_parser() {
    let rules = Rules::default();
    let slowest = Cell::new(Duration::ZERO);
    let result = runner().run(&(yaml_text(), yaml_text()), |(documents, overlay)| {
        let files = [
            SourceFile {
                path: "a.yaml".into(),
                content: documents,
            },
            SourceFile {
                path: "overlays/o/p.yaml".into(),
                content: overlay,
            },
        ];
        check(&files, Some("o"), &rules, &slowest);
        Ok(())
    });
    assert!(result.is_ok(), "{result:?}");
    println!("parser: {} cases, slowest {:?}", cases(), slowest.get());
}

#[test]
fn random_patches_never_panic_nor_grow_a_document_past_the_limit() {
    let mut rules = Rules::default();
    rules.limits.max_document_bytes = 4096;
    let slowest = Cell::new(Duration::ZERO);
    let strategy = proptest::collection::vec(operation(), 0..48);
    let result = runner().run(&strategy, |operations| {
        let overlay = json!({"target": {"kind": "NodeConfig", "name": "gpu"}, "patch": operations});
        let files = [
            SourceFile {
                path: "nodes.yaml".into(),
                content: BASE.into(),
            },
            SourceFile {
                path: "overlays/o/p.yaml".into(),
                content: overlay.to_string(),
            },
        ];
        check(&files, Some("o"), &rules, &slowest);
        Ok(())
    });
    assert!(result.is_ok(), "{result:?}");
    println!("overlays: {} cases, slowest {:?}", cases(), slowest.get());
}
