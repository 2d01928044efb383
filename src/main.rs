//! `streamspace-controller`: one binary, one subcommand per role.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use streamspace_controller::cli::ControllerSettings;
use streamspace_controller::controller::{self, Readiness};
use streamspace_controller::metrics::Metrics;
use streamspace_controller::{crd, dev, gitops, http, telemetry};

#[derive(Parser)]
#[command(name = "streamspace-controller", version, about)]
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
    Controller(ControllerArgs),
    /// Print the YAML of every CRD.
    Crds,
    /// Start a local control plane with examples, a node simulator and the controller.
    Dev(dev::DevArgs),
    /// Check a GitOps directory: schemas and overlays; non-zero exit with file:line reasons.
    Validate(gitops::cli::ValidateArgs),
    /// Show the node changes a GitSync of a directory would make.
    Plan(gitops::cli::PlanArgs),
}

#[derive(Args)]
struct ControllerArgs {
    /// Kubeconfig to use instead of the in-cluster or default configuration.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    settings: ControllerSettings,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Two rustls providers end up in the dependency tree; pick one before any TLS happens.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    telemetry::init(cli.log_json);
    match cli.command {
        Command::Controller(args) => run_controller(args).await,
        Command::Crds => {
            print!("{}", crd::to_yaml(&crd::all())?);
            Ok(())
        }
        Command::Dev(args) => dev::run(args).await,
        Command::Validate(args) => std::process::exit(gitops::cli::validate(&args)),
        Command::Plan(args) => std::process::exit(gitops::cli::plan(&args).await?),
    }
}

async fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    let config = args.settings.to_config()?;
    let client = dev::client_from(args.kubeconfig.as_deref()).await?;
    let metrics = Arc::new(Metrics::default());
    let readiness = Readiness::default();
    let router = http::router(metrics.clone(), readiness.clone()).merge(gitops::webhook::router(
        client.clone(),
        config.gitops.triggers.clone(),
        metrics.clone(),
    ));
    let server = tokio::spawn(http::serve(args.http_addr, router, shutdown_signal()));
    controller::run(client, config, metrics, readiness, shutdown_signal()).await?;
    server.await.context("http server task")??;
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
