//! A local Kubernetes cluster for integration tests and the `dev` subcommand.
//!
//! [`ControlPlane`] starts real `etcd`, `kube-apiserver` and `kube-controller-manager`
//! processes (Kubernetes 1.20) on loopback with freshly generated certificates and an admin
//! bearer token. There is no scheduler and no kubelet; [`NodeSimulator`] registers fake nodes,
//! binds pending pods to them and reports them running, so Deployments become available and
//! garbage collection completes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), streamspace_controller::devcluster::Error> {
//! use streamspace_controller::devcluster::{ControlPlane, ControlPlaneOptions, NodeSimulator, SimulatorConfig};
//!
//! let plane = ControlPlane::start(ControlPlaneOptions::default()).await?;
//! let client = plane.client().await?;
//! let simulator = NodeSimulator::spawn(client.clone(), SimulatorConfig::default());
//! // ... use `client` or `plane.kubeconfig_path()` ...
//! simulator.stop().await;
//! plane.stop().await;
//! # Ok(())
//! # }
//! ```
//!
//! [`CrdServer`] is a second, CRD-only test bed: the standalone `apiextensions-apiserver` of a
//! current Kubernetes release on its own etcd, to check CEL validation rules and server-side
//! apply list-map merging, which Kubernetes 1.20 does not have.
//!
//! The binaries come from `scripts/control-plane-binaries.sh` (embedded; a cold build takes
//! several minutes, later calls are instant) unless `STREAMSPACE_CP_BIN_DIR` names a directory
//! that already holds them. Linux only: child processes are tied to this process with
//! `PR_SET_PDEATHSIG`.

mod binaries;
mod certs;
mod components;
mod control_plane;
mod crd_server;
mod data_dir;
pub mod dev_users;
mod error;
mod kubeconfig;
mod process;
mod readyz;
pub mod simulator;

pub use binaries::{BIN_DIR_ENV, REQUIRED_BINARIES, resolve_bin_dir};
pub(crate) use certs::random_token;
pub use control_plane::{
    ControlPlane, ControlPlaneOptions, SERVICE_ACCOUNT_ISSUER, SERVICE_CLUSTER_IP_RANGE,
};
pub use crd_server::{
    CRD_SERVER_BIN_DIR_ENV, CRD_SERVER_BINARIES, CrdServer, CrdServerOptions, VERSIONS_FILE,
};
pub use dev_users::{DevUser, read_dev_users};
pub use error::Error;
pub use simulator::{ADOPTED_NODE_LABEL, NodeSimulator, SimulatorConfig};
