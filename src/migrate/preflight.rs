//! `migrate preflight`: what a takeover from the old StreamSpace controller would find and do,
//! checked before it starts. Read-only.
//!
//! Sections: the `stream.space` CRDs and their versions; the old controller (its Lease,
//! Deployment and recent status writes, [`crate::session::fence`]); per Session, the adoption
//! plan ([`crate::session::adopt::plan`], the same function the controller applies); the rights
//! of the running identity (SelfSubjectAccessReview for every verb the controller needs); the
//! admission webhooks (their Services have ready endpoints, or their URL answers).
//!
//! A finding is `ok`, `warn` (expected during a takeover, or worth a look) or `FAIL` (a problem:
//! the exit code is 1).

use std::fmt;
use std::time::Duration;

use clap::Args;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, RuleWithOperations, ValidatingWebhookConfiguration,
    WebhookClientConfig,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};

use crate::crd::Session;
use crate::session::adopt::{self, Plan};
use crate::session::fence::{self, FenceSettings};
use crate::session::names;

/// CRDs the controller cannot run without.
const REQUIRED_CRDS: [&str; 2] = ["sessions", "templates"];
/// CRDs this controller adds; missing ones are installed with `crds`.
const OWN_CRDS: [&str; 4] = [
    "quotapolicies",
    "featureflags",
    "gitsyncs",
    "nodeoperations",
];
const GROUP: &str = "stream.space";
const VERSION: &str = "v1alpha1";
/// How long a webhook URL gets to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Args, Debug, Clone)]
pub struct PreflightArgs {
    /// Namespace of the sessions.
    #[arg(long, env = "NAMESPACE", default_value = crate::api::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Namespace of the old controller's leader Lease and Deployment.
    #[arg(long, env = "LEGACY_CONTROLLER_NAMESPACE", default_value = fence::LEGACY_NAMESPACE)]
    pub legacy_controller_namespace: String,
    /// Name of the old controller's leader Lease.
    #[arg(long, env = "LEGACY_CONTROLLER_LEASE", default_value = fence::LEGACY_LEASE_NAME)]
    pub legacy_controller_lease: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    pub section: &'static str,
    pub text: String,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    fn push(&mut self, level: Level, section: &'static str, text: impl Into<String>) {
        self.findings.push(Finding {
            level,
            section,
            text: text.into(),
        });
    }

    pub fn problems(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.level == Level::Fail)
            .count()
    }

    /// 1 when there is a problem, else 0.
    pub fn exit_code(&self) -> i32 {
        i32::from(self.problems() > 0)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            let level = match finding.level {
                Level::Ok => "ok  ",
                Level::Warn => "warn",
                Level::Fail => "FAIL",
            };
            writeln!(f, "{level} {:<10} {}", finding.section, finding.text)?;
        }
        let warnings = self
            .findings
            .iter()
            .filter(|f| f.level == Level::Warn)
            .count();
        writeln!(
            f,
            "preflight: {} problem(s), {warnings} warning(s)",
            self.problems()
        )
    }
}

/// Prints the report; the exit code.
pub async fn run(client: &Client, args: &PreflightArgs) -> anyhow::Result<i32> {
    let report = preflight(client, args).await;
    print!("{report}");
    Ok(report.exit_code())
}

pub async fn preflight(client: &Client, args: &PreflightArgs) -> Report {
    let mut report = Report::default();
    crds(client, &mut report).await;
    old_controller(client, args, &mut report).await;
    sessions(client, args, &mut report).await;
    rights(client, args, &mut report).await;
    webhooks(client, &mut report).await;
    report
}

