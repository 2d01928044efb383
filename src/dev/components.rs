//! The components `dev` runs once the cluster is up: the examples, the controller with its
//! HTTP endpoints, the admission webhooks, the API, and the session table printed until Ctrl-C.
//! Each step is its own function; [`run_components`] wires them in order.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kube::Client;
use kube::api::Api;

use super::{
    DEV_GITSYNC_NAMESPACE, DevArgs, Listeners, apply_examples, block, new_token, shutdown_signal,
    sync_gitops_examples, table, wait_ready, webhooks,
};
use crate::caches::Caches;
use crate::cli::{Reconcilers, start_reconcilers};
use crate::controller;
use crate::crd::Session;
use crate::devcluster::ControlPlane;
use crate::metrics::Metrics;
use crate::supervisor::SupervisorHandle;

/// Template of the example session the printed block creates.
const EXAMPLE_TEMPLATE: &str = "firefox-browser";

/// A user's name and bearer token.
type Identity = (String, String);

#[allow(clippy::too_many_arguments)]
pub(super) async fn run_components(
    args: &DevArgs,
    mut config: controller::Config,
    client: &Client,
    control_plane: Option<&ControlPlane>,
    kube_config: kube::Config,
    kubeconfig_path: Option<&Path>,
    run_dir: &Path,
    listeners: Listeners,
) -> anyhow::Result<()> {
    let applied = apply_examples(client, args.examples.as_deref()).await?;
    eprintln!("applied {applied} example objects");
    let namespace = config
        .namespace
        .clone()
        .unwrap_or_else(|| DEV_GITSYNC_NAMESPACE.to_string());
    let gitops_repo = prepare_gitops(args, &mut config, client, run_dir, &namespace).await?;

    let reconcilers = start_reconcilers(client, &config).await?;
    let controller_addr = listeners.http.local_addr()?;
    let webhooks_on = listeners.webhooks.is_some();
    serve_controller(
        &reconcilers,
        client,
        &config,
        &namespace,
        listeners.http,
        listeners.webhooks,
    )
    .await?;
    let (tasks, metrics) = (&reconcilers.tasks, &reconcilers.metrics);

    let (admin, user) = identities(control_plane)?;
    let api_url = format!("http://{}", listeners.api.local_addr()?);
    let api = ApiStart {
        config: &config,
        namespace: &namespace,
        admin_token: &admin.1,
        controller_addr,
        kube_config,
    };
    start_api(tasks, client, control_plane, api, metrics, listeners.api)?;

    let ready = wait_ready(
        client,
        &api_url,
        &namespace,
        webhooks_on,
        gitops_repo.is_some(),
    );
    let program = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "streamspace-controller".into());
    let tokens_file =
        control_plane.map(|p| crate::devcluster::dev_users::dev_users_path(p.kubeconfig_path()));
    let log_file = args.log_file();
    let block = block::Block {
        kubeconfig: kubeconfig_path,
        api_url: &api_url,
        admin: (&admin.0, &admin.1),
        user: user.as_ref().map(|(n, t)| (n.as_str(), t.as_str())),
        tokens_file: tokens_file.as_deref(),
        gitops_repo: gitops_repo.as_ref().map(|(p, owned)| (p.as_path(), *owned)),
        log_file: Some(&log_file),
        template: EXAMPLE_TEMPLATE,
        program: &program,
    }
    .render();
    let refresh = Duration::from_secs(args.refresh.max(1));
    let not_ready = std::sync::Mutex::new(None);
    let result = reconcilers
        .supervisor
        .run(async {
            if let Err(error) = ready.await {
                if let Ok(mut slot) = not_ready.lock() {
                    *slot = Some(error);
                }
                return;
            }
            print!("{block}");
            let _ = std::io::Write::flush(&mut std::io::stdout());
            print_sessions(client.clone(), refresh).await;
        })
        .await;
    if let Some(error) = not_ready.into_inner().ok().flatten() {
        return Err(error.context("dev did not become ready"));
    }
    result.map_err(anyhow::Error::from)
}

/// The controller's endpoints with the push hooks on `http` (local only: the hooks share the
/// one port; `controller` serves them on --hooks-addr), and the admission webhooks on
/// `webhooks` when given.
async fn serve_controller(
    reconcilers: &Reconcilers,
    client: &Client,
    config: &controller::Config,
    namespace: &str,
    http: tokio::net::TcpListener,
    webhooks: Option<tokio::net::TcpListener>,
) -> anyhow::Result<()> {
    let Reconcilers {
        tasks,
        metrics,
        readiness,
        caches,
        ..
    } = reconcilers;
    let hooks =
        crate::http::hooks_router(client.clone(), config.gitops.hooks.clone(), metrics.clone());
    let router =
        crate::http::controller_endpoints(client, config, metrics.clone(), readiness.clone())
            .merge(hooks);
    crate::http::serve_supervised(tasks, "http server", http, router);
    if let Some(listener) = webhooks {
        start_webhooks(tasks, client, config, namespace, caches, metrics, listener).await?;
    }
    Ok(())
}

