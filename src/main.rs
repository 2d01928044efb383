//! `streamspace-controller`: one binary, one subcommand per role.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use streamspace_controller::cli::{ControllerSettings, Reconcilers, start_reconcilers};
use streamspace_controller::idle::deadline::parse_duration;
use streamspace_controller::metrics::Metrics;
use streamspace_controller::supervisor::Supervisor;
use streamspace_controller::{admission, api, crd, dev, gitops, http, migrate, telemetry};

#[derive(Parser)]
#[command(name = "streamspace-controller", version = streamspace_controller::version::LONG, about)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the reconcilers and the controller's HTTP endpoints.
    Controller(Box<ControllerArgs>),
    /// Serve the session API (sessions, heartbeat, connect, disconnect).
    Api(ApiArgs),
    /// Print the YAML of every CRD.
    Crds,
    /// Start a local control plane with examples, a node simulator and the controller.
    Dev(dev::DevArgs),
    /// Check a GitOps directory: schemas and overlays; non-zero exit with file:line reasons.
    Validate(gitops::cli::ValidateArgs),
    /// Show the node changes a GitSync of a directory would make.
    Plan(gitops::cli::PlanArgs),
    /// List, get, override, clear or set the baseline of the ownership flags.
    Flags(streamspace_controller::flags_cli::FlagsArgs),
    /// Move a running StreamSpace onto this controller: preflight, backup, restore, verify.
    Migrate(migrate::MigrateArgs),
}

#[derive(Args)]
struct ControllerArgs {
    /// Kubeconfig to use instead of the in-cluster or default configuration.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    settings: ControllerSettings,
    /// Address of /healthz, /readyz, /metrics, POST /events/connection and GET /flags.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Address of the Git push hooks (`/hooks/git/...`), and of nothing else, so it can be
    /// exposed to a forge without exposing /metrics or /flags.
    #[arg(long, env = "HOOKS_ADDR", default_value = "0.0.0.0:8081")]
    hooks_addr: SocketAddr,
    #[command(flatten)]
    leader: streamspace_controller::cli::LeaderArgs,
    #[command(flatten)]
    webhooks: streamspace_controller::admission::WebhookSettings,
}

#[derive(Args)]
struct ApiArgs {
    /// Kubeconfig to use instead of the in-cluster or default configuration.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Namespace of the sessions.
    #[arg(long, env = "NAMESPACE", default_value = api::DEFAULT_NAMESPACE)]
    namespace: String,
    /// Address of the API, /healthz, /readyz and /metrics.
    #[arg(long, env = "API_ADDR", default_value = "0.0.0.0:8000")]
    http_addr: SocketAddr,
    /// How bearer tokens on /api/v1 are checked: `kubernetes` (TokenReview and
    /// SubjectAccessReview, rights granted by RBAC) or `static` (one admin token, --api-token).
    #[arg(long, env = "API_AUTH", value_enum, default_value_t = AuthMode::Kubernetes)]
    auth: AuthMode,
    /// With --auth static: the bearer token clients must present on /api/v1.
    #[arg(
        long,
        env = "API_TOKEN",
        hide_env_values = true,
        required_if_eq("auth", "static")
    )]
    api_token: Option<String>,
    /// Longest time activity is held in memory before status.lastActivity is written
    /// (at most one write per session per interval); keep it well below the idle grace.
    #[arg(long, env = "ACTIVITY_FLUSH_INTERVAL", default_value = "15s")]
    flush_interval: String,
    /// Base URL of the controller's HTTP server, for connection events
    /// (unset: only the wake-requested annotation wakes sessions).
    #[arg(long, env = "CONTROLLER_URL")]
    controller_url: Option<String>,
    /// Bearer token of the controller's POST /events/connection.
    #[arg(long, env = "CONNECTION_EVENT_TOKEN", hide_env_values = true)]
    connection_event_token: Option<String>,
    #[command(flatten)]
    flags: streamspace_controller::cli::FlagArgs,
    #[command(flatten)]
    session_objects: streamspace_controller::cli::SessionObjectArgs,
    /// Labels put on the NodeOperations the API creates (`key=value`, comma separated), for
    /// example to match one controller's --node-operation-selector.
    #[arg(long, env = "NODE_OPERATION_LABELS", value_delimiter = ',')]
    node_operation_labels: Vec<String>,
    /// Let new sessions switch their idle or maximum-duration timer off with `0s`.
    #[arg(long, env = "ALLOW_DISABLED_TIMERS")]
    allow_disabled_timers: bool,
    #[command(flatten)]
    exposure: api::settings::ExposureArgs,
    #[command(flatten)]
    idle: streamspace_controller::cli::LegacyIdleArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum AuthMode {
    Kubernetes,
    Static,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Two rustls providers end up in the dependency tree; pick one before any TLS happens.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match &cli.command {
        // `dev` keeps the terminal for its block and table: logs go to a file.
        Command::Dev(args) => {
            let path = args.log_file();
            telemetry::init_file(cli.log_json, &path, args.verbose())
                .with_context(|| format!("opening the log file {}", path.display()))?;
        }
        _ => telemetry::init(cli.log_json),
    }
    match cli.command {
        Command::Controller(args) => run_controller(*args).await,
        Command::Api(args) => run_api(args).await,
        Command::Crds => {
            print!("{}", crd::to_yaml(&crd::all())?);
            Ok(())
        }
        Command::Dev(args) => dev::run(args).await,
        Command::Validate(args) => std::process::exit(gitops::cli::validate(&args)),
        Command::Plan(args) => std::process::exit(gitops::cli::plan(&args).await?),
        Command::Flags(args) => {
            print!("{}", streamspace_controller::flags_cli::run(args).await?);
            Ok(())
        }
        Command::Migrate(args) => std::process::exit(migrate::run(args).await?),
    }
}

async fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    let mut config = args.settings.to_config()?;
    let kube_config =
        streamspace_controller::kube_client::kube_config_from(args.kubeconfig.as_deref()).await?;
    config.leader_election = args.leader.to_settings(&kube_config.default_namespace)?;
    config.node_operations.kube_config = Some(kube_config.clone());
    let webhook_config = args
        .webhooks
        .to_config(config.namespace.clone(), config.flags.clone());
    // Every port first: one that is taken fails here, naming its address, before anything runs.
    let http_listener = http::bind("--http-addr", args.http_addr).await?;
    let hooks_listener = http::bind("--hooks-addr", args.hooks_addr).await?;
    let webhook_listener = match &webhook_config {
        Some(webhook) => Some(http::bind("--webhook-addr", webhook.addr).await?),
        None => None,
    };
    let client = kube::Client::try_from(kube_config).context("building the Kubernetes client")?;
    let Reconcilers {
        supervisor,
        tasks,
        metrics,
        readiness,
        caches,
    } = start_reconcilers(&client, &config).await?;
    let router = http::controller_endpoints(&client, &config, metrics.clone(), readiness);
    http::serve_supervised(&tasks, "http server", http_listener, router);
    let hooks = http::hooks_router(client.clone(), config.gitops.hooks.clone(), metrics.clone());
    http::serve_supervised(&tasks, "push hook server", hooks_listener, hooks);
    // Every replica verifies hooks, so every replica keeps the hook secrets loaded.
    let keys = gitops::hook_keys::keep_loaded(
        client.clone(),
        config.namespace.clone(),
        config.gitops.namespaces.clone(),
        config.gitops.hooks.clone(),
    );
    tasks.spawn("push hook secrets", async move {
        keys.await;
        Ok(())
    });
    if let (Some(webhook_config), Some(listener)) = (webhook_config, webhook_listener) {
        let shared = admission::SharedCaches {
            sessions: caches.sessions.store(),
            templates: caches.templates.store(),
        };
        let webhook = admission::start_on(
            client.clone(),
            webhook_config,
            listener,
            Some(shared),
            metrics.admission.clone(),
            tasks.stopping(),
        )
        .await
        .context("starting the admission webhooks")?;
        tasks.spawn_graceful("admission webhook server", async move {
            webhook.wait().await.context("admission webhook server")
        });
    }
    if let Err(failure) = supervisor.run(shutdown_signal()).await {
        // Exit at once, without waiting for blocking work (a Git fetch) to finish.
        eprintln!("Error: {failure}");
        std::process::exit(1);
    }
    Ok(())
}

async fn run_api(args: ApiArgs) -> anyhow::Result<()> {
    let flush_interval = parse_duration(&args.flush_interval)
        .with_context(|| format!("--flush-interval {:?}", args.flush_interval))?;
    let operation_labels = api::nodes::parse_labels(&args.node_operation_labels)
        .map_err(anyhow::Error::msg)
        .context("--node-operation-labels")?;
    let listener = http::bind("--http-addr", args.http_addr).await?;
    let kube_config =
        streamspace_controller::kube_client::kube_config_from(args.kubeconfig.as_deref()).await?;
    let client =
        kube::Client::try_from(kube_config.clone()).context("building the Kubernetes client")?;
    let metrics = Arc::new(Metrics::default());
    let config = api::ApiConfig {
        namespace: args.namespace.clone(),
        flush_interval,
        controller_url: args.controller_url,
        connection_event_token: args.connection_event_token,
        flags: args.flags.index(),
        session: args.session_objects.to_settings()?,
        nodes: api::nodes::NodeSettings {
            operation_labels,
            eviction_config: Some(kube_config),
            ..api::nodes::NodeSettings::default()
        },
        allow_disabled_timers: args.allow_disabled_timers,
        streams: args.exposure.streams().map_err(anyhow::Error::msg)?,
        idle_monitor: args.idle.to_settings(&args.namespace)?,
        connection_expiry: args
            .exposure
            .connection_expiry()
            .map_err(anyhow::Error::msg)?,
        hibernate_on_last_disconnect: args.exposure.hibernate_on_last_disconnect,
    };
    let auth: Arc<dyn api::auth::Authenticator> = match args.auth {
        AuthMode::Kubernetes => Arc::new(
            api::auth::KubernetesAuth::new(client.clone(), config.namespace.clone())
                .with_audience(args.exposure.token_audience.clone())
                .with_metrics(metrics.clone()),
        ),
        AuthMode::Static => {
            anyhow::ensure!(
                args.exposure.token_audience.is_none(),
                "--token-audience applies to --auth kubernetes only"
            );
            let token = args.api_token.unwrap_or_default();
            anyhow::ensure!(!token.is_empty(), "--api-token must not be empty");
            Arc::new(api::auth::StaticToken::new(token))
        }
    };
    let service = api::build(client, config, auth, metrics.clone())?;
    let supervisor = Supervisor::new();
    let tasks = supervisor.handle();
    tasks.spawn("api caches and flusher", async move {
        service.background.await;
        anyhow::bail!("the API's background work ended")
    });
    let tls = args.exposure.tls();
    let stopping = tasks.stopping();
    tasks.spawn_graceful("api server", async move {
        api::tls::serve_on(listener, service.router, tls, &metrics, stopping)
            .await
            .context("api server failed")
    });
    if let Err(failure) = supervisor.run(shutdown_signal()).await {
        eprintln!("Error: {failure}");
        std::process::exit(1);
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
