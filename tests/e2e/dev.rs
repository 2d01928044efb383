//! The `dev` subcommand against an existing cluster (`--kubeconfig`): it installs the CRDs
//! and RBAC, applies a directory of examples, turns the directory's `gitops/` into a local
//! Git repository followed by a GitSync, and runs the controller, which brings the example
//! session to Running, until it is stopped. And the binary on its own control plane, used
//! only through the block it prints: create a session, flip a flag, commit to Git, quota.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Instant;

use clap::Parser;
use kube::api::Api;
use serde_json::{Value, json};
use streamspace_controller::crd::{GitSync, QuotaPolicy, Session, SessionPhase, SessionState};
use streamspace_controller::dev::{self, DevArgs, block};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::{TestEnv, WAIT, kubeconfig, wait_object};

#[derive(Parser)]
struct DevCommand {
    #[command(flatten)]
    dev: DevArgs,
}

fn examples(namespace: &str) -> String {
    format!(
        r#"apiVersion: stream.space/v1alpha1
kind: Template
metadata: {{name: desktop, namespace: {namespace}}}
spec:
  displayName: Desktop
  baseImage: lscr.io/linuxserver/webtop:latest
  defaultResources: {{requests: {{memory: 1Gi, cpu: 500m}}}}
  vnc: {{enabled: true, port: 3000}}
---
apiVersion: stream.space/v1alpha1
kind: Session
metadata: {{name: alice-desktop, namespace: {namespace}}}
spec: {{user: alice, template: desktop, state: running}}
"#
    )
}

const GITOPS_QUOTA: &str = r#"apiVersion: stream.space/v1alpha1
kind: QuotaPolicy
metadata: {name: dev-default}
spec:
  subject: {kind: Default}
  limits: {maxSessions: 2}
"#;

#[tokio::test]
async fn dev_applies_the_examples_syncs_their_repository_and_runs_the_controller() {
    let env = TestEnv::without_controller("dev-subcommand").await;
    let ns = env.namespace.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let examples_dir = dir.path().join("examples");
    std::fs::create_dir_all(examples_dir.join("gitops")).expect("mkdir");
    std::fs::write(examples_dir.join("objects.yaml"), examples(&ns)).expect("write");
    std::fs::write(examples_dir.join("README.md"), "not applied").expect("write");
    std::fs::write(examples_dir.join("gitops/quota.yaml"), GITOPS_QUOTA).expect("write");
    let repo = dir.path().join("repo");

    let kubeconfig = kubeconfig();
    let args = DevCommand::try_parse_from([
        "dev".as_ref(),
        "--kubeconfig".as_ref(),
        kubeconfig.as_os_str(),
        "--examples".as_ref(),
        examples_dir.as_os_str(),
        "--gitops-repo".as_ref(),
        repo.as_os_str(),
        "--http-addr".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--api-addr".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--refresh".as_ref(),
        "1".as_ref(),
        "--watch-namespace".as_ref(),
        std::ffi::OsStr::new(&ns),
        "--flag-name-prefix".as_ref(),
        std::ffi::OsStr::new(&format!("{ns}-")),
        "--no-node-operations".as_ref(),
        "--ingress-domain".as_ref(),
        "test.local".as_ref(),
    ])
    .expect("dev arguments parse");
    // `dev` runs until Ctrl-C: poll it beside the checks and drop it once they pass.
    let dev = dev::run(args.dev);
    tokio::pin!(dev);
    tokio::select! {
        result = &mut dev => panic!("dev stopped before the checks passed: {result:?}"),
        () = dev_checks(&env, &repo) => {}
    }
    env.cleanup().await;
}

