//! `migrate verify`: does every Session's status say what its children show?
//!
//! [`mismatches`] is the pure comparison of one session's stored status (phase, podName, url,
//! observedGeneration) with the facts of its children: the Deployments labelled with the
//! session (their replicas), its ready pods and its Ingress hosts. Children are found by the
//! `session=<name>` label that both this controller's and the old controller's objects carry,
//! so a session built under either naming is checked, and two Deployments of one session are
//! reported. [`run`] loads the objects and prints one line per session.

use std::collections::BTreeMap;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use crate::crd::{Session, SessionPhase, SessionState};
use crate::ownership::Side;
use crate::ownership::handoff::ACTED_BY_ANNOTATION;
use crate::session::names::APP_SESSION;

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Only sessions of this namespace (default: every namespace).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

/// One Deployment of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeploymentFacts {
    pub name: String,
    /// `spec.replicas` (1 when unset, as Kubernetes defaults it).
    pub replicas: i32,
}

/// What verify compares for one session.
#[derive(Clone, Debug)]
pub struct SessionFacts {
    pub desired: SessionState,
    pub generation: Option<i64>,
    pub phase: Option<SessionPhase>,
    pub pod_name: Option<String>,
    pub url: Option<String>,
    pub observed_generation: Option<i64>,
    /// The legacy API acted last: its status follower does not write observedGeneration.
    pub legacy: bool,
    pub deployments: Vec<DeploymentFacts>,
    /// Names of the session's pods that are ready and not being deleted.
    pub ready_pods: Vec<String>,
    /// Hosts of the session's Ingresses (empty with Ingresses switched off).
    pub ingress_hosts: Vec<String>,
}

/// Every way the stored status disagrees with the children; empty when it agrees.
pub fn mismatches(facts: &SessionFacts) -> Vec<String> {
    let mut found = Vec::new();
    match (facts.observed_generation, facts.generation) {
        (Some(observed), Some(generation)) if observed != generation => found.push(format!(
            "status.observedGeneration {observed} is not metadata.generation {generation}"
        )),
        (None, Some(_)) if !facts.legacy => {
            found.push("status.observedGeneration is missing".to_string());
        }
        _ => {}
    }
    if facts.deployments.len() > 1 {
        let names: Vec<&str> = facts.deployments.iter().map(|d| d.name.as_str()).collect();
        found.push(format!(
            "{} Deployments ({}), one expected",
            names.len(),
            names.join(", ")
        ));
    }
    if facts.ready_pods.len() > 1 {
        found.push(format!(
            "{} ready pods ({}), one expected",
            facts.ready_pods.len(),
            facts.ready_pods.join(", ")
        ));
    }
    let replicas: i32 = facts.deployments.iter().map(|d| d.replicas).sum();
    let deployment = || {
        facts
            .deployments
            .first()
            .map_or_else(String::new, |d| format!("Deployment {} ", d.name))
    };
    let phase = facts.phase.as_ref();
    let phase_text = phase.map_or("(none)", SessionPhase::as_str);
    match &facts.desired {
        SessionState::Running => {
            if facts.deployments.is_empty() {
                found.push(format!(
                    "spec.state running, phase {phase_text}, but no Deployment"
                ));
            } else if replicas == 0 {
                found.push(format!(
                    "spec.state running but {}has 0 replicas",
                    deployment()
                ));
            } else if replicas > 1 {
                found.push(format!(
                    "{}has {replicas} replicas, 1 expected",
                    deployment()
                ));
            }
            running_phase(facts, phase, phase_text, &mut found);
        }
        SessionState::Hibernated => {
            if replicas > 0 {
                found.push(format!(
                    "spec.state hibernated but {}has {replicas} replicas",
                    deployment()
                ));
            }
            stopped_phase(facts, SessionPhase::Hibernated, phase_text, &mut found);
        }
        SessionState::Terminated => {
            if !facts.deployments.is_empty() {
                found.push(format!(
                    "spec.state terminated but {}still exists",
                    deployment()
                ));
            }
            stopped_phase(facts, SessionPhase::Terminated, phase_text, &mut found);
        }
        SessionState::Unknown(state) => found.push(format!("spec.state {state:?} is unknown")),
    }
    if let Some(url) = &facts.url
        && !facts.ingress_hosts.is_empty()
        && !facts
            .ingress_hosts
            .iter()
            .any(|host| *url == format!("https://{host}"))
    {
        found.push(format!(
            "status.url {url} does not match the Ingress host {}",
            facts.ingress_hosts.join(", ")
        ));
    }
    found
}

