//! GitOps against the real control plane and real Git repositories (`file://` URLs). Every
//! test creates its own Node objects with unique names and selectors, and never touches the
//! simulator's nodes, which other tests use in parallel.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use sha2::Sha256;
use streamspace_controller::crd::{GitSync, GitSyncStatus, NodeOperation, QuotaPolicy};
use streamspace_controller::devcluster::ADOPTED_NODE_LABEL;
use streamspace_controller::gitops::manifest::OWNER_LABEL;
use streamspace_controller::gitops::plan::INVENTORY_ANNOTATION;
use streamspace_controller::gitops::sync_request::SYNC_REQUESTED_ANNOTATION;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{TEST_ENV_LABEL, TestEnv, wait_for, wait_gone, wait_object};

/// A real repository in a temporary directory, committed to with libgit2.
pub(crate) struct Repo {
    dir: tempfile::TempDir,
    repo: git2::Repository,
}

impl Repo {
    pub(crate) fn new() -> Repo {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = git2::Repository::init(dir.path()).expect("git init");
        repo.set_head("refs/heads/main").expect("HEAD");
        Repo { dir, repo }
    }

    pub(crate) fn url(&self) -> String {
        format!("file://{}", self.dir.path().display())
    }

    /// Writes (`Some`) or deletes (`None`) files, commits everything, returns the commit id.
    pub(crate) fn commit(&self, files: &[(&str, Option<&str>)], message: &str) -> String {
        for (path, content) in files {
            let full = self.dir.path().join(path);
            match content {
                Some(text) => {
                    std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
                    std::fs::write(&full, text).expect("write");
                }
                None => std::fs::remove_file(&full).expect("remove"),
            }
        }
        let mut index = self.repo.index().expect("index");
        index
            .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
            .expect("add");
        index.update_all(["*"], None).expect("update");
        index.write().expect("write index");
        let tree = self
            .repo
            .find_tree(index.write_tree().expect("tree"))
            .expect("tree");
        let signature = git2::Signature::now("test", "test@example.com").expect("signature");
        let parent = self.repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        self.repo
            .commit(
                Some("refs/heads/main"),
                &signature,
                &signature,
                message,
                &tree,
                &parents,
            )
            .expect("commit")
            .to_string()
    }
}

static NODE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A node name (and selector value) no other test uses.
pub(crate) fn unique(prefix: &str) -> String {
    format!(
        "gs-{prefix}-{}-{}",
        std::process::id() % 100_000,
        NODE_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Nodes a test created; deleted at the end of the test.
pub(crate) struct TestNodes {
    api: Api<Node>,
    names: Vec<String>,
}

impl TestNodes {
    pub(crate) fn new(env: &TestEnv) -> TestNodes {
        TestNodes {
            api: Api::all(env.client.clone()),
            names: Vec::new(),
        }
    }

    pub(crate) async fn create(
        &mut self,
        name: &str,
        labels: serde_json::Value,
        taints: serde_json::Value,
    ) {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints}
        }))
        .expect("node object");
        self.api
            .create(&PostParams::default(), &node)
            .await
            .unwrap_or_else(|e| panic!("creating node {name}: {e}"));
        self.names.push(name.to_string());
    }

    pub(crate) async fn get(&self, name: &str) -> Node {
        self.api.get(name).await.expect("get node")
    }

    pub(crate) async fn cleanup(self) {
        for name in &self.names {
            let _ = self.api.delete(name, &DeleteParams::default()).await;
        }
    }
}

pub(crate) fn labels(node: &Node) -> BTreeMap<String, String> {
    node.metadata.labels.clone().unwrap_or_default()
}

/// Taints as `key=value:Effect`, sorted.
pub(crate) fn taints(node: &Node) -> Vec<String> {
    let mut out: Vec<String> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .iter()
        .map(|t| {
            format!(
                "{}={}:{}",
                t.key,
                t.value.clone().unwrap_or_default(),
                t.effect
            )
        })
        .collect();
    out.sort();
    out
}

pub(crate) fn node_config(
    name: &str,
    target: serde_json::Value,
    labels: serde_json::Value,
    taints: serde_json::Value,
) -> String {
    let mut spec = target;
    spec["labels"] = labels;
    spec["taints"] = taints;
    let document = json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "NodeConfig",
        "metadata": {"name": name}, "spec": spec
    });
    format!(
        "# yaml-language-server: $schema=../manifests-schema/nodeconfig.schema.json\n{}",
        serde_json::to_string_pretty(&document).expect("serialises")
    )
}

pub(crate) async fn create_gitsync(env: &TestEnv, name: &str, spec: serde_json::Value) {
    env.create::<GitSync>(json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "GitSync",
        "metadata": {"name": name}, "spec": spec
    }))
    .await;
}

pub(crate) async fn sync_status(env: &TestEnv, name: &str) -> GitSyncStatus {
    env.api::<GitSync>()
        .get(name)
        .await
        .expect("get gitsync")
        .status
        .unwrap_or_default()
}

pub(crate) async fn wait_applied(env: &TestEnv, name: &str, commit: &str) -> GitSyncStatus {
    let sync = wait_object(
        &env.api::<GitSync>(),
        name,
        &format!("{name} to apply {commit}"),
        |s| {
            s.status
                .as_ref()
                .is_some_and(|s| s.last_applied_commit.as_deref() == Some(commit))
        },
    )
    .await;
    sync.status.unwrap_or_default()
}

