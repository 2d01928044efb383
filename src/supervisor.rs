//! One supervisor per process: every long-running task (HTTP servers, webhooks, watch caches,
//! reconcilers, the lease) runs under it, by name.
//!
//! A task that fails, or ends while the process is not shutting down, ends the whole process
//! with an error naming the task, so Kubernetes restarts it clean instead of leaving a replica
//! that answers `/healthz` but no longer does its work. On the shutdown signal every task is
//! told to stop ([`SupervisorHandle::stopping`]); tasks spawned with
//! [`SupervisorHandle::spawn_graceful`] finish by themselves (in-flight reconciles, open
//! requests), the others are cut at once.

use std::future::Future;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

/// Longest wait for graceful tasks after the shutdown signal; Kubernetes' default grace
/// period is 30 s, so we give up a little before it kills us.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(25);

/// What a supervised task returns.
pub type TaskResult = anyhow::Result<()>;

type BoxTask = futures::future::BoxFuture<'static, TaskResult>;

/// How a task is allowed to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    /// Runs until shutdown; cut when shutdown starts.
    Service,
    /// Runs until shutdown; finishes its own work after the signal.
    Graceful,
    /// Does its work once and may end (a start-up step).
    Once,
}

struct Spawn {
    name: String,
    lifetime: Lifetime,
    task: BoxTask,
}

/// Why the supervisor ended the process.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("task `{name}` failed: {error:#}")]
    Failed { name: String, error: anyhow::Error },
    #[error("task `{name}` ended unexpectedly")]
    Ended { name: String },
    #[error("task `{name}` panicked")]
    Panicked { name: String },
}

impl SupervisorError {
    /// Name of the task that ended the process.
    pub fn task(&self) -> &str {
        match self {
            SupervisorError::Failed { name, .. }
            | SupervisorError::Ended { name }
            | SupervisorError::Panicked { name } => name,
        }
    }
}

/// How one task ended, as the supervisor sees it.
#[derive(Debug)]
pub enum Ending {
    Ok,
    Err(anyhow::Error),
    Panicked,
    Cancelled,
}

/// Whether the end of a task ends the process: a pure rule, table-tested below.
pub fn verdict(
    name: &str,
    lifetime: Lifetime,
    ending: Ending,
    stopping: bool,
) -> Result<(), SupervisorError> {
    let name = name.to_string();
    match ending {
        Ending::Err(error) => Err(SupervisorError::Failed { name, error }),
        Ending::Panicked => Err(SupervisorError::Panicked { name }),
        Ending::Cancelled => Ok(()),
        Ending::Ok if stopping || lifetime == Lifetime::Once => Ok(()),
        Ending::Ok => Err(SupervisorError::Ended { name }),
    }
}

/// Spawns tasks into a running [`Supervisor`]; cheap to clone.
#[derive(Clone)]
pub struct SupervisorHandle {
    spawns: mpsc::UnboundedSender<Spawn>,
    stopping: watch::Receiver<bool>,
}

impl SupervisorHandle {
    /// A task that runs until shutdown; it is cut when shutdown starts.
    pub fn spawn(
        &self,
        name: impl Into<String>,
        task: impl Future<Output = TaskResult> + Send + 'static,
    ) {
        self.push(name.into(), Lifetime::Service, task.boxed());
    }

    /// A task that runs until shutdown and stops by itself once [`Self::stopping`] resolves.
    pub fn spawn_graceful(
        &self,
        name: impl Into<String>,
        task: impl Future<Output = TaskResult> + Send + 'static,
    ) {
        self.push(name.into(), Lifetime::Graceful, task.boxed());
    }

    /// A task that may end once its work is done (a failure still ends the process).
    pub fn spawn_once(
        &self,
        name: impl Into<String>,
        task: impl Future<Output = TaskResult> + Send + 'static,
    ) {
        self.push(name.into(), Lifetime::Once, task.boxed());
    }

    fn push(&self, name: String, lifetime: Lifetime, task: BoxTask) {
        // Fails only once the supervisor is gone, when nothing should run any more.
        if self
            .spawns
            .send(Spawn {
                name: name.clone(),
                lifetime,
                task,
            })
            .is_err()
        {
            warn!(task = %name, "supervisor already stopped; task not started");
        }
    }

    /// Resolves once shutdown has started.
    pub fn stopping(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut stopping = self.stopping.clone();
        async move {
            // An error means the supervisor is gone: stop as well.
            let _ = stopping.wait_for(|s| *s).await;
        }
    }

    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }
}

/// Owns every task of the process; see the module docs.
pub struct Supervisor {
    handle: SupervisorHandle,
    spawns: mpsc::UnboundedReceiver<Spawn>,
    stop: watch::Sender<bool>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    pub fn new() -> Self {
        let (tx, spawns) = mpsc::unbounded_channel();
        let (stop, stopping) = watch::channel(false);
        Supervisor {
            handle: SupervisorHandle {
                spawns: tx,
                stopping,
            },
            spawns,
            stop,
        }
    }

    pub fn handle(&self) -> SupervisorHandle {
        self.handle.clone()
    }

