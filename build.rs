//! Records the commit the binary is built from, for `--version`.
//!
//! Order: `git rev-parse HEAD` when the crate is built from its own checkout; else the
//! `STREAMSPACE_COMMIT` environment variable (container and packaged builds that have no
//! `.git`); else `unknown`. A build never fails for want of Git.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Environment variable that names the commit when there is no checkout to ask.
const COMMIT_ENV: &str = "STREAMSPACE_COMMIT";

fn main() {
    println!("cargo:rerun-if-env-changed={COMMIT_ENV}");
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = git_commit(&manifest_dir)
        .or_else(|| env_commit(std::env::var(COMMIT_ENV).ok()))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=STREAMSPACE_BUILD_COMMIT={commit}");
}

/// The checkout's HEAD, only if the checkout is this crate's own (a packaged crate unpacked
/// inside some other repository must not report that repository's commit).
fn git_commit(dir: &Path) -> Option<String> {
    let toplevel = git(dir, &["rev-parse", "--show-toplevel"])?;
    let same = Path::new(&toplevel).canonicalize().ok()? == dir.canonicalize().ok()?;
    if !same {
        return None;
    }
    let commit = git(dir, &["rev-parse", "--short=12", "HEAD"])?;
    // Rebuild when HEAD moves: HEAD itself (branch switch, detached checkout) and the branch
    // it points at (a new commit); paths come from Git, so worktrees work too.
    for name in ["HEAD", "packed-refs"] {
        rerun_if_git_path_changed(dir, name);
    }
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        rerun_if_git_path_changed(dir, &branch);
    }
    Some(commit)
}

/// A commit given in the environment, if it looks like one (hex, 7 to 40 characters).
fn env_commit(value: Option<String>) -> Option<String> {
    let value = value?.trim().to_owned();
    let hex = value.chars().all(|c| c.is_ascii_hexdigit());
    (hex && (7..=40).contains(&value.len())).then(|| value.chars().take(12).collect())
}

fn rerun_if_git_path_changed(dir: &Path, name: &str) {
    let path = git(
        dir,
        &["rev-parse", "--path-format=absolute", "--git-path", name],
    );
    // Only existing files: Cargo reruns the script on every build while a listed path is missing.
    if let Some(path) = path
        && Path::new(&path).exists()
    {
        println!("cargo:rerun-if-changed={path}");
    }
}

/// One line of `git` output, or `None` when Git is missing or fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let line = text.trim();
    (!line.is_empty()).then(|| line.to_owned())
}