pub(crate) fn ready(status: &GitSyncStatus) -> Option<(String, String)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone()))
}

pub(crate) async fn wait_node(
    nodes: &TestNodes,
    name: &str,
    what: &str,
    check: impl Fn(&Node) -> bool,
) -> Node {
    wait_for(what, || nodes.get(name), |n| check(n)).await
}

/// The value of one unlabelled metric of the env's controller.
fn metric(env: &TestEnv, name: &str) -> f64 {
    let metrics = env
        .controller
        .as_ref()
        .expect("controller")
        .metrics
        .encode();
    metrics
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn node_writes(env: &TestEnv) -> f64 {
    metric(env, "streamspace_gitops_node_writes_total")
}

/// Push hooks the controller refused (any reason but `accepted`), counted before each answer.
fn refused_hooks(env: &TestEnv) -> f64 {
    let name = "streamspace_gitops_webhooks_total";
    env.metric(name, "reason=") - env.metric(name, "reason=\"accepted\"")
}

/// Serves the controller's hooks listener (`--hooks-addr`: the push hooks only) on a free
/// loopback port.
pub(crate) async fn serve_hooks(
    env: &TestEnv,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let metrics = env.controller.as_ref().expect("controller").metrics.clone();
    let router = streamspace_controller::http::hooks_router(
        env.client.clone(),
        env.gitops.hooks.clone(),
        metrics,
    );
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (addr, server)
}

pub(crate) async fn webhook_secret(env: &TestEnv, secret: &str) {
    let _: Secret = env
        .create(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hook"},
            "stringData": {"token": secret}
        }))
        .await;
}

