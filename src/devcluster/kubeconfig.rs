//! The kubeconfig of the local control plane and clients built from it.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;

use super::Error;

/// Name of the cluster, user and context in the generated kubeconfig.
pub(crate) const CONTEXT: &str = "streamspace-dev";

/// How the kubeconfig's user authenticates.
pub(crate) enum Credentials<'a> {
    /// A bearer token.
    Token(&'a str),
    /// A client certificate and its key (PEM).
    Certificate { cert_pem: &'a str, key_pem: &'a str },
}

/// Writes a kubeconfig for `server` that trusts `ca_pem` and authenticates with `token`.
///
/// The file is JSON, which every kubeconfig reader (a YAML parser) accepts.
pub(crate) fn write(path: &Path, server: &str, ca_pem: &str, token: &str) -> Result<(), Error> {
    write_with(path, server, ca_pem, &Credentials::Token(token))
}

/// Writes a kubeconfig for `server` that trusts `ca_pem` and authenticates with `credentials`.
pub(crate) fn write_with(
    path: &Path,
    server: &str,
    ca_pem: &str,
    credentials: &Credentials<'_>,
) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(&document(server, ca_pem, credentials)?).map_err(
        |source| Error::Serialize {
            what: "the kubeconfig",
            source,
        },
    )?;
    std::fs::write(path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Base64 of `pem`, as the `*-data` fields of a kubeconfig want it.
fn data(what: &'static str, pem: &str) -> Result<serde_json::Value, Error> {
    // `ByteString` serializes as base64.
    serde_json::to_value(k8s_openapi::ByteString(pem.as_bytes().to_vec()))
        .map_err(|source| Error::Serialize { what, source })
}

/// The kubeconfig document.
fn document(
    server: &str,
    ca_pem: &str,
    credentials: &Credentials<'_>,
) -> Result<serde_json::Value, Error> {
    let ca_data = data("the CA certificate", ca_pem)?;
    let user = match credentials {
        Credentials::Token(token) => json!({ "token": token }),
        Credentials::Certificate { cert_pem, key_pem } => json!({
            "client-certificate-data": data("the client certificate", cert_pem)?,
            "client-key-data": data("the client key", key_pem)?,
        }),
    };
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": CONTEXT,
            "cluster": { "server": server, "certificate-authority-data": ca_data },
        }],
        "users": [{ "name": CONTEXT, "user": user }],
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
