//! `streamspace-controller flags`: the binary against a running API (`--api-url`, token from
//! `STREAMSPACE_TOKEN`) and straight against the cluster (`--kubeconfig`); the rollback drill
//! with a controller running, on a session created during the override.

use std::process::Output;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use streamspace_controller::api::sessions::LEGACY_FIELD_MANAGER;
use streamspace_controller::crd::{FeatureFlag, FlagMode, Session, SessionPhase, Template};
use streamspace_controller::ownership::ResourceType;
use streamspace_controller::ownership::handoff::ACTED_BY_ANNOTATION;

use crate::http_client::{API_TOKEN, RunningApi, call_json};
use crate::support::{TestEnv, WAIT, kubeconfig, wait_for, wait_object};

/// Runs the binary with `args` (and `STREAMSPACE_TOKEN` when given); exit status and output.
async fn flags(args: &[&str], token: Option<&str>) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_streamspace-controller"));
    command
        .arg("flags")
        .args(args)
        .env_remove("STREAMSPACE_TOKEN");
    command
        .env_remove("STREAMSPACE_API")
        .env("RUST_LOG", "warn");
    if let Some(token) = token {
        command.env("STREAMSPACE_TOKEN", token);
    }
    command.output().await.expect("run the flags command")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs a command that must succeed; its standard output.