#[tokio::test]
async fn gitops_labels_and_taints_apply_others_survive_and_removal_prunes() {
    let env = TestEnv::new("gitops-apply").await;
    let mut nodes = TestNodes::new(&env);
    let node = unique("apply");
    nodes
        .create(
            &node,
            json!({"gitops.e2e/owner": "ops"}),
            json!([{"key": "other.example/dedicated", "value": "db", "effect": "NoSchedule"}]),
        )
        .await;
    let repo = Repo::new();
    let wanted = node_config(
        "one",
        json!({"nodeName": node}),
        json!({"gitops.e2e/zone": "a", "gitops.e2e/tier": "gold"}),
        json!([{"key": "gitops.e2e/gpu", "value": "true", "effect": "NoSchedule"}]),
    );
    let first = repo.commit(&[("nodes/one.yaml", Some(&wanted))], "first");
    create_gitsync(&env, "nodes", json!({"url": repo.url(), "interval": "1s"})).await;
    let status = wait_applied(&env, "nodes", &first).await;
    assert_eq!(ready(&status), Some(("True".into(), "Synced".into())));
    assert_eq!(status.inventory.len(), 1);
    let applied = nodes.get(&node).await;
    let l = labels(&applied);
    assert_eq!(l.get("gitops.e2e/zone").map(String::as_str), Some("a"));
    assert_eq!(l.get("gitops.e2e/tier").map(String::as_str), Some("gold"));
    assert_eq!(l.get("gitops.e2e/owner").map(String::as_str), Some("ops"));
    let t = taints(&applied);
    assert!(
        t.contains(&"gitops.e2e/gpu=true:NoSchedule".to_string()),
        "{t:?}"
    );
    assert!(
        t.contains(&"other.example/dedicated=db:NoSchedule".to_string()),
        "{t:?}"
    );
    let inventory = applied
        .metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .remove(INVENTORY_ANNOTATION)
        .expect("inventory annotation");
    assert!(inventory.contains("gitops.e2e/tier"), "{inventory}");

    // Steady state: syncs every second and node events write nothing. Three more finished
    // syncs prove the controller looked again before counting its writes.
    let writes = node_writes(&env);
    let (_, finished) = env.reconciles("gitsync");
    env.wait_reconciled("gitsync", finished + 3.0).await;
    assert_eq!(node_writes(&env), writes, "a no-op sync writes nothing");

    // Someone else adds a node.kubernetes.io taint after our apply (as the node lifecycle
    // controller does); it must survive our next change.
    let current = nodes.get(&node).await;
    let mut with_foreign = current
        .spec
        .clone()
        .and_then(|s| s.taints)
        .unwrap_or_default();
    with_foreign.push(
        serde_json::from_value(
            json!({"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}),
        )
        .expect("taint"),
    );
    nodes
        .api
        .patch(
            &node,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": with_foreign}})),
        )
        .await
        .expect("add foreign taint");

    let fewer = node_config(
        "one",
        json!({"nodeName": node}),
        json!({"gitops.e2e/zone": "a"}),
        json!([]),
    );
    let second = repo.commit(
        &[("nodes/one.yaml", Some(&fewer))],
        "drop tier and gpu taint",
    );
    wait_applied(&env, "nodes", &second).await;
    let pruned = wait_node(&nodes, &node, "tier label and gpu taint removed", |n| {
        !labels(n).contains_key("gitops.e2e/tier")
            && !taints(n).iter().any(|t| t.starts_with("gitops.e2e/gpu"))
    })
    .await;
    let l = labels(&pruned);
    assert_eq!(l.get("gitops.e2e/zone").map(String::as_str), Some("a"));
    assert_eq!(
        l.get("gitops.e2e/owner").map(String::as_str),
        Some("ops"),
        "foreign label with our prefix stays"
    );
    let t = taints(&pruned);
    assert!(
        t.contains(&"node.kubernetes.io/unschedulable=:NoSchedule".to_string()),
        "{t:?}"
    );
    assert!(
        t.contains(&"other.example/dedicated=db:NoSchedule".to_string()),
        "{t:?}"
    );
    nodes.cleanup().await;
    env.cleanup().await;
}

#[tokio::test]
async fn gitops_invalid_commit_applies_nothing_until_fixed() {
    let env = TestEnv::new("gitops-invalid").await;
    let mut nodes = TestNodes::new(&env);
    let node = unique("invalid");
    nodes.create(&node, json!({}), json!([])).await;
    let repo = Repo::new();
    let a1 = node_config(
        "a",
        json!({"nodeName": node}),
        json!({"gitops.e2e/a": "1"}),
        json!([]),
    );
    let first = repo.commit(&[("a.yaml", Some(&a1))], "first");
    create_gitsync(&env, "nodes", json!({"url": repo.url(), "interval": "1s"})).await;
    wait_applied(&env, "nodes", &first).await;

    let a2 = node_config(
        "a",
        json!({"nodeName": node}),
        json!({"gitops.e2e/a": "2"}),
        json!([]),
    );
    let bad = node_config(
        "b",
        json!({"nodeName": node}),
        json!({"gitops.e2e/b": "1"}),
        json!([{"key": "x", "effect": "Sometimes"}]),
    );
    let broken = repo.commit(
        &[("a.yaml", Some(&a2)), ("bad/b.yaml", Some(&bad))],
        "broken",
    );
    let sync = wait_object(&env.api::<GitSync>(), "nodes", "the rejection", |s| {
        s.status
            .as_ref()
            .and_then(|s| s.rejected.as_ref())
            .is_some_and(|r| r.commit == broken)
    })
    .await;
    let status = sync.status.unwrap_or_default();
    let rejected = status.rejected.clone().expect("rejected");
    assert_eq!(rejected.file, "bad/b.yaml:2");
    assert!(rejected.reason.contains("Sometimes"), "{}", rejected.reason);
    assert_eq!(status.last_applied_commit.as_deref(), Some(first.as_str()));
    assert_eq!(
        ready(&status),
        Some(("False".into(), "CommitRejected".into()))
    );
    let untouched = nodes.get(&node).await;
    assert_eq!(
        labels(&untouched).get("gitops.e2e/a").map(String::as_str),
        Some("1")
    );
    assert!(!labels(&untouched).contains_key("gitops.e2e/b"));

    let good = node_config(
        "b",
        json!({"nodeName": node}),
        json!({"gitops.e2e/b": "1"}),
        json!([{"key": "x", "effect": "NoSchedule"}]),
    );
    let fixed = repo.commit(&[("bad/b.yaml", Some(&good))], "fixed");
    let status = wait_applied(&env, "nodes", &fixed).await;
    assert_eq!(status.rejected, None);
    let node_now = wait_node(&nodes, &node, "both documents applied", |n| {
        labels(n).get("gitops.e2e/a").map(String::as_str) == Some("2")
            && labels(n).contains_key("gitops.e2e/b")
    })
    .await;
    assert!(taints(&node_now).contains(&"x=:NoSchedule".to_string()));
    let status = wait_for(
        "Ready",
        || sync_status(&env, "nodes"),
        |s| ready(s) == Some(("True".into(), "Synced".into())),
    )
    .await;
    assert_eq!(status.rejected, None);
    nodes.cleanup().await;
    env.cleanup().await;
}

#[tokio::test]
async fn gitops_overlay_changes_one_environment_and_a_failed_test_rejects() {
    let env = TestEnv::new("gitops-overlay").await;
    let mut nodes = TestNodes::new(&env);
    let staging = unique("staging");
    let production = unique("production");
    nodes.create(&staging, json!({}), json!([])).await;
    nodes.create(&production, json!({}), json!([])).await;
    let repo = Repo::new();
    let base = node_config(
        "web",
        json!({"nodeName": staging}),
        json!({"gitops.e2e/tier": "standard"}),
        json!([]),
    );
    let patch = format!(
        "target: {{kind: NodeConfig, name: web}}\npatch:\n  - {{op: test, path: /spec/labels/gitops.e2e~1tier, value: standard}}\n  - {{op: replace, path: /spec/labels/gitops.e2e~1tier, value: premium}}\n  - {{op: replace, path: /spec/nodeName, value: {production}}}\n"
    );
    let first = repo.commit(
        &[
            ("env/web.yaml", Some(&base)),
            ("env/overlays/production/web.yaml", Some(&patch)),
        ],
        "base and overlay",
    );
    create_gitsync(
        &env,
        "staging",
        json!({"url": repo.url(), "path": "env", "interval": "1s"}),
    )
    .await;
    create_gitsync(
        &env,
        "production",
        json!({"url": repo.url(), "path": "env", "overlay": "production", "interval": "1s"}),
    )
    .await;
    wait_applied(&env, "staging", &first).await;
    wait_applied(&env, "production", &first).await;
    assert_eq!(
        labels(&nodes.get(&staging).await)
            .get("gitops.e2e/tier")
            .map(String::as_str),
        Some("standard")
    );
    assert_eq!(
        labels(&nodes.get(&production).await)
            .get("gitops.e2e/tier")
            .map(String::as_str),
        Some("premium")
    );

    // The base changes under the overlay: its `test` fails and production rejects the commit.
    let changed = node_config(
        "web",
        json!({"nodeName": staging}),
        json!({"gitops.e2e/tier": "basic"}),
        json!([]),
    );
    let second = repo.commit(&[("env/web.yaml", Some(&changed))], "base changes");
    wait_applied(&env, "staging", &second).await;
    let sync = wait_object(
        &env.api::<GitSync>(),
        "production",
        "the overlay rejection",
        |s| {
            s.status
                .as_ref()
                .and_then(|s| s.rejected.as_ref())
                .is_some_and(|r| r.commit == second)
        },
    )
    .await;
    let rejected = sync
        .status
        .clone()
        .unwrap_or_default()
        .rejected
        .expect("rejected");
    assert_eq!(rejected.file, "env/overlays/production/web.yaml:1");
    assert!(
        rejected.reason.contains("value did not match"),
        "{}",
        rejected.reason
    );
    assert_eq!(
        sync.status
            .unwrap_or_default()
            .last_applied_commit
            .as_deref(),
        Some(first.as_str())
    );
    assert_eq!(
        labels(&nodes.get(&production).await)
            .get("gitops.e2e/tier")
            .map(String::as_str),
        Some("premium")
    );
    wait_node(&nodes, &staging, "staging follows the base", |n| {
        labels(n).get("gitops.e2e/tier").map(String::as_str) == Some("basic")
    })
    .await;
    nodes.cleanup().await;
    env.cleanup().await;
}

#[tokio::test]
async fn gitops_manual_edit_of_a_managed_label_is_reverted_at_once() {
    let env = TestEnv::new("gitops-drift").await;
    let mut nodes = TestNodes::new(&env);
    let node = unique("drift");
    nodes.create(&node, json!({}), json!([])).await;
    let repo = Repo::new();
    let wanted = node_config(
        "d",
        json!({"nodeName": node}),
        json!({"gitops.e2e/zone": "a"}),
        json!([{"key": "gitops.e2e/pin", "effect": "NoSchedule"}]),
    );
    let first = repo.commit(&[("d.yaml", Some(&wanted))], "first");
    create_gitsync(&env, "nodes", json!({"url": repo.url(), "interval": "1h"})).await;
    wait_applied(&env, "nodes", &first).await;
    wait_node(&nodes, &node, "label applied", |n| {
        labels(n).contains_key("gitops.e2e/zone")
    })
    .await;

    let edited = Instant::now();
    nodes
        .api
        .patch(&node, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"gitops.e2e/zone": "hacked"}}, "spec": {"taints": null}})))
        .await
        .expect("manual edit");
    wait_node(&nodes, &node, "label and taint restored", |n| {
        labels(n).get("gitops.e2e/zone").map(String::as_str) == Some("a")
            && taints(n).contains(&"gitops.e2e/pin=:NoSchedule".to_string())
    })
    .await;
    let took = edited.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "drift corrected after {took:?}, interval is 1h"
    );
    nodes.cleanup().await;
    env.cleanup().await;
}

