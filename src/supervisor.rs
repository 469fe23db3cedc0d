//! One supervisor per process for its long-running tasks (consumers, HTTP
//! servers, the sweeper): each runs until shutdown; the first that stops
//! before it — with an error, a panic, or just returning — cancels shutdown
//! for all the others, and the process ends with that task's name and error.
//! Shutdown itself is bounded, and a second signal ends the process at once.
//!
//! It owns task lifetimes and signals; it knows nothing of what the tasks do.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A supervised task ended the process.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// It returned an error.
    #[error("{task} failed: {error}")]
    Failed {
        /// The task's name.
        task: &'static str,
        /// What it reported.
        error: String,
    },
    /// It returned before shutdown was asked for.
    #[error("{task} stopped unexpectedly")]
    Stopped {
        /// The task's name.
        task: &'static str,
    },
    /// It panicked.
    #[error("{task} panicked: {message}")]
    Panicked {
        /// The task's name.
        task: &'static str,
        /// The panic's message, if it had one.
        message: String,
    },
    /// Some tasks were still running when the shutdown grace ran out.
    #[error("shutdown took longer than {0:?}; still running: {1}")]
    Timeout(Duration, String),
}

/// Long-running tasks that live and die together.
pub struct Supervisor {
    shutdown: CancellationToken,
    tasks: JoinSet<Result<(), String>>,
    names: HashMap<tokio::task::Id, &'static str>,
    grace: Duration,
}

impl Supervisor {
    /// Tasks stopped by `shutdown`, which the supervisor cancels when one of
    /// them ends early; after it, they get `grace` to finish.
    pub fn new(shutdown: CancellationToken, grace: Duration) -> Self {
        Self { shutdown, tasks: JoinSet::new(), names: HashMap::new(), grace }
    }

    /// Runs `task` as `name`; it should end only after shutdown.
    pub fn spawn<F, E>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let handle = self.tasks.spawn(async move { task.await.map_err(|e| e.to_string()) });
        self.names.insert(handle.id(), name);
    }

    /// Waits for every task. The first to end before shutdown (or to fail,
    /// or to panic) cancels the rest; its error is the result.
    pub async fn wait(mut self) -> Result<(), TaskError> {
        let mut first: Option<TaskError> = None;
        let deadline = async {
            self.shutdown.cancelled().await;
            tokio::time::sleep(self.grace).await;
        };
        tokio::pin!(deadline);
        loop {
            let joined = tokio::select! {
                joined = self.tasks.join_next_with_id() => joined,
                () = &mut deadline => {
                    self.tasks.abort_all();
                    let mut running: Vec<&str> = self.names.values().copied().collect();
                    running.sort_unstable();
                    let error = TaskError::Timeout(self.grace, running.join(", "));
                    tracing::error!(error = %error, "shutdown is taking too long");
                    return Err(first.unwrap_or(error));
                }
            };
            let Some(joined) = joined else { break };
            let id = joined.as_ref().map_or_else(tokio::task::JoinError::id, |(id, _)| *id);
            let task = self.names.remove(&id).unwrap_or("a task");
            let error = match joined {
                Ok((_, Err(error))) => Some(TaskError::Failed { task, error }),
                Ok((_, Ok(()))) if !self.shutdown.is_cancelled() => Some(TaskError::Stopped { task }),
                Ok((_, Ok(()))) => None,
                Err(e) => Some(TaskError::Panicked { task, message: panic_message(e) }),
            };
            if let Some(error) = error {
                tracing::error!(error = %error, "a task ended; stopping the process");
                self.shutdown.cancel();
                first.get_or_insert(error);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// What a panicked (or aborted) task said.
fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => panic_text(payload.as_ref()),
        Err(e) => e.to_string(),
    }
}

/// The message of a panic's payload.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned())
}

/// Resolves at the next SIGINT or SIGTERM.
async fn signalled(term: &mut tokio::signal::unix::Signal) {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// A token cancelled on SIGINT or SIGTERM. A second signal ends the process
/// at once (exit code 130), whatever shutdown is waiting for.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install SIGTERM handler");
        signalled(&mut term).await;
        // Cancel first: logging may fail (a closed terminal), stopping may not.
        cancel.cancel();
        tracing::info!("shutting down: finishing in-flight work (a second signal stops at once)");
        signalled(&mut term).await;
        tracing::warn!("second signal: stopping now");
        std::process::exit(130);
    });
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_task_to_fail_stops_the_others_and_is_named() {
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new(shutdown.clone(), Duration::from_secs(5));
        let waits = shutdown.clone();
        supervisor.spawn("http", async move {
            waits.cancelled().await;
            Ok::<(), String>(())
        });
        supervisor.spawn("consumers", async { Err::<(), _>("the queue is gone") });
        let error = supervisor.wait().await.unwrap_err();
        assert_eq!(error.to_string(), "consumers failed: the queue is gone");
        assert!(shutdown.is_cancelled());
    }

    #[tokio::test]
    async fn a_task_that_returns_early_or_panics_stops_the_process() {
        let mut supervisor = Supervisor::new(CancellationToken::new(), Duration::from_secs(5));
        supervisor.spawn("sweeper", async { Ok::<(), String>(()) });
        assert_eq!(supervisor.wait().await.unwrap_err().to_string(), "sweeper stopped unexpectedly");
        let mut supervisor = Supervisor::new(CancellationToken::new(), Duration::from_secs(5));
        supervisor.spawn("http", async {
            if true {
                panic!("boom");
            }
            Ok::<(), String>(())
        });
        assert_eq!(supervisor.wait().await.unwrap_err().to_string(), "http panicked: boom");
    }

    #[tokio::test]
    async fn shutdown_is_clean_when_every_task_ends_after_it_and_bounded_when_one_does_not() {
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new(shutdown.clone(), Duration::from_millis(50));
        let waits = shutdown.clone();
        supervisor.spawn("http", async move {
            waits.cancelled().await;
            Ok::<(), String>(())
        });
        supervisor.spawn("stuck", std::future::pending::<Result<(), String>>());
        shutdown.cancel();
        let error = supervisor.wait().await.unwrap_err();
        assert!(error.to_string().contains("still running: stuck"), "{error}");
    }
}
