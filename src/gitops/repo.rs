//! Git access through libgit2: one bare clone per GitSync in a cache directory, fetched on every
//! sync, and the files of one exact commit read straight from its tree (no work tree, so a
//! half-finished checkout can never be read and two commits never mix).
//!
//! libgit2 blocks, so every call runs in `spawn_blocking` under a deadline: a tokio timeout
//! bounds the wait, and the transfer callbacks abort the fetch itself once the deadline passed.

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use git2::{
    CredentialType, FetchOptions, RemoteCallbacks, Repository, TreeWalkMode, TreeWalkResult,
};
use sha2::{Digest, Sha256};

use super::limits::Limits;
use super::manifest::SourceFile;

/// Longest a fetch may take before it is abandoned.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Server connect and read timeouts of libgit2's transports, so a silent server cannot hang a
/// blocking thread for ever.
const SERVER_TIMEOUT_MS: i32 = 30_000;
/// Attempts of the credentials callback: libgit2 asks again after each refused credential.
const CREDENTIAL_ATTEMPTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// Shown in status and Events: a fixed description, never text from the server.
    #[error("git {action} failed: {}", public_reason(source))]
    Git {
        action: &'static str,
        #[source]
        source: git2::Error,
    },
    #[error("git fetch did not finish within {0:?}")]
    Timeout(Duration),
    #[error("branch {0:?} does not exist in the repository")]
    BranchMissing(String),
    #[error("{0} is not UTF-8 text")]
    NotText(String),
    #[error("git task failed: {0}")]
    Task(String),
    /// The commit is over a limit of the controller: a rejection, not a fetch failure.
    #[error("{0}")]
    Limit(String),
}

/// A fixed description of a libgit2 error. libgit2 passes on text the remote sends (`ERR`
/// lines, HTTP error pages), so the message itself is only logged, never put in status.
pub fn public_reason(error: &git2::Error) -> &'static str {
    use git2::{ErrorClass as C, ErrorCode as E};
    match (error.code(), error.class()) {
        (E::Auth, _) => "authentication failed (check the credentials Secret)",
        (E::Certificate, _) => "the server's TLS certificate was refused",
        (E::NotFound, _) => "the repository or reference was not found",
        (E::User, _) => "aborted (deadline or transfer size exceeded)",
        (_, C::Ssh) => "SSH error (host key, key or connection)",
        (_, C::Http) => "HTTP error from the server",
        (_, C::Net) => "network error (connection, name resolution or TLS)",
        (_, C::Ssl) => "TLS error",
        (_, C::Os) => "operating system error (disk or network)",
        (_, C::Odb | C::Object | C::Reference | C::Repository | C::Index) => {
            "the local clone is unreadable"
        }
        _ => "git error",
    }
}

impl RepoError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            RepoError::Git { source, .. } if source.class() == git2::ErrorClass::Ssh => "git_auth",
            RepoError::Git { source, .. } if source.code() == git2::ErrorCode::Auth => "git_auth",
            RepoError::Git { .. } => "git",
            RepoError::Timeout(_) => "git_timeout",
            RepoError::BranchMissing(_) => "git_branch_missing",
            RepoError::NotText(_) => "git_not_text",
            RepoError::Task(_) => "git_task",
            RepoError::Limit(_) => "limit",
        }
    }
}

fn git(action: &'static str) -> impl FnOnce(git2::Error) -> RepoError {
    move |source| RepoError::Git { action, source }
}