pub(crate) fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One HTTP/1.1 POST over a real socket; returns the status code.
pub(crate) async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    stream.write_all(body).await.expect("write body");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"))
}

#[tokio::test]
async fn gitops_signed_webhook_triggers_a_sync_and_a_bad_signature_does_not() {
    let env = TestEnv::new("gitops-webhook").await;
    let mut nodes = TestNodes::new(&env);
    let node = unique("hook");
    nodes.create(&node, json!({}), json!([])).await;
    let secret = b"hook-s3cret";
    webhook_secret(&env, std::str::from_utf8(secret).expect("utf8")).await;
    let (addr, server) = serve_hooks(&env).await;

    let repo = Repo::new();
    let v1 = node_config(
        "h",
        json!({"nodeName": node}),
        json!({"gitops.e2e/version": "1"}),
        json!([]),
    );
    let first = repo.commit(&[("h.yaml", Some(&v1))], "first");
    create_gitsync(
        &env,
        "nodes",
        json!({"url": repo.url(), "interval": "1h", "webhookSecretRef": {"name": "hook"}}),
    )
    .await;
    wait_applied(&env, "nodes", &first).await;

    let v2 = node_config(
        "h",
        json!({"nodeName": node}),
        json!({"gitops.e2e/version": "2"}),
        json!([]),
    );
    let second = repo.commit(&[("h.yaml", Some(&v2))], "second");
    let path = format!("/hooks/git/{}/nodes", env.namespace);
    let body = br#"{"ref":"refs/heads/main","after":"ignored"}"#;
    let wrong = sign(b"not-the-secret", body);
    let refused_before = refused_hooks(&env);
    assert_eq!(
        post(
            addr,
            &path,
            &[
                ("X-Hub-Signature-256", format!("sha256={wrong}")),
                ("X-GitHub-Event", "push".into())
            ],
            body
        )
        .await,
        401
    );
    assert_eq!(post(addr, &path, &[], body).await, 401);
    assert_eq!(
        post(addr, &path, &[("X-Gitlab-Token", "guess".into())], body).await,
        401
    );
    let big = vec![b'x'; 512 * 1024];
    let signed_big = sign(secret, &big);
    assert_eq!(
        post(
            addr,
            &path,
            &[("X-Hub-Signature-256", format!("sha256={signed_big}"))],
            &big
        )
        .await,
        413
    );
    // Evidence the hooks were handled: each refusal was counted before its answer, and a hook
    // asks for a sync only through the sync-request annotation, which none of them wrote. With
    // no reconcile in flight, the commit fetched last is still the first.
    wait_for(
        "the three refused hooks to be counted",
        || async { refused_hooks(&env) },
        |n| *n >= refused_before + 3.0,
    )
    .await;
    let sync = env.api::<GitSync>().get("nodes").await.expect("gitsync");
    assert!(
        !sync.annotations().contains_key(SYNC_REQUESTED_ANNOTATION),
        "a refused hook requested a sync"
    );
    let (_, finished) = env.reconciles("gitsync");
    env.wait_reconciled("gitsync", finished).await;
    let status = sync_status(&env, "nodes").await;
    assert_eq!(
        status.last_fetched_commit.as_deref(),
        Some(first.as_str()),
        "no fetch on a bad signature"
    );
    assert_eq!(
        labels(&nodes.get(&node).await)
            .get("gitops.e2e/version")
            .map(String::as_str),
        Some("1")
    );

    let good = sign(secret, body);
    let sent = Instant::now();
    assert_eq!(
        post(
            addr,
            &path,
            &[
                ("X-Hub-Signature-256", format!("sha256={good}")),
                ("X-GitHub-Event", "push".into())
            ],
            body
        )
        .await,
        202
    );
    wait_applied(&env, "nodes", &second).await;
    wait_node(&nodes, &node, "version 2 applied", |n| {
        labels(n).get("gitops.e2e/version").map(String::as_str) == Some("2")
    })
    .await;
    let took = sent.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "webhook to applied took {took:?}"
    );
    eprintln!("webhook to labels applied: {took:?}");
    // An unknown GitSync gets the same answer as a wrong signature.
    assert_eq!(
        post(
            addr,
            "/hooks/git/nowhere/nothing",
            &[("X-Gitlab-Token", "x".into())],
            body
        )
        .await,
        401
    );
    server.abort();
    nodes.cleanup().await;
    env.cleanup().await;
}

