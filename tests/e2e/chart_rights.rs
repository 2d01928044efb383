//! The chart's RBAC proven with the real binaries: `helm install` on the local control plane,
//! then the controller and the API run as local processes with the arguments of the rendered
//! Deployments, authenticated with the tokens of the chart's own ServiceAccounts (created by the
//! token controller), never the admin's. The happy path must work with those rights — session
//! create/hibernate/wake/delete through the API, admission, a Git sync, a drain, a flag flip —
//! with no request refused in either log; rights the chart does not grant are refused.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::{Namespace, Node, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{Kubeconfig, NamedAuthInfo};
use kube::{Client, ResourceExt};
use serde_json::json;
use streamspace_controller::crd::{FeatureFlag, NodeOperation, QuotaPolicy, Session};
use streamspace_controller::devcluster::ADOPTED_NODE_LABEL;

use crate::api_sessions::template;
use crate::chart_install::Release;
use crate::gitops::{Repo, create_gitsync, wait_applied};
use crate::helm::{container_args, container_env, documents, find};

/// A rendered container: its arguments and its literal environment variables.
type Rendered = (Vec<String>, Vec<(String, String)>);
use crate::http_client::{call, call_json};
use crate::support::{
    TEST_ENV_LABEL, TestEnv, WAIT, dev_token, kubeconfig, wait_for, wait_gone, wait_object,
};

/// A binary started as a child process; killed when dropped. Its output goes to a file.
struct Process {
    child: tokio::process::Child,
    log: PathBuf,
}

impl Process {
    fn spawn(args: &[String], env: &[(String, String)], log: PathBuf) -> Process {
        let file = std::fs::File::create(&log).expect("log file");
        let mut command =
            tokio::process::Command::new(env!("CARGO_BIN_EXE_streamspace-controller"));
        command
            .args(args)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("start the binary");
        Process { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the log when the process has exited.
    fn assert_running(&mut self, what: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{what} exited ({status}):\n{}", self.log());
        }
    }
}

impl Drop for Process {
    /// A failing test shows what the process said.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- {}:\n{}", self.log.display(), self.log());
        }
    }
}

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("address")
}

/// The token of a ServiceAccount, from the Secret the token controller creates for it.
async fn account_token(client: &Client, namespace: &str, account: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let account = wait_object(&accounts, account, "the account's token Secret", |a| {
        a.secrets.as_ref().is_some_and(|s| !s.is_empty())
    })
    .await;
    let secret_name = account.secrets.unwrap_or_default()[0]
        .name
        .clone()
        .expect("secret name");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = wait_object(&secrets, &secret_name, "the token in the Secret", |s| {
        s.data.as_ref().is_some_and(|d| d.contains_key("token"))
    })
    .await;
    let bytes = secret.data.unwrap_or_default()["token"].0.clone();
    String::from_utf8(bytes).expect("token is text")
}

/// The admin kubeconfig with its user replaced by the ServiceAccount's token.
fn account_kubeconfig(token: &str, path: &Path) {
    let mut config = Kubeconfig::read_from(kubeconfig()).expect("admin kubeconfig");
    let user = "service-account".to_string();
    config.auth_infos = vec![NamedAuthInfo {
        name: user.clone(),
        auth_info: Some(kube::config::AuthInfo {
            token: Some(token.to_string().into()),
            ..Default::default()
        }),
        other: Default::default(),
    }];
    for context in config
        .contexts
        .iter_mut()
        .filter_map(|c| c.context.as_mut())
    {
        context.user = Some(user.clone());
    }
    let text = serde_json::to_string(&config).expect("kubeconfig serialises");
    std::fs::write(path, text).expect("write kubeconfig");
}

/// The rendered Deployment's arguments with the listen addresses and paths made local, as a
/// kubelet would expand `$(POD_NAMESPACE)`.
fn local_args(
    args: &[String],
    namespace: &str,
    replace: &[(&str, String)],
    kubeconfig: &Path,
) -> Vec<String> {
    let mut out: Vec<String> = args
        .iter()
        .map(|arg| {
            let arg = arg.replace("$(POD_NAMESPACE)", namespace);
            let flag = arg.split('=').next().unwrap_or_default().to_string();
            match replace.iter().find(|(name, _)| *name == flag) {
                Some((name, value)) => format!("{name}={value}"),
                None => arg,
            }
        })
        .collect();
    out.insert(1, format!("--kubeconfig={}", kubeconfig.display()));
    out
}

