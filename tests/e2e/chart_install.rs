//! The chart against the real control plane: `helm install`, `helm upgrade` (a values change),
//! `helm rollback` and `helm uninstall`, and the objects each leaves. The image does not run
//! here (the node simulator only marks pods Running); `chart_rights` runs the processes.

use std::sync::atomic::{AtomicU32, Ordering};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind};
use kube::{Client, ResourceExt};

use crate::helm::{Run, chart_dir, helm_async};
use crate::support::{client, kubeconfig, wait_gone};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A release of the chart in a namespace of its own, with a session namespace of its own.
pub struct Release {
    pub name: String,
    /// `<release>-streamspace-controller`, the prefix of every object.
    pub fullname: String,
    pub namespace: String,
    pub sessions: String,
}

impl Release {
    /// Names no other test (or test process) uses.
    pub fn unique(prefix: &str, sessions: Option<String>) -> Release {
        let id = format!(
            "{}-{}",
            std::process::id() % 100_000,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let name = format!("{prefix}-{id}");
        Release {
            fullname: format!("{name}-streamspace-controller"),
            namespace: format!("{name}-system"),
            sessions: sessions.unwrap_or_else(|| format!("{name}-sessions")),
            name,
        }
    }

    /// Runs `helm <verb> <release> ...` against the test cluster.
    pub async fn helm(&self, verb: &str, extra: &[String]) -> Run {
        let mut args = vec![
            verb.to_string(),
            self.name.clone(),
            "--namespace".into(),
            self.namespace.clone(),
        ];
        args.extend(extra.iter().cloned());
        helm_async(args, Some(kubeconfig())).await
    }

    /// `helm get manifest`: what the release applied.
    pub async fn manifest(&self) -> String {
        let args = [
            "get",
            "manifest",
            &self.name,
            "--namespace",
            &self.namespace,
        ]
        .map(String::from)
        .to_vec();
        let run = helm_async(args, Some(kubeconfig())).await;
        assert!(run.ok, "helm get manifest: {}", run.stderr);
        run.stdout
    }

    /// `helm install` with the session namespace and `sets`; panics with helm's message.
    pub async fn install(&self, sets: &[String]) -> Run {
        let mut extra = vec![
            chart_dir().to_string_lossy().into_owned(),
            "--create-namespace".into(),
            // The harness installed the CRDs, shared by every test of the run. (Helm 4 applies
            // crds/ server-side, which Kubernetes 1.20 refuses: it does not know the CEL rules;
            // docs/DEPLOYMENT_GUIDE.md, "CRDs on clusters older than 1.25".)
            "--skip-crds".into(),
            "--set".into(),
            format!("sessions.namespace={}", self.sessions),
        ];
        extra.extend(sets.iter().cloned());
        let run = self.helm("install", &extra).await;
        assert!(run.ok, "helm install: {}{}", run.stdout, run.stderr);
        run
    }

    pub fn controller(&self) -> String {
        format!("{}-controller", self.fullname)
    }

    pub fn api(&self) -> String {
        format!("{}-api", self.fullname)
    }

    /// Uninstalls and deletes the namespaces (without waiting).
    pub async fn cleanup(&self, client: &Client) {
        let _ = self.helm("uninstall", &[]).await;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        for namespace in [&self.namespace, &self.sessions] {
            let _ = namespaces.delete(namespace, &DeleteParams::default()).await;
        }
    }
}

async fn replicas(client: &Client, release: &Release, name: &str) -> Option<i32> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &release.namespace);
    deployments
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("deployment {name}: {e}"))
        .spec
        .and_then(|s| s.replicas)
}

async fn failure_policy(client: &Client, release: &Release) -> Option<String> {
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    configs
        .get(&release.fullname)
        .await
        .expect("validating webhook configuration")
        .webhooks
        .unwrap_or_default()
        .first()
        .and_then(|w| w.failure_policy.clone())
}

async fn token(client: &Client, release: &Release) -> Vec<u8> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &release.namespace);
    let name = format!("{}-connection-token", release.fullname);
    let secret = secrets.get(&name).await.expect("connection token Secret");
    secret
        .data
        .and_then(|d| d.get("token").map(|t| t.0.clone()))
        .expect("token")
}

fn revision(status: &Run) -> serde_json::Value {
    let parsed: serde_json::Value = serde_json::from_str(&status.stdout)
        .unwrap_or_else(|e| panic!("helm status JSON: {e}: {}", status.stdout));
    parsed["version"].clone()
}

