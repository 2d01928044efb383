//! The `dev` subcommand against an existing cluster (`--kubeconfig`): it installs the CRDs
//! and RBAC, applies a directory of examples, turns the directory's `gitops/` into a local
//! Git repository followed by a GitSync, and runs the controller, which brings the example
//! session to Running, until it is stopped.

use clap::Parser;
use kube::api::Api;
use streamspace_controller::crd::{GitSync, QuotaPolicy, Session, SessionPhase};
use streamspace_controller::dev::{self, DevArgs};

use crate::support::{TestEnv, kubeconfig, wait_object};

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
