//! Builds the objects a running Session needs, as plain values: no I/O.
//!
//! Every owned object carries an annotation with a hash of what was built, so the reconciler
//! can tell "already as desired" from "needs an apply" without a write, and a steady-state
//! reconcile performs none.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, ResourceRequirements, Service,
    ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::names::{
    self, APP_USER_HOME, CONTAINER_NAME, HOME_MOUNT_PATH, HOME_VOLUME, VNC_PORT_NAME,
};
use crate::crd::{SessionSpec, TemplateSpec};

/// Annotation holding the hash of the object as the controller last built it.
pub const HASH_ANNOTATION: &str = "stream.space/applied-hash";

/// Cluster-specific settings for the objects of every session.
#[derive(Clone, Debug)]
pub struct SessionSettings {
    /// Domain of session URLs: `https://<session>.<domain>`.
    pub ingress_domain: String,
    /// Ingress class; `None` disables Ingress creation.
    pub ingress_class: Option<String>,
    /// Size of a new home volume claim.
    pub home_size: Quantity,
    /// Storage class of new home claims; `None` uses the cluster default.
    pub home_storage_class: Option<String>,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            ingress_domain: "streamspace.local".into(),
            ingress_class: Some("traefik".into()),
            home_size: Quantity("50Gi".into()),
            home_storage_class: None,
        }
    }
}

/// What the objects are built from.
pub struct SessionContext<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub spec: &'a SessionSpec,
    pub owner: OwnerReference,
    pub settings: &'a SessionSettings,
}

impl SessionContext<'_> {
    pub fn url(&self) -> String {
        format!("https://{}.{}", self.name, self.settings.ingress_domain)
    }

    fn metadata(&self, labels: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(names::child_name(self.name)),
            namespace: Some(self.namespace.to_string()),
            labels: Some(labels),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    fn labels(&self) -> BTreeMap<String, String> {
        names::session_labels(
            self.name,
            &self.spec.user,
            &self.spec.template,
            &self.spec.tags,
        )
    }
}

/// Resources of the session container: the Session's own, else the Template's defaults.
pub fn container_resources(
    spec: &SessionSpec,
    template: &TemplateSpec,
) -> Option<ResourceRequirements> {
    spec.resources
        .as_ref()
        .and_then(|resources| resources.requirements())
        .or_else(|| {
            template
                .default_resources
                .as_ref()
                .and_then(|resources| resources.requirements())
        })
}

pub fn deployment(ctx: &SessionContext<'_>, template: &TemplateSpec, replicas: i32) -> Deployment {
    let labels = ctx.labels();
    let vnc_port = template.vnc_port();
    let mut ports = vec![ContainerPort {
        name: Some(VNC_PORT_NAME.into()),
        container_port: vnc_port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }];
    ports.extend(
        template
            .ports
            .iter()
            .filter(|port| port.container_port != vnc_port)
            .map(|port| ContainerPort {
                name: port.name.clone().filter(|name| name != VNC_PORT_NAME),
                container_port: port.container_port,
                protocol: Some(port.protocol.clone()),
                ..ContainerPort::default()
            }),
    );
    let env: Vec<EnvVar> = template
        .env
        .iter()
        .map(|var| EnvVar {
            name: var.name.clone(),
            value: var.value.clone(),
            ..EnvVar::default()
        })
        .collect();
    let (volumes, mounts) = if ctx.spec.persistent_home {
        (
            Some(vec![Volume {
                name: HOME_VOLUME.into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: names::home_claim_name(&ctx.spec.user),
                    read_only: None,
                }),
                ..Volume::default()
            }]),
            Some(vec![VolumeMount {
                name: HOME_VOLUME.into(),
                mount_path: HOME_MOUNT_PATH.into(),
                ..VolumeMount::default()
            }]),
        )
    } else {
        (None, None)
    };
    let container = Container {
        name: CONTAINER_NAME.into(),
        image: Some(template.base_image.clone()),
        ports: Some(ports),
        env: (!env.is_empty()).then_some(env),
        resources: container_resources(ctx.spec, template),
        volume_mounts: mounts,
        ..Container::default()
    };
    with_hash(Deployment {
        metadata: ctx.metadata(labels.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(names::selector_labels(ctx.name)),
                ..LabelSelector::default()
            },
            // One desktop at a time: never two pods writing the same home directory.
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                rolling_update: None,
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes,
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    })
}

pub fn service(ctx: &SessionContext<'_>, template: &TemplateSpec) -> Service {
    let port = template.vnc_port();
    with_hash(Service {
        metadata: ctx.metadata(ctx.labels()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(names::selector_labels(ctx.name)),
            ports: Some(vec![ServicePort {
                name: Some(VNC_PORT_NAME.into()),
                port,
                target_port: Some(IntOrString::String(VNC_PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// The session's Ingress, or `None` when Ingress is disabled.
pub fn ingress(ctx: &SessionContext<'_>, template: &TemplateSpec) -> Option<Ingress> {
    let class = ctx.settings.ingress_class.clone()?;
    // Only the field: the API server rejects the legacy `kubernetes.io/ingress.class`
    // annotation when `ingressClassName` is set as well.
    Some(with_hash(Ingress {
        metadata: ctx.metadata(ctx.labels()),
        spec: Some(IngressSpec {
            ingress_class_name: Some(class),
            rules: Some(vec![IngressRule {
                host: Some(format!("{}.{}", ctx.name, ctx.settings.ingress_domain)),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".into()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: names::child_name(ctx.name),
                                port: Some(ServiceBackendPort {
                                    number: Some(template.vnc_port()),
                                    name: None,
                                }),
                            }),
                            resource: None,
                        },
                    }],
                }),
            }]),
            ..IngressSpec::default()
        }),
        status: None,
    }))
}

/// The user's home claim. Deliberately without an owner: it outlives every session.
pub fn home_claim(ctx: &SessionContext<'_>) -> PersistentVolumeClaim {
    let user = &ctx.spec.user;
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(names::home_claim_name(user)),
            namespace: Some(ctx.namespace.to_string()),
            labels: Some(BTreeMap::from([
                ("app".to_string(), APP_USER_HOME.to_string()),
                ("user".to_string(), names::label_value(user)),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteMany".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    ctx.settings.home_size.clone(),
                )])),
                limits: None,
            }),
            storage_class_name: ctx.settings.home_storage_class.clone(),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

