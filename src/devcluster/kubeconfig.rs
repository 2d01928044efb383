//! The kubeconfig of the local control plane and clients built from it.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;

use super::Error;

/// Name of the cluster, user and context in the generated kubeconfig.
pub(crate) const CONTEXT: &str = "streamspace-dev";

/// Writes a kubeconfig for `server` that trusts `ca_pem` and authenticates with `token`.
///
/// The file is JSON, which every kubeconfig reader (a YAML parser) accepts.
pub(crate) fn write(path: &Path, server: &str, ca_pem: &str, token: &str) -> Result<(), Error> {
    let text =
        serde_json::to_string_pretty(&document(server, ca_pem, token)?).map_err(|source| {
            Error::Serialize {
                what: "the kubeconfig",
                source,
            }
        })?;
    std::fs::write(path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// The kubeconfig document.
fn document(server: &str, ca_pem: &str, token: &str) -> Result<serde_json::Value, Error> {
    // `ByteString` serializes as base64, exactly what `certificate-authority-data` wants.
    let ca_data = serde_json::to_value(k8s_openapi::ByteString(ca_pem.as_bytes().to_vec()))
        .map_err(|source| Error::Serialize {
            what: "the CA certificate",
            source,
        })?;
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": CONTEXT,
            "cluster": { "server": server, "certificate-authority-data": ca_data },
        }],
        "users": [{ "name": CONTEXT, "user": { "token": token } }],
        "contexts": [{
            "name": CONTEXT,
            "context": { "cluster": CONTEXT, "user": CONTEXT, "namespace": "default" },
        }],
        "current-context": CONTEXT,
    }))
}

/// Loads the kubeconfig at `path` into a client configuration.
pub(crate) async fn load_config(path: &Path) -> Result<kube::Config, Error> {
    let kubeconfig = Kubeconfig::read_from(path)?;
    Ok(kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
}

/// Builds a client from the kubeconfig at `path`.
pub(crate) async fn client(path: &Path) -> Result<kube::Client, Error> {
    // kube's rustls setup uses the process-wide crypto provider; make sure there is one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(kube::Client::try_from(load_config(path).await?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn written_kubeconfig_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = crate::devcluster::certs::generate(dir.path()).expect("pki");
        let path = dir.path().join("kubeconfig");
        write(&path, "https://127.0.0.1:6443", &pki.ca_pem, "secret").expect("write");
        let config = load_config(&path).await.expect("load");
        assert_eq!(config.cluster_url.to_string(), "https://127.0.0.1:6443/");
        assert_eq!(config.default_namespace, "default");
        assert_eq!(config.root_cert.map(|certs| certs.len()), Some(1));
    }
}
