//! The status a kubelet would report for a pod whose containers all started.

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus,
    HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Addresses assigned to a pod.
pub(super) struct Addresses<'a> {
    /// The pod IP (the host IP for `hostNetwork` pods is chosen by the caller).
    pub pod_ip: &'a str,
    /// The node's InternalIP.
    pub host_ip: &'a str,
}

/// Phase `Running`, all conditions `True`, every container running and ready; init containers
/// completed. Existing condition transition times and the start time are kept.
pub(super) fn running(pod: &Pod, addresses: &Addresses<'_>, now: &Time) -> PodStatus {
    let uid = pod.metadata.uid.as_deref().unwrap_or("unknown");
    let spec = pod.spec.as_ref();
    let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    let init_containers = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default();
    let current = pod.status.as_ref();
    PodStatus {
        phase: Some("Running".into()),
        host_ip: Some(addresses.host_ip.to_owned()),
        host_ips: Some(vec![HostIP {
            ip: addresses.host_ip.to_owned(),
        }]),
        pod_ip: Some(addresses.pod_ip.to_owned()),
        pod_ips: Some(vec![PodIP {
            ip: addresses.pod_ip.to_owned(),
        }]),
        start_time: Some(
            current
                .and_then(|s| s.start_time.clone())
                .unwrap_or_else(|| now.clone()),
        ),
        conditions: Some(conditions(pod, now)),
        container_statuses: Some(
            containers
                .iter()
                .map(|c| running_container(c, uid, now))
                .collect(),
        ),
        init_container_statuses: (!init_containers.is_empty()).then(|| {
            init_containers
                .iter()
                .map(|c| completed_init_container(c, uid, now))
                .collect()
        }),
        ..PodStatus::default()
    }
}

/// `PodScheduled`, `Initialized`, `ContainersReady` and `Ready`, all `True`.
fn conditions(pod: &Pod, now: &Time) -> Vec<PodCondition> {
    ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
        .into_iter()
        .map(|type_| PodCondition {
            type_: type_.to_owned(),
            status: "True".to_owned(),
            last_transition_time: Some(
                existing_transition(pod, type_).unwrap_or_else(|| now.clone()),
            ),
            ..PodCondition::default()
        })
        .collect()
}

/// The transition time of an existing `True` condition of this type.
fn existing_transition(pod: &Pod, type_: &str) -> Option<Time> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")?
        .last_transition_time
        .clone()
}

/// A started, ready container.
fn running_container(container: &Container, uid: &str, now: &Time) -> ContainerStatus {
    ContainerStatus {
        state: Some(ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(now.clone()),
            }),
            ..ContainerState::default()
        }),
        ready: true,
        started: Some(true),
        ..container_base(container, uid)
    }
}

/// An init container that exited successfully.
fn completed_init_container(container: &Container, uid: &str, now: &Time) -> ContainerStatus {
    ContainerStatus {
        state: Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: 0,
                reason: Some("Completed".into()),
                started_at: Some(now.clone()),
                finished_at: Some(now.clone()),
                container_id: Some(container_id(container, uid)),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        }),
        ready: true,
        started: Some(false),
        ..container_base(container, uid)
    }
}

/// Name, image and ids shared by all container statuses.
fn container_base(container: &Container, uid: &str) -> ContainerStatus {
    let image = container.image.clone().unwrap_or_default();
    ContainerStatus {
        name: container.name.clone(),
        image_id: format!("simulated://{image}"),
        image,
        container_id: Some(container_id(container, uid)),
        restart_count: 0,
        ..ContainerStatus::default()
    }
}

fn container_id(container: &Container, uid: &str) -> String {
    format!("simulated://{uid}/{}", container.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::jiff::Timestamp;

    #[test]
    fn running_status_covers_all_containers() {
        let mut pod = Pod::default();
        pod.metadata.uid = Some("u1".into());
        pod.spec = Some(PodSpec {
            containers: vec![
                Container {
                    name: "app".into(),
                    image: Some("nginx:1".into()),
                    ..Container::default()
                },
                Container {
                    name: "sidecar".into(),
                    ..Container::default()
                },
            ],
            init_containers: Some(vec![Container {
                name: "init".into(),
                ..Container::default()
            }]),
            ..PodSpec::default()
        });
        let earlier = Time(Timestamp::UNIX_EPOCH);
        pod.status = Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "True".into(),
                last_transition_time: Some(earlier.clone()),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        });
        let now = Time(Timestamp::now());
        let addresses = Addresses {
            pod_ip: "10.244.0.1",
            host_ip: "172.31.0.1",
        };
        let status = running(&pod, &addresses, &now);
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("10.244.0.1"));
        let containers = status.container_statuses.unwrap_or_default();
        assert_eq!(containers.len(), 2);
        assert!(
            containers
                .iter()
                .all(|c| c.ready && c.started == Some(true))
        );
        assert_eq!(containers[0].image, "nginx:1");
        assert_eq!(status.init_container_statuses.map(|s| s.len()), Some(1));
        let conditions = status.conditions.unwrap_or_default();
        assert_eq!(conditions.len(), 4);
        assert_eq!(conditions[0].last_transition_time, Some(earlier));
    }
}
