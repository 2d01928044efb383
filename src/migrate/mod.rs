//! `migrate`: moving a running StreamSpace onto this controller.
//!
//! - [`preflight`]: what a takeover would find and do, checked before it starts.
//!
//! Every subcommand prints what it does and exits non-zero on a problem.

pub mod preflight;

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// `migrate` and its global options.
#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// Kubeconfig to use instead of the in-cluster or default configuration.
    #[arg(long, env = "KUBECONFIG", global = true)]
    pub kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    pub command: MigrateCommand,
}

#[derive(Subcommand, Debug)]
pub enum MigrateCommand {
    /// Check a cluster before taking over from the old controller: CRDs, the old controller,
    /// what adoption would do per session, RBAC, webhooks; exit 1 on a problem.
    Preflight(preflight::PreflightArgs),
}

/// Runs one `migrate` subcommand; the exit code of the process.
pub async fn run(args: MigrateArgs) -> anyhow::Result<i32> {
    let client = crate::dev::client_from(args.kubeconfig.as_deref()).await?;
    match args.command {
        MigrateCommand::Preflight(preflight) => preflight::run(&client, &preflight).await,
    }
}