#[tokio::test]
async fn gitops_selector_applies_to_a_node_created_after_the_sync() {
    let env = TestEnv::new("gitops-selector").await;
    let mut nodes = TestNodes::new(&env);
    let pool = unique("pool");
    let repo = Repo::new();
    let wanted = node_config(
        "pool",
        json!({"nodeSelector": {"matchLabels": {"gitops.e2e/pool": pool}}}),
        json!({"gitops.e2e/role": "desktop"}),
        json!([]),
    );
    let first = repo.commit(&[("pool.yaml", Some(&wanted))], "first");
    create_gitsync(&env, "nodes", json!({"url": repo.url(), "interval": "1h"})).await;
    let status = wait_applied(&env, "nodes", &first).await;
    assert_eq!(
        status.unmatched,
        vec!["pool".to_string()],
        "reported, not an error"
    );
    assert_eq!(ready(&status), Some(("True".into(), "Synced".into())));

    let node = unique("late");
    nodes
        .create(&node, json!({"gitops.e2e/pool": pool}), json!([]))
        .await;
    wait_node(&nodes, &node, "the late node gets its label", |n| {
        labels(n).get("gitops.e2e/role").map(String::as_str) == Some("desktop")
    })
    .await;
    wait_for(
        "unmatched cleared",
        || sync_status(&env, "nodes"),
        |s| s.unmatched.is_empty() && s.inventory.len() == 1,
    )
    .await;
    nodes.cleanup().await;
    env.cleanup().await;
}

#[tokio::test]
async fn gitops_inventory_survives_a_restart_and_pruning_still_works() {
    let mut env = TestEnv::new("gitops-restart").await;
    let mut nodes = TestNodes::new(&env);
    let node = unique("restart");
    nodes
        .create(&node, json!({"gitops.e2e/keep": "theirs"}), json!([]))
        .await;
    let repo = Repo::new();
    let both = node_config(
        "r",
        json!({"nodeName": node}),
        json!({"gitops.e2e/a": "1", "gitops.e2e/b": "1"}),
        json!([{"key": "gitops.e2e/t", "effect": "NoSchedule"}]),
    );
    let first = repo.commit(&[("r.yaml", Some(&both))], "first");
    create_gitsync(&env, "nodes", json!({"url": repo.url(), "interval": "1s"})).await;
    wait_applied(&env, "nodes", &first).await;
    if let Some(controller) = env.controller.take() {
        controller.stop().await;
    }
    let only_a = node_config(
        "r",
        json!({"nodeName": node}),
        json!({"gitops.e2e/a": "1"}),
        json!([]),
    );
    let second = repo.commit(&[("r.yaml", Some(&only_a))], "drop b and t");
    // A fresh controller (and a fresh clone cache) knows nothing but what is in the cluster.
    env.gitops.cache_dir = tempfile::tempdir().expect("tempdir").keep();
    env.start_controller().await;
    wait_applied(&env, "nodes", &second).await;
    let pruned = wait_node(&nodes, &node, "b and t pruned after the restart", |n| {
        !labels(n).contains_key("gitops.e2e/b")
            && !taints(n).iter().any(|t| t.starts_with("gitops.e2e/t"))
    })
    .await;
    assert_eq!(
        labels(&pruned).get("gitops.e2e/a").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        labels(&pruned).get("gitops.e2e/keep").map(String::as_str),
        Some("theirs")
    );
    let _ = std::fs::remove_dir_all(&env.gitops.cache_dir);
    nodes.cleanup().await;
    env.cleanup().await;
}