async fn crds(client: &Client, report: &mut Report) {
    let list = match Api::<CustomResourceDefinition>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => list.items,
        Err(error) => {
            report.push(Level::Fail, "crds", format!("cannot list CRDs: {error}"));
            return;
        }
    };
    for plural in REQUIRED_CRDS.iter().chain(OWN_CRDS.iter()) {
        let name = format!("{plural}.{GROUP}");
        let Some(crd) = list.iter().find(|c| c.name_any() == name) else {
            let (level, hint) = if REQUIRED_CRDS.contains(plural) {
                (Level::Fail, "the controller cannot run without it")
            } else {
                (Level::Warn, "install it with `streamspace-controller crds`")
            };
            report.push(level, "crds", format!("{name}: missing ({hint})"));
            continue;
        };
        report.push_crd(&name, crd);
    }
}

impl Report {
    fn push_crd(&mut self, name: &str, crd: &CustomResourceDefinition) {
        let versions: Vec<String> = crd
            .spec
            .versions
            .iter()
            .map(|v| {
                let mut flags = Vec::new();
                if v.served {
                    flags.push("served");
                }
                if v.storage {
                    flags.push("storage");
                }
                format!("{} ({})", v.name, flags.join(", "))
            })
            .collect();
        let served = crd
            .spec
            .versions
            .iter()
            .any(|v| v.name == VERSION && v.served);
        let level = if served { Level::Ok } else { Level::Fail };
        let missing = if served {
            String::new()
        } else {
            format!("; {VERSION} is not served")
        };
        self.push(
            level,
            "crds",
            format!("{name}: {}{missing}", versions.join(", ")),
        );
    }
}

async fn old_controller(client: &Client, args: &PreflightArgs, report: &mut Report) {
    let settings = fence_settings(args);
    let observation = fence::observe(client, &settings).await;
    let evidence = fence::assess(&observation, Timestamp::now());
    if evidence.is_empty() {
        report.push(
            Level::Ok,
            "old-ctrl",
            format!(
                "not active: no renewed Lease {}/{}, no Deployment of image {} with pods",
                settings.namespace,
                settings.lease_name,
                fence::LEGACY_IMAGE
            ),
        );
    }
    for item in evidence {
        let level = match item {
            fence::Evidence::Unknown(_) => Level::Fail,
            _ => Level::Warn,
        };
        report.push(
            level,
            "old-ctrl",
            format!(
                "active: {item}; sessions stay fenced until it stops (or --allow-legacy-controller)"
            ),
        );
    }
}

fn fence_settings(args: &PreflightArgs) -> FenceSettings {
    FenceSettings {
        namespace: args.legacy_controller_namespace.clone(),
        lease_name: args.legacy_controller_lease.clone(),
        ..FenceSettings::default()
    }
}

async fn sessions(client: &Client, args: &PreflightArgs, report: &mut Report) {
    let ns = args.namespace.as_str();
    let children = ListParams::default().labels(&format!("app={}", names::APP_SESSION));
    let all = ListParams::default();
    let (session_api, deployment_api, service_api, ingress_api) = (
        Api::<Session>::namespaced(client.clone(), ns),
        Api::<Deployment>::namespaced(client.clone(), ns),
        Api::<Service>::namespaced(client.clone(), ns),
        Api::<Ingress>::namespaced(client.clone(), ns),
    );
    let listed = tokio::try_join!(
        session_api.list(&all),
        deployment_api.list(&children),
        service_api.list(&children),
        ingress_api.list(&children),
    );
    let (sessions, deployments, services, ingresses) = match listed {
        Ok(lists) => lists,
        Err(error) => {
            report.push(
                Level::Fail,
                "sessions",
                format!("cannot list sessions and their objects in {ns}: {error}"),
            );
            return;
        }
    };
    if sessions.items.is_empty() {
        report.push(Level::Ok, "sessions", format!("no sessions in {ns}"));
    }
    let window = FenceSettings::default().writer_window;
    let now = Timestamp::now();
    for session in &sessions.items {
        let name = session.name_any();
        let legacy = adopt::legacy_names(&session.spec.user, &session.spec.template);
        let found = adopt::legacy_found(
            deployments
                .items
                .iter()
                .find(|d| d.name_any() == legacy.workload),
            services
                .items
                .iter()
                .find(|s| s.name_any() == legacy.service),
            ingresses
                .items
                .iter()
                .find(|i| i.name_any() == legacy.workload),
        );
        let child = names::child_name(&name);
        let running = session.spec.desired_state() == crate::crd::SessionState::Running;
        let plan = adopt::plan(&name, &child, running, &found);
        let ours = deployments.items.iter().any(|d| d.name_any() == child);
        let writers = fence::session_writers(session.managed_fields(), now, window);
        report.push(
            Level::Ok,
            "sessions",
            session_line(session, &plan, &child, ours),
        );
        for writer in writers {
            report.push(Level::Warn, "sessions", format!("{ns}/{name}: {writer}"));
        }
    }
}

