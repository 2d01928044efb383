//! Development RBAC, kept as YAML in `dev/rbac/` and embedded here so `dev` and the tests apply
//! it. An installation gets its RBAC from the Helm chart's templates instead
//! (`charts/streamspace-controller/templates/rbac-*.yaml`); the chart's user roles have the same
//! rules as `user-roles.yaml` (checked by the chart tests).
//!
//! - `user-roles.yaml`: ClusterRoles `streamspace-operator` and `streamspace-admin` (what the
//!   API's SubjectAccessReviews check, see `api::auth::kubernetes`).
//! - `dev-bindings.yaml`: binds the development groups (`streamspace:operators`,
//!   `streamspace:admins`) to them.
//! - `api.yaml`: a ServiceAccount, ClusterRole and binding for running the API alone against a
//!   development cluster (the chart splits the same rights into a namespaced Role and a
//!   ClusterRole).

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

pub const USER_ROLES_YAML: &str = include_str!("../dev/rbac/user-roles.yaml");
pub const DEV_BINDINGS_YAML: &str = include_str!("../dev/rbac/dev-bindings.yaml");
pub const API_YAML: &str = include_str!("../dev/rbac/api.yaml");

/// Name of the API's ClusterRole in `api.yaml`.
pub const API_CLUSTER_ROLE: &str = "streamspace-api";

#[derive(Debug, thiserror::Error)]
pub enum RbacError {
    #[error("embedded RBAC YAML is invalid: {0}")]
    Yaml(String),
    #[error("unsupported kind {0:?} in the RBAC YAML")]
    Kind(String),
    #[error("applying {kind} {name}: {source}")]
    Apply {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl RbacError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            RbacError::Yaml(_) => "rbac_yaml",
            RbacError::Kind(_) => "rbac_kind",
            RbacError::Apply { .. } => "rbac_apply",
        }
    }
}

/// One object of the RBAC YAML.
#[derive(Clone, Debug)]
pub enum RbacObject {
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
}

/// Parses a multi-document YAML of the kinds above.
pub fn parse(yaml: &str) -> Result<Vec<RbacObject>, RbacError> {
    let documents: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(yaml).map_err(|e| RbacError::Yaml(e.to_string()))?;
    documents
        .into_iter()
        .filter(|d| !d.is_null())
        .map(|document| {
            let kind = document["kind"].as_str().unwrap_or_default().to_string();
            let invalid = |e: serde_json::Error| RbacError::Yaml(format!("{kind}: {e}"));
            Ok(match kind.as_str() {
                "ServiceAccount" => {
                    RbacObject::ServiceAccount(serde_json::from_value(document).map_err(invalid)?)
                }
                "ClusterRole" => {
                    RbacObject::ClusterRole(serde_json::from_value(document).map_err(invalid)?)
                }
                "ClusterRoleBinding" => RbacObject::ClusterRoleBinding(
                    serde_json::from_value(document).map_err(invalid)?,
                ),
                _ => return Err(RbacError::Kind(kind)),
            })
        })
        .collect()
}

/// Server-side applies the objects (idempotent; several callers may apply concurrently).
pub async fn apply(
    client: &Client,
    field_manager: &str,
    objects: &[RbacObject],
) -> Result<(), RbacError> {
    let params = PatchParams::apply(field_manager).force();
    for object in objects {
        let (kind, name, result) = match object {
            RbacObject::ServiceAccount(sa) => {
                let namespace = sa.namespace().unwrap_or_else(|| "default".into());
                let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
                let name = sa.name_any();
                let result = api.patch(&name, &params, &Patch::Apply(sa)).await.map(drop);
                ("ServiceAccount", name, result)
            }
            RbacObject::ClusterRole(role) => {
                let api: Api<ClusterRole> = Api::all(client.clone());
                let name = role.name_any();
                let result = api
                    .patch(&name, &params, &Patch::Apply(role))
                    .await
                    .map(drop);
                ("ClusterRole", name, result)
            }
            RbacObject::ClusterRoleBinding(binding) => {
                let api: Api<ClusterRoleBinding> = Api::all(client.clone());
                let name = binding.name_any();
                let result = api
                    .patch(&name, &params, &Patch::Apply(binding))
                    .await
                    .map(drop);
                ("ClusterRoleBinding", name, result)
            }
        };
        result.map_err(|source| RbacError::Apply {
            kind: kind.into(),
            name,
            source,
        })?;
    }
    Ok(())
}

/// Applies the user roles and the development group bindings (what `dev` and tests need for
/// the development users).
pub async fn apply_dev(client: &Client, field_manager: &str) -> Result<(), RbacError> {
    let mut objects = parse(USER_ROLES_YAML)?;
    objects.extend(parse(DEV_BINDINGS_YAML)?);
    objects.extend(
        parse(API_YAML)?
            .into_iter()
            .filter(|o| matches!(o, RbacObject::ClusterRole(_))),
    );
    apply(client, field_manager, &objects).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(objects: &[RbacObject]) -> Vec<String> {
        objects
            .iter()
            .map(|o| match o {
                RbacObject::ServiceAccount(o) => format!("ServiceAccount/{}", o.name_any()),
                RbacObject::ClusterRole(o) => format!("ClusterRole/{}", o.name_any()),
                RbacObject::ClusterRoleBinding(o) => {
                    format!("ClusterRoleBinding/{}", o.name_any())
                }
            })
            .collect()
    }

    #[test]
    fn embedded_yaml_parses() {
        assert_eq!(
            names(&parse(USER_ROLES_YAML).expect("user roles")),
            [
                "ClusterRole/streamspace-operator",
                "ClusterRole/streamspace-admin"
            ]
        );
        assert_eq!(
            names(&parse(DEV_BINDINGS_YAML).expect("bindings")),
            [
                "ClusterRoleBinding/streamspace-operators",
                "ClusterRoleBinding/streamspace-admins"
            ]
        );
        assert_eq!(
            names(&parse(API_YAML).expect("api")),
            [
                "ServiceAccount/streamspace-api",
                "ClusterRole/streamspace-api",
                "ClusterRoleBinding/streamspace-api"
            ]
        );
    }

    #[test]
    fn the_api_role_can_review_tokens_and_access() {
        let objects = parse(API_YAML).expect("api");
        let role = objects
            .iter()
            .find_map(|o| match o {
                RbacObject::ClusterRole(role) => Some(role),
                _ => None,
            })
            .expect("role");
        let allows = |group: &str, resource: &str, verb: &str| {
            role.rules.iter().flatten().any(|rule| {
                rule.api_groups.iter().flatten().any(|g| g == group)
                    && rule.resources.iter().flatten().any(|r| r == resource)
                    && rule.verbs.iter().any(|v| v == verb)
            })
        };
        assert!(allows("authentication.k8s.io", "tokenreviews", "create"));
        assert!(allows(
            "authorization.k8s.io",
            "subjectaccessreviews",
            "create"
        ));
        assert!(allows("stream.space", "sessions", "watch"));
        assert!(allows("", "nodes", "list"));
        assert!(!allows("", "persistentvolumeclaims", "delete"));
    }
}