/// A commit changing a label on every node (30, or `GITOPS_BENCH_NODES`), from webhook to all
/// applied: exactly one write per changed node; a no-op sync writes nothing. The timing at
/// 1,000 nodes is a benchmark (`cargo bench --bench gitops`).
#[tokio::test]
async fn gitops_one_write_per_changed_node_and_none_for_a_no_op_sync() {
    let count: usize = std::env::var("GITOPS_BENCH_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let env = TestEnv::new("gitops-bench").await;
    let mut nodes = TestNodes::new(&env);
    let pool = unique("bench");
    let names: Vec<String> = (0..count).map(|i| format!("{pool}-{i}")).collect();
    for name in &names {
        nodes
            .create(name, json!({"gitops.e2e/pool": pool}), json!([]))
            .await;
    }
    let secret = "bench-s3cret";
    webhook_secret(&env, secret).await;
    let (addr, server) = serve_hooks(&env).await;
    let repo = Repo::new();
    let version = |v: &str| {
        node_config(
            "pool",
            json!({"nodeSelector": {"matchLabels": {"gitops.e2e/pool": pool}}}),
            json!({"gitops.e2e/version": v}),
            json!([]),
        )
    };
    let first = repo.commit(&[("pool.yaml", Some(&version("1")))], "v1");
    create_gitsync(
        &env,
        "nodes",
        json!({"url": repo.url(), "interval": "1h", "webhookSecretRef": {"name": "hook"}}),
    )
    .await;
    wait_applied(&env, "nodes", &first).await;
    assert_eq!(node_writes(&env), count as f64, "one write per node for v1");

    let api: Api<Node> = Api::all(env.client.clone());
    let selector = |v: &str| {
        kube::api::ListParams::default()
            .labels(&format!("gitops.e2e/pool={pool},gitops.e2e/version={v}"))
    };
    let second = repo.commit(&[("pool.yaml", Some(&version("2")))], "v2");
    let path = format!("/hooks/git/{}/nodes", env.namespace);
    let body = br#"{"ref":"refs/heads/main"}"#;
    let signature = format!("sha256={}", sign(secret.as_bytes(), body));
    let sent = Instant::now();
    assert_eq!(
        post(addr, &path, &[("X-Hub-Signature-256", signature)], body).await,
        202
    );
    wait_for(
        "every node at version 2",
        || async {
            api.list(&selector("2"))
                .await
                .map(|l| l.items.len())
                .unwrap_or(0)
        },
        |n| *n == count,
    )
    .await;
    let applied = sent.elapsed();
    wait_applied(&env, "nodes", &second).await;
    assert_eq!(
        node_writes(&env),
        2.0 * count as f64,
        "exactly one write per changed node"
    );

    // Let the node events of our own writes settle, so the next sync is the webhook's.
    let mut syncs = metric(&env, "streamspace_gitops_sync_duration_seconds_count");
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = metric(&env, "streamspace_gitops_sync_duration_seconds_count");
        if now == syncs {
            break;
        }
        syncs = now;
    }
    // A new push is a new delivery (the same one again would be refused as a replay).
    let again = br#"{"ref":"refs/heads/main","after":"no-op"}"#;
    let signature = format!("sha256={}", sign(secret.as_bytes(), again));
    let sent = Instant::now();
    assert_eq!(
        post(addr, &path, &[("X-Hub-Signature-256", signature)], again).await,
        202
    );
    wait_for(
        "the no-op sync",
        || async { metric(&env, "streamspace_gitops_sync_duration_seconds_count") },
        |n| *n > syncs,
    )
    .await;
    let no_op = sent.elapsed();
    assert_eq!(
        node_writes(&env),
        2.0 * count as f64,
        "a no-op sync writes nothing"
    );
    eprintln!(
        "gitops bench: {count} nodes; webhook to all labels applied {applied:?}; \
         no-op sync {no_op:?}; node writes {}; conflicts retried {}",
        node_writes(&env),
        metric(&env, "streamspace_gitops_node_conflicts_total")
    );
    server.abort();
    nodes.cleanup().await;
    env.cleanup().await;
}