/// The GitOps repository `dev` syncs from, and whether `dev` made it (unless `--no-gitops`).
async fn prepare_gitops(
    args: &DevArgs,
    config: &mut controller::Config,
    client: &Client,
    run_dir: &Path,
    namespace: &str,
) -> anyhow::Result<Option<(PathBuf, bool)>> {
    if args.no_gitops {
        return Ok(None);
    }
    let (repo, owned) = match &args.gitops_repo {
        Some(repo) => (repo.clone(), false),
        None => (run_dir.join("gitops"), true),
    };
    // The dev repository is a local directory: honour its GitSync and its file:// URL.
    if let crate::gitops::trust::NamespacePolicy::Only(names) = &mut config.gitops.namespaces {
        names.insert(namespace.to_string());
    }
    config.gitops.allow_insecure_transports = true;
    let created = sync_gitops_examples(client, &repo, args.examples.as_deref(), namespace).await?;
    Ok(Some((repo, owned || created)))
}

/// Starts the admission webhook server on `listener`, stopped gracefully with the rest.
async fn start_webhooks(
    tasks: &SupervisorHandle,
    client: &Client,
    config: &controller::Config,
    namespace: &str,
    caches: &Caches,
    metrics: &Arc<Metrics>,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    let hooks = webhooks::DevWebhooks {
        listener,
        namespace: namespace.to_string(),
        session_namespace: config.namespace.clone(),
        flags: config.flags.clone(),
        caches: crate::admission::SharedCaches {
            sessions: caches.sessions.store(),
            templates: caches.templates.store(),
        },
    };
    let webhook = webhooks::start(client, hooks, metrics, tasks.stopping()).await?;
    tasks.spawn_graceful("admission webhook server", async move {
        webhook.wait().await.context("admission webhook server")
    });
    Ok(())
}

/// The admin and (with a local control plane) the example user the printed block names.
fn identities(
    control_plane: Option<&ControlPlane>,
) -> anyhow::Result<(Identity, Option<Identity>)> {
    match control_plane {
        Some(plane) => {
            let find = |name: &str| {
                plane
                    .dev_user(name)
                    .map(|u| (u.name.clone(), u.token.clone()))
                    .with_context(|| format!("the control plane has no user {name:?}"))
            };
            Ok((find("streamspace-admin")?, Some(find("alice")?)))
        }
        None => Ok((("admin".to_string(), new_token()?), None)),
    }
}

/// What the API needs from the rest of `dev`.
struct ApiStart<'a> {
    config: &'a controller::Config,
    namespace: &'a str,
    admin_token: &'a str,
    controller_addr: SocketAddr,
    kube_config: kube::Config,
}

/// Builds the API and serves it on `listener`: Kubernetes tokens with a local control plane,
/// the static admin token otherwise.
fn start_api(
    tasks: &SupervisorHandle,
    client: &Client,
    control_plane: Option<&ControlPlane>,
    api: ApiStart<'_>,
    metrics: &Arc<Metrics>,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    let auth: Arc<dyn crate::api::auth::Authenticator> = match control_plane {
        Some(_) => Arc::new(crate::api::auth::KubernetesAuth::new(
            client.clone(),
            api.namespace.to_string(),
        )),
        None => Arc::new(crate::api::auth::StaticToken::new(
            api.admin_token.to_string(),
        )),
    };
    let api_config = crate::api::ApiConfig {
        namespace: api.namespace.to_string(),
        controller_url: Some(format!("http://{}", api.controller_addr)),
        connection_event_token: api.config.connection_event_token.clone(),
        flags: api.config.flags.clone(),
        session: api.config.session.clone(),
        nodes: crate::api::nodes::NodeSettings {
            eviction_config: Some(api.kube_config),
            ..crate::api::nodes::NodeSettings::default()
        },
        ..crate::api::ApiConfig::default()
    };
    let service = crate::api::build(client.clone(), api_config, auth, metrics.clone())?;
    tasks.spawn("api caches and flusher", async move {
        service.background.await;
        anyhow::bail!("the API's background work ended")
    });
    let stopping = tasks.stopping();
    let api_metrics = metrics.clone();
    tasks.spawn_graceful("api server", async move {
        crate::api::tls::serve_on(listener, service.router, None, &api_metrics, stopping)
            .await
            .context("api server failed")
    });
    Ok(())
}

/// Prints the session table every `refresh` until Ctrl-C.
async fn print_sessions(client: Client, refresh: Duration) {
    let mut table = table::TablePrinter::new(std::io::stdout().is_terminal());
    let mut ticker = tokio::time::interval(refresh);
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = ticker.tick() => {}
        }
        match Api::<Session>::all(client.clone())
            .list(&Default::default())
            .await
        {
            Ok(list) => table.print(&table::render(&list.items)),
            Err(error) => tracing::warn!(%error, "listing sessions failed"),
        }
    }
    eprintln!("stopping...");
}
