//! Locating the control-plane binaries (`etcd`, `kube-apiserver`, `kube-controller-manager`).
//!
//! The binaries are produced by `scripts/control-plane-binaries.sh`, which is embedded into the
//! crate so that an installed `streamspace-controller dev` works without a checkout. The script
//! keeps them in a per-user cache and prints their directory on its last line of stdout.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::Error;

/// Environment variable naming an existing directory with the three binaries; when set, the
/// embedded build script is not run.
pub const BIN_DIR_ENV: &str = "STREAMSPACE_CP_BIN_DIR";

/// The names of the executables a bin directory must contain.
pub const REQUIRED_BINARIES: [&str; 3] = ["etcd", "kube-apiserver", "kube-controller-manager"];

const SCRIPT: &str = include_str!("../../scripts/control-plane-binaries.sh");

/// Returns a directory holding the control-plane binaries.
///
/// Precedence: `explicit`, then `$STREAMSPACE_CP_BIN_DIR`, then the embedded build script (whose
/// progress goes to this process's stderr; a cold build takes several minutes).
pub async fn resolve_bin_dir(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    let dir = match explicit {
        Some(dir) => dir.to_path_buf(),
        None => match std::env::var_os(BIN_DIR_ENV) {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => run_script("control-plane-binaries.sh", SCRIPT).await?,
        },
    };
    check_bin_dir(&dir, &REQUIRED_BINARIES)?;
    Ok(dir)
}

/// Fails unless `dir` contains every binary of `required`.
pub(crate) fn check_bin_dir(dir: &Path, required: &[&str]) -> Result<(), Error> {
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|name| !dir.join(name).is_file())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Binaries(format!(
            "{} does not contain {}",
            dir.display(),
            missing.join(", ")
        )))
    }
}

/// Writes an embedded script (`name`, text `script`) to a temporary file, runs it with `bash`
/// and returns the directory it printed last.
pub(crate) async fn run_script(name: &str, script: &str) -> Result<PathBuf, Error> {
    let mut file = tempfile::Builder::new()
        .prefix("streamspace-cp-binaries-")
        .suffix(".sh")
        .tempfile()
        .map_err(|e| Error::io("creating a temporary file for the binaries script", e))?;
    file.write_all(script.as_bytes())
        .map_err(|e| Error::io("writing the binaries script", e))?;
    let output = tokio::process::Command::new("bash")
        .arg(file.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .await
        .map_err(|e| Error::io("running bash with the binaries script", e))?;
    if !output.status.success() {
        return Err(Error::Binaries(format!(
            "{name} failed ({}); see its output above",
            output.status
        )));
    }
    last_line(&output.stdout)
        .map(PathBuf::from)
        .ok_or_else(|| Error::Binaries(format!("{name} printed no directory")))
}

/// The last non-empty line of `stdout`, trimmed.
fn last_line(stdout: &[u8]) -> Option<String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(str::trim)
        .rfind(|line| !line.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_line_skips_trailing_blank_lines() {
        assert_eq!(last_line(b"noise\n/a/bin\n\n").as_deref(), Some("/a/bin"));
        assert_eq!(last_line(b"\n  \n"), None);
    }

    #[test]
    fn check_bin_dir_names_missing_binaries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let message = check_bin_dir(dir.path(), &REQUIRED_BINARIES)
            .expect_err("an empty directory must be rejected")
            .to_string();
        assert!(message.contains("kube-apiserver"), "{message}");
    }
}