/// Credentials read from the GitSync's Secret.
#[derive(Clone, Default)]
pub struct Credentials {
    pub username: Option<String>,
    /// HTTPS password or token.
    pub password: Option<String>,
    /// SSH private key (PEM or OpenSSH format).
    pub ssh_key: Option<String>,
    pub passphrase: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ssh_key", &self.ssh_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// What to fetch, and where to keep the clone.
#[derive(Clone, Debug)]
pub struct FetchRequest {
    pub url: String,
    pub branch: String,
    /// Directory of this repository's bare clone.
    pub dir: PathBuf,
    pub credentials: Option<Credentials>,
    pub timeout: Duration,
    /// Bytes the transfer may take before it is aborted.
    pub max_bytes: usize,
}

/// The cache directory of one GitSync's clone: a new URL means a new clone.
pub fn cache_dir(root: &Path, sync_id: &str, url: &str) -> PathBuf {
    let digest = Sha256::digest(format!("{sync_id}\n{url}").as_bytes());
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    root.join(hex)
}

fn set_transport_timeouts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: libgit2 global options, set once before any transport is used.
        unsafe {
            let _ = git2::opts::set_server_connect_timeout_in_milliseconds(SERVER_TIMEOUT_MS);
            let _ = git2::opts::set_server_timeout_in_milliseconds(SERVER_TIMEOUT_MS);
        }
    });
}

/// Fetches the branch and returns the commit it points at.
pub async fn fetch(request: FetchRequest) -> Result<String, RepoError> {
    let timeout = request.timeout;
    let task = tokio::task::spawn_blocking(move || fetch_blocking(&request));
    match tokio::time::timeout(timeout + Duration::from_secs(1), task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(RepoError::Task(join.to_string())),
        Err(_) => Err(RepoError::Timeout(timeout)),
    }
}

fn fetch_blocking(request: &FetchRequest) -> Result<String, RepoError> {
    set_transport_timeouts();
    let repo = match Repository::open_bare(&request.dir) {
        Ok(repo) => repo,
        Err(_) => {
            std::fs::create_dir_all(&request.dir)
                .map_err(|e| git("init")(git2::Error::from_str(&e.to_string())))?;
            Repository::init_bare(&request.dir).map_err(git("init"))?
        }
    };
    let deadline = Instant::now() + request.timeout;
    let max_bytes = request.max_bytes;
    let oversized = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut callbacks = RemoteCallbacks::new();
    let flag = oversized.clone();
    callbacks.transfer_progress(move |progress| {
        if progress.received_bytes() > max_bytes {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
            return false;
        }
        Instant::now() < deadline
    });
    callbacks.sideband_progress(move |_| Instant::now() < deadline);
    if let Some(credentials) = request.credentials.clone() {
        let mut attempts = 0;
        callbacks.credentials(move |_url, user_from_url, allowed| {
            attempts += 1;
            if attempts > CREDENTIAL_ATTEMPTS {
                return Err(git2::Error::from_str("credentials were refused"));
            }
            credential(&credentials, user_from_url, allowed)
        });
    }
    let mut options = FetchOptions::new();
    options.remote_callbacks(callbacks);
    if allows_shallow(&request.url) {
        // Only the tip is ever read: history would cost transfer time and disk for nothing.
        options.depth(1);
    }
    let tracking = format!("refs/remotes/origin/{}", request.branch);
    let refspec = format!("+refs/heads/{}:{tracking}", request.branch);
    let mut remote = repo.remote_anonymous(&request.url).map_err(git("remote"))?;
    let fetched = remote.fetch(&[refspec.as_str()], Some(&mut options), None);
    if let Err(source) = fetched {
        if oversized.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(RepoError::Limit(format!(
                "the fetch transferred more than {max_bytes} bytes (--gitsync-max-fetch-bytes)"
            )));
        }
        if Instant::now() >= deadline {
            return Err(RepoError::Timeout(request.timeout));
        }
        return Err(RepoError::Git {
            action: "fetch",
            source,
        });
    }
    let oid = repo
        .refname_to_id(&tracking)
        .map_err(|_| RepoError::BranchMissing(request.branch.clone()))?;
    Ok(oid.to_string())
}

