//! What every executor provides for one task. The process executor runs a
//! task with a command and no image; the container executor one with an
//! image; a fake one (tests, simulator) follows the same shape.

use std::future::Future;
use std::time::Duration;

/// Why a step failed, in the words the user will read in `service ps`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TaskFailure(pub String);

/// What identifies a started workload: to the user in `service ps` and
/// `task inspect`, and to its driver when a later agent adopts or kills it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Workload {
    /// The process (group) id; for a container, its main process on the host.
    pub pid: u32,
    /// Empty for a process.
    pub container_id: String,
}

impl Workload {
    /// A process (group) `pid`.
    pub fn process(pid: u32) -> Workload {
        Workload {
            pid,
            container_id: String::new(),
        }
    }
}

/// How a task's process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitOutcome {
    /// The exit code; 128 + the signal number when a signal ended it, as
    /// shells and docker report it (`kill -9` gives 137).
    pub exit_code: i32,
    /// `exit status 3`, `exit status 137` …
    pub message: String,
}

impl ExitOutcome {
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }
}

/// The life of one task's workload.
///
/// # Cancel safety
/// `wait` is cancel safe: dropping it at any point (the task runner does
/// whenever the desired state changes) leaves nothing half-done: a later
/// `wait` or `shutdown` still finds the workload, its exit code and
/// whatever clean-up its end still needs.
pub trait Executor: Send + 'static {
    /// Everything short of starting: resolve the program, create the task's
    /// directory. A failure here makes the task REJECTED.
    fn prepare(&mut self) -> impl Future<Output = Result<(), TaskFailure>> + Send;
    /// Start the workload. A failure here makes it FAILED.
    fn start(&mut self) -> impl Future<Output = Result<Workload, TaskFailure>> + Send;
    /// Wait for the workload to end.
    fn wait(&mut self) -> impl Future<Output = Result<ExitOutcome, TaskFailure>> + Send;
    /// Ask the workload to stop (SIGTERM), then force it after `grace`.
    /// Returns how it ended when it had already ended on its own before it
    /// was asked (its exit code must not be lost to a stop that came after),
    /// `None` when the stop ended it.
    ///
    /// # Cancel safety
    /// Not cancel safe; it is always run to the end. A `wait` dropped before
    /// it leaves nothing that makes it return early.
    fn shutdown(
        &mut self,
        grace: Duration,
    ) -> impl Future<Output = Result<Option<ExitOutcome>, TaskFailure>> + Send;
    /// Remove whatever the task left behind (its directory, logs).
    fn remove(&mut self) -> impl Future<Output = Result<(), TaskFailure>> + Send;
    /// Periodic upkeep while the workload runs (log rotation).
    fn housekeeping(&mut self) {}
    /// Runs the task's health check `command` once, in the task's context,
    /// within `timeout`. The future owns what it needs: it runs beside
    /// `wait`, and a task that ends meanwhile is seen at once.
    fn probe(
        &self,
        command: &str,
        timeout: Duration,
    ) -> impl Future<Output = shoal_api::HealthProbe> + Send + 'static;
    /// News of a long prepare (an image's pull), for the task's status
    /// message while it is PREPARING; taken once, before `prepare`.
    fn progress(&mut self) -> Option<tokio::sync::watch::Receiver<String>> {
        None
    }
    /// A health check the workload brings itself (an image's HEALTHCHECK),
    /// known once prepared; used when the task's spec sets none.
    fn own_health_check(&mut self) -> impl Future<Output = Option<shoal_api::HealthConfig>> + Send {
        async { None }
    }
}
