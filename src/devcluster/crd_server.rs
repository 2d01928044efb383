//! A modern CRD-only API server on loopback: the standalone `apiextensions-apiserver`
//! (Kubernetes 1.36 series, built by `scripts/crd-server-binaries.sh`) on its own etcd.
//!
//! It serves `apiextensions.k8s.io` and custom resources, nothing else: no core API, no
//! controllers, no admission plugins. Its purpose is to check the CRDs where the main test bed
//! (Kubernetes 1.20) cannot: CEL validation rules and server-side apply with the CRDs' list-map
//! merge keys. Clients authenticate with a client certificate of group `system:masters`, which
//! the server's delegating authorizer always allows; `--authentication-skip-lookup` keeps it
//! from looking for a core API's authentication config map.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::Error;
use super::binaries::{check_bin_dir, run_script};
use super::certs::{self, Pki};
use super::components::{Components, etcd_args, free_ports, is_port_conflict};
use super::data_dir::DataDir;
use super::kubeconfig::{self, Credentials};
use super::readyz::ReadyzProbe;

/// Environment variable naming an existing directory with `apiextensions-apiserver` and
/// `etcd`; when set, the embedded build script is not run.
pub const CRD_SERVER_BIN_DIR_ENV: &str = "STREAMSPACE_CRD_SERVER_BIN_DIR";

/// The executables a CRD server bin directory must contain.
pub const CRD_SERVER_BINARIES: [&str; 2] = ["apiextensions-apiserver", "etcd"];

/// File next to the binaries listing the Debian package versions they were built from.
pub const VERSIONS_FILE: &str = "versions.txt";

const SCRIPT: &str = include_str!("../../scripts/crd-server-binaries.sh");

/// Admission plugins of the generic API server; all need a core API this server lacks.
const ADMISSION_PLUGINS: &str = "NamespaceLifecycle,MutatingAdmissionWebhook,\
                                 ValidatingAdmissionWebhook,ValidatingAdmissionPolicy,\
                                 MutatingAdmissionPolicy";

/// The readiness check, without the one that needs a core API.
const READYZ: &str = "/readyz?exclude=informer-sync";

/// Start attempts when a chosen port was taken by someone else meanwhile.
const START_ATTEMPTS: u32 = 3;

/// Options of [`CrdServer::start`].
#[derive(Debug, Clone)]
pub struct CrdServerOptions {
    /// Data directory; default: a fresh temporary directory, removed on stop.
    pub data_dir: Option<PathBuf>,
    /// Directory with `apiextensions-apiserver` and `etcd`; default:
    /// `$STREAMSPACE_CRD_SERVER_BIN_DIR`, else the embedded `crd-server-binaries.sh`.
    pub bin_dir: Option<PathBuf>,
    /// Limit for each start-up phase (etcd, API server `/readyz`).
    pub startup_timeout: Duration,
}

impl Default for CrdServerOptions {
    fn default() -> Self {
        Self {
            data_dir: None,
            bin_dir: None,
            startup_timeout: Duration::from_secs(90),
        }
    }
}

/// A running CRD server. Dropping it (or [`CrdServer::stop`]) stops etcd and the server and
/// removes a temporary data directory.
#[derive(Debug)]
pub struct CrdServer {
    components: Components,
    kubeconfig_path: PathBuf,
    server_url: String,
    versions: String,
    /// Declared last so that it is removed after the processes are gone.
    data_dir: DataDir,
}

/// Ports and files of one start attempt.
struct Layout {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    etcd_client_port: u16,
    etcd_peer_port: u16,
    port: u16,
    kubeconfig: PathBuf,
    pki: Pki,
}

impl CrdServer {
    /// Starts etcd and the CRD server and waits until the server's `/readyz` succeeds.
    pub async fn start(options: CrdServerOptions) -> Result<Self, Error> {
        let started = Instant::now();
        let bin_dir = resolve_bin_dir(options.bin_dir.as_deref()).await?;
        let mut attempt = 1;
        let server = loop {
            match Self::start_once(&bin_dir, &options).await {
                Err(e) if attempt < START_ATTEMPTS && is_port_conflict(&e) => {
                    tracing::warn!(attempt, error = %e, "port conflict, retrying with new ports");
                    attempt += 1;
                }
                result => break result?,
            }
        };
        tracing::info!(elapsed = ?started.elapsed(), server = %server.server_url, "CRD server ready");
        Ok(server)
    }