async fn ok(args: &[&str], token: Option<&str>) -> String {
    let output = flags(args, token).await;
    assert!(
        output.status.success(),
        "flags {args:?} failed: {}{}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

/// The row of `table` whose first column is `kind`, split on runs of spaces.
fn row(table: &str, kind: &str) -> Vec<String> {
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split("   ")
        .collect();
    assert!(header[0].starts_with("TYPE"), "a table: {table}");
    table
        .lines()
        .find(|l| l.starts_with(&format!("{kind} ")) || *l == kind)
        .map(|l| {
            l.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_else(|| panic!("no row {kind} in\n{table}"))
}

/// Which side last acted on the session (`stream.space/acted-by`).
fn acted_by(session: &Session) -> Option<&str> {
    session
        .annotations()
        .get(ACTED_BY_ANNOTATION)
        .map(String::as_str)
}

#[tokio::test]
async fn an_override_with_a_ttl_rolls_back_and_flags_get_shows_the_baseline_return() {
    let env = TestEnv::new("flags-cli").await;
    env.create::<Template>(json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "Template",
        "metadata": {"name": "firefox"},
        "spec": {"displayName": "Firefox", "baseImage": "lscr.io/linuxserver/firefox:latest",
                 "defaultResources": {"requests": {"cpu": "500m", "memory": "512Mi"}},
                 "vnc": {"enabled": true, "port": 3000}}
    }))
    .await;
    let api = RunningApi::start(&env, Duration::from_millis(500), None).await;
    let url = format!("http://{}", api.addr);
    let base = ["--api-url", url.as_str()];
    let with = |rest: &[&'static str]| -> Vec<String> {
        base.iter()
            .map(|s| s.to_string())
            .chain(rest.iter().map(|s| s.to_string()))
            .collect()
    };
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(&refs, Some(API_TOKEN)).await
    };

    // A baseline of our own (no GitSync owns this flag), then the rollback drill.
    let baseline = run(with(&[
        "set-baseline",
        "sessions",
        "--mode",
        "controller",
        "--percent",
        "100",
        "--reason",
        "start",
    ]))
    .await;
    assert_eq!(row(&baseline, "sessions")[1], "controller", "{baseline}");
    let set = run(with(&[
        "override", "sessions", "--mode", "legacy", "--ttl", "2s", "--reason", "test",
    ]))
    .await;
    let cells = row(&set, "sessions");
    assert_eq!(&cells[1..4], ["legacy", "100", "override"], "{set}");
    assert!(set.contains("test"), "the reason is shown: {set}");

    // During the override a new session is the legacy handlers': the API builds it itself
    // and records itself on it. (The API decides from its flag watch: wait for it to see the
    // override, then create at once, well inside the 2 s.)
    let mut flags_seen = api.flags.subscribe();
    tokio::time::timeout(
        WAIT,
        flags_seen
            .wait_for(|_| api.flags.effective(ResourceType::Sessions).mode == FlagMode::Legacy),
    )
    .await
    .expect("the API sees the override")
    .expect("the API's flag index");
    let (code, created) = call_json(
        api.addr,
        "POST",
        "/api/v1/sessions",
        Some(API_TOKEN),
        &json!({"user": "alice", "template": "firefox"}),
    )
    .await;
    assert_eq!(code, 202, "{created}");
    let name = created["name"]
        .as_str()
        .expect("the new session's name")
        .to_string();
    let sessions = env.api::<Session>();
    let by_legacy = sessions.get(&name).await.expect("the session");
    assert_eq!(
        acted_by(&by_legacy),
        Some("legacy"),
        "{:?}",
        by_legacy.metadata.annotations
    );
    let deployment = env
        .api::<Deployment>()
        .get(&format!("ss-{name}"))
        .await
        .expect("the Deployment the legacy handler built");
    let managers: Vec<_> = deployment
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|f| f.manager.as_deref())
        .collect();
    assert!(managers.contains(&LEGACY_FIELD_MANAGER), "{managers:?}");

    // `flags get` shows the override in force (its own watch), then the baseline back.
    let get = with(&["get", "sessions"]);
    wait_for(
        "flags get to show the override",
        || run(get.clone()),
        |table| row(table, "sessions")[3] == "override",
    )
    .await;
    let back = wait_for(
        "flags get to show the baseline return",
        || run(get.clone()),
        |table| row(table, "sessions")[3] == "baseline",
    )
    .await;
    let cells = row(&back, "sessions");
    assert_eq!(
        &cells[1..5],
        ["controller", "100", "baseline", "controller/100"],
        "{back}"
    );
    assert!(back.contains("legacy/100 (expired)"), "{back}");

    // The baseline back, the controller takes the session over: it claims it (records
    // itself) and brings it to Running.
    let claimed = wait_object(
        &sessions,
        &name,
        "claimed by the controller and Running",
        |s| {
            acted_by(s) == Some("controller")
                && s.status.as_ref().and_then(|st| st.phase.clone()) == Some(SessionPhase::Running)
        },
    )
    .await;
    assert_eq!(claimed.spec.user, "alice");

    // JSON and YAML carry the same view.
    let json_text = run(with(&["get", "sessions", "-o", "json"])).await;
    let parsed: Value = serde_json::from_str(&json_text).expect("JSON output");
    assert_eq!(parsed["source"], "baseline", "{parsed}");
    assert_eq!(parsed["override"]["reason"], "test", "{parsed}");
    let yaml = run(with(&["list", "-o", "yaml"])).await;
    assert!(
        yaml.contains("type: sessions") && yaml.contains("type: quota"),
        "{yaml}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn the_cluster_path_writes_what_the_api_writes_and_refusals_say_why() {
    let env = TestEnv::without_controller("flags-cli-cluster").await;
    let kubeconfig = kubeconfig();
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    let prefix = env.flag_settings().name_prefix;
    let base = [
        "--kubeconfig".to_string(),
        kubeconfig,
        "--flag-name-prefix".into(),
        prefix.clone(),
    ];
    let args = |rest: &[&str]| -> Vec<String> {
        base.iter()
            .cloned()
            .chain(rest.iter().map(|s| s.to_string()))
            .collect()
    };
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        flags(&refs, None).await
    };

    let set = run(args(&[
        "override",
        "idle",
        "--mode",
        "shadow",
        "--percent",
        "20",
        "--ttl",
        "1h",
        "--reason",
        "watch idle",
    ]))
    .await;
    assert!(set.status.success(), "{}", stderr(&set));
    let cells = row(&stdout(&set), "idle");
    assert_eq!(
        &cells[1..4],
        ["shadow", "20", "override"],
        "{}",
        stdout(&set)
    );
    let stored: FeatureFlag = Api::all(env.client.clone())
        .get(&format!("{prefix}idle"))
        .await
        .expect("flag object created");
    let over = stored.spec.override_.expect("override stored");
    assert_eq!(over.reason.as_deref(), Some("watch idle"));
    assert!(
        over.set_by
            .as_deref()
            .is_some_and(|s| s.ends_with("(flags CLI)")),
        "{over:?}"
    );

    let cleared = run(args(&["clear", "idle", "-o", "json"])).await;
    assert!(cleared.status.success(), "{}", stderr(&cleared));
    let view: Value = serde_json::from_slice(&cleared.stdout).expect("JSON");
    assert_eq!(view["override"], Value::Null, "{view}");

    // A flag a GitSync applied keeps its baseline in Git.
    Api::<FeatureFlag>::all(env.client.clone())
        .patch(
            &format!("{prefix}idle"),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"stream.space/gitsync": "team.flags"}}})),
        )
        .await
        .expect("label the flag");
    let refused = run(args(&[
        "set-baseline",
        "idle",
        "--mode",
        "legacy",
        "--reason",
        "x",
    ]))
    .await;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("comes from GitSync team.flags"),
        "{}",
        stderr(&refused)
    );

    // An override needs a reason and a TTL; the API path needs a token.
    let missing = run(args(&[
        "override", "idle", "--mode", "legacy", "--ttl", "1m",
    ]))
    .await;
    assert!(!missing.status.success() && stderr(&missing).contains("--reason"));
    let missing = run(args(&[
        "override", "idle", "--mode", "legacy", "--reason", "x",
    ]))
    .await;
    assert!(!missing.status.success() && stderr(&missing).contains("--ttl"));
    let bad = run(args(&["get", "everything"])).await;
    assert!(!bad.status.success() && stderr(&bad).contains("no flag \"everything\""));
    let no_token = flags(&["--api-url", "http://127.0.0.1:9", "list"], None).await;
    assert!(
        !no_token.status.success() && stderr(&no_token).contains("STREAMSPACE_TOKEN"),
        "{}",
        stderr(&no_token)
    );
    env.cleanup().await;
}
