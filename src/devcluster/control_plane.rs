//! A real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) on loopback.
//!
//! There is no scheduler and no kubelet: pair it with the
//! [`NodeSimulator`](super::NodeSimulator) to get pods bound and running.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::Api;

use super::certs::{self, Pki};
use super::components::{Components, etcd_args, free_ports, is_port_conflict};
use super::data_dir::DataDir;
use super::dev_users::{self, DevUser};
use super::readyz::ReadyzProbe;
use super::{Error, binaries, kubeconfig};

/// Service CIDR of the cluster (the `kubernetes` service gets `10.96.0.1`).
pub const SERVICE_CLUSTER_IP_RANGE: &str = "10.96.0.0/16";

/// Issuer (and audience) of service-account tokens.
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc";

/// Controllers of kube-controller-manager: everything except what needs a cloud, real nodes or
/// a CSR signer.
const CONTROLLERS: &str = "*,-nodeipam,-nodelifecycle,-service,-route,-cloud-node-lifecycle,\
                           -attachdetach,-ttl,-bootstrapsigner,-tokencleaner,-csrsigning";

/// Start attempts when a chosen port was taken by someone else meanwhile.
const START_ATTEMPTS: u32 = 3;

/// Options of [`ControlPlane::start`].
#[derive(Debug, Clone)]
pub struct ControlPlaneOptions {
    /// Data directory; default: a fresh `streamspace-cp-*` directory under the system temp dir,
    /// removed on stop. A provided directory is created if needed and kept.
    pub data_dir: Option<PathBuf>,
    /// Directory with `etcd`, `kube-apiserver` and `kube-controller-manager`; default:
    /// `$STREAMSPACE_CP_BIN_DIR`, else the embedded `control-plane-binaries.sh`.
    pub bin_dir: Option<PathBuf>,
    /// Limit for each start-up phase (etcd, API server `/readyz`, controllers).
    pub startup_timeout: Duration,
    /// Extra flags appended to the kube-apiserver command line.
    pub extra_apiserver_args: Vec<String>,
    /// Extra flags appended to the kube-controller-manager command line.
    pub extra_controller_manager_args: Vec<String>,
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        Self {
            data_dir: None,
            bin_dir: None,
            startup_timeout: Duration::from_secs(60),
            extra_apiserver_args: Vec::new(),
            extra_controller_manager_args: Vec::new(),
        }
    }
}

/// A running control plane. Dropping it (or [`ControlPlane::stop`]) terminates the processes and
/// removes a temporary data directory; if the process exits without dropping it, the kernel kills
/// the children and the next start removes the directory.
#[derive(Debug)]
pub struct ControlPlane {
    /// etcd, kube-apiserver, kube-controller-manager (in start order).
    components: Components,
    kubeconfig_path: PathBuf,
    server_url: String,
    admin_token: String,
    dev_users: Vec<DevUser>,
    ca_pem: String,
    /// Declared last so that it is removed after the processes are gone.
    data_dir: DataDir,
}

/// Ports and files shared by the components' command lines.
struct Layout {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    etcd_client_port: u16,
    etcd_peer_port: u16,
    apiserver_port: u16,
    kubeconfig: PathBuf,
    pki: Pki,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager and waits until the API server is
    /// ready and the controllers have created the `default` service account.
    ///
    /// Ports are picked by binding port 0 and released before the components bind them; if
    /// another process grabs one in between, the start is retried with fresh ports.
    pub async fn start(options: ControlPlaneOptions) -> Result<Self, Error> {
        let started = Instant::now();
        let bin_dir = binaries::resolve_bin_dir(options.bin_dir.as_deref()).await?;
        let mut attempt = 1;
        let plane = loop {
            match Self::start_once(&bin_dir, &options).await {
                Err(e) if attempt < START_ATTEMPTS && is_port_conflict(&e) => {
                    tracing::warn!(attempt, error = %e, "port conflict, retrying with new ports");
                    attempt += 1;
                }
                result => break result?,
            }
        };
        tracing::info!(
            elapsed = ?started.elapsed(),
            server = %plane.server_url,
            data_dir = %plane.data_dir().display(),
            "local control plane ready"
        );
        Ok(plane)
    }