/// Network transports can fetch only the tip of the branch; libgit2's local transport
/// (`file://` and plain paths) cannot, so those fetch in full.
fn allows_shallow(url: &str) -> bool {
    let network_scheme = ["https://", "http://", "ssh://", "git://"]
        .iter()
        .any(|scheme| url.starts_with(scheme));
    // scp-like `user@host:path`
    let scp_like = !url.contains("://")
        && url
            .split_once(':')
            .is_some_and(|(host, _)| host.contains('@'));
    network_scheme || scp_like
}

fn credential(
    credentials: &Credentials,
    user_from_url: Option<&str>,
    allowed: CredentialType,
) -> Result<git2::Cred, git2::Error> {
    let username = credentials
        .username
        .as_deref()
        .or(user_from_url)
        .unwrap_or("git");
    if allowed.contains(CredentialType::USERNAME) {
        return git2::Cred::username(username);
    }
    if allowed.contains(CredentialType::SSH_KEY)
        && let Some(key) = &credentials.ssh_key
    {
        return git2::Cred::ssh_key_from_memory(
            username,
            None,
            key,
            credentials.passphrase.as_deref(),
        );
    }
    if allowed.contains(CredentialType::USER_PASS_PLAINTEXT)
        && let Some(password) = &credentials.password
    {
        return git2::Cred::userpass_plaintext(username, password);
    }
    Err(git2::Error::from_str(
        "the credentials Secret has nothing the server accepts (token/password for HTTPS, identity for SSH)",
    ))
}

/// Reads every YAML file of `commit` in the clone at `dir`.
pub async fn read_commit(dir: PathBuf, commit: String) -> Result<Vec<SourceFile>, RepoError> {
    read_commit_below(dir, commit, String::new(), Limits::default()).await
}

/// Reads the YAML files of `commit` below `prefix` (a directory, empty for the root), checking
/// their number and sizes against `limits` from the blob headers before any is read.
pub async fn read_commit_below(
    dir: PathBuf,
    commit: String,
    prefix: String,
    limits: Limits,
) -> Result<Vec<SourceFile>, RepoError> {
    tokio::task::spawn_blocking(move || read_commit_blocking(&dir, &commit, &prefix, &limits))
        .await
        .map_err(|e| RepoError::Task(e.to_string()))?
}

