//! streamspace-controller: reconciles StreamSpace `Session`, `Template` and `NodeOperation`
//! objects.
//!
//! Layout follows the design: pure decisions (`session::state`, `template::validate`,
//! `nodeop::plan`, `quantity`) are separate from the Kubernetes I/O around them (`*::reconciler`,
//! `controller`), and `devcluster` provides the local control plane used by `dev` and tests.

pub mod admission;
pub mod api;
pub mod api_status;
pub mod backoff;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod dev;
pub mod devcluster;
pub mod gitops;
pub mod http;
pub mod idle;
pub mod metrics;
pub mod nodeop;
pub mod ownership;
pub mod quantity;
pub mod rbac;
pub mod session;
pub mod telemetry;
pub mod template;
pub mod version;
