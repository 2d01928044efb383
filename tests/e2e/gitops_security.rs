//! Attacks on the GitSync trust boundary against the real control plane: each test tries one
//! and checks that it is refused with a clear status and that nothing changed.

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use streamspace_controller::crd::{Condition, GitSync, GitSyncStatus, QuotaPolicy};
use streamspace_controller::gitops::lifecycle::FINALIZER;
use streamspace_controller::gitops::manifest::OWNER_LABEL;
use streamspace_controller::gitops::plan::INVENTORY_ANNOTATION;
use streamspace_controller::gitops::trust::NamespacePolicy;

use crate::gitops::{
    Repo, TestNodes, create_gitsync, labels, max_sessions, node_config, quota_policy, sync_status,
    taints, unique, wait_applied, wait_node,
};
use crate::support::{TestEnv, wait_for, wait_gone, wait_object};

pub(crate) fn condition(status: &GitSyncStatus, type_: &str) -> Option<Condition> {
    status.conditions.iter().find(|c| c.type_ == type_).cloned()
}

/// Waits until `Ready` is `False` with `reason`; returns the status.
pub(crate) async fn wait_refused(env: &TestEnv, name: &str, reason: &str) -> GitSyncStatus {
    wait_for(
        &format!("{name}: Ready=False {reason}"),
        || sync_status(env, name),
        |s| condition(s, "Ready").is_some_and(|c| c.status == "False" && c.reason == reason),
    )
    .await
}

/// Waits until the commit is rejected; returns the status.
pub(crate) async fn wait_rejected(env: &TestEnv, name: &str, commit: &str) -> GitSyncStatus {
    wait_for(
        &format!("{name} to reject {commit}"),
        || sync_status(env, name),
        |s| s.rejected.as_ref().is_some_and(|r| r.commit == commit),
    )
    .await
}

#[tokio::test]
async fn gitops_security_a_gitsync_outside_the_allowed_namespaces_applies_nothing() {
    let mut env = TestEnv::without_controller("gitops-sec-ns").await;
    env.gitops.namespaces = NamespacePolicy::Only(["streamspace-system".to_string()].into());
    env.start_controller().await;
    let mut nodes = TestNodes::new(&env);
    let node = unique("ns");
    nodes.create(&node, json!({}), json!([])).await;
    let repo = Repo::new();
    let document = node_config(
        "n",
        json!({"nodeName": node}),
        json!({"gitops.e2e/zone": "a"}),
        json!([{"key": "gitops.e2e/tenant", "effect": "NoSchedule"}]),
    );
    repo.commit(&[("n.yaml", Some(&document))], "first");
    create_gitsync(&env, "tenant", json!({"url": repo.url(), "interval": "1s"})).await;

    let status = wait_refused(&env, "tenant", "NamespaceNotAllowed").await;
    let message = condition(&status, "Ready")
        .map(|c| c.message)
        .unwrap_or_default();
    assert!(message.contains("not honoured"), "{message}");
    assert!(message.contains("streamspace-system"), "{message}");
    assert_eq!(status.last_fetched_commit, None, "nothing fetched");
    let sync = env.api::<GitSync>().get("tenant").await.expect("gitsync");
    assert!(
        sync.finalizers().is_empty(),
        "no finalizer on a refused GitSync"
    );
    let live = nodes.get(&node).await;
    assert!(!labels(&live).contains_key("gitops.e2e/zone"), "{live:?}");
    assert!(taints(&live).is_empty(), "{live:?}");
    nodes.cleanup().await;
    env.cleanup().await;
}

#[tokio::test]
async fn gitops_security_reserved_keys_are_refused_with_the_file_and_line() {
    let env = TestEnv::new("gitops-sec-reserved").await;
    let mut nodes = TestNodes::new(&env);
    let node = unique("reserved");
    nodes.create(&node, json!({}), json!([])).await;
    let repo = Repo::new();
    let fine = node_config(
        "fine",
        json!({"nodeName": node}),
        json!({"gitops.e2e/fine": "yes"}),
        json!([]),
    );
    let hostname = format!(
        "# relabel the node's hostname\napiVersion: stream.space/v1alpha1\nkind: NodeConfig\nmetadata: {{name: host}}\nspec:\n  nodeName: {node}\n  labels: {{kubernetes.io/hostname: evil}}\n"
    );
    let first = repo.commit(
        &[("fine.yaml", Some(&fine)), ("host.yaml", Some(&hostname))],
        "hostname",
    );
    create_gitsync(&env, "nodes", json!({"url": repo.url(), "interval": "1s"})).await;
    let status = wait_rejected(&env, "nodes", &first).await;
    let rejection = status.rejected.clone().unwrap_or_default();
    assert_eq!(rejection.file, "host.yaml:2", "{rejection:?}");
    assert!(
        rejection
            .reason
            .contains("reserved prefix \"kubernetes.io/\""),
        "{rejection:?}"
    );

    let control_plane = format!(
        "apiVersion: stream.space/v1alpha1\nkind: NodeConfig\nmetadata: {{name: host}}\nspec:\n  nodeName: {node}\n  taints:\n    - {{key: node-role.kubernetes.io/control-plane, effect: NoSchedule}}\n"
    );
    let second = repo.commit(&[("host.yaml", Some(&control_plane))], "taint");
    let status = wait_rejected(&env, "nodes", &second).await;
    let rejection = status.rejected.clone().unwrap_or_default();
    assert_eq!(rejection.file, "host.yaml:1", "{rejection:?}");
    assert!(
        rejection.reason.contains("node-role.kubernetes.io/"),
        "{rejection:?}"
    );
    assert_eq!(status.last_applied_commit, None, "nothing applied");
    let live = nodes.get(&node).await;
    assert!(!labels(&live).contains_key("gitops.e2e/fine"), "{live:?}");
    assert!(
        !labels(&live).contains_key("kubernetes.io/hostname"),
        "{live:?}"
    );
    assert!(taints(&live).is_empty(), "{live:?}");
    nodes.cleanup().await;
    env.cleanup().await;
}