#[tokio::test]
async fn gitops_unreachable_repository_is_reported_and_the_commit_in_force_still_holds() {
    let env = TestEnv::new("gitops-unreachable").await;
    let mut nodes = TestNodes::new(&env);
    let node = unique("unreachable");
    nodes.create(&node, json!({}), json!([])).await;
    let repo = Repo::new();
    let wanted = node_config(
        "u",
        json!({"nodeName": node}),
        json!({"gitops.e2e/zone": "a"}),
        json!([]),
    );
    let first = repo.commit(&[("u.yaml", Some(&wanted))], "first");
    let moved = tempfile::tempdir().expect("tempdir");
    let url = repo.url();
    create_gitsync(&env, "nodes", json!({"url": url, "interval": "1s"})).await;
    wait_applied(&env, "nodes", &first).await;

    // The repository disappears: the fetch fails, status says so, nothing is undone.
    let gone = moved.path().join("repo");
    std::fs::rename(repo.dir.path(), &gone).expect("move the repository away");
    let status = wait_for(
        "Ready=False FetchFailed",
        || sync_status(&env, "nodes"),
        |s| ready(s).is_some_and(|(_, reason)| reason == "FetchFailed"),
    )
    .await;
    assert_eq!(status.last_applied_commit.as_deref(), Some(first.as_str()));
    assert_eq!(
        labels(&nodes.get(&node).await)
            .get("gitops.e2e/zone")
            .map(String::as_str),
        Some("a")
    );
    // Drift is still corrected from the commit in force.
    nodes
        .api
        .patch(
            &node,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"gitops.e2e/zone": "hacked"}}})),
        )
        .await
        .expect("manual edit");
    wait_node(&nodes, &node, "label restored during the outage", |n| {
        labels(n).get("gitops.e2e/zone").map(String::as_str) == Some("a")
    })
    .await;
    // The repository comes back: Ready again.
    std::fs::rename(&gone, repo.dir.path()).expect("move the repository back");
    wait_for(
        "Ready=True again",
        || sync_status(&env, "nodes"),
        |s| ready(s) == Some(("True".into(), "Synced".into())),
    )
    .await;
    nodes.cleanup().await;
    env.cleanup().await;
}

/// A QuotaPolicy document (Default subject) with `maxSessions`.
pub(crate) fn quota_policy(name: &str, max_sessions: i64) -> String {
    let document = json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "QuotaPolicy",
        "metadata": {"name": name},
        "spec": {"subject": {"kind": "Default"}, "limits": {"maxSessions": max_sessions}}
    });
    format!(
        "# yaml-language-server: $schema=../manifests-schema/quotapolicy.schema.json\n{}",
        serde_json::to_string_pretty(&document).expect("serialises")
    )
}

pub(crate) fn max_sessions(policy: &QuotaPolicy) -> Option<i64> {
    serde_json::to_value(&policy.spec.limits)
        .ok()
        .and_then(|l| l.get("maxSessions").and_then(serde_json::Value::as_i64))
}

#[tokio::test]
async fn gitops_quota_policy_added_changed_and_removed_follows_git() {
    let mut env = TestEnv::new("gitops-quota").await;
    let policies = env.api::<QuotaPolicy>();
    let repo = Repo::new();
    let first = repo.commit(
        &[
            ("quota/a.yaml", Some(&quota_policy("team-a", 3))),
            ("quota/b.yaml", Some(&quota_policy("team-b", 4))),
        ],
        "two policies",
    );
    create_gitsync(&env, "quotas", json!({"url": repo.url(), "interval": "1h"})).await;
    wait_applied(&env, "quotas", &first).await;
    let a = wait_object(&policies, "team-a", "team-a applied", |p| {
        max_sessions(p) == Some(3)
    })
    .await;
    assert_eq!(
        a.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(OWNER_LABEL))
            .map(String::as_str),
        Some(format!("{}.quotas", env.namespace).as_str()),
        "ownership label"
    );
    wait_object(&policies, "team-b", "team-b applied", |p| {
        max_sessions(p) == Some(4)
    })
    .await;

    // A hand edit is restored from the watch, not at the next poll (1h).
    let edited = Instant::now();
    policies
        .patch(
            "team-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"limits": {"maxSessions": 99, "maxGpu": 2}}})),
        )
        .await
        .expect("hand edit");
    wait_object(&policies, "team-a", "hand edit reverted", |p| {
        max_sessions(p) == Some(3) && p.spec.limits.max_gpu.is_none()
    })
    .await;
    assert!(edited.elapsed() < Duration::from_secs(15));
    // A hand-deleted policy is recreated.
    policies
        .delete("team-b", &DeleteParams::default())
        .await
        .expect("hand delete");
    wait_object(&policies, "team-b", "team-b recreated", |p| {
        max_sessions(p) == Some(4)
    })
    .await;

    // Changed in Git -> changed in the cluster (the poll is short from here on).
    env.api::<GitSync>()
        .patch(
            "quotas",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"interval": "1s"}})),
        )
        .await
        .expect("interval");
    let second = repo.commit(
        &[("quota/a.yaml", Some(&quota_policy("team-a", 5)))],
        "raise a",
    );
    wait_applied(&env, "quotas", &second).await;
    wait_object(&policies, "team-a", "team-a changed", |p| {
        max_sessions(p) == Some(5)
    })
    .await;

    // Removed in Git -> removed in the cluster; the other stays.
    let third = repo.commit(&[("quota/b.yaml", None)], "drop b");
    wait_applied(&env, "quotas", &third).await;
    wait_gone(&policies, "team-b", "team-b pruned").await;
    assert!(policies.get_opt("team-a").await.expect("get").is_some());

    // After a restart the label is the inventory: a removal is still pruned.
    if let Some(controller) = env.controller.take() {
        controller.stop().await;
    }
    let fourth = repo.commit(&[("quota/a.yaml", Some("# no policies\n"))], "drop a");
    env.gitops.cache_dir = tempfile::tempdir().expect("tempdir").keep();
    env.start_controller().await;
    wait_applied(&env, "quotas", &fourth).await;
    wait_gone(&policies, "team-a", "team-a pruned after a restart").await;
    let _ = std::fs::remove_dir_all(&env.gitops.cache_dir);
    env.cleanup().await;
}