/// `ns/name (user u, template t, running): builds ss-x; Deployment ss-u-t: delete once ...`.
fn session_line(session: &Session, plan: &Plan, child: &str, ours_exists: bool) -> String {
    let spec = &session.spec;
    let head = format!(
        "{}/{} (user {}, template {}, {})",
        session.namespace().unwrap_or_default(),
        session.name_any(),
        spec.user,
        spec.template,
        spec.desired_state().as_str()
    );
    let build = if ours_exists {
        format!("{child} exists")
    } else {
        format!("builds {child}")
    };
    if plan.steps.is_empty() {
        return format!("{head}: {build}; nothing to adopt");
    }
    format!("{head}: {build}; {plan}")
}

/// One resource and the verbs the controller needs on it.
struct Need {
    group: &'static str,
    resource: &'static str,
    subresource: Option<&'static str>,
    verbs: &'static [&'static str],
    /// The old controller's namespace instead of the sessions'.
    legacy_namespace: bool,
    name: Option<String>,
}

fn needs(args: &PreflightArgs) -> Vec<Need> {
    let need = |group, resource, verbs| Need {
        group,
        resource,
        subresource: None,
        verbs,
        legacy_namespace: false,
        name: None,
    };
    let children: &[&str] = &["get", "list", "watch", "create", "patch", "delete"];
    vec![
        need(GROUP, "sessions", &["get", "list", "watch", "patch"]),
        Need {
            subresource: Some("status"),
            ..need(GROUP, "sessions", &["patch"])
        },
        need(GROUP, "templates", &["get", "list", "watch"]),
        need("apps", "deployments", children),
        need("", "services", children),
        need("networking.k8s.io", "ingresses", children),
        need("", "persistentvolumeclaims", &["list", "watch", "create"]),
        need("", "pods", &["list", "watch"]),
        need("events.k8s.io", "events", &["create"]),
        Need {
            legacy_namespace: true,
            name: Some(args.legacy_controller_lease.clone()),
            ..need("coordination.k8s.io", "leases", &["get"])
        },
        Need {
            legacy_namespace: true,
            ..need("apps", "deployments", &["list"])
        },
    ]
}

async fn rights(client: &Client, args: &PreflightArgs, report: &mut Report) {
    let reviews = Api::<SelfSubjectAccessReview>::all(client.clone());
    for need in needs(args) {
        let namespace = if need.legacy_namespace {
            &args.legacy_controller_namespace
        } else {
            &args.namespace
        };
        let mut denied = Vec::new();
        for verb in need.verbs {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        group: Some(need.group.into()),
                        resource: Some(need.resource.into()),
                        subresource: need.subresource.map(Into::into),
                        verb: Some((*verb).into()),
                        namespace: Some(namespace.clone()),
                        name: need.name.clone(),
                        ..ResourceAttributes::default()
                    }),
                    ..SelfSubjectAccessReviewSpec::default()
                },
                ..SelfSubjectAccessReview::default()
            };
            match reviews.create(&PostParams::default(), &review).await {
                Ok(answer) if answer.status.as_ref().is_some_and(|s| s.allowed) => {}
                Ok(_) => denied.push(verb.to_string()),
                Err(error) => denied.push(format!("{verb} (review failed: {error})")),
            }
        }
        let what = format!(
            "{}{}{} in {namespace}",
            need.resource,
            need.subresource
                .map(|s| format!("/{s}"))
                .unwrap_or_default(),
            if need.group.is_empty() {
                String::new()
            } else {
                format!(".{}", need.group)
            }
        );
        if denied.is_empty() {
            report.push(
                Level::Ok,
                "rbac",
                format!("{what}: {}", need.verbs.join(", ")),
            );
        } else {
            report.push(
                Level::Fail,
                "rbac",
                format!("{what}: denied {}", denied.join(", ")),
            );
        }
    }
}

