//! High availability with real `controller` processes (the built binary): leader election,
//! takeover after SIGKILL, push hooks received by a follower, and the supervisor ending the
//! process when a listener cannot bind or a task fails.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Instant;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use streamspace_controller::crd::{GitSync, QuotaPolicy, Session, SessionPhase};
use streamspace_controller::gitops::sync_request::SYNC_REQUESTED_ANNOTATION;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::gitops::{
    Repo, create_gitsync, max_sessions, post, quota_policy, sign, wait_applied, webhook_secret,
};
use crate::support::{TEST_ENV_LABEL, TestEnv, kubeconfig_path, wait_for, wait_object};

/// Lease settings of these tests: short, so a takeover takes seconds.
const LEASE_DURATION: &str = "4s";
const RENEW_DEADLINE: &str = "3s";

/// A free loopback port (bound and released; the process binds it again at once).
fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// One `streamspace-controller controller` process; killed when dropped.
struct Process {
    child: tokio::process::Child,
    http: SocketAddr,
    hooks: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Process {
    /// Starts a controller watching the env's namespace, with lease settings of its own (used
    /// with `--leader-elect` in `extra`) and `http` as --http-addr (a free port when `None`).
    fn start(env: &TestEnv, name: &str, http: Option<SocketAddr>, extra: &[&str]) -> Process {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join(format!("{name}.log"));
        let (http, hooks) = (http.unwrap_or_else(free_addr), free_addr());
        let ns = env.namespace.as_str();
        let mut args: Vec<String> = [
            "controller",
            "--watch-namespace",
            ns,
            "--ingress-domain",
            "test.local",
            "--flag-name-prefix",
            &format!("{ns}-"),
            "--node-operation-selector",
            &format!("{TEST_ENV_LABEL}={ns}"),
            "--lease-name",
            &format!("{ns}-lease"),
            "--lease-namespace",
            ns,
            "--lease-duration",
            LEASE_DURATION,
            "--lease-renew-deadline",
            RENEW_DEADLINE,
            // The test's GitSyncs live in its namespace and follow file:// repositories.
            "--gitsync-namespaces",
            ns,
            "--gitsync-allow-insecure-transports",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(["--http-addr".into(), http.to_string()]);
        args.extend(["--hooks-addr".into(), hooks.to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let file = std::fs::File::create(&log).expect("log file");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_streamspace-controller"))
            .args(&args)
            .env("KUBECONFIG", kubeconfig_path())
            .env("GIT_CACHE_DIR", dir.path().join("git"))
            .env("POD_NAME", name)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("start the controller binary");
        Process {
            child,
            http,
            hooks,
            log,
            _dir: dir,
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process's `/metrics`, empty when it does not answer.
    async fn metrics(&self) -> String {
        get(self.http, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    async fn is_leader(&self) -> bool {
        metric(&self.metrics().await, "streamspace_leader") == Some(1.0)
    }

    async fn writes(&self) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .filter(|l| l.starts_with("streamspace_controller_api_writes_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits for the process to exit (a hang guard only; nothing is asserted about time).
    async fn exit(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(crate::support::WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the controller did not exit; log:\n{}", self.output()))
            .expect("wait for the controller")
    }
}

impl Drop for Process {
    /// A failing test shows the last lines of each process's log (the file goes with the test's
    /// temporary directory).
    fn drop(&mut self) {
        if std::thread::panicking() {
            let output = self.output();
            let lines: Vec<&str> = output.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            eprintln!("--- last lines of {} ---\n{tail}", self.log.display());
        }
    }
}

/// `GET path` over plain HTTP/1.1: (status, body).
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// Value of an unlabelled metric line.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.split(' ').next() == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Starts two controllers and waits until exactly one reports itself leader: (leader, follower).
async fn elect(env: &TestEnv) -> (Process, Process) {
    let a = Process::start(env, "replica-a", None, &["--leader-elect"]);
    let b = Process::start(env, "replica-b", None, &["--leader-elect"]);
    let leaders = wait_for(
        "one of two replicas to become leader",
        || async { (a.is_leader().await, b.is_leader().await) },
        |(a, b)| a ^ b,
    )
    .await;
    // Both serve /readyz once their caches have loaded, leader or not.
    for p in [&a, &b] {
        wait_for(
            "both replicas ready",
            || async { get(p.http, "/readyz").await.map(|(s, _)| s) },
            |s| *s == Some(200),
        )
        .await;
    }
    if leaders.0 { (a, b) } else { (b, a) }
}

fn template() -> serde_json::Value {
    json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "Template",
        "metadata": {"name": "desk"},
        "spec": {"displayName": "Desk", "baseImage": "lscr.io/linuxserver/firefox:latest"}
    })
}

fn running(session: &Session) -> bool {
    session.status.as_ref().and_then(|s| s.phase.clone()) == Some(SessionPhase::Running)
}

#[tokio::test]
async fn ha_only_the_leader_acts_and_a_follower_takes_over_after_sigkill() {
    const SESSIONS: usize = 100;
    let env = TestEnv::without_controller("ha-takeover").await;
    let _: streamspace_controller::crd::Template = env.create(template()).await;
    let (mut leader, follower) = elect(&env).await;

    // Create the sessions while the leader works; kill it part-way.
    let sessions: Api<Session> = env.api();
    let creator = tokio::spawn({
        let sessions = sessions.clone();
        async move {
            for i in 0..SESSIONS {
                let body: Session = serde_json::from_value(json!({
                    "apiVersion": "stream.space/v1alpha1", "kind": "Session",
                    "metadata": {"name": format!("s-{i}")},
                    "spec": {"user": format!("user-{}", i % 10), "template": "desk", "state": "running"}
                }))
                .expect("session");
                sessions
                    .create(&PostParams::default(), &body)
                    .await
                    .expect("create session");
            }
        }
    });
    let list = || async {
        sessions
            .list(&ListParams::default())
            .await
            .map(|l| l.items.iter().filter(|s| running(s)).count())
            .unwrap_or(0)
    };
    wait_for("the leader to bring sessions to Running", list, |n| {
        *n >= 10
    })
    .await;
    // Only one acts: the leader has written, the follower has not.
    assert!(leader.writes().await > 0.0, "the leader writes");
    assert_eq!(follower.writes().await, 0.0, "the follower writes nothing");
    assert!(!follower.is_leader().await);

    leader.child.start_kill().expect("SIGKILL the leader");
    let killed = Instant::now();
    let _ = leader.exit().await;
    wait_for(
        "the follower to take the lease",
        || follower.is_leader(),
        |l| *l,
    )
    .await;
    let takeover = killed.elapsed();
    println!(
        "takeover after SIGKILL: {:.2}s (lease duration {LEASE_DURATION}, renew deadline {RENEW_DEADLINE})",
        takeover.as_secs_f64()
    );
    creator.await.expect("every session created");
    wait_for("all sessions Running", list, |n| *n == SESSIONS).await;
    assert!(follower.writes().await > 0.0, "the new leader acted");

    // No duplicates: one Deployment and one Service per session.
    let per_session = |labels: Vec<std::collections::BTreeMap<String, String>>| {
        let mut names: Vec<String> = labels
            .iter()
            .filter_map(|l| l.get("session").cloned())
            .collect();
        names.sort();
        let total = names.len();
        names.dedup();
        (total, names.len())
    };
    let deployments = env
        .api::<Deployment>()
        .list(&ListParams::default())
        .await
        .expect("list");
    let services = env
        .api::<Service>()
        .list(&ListParams::default())
        .await
        .expect("list");
    let labels = |items: Vec<std::collections::BTreeMap<String, String>>| per_session(items);
    assert_eq!(
        labels(
            deployments
                .items
                .into_iter()
                .map(|d| d.metadata.labels.unwrap_or_default())
                .collect()
        ),
        (SESSIONS, SESSIONS),
        "one Deployment per session"
    );
    assert_eq!(
        labels(
            services
                .items
                .into_iter()
                .map(|s| s.metadata.labels.unwrap_or_default())
                .collect()
        ),
        (SESSIONS, SESSIONS),
        "one Service per session"
    );
    drop(follower);
    env.cleanup().await;
}

#[tokio::test]
async fn ha_a_push_hook_sent_to_the_follower_is_synced_by_the_leader() {
    let env = TestEnv::without_controller("ha-hook").await;
    let secret = "ha-hook-s3cret";
    webhook_secret(&env, secret).await;
    let repo = Repo::new();
    let first = repo.commit(&[("quota.yaml", Some(&quota_policy("team", 1)))], "v1");
    create_gitsync(
        &env,
        "quotas",
        json!({"url": repo.url(), "interval": "1h", "webhookSecretRef": {"name": "hook"}}),
    )
    .await;
    let (leader, follower) = elect(&env).await;
    wait_applied(&env, "quotas", &first).await;

    // The hooks listener serves the hooks and nothing else.
    let on_hooks = get(follower.hooks, "/metrics").await.map(|(s, _)| s);
    assert_eq!(on_hooks, Some(404), "no /metrics on the hooks listener");

    let second = repo.commit(&[("quota.yaml", Some(&quota_policy("team", 2)))], "v2");
    let path = format!("/hooks/git/{}/quotas", env.namespace);
    let body = br#"{"ref":"refs/heads/main"}"#;
    let signature = format!("sha256={}", sign(secret.as_bytes(), body));
    let headers = [("X-Hub-Signature-256", signature)];
    let on_http = post(follower.http, &path, &headers, body).await;
    assert_eq!(on_http, 404, "no hooks on the http listener");
    let status = post(follower.hooks, &path, &headers, body).await;
    assert_eq!(status, 202);
    let marked = env.api::<GitSync>().get("quotas").await.expect("gitsync");
    assert!(
        marked
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(SYNC_REQUESTED_ANNOTATION),
        "the follower marked the GitSync"
    );
    // The interval is an hour: only the request can make the leader fetch the new commit.
    wait_applied(&env, "quotas", &second).await;
    wait_object(
        &env.api::<QuotaPolicy>(),
        "team",
        "the policy at version 2",
        |p| max_sessions(p) == Some(2),
    )
    .await;
    assert_eq!(follower.writes().await, 0.0, "the follower applied nothing");
    assert!(leader.is_leader().await);
    drop((leader, follower));
    env.cleanup().await;
}

#[tokio::test]
async fn ha_a_taken_http_port_ends_the_process_naming_the_address() {
    let env = TestEnv::without_controller("ha-port").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let bound = taken.local_addr().expect("addr");
    let addr = bound.to_string();
    let mut process = Process::start(&env, "port", Some(bound), &[]);
    let status = process.exit().await;
    let output = process.output();
    assert!(!status.success(), "exit status {status}; log:\n{output}");
    assert!(
        output.contains(&addr),
        "the message names {addr}:\n{output}"
    );
    assert!(
        output.contains("--http-addr"),
        "the message names the flag:\n{output}"
    );
    drop(taken);
    env.cleanup().await;
}

#[tokio::test]
async fn ha_a_leader_that_loses_its_lease_stops_and_exits() {
    let env = TestEnv::without_controller("ha-lost").await;
    let mut process = Process::start(&env, "lost", None, &["--leader-elect"]);
    wait_for("the replica to lead", || process.is_leader(), |l| *l).await;
    // Someone else takes the lease: the replica must stop acting and exit non-zero.
    let leases: Api<Lease> = env.api();
    let lease = format!("{}-lease", env.namespace);
    leases
        .patch(
            &lease,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holderIdentity": "intruder"}})),
        )
        .await
        .expect("take the lease");
    let status = process.exit().await;
    let output = process.output();
    assert!(!status.success(), "exit status {status}; log:\n{output}");
    assert!(
        output.contains("leader election"),
        "names the task:\n{output}"
    );
    assert!(
        output.contains("lost the leader lease"),
        "says why:\n{output}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn ha_the_api_process_is_ready_once_loaded_and_fails_on_a_taken_port() {
    let env = TestEnv::without_controller("ha-api").await;
    let start = |addr: SocketAddr, log: &std::path::Path| {
        let file = std::fs::File::create(log).expect("log file");
        tokio::process::Command::new(env!("CARGO_BIN_EXE_streamspace-controller"))
            .args(["api", "--namespace", &env.namespace, "--auth", "static"])
            .args(["--http-addr", &addr.to_string()])
            .env("API_TOKEN", "ha-api-token")
            .env("KUBECONFIG", kubeconfig_path())
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("start the api binary")
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = free_addr();
    let _api = start(addr, &dir.path().join("api.log"));
    wait_for(
        "the api's /readyz",
        || async { get(addr, "/readyz").await.map(|(s, _)| s) },
        |s| *s == Some(200),
    )
    .await;

    // A second api on the same port: non-zero exit, the address in the message.
    let log = dir.path().join("taken.log");
    let mut second = start(addr, &log);
    let status = tokio::time::timeout(crate::support::WAIT, second.wait())
        .await
        .expect("the second api exits")
        .expect("wait");
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "exit status {status}; log:\n{output}");
    assert!(
        output.contains(&addr.to_string()),
        "names {addr}:\n{output}"
    );
    env.cleanup().await;
}
