//! Installs the CRDs into a cluster by server-side apply and waits until they are served.
//!
//! API servers before Kubernetes 1.23 do not know the `x-kubernetes-validations` schema field
//! (CEL rules): they would ignore it on a plain create, but their server-side apply refuses the
//! whole CRD ("field not declared in schema"). On those servers the rules are left out; the
//! webhook and the controller check what they can (see `docs/crd-validation.md`).

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::version::Info;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use serde_json::Value;

/// How long a fresh CRD may take to become Established.
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// The schema field of CEL rules.
const CEL_RULES: &str = "x-kubernetes-validations";

/// The first Kubernetes minor version (of major 1) whose CRD schema has [`CEL_RULES`].
const FIRST_MINOR_WITH_CEL_FIELD: u32 = 23;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("reading the API server version failed: {0}")]
    Version(#[source] kube::Error),
    #[error("applying CRD {name} failed: {source}")]
    Apply {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("CRD {0} was not established within {ESTABLISH_TIMEOUT:?}")]
    NotEstablished(String),
}

/// Applies every CRD of this project and waits until each is Established.
pub async fn install(client: &Client, manager: &str) -> Result<(), InstallError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(manager).force();
    let version = client
        .apiserver_version()
        .await
        .map_err(InstallError::Version)?;
    let keep_rules = knows_cel_rules(&version);
    for crd in super::all() {
        let name = crd.name_any();
        let mut body = serde_json::to_value(&crd).unwrap_or_default();
        if !keep_rules {
            strip_cel_rules(&mut body);
        }
        api.patch(&name, &params, &Patch::Apply(&body))
            .await
            .map_err(|source| InstallError::Apply {
                name: name.clone(),
                source,
            })?;
    }
    for crd in super::all() {
        let name = crd.name_any();
        let established = await_condition(api.clone(), &name, conditions::is_crd_established());
        match tokio::time::timeout(ESTABLISH_TIMEOUT, established).await {
            Ok(Ok(_)) => {}
            _ => return Err(InstallError::NotEstablished(name)),
        }
    }
    Ok(())
}

/// Whether the server's CRD schema has the CEL rules field. Minor versions may carry a suffix
/// (`20+`); an unreadable version is taken as current.
pub fn knows_cel_rules(version: &Info) -> bool {
    let number = |text: &str| {
        text.trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse::<u32>()
            .ok()
    };
    match (number(&version.major), number(&version.minor)) {
        (Some(1), Some(minor)) => minor >= FIRST_MINOR_WITH_CEL_FIELD,
        _ => true,
    }
}

/// Removes every CEL rule list from a CRD (as JSON).
pub fn strip_cel_rules(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.remove(CEL_RULES);
            map.values_mut().for_each(strip_cel_rules);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_cel_rules),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(major: &str, minor: &str) -> Info {
        Info {
            major: major.into(),
            minor: minor.into(),
            ..Info::default()
        }
    }

    #[test]
    fn cel_rules_are_kept_from_1_23_on() {
        let cases = [
            ("1", "20", false),
            ("1", "22+", false),
            ("1", "23", true),
            ("1", "36", true),
            ("", "", true),
            ("2", "0", true),
        ];
        for (major, minor, expected) in cases {
            assert_eq!(
                knows_cel_rules(&info(major, minor)),
                expected,
                "{major}.{minor}"
            );
        }
    }

    #[test]
    fn stripping_removes_every_rule_and_nothing_else() {
        let crd = <super::super::NodeOperation as kube::CustomResourceExt>::crd();
        let mut body = serde_json::to_value(&crd).unwrap_or_default();
        assert!(body.to_string().contains(CEL_RULES));
        let before = body.to_string().len();
        strip_cel_rules(&mut body);
        let text = body.to_string();
        assert!(!text.contains(CEL_RULES));
        assert!(text.contains("maxProperties") && text.len() < before);
    }
}