#[tokio::test]
async fn gitops_security_keys_someone_else_set_survive_and_a_forged_inventory_prunes_nothing() {
    let env = TestEnv::new("gitops-sec-adopt").await;
    let mut nodes = TestNodes::new(&env);
    let node = unique("adopt");
    nodes
        .create(
            &node,
            json!({"gitops.e2e/team": "ops"}),
            json!([{"key": "gitops.e2e/dedicated", "value": "x", "effect": "NoSchedule"}]),
        )
        .await;
    let repo = Repo::new();
    let v1 = node_config(
        "n",
        json!({"nodeName": node}),
        json!({"gitops.e2e/team": "gitops", "gitops.e2e/zone": "a"}),
        json!([
            {"key": "gitops.e2e/dedicated", "value": "x", "effect": "NoSchedule"},
            {"key": "gitops.e2e/ours", "effect": "NoSchedule"}
        ]),
    );
    let first = repo.commit(&[("n.yaml", Some(&v1))], "declare");
    create_gitsync(&env, "nodes", json!({"url": repo.url(), "interval": "1s"})).await;
    let status = wait_applied(&env, "nodes", &first).await;
    let entry = status.inventory.iter().find(|e| e.node == node).cloned();
    let entry = entry.unwrap_or_else(|| panic!("inventory of {node}: {status:?}"));
    assert_eq!(
        entry.labels,
        ["gitops.e2e/zone"],
        "only what the sync created is ours"
    );
    assert_eq!(entry.taints, ["gitops.e2e/ours:NoSchedule"]);
    let live = wait_node(&nodes, &node, "v1 applied", |n| {
        labels(n).get("gitops.e2e/team").map(String::as_str) == Some("gitops")
    })
    .await;
    assert_eq!(labels(&live)["gitops.e2e/zone"], "a");

    // Whoever can write the node forges our inventory to claim a bystander's label.
    let id = format!("{}/nodes", env.namespace);
    let forged = json!({id.clone(): {
        "labels": ["gitops.e2e/bystander", "gitops.e2e/team", "gitops.e2e/zone"],
        "taints": ["gitops.e2e/dedicated:NoSchedule", "gitops.e2e/ours:NoSchedule"]
    }});
    Api::<Node>::all(env.client.clone())
        .patch(
            &node,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {
                "labels": {"gitops.e2e/bystander": "kept"},
                "annotations": {INVENTORY_ANNOTATION: forged.to_string()}
            }})),
        )
        .await
        .expect("forge the inventory");
    // The controller sees the node change and rewrites the entry to what its record confirms.
    let live = wait_node(&nodes, &node, "the forged entry replaced", |n| {
        n.annotations()
            .get(INVENTORY_ANNOTATION)
            .is_some_and(|a| !a.contains("bystander"))
    })
    .await;
    assert_eq!(labels(&live)["gitops.e2e/bystander"], "kept");

    // Git drops everything: only what the sync created goes.
    let v2 = node_config("n", json!({"nodeName": node}), json!({}), json!([]));
    let second = repo.commit(&[("n.yaml", Some(&v2))], "drop all");
    wait_applied(&env, "nodes", &second).await;
    let live = wait_node(&nodes, &node, "our keys pruned", |n| {
        !labels(n).contains_key("gitops.e2e/zone")
    })
    .await;
    let labels = labels(&live);
    assert_eq!(
        labels["gitops.e2e/team"], "gitops",
        "a key set before Git declared it stays"
    );
    assert_eq!(labels["gitops.e2e/bystander"], "kept");
    assert_eq!(taints(&live), ["gitops.e2e/dedicated=x:NoSchedule"]);
    nodes.cleanup().await;
    env.cleanup().await;
}