    /// One start attempt with freshly chosen ports and credentials.
    async fn start_once(bin_dir: &Path, options: &ControlPlaneOptions) -> Result<Self, Error> {
        let data_dir = DataDir::create(options.data_dir.as_deref())?;
        let layout = Layout::new(bin_dir.to_path_buf(), data_dir.path())?;
        let mut plane = Self {
            components: Components::default(),
            kubeconfig_path: layout.kubeconfig.clone(),
            server_url: format!("https://127.0.0.1:{}", layout.apiserver_port),
            admin_token: layout.pki.admin_token.clone(),
            dev_users: layout.pki.dev_users.clone(),
            ca_pem: layout.pki.ca_pem.clone(),
            data_dir,
        };
        kubeconfig::write(
            &plane.kubeconfig_path,
            &plane.server_url,
            &plane.ca_pem,
            &plane.admin_token,
        )?;
        dev_users::write(&plane.kubeconfig_path, &plane.dev_users)?;
        plane.boot(&layout, options).await?;
        Ok(plane)
    }

    /// Path of the generated kubeconfig (admin token, CA embedded).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The API server URL, `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// Bearer token of the `admin` user (group `system:masters`).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The development users (`alice`, `bob`, `operator`, `streamspace-admin`) and their
    /// tokens, also written to `dev-users.json` next to the kubeconfig.
    pub fn dev_users(&self) -> &[DevUser] {
        &self.dev_users
    }

    /// The development user called `name`.
    pub fn dev_user(&self, name: &str) -> Option<&DevUser> {
        self.dev_users.iter().find(|u| u.name == name)
    }

    /// PEM of the CA that signed the API server certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The data directory (certificates, kubeconfig, etcd data, `*.log`).
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// A client configuration loaded from the generated kubeconfig.
    pub async fn config(&self) -> Result<kube::Config, Error> {
        kubeconfig::load_config(&self.kubeconfig_path).await
    }

    /// A new client authenticated as `admin`.
    pub async fn client(&self) -> Result<kube::Client, Error> {
        kubeconfig::client(&self.kubeconfig_path).await
    }

    /// Fails with [`Error::ProcessExited`] if a component has died.
    pub fn check_running(&mut self) -> Result<(), Error> {
        self.components.check_running()
    }

    /// Terminates the components (SIGTERM, then SIGKILL after a grace period) and removes a
    /// temporary data directory, without blocking the async runtime.
    pub async fn stop(self) {
        let stopped = tokio::task::spawn_blocking(move || drop(self)).await;
        if let Err(e) = stopped {
            tracing::warn!(error = %e, "stopping the control plane failed");
        }
    }

    /// Starts the components one after the other, each once its dependency is ready.
    async fn boot(&mut self, layout: &Layout, options: &ControlPlaneOptions) -> Result<(), Error> {
        let timeout = options.startup_timeout;
        let (bin, logs) = (layout.bin_dir.as_path(), layout.data_dir.as_path());
        let components = &mut self.components;
        components
            .spawn("etcd", bin, logs, layout.etcd_args())
            .await?;
        components
            .wait_for_port(
                "etcd to accept connections",
                layout.etcd_client_port,
                timeout,
            )
            .await?;

        let mut args = layout.apiserver_args();
        args.extend(options.extra_apiserver_args.iter().cloned());
        components.spawn("kube-apiserver", bin, logs, args).await?;
        let readyz =
            ReadyzProbe::new(&layout.pki.ca_pem, layout.apiserver_port, &self.admin_token)?;
        components
            .wait_for("kube-apiserver /readyz", timeout, async || {
                readyz.is_ready().await
            })
            .await?;
        let client = kubeconfig::client(&self.kubeconfig_path).await?;

        let mut args = layout.controller_manager_args();
        args.extend(options.extra_controller_manager_args.iter().cloned());
        components
            .spawn("kube-controller-manager", bin, logs, args)
            .await?;
        components
            .wait_for(
                "the default namespace and service account (kube-controller-manager)",
                timeout,
                async || has_default_service_account(&client).await,
            )
            .await
    }
}

