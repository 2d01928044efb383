//! Connecting to Kubernetes: a client for a kubeconfig file, or for the in-cluster / default
//! configuration. Used by every process and by `plan --cluster`.

use std::path::Path;

use anyhow::Context as _;
use kube::Client;

/// A client for `kubeconfig`, or for the in-cluster / default configuration when `None`.
pub async fn client_from(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let config = kube_config_from(kubeconfig).await?;
    Client::try_from(config).context("building the Kubernetes client")
}

/// The connection settings `client_from` uses.
pub async fn kube_config_from(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Config> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig given and no in-cluster or default configuration found")?,
    };
    Ok(config)
}
