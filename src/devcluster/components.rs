//! A group of child processes started one after the other, each once its dependency is ready,
//! and stopped together: the common part of [`ControlPlane`](super::ControlPlane) and
//! [`CrdServer`](super::CrdServer).

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::Error;
use super::process::{ManagedProcess, log_tail};

/// How often start-up probes are repeated.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Upper bound of a single start-up probe request.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long stopped components get between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// Running components in start order; dropping it stops them in reverse order.
#[derive(Debug, Default)]
pub(crate) struct Components {
    processes: Vec<ManagedProcess>,
}

impl Components {
    /// Starts `<bin_dir>/<name> args…` with its log in `<log_dir>/<name>.log`.
    pub(crate) async fn spawn(
        &mut self,
        name: &'static str,
        bin_dir: &Path,
        log_dir: &Path,
        args: Vec<String>,
    ) -> Result<(), Error> {
        let program = bin_dir.join(name);
        let log = log_dir.join(format!("{name}.log"));
        let process = ManagedProcess::spawn(name, &program, &args, log).await?;
        self.processes.push(process);
        Ok(())
    }

    /// Fails with [`Error::ProcessExited`] if a component has died.
    pub(crate) fn check_running(&mut self) -> Result<(), Error> {
        self.processes
            .iter_mut()
            .try_for_each(ManagedProcess::ensure_running)
    }

    /// Repeats `probe` until it succeeds, a component dies, or `timeout` passes. A timeout is
    /// blamed on the most recently started component.
    pub(crate) async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut probe: impl AsyncFnMut() -> bool,
    ) -> Result<(), Error> {
        let started = Instant::now();
        loop {
            self.check_running()?;
            let ok = tokio::time::timeout(PROBE_TIMEOUT, probe()).await;
            if matches!(ok, Ok(true)) {
                tracing::debug!(what, elapsed = ?started.elapsed(), "start-up step done");
                return Ok(());
            }
            if started.elapsed() >= timeout {
                return Err(self.timeout_error(what, timeout));
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// Waits until something accepts TCP connections on loopback `port` (etcd's client port).
    pub(crate) async fn wait_for_port(
        &mut self,
        what: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<(), Error> {
        self.wait_for(what, timeout, async || {
            tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                .await
                .is_ok()
        })
        .await
    }

    /// An [`Error::Timeout`] with the log tail of the latest component.
    fn timeout_error(&self, what: &str, timeout: Duration) -> Error {
        let log = self
            .processes
            .last()
            .map(|p| p.log().to_path_buf())
            .unwrap_or_default();
        Error::Timeout {
            what: what.to_owned(),
            timeout,
            tail: log_tail(&log, 40),
            log,
        }
    }
}

impl Drop for Components {
    fn drop(&mut self) {
        for process in self.processes.iter_mut().rev() {
            process.signal_terminate();
        }
        let deadline = Instant::now() + STOP_GRACE;
        for process in self.processes.iter_mut().rev() {
            process.wait_or_kill(deadline);
            tracing::debug!(name = process.name(), "stopped");
        }
        self.processes.clear();
    }
}

/// `N` distinct free loopback ports (all listeners are held until every port is chosen).
pub(crate) fn free_ports<const N: usize>() -> Result<[u16; N], Error> {
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    for port in &mut ports {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| Error::io("reserving a free loopback port", e))?;
        *port = listener
            .local_addr()
            .map_err(|e| Error::io("reading a reserved port", e))?
            .port();
        listeners.push(listener);
    }
    Ok(ports)
}

/// Whether a component died because its port was taken.
pub(crate) fn is_port_conflict(error: &Error) -> bool {
    matches!(error, Error::ProcessExited { tail, .. } if tail.contains("address already in use"))
}

/// Command line of a single-member etcd on loopback with its data under `data_dir/etcd`.
pub(crate) fn etcd_args(data_dir: &Path, client_port: u16, peer_port: u16) -> Vec<String> {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let data: PathBuf = data_dir.join("etcd");
    vec![
        "--name=default".into(),
        format!("--data-dir={}", data.display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=default={peer}"),
        "--logger=zap".into(),
        "--log-level=warn".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct() {
        let [a, b, c] = free_ports().expect("ports");
        assert!(a != b && b != c && a != c);
    }

    #[test]
    fn port_conflicts_are_recognised() {
        let exited = |tail: &str| Error::ProcessExited {
            name: "etcd",
            status: "exit code 1".into(),
            log: PathBuf::from("etcd.log"),
            tail: tail.into(),
        };
        assert!(is_port_conflict(&exited(
            "listen tcp 127.0.0.1:40565: bind: address already in use"
        )));
        assert!(!is_port_conflict(&exited("permission denied")));
        assert!(!is_port_conflict(&Error::Binaries(
            "address already in use".into()
        )));
    }
}