impl Layout {
    /// Picks ports and generates credentials under `data_dir`.
    fn new(bin_dir: PathBuf, data_dir: &Path) -> Result<Self, Error> {
        let [etcd_client_port, etcd_peer_port, apiserver_port] = free_ports()?;
        let pki = certs::generate(&data_dir.join("pki"))?;
        Ok(Self {
            bin_dir,
            data_dir: data_dir.to_path_buf(),
            etcd_client_port,
            etcd_peer_port,
            apiserver_port,
            kubeconfig: data_dir.join("kubeconfig"),
            pki,
        })
    }

    fn etcd_args(&self) -> Vec<String> {
        etcd_args(&self.data_dir, self.etcd_client_port, self.etcd_peer_port)
    }

    fn apiserver_args(&self) -> Vec<String> {
        let pki = &self.pki;
        vec![
            format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_client_port),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={}", self.apiserver_port),
            "--insecure-port=0".into(),
            format!(
                "--cert-dir={}",
                self.data_dir.join("apiserver-certs").display()
            ),
            format!("--tls-cert-file={}", pki.serving_cert.display()),
            format!("--tls-private-key-file={}", pki.serving_key.display()),
            format!("--client-ca-file={}", pki.ca_cert.display()),
            format!("--token-auth-file={}", pki.token_file.display()),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-key-file={}", pki.sa_public_key.display()),
            format!(
                "--service-account-signing-key-file={}",
                pki.sa_private_key.display()
            ),
            format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
            format!("--api-audiences={SERVICE_ACCOUNT_ISSUER}"),
            format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
            "--allow-privileged=true".into(),
            // No token secrets to wait for; no not-ready taints nobody would remove.
            "--disable-admission-plugins=ServiceAccount,TaintNodesByCondition".into(),
            // A loopback advertise address is not a valid endpoint of the `kubernetes` service.
            "--endpoint-reconciler-type=none".into(),
            "--enable-priority-and-fairness=false".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ]
    }

    fn controller_manager_args(&self) -> Vec<String> {
        let pki = &self.pki;
        vec![
            format!("--kubeconfig={}", self.kubeconfig.display()),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            "--secure-port=0".into(),
            "--port=0".into(),
            format!("--controllers={CONTROLLERS}"),
            "--use-service-account-credentials=false".into(),
            format!(
                "--service-account-private-key-file={}",
                pki.sa_private_key.display()
            ),
            format!("--root-ca-file={}", pki.ca_cert.display()),
            "--concurrent-deployment-syncs=10".into(),
            "--concurrent-replicaset-syncs=10".into(),
            "--concurrent-gc-syncs=20".into(),
            "--kube-api-qps=200".into(),
            "--kube-api-burst=400".into(),
            "--v=1".into(),
        ]
    }
}

/// Whether the `default` namespace and its `default` service account exist.
async fn has_default_service_account(client: &kube::Client) -> bool {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    matches!(namespaces.get_opt("default").await, Ok(Some(_)))
        && matches!(accounts.get_opt("default").await, Ok(Some(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_binaries_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = ControlPlaneOptions {
            bin_dir: Some(dir.path().to_path_buf()),
            ..ControlPlaneOptions::default()
        };
        let err = ControlPlane::start(options).await.expect_err("must fail");
        assert!(matches!(err, Error::Binaries(_)), "{err}");
    }
}