/// Sends the installed webhook configurations to the local controller (a URL instead of the
/// Service, which has no proxy here); the caBundle stays the controller's to write.
async fn point_webhooks_at(client: &Client, name: &str, addr: SocketAddr) {
    let params = PatchParams::default();
    let patch = |path: &str| {
        Patch::Json::<()>(
            serde_json::from_value(json!([{"op": "replace", "path": "/webhooks/0/clientConfig",
                "value": {"url": format!("https://{addr}{path}")}}]))
            .expect("json patch"),
        )
    };
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .patch(name, &params, &patch("/validate-session"))
        .await
        .expect("patch the validating webhook");
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch(name, &params, &patch("/mutate-session"))
        .await
        .expect("patch the mutating webhook");
}

struct World {
    env: TestEnv,
    release: Release,
    controller: Process,
    api: Process,
    controller_http: SocketAddr,
    api_http: SocketAddr,
    controller_client: Client,
    api_client: Client,
    binding: String,
    node: String,
    /// The GitSync's repository, kept until the end so the GitSync stays healthy.
    repo: Option<Repo>,
    _dir: tempfile::TempDir,
    installed_at: Instant,
}

async fn wait_http_ok(process: &mut Process, what: &str, addr: SocketAddr, path: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        process.assert_running(what);
        let listening = tokio::net::TcpStream::connect(addr).await.is_ok();
        if listening && call(addr, "GET", path, None).await.0 == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} {path} never answered 200:\n{}",
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl World {
    /// Installs a release whose session namespace is a fresh test namespace, with the test's
    /// node-operation label and flag prefix; returns the rendered Deployments' arguments and
    /// literal environment variables.
    async fn install(env: &TestEnv, release: &Release) -> (Rendered, Rendered) {
        // Kubernetes 1.20 has no kubernetes.io/metadata.name label: label as NOTES.txt says.
        let label = json!({"metadata": {"labels": {"stream.space/sessions": release.fullname}}});
        Api::<Namespace>::all(env.client.clone())
            .patch(
                &env.namespace,
                &PatchParams::default(),
                &Patch::Merge(label),
            )
            .await
            .expect("label the session namespace");
        let ns = &env.namespace;
        let sets: Vec<String> = [
            format!("controller.nodeOperations.selector={TEST_ENV_LABEL}={ns}"),
            format!("api.nodeOperationLabels[0]={TEST_ENV_LABEL}={ns}"),
            format!("flags.namePrefix={ns}-"),
            "sessions.ingress.domain=test.local".into(),
            "logJson=false".into(),
            // The test's repositories are file:// URLs.
            "gitops.allowInsecureTransports=true".into(),
        ]
        .into_iter()
        .flat_map(|s| ["--set".to_string(), s])
        .collect();
        release.install(&sets).await;
        let docs = documents(&release.manifest().await);
        let rendered = |name: &str| {
            let deployment = find(&docs, "Deployment", name);
            (container_args(deployment), container_env(deployment))
        };
        (rendered(&release.controller()), rendered(&release.api()))
    }

    async fn start() -> World {
        let env = TestEnv::without_controller("chart-rights").await;
        let release = Release::unique("chart-rights", Some(env.namespace.clone()));
        let installed_at = Instant::now();
        let ((controller_args, controller_env), (api_args, api_env)) =
            World::install(&env, &release).await;
        let client = env.client.clone();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = |name: &str| dir.path().join(format!("{name}.kubeconfig"));
        for account in [release.controller(), release.api()] {
            let token = account_token(&client, &release.namespace, &account).await;
            account_kubeconfig(&token, &config(&account));
        }
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &release.namespace);
        let secret = secrets
            .get(&format!("{}-connection-token", release.fullname))
            .await;
        let event_token = secret.expect("connection token").data.unwrap_or_default()["token"]
            .0
            .clone();
        let event_token = String::from_utf8(event_token).expect("token text");

        let (controller_http, hooks, webhook, api_http) =
            (free_addr(), free_addr(), free_addr(), free_addr());
        point_webhooks_at(&client, &release.fullname, webhook).await;
        let git_cache = dir.path().join("git");
        let local = [
            ("--http-addr", controller_http.to_string()),
            ("--hooks-addr", hooks.to_string()),
            ("--webhook-addr", webhook.to_string()),
            ("--webhook-dns-names", "127.0.0.1".into()),
            ("--git-cache-dir", git_cache.display().to_string()),
        ];
        let controller_config = config(&release.controller());
        let controller_args = local_args(
            &controller_args,
            &release.namespace,
            &local,
            &controller_config,
        );
        let local = [
            ("--http-addr", api_http.to_string()),
            ("--controller-url", format!("http://{controller_http}")),
        ];
        let api_config = config(&release.api());
        let api_args = local_args(&api_args, &release.namespace, &local, &api_config);
        // The Deployments' literal variables, then what the pod would get from the downward API
        // and the Secret.
        let env_vars = |name: &str, rendered: &[(String, String)]| {
            let mut vars: Vec<(String, String)> = rendered.to_vec();
            vars.extend([
                ("POD_NAMESPACE".to_string(), release.namespace.clone()),
                ("POD_NAME".to_string(), format!("{name}-local")),
                ("CONNECTION_EVENT_TOKEN".to_string(), event_token.clone()),
                ("RUST_LOG".to_string(), "info,kube=warn".into()),
            ]);
            vars
        };
        let log = |name: &str| dir.path().join(format!("{name}.log"));
        let mut controller = Process::spawn(
            &controller_args,
            &env_vars("controller", &controller_env),
            log("controller"),
        );
        let mut api = Process::spawn(&api_args, &env_vars("api", &api_env), log("api"));
        wait_http_ok(&mut controller, "controller", controller_http, "/readyz").await;
        wait_http_ok(&mut api, "api", api_http, "/readyz").await;
        let client_of = |path: PathBuf| async move {
            streamspace_controller::dev::client_from(Some(&path))
                .await
                .expect("account client")
        };
        World {
            controller_client: client_of(controller_config).await,
            api_client: client_of(api_config).await,
            binding: format!("{}-admins", release.fullname),
            env,
            release,
            controller,
            api,
            controller_http,
            api_http,
            node: String::new(),
            repo: None,
            _dir: dir,
            installed_at,
        }
    }

    fn ns(&self) -> &str {
        &self.env.namespace
    }

    async fn cleanup(self) {
        let client = self.env.client.clone();
        drop(self.controller);
        drop(self.api);
        let _ = Api::<ClusterRoleBinding>::all(client.clone())
            .delete(&self.binding, &DeleteParams::default())
            .await;
        if !self.node.is_empty() {
            let _ = Api::<Node>::all(client.clone())
                .delete(&self.node, &DeleteParams::default())
                .await;
        }
        self.release.cleanup(&client).await;
        self.env.cleanup().await;
    }
}