    async fn start_once(bin_dir: &Path, options: &CrdServerOptions) -> Result<Self, Error> {
        let data_dir = DataDir::create(options.data_dir.as_deref())?;
        let layout = Layout::new(bin_dir.to_path_buf(), data_dir.path())?;
        let server_url = format!("https://127.0.0.1:{}", layout.port);
        let credentials = Credentials::Certificate {
            cert_pem: &layout.pki.admin_client_cert_pem,
            key_pem: &layout.pki.admin_client_key_pem,
        };
        kubeconfig::write_with(
            &layout.kubeconfig,
            &server_url,
            &layout.pki.ca_pem,
            &credentials,
        )?;
        let versions = std::fs::read_to_string(bin_dir.join(VERSIONS_FILE)).unwrap_or_default();
        let mut server = Self {
            components: Components::default(),
            kubeconfig_path: layout.kubeconfig.clone(),
            server_url,
            versions,
            data_dir,
        };
        server.boot(&layout, options.startup_timeout).await?;
        Ok(server)
    }

    async fn boot(&mut self, layout: &Layout, timeout: Duration) -> Result<(), Error> {
        let (bin, logs) = (layout.bin_dir.as_path(), layout.data_dir.as_path());
        let components = &mut self.components;
        let etcd = etcd_args(logs, layout.etcd_client_port, layout.etcd_peer_port);
        components.spawn("etcd", bin, logs, etcd).await?;
        components
            .wait_for_port(
                "etcd to accept connections",
                layout.etcd_client_port,
                timeout,
            )
            .await?;
        components
            .spawn("apiextensions-apiserver", bin, logs, layout.server_args())
            .await?;
        // `/readyz` is open to anonymous requests. Its `informer-sync` check never passes: the
        // generic server's Service informer has no core API to list from, and nothing here
        // uses it.
        let readyz = ReadyzProbe::anonymous(&layout.pki.ca_pem, layout.port, READYZ)?;
        components
            .wait_for("apiextensions-apiserver /readyz", timeout, async || {
                readyz.is_ready().await
            })
            .await
    }

    /// Path of the generated kubeconfig (client certificate of `admin`, CA embedded).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The server URL, `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The Debian package versions the binaries were built from (`versions.txt`).
    pub fn versions(&self) -> &str {
        &self.versions
    }

    /// The data directory (certificates, kubeconfig, etcd data, `*.log`).
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// A new client authenticated as `admin` (group `system:masters`).
    pub async fn client(&self) -> Result<kube::Client, Error> {
        kubeconfig::client(&self.kubeconfig_path).await
    }

    /// Fails with [`Error::ProcessExited`] if etcd or the server has died.
    pub fn check_running(&mut self) -> Result<(), Error> {
        self.components.check_running()
    }

    /// Stops the processes without blocking the async runtime.
    pub async fn stop(self) {
        if let Err(e) = tokio::task::spawn_blocking(move || drop(self)).await {
            tracing::warn!(error = %e, "stopping the CRD server failed");
        }
    }
}

impl Layout {
    fn new(bin_dir: PathBuf, data_dir: &Path) -> Result<Self, Error> {
        let [etcd_client_port, etcd_peer_port, port] = free_ports()?;
        let pki = certs::generate(&data_dir.join("pki"))?;
        Ok(Self {
            bin_dir,
            data_dir: data_dir.to_path_buf(),
            etcd_client_port,
            etcd_peer_port,
            port,
            kubeconfig: data_dir.join("kubeconfig"),
            pki,
        })
    }

    fn server_args(&self) -> Vec<String> {
        let pki = &self.pki;
        vec![
            format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_client_port),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", self.port),
            format!("--tls-cert-file={}", pki.serving_cert.display()),
            format!("--tls-private-key-file={}", pki.serving_key.display()),
            format!("--client-ca-file={}", pki.ca_cert.display()),
            "--authentication-skip-lookup".into(),
            // The "core API" (informers, token and access reviews) is the server itself: only
            // its certificate authentication and the always-allowed `system:masters` group are
            // ever used.
            format!("--kubeconfig={}", self.kubeconfig.display()),
            format!("--authentication-kubeconfig={}", self.kubeconfig.display()),
            format!("--authorization-kubeconfig={}", self.kubeconfig.display()),
            format!("--disable-admission-plugins={ADMISSION_PLUGINS}"),
            "--enable-priority-and-fairness=false".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ]
    }
}

/// A directory holding the CRD server binaries: `explicit`, else
/// `$STREAMSPACE_CRD_SERVER_BIN_DIR`, else the embedded build script's cache.
pub async fn resolve_bin_dir(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    let dir = match explicit {
        Some(dir) => dir.to_path_buf(),
        None => match std::env::var_os(CRD_SERVER_BIN_DIR_ENV) {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => run_script("crd-server-binaries.sh", SCRIPT).await?,
        },
    };
    check_bin_dir(&dir, &CRD_SERVER_BINARIES)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_binaries_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = CrdServerOptions {
            bin_dir: Some(dir.path().to_path_buf()),
            ..CrdServerOptions::default()
        };
        let err = CrdServer::start(options).await.expect_err("must fail");
        assert!(err.to_string().contains("apiextensions-apiserver"), "{err}");
    }
}
