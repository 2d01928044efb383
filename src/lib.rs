//! streamspace-controller: reconciles StreamSpace `Session`, `Template` and `NodeOperation`
//! objects.
//!
//! Layout follows the design: pure decisions (`session::state`, `template::validate`,
//! `nodeop::plan`, `quantity`) are separate from the Kubernetes I/O around them (`*::reconciler`).
//!
//! Module map, from the top down (nothing imports `controller`, `dev` or `cli` except the
//! processes; reconcilers import `context` and `caches`):
//! - `main.rs`, `dev`, `cli`: processes and their flags; `migrate`: backup, restore, verify.
//! - `controller`: builds caches, contexts and controllers; `http`: the controller's endpoints.
//! - Features: `session`, `template`, `idle`, `nodeop`, `gitops`, `ownership`, `admission`,
//!   `api` (the `api` process).
//! - Shared runtime: `context` (what reconcilers share), `caches` (one watch per kind),
//!   `leader` (Lease election and renew deadline), `supervisor` (every task of a process, by
//!   name), `metrics`, `backoff`, `telemetry`.
//! - Model and helpers: `crd`, `quantity`, `api_status`, `rbac`; `devcluster` is the local
//!   control plane used by `dev` and tests.

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
pub mod flags_cli;
pub mod gitops;
pub mod http;
pub mod idle;
pub mod leader;
pub mod metrics;
pub mod migrate;
pub mod nodeop;
pub mod ownership;
pub mod quantity;
pub mod rbac;
pub mod session;
pub mod supervisor;
pub mod telemetry;
pub mod template;
pub mod version;

/// Field manager of every server-side apply the controller makes (its reconcilers' writes).
pub const FIELD_MANAGER: &str = "streamspace-controller";