fn phase(session: &Session) -> Option<String> {
    let status = serde_json::to_value(&session.status).ok()?;
    status["phase"].as_str().map(String::from)
}

async fn wait_phase(world: &World, name: &str, wanted: &str) {
    wait_object(
        &world.env.api::<Session>(),
        name,
        &format!("{name} {wanted}"),
        |s| phase(s).as_deref() == Some(wanted),
    )
    .await;
}

/// Template, then a session created, hibernated, woken and deleted through the API as alice.
async fn session_lifecycle(world: &World) {
    template(&world.env, "firefox").await;
    let alice = dev_token("alice");
    let body = json!({"user": "alice", "template": "firefox"});
    let (code, reply) = call_json(
        world.api_http,
        "POST",
        "/api/v1/sessions",
        Some(&alice),
        &body,
    )
    .await;
    assert_eq!(code, 202, "{reply}");
    let name = reply["name"].as_str().expect("session name").to_string();
    wait_phase(world, &name, "Running").await;
    println!(
        "helm install -> first session Running: {:.1} s",
        world.installed_at.elapsed().as_secs_f64()
    );
    // The mutating webhook (served with the self-managed certificate) labelled it.
    let session = world
        .env
        .api::<Session>()
        .get(&name)
        .await
        .expect("session");
    assert_eq!(
        session.labels().get("user").map(String::as_str),
        Some("alice")
    );
    let path = format!("/api/v1/sessions/{name}");
    for (state, phase) in [("hibernated", "Hibernated"), ("running", "Running")] {
        let body = json!({"state": state});
        // A 409 asks the client to retry (the session changed under the API); a client does.
        let (code, reply) = wait_for(
            &format!("the API to accept {state}"),
            || call_json(world.api_http, "PATCH", &path, Some(&alice), &body),
            |(code, _)| *code != 409,
        )
        .await;
        assert_eq!(code, 202, "{state}: {reply}");
        wait_phase(world, &name, phase).await;
    }
    let (code, reply) = call(world.api_http, "DELETE", &path, Some(&alice)).await;
    assert!((200..300).contains(&code), "delete: {code} {reply}");
    wait_gone(&world.env.api::<Session>(), &name, "session deleted").await;
}