    /// Runs every task until `signal` resolves (then stops them) or one of them fails (then
    /// cuts the others and returns the failure).
    pub async fn run(
        mut self,
        signal: impl Future<Output = ()> + Send,
    ) -> Result<(), SupervisorError> {
        let mut tasks: JoinSet<(String, Lifetime, TaskResult)> = JoinSet::new();
        let mut names = std::collections::HashMap::new();
        let mut signal = std::pin::pin!(signal.fuse());
        let mut stopping = false;
        let mut grace = std::pin::pin!(futures::future::Fuse::terminated());
        loop {
            tokio::select! {
                // Spawns first, so no task asked for before the signal is lost.
                biased;
                Some(spawn) = self.spawns.recv() => {
                    let Spawn { name, lifetime, task } = spawn;
                    let cut = self.handle.stopping();
                    let task_name = name.clone();
                    let id = tasks
                        .spawn(async move {
                            let result = match lifetime {
                                Lifetime::Service => tokio::select! {
                                    result = task => result,
                                    () = cut => Ok(()),
                                },
                                Lifetime::Graceful | Lifetime::Once => task.await,
                            };
                            (task_name, lifetime, result)
                        })
                        .id();
                    names.insert(id, name);
                }
                () = &mut signal, if !stopping => {
                    info!("shutdown signal received; stopping every task");
                    stopping = true;
                    self.stop.send_replace(true);
                    if tasks.is_empty() {
                        return Ok(());
                    }
                    grace.set(tokio::time::sleep(SHUTDOWN_GRACE).fuse());
                }
                () = &mut grace => {
                    warn!(remaining = tasks.len(), "tasks still running after the shutdown grace period; cutting them");
                    tasks.shutdown().await;
                    return Ok(());
                }
                Some(joined) = tasks.join_next_with_id() => {
                    let (name, ending, lifetime) = match joined {
                        Ok((_, (name, lifetime, Ok(())))) => (name, Ending::Ok, lifetime),
                        Ok((_, (name, lifetime, Err(e)))) => (name, Ending::Err(e), lifetime),
                        Err(e) => {
                            let name = names.get(&e.id()).cloned().unwrap_or_default();
                            let ending = if e.is_panic() { Ending::Panicked } else { Ending::Cancelled };
                            (name, ending, Lifetime::Service)
                        }
                    };
                    if let Err(failure) = verdict(&name, lifetime, ending, stopping) {
                        error!(task = %name, error = %failure, "supervised task stopped; ending the process");
                        self.stop.send_replace(true);
                        tasks.shutdown().await;
                        return Err(failure);
                    }
                    if stopping && tasks.is_empty() {
                        info!("every task stopped");
                        return Ok(());
                    }
                }
                else => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_endings_end_the_process() {
        let err = || Ending::Err(anyhow::anyhow!("boom"));
        // (lifetime, ending, stopping, process ends)
        let rows: Vec<(Lifetime, Ending, bool, bool)> = vec![
            (Lifetime::Service, Ending::Ok, false, true),
            (Lifetime::Service, Ending::Ok, true, false),
            (Lifetime::Graceful, Ending::Ok, false, true),
            (Lifetime::Graceful, Ending::Ok, true, false),
            (Lifetime::Once, Ending::Ok, false, false),
            (Lifetime::Once, err(), false, true),
            (Lifetime::Service, err(), false, true),
            (Lifetime::Graceful, err(), true, true),
            (Lifetime::Service, Ending::Panicked, true, true),
            (Lifetime::Service, Ending::Cancelled, true, false),
        ];
        for (i, (lifetime, ending, stopping, ends)) in rows.into_iter().enumerate() {
            let result = verdict("t", lifetime, ending, stopping);
            assert_eq!(result.is_err(), ends, "row {i}");
            if let Err(e) = result {
                assert_eq!(e.task(), "t", "row {i}");
            }
        }
    }

    #[tokio::test]
    async fn a_failing_task_ends_the_run_with_its_name() {
        let supervisor = Supervisor::new();
        let handle = supervisor.handle();
        handle.spawn("forever", std::future::pending());
        handle.spawn("broken", async { Err(anyhow::anyhow!("port taken")) });
        let error = supervisor
            .run(std::future::pending())
            .await
            .expect_err("the failing task ends the run");
        assert_eq!(error.task(), "broken");
        assert!(error.to_string().contains("port taken"), "{error}");
    }

    #[tokio::test]
    async fn shutdown_waits_for_graceful_tasks_and_cuts_services() {
        let supervisor = Supervisor::new();
        let handle = supervisor.handle();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let stopping = handle.stopping();
        handle.spawn_graceful("graceful", async move {
            stopping.await;
            let _ = done_tx.send(());
            Ok(())
        });
        handle.spawn("service", std::future::pending());
        handle.spawn_once("start-up step", async { Ok(()) });
        let (signal_tx, signal_rx) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(supervisor.run(async move {
            let _ = signal_rx.await;
        }));
        let _ = signal_tx.send(());
        let result = run.await.expect("run task");
        assert!(result.is_ok(), "{result:?}");
        assert!(done_rx.await.is_ok(), "the graceful task finished its work");
    }
}