#[tokio::test]
async fn gitops_node_operation_in_git_cordons_and_removing_the_file_uncordons() {
    let env = TestEnv::new("gitops-nodeop").await;
    let mut nodes = TestNodes::new(&env);
    let node = unique("nodeop");
    nodes
        .create(&node, json!({ADOPTED_NODE_LABEL: "true"}), json!([]))
        .await;
    let operations: Api<NodeOperation> = Api::all(env.client.clone());
    let operation = format!("{node}-maintenance");
    let document = json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "NodeOperation",
        "metadata": {"name": operation, "labels": {TEST_ENV_LABEL: env.namespace}},
        "spec": {"nodeName": node, "cordon": true}
    });
    let repo = Repo::new();
    let first = repo.commit(
        &[
            ("readme.yaml", Some("# maintenance windows\n")),
            (
                "maintenance.yaml",
                Some(&serde_json::to_string_pretty(&document).expect("serialises")),
            ),
        ],
        "cordon",
    );
    create_gitsync(&env, "ops", json!({"url": repo.url(), "interval": "1s"})).await;
    wait_applied(&env, "ops", &first).await;
    wait_object(&operations, &operation, "operation created", |o| {
        o.metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(OWNER_LABEL))
    })
    .await;
    wait_node(&nodes, &node, "node cordoned", |n| {
        n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true)
    })
    .await;

    let second = repo.commit(&[("maintenance.yaml", None)], "end maintenance");
    wait_applied(&env, "ops", &second).await;
    wait_gone(&operations, &operation, "operation pruned").await;
    wait_node(&nodes, &node, "node uncordoned", |n| {
        n.spec.as_ref().and_then(|s| s.unschedulable) != Some(true)
    })
    .await;
    nodes.cleanup().await;
    env.cleanup().await;
}

/// An object the API server refuses (here the ResourceQuota admission: the test's namespace
/// may hold no QuotaPolicy) is reported as `ApplyFailed` naming it; once allowed, it applies.
#[tokio::test]
async fn gitops_object_refused_by_the_api_is_reported_and_applies_once_allowed() {
    use k8s_openapi::api::core::v1::ResourceQuota;
    let env = TestEnv::new("gitops-refused").await;
    let _: ResourceQuota = env
        .create(json!({
            "apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": "no-quota-policies"},
            "spec": {"hard": {"count/quotapolicies.stream.space": "0"}}
        }))
        .await;
    let quotas = env.api::<QuotaPolicy>();
    let probe: QuotaPolicy = serde_json::from_value(json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "QuotaPolicy",
        "metadata": {"name": "probe"},
        "spec": {"subject": {"kind": "Default"}}
    }))
    .expect("probe");
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let refused = wait_for(
        "the ResourceQuota to refuse QuotaPolicies",
        || quotas.create(&dry_run, &probe),
        |r| r.is_err(),
    )
    .await;
    let refused = format!("{:?}", refused.err());
    assert!(refused.contains("quota"), "{refused}");

    let repo = Repo::new();
    let first = repo.commit(&[("q.yaml", Some(&quota_policy("big", 5)))], "a policy");
    create_gitsync(&env, "quotas", json!({"url": repo.url(), "interval": "1s"})).await;
    let ready_condition = |s: &GitSync| {
        s.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .cloned()
    };
    let failed = wait_object(&env.api::<GitSync>(), "quotas", "ApplyFailed", |s| {
        ready_condition(s).is_some_and(|c| c.reason == "ApplyFailed")
    })
    .await;
    let message = ready_condition(&failed)
        .map(|c| c.message)
        .unwrap_or_default();
    assert!(
        message.contains("creating QuotaPolicy/big failed") && message.contains("quota"),
        "{message}"
    );
    assert!(quotas.get_opt("big").await.expect("get").is_none());
    assert_ne!(
        failed.status.and_then(|s| s.last_applied_commit),
        Some(first.clone())
    );

    Api::<ResourceQuota>::namespaced(env.client.clone(), &env.namespace)
        .delete("no-quota-policies", &DeleteParams::default())
        .await
        .expect("delete quota");
    let status = wait_applied(&env, "quotas", &first).await;
    assert_eq!(
        ready(&status).map(|(s, _)| s),
        Some("True".to_string()),
        "{status:?}"
    );
    wait_object(&quotas, "big", "big applied", |p| {
        max_sessions(p) == Some(5)
    })
    .await;
    env.cleanup().await;
}