/// Every object a default installation is expected to leave, by kind and name.
async fn assert_installed(client: &Client, release: &Release) {
    let ns = &release.namespace;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    for name in [release.controller(), release.api()] {
        let deployment = deployments.get(&name).await.expect("deployment");
        let pod = deployment
            .spec
            .expect("spec")
            .template
            .spec
            .expect("pod spec");
        assert_eq!(pod.service_account_name.as_deref(), Some(name.as_str()));
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    for name in [release.controller(), release.api()] {
        accounts.get(&name).await.expect("service account");
        services.get(&name).await.expect("service");
    }
    for suffix in ["webhook", "hooks"] {
        services
            .get(&format!("{}-{suffix}", release.fullname))
            .await
            .expect("service");
    }
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    for name in [
        release.controller(),
        release.api(),
        format!("{}-admin", release.fullname),
    ] {
        cluster_roles.get(&name).await.expect("cluster role");
    }
    let session_roles: Api<Role> = Api::namespaced(client.clone(), &release.sessions);
    for name in [release.controller(), release.api()] {
        session_roles
            .get(&name)
            .await
            .expect("session namespace role");
    }
    let own_roles: Api<Role> = Api::namespaced(client.clone(), ns);
    own_roles
        .get(&format!("{}-self", release.controller()))
        .await
        .expect("release namespace role");
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config = mutating.get(&release.fullname).await.expect("mutating");
    let selector = config.webhooks.unwrap_or_default()[0]
        .namespace_selector
        .clone()
        .expect("namespace selector");
    // The test cluster is Kubernetes 1.20: no kubernetes.io/metadata.name label yet.
    assert_eq!(
        selector
            .match_labels
            .unwrap_or_default()
            .get("stream.space/sessions"),
        Some(&release.fullname)
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let sessions = namespaces
        .get(&release.sessions)
        .await
        .expect("session namespace");
    assert_eq!(
        sessions.labels().get("stream.space/sessions"),
        Some(&release.fullname)
    );
    // policy/v1 is not served by 1.20: the chart chose v1beta1 from the cluster's capabilities.
    let budgets = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("policy", "v1beta1", "PodDisruptionBudget"),
        "poddisruptionbudgets",
    );
    let budgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &budgets);
    for name in [release.controller(), release.api()] {
        budgets.get(&name).await.expect("pod disruption budget");
    }
}

/// What a revision of the release must have left: (controller replicas, quota webhook
/// failurePolicy, helm revision), and the connection token unchanged.
async fn assert_revision(
    client: &Client,
    release: &Release,
    expected: (i32, &str, i64),
    token_was: &[u8],
) {
    let (controller_replicas, policy, number) = expected;
    assert_eq!(
        replicas(client, release, &release.controller()).await,
        Some(controller_replicas)
    );
    assert_eq!(
        failure_policy(client, release).await.as_deref(),
        Some(policy)
    );
    // The generated connection token survives upgrades (looked up, not re-generated).
    assert_eq!(token(client, release).await, token_was);
    let status = release
        .helm("status", &["--output".into(), "json".into()])
        .await;
    assert_eq!(revision(&status), number);
}

fn succeeded(run: &Run, what: &str) {
    assert!(run.ok, "helm {what}: {}{}", run.stdout, run.stderr);
}

#[tokio::test]
async fn helm_install_upgrade_rollback_and_uninstall() {
    let client = client().await;
    let release = Release::unique("chart-install", None);
    let sets = vec!["--set".to_string(), "sessions.createNamespace=true".into()];
    let install = release.install(&sets).await;
    assert!(
        install.stdout.contains("Next steps"),
        "NOTES: {}",
        install.stdout
    );
    assert_installed(&client, &release).await;
    let first_token = token(&client, &release).await;
    assert_revision(&client, &release, (2, "Fail", 1), &first_token).await;

    let chart = chart_dir().to_string_lossy().into_owned();
    let changes = ["controller.replicas=3", "webhook.failurePolicy=Ignore"];
    let mut upgrade = vec![chart, "--reuse-values".into()];
    upgrade.extend(
        changes
            .iter()
            .flat_map(|c| ["--set".to_string(), c.to_string()]),
    );
    succeeded(&release.helm("upgrade", &upgrade).await, "upgrade");
    assert_revision(&client, &release, (3, "Ignore", 2), &first_token).await;

    succeeded(&release.helm("rollback", &["1".into()]).await, "rollback");
    assert_revision(&client, &release, (2, "Fail", 3), &first_token).await;
    assert_installed(&client, &release).await;

    succeeded(
        &release.helm("uninstall", &["--wait".into()]).await,
        "uninstall",
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &release.namespace);
    wait_gone(
        &deployments,
        &release.controller(),
        "controller deployment gone",
    )
    .await;
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    wait_gone(&cluster_roles, &release.controller(), "cluster role gone").await;
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    wait_gone(&validating, &release.fullname, "webhook configuration gone").await;
    // The session namespace (home claims) stays, and so do the CRDs.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let kept = namespaces
        .get(&release.sessions)
        .await
        .expect("session namespace kept");
    assert!(kept.metadata.deletion_timestamp.is_none());
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.get("sessions.stream.space").await.expect("CRD kept");
    release.cleanup(&client).await;
}