fn read_commit_blocking(
    dir: &Path,
    commit: &str,
    prefix: &str,
    limits: &Limits,
) -> Result<Vec<SourceFile>, RepoError> {
    let repo = Repository::open_bare(dir).map_err(git("open"))?;
    let oid = git2::Oid::from_str(commit).map_err(git("parse commit id"))?;
    let tree = repo
        .find_commit(oid)
        .and_then(|c| c.tree())
        .map_err(git("read commit"))?;
    let prefix = match prefix.trim_matches('/') {
        "" => String::new(),
        dir => format!("{dir}/"),
    };
    let mut entries = Vec::new();
    tree.walk(TreeWalkMode::PreOrder, |parent, entry| {
        let name = entry.name().unwrap_or_default();
        let path = format!("{parent}{name}");
        if entry.kind() == Some(git2::ObjectType::Tree) {
            // Only directories on the way to the prefix, or below it, are walked.
            let dir = format!("{path}/");
            return match dir.starts_with(&prefix) || prefix.starts_with(&dir) {
                true => TreeWalkResult::Ok,
                false => TreeWalkResult::Skip,
            };
        }
        if entry.kind() == Some(git2::ObjectType::Blob)
            && path.starts_with(&prefix)
            && (name.ends_with(".yaml") || name.ends_with(".yml"))
        {
            entries.push((path, entry.id()));
            if entries.len() > limits.max_files {
                return TreeWalkResult::Abort;
            }
        }
        TreeWalkResult::Ok
    })
    .or_else(|e| match entries.len() > limits.max_files {
        true => Ok(()),
        false => Err(e),
    })
    .map_err(git("walk tree"))?;
    let odb = repo.odb().map_err(git("open the object database"))?;
    let mut sizes = Vec::with_capacity(entries.len());
    for (path, id) in &entries {
        let (size, _) = odb.read_header(*id).map_err(git("read blob header"))?;
        sizes.push((path.clone(), size as u64));
    }
    limits.check_files(&sizes).map_err(RepoError::Limit)?;
    let mut files = Vec::new();
    for (path, id) in entries {
        let blob = repo.find_blob(id).map_err(git("read blob"))?;
        let content = String::from_utf8(blob.content().to_vec())
            .map_err(|_| RepoError::NotText(path.clone()))?;
        files.push(SourceFile { path, content });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real repository on disk with one commit per call of `commit`.
    fn commit(repo: &Repository, files: &[(&str, &str)], message: &str) -> String {
        let workdir = repo.workdir().expect("non-bare test repo").to_path_buf();
        let mut index = repo.index().expect("index");
        for (path, content) in files {
            let full = workdir.join(path);
            std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
            std::fs::write(&full, content).expect("write");
            index.add_path(Path::new(path)).expect("add");
        }
        index.write().expect("write index");
        let tree = repo
            .find_tree(index.write_tree().expect("tree"))
            .expect("tree");
        let signature = git2::Signature::now("test", "test@example.com").expect("signature");
        let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        repo.commit(
            Some("refs/heads/main"),
            &signature,
            &signature,
            message,
            &tree,
            &parents,
        )
        .expect("commit")
        .to_string()
    }

    #[test]
    fn shallow_only_over_network_transports() {
        let cases = [
            ("https://example.com/r.git", true),
            ("http://example.com/r.git", true),
            ("ssh://git@example.com/r.git", true),
            ("git://example.com/r.git", true),
            ("git@example.com:org/r.git", true),
            ("file:///srv/r.git", false),
            ("/srv/r.git", false),
            ("C:/repos/r.git", false),
        ];
        for (url, shallow) in cases {
            assert_eq!(allows_shallow(url), shallow, "{url}");
        }
    }

    /// `git daemon` in a process group of its own: `git` forks `git-daemon`, so the whole group
    /// is stopped when the test ends, even when it fails.
    struct GitDaemon(std::process::Child);

    impl GitDaemon {
        fn start(base: &std::path::Path, port: u16) -> GitDaemon {
            use std::os::unix::process::CommandExt;
            let child = std::process::Command::new("git")
                .arg("daemon")
                .arg("--export-all")
                .arg("--reuseaddr")
                .arg("--listen=127.0.0.1")
                .arg(format!("--port={port}"))
                .arg(format!("--base-path={}", base.display()))
                .arg(base)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .process_group(0)
                .spawn()
                .expect("git daemon");
            GitDaemon(child)
        }
    }

    impl Drop for GitDaemon {
        fn drop(&mut self) {
            if let Ok(pid) = i32::try_from(self.0.id()) {
                // SAFETY: signalling a process group we created; no memory is involved.
                unsafe {
                    libc::killpg(pid, libc::SIGTERM);
                }
            }
            let _ = self.0.wait();
        }
    }

    /// A real network transport: `git daemon` serving over git://, fetched shallow.
    #[tokio::test]
    async fn fetches_shallow_over_the_git_protocol() {
        let base = tempfile::tempdir().expect("tempdir");
        let cache = tempfile::tempdir().expect("tempdir");
        let origin_path = base.path().join("origin");
        let origin = Repository::init(&origin_path).expect("init");
        origin.set_head("refs/heads/main").expect("head");
        commit(&origin, &[("a.yaml", "one\n")], "first");
        let tip = commit(&origin, &[("a.yaml", "two\n")], "second");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let _daemon = GitDaemon::start(base.path(), port);
        let request = FetchRequest {
            url: format!("git://127.0.0.1:{port}/origin"),
            branch: "main".into(),
            dir: cache_dir(cache.path(), "ns/sync", "u"),
            credentials: None,
            timeout: FETCH_TIMEOUT,
            max_bytes: usize::MAX,
        };
        let mut fetched = None;
        for _ in 0..50 {
            match fetch(request.clone()).await {
                Ok(oid) => {
                    fetched = Some(oid);
                    break;
                }
                // The daemon may not listen yet.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
        assert_eq!(fetched.as_deref(), Some(tip.as_str()));
        let cached = Repository::open_bare(&request.dir).expect("cache");
        assert!(cached.is_shallow(), "only the tip was fetched");
        let files = read_commit(request.dir.clone(), tip).await.expect("read");
        assert_eq!(files[0].content, "two\n");
        // The next commit arrives on top of the shallow cache.
        let next = commit(&origin, &[("a.yaml", "three\n")], "third");
        assert_eq!(fetch(request.clone()).await.expect("fetch again"), next);
        let files = read_commit(request.dir.clone(), next).await.expect("read");
        assert_eq!(files[0].content, "three\n");
    }

    #[tokio::test]
    async fn fetches_each_new_commit_and_reads_exactly_its_files() {
        let origin_dir = tempfile::tempdir().expect("tempdir");
        let cache = tempfile::tempdir().expect("tempdir");
        let origin = Repository::init(origin_dir.path()).expect("init");
        origin.set_head("refs/heads/main").expect("head");
        let first = commit(&origin, &[("a.yaml", "one\n"), ("README.md", "x")], "first");
        let request = FetchRequest {
            url: format!("file://{}", origin_dir.path().display()),
            branch: "main".into(),
            dir: cache_dir(cache.path(), "ns/sync", "u"),
            credentials: None,
            timeout: FETCH_TIMEOUT,
            max_bytes: usize::MAX,
        };
        assert_eq!(fetch(request.clone()).await.expect("fetch"), first);
        let second = commit(
            &origin,
            &[("a.yaml", "two\n"), ("d/b.yml", "b\n")],
            "second",
        );
        assert_eq!(fetch(request.clone()).await.expect("fetch"), second);
        let old = read_commit(request.dir.clone(), first).await.expect("read");
        assert_eq!(
            old,
            vec![SourceFile {
                path: "a.yaml".into(),
                content: "one\n".into()
            }]
        );
        let new = read_commit(request.dir.clone(), second)
            .await
            .expect("read");
        let paths: Vec<&str> = new.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["a.yaml", "d/b.yml"]);
        assert_eq!(new[0].content, "two\n");
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        // A server that accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let cache = tempfile::tempdir().expect("tempdir");
        let started = Instant::now();
        let error = fetch(FetchRequest {
            url: format!("git://{addr}/repo.git"),
            branch: "main".into(),
            dir: cache.path().join("x"),
            credentials: None,
            timeout: Duration::from_millis(500),
            max_bytes: usize::MAX,
        })
        .await
        .expect_err("no answer");
        assert_eq!(error.metric_label(), "git_timeout", "{error}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        server.abort();
    }

    #[tokio::test]
    async fn a_missing_branch_or_repository_is_an_error() {
        let origin_dir = tempfile::tempdir().expect("tempdir");
        let cache = tempfile::tempdir().expect("tempdir");
        let origin = Repository::init(origin_dir.path()).expect("init");
        origin.set_head("refs/heads/main").expect("head");
        commit(&origin, &[("a.yaml", "one\n")], "first");
        let request = FetchRequest {
            url: format!("file://{}", origin_dir.path().display()),
            branch: "release".into(),
            dir: cache.path().join("x"),
            credentials: None,
            timeout: FETCH_TIMEOUT,
            max_bytes: usize::MAX,
        };
        let error = fetch(request.clone()).await.expect_err("no such branch");
        assert!(
            matches!(error, RepoError::BranchMissing(_) | RepoError::Git { .. }),
            "{error}"
        );
        let missing = FetchRequest {
            url: format!("file://{}/nothing-here", origin_dir.path().display()),
            ..request
        };
        let error = fetch(missing).await.expect_err("no such repository");
        assert_eq!(error.metric_label(), "git");
    }
}
