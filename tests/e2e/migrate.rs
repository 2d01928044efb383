//! `migrate backup`, `restore` and `verify` as an operator runs them: the real binary against
//! the real control plane, with a controller that rebuilds what restore re-creates; and flag
//! objects an earlier release wrote.

use std::path::Path;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use streamspace_controller::api::flags as flags_api;
use streamspace_controller::crd::{
    FeatureFlag, FlagMode, QuotaPolicy, Session, SessionPhase, Template,
};
use streamspace_controller::ownership::Effective;

use crate::support::{TestEnv, kubeconfig_path, wait_gone, wait_object};

/// Label every object of a test carries, so its backup selects only them (FeatureFlags are
/// cluster-scoped and other tests run beside this one).
const LABEL: &str = "stream.space/migrate-test";

/// `streamspace-controller migrate <args>`: (exit code, standard output, standard error).
async fn migrate(args: &[&str]) -> (i32, String, String) {
    let kubeconfig = kubeconfig_path();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_streamspace-controller"))
        .arg("migrate")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(args)
        .output()
        .await
        .expect("run migrate");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn labels(env: &TestEnv) -> Value {
    json!({LABEL: env.namespace})
}

/// A template, a quota policy, a flag of this test and two running sessions.
async fn world(env: &TestEnv) -> Vec<String> {
    env.create::<Template>(json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "Template",
        "metadata": {"name": "firefox", "labels": labels(env)},
        "spec": {
            "displayName": "Firefox", "baseImage": "lscr.io/linuxserver/firefox:latest",
            "vnc": {"enabled": true, "port": 3000}
        }
    }))
    .await;
    env.create::<QuotaPolicy>(json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "QuotaPolicy",
        "metadata": {"name": "default", "labels": labels(env)},
        "spec": {"subject": {"kind": "Default"}, "limits": {"maxSessions": 5}}
    }))
    .await;
    let flag: FeatureFlag = serde_json::from_value(json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "FeatureFlag",
        "metadata": {"name": format!("{}nodes", env.flag_settings().name_prefix), "labels": labels(env)},
        "spec": {"mode": "controller"}
    }))
    .expect("flag");
    Api::<FeatureFlag>::all(env.client.clone())
        .create(&Default::default(), &flag)
        .await
        .expect("create flag");
    let mut names = Vec::new();
    for name in ["alpha", "beta"] {
        env.create::<Session>(json!({
            "apiVersion": "stream.space/v1alpha1", "kind": "Session",
            "metadata": {"name": name, "labels": labels(env)},
            "spec": {"user": "alice", "template": "firefox", "state": "running"}
        }))
        .await;
        names.push(name.to_string());
    }
    for name in &names {
        wait_running(env, name).await;
    }
    names
}

async fn wait_running(env: &TestEnv, name: &str) -> Session {
    wait_object(&env.api::<Session>(), name, "phase Running", |s| {
        let status = s.status.clone().unwrap_or_default();
        status.phase == Some(SessionPhase::Running)
            && status.observed_generation == s.metadata.generation
    })
    .await
}

async fn delete_flag(env: &TestEnv) {
    let _ = Api::<FeatureFlag>::all(env.client.clone())
        .delete(
            &format!("{}nodes", env.flag_settings().name_prefix),
            &DeleteParams::default(),
        )
        .await;
}

async fn backup(env: &TestEnv, file: &Path) -> String {
    let selector = format!("{LABEL}={}", env.namespace);
    let file = file.to_string_lossy();
    let (code, out, err) =
        migrate(&["backup", "-o", &file, "-n", &env.namespace, "-l", &selector]).await;
    assert_eq!(code, 0, "backup failed:\n{out}\n{err}");
    out
}