/// A webhook that admits `stream.space` objects, and where it is served.
struct Hook {
    name: String,
    client: WebhookClientConfig,
    fails_closed: bool,
}

async fn webhooks(client: &Client, report: &mut Report) {
    let mut hooks = covering_hooks::<ValidatingWebhookConfiguration>(client, report).await;
    hooks.extend(covering_hooks::<MutatingWebhookConfiguration>(client, report).await);
    if hooks.is_empty() {
        report.push(
            Level::Warn,
            "webhooks",
            "none registered for stream.space (quota and defaults are not enforced)",
        );
    }
    for hook in hooks {
        let (reachable, detail) = reach(client, &hook.client).await;
        let level = match (reachable, hook.fails_closed) {
            (true, _) => Level::Ok,
            // failurePolicy Fail: no Session is admitted while it does not answer.
            (false, true) => Level::Fail,
            (false, false) => Level::Warn,
        };
        report.push(level, "webhooks", format!("{}: {detail}", hook.name));
    }
}

/// A kind of webhook configuration (validating or mutating), reduced to what preflight reads
/// of each of its webhooks: name, where it is served, failure policy and rules.
trait HookConfiguration:
    kube::Resource<DynamicType = (), Scope = kube::core::ClusterResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + fmt::Debug
{
    fn parts(self) -> Vec<HookParts>;
}

type HookParts = (
    String,
    WebhookClientConfig,
    Option<String>,
    Option<Vec<RuleWithOperations>>,
);

macro_rules! hook_configuration {
    ($($kind:ty),*) => {$(
        impl HookConfiguration for $kind {
            fn parts(self) -> Vec<HookParts> {
                self.webhooks
                    .into_iter()
                    .flatten()
                    .map(|w| (w.name, w.client_config, w.failure_policy, w.rules))
                    .collect()
            }
        }
    )*};
}

hook_configuration!(ValidatingWebhookConfiguration, MutatingWebhookConfiguration);

/// The webhooks of every configuration of kind `K` that admit `stream.space` objects; a list
/// that fails is reported and counts as none.
async fn covering_hooks<K: HookConfiguration>(client: &Client, report: &mut Report) -> Vec<Hook> {
    match Api::<K>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => list
            .items
            .into_iter()
            .flat_map(K::parts)
            .filter_map(|(name, client, policy, rules)| {
                covering(name, client, policy.as_deref(), rules.as_deref())
            })
            .collect(),
        Err(error) => {
            report.push(Level::Fail, "webhooks", format!("cannot list: {error}"));
            Vec::new()
        }
    }
}

/// The webhook, when its rules cover `stream.space`.
fn covering(
    name: String,
    client: WebhookClientConfig,
    failure_policy: Option<&str>,
    rules: Option<&[RuleWithOperations]>,
) -> Option<Hook> {
    covers(rules).then(|| Hook {
        name,
        client,
        fails_closed: failure_policy != Some("Ignore"),
    })
}

fn covers(rules: Option<&[RuleWithOperations]>) -> bool {
    rules.into_iter().flatten().any(|rule| {
        rule.api_groups
            .iter()
            .flatten()
            .any(|g| g == GROUP || g == "*")
    })
}