/// What `dev` must have done: the example Session Running under its controller, and the
/// `gitops/` directory turned into a repository whose QuotaPolicy a GitSync applied.
async fn dev_checks(env: &TestEnv, repo: &std::path::Path) {
    let sessions: Api<Session> = env.api();
    wait_object(&sessions, "alice-desktop", "example session Running", |s| {
        s.status
            .as_ref()
            .is_some_and(|st| st.phase == Some(SessionPhase::Running))
    })
    .await;
    let syncs: Api<GitSync> = env.api();
    let sync = wait_object(&syncs, "examples", "dev GitSync applied a commit", |s| {
        s.status
            .as_ref()
            .is_some_and(|st| st.last_applied_commit.is_some())
    })
    .await;
    assert_eq!(
        sync.spec.url,
        format!("file://{}", repo.display()),
        "the GitSync follows the local repository"
    );
    assert!(
        repo.join(".git").is_dir(),
        "a repository in {}",
        repo.display()
    );
    let policies: Api<QuotaPolicy> = env.api();
    wait_object(&policies, "dev-default", "QuotaPolicy from Git", |_| true).await;
}

#[tokio::test]
async fn dev_reports_bad_examples_and_a_bad_kubeconfig() {
    let env = TestEnv::without_controller("dev-bad-examples").await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: example.com/v1\nkind: Unknown\nmetadata: {name: x}\n",
    )
    .expect("write");
    let kubeconfig = kubeconfig();
    let run = |examples: &std::path::Path, kubeconfig: &std::path::Path| {
        let args = DevCommand::try_parse_from([
            "dev".as_ref(),
            "--kubeconfig".as_ref(),
            kubeconfig.as_os_str(),
            "--examples".as_ref(),
            examples.as_os_str(),
            "--no-gitops".as_ref(),
            "--http-addr".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--api-addr".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--no-node-operations".as_ref(),
            "--watch-namespace".as_ref(),
            std::ffi::OsStr::new(&env.namespace),
        ])
        .expect("dev arguments parse");
        dev::run(args.dev)
    };

    let error = run(dir.path(), &kubeconfig)
        .await
        .expect_err("unknown kind");
    let text = format!("{error:#}");
    assert!(
        text.contains("bad.yaml") && text.contains("does not serve"),
        "{text}"
    );

    std::fs::write(dir.path().join("bad.yaml"), "kind: [unclosed\n").expect("write");
    let error = run(dir.path(), &kubeconfig).await.expect_err("bad YAML");
    assert!(format!("{error:#}").contains("not valid YAML"), "{error:#}");

    let missing = dir.path().join("no-such-kubeconfig");
    let error = run(dir.path(), &missing).await.expect_err("no kubeconfig");
    assert!(
        format!("{error:#}").contains("reading kubeconfig"),
        "{error:#}"
    );
    env.cleanup().await;
}

/// What `dev` printed: the exported variables and the commands, in order.
struct Printed {
    exports: Vec<(String, String)>,
    commands: Vec<String>,
    repo: PathBuf,
    log: PathBuf,
    console: String,
}

fn parse_block(lines: &[String]) -> Printed {
    let mut exports = Vec::new();
    let mut commands = Vec::new();
    let mut repo = None;
    let mut log = None;
    let mut console = None;
    for line in lines {
        if let Some(export) = line.strip_prefix("export ") {
            let assignment = export.split("    #").next().unwrap_or_default().trim();
            let (name, value) = assignment.split_once('=').expect("NAME=value");
            exports.push((name.to_string(), value.to_string()));
        } else if let Some(path) = line.strip_prefix("# GitOps repository: ") {
            let path = path.split(" (").next().unwrap_or_default();
            repo = Some(PathBuf::from(path));
        } else if let Some(path) = line.strip_prefix("# logs: ") {
            log = Some(PathBuf::from(path));
        } else if let Some(url) = line.strip_prefix("# console: ") {
            console = url.split_whitespace().next().map(str::to_string);
        } else if !line.is_empty() && !line.starts_with('#') && line != block::BEGIN {
            commands.push(line.clone());
        }
    }
    Printed {
        exports,
        commands,
        repo: repo.expect("the block names the repository"),
        log: log.expect("the block names the log file"),
        console: console.expect("the block names the console"),
    }
}