#[tokio::test]
async fn migrate_backup_delete_restore_verify_round_trip() {
    let mut env = TestEnv::new("migrate-round-trip").await;
    let names = world(&env).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("backup.yaml");

    let summary = backup(&env, &file).await;
    for line in [
        "backed up 5 objects",
        "FeatureFlag: 1",
        "QuotaPolicy: 1",
        "Template: 1",
        "GitSync: 0",
        "Session: 2",
    ] {
        assert!(summary.contains(line), "{line:?} missing from:\n{summary}");
    }
    let archive = std::fs::read_to_string(&file).expect("archive");
    let documents: Vec<Value> = serde_saphyr::from_multiple(&archive).expect("kubectl-style YAML");
    let kinds: Vec<&str> = documents
        .iter()
        .filter_map(|d| d["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "FeatureFlag",
            "QuotaPolicy",
            "Template",
            "Session",
            "Session"
        ],
        "stable order"
    );
    for document in &documents {
        let metadata = &document["metadata"];
        for stripped in [
            "uid",
            "resourceVersion",
            "managedFields",
            "creationTimestamp",
        ] {
            assert!(
                metadata.get(stripped).is_none(),
                "{stripped} kept: {document}"
            );
        }
    }
    let status = documents[3]["metadata"]["annotations"]["stream.space/backup-status"]
        .as_str()
        .expect("status annotation");
    assert!(status.contains("\"phase\":\"Running\""), "{status}");

    // The namespace and everything in it goes.
    delete_flag(&env).await;
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    namespaces
        .delete(&env.namespace, &DeleteParams::default())
        .await
        .expect("delete namespace");
    wait_gone(&namespaces, &env.namespace, "the namespace to go").await;

    let (code, out, err) = migrate(&["restore", &file.to_string_lossy()]).await;
    assert_eq!(code, 0, "restore failed:\n{out}\n{err}");
    assert!(
        out.contains(&format!("Namespace {} created", env.namespace)),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "Session {}/alpha created (phase at backup: Running)",
            env.namespace
        )),
        "{out}"
    );
    assert!(out.contains("5 created"), "{out}");
    for name in &names {
        wait_running(&env, name).await;
    }
    let (code, out, _) = migrate(&["verify", "-n", &env.namespace]).await;
    assert_eq!(code, 0, "verify after restore:\n{out}");
    assert!(
        out.contains("2 sessions checked, 0 with mismatches"),
        "{out}"
    );

    // A second restore changes nothing.
    let (code, out, err) = migrate(&["restore", &file.to_string_lossy()]).await;
    assert_eq!(code, 0, "second restore:\n{out}\n{err}");
    assert!(out.contains("5 unchanged"), "{out}");
    assert!(!out.contains("created"), "{out}");

    // A session changed after the backup is not overwritten without --force.
    let sessions = env.api::<Session>();
    let edited = sessions
        .patch(
            "beta",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"idleTimeout": "45m"}})),
        )
        .await
        .expect("edit beta");
    let (code, out, _) = migrate(&["restore", &file.to_string_lossy()]).await;
    assert_eq!(code, 1, "a newer object is refused:\n{out}");
    assert!(
        out.contains(&format!("Session {}/beta refused", env.namespace)),
        "{out}"
    );
    assert!(out.contains("--force replaces it"), "{out}");
    let kept = sessions.get("beta").await.expect("beta");
    assert_eq!(kept.spec.idle_timeout, "45m", "not overwritten");
    // Status writes of the controller change the resourceVersion, never the generation.
    assert_eq!(
        kept.metadata.generation, edited.metadata.generation,
        "restore wrote nothing"
    );

    let (code, out, _) =
        migrate(&["restore", "--dry-run", "--force", &file.to_string_lossy()]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "(dry run) Session {}/beta would replace",
            env.namespace
        )),
        "{out}"
    );
    assert_eq!(
        sessions.get("beta").await.expect("beta").spec.idle_timeout,
        "45m"
    );

    let (code, out, _) = migrate(&["restore", "--force", &file.to_string_lossy()]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("Session {}/beta replaced", env.namespace)),
        "{out}"
    );
    assert_eq!(
        sessions.get("beta").await.expect("beta").spec.idle_timeout,
        "30m"
    );

    // A Deployment scaled by hand (nobody to put it back: the controller is stopped).
    wait_running(&env, "beta").await;
    if let Some(controller) = env.controller.take() {
        controller.stop().await;
    }
    env.api::<Deployment>()
        .patch(
            "ss-alpha",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await
        .expect("scale by hand");
    let (code, out, _) = migrate(&["verify", "-n", &env.namespace]).await;
    assert_eq!(code, 1, "verify must fail:\n{out}");
    assert!(
        out.contains(&format!("MISMATCH  {}/alpha (Running)", env.namespace)),
        "{out}"
    );
    assert!(
        out.contains("spec.state running but Deployment ss-alpha has 0 replicas"),
        "{out}"
    );
    assert!(
        out.contains(&format!("ok        {}/beta", env.namespace)),
        "{out}"
    );
    assert!(
        out.contains("2 sessions checked, 1 with mismatches"),
        "{out}"
    );

    delete_flag(&env).await;
    env.cleanup().await;
}