/// Objects that carry the applied-hash annotation.
pub trait Hashed: Serialize {
    fn metadata_mut(&mut self) -> &mut ObjectMeta;
    fn metadata_ref(&self) -> &ObjectMeta;
}

macro_rules! impl_hashed {
    ($($kind:ty),+) => {$(
        impl Hashed for $kind {
            fn metadata_mut(&mut self) -> &mut ObjectMeta { &mut self.metadata }
            fn metadata_ref(&self) -> &ObjectMeta { &self.metadata }
        }
    )+};
}
impl_hashed!(Deployment, Service, Ingress);

/// The hash recorded on an object, if any.
pub fn recorded_hash<T: Hashed>(object: &T) -> Option<&str> {
    object
        .metadata_ref()
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(HASH_ANNOTATION))
        .map(String::as_str)
}

/// A short hex digest of `bytes` (the first 16 bytes of their SHA-256).
pub fn digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn with_hash<T: Hashed>(mut object: T) -> T {
    // Serialising plain k8s-openapi structs cannot fail; an empty hash would only force an
    // apply, never skip one.
    let hash = digest(&serde_json::to_vec(&object).unwrap_or_default());
    object
        .metadata_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(HASH_ANNOTATION.into(), hash);
    object
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::common::ResourceSpec;
    use crate::crd::template::VncConfig;
    use crate::session::fixtures::{self, owner, template, with_ctx};

    fn spec() -> SessionSpec {
        fixtures::spec("running")
    }

    #[test]
    fn deployment_has_the_contract_shape() {
        let spec = spec();
        let deployment = with_ctx(&spec, |ctx| deployment(ctx, &template(), 1));
        assert_eq!(deployment.metadata.name.as_deref(), Some("ss-s1"));
        let pod = deployment
            .spec
            .as_ref()
            .and_then(|spec| spec.template.spec.clone())
            .expect("pod spec");
        let container = &pod.containers[0];
        assert_eq!(container.name, "session");
        let ports = container.ports.clone().unwrap_or_default();
        assert_eq!(ports[0].name.as_deref(), Some("vnc"));
        assert_eq!(ports[0].container_port, 5900);
        let mounts = container.volume_mounts.clone().unwrap_or_default();
        assert_eq!(mounts[0].mount_path, "/config");
        let limits = container
            .resources
            .clone()
            .and_then(|r| r.limits)
            .unwrap_or_default();
        assert_eq!(limits.get("memory"), Some(&Quantity("2Gi".into())));
        assert!(recorded_hash(&deployment).is_some());
    }

    #[test]
    fn vnc_port_comes_from_the_template_or_legacy_kasmvnc() {
        let mut tpl = template();
        tpl.kasmvnc = Some(VncConfig {
            enabled: true,
            port: Some(3000),
            protocol: None,
            encryption: None,
        });
        assert_eq!(tpl.vnc_port(), 3000);
        let spec = spec();
        let svc = with_ctx(&spec, |ctx| service(ctx, &tpl));
        let port = svc.spec.and_then(|s| s.ports).unwrap_or_default();
        assert_eq!(port[0].port, 3000);
    }

    #[test]
    fn session_resources_win_over_template_defaults() {
        let mut spec = spec();
        spec.resources = Some(ResourceSpec {
            cpu: Some(Quantity("500m".into())),
            ..ResourceSpec::default()
        });
        let resources = container_resources(&spec, &template()).unwrap_or_default();
        let requests = resources.requests.unwrap_or_default();
        assert_eq!(requests.get("cpu"), Some(&Quantity("500m".into())));
        assert_eq!(requests.get("memory"), None);
    }

    #[test]
    fn hash_changes_with_the_desired_object_only() {
        let spec = spec();
        let a = with_ctx(&spec, |ctx| deployment(ctx, &template(), 1));
        let b = with_ctx(&spec, |ctx| deployment(ctx, &template(), 1));
        let c = with_ctx(&spec, |ctx| deployment(ctx, &template(), 0));
        assert_eq!(recorded_hash(&a), recorded_hash(&b));
        assert_ne!(recorded_hash(&a), recorded_hash(&c));
    }

    #[test]
    fn no_home_volume_without_persistent_home() {
        let mut spec = spec();
        spec.persistent_home = false;
        let deployment = with_ctx(&spec, |ctx| deployment(ctx, &template(), 1));
        let pod = deployment.spec.and_then(|s| s.template.spec).expect("pod");
        assert!(pod.volumes.is_none());
    }

    #[test]
    fn ingress_is_optional() {
        let spec = spec();
        let settings = SessionSettings {
            ingress_class: None,
            ..SessionSettings::default()
        };
        let ctx = SessionContext {
            name: "s1",
            namespace: "ns",
            spec: &spec,
            owner: owner(),
            settings: &settings,
        };
        assert!(ingress(&ctx, &template()).is_none());
        assert_eq!(ctx.url(), "https://s1.streamspace.local");
    }
}
