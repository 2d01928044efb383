//! streamspace-controller: reconciles StreamSpace `Session`, `Template` and `NodeOperation`
//! objects, syncs cluster configuration from Git, admits Sessions, and serves the API.
//!
//! Layout follows the design: pure decisions (`session::state`, `idle::deadline`,
//! `nodeop::plan`, `nodeop::outcome`, `gitops::plan`, `gitops::outcome`, `ownership`,
//! `quota`, `template::validate`, `quantity`) are separate from the Kubernetes I/O
//! around them (`*::reconciler`, `*::store`, the HTTP handlers).
//!
//! Module map, from the top down. A module uses only modules below it or beside it in the same
//! layer, never one above; `scripts/modgraph.py` prints the graph and fails on a cycle between
//! files.
//! - Processes and their flags: `main.rs`, `dev`, `cli` (settings shared by `controller` and
//!   `dev`, and their common first step, `cli::start_reconcilers`), `migrate` (preflight,
//!   backup, restore, verify). Nothing else imports them.
//! - Wiring: `controller` (builds the caches, the contexts and the reconcilers, and starts
//!   them) and `http` (the controller's endpoints); the `api` process (its route table, one
//!   request-metrics layer, the handlers by resource). `controller` is imported
//!   by the processes only; `http` and `api` share what they both speak through `wire`.
//! - Features, each a thin I/O shell around its pure decisions: `session`, `template`, `idle`,
//!   `nodeop`, `gitops`, `ownership`, `admission`.
//! - `quota`: limits, usage, the reservation ledger and the decision, shared by the validating
//!   webhook (`admission`) and the API's own checks and quota report.
//! - Shared runtime the features depend on: `context` (what reconcilers share, and the
//!   controller's configuration), `caches` (one watch per kind, and private reflectors), `writes` (this process's
//!   writes a cache does not show yet),
//!   `leader` (Lease election), `supervisor` (every task of a process), `backoff` (retry
//!   delays and the [`backoff::ReconcileError`] pattern of every reconciler's errors),
//!   `api_status` (classifying API errors, the conflict retry [`api_status::Attempts`]), `metrics`,
//!   `telemetry`, `kube_client` (connecting to a cluster), `wire` (what the API and the
//!   controller exchange over HTTP).
//! - Model and helpers: `crd`, `quantity`, `rbac`, `version`; `devcluster` is the local
//!   control plane used by `dev`, tests and benchmarks.

pub mod admission;
pub mod api;
pub mod api_client;
pub mod api_status;
pub mod backoff;
pub mod caches;
pub mod cli;
pub mod context;
pub mod controller;
pub mod crd;
pub mod dev;
pub mod devcluster;
pub mod events;
pub mod flags_cli;
pub mod gitops;
pub mod http;
pub mod idle;
pub mod kube_client;
pub mod leader;
pub mod metrics;
pub mod migrate;
pub mod nodeop;
pub mod ownership;
pub mod quantity;
pub mod quota;
pub mod rbac;
pub mod session;
pub mod supervisor;
pub mod telemetry;
pub mod template;
pub mod version;
pub mod wire;
pub mod writes;

/// Field manager of every server-side apply the controller makes (its reconcilers' writes).
pub const FIELD_MANAGER: &str = "streamspace-controller";