/// A GitSync applies a QuotaPolicy; the quota webhook then enforces it.
async fn git_sync_and_quota(world: &mut World) {
    let repo = Repo::new();
    let policy = json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "QuotaPolicy",
        "metadata": {"name": "chart-default"},
        "spec": {"subject": {"kind": "Default"}, "limits": {"maxSessions": 1}}
    });
    let commit = repo.commit(&[("quota.yaml", Some(&policy.to_string()))], "quota");
    create_gitsync(
        &world.env,
        "policies",
        json!({"url": repo.url(), "interval": "1s"}),
    )
    .await;
    wait_applied(&world.env, "policies", &commit).await;
    world
        .env
        .api::<QuotaPolicy>()
        .get("chart-default")
        .await
        .expect("policy applied");
    let session = |name: &str| {
        serde_json::from_value::<Session>(json!({
            "apiVersion": "stream.space/v1alpha1", "kind": "Session",
            "metadata": {"name": name},
            "spec": {"user": "bob", "template": "firefox", "state": "running"}
        }))
        .expect("session")
    };
    let sessions = world.env.api::<Session>();
    sessions
        .create(&PostParams::default(), &session("bob-1"))
        .await
        .expect("first session admitted");
    let denied = sessions
        .create(&PostParams::default(), &session("bob-2"))
        .await;
    let message = format!("{denied:?}");
    assert!(message.contains("session quota exceeded"), "{message}");
    world.repo = Some(repo);
}

/// A drain through the API (a NodeOperation) carried out by the controller.
async fn drain(world: &mut World) {
    let client = world.env.client.clone();
    let node_name = format!("{}-node", world.ns());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": node_name, "labels": {
            ADOPTED_NODE_LABEL: "true", "kubernetes.io/hostname": node_name, "chart-test": world.ns()
        }}
    }))
    .expect("node");
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
    world.node = node_name.clone();
    world
        .env
        .create::<Deployment>(json!({
            "metadata": {"name": "web"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                    "nodeSelector": {"chart-test": world.ns()},
                    "containers": [{"name": "web", "image": "busybox"}]}}}
        }))
        .await;
    let pods = world.env.api::<k8s_openapi::api::core::v1::Pod>();
    wait_for(
        "web pod on the node",
        || async {
            pods.list(&kube::api::ListParams::default().labels("app=web"))
                .await
                .map(|l| l.items.len())
                .unwrap_or(0)
        },
        |n| *n == 1,
    )
    .await;
    // The chart's admin role, bound to the development admins' group, allows node actions.
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": world.binding},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
            "name": format!("{}-admin", world.release.fullname)},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "streamspace:admins"}]
    }))
    .expect("binding");
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .expect("bind the admin role");
    // The API server's authorizer sees the binding a moment later, and the API would keep an
    // early refusal for its cache's lifetime: ask the API server first.
    wait_node_rights_of_admins(&client).await;
    let admin = dev_token("streamspace-admin");
    let path = format!("/api/v1/admin/nodes/{node_name}/drain");
    let (code, reply) = call_json(world.api_http, "POST", &path, Some(&admin), &json!({})).await;
    assert_eq!(code, 202, "{reply}");
    let op = reply["name"].as_str().expect("operation name").to_string();
    let ops: Api<NodeOperation> = Api::all(client);
    wait_object(&ops, &op, "the drain to succeed", |o| {
        serde_json::to_value(&o.status)
            .ok()
            .is_some_and(|s| s["phase"] == "Succeeded")
    })
    .await;
}