impl Printed {
    fn var(&self, name: &str) -> &str {
        self.exports
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{name} is exported"))
    }

    /// Runs one printed command in a shell with the printed exports; its standard output.
    async fn sh(&self, command: &str) -> String {
        let output = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(command)
            .envs(self.exports.iter().map(|(n, v)| (n, v)))
            .output()
            .await
            .expect("run a printed command");
        let out = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{command}: {out}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        out
    }
}

/// Reads lines of `dev`'s output until its block ends.
async fn read_block(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> Vec<String> {
    let mut block = Vec::new();
    let mut started = false;
    let read = async {
        while let Some(line) = lines.next_line().await.expect("read dev's output") {
            started |= line == block::BEGIN;
            if started {
                let end = line == block::END;
                block.push(line);
                if end {
                    return;
                }
            }
        }
        panic!("dev ended before printing its block: {block:?}");
    };
    tokio::time::timeout(WAIT, read)
        .await
        .unwrap_or_else(|_| panic!("no block from dev within {WAIT:?}"));
    block
}

#[tokio::test]
async fn dev_prints_a_block_with_which_a_user_creates_flips_commits_and_meets_the_quota() {
    let started = Instant::now();
    let work = tempfile::tempdir().expect("tempdir");
    let log = work.path().join("dev.log");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_streamspace-controller"))
        .args([
            "dev",
            "--http-addr",
            "127.0.0.1:0",
            "--api-addr",
            "127.0.0.1:0",
        ])
        .args([
            "--webhook-addr",
            "127.0.0.1:0",
            "--refresh",
            "1",
            "-v",
            "--log-file",
        ])
        .arg(&log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start dev");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    // Standard error (progress, and with -v the logs): read throughout, kept for the checks.
    let errors = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut all = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            all.push(line);
        }
        all
    });
    let mut lines = BufReader::new(stdout).lines();
    let printed = parse_block(&read_block(&mut lines).await);
    let ready = started.elapsed();
    // Keep reading (the session table), so dev never blocks on a full pipe.
    let table = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            all.push(line);
        }
        all
    });
    assert_eq!(printed.log, log);
    assert_eq!(printed.commands.len(), 3, "{:?}", printed.commands);
    let (create, flip, commit) = (
        &printed.commands[0],
        &printed.commands[1],
        &printed.commands[2],
    );
    assert!(
        printed.repo.starts_with(std::env::temp_dir()),
        "{:?}",
        printed.repo
    );

    // Commit to Git: the quota goes from 3 to 5 sessions, and the GitSync applies it.
    printed.sh(commit).await;
    let kubeconfig = PathBuf::from(printed.var("KUBECONFIG"));
    let client = dev::client_from(Some(&kubeconfig)).await.expect("client");
    let policies: Api<QuotaPolicy> = Api::namespaced(client.clone(), "streamspace");
    wait_object(
        &policies,
        "gitops-default",
        "the committed quota applied",
        |p| p.spec.limits.max_sessions == Some(5),
    )
    .await;

    // Flip a flag: sessions go back to the legacy handlers for 2 minutes.
    let flipped = printed.sh(flip).await;
    assert!(
        flipped.contains("legacy") && flipped.contains("override"),
        "{flipped}"
    );
    // The API decides with it, not only the command's own table.
    let flag = "curl -sSf -H \"Authorization: Bearer $ADMIN_TOKEN\" \"$STREAMSPACE_API/api/v1/flags/sessions\"";
    let flag: Value = serde_json::from_str(&printed.sh(flag).await).expect("flag JSON");
    assert_eq!(
        (&flag["mode"], &flag["source"], &flag["override"]["reason"]),
        (
            &json!("legacy"),
            &json!("override"),
            &json!("trying a rollback")
        ),
        "{flag}"
    );
    // The console the block names answers.
    let page = format!(
        "curl -sS -o /dev/null -w '%{{http_code}}' '{}'",
        printed.console
    );
    assert_eq!(printed.sh(&page).await, "200", "{}", printed.console);

    // Connecting to alice's hibernated example session wakes it through the controller: the
    // API's connection event carries the token the controller expects (no 401).
    let connect = "curl -sS -H \"Authorization: Bearer $USER_TOKEN\" \"$STREAMSPACE_API/api/v1/sessions/alice-vscode/connect\"";
    let connected: Value = serde_json::from_str(&printed.sh(connect).await).expect("JSON");
    assert_eq!(
        connected["state"], "running",
        "woken by the controller: {connected}"
    );

    // Create sessions as alice until the quota refuses one: the sixth of her running ones.
    let sessions: Api<Session> = Api::namespaced(client.clone(), "streamspace");
    let running = || async {
        sessions
            .list(&Default::default())
            .await
            .expect("list sessions")
            .items
            .into_iter()
            .filter(|s| s.spec.user == "alice" && s.spec.desired_state() == SessionState::Running)
            .count()
    };
    let mut created = Vec::new();
    let refusal = loop {
        let reply: Value = serde_json::from_str(&printed.sh(create).await).expect("JSON reply");
        match reply.get("name").and_then(Value::as_str) {
            Some(name) => created.push(name.to_string()),
            None => break reply,
        }
        assert!(created.len() <= 5, "no refusal after {created:?}");
    };
    let text = refusal.to_string();
    assert_eq!(refusal["error"], "Quota exceeded", "{text}");
    // Refused by the committed count (the example's totals leave room for five sessions).
    let at_refusal = running().await;
    assert_eq!(at_refusal, 5, "refused with {at_refusal} running: {text}");
    assert!(
        text.contains("session quota exceeded: 5/5 sessions active"),
        "refused for the session count: {text}"
    );
    let done = started.elapsed();
    // Measured, not asserted (a shared machine's speed varies): scripts/test.sh prints it.
    let figure = format!(
        "dev ready-to-quota-refusal: {:.1} s (command to block: {:.1} s; command to refusal: {:.1} s; {} sessions created, a flag flipped, a Git commit synced)\n",
        (done - ready).as_secs_f64(),
        ready.as_secs_f64(),
        done.as_secs_f64(),
        created.len()
    );
    print!("{figure}");
    std::fs::write(crate::console::artefact("dev-timing.txt"), &figure).expect("timing figure");

    // Stopping removes what this run created: the whole run directory, with the repository
    // and the bare clone the GitSync fetched into.
    let run_dir = printed
        .repo
        .parent()
        .expect("the run directory")
        .to_path_buf();
    assert!(
        run_dir.join("git-cache").is_dir(),
        "the GitSync's clones in {run_dir:?}"
    );
    let pid = child.id().expect("pid") as i32;
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("dev stops on SIGTERM")
        .expect("exit status");
    assert!(status.success(), "{status}");
    let table = table.await.expect("the table reader");
    let errors = errors.await.expect("the standard error reader");
    assert!(!run_dir.exists(), "{run_dir:?} removed on exit");
    let logged = std::fs::read_to_string(&log).expect("log file");
    assert!(
        logged.contains("connection event delivered") && !logged.contains("answered 401"),
        "connection events delivered, none refused:\n{logged}"
    );
    // -v: the log lines are on standard error too.
    assert!(
        errors
            .iter()
            .any(|l| l.contains("connection event delivered") && l.contains(" INFO ")),
        "with -v the logs on standard error: {errors:?}"
    );
    // A pipe gets the session table plainly: no cursor movement or clearing.
    assert!(
        table.iter().any(|l| l.starts_with("NAMESPACE")),
        "a session table: {table:?}"
    );
    assert!(
        table.iter().all(|l| !l.contains("\x1b[")),
        "no terminal escapes on a pipe: {table:?}"
    );
}
