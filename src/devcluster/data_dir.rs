//! The data directory of one control plane: certificates, kubeconfig, etcd data and logs.
//!
//! Temporary directories live under [`std::env::temp_dir`] with the prefix `streamspace-cp-` and
//! contain a `pid` file naming the owning process. Test processes usually keep their control
//! plane in a `static` and exit without dropping it, so every start first removes directories
//! whose owner is gone.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::Error;

/// Prefix of temporary data directories.
pub(crate) const PREFIX: &str = "streamspace-cp-";

/// Name of the file holding the owning process id.
const PID_FILE: &str = "pid";

/// Directories without a pid file are only removed once they are this old (they may be in the
/// middle of being created by another process).
const ORPHAN_GRACE: Duration = Duration::from_secs(600);

/// Either a temporary directory removed on drop, or a caller-provided one that is kept.
#[derive(Debug)]
pub(crate) enum DataDir {
    /// Created by us; removed when dropped.
    Temporary(tempfile::TempDir),
    /// Provided by the caller; left in place.
    Provided(PathBuf),
}

impl DataDir {
    /// Uses `provided` (created if missing) or creates a fresh temporary directory, after removing
    /// stale temporary directories of dead processes.
    pub(crate) fn create(provided: Option<&Path>) -> Result<Self, Error> {
        remove_stale(&std::env::temp_dir());
        let dir = match provided {
            Some(path) => {
                std::fs::create_dir_all(path)
                    .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
                Self::Provided(path.to_path_buf())
            }
            None => Self::Temporary(
                tempfile::Builder::new()
                    .prefix(PREFIX)
                    .tempdir()
                    .map_err(|e| Error::io("creating a temporary data directory", e))?,
            ),
        };
        let pid_file = dir.path().join(PID_FILE);
        std::fs::write(&pid_file, std::process::id().to_string())
            .map_err(|e| Error::io(format!("writing {}", pid_file.display()), e))?;
        Ok(dir)
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        match self {
            Self::Temporary(dir) => dir.path(),
            Self::Provided(path) => path,
        }
    }
}

/// Removes `<root>/streamspace-cp-*` directories whose owning process no longer exists.
/// Best effort: failures are logged and ignored.
fn remove_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_ours = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(PREFIX));
        if is_ours && path.is_dir() && is_stale(&path) {
            tracing::debug!(dir = %path.display(), "removing stale control-plane data");
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::debug!(dir = %path.display(), error = %e, "cannot remove stale data");
            }
        }
    }
}

/// Whether the directory's owner is gone (or it has had no owner for a long time).
fn is_stale(dir: &Path) -> bool {
    match std::fs::read_to_string(dir.join(PID_FILE)) {
        Ok(pid) => pid
            .trim()
            .parse::<libc::pid_t>()
            .is_ok_and(|pid| !is_alive(pid)),
        Err(_) => is_older_than(dir, ORPHAN_GRACE),
    }
}

/// Whether a process with this id exists and is not a zombie (a killed owner may linger
/// unreaped for a moment).
fn is_alive(pid: libc::pid_t) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    let exists = rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
    exists && !is_zombie(pid)
}

/// Whether `/proc/<pid>/stat` reports state `Z` (or `X`).
fn is_zombie(pid: libc::pid_t) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The command name is in parentheses and may contain spaces.
            let after_name = &stat[stat.rfind(')')? + 1..];
            after_name
                .split_whitespace()
                .next()
                .map(|s| s == "Z" || s == "X")
        })
        .unwrap_or(false)
}

/// Whether `path` was last modified more than `age` ago.
fn is_older_than(path: &Path, age: Duration) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|modified| SystemTime::now().duration_since(modified).ok())
        .is_some_and(|elapsed| elapsed > age)
}

/// Writes `contents` to `path`, readable only by the owner when `private`.
pub(crate) fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), Error> {
    let mode = if private { 0o600 } else { 0o644 };
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_directories_of_dead_processes_are_removed() {
        let root = tempfile::tempdir().expect("tempdir");
        let dead = root.path().join(format!("{PREFIX}dead"));
        let alive = root.path().join(format!("{PREFIX}alive"));
        let fresh = root.path().join(format!("{PREFIX}fresh"));
        let other = root.path().join("unrelated");
        for dir in [&dead, &alive, &fresh, &other] {
            std::fs::create_dir(dir).expect("mkdir");
        }
        // pid_max is at most 2^22 on Linux, so this pid cannot exist.
        std::fs::write(dead.join(PID_FILE), "2147483646").expect("write");
        std::fs::write(alive.join(PID_FILE), std::process::id().to_string()).expect("write");
        std::fs::write(other.join(PID_FILE), "2147483646").expect("write");

        remove_stale(root.path());

        assert!(!dead.exists());
        assert!(alive.exists());
        assert!(
            fresh.exists(),
            "directories without pid file get a grace period"
        );
        assert!(other.exists(), "only prefixed directories are touched");
    }

    #[test]
    fn liveness_of_processes() {
        let me = libc::pid_t::try_from(std::process::id()).expect("pid");
        assert!(is_alive(me));
        assert!(!is_alive(0));
        assert!(!is_alive(2_147_483_646));
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = libc::pid_t::try_from(child.id()).expect("pid");
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!is_alive(pid), "an exited, unreaped child is a zombie");
        child.wait().expect("wait");
    }
}