fn running_phase(
    facts: &SessionFacts,
    phase: Option<&SessionPhase>,
    phase_text: &str,
    found: &mut Vec<String>,
) {
    match phase {
        Some(SessionPhase::Running) => {
            match &facts.pod_name {
                None => found.push("phase Running but status.podName is empty".into()),
                Some(pod) if !facts.ready_pods.contains(pod) => found.push(format!(
                    "phase Running but status.podName {pod} is not a ready pod of the session \
                     (ready: {})",
                    list_or_none(&facts.ready_pods)
                )),
                Some(_) => {}
            }
            if facts.url.is_none() {
                found.push("phase Running but status.url is empty".into());
            }
        }
        Some(SessionPhase::Hibernated | SessionPhase::Terminated) => {
            found.push(format!("spec.state running but phase {phase_text}"));
        }
        Some(SessionPhase::Unknown(other)) => {
            found.push(format!("phase {other:?} is not a known phase"));
        }
        Some(SessionPhase::Pending | SessionPhase::Failed) | None => {
            if let Some(pod) = facts.ready_pods.first() {
                found.push(format!("phase {phase_text} but pod {pod} is ready"));
            }
        }
    }
}

fn stopped_phase(
    facts: &SessionFacts,
    wanted: SessionPhase,
    phase_text: &str,
    found: &mut Vec<String>,
) {
    if facts.phase.as_ref() != Some(&wanted) {
        found.push(format!(
            "spec.state {} but phase {phase_text}",
            facts.desired
        ));
        return;
    }
    if let Some(pod) = facts.ready_pods.first() {
        found.push(format!("phase {phase_text} but pod {pod} is ready"));
    }
    if let Some(pod) = &facts.pod_name {
        found.push(format!(
            "phase {phase_text} but status.podName is still {pod}"
        ));
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

/// Session children grouped by (namespace, value of their `session` label).
type ByOwner<T> = BTreeMap<(String, String), Vec<T>>;

fn group<T: ResourceExt>(items: Vec<T>) -> ByOwner<T> {
    let mut grouped: ByOwner<T> = BTreeMap::new();
    for item in items {
        if let Some(session) = item.labels().get("session").cloned() {
            let namespace = item.namespace().unwrap_or_default();
            grouped.entry((namespace, session)).or_default().push(item);
        }
    }
    grouped
}

async fn list<K>(
    client: &Client,
    namespace: Option<&str>,
    params: &ListParams,
) -> anyhow::Result<Vec<K>>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    Ok(api
        .list(params)
        .await
        .with_context(|| format!("listing {}s", K::kind(&())))?
        .items)
}

/// The facts of `session` from its grouped children.
pub fn facts(
    session: &Session,
    deployments: &[Deployment],
    pods: &[Pod],
    ingresses: &[Ingress],
) -> SessionFacts {
    let status = session.status.clone().unwrap_or_default();
    let mut ready_pods: Vec<String> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| crate::session::state::is_ready(p))
        .map(ResourceExt::name_any)
        .collect();
    ready_pods.sort();
    SessionFacts {
        desired: session.spec.desired_state(),
        generation: session.metadata.generation,
        phase: status.phase,
        pod_name: status.pod_name,
        url: status.url,
        observed_generation: status.observed_generation,
        legacy: session
            .annotations()
            .get(ACTED_BY_ANNOTATION)
            .map(String::as_str)
            == Some(Side::Legacy.as_str()),
        deployments: deployments
            .iter()
            .map(|d| DeploymentFacts {
                name: d.name_any(),
                replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            })
            .collect(),
        ready_pods,
        ingress_hosts: ingresses
            .iter()
            .filter_map(|i| i.spec.as_ref()?.rules.as_ref())
            .flatten()
            .filter_map(|rule| rule.host.clone())
            .collect(),
    }
}