#[tokio::test]
async fn migrate_restore_refuses_a_bad_archive_and_a_missing_file() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
    )
    .expect("write");
    let (code, _, err) = migrate(&["restore", &file.to_string_lossy()]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("document 1: apiVersion \"v1\""), "{err}");
    let (code, _, err) =
        migrate(&["restore", &dir.path().join("none.yaml").to_string_lossy()]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("none.yaml"), "{err}");
}

/// Upgrading from a release that wrote overrides by merge patch: the flag endpoint's apply
/// replaces such an override whole (no expiry of the old one survives), keeps the baseline Git
/// applied, and a baseline write keeps the override.
#[tokio::test]
async fn migrate_an_override_merged_by_an_earlier_release_is_replaced_whole() {
    let env = TestEnv::without_controller("flag-upgrade").await;
    let name = format!("{}idle", env.flag_settings().name_prefix);
    let flags: Api<FeatureFlag> = Api::all(env.client.clone());
    let baseline = json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "FeatureFlag",
        "metadata": {"name": name},
        "spec": {"mode": "controller", "percent": 50}
    });
    flags
        .patch(
            &name,
            &PatchParams::apply("streamspace-controller").force(),
            &Patch::Apply(baseline),
        )
        .await
        .expect("the baseline");
    let params = PatchParams {
        field_manager: Some(flags_api::FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    let old = json!({"spec": {"override": {"mode": "legacy", "percent": 100,
        "expiresAt": "2999-01-01T00:00:00Z", "reason": "old release", "setBy": "alice"}}});
    flags
        .patch(&name, &params, &Patch::Merge(old))
        .await
        .expect("the old override");

    let request = flags_api::OverrideRequest {
        mode: "shadow".into(),
        percent: Some(10),
        ttl: None,
        reason: Some("until cleared".into()),
    };
    let over = flags_api::build_override(&request, "bob", Timestamp::now()).expect("override");
    let default = Effective::default_for(FlagMode::Controller);
    let stored = flags_api::write_override(&env.client, &name, &over, &default)
        .await
        .expect("write the override");
    assert_eq!(stored.spec.override_.as_ref(), Some(&over), "{stored:?}");
    assert_eq!(
        (stored.spec.mode.as_str(), stored.spec.percent),
        ("controller", 50)
    );

    let wanted = flags_api::Baseline {
        mode: FlagMode::Legacy,
        percent: 100,
        reason: "roll back".into(),
    };
    let stored = flags_api::write_baseline(&env.client, &name, &wanted)
        .await
        .expect("write the baseline");
    assert_eq!(
        (stored.spec.mode.as_str(), stored.spec.percent),
        ("legacy", 100)
    );
    assert_eq!(stored.spec.override_.as_ref(), Some(&over), "{stored:?}");
    // Read back: what the writes returned is what is stored.
    let read = flags.get(&name).await.expect("flag");
    assert_eq!(read.spec, stored.spec);

    let _ = flags.delete(&name, &DeleteParams::default()).await;
    env.cleanup().await;
}