/// A flag override through the API; the controller reports the new effective mode.
async fn flag_flip(world: &World) {
    let admin = dev_token("streamspace-admin");
    let path = "/api/v1/flags/sessions/override";
    let body = json!({"mode": "shadow", "ttl": "1h", "reason": "chart rights test"});
    let (code, reply) = call_json(world.api_http, "PUT", path, Some(&admin), &body).await;
    assert_eq!(code, 200, "{reply}");
    let flags: Api<FeatureFlag> = Api::all(world.env.client.clone());
    let name = format!("{}-sessions", world.ns());
    wait_object(
        &flags,
        &name,
        "the controller to report the override",
        |f| f.status.as_ref().and_then(|s| s.effective_mode.as_deref()) == Some("shadow"),
    )
    .await;
    let (code, reply) = call(world.api_http, "DELETE", path, Some(&admin)).await;
    assert_eq!(code, 200, "{reply}");
}

fn forbidden<T: std::fmt::Debug>(result: Result<T, kube::Error>, what: &str) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

/// What the chart does not grant is refused by the API server.
async fn refusals(world: &World) {
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "intruder"},
        "spec": {"selector": {"matchLabels": {"app": "x"}},
            "template": {"metadata": {"labels": {"app": "x"}},
                "spec": {"containers": [{"name": "x", "image": "busybox"}]}}}
    }))
    .expect("deployment");
    let pp = PostParams::default();
    for (client, who) in [
        (&world.api_client, "api"),
        (&world.controller_client, "controller"),
    ] {
        for namespace in [world.release.namespace.as_str(), "default"] {
            let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
            forbidden(
                deployments.create(&pp, &deployment).await,
                &format!("{who} creates a Deployment in {namespace}"),
            );
        }
        let secrets: Api<Secret> = Api::namespaced(client.clone(), world.ns());
        forbidden(
            secrets.list(&Default::default()).await,
            &format!("{who} lists Secrets"),
        );
        let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
            Api::namespaced(client.clone(), world.ns());
        forbidden(
            claims.delete("home-alice", &DeleteParams::default()).await,
            &format!("{who} deletes a home claim"),
        );
    }
    let own: Api<Deployment> = Api::namespaced(world.api_client.clone(), &world.release.namespace);
    forbidden(
        own.get(&world.release.controller()).await,
        "api reads the controller's Deployment",
    );
    let tokens: Api<Secret> =
        Api::namespaced(world.controller_client.clone(), &world.release.namespace);
    forbidden(
        tokens
            .get(&format!("{}-connection-token", world.release.fullname))
            .await,
        "controller reads another Secret",
    );
}

#[tokio::test]
async fn chart_service_accounts_run_the_happy_path_and_nothing_more() {
    let mut world = World::start().await;
    session_lifecycle(&world).await;
    git_sync_and_quota(&mut world).await;
    drain(&mut world).await;
    flag_flip(&world).await;
    refusals(&world).await;
    world.controller.assert_running("controller");
    world.api.assert_running("api");
    // Admission went through this controller's webhooks (the API server called them).
    let (_, metrics) = call(world.controller_http, "GET", "/metrics", None).await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    for webhook in ["mutate", "validate"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.contains("admission_requests_total")
                    && l.contains(&format!("webhook=\"{webhook}\""))
                    && !l.ends_with(" 0")),
            "no {webhook} admission in:\n{metrics}"
        );
    }
    for (what, log) in [
        ("controller", world.controller.log()),
        ("api", world.api.log()),
    ] {
        let refused: Vec<&str> = log
            .lines()
            .filter(|l| l.to_lowercase().contains("forbidden"))
            .collect();
        assert!(
            refused.is_empty(),
            "{what} was refused a request it needs:\n{}",
            refused.join("\n")
        );
    }
    world.cleanup().await;
}

/// Waits until the API server's authorizer lets the development admins update nodes.
async fn wait_node_rights_of_admins(client: &Client) {
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    let review: SubjectAccessReview = serde_json::from_value(json!({
        "spec": {
            "user": "streamspace-admin",
            "groups": ["streamspace:admins"],
            "resourceAttributes": {"verb": "update", "resource": "nodes"}
        }
    }))
    .expect("review");
    wait_for(
        "the admin role binding in force",
        || {
            let reviews = reviews.clone();
            let review = review.clone();
            async move {
                reviews
                    .create(&PostParams::default(), &review)
                    .await
                    .ok()
                    .and_then(|r| r.status)
                    .is_some_and(|s| s.allowed)
            }
        },
        |allowed| *allowed,
    )
    .await;
}
