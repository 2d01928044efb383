//! `migrate`: moving a running StreamSpace onto this controller, and back.
//!
//! - [`preflight`]: what a takeover would find and do, checked before it starts;
//! - [`archive`]: the backup archive, as pure functions: which kinds, how an object is
//!   stripped of what the API server sets, the stable order, YAML out and in;
//! - [`backup`]: `migrate backup -o FILE` reads every object of the archived kinds;
//! - [`restore`]: `migrate restore FILE` re-creates them idempotently ([`restore::decide`]);
//! - [`verify`]: `migrate verify` compares every Session's status with its children
//!   ([`verify::mismatches`]).
//!
//! Every subcommand prints what it does and exits non-zero on a problem.

pub mod archive;
pub mod backup;
pub mod preflight;
pub mod restore;
pub mod verify;

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
    /// Write every Session, Template, QuotaPolicy, FeatureFlag and GitSync to one YAML archive.
    Backup(backup::BackupArgs),
    /// Re-create the objects of an archive: missing ones are created, identical ones left,
    /// changed ones refused unless --force.
    Restore(restore::RestoreArgs),
    /// Compare every Session's status with its Deployment, pods and Ingress; exit 1 on any
    /// mismatch.
    Verify(verify::VerifyArgs),
}

/// Runs one `migrate` subcommand; the exit code of the process.
pub async fn run(args: MigrateArgs) -> anyhow::Result<i32> {
    let client = crate::kube_client::client_from(args.kubeconfig.as_deref()).await?;
    match args.command {
        MigrateCommand::Preflight(preflight) => preflight::run(&client, &preflight).await,
        MigrateCommand::Backup(backup) => backup::run(&client, &backup).await,
        MigrateCommand::Restore(restore) => restore::run(&client, &restore).await,
        MigrateCommand::Verify(verify) => verify::run(&client, &verify).await,
    }
}