/// Checks every session; exit code 1 when any status disagrees with its children.
pub async fn run(client: &Client, args: &VerifyArgs) -> anyhow::Result<i32> {
    let namespace = args.namespace.as_deref();
    let children = ListParams::default().labels(&format!("app={APP_SESSION}"));
    let mut sessions: Vec<Session> = list(client, namespace, &ListParams::default()).await?;
    let mut deployments = group(list::<Deployment>(client, namespace, &children).await?);
    let mut pods = group(list::<Pod>(client, namespace, &children).await?);
    let mut ingresses = group(list::<Ingress>(client, namespace, &children).await?);
    sessions.sort_by_key(|s| (s.namespace(), s.name_any()));
    let mut bad = 0;
    for session in &sessions {
        let namespace = session.namespace().unwrap_or_default();
        let label = crate::session::names::label_value(&session.name_any());
        let key = (namespace.clone(), label);
        let facts = facts(
            session,
            &deployments.remove(&key).unwrap_or_default(),
            &pods.remove(&key).unwrap_or_default(),
            &ingresses.remove(&key).unwrap_or_default(),
        );
        let found = mismatches(&facts);
        let phase = facts.phase.as_ref().map_or("(none)", SessionPhase::as_str);
        let name = session.name_any();
        if found.is_empty() {
            println!("ok        {namespace}/{name} ({phase})");
        } else {
            bad += 1;
            println!("MISMATCH  {namespace}/{name} ({phase})");
            for mismatch in found {
                println!("          - {mismatch}");
            }
        }
    }
    for ((namespace, session), orphans) in deployments {
        bad += 1;
        let names: Vec<String> = orphans.iter().map(ResourceExt::name_any).collect();
        println!(
            "MISMATCH  {namespace}/{session}: Deployment {} has no Session",
            names.join(", ")
        );
    }
    println!("{} sessions checked, {bad} with mismatches", sessions.len());
    Ok(if bad > 0 { 1 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running() -> SessionFacts {
        SessionFacts {
            desired: SessionState::Running,
            generation: Some(2),
            phase: Some(SessionPhase::Running),
            pod_name: Some("ss-s1-abc".into()),
            url: Some("https://s1.streamspace.local".into()),
            observed_generation: Some(2),
            legacy: false,
            deployments: vec![DeploymentFacts {
                name: "ss-s1".into(),
                replicas: 1,
            }],
            ready_pods: vec!["ss-s1-abc".into()],
            ingress_hosts: vec!["s1.streamspace.local".into()],
        }
    }

    fn hibernated() -> SessionFacts {
        SessionFacts {
            desired: SessionState::Hibernated,
            phase: Some(SessionPhase::Hibernated),
            pod_name: None,
            deployments: vec![DeploymentFacts {
                name: "ss-s1".into(),
                replicas: 0,
            }],
            ready_pods: vec![],
            ..running()
        }
    }

    #[test]
    fn table() {
        let rows: Vec<(&str, SessionFacts, Vec<&str>)> = vec![
            ("running and consistent", running(), vec![]),
            ("hibernated and consistent", hibernated(), vec![]),
            (
                "terminated and consistent",
                SessionFacts {
                    desired: SessionState::Terminated,
                    phase: Some(SessionPhase::Terminated),
                    deployments: vec![],
                    ..hibernated()
                },
                vec![],
            ),
            (
                "starting: Pending without a ready pod is consistent",
                SessionFacts {
                    phase: Some(SessionPhase::Pending),
                    pod_name: None,
                    ready_pods: vec![],
                    ..running()
                },
                vec![],
            ),
            (
                "deployment scaled to zero by hand",
                SessionFacts {
                    deployments: vec![DeploymentFacts {
                        name: "ss-s1".into(),
                        replicas: 0,
                    }],
                    ready_pods: vec![],
                    ..running()
                },
                vec![
                    "spec.state running but Deployment ss-s1 has 0 replicas",
                    "phase Running but status.podName ss-s1-abc is not a ready pod of the session (ready: none)",
                ],
            ),
            (
                "deployment scaled up by hand",
                SessionFacts {
                    deployments: vec![DeploymentFacts {
                        name: "ss-s1".into(),
                        replicas: 3,
                    }],
                    ready_pods: vec!["ss-s1-abc".into(), "ss-s1-def".into()],
                    ..running()
                },
                vec![
                    "2 ready pods (ss-s1-abc, ss-s1-def), one expected",
                    "Deployment ss-s1 has 3 replicas, 1 expected",
                ],
            ),
            (
                "two deployments of one session",
                SessionFacts {
                    deployments: vec![
                        DeploymentFacts {
                            name: "ss-s1".into(),
                            replicas: 1,
                        },
                        DeploymentFacts {
                            name: "ss-alice-firefox".into(),
                            replicas: 0,
                        },
                    ],
                    ..running()
                },
                vec!["2 Deployments (ss-s1, ss-alice-firefox), one expected"],
            ),
            (
                "running without deployment",
                SessionFacts {
                    deployments: vec![],
                    ready_pods: vec![],
                    ..running()
                },
                vec![
                    "spec.state running, phase Running, but no Deployment",
                    "phase Running but status.podName ss-s1-abc is not a ready pod",
                ],
            ),
            (
                "observed generation behind",
                SessionFacts {
                    observed_generation: Some(1),
                    ..running()
                },
                vec!["status.observedGeneration 1 is not metadata.generation 2"],
            ),
            (
                "observed generation missing",
                SessionFacts {
                    observed_generation: None,
                    ..running()
                },
                vec!["status.observedGeneration is missing"],
            ),
            (
                "legacy sessions have no observed generation",
                SessionFacts {
                    observed_generation: None,
                    legacy: true,
                    ..running()
                },
                vec![],
            ),
            (
                "url of another host",
                SessionFacts {
                    url: Some("https://other.example".into()),
                    ..running()
                },
                vec![
                    "status.url https://other.example does not match the Ingress host s1.streamspace.local",
                ],
            ),
            (
                "no ingress: the url is not checked",
                SessionFacts {
                    url: Some("https://other.example".into()),
                    ingress_hosts: vec![],
                    ..running()
                },
                vec![],
            ),
            (
                "running phase with empty pod name and url",
                SessionFacts {
                    pod_name: None,
                    url: None,
                    ..running()
                },
                vec![
                    "phase Running but status.podName is empty",
                    "phase Running but status.url is empty",
                ],
            ),
            (
                "pending although a pod is ready",
                SessionFacts {
                    phase: Some(SessionPhase::Pending),
                    ..running()
                },
                vec!["phase Pending but pod ss-s1-abc is ready"],
            ),
            (
                "hibernated in spec, still running",
                SessionFacts {
                    desired: SessionState::Hibernated,
                    ..running()
                },
                vec![
                    "spec.state hibernated but Deployment ss-s1 has 1 replicas",
                    "spec.state hibernated but phase Running",
                ],
            ),
            (
                "hibernated with a ready pod and a pod name",
                SessionFacts {
                    pod_name: Some("ss-s1-abc".into()),
                    ready_pods: vec!["ss-s1-abc".into()],
                    ..hibernated()
                },
                vec![
                    "phase Hibernated but pod ss-s1-abc is ready",
                    "phase Hibernated but status.podName is still ss-s1-abc",
                ],
            ),
            (
                "phase Hibernated while spec says running",
                SessionFacts {
                    desired: SessionState::Running,
                    ..hibernated()
                },
                vec![
                    "spec.state running but Deployment ss-s1 has 0 replicas",
                    "spec.state running but phase Hibernated",
                ],
            ),
            (
                "terminated with a deployment left",
                SessionFacts {
                    desired: SessionState::Terminated,
                    phase: Some(SessionPhase::Terminated),
                    ..hibernated()
                },
                vec!["spec.state terminated but Deployment ss-s1 still exists"],
            ),
        ];
        for (name, facts, expected) in rows {
            let found = mismatches(&facts);
            assert_eq!(found.len(), expected.len(), "{name}: {found:#?}");
            for (line, wanted) in found.iter().zip(&expected) {
                assert!(line.starts_with(wanted), "{name}: {line:?} vs {wanted:?}");
            }
        }
    }
}