#[tokio::test]
async fn gitops_security_plaintext_and_local_urls_are_refused_by_default() {
    let mut env = TestEnv::without_controller("gitops-sec-url").await;
    env.gitops.allow_insecure_transports = false;
    env.start_controller().await;
    let repo = Repo::new();
    repo.commit(&[("q.yaml", Some(&quota_policy("url", 1)))], "first");
    create_gitsync(&env, "local", json!({"url": repo.url(), "interval": "1s"})).await;
    create_gitsync(
        &env,
        "plain",
        json!({"url": "http://git.example.invalid/config.git", "interval": "1s",
               "secretRef": {"name": "credentials"}}),
    )
    .await;
    for (name, expected) in [("local", "file://"), ("plain", "plaintext")] {
        let status = wait_refused(&env, name, "URLRefused").await;
        let message = condition(&status, "Ready")
            .map(|c| c.message)
            .unwrap_or_default();
        assert!(message.contains(expected), "{name}: {message}");
        assert_eq!(status.last_fetched_commit, None, "{name}: nothing fetched");
    }
    let policies = env.api::<QuotaPolicy>();
    assert!(policies.get_opt("url").await.expect("get").is_none());
    env.cleanup().await;
}

#[tokio::test]
async fn gitops_security_an_object_the_sync_did_not_create_is_a_conflict_never_taken_over() {
    let env = TestEnv::new("gitops-sec-object").await;
    let policies = env.api::<QuotaPolicy>();
    let existing: QuotaPolicy = serde_json::from_value(json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "QuotaPolicy",
        "metadata": {"name": "shared"},
        "spec": {"subject": {"kind": "Default"}, "limits": {"maxSessions": 1}}
    }))
    .expect("policy");
    policies
        .create(&PostParams::default(), &existing)
        .await
        .expect("someone else's policy");
    let repo = Repo::new();
    let first = repo.commit(
        &[(
            "q.yaml",
            Some(&format!(
                "{}\n---\n{}",
                quota_policy("shared", 9),
                quota_policy("mine", 2)
            )),
        )],
        "declare",
    );
    create_gitsync(&env, "quota", json!({"url": repo.url(), "interval": "1s"})).await;
    let status = wait_refused(&env, "quota", "Conflict").await;
    let message = condition(&status, "Ready")
        .map(|c| c.message)
        .unwrap_or_default();
    assert!(message.contains("QuotaPolicy/shared"), "{message}");
    assert!(message.contains("not taken over"), "{message}");
    assert_ne!(status.last_applied_commit.as_deref(), Some(first.as_str()));
    let live = policies.get("shared").await.expect("still there");
    assert_eq!(max_sessions(&live), Some(1), "unchanged");
    assert!(!live.labels().contains_key(OWNER_LABEL), "{live:?}");

    // Git drops it: it is not ours, so it is not pruned either.
    let second = repo.commit(&[("q.yaml", Some(&quota_policy("mine", 2)))], "drop shared");
    wait_applied(&env, "quota", &second).await;
    let live = policies.get("shared").await.expect("never pruned");
    assert_eq!(max_sessions(&live), Some(1));
    env.cleanup().await;
}

#[tokio::test]
async fn gitops_security_deleting_a_gitsync_removes_what_it_applied_even_with_its_repository_gone()
{
    let env = TestEnv::new("gitops-sec-finalizer").await;
    let mut nodes = TestNodes::new(&env);
    let node = unique("final");
    nodes
        .create(&node, json!({"gitops.e2e/team": "ops"}), json!([]))
        .await;
    let repo = Repo::new();
    let document = node_config(
        "n",
        json!({"nodeName": node}),
        json!({"gitops.e2e/zone": "a", "gitops.e2e/team": "gitops"}),
        json!([{"key": "gitops.e2e/final", "effect": "NoSchedule"}]),
    );
    let first = repo.commit(
        &[
            ("n.yaml", Some(&document)),
            ("q.yaml", Some(&quota_policy("finalized", 3))),
        ],
        "first",
    );
    let url = repo.url();
    create_gitsync(&env, "nodes", json!({"url": url, "interval": "1s"})).await;
    wait_applied(&env, "nodes", &first).await;
    let syncs = env.api::<GitSync>();
    let sync = syncs.get("nodes").await.expect("gitsync");
    assert!(sync.finalizers().iter().any(|f| f == FINALIZER), "{sync:?}");
    let clone = streamspace_controller::gitops::repo::cache_dir(
        &env.gitops.cache_dir,
        &format!("{}/nodes", env.namespace),
        &url,
    );
    assert!(clone.exists(), "{}", clone.display());
    let policies = env.api::<QuotaPolicy>();
    wait_object(&policies, "finalized", "the policy applied", |_| true).await;

    drop(repo);
    syncs
        .delete("nodes", &DeleteParams::default())
        .await
        .expect("delete the gitsync");
    wait_gone(&syncs, "nodes", "the GitSync to finalize").await;
    let live = nodes.get(&node).await;
    let labels = labels(&live);
    assert!(!labels.contains_key("gitops.e2e/zone"), "{labels:?}");
    assert_eq!(
        labels["gitops.e2e/team"], "gitops",
        "a key it did not create stays"
    );
    assert!(taints(&live).is_empty(), "{live:?}");
    assert!(
        !live.annotations().contains_key(INVENTORY_ANNOTATION),
        "{live:?}"
    );
    wait_gone(&policies, "finalized", "the owned policy pruned").await;
    assert!(
        !clone.exists(),
        "clone directory removed: {}",
        clone.display()
    );
    nodes.cleanup().await;
    env.cleanup().await;
}