/// Whether the webhook can answer: its Service has ready endpoints, or its URL accepts a
/// connection.
async fn reach(client: &Client, config: &WebhookClientConfig) -> (bool, String) {
    if let Some(service) = &config.service {
        let endpoints = Api::<Endpoints>::namespaced(client.clone(), &service.namespace)
            .get_opt(&service.name)
            .await;
        let ready = match endpoints {
            Ok(Some(endpoints)) => endpoints
                .subsets
                .iter()
                .flatten()
                .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
                .sum::<usize>(),
            Ok(None) => 0,
            Err(error) => {
                return (
                    false,
                    format!(
                        "service {}/{}: cannot read endpoints: {error}",
                        service.namespace, service.name
                    ),
                );
            }
        };
        return (
            ready > 0,
            format!(
                "service {}/{}: {ready} ready endpoint(s)",
                service.namespace, service.name
            ),
        );
    }
    let Some(url) = &config.url else {
        return (false, "no service and no url".into());
    };
    let Some(address) = host_port(url) else {
        return (false, format!("url {url}: cannot tell host and port"));
    };
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&address));
    match connect.await {
        Ok(Ok(_)) => (true, format!("url {url}: answers")),
        Ok(Err(error)) => (false, format!("url {url}: {error}")),
        Err(_) => (
            false,
            format!("url {url}: no answer in {CONNECT_TIMEOUT:?}"),
        ),
    }
}

/// `host:port` of an https URL (port 443 when none is given).
fn host_port(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split(['/', '?']).next()?;
    if authority.is_empty() {
        return None;
    }
    let has_port = authority.rsplit_once(':').is_some_and(|(host, port)| {
        !host.ends_with('[') && port.parse::<u16>().is_ok() && !port.contains(']')
    });
    Some(if has_port {
        authority.to_string()
    } else {
        format!("{authority}:443")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_become_addresses() {
        let rows = [
            ("https://127.0.0.1:8443/validate", Some("127.0.0.1:8443")),
            ("https://hooks.example.org/x", Some("hooks.example.org:443")),
            ("https://[::1]:9443/x", Some("[::1]:9443")),
            ("https://[::1]/x", Some("[::1]:443")),
            ("http://insecure:80/", None),
            ("https:///path", None),
        ];
        for (url, expected) in rows {
            assert_eq!(host_port(url).as_deref(), expected, "{url}");
        }
    }

    #[test]
    fn a_failure_makes_the_exit_code_one() {
        let mut report = Report::default();
        report.push(Level::Ok, "crds", "fine");
        report.push(Level::Warn, "old-ctrl", "active");
        assert_eq!(report.exit_code(), 0, "warnings are not problems");
        report.push(Level::Fail, "rbac", "denied");
        assert_eq!(report.exit_code(), 1);
        let text = report.to_string();
        assert!(text.contains("FAIL rbac       denied"), "{text}");
        assert!(
            text.ends_with("preflight: 1 problem(s), 1 warning(s)\n"),
            "{text}"
        );
    }

    #[test]
    fn session_lines_show_the_plan() {
        let session: Session = serde_json::from_value(serde_json::json!({
            "apiVersion": "stream.space/v1alpha1", "kind": "Session",
            "metadata": {"name": "alice-firefox-1", "namespace": "ns"},
            "spec": {"user": "alice", "template": "firefox", "state": "running"}
        }))
        .expect("session");
        let found = [adopt::LegacyObject {
            kind: adopt::LegacyKind::Deployment,
            name: "ss-alice-firefox".into(),
            belongs_to: Some("alice-firefox-1".into()),
        }];
        let plan = adopt::plan("alice-firefox-1", "ss-alice-firefox-1", true, &found);
        assert_eq!(
            session_line(&session, &plan, "ss-alice-firefox-1", false),
            "ns/alice-firefox-1 (user alice, template firefox, running): builds \
             ss-alice-firefox-1; Deployment ss-alice-firefox: delete once the replacement pod \
             is ready"
        );
        assert_eq!(
            session_line(&session, &Plan::default(), "ss-alice-firefox-1", true),
            "ns/alice-firefox-1 (user alice, template firefox, running): ss-alice-firefox-1 \
             exists; nothing to adopt"
        );
    }
}
