//! Child processes of the control plane that never outlive this process.
//!
//! Every child is started with `PR_SET_PDEATHSIG = SIGKILL`. The kernel delivers that signal when
//! the *thread* that forked the child exits, not the process, so all children are forked by one
//! dedicated, never-ending spawner thread. Tests that keep a control plane in a `static` (and
//! therefore never drop it) still leave no processes behind.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::Error;

/// A request to the spawner thread.
struct SpawnRequest {
    command: Command,
    reply: tokio::sync::oneshot::Sender<io::Result<Child>>,
}

/// The queue of the spawner thread, or why the thread could not be started. The sender is never
/// dropped, so the thread never exits.
static SPAWNER: OnceLock<Result<mpsc::Sender<SpawnRequest>, String>> = OnceLock::new();

/// Returns the queue of the spawner thread, starting the thread on first use.
fn spawner() -> Result<&'static mpsc::Sender<SpawnRequest>, Error> {
    SPAWNER
        .get_or_init(start_spawner_thread)
        .as_ref()
        .map_err(|message| {
            Error::io(
                "starting the process spawner thread",
                io::Error::other(message.clone()),
            )
        })
}

/// Starts the spawner thread and returns its queue.
fn start_spawner_thread() -> Result<mpsc::Sender<SpawnRequest>, String> {
    let (sender, receiver) = mpsc::channel::<SpawnRequest>();
    std::thread::Builder::new()
        .name("devcluster-spawner".into())
        .spawn(move || serve_spawn_requests(&receiver))
        .map_err(|e| e.to_string())?;
    Ok(sender)
}

/// The body of the spawner thread: forks every requested command, forever.
fn serve_spawn_requests(receiver: &mpsc::Receiver<SpawnRequest>) {
    while let Ok(mut request) = receiver.recv() {
        let result = request.command.spawn();
        // The requester may have given up waiting: do not leave its child running.
        if let Err(Ok(mut child)) = request.reply.send(result) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running component of the control plane with its log file.
#[derive(Debug)]
pub(crate) struct ManagedProcess {
    name: &'static str,
    child: Child,
    log: PathBuf,
    exit: Option<ExitStatus>,
}

impl ManagedProcess {
    /// Starts `program args…` with stdout and stderr appended to `log`.
    pub(crate) async fn spawn(
        name: &'static str,
        program: &Path,
        args: &[String],
        log: PathBuf,
    ) -> Result<Self, Error> {
        let command = build_command(name, program, args, &log)?;
        let (reply, response) = tokio::sync::oneshot::channel();
        spawner()?
            .send(SpawnRequest { command, reply })
            .map_err(|_| spawn_error(name, program, "spawner thread is gone"))?;
        let child = response
            .await
            .map_err(|_| spawn_error(name, program, "spawner thread dropped the request"))?
            .map_err(|source| Error::Spawn {
                name,
                program: program.to_path_buf(),
                source,
            })?;
        tracing::debug!(name, pid = child.id(), log = %log.display(), "started");
        Ok(Self {
            name,
            child,
            log,
            exit: None,
        })
    }

    /// The component's short name.
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// The component's log file.
    pub(crate) fn log(&self) -> &Path {
        &self.log
    }

    /// Fails with [`Error::ProcessExited`] (including the log tail) if the process has exited.
    pub(crate) fn ensure_running(&mut self) -> Result<(), Error> {
        match self.poll_exit() {
            None => Ok(()),
            Some(status) => Err(Error::ProcessExited {
                name: self.name,
                status: describe_exit(status),
                log: self.log.clone(),
                tail: log_tail(&self.log, 40),
            }),
        }
    }

    /// Sends SIGTERM without waiting.
    pub(crate) fn signal_terminate(&mut self) {
        if self.poll_exit().is_none() {
            send_signal(&self.child, libc::SIGTERM);
        }
    }

    /// Waits until `deadline` for the process to exit, then kills it.
    pub(crate) fn wait_or_kill(&mut self, deadline: Instant) {
        while self.poll_exit().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.poll_exit().is_none() {
            tracing::debug!(name = self.name, "did not exit after SIGTERM, killing");
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.exit = Some(status);
            }
        }
    }

    /// The exit status, once the process has exited (reaps it).
    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.signal_terminate();
        self.wait_or_kill(Instant::now() + Duration::from_secs(1));
    }
}

/// Builds the command: stdin closed, output to `log`, own process group (so a terminal's Ctrl-C
/// reaches only us and we shut the children down in order), SIGKILL on parent death.
fn build_command(
    name: &'static str,
    program: &Path,
    args: &[String],
    log: &Path,
) -> Result<Command, Error> {
    let stdout = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io(format!("opening the {name} log {}", log.display()), e))?;
    let stderr = stdout
        .try_clone()
        .map_err(|e| Error::io(format!("duplicating the {name} log handle"), e))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
    // (prctl, getppid) without allocating.
    unsafe {
        command.pre_exec(move || die_with_parent(parent));
    }
    Ok(command)
}

/// In the forked child: ask for SIGKILL when the parent goes away, and bail out if it already
/// has (the parent could have died between fork and prctl).
fn die_with_parent(parent: u32) -> io::Result<()> {
    // SAFETY: plain system calls without pointers.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getppid has no preconditions.
    let current_parent = unsafe { libc::getppid() };
    if u32::try_from(current_parent).ok() != Some(parent) {
        return Err(io::Error::other("parent exited before exec"));
    }
    Ok(())
}

/// Sends `signal` to the child if it has a valid pid.
fn send_signal(child: &Child, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Human-readable exit status (`exit code 1`, `killed by signal 9`).
fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// Builds an [`Error::Spawn`] from a message.
fn spawn_error(name: &'static str, program: &Path, message: &str) -> Error {
    Error::Spawn {
        name,
        program: program.to_path_buf(),
        source: io::Error::other(message.to_owned()),
    }
}

/// The last `lines` lines of a log file (or a note that it could not be read).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) => return format!("<cannot read {}: {e}>", path.display()),
    };
    let all: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spawned_process_is_reaped_and_logged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("echo.log");
        let args = vec!["-c".to_owned(), "echo hello; exit 3".to_owned()];
        let mut process = ManagedProcess::spawn("sh", Path::new("/bin/sh"), &args, log.clone())
            .await
            .expect("spawn");
        process.wait_or_kill(Instant::now() + Duration::from_secs(5));
        let err = process.ensure_running().expect_err("must have exited");
        let message = err.to_string();
        assert!(message.contains("exit code 3"), "{message}");
        assert!(message.contains("hello"), "{message}");
    }

    #[test]
    fn log_tail_keeps_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("x.log");
        std::fs::write(&log, "a\nb\nc\n").expect("write");
        assert_eq!(log_tail(&log, 2), "b\nc");
    }
}
