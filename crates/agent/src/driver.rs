//! The seam between the agent and the kind of workload its node runs.
//!
//! A [`Driver`] makes each task's [`Executor`] and knows the workloads an
//! earlier agent left running; the agent decides what to do with them
//! ([`crate::Resume`]) and never touches a process, a container or a file
//! itself. The process driver ([`crate::ProcessDriver`]) runs tasks as
//! processes; the docker driver will run them as containers; the simulator
//! brings a fake one, so its thousands of agents are this crate's agent.

use std::collections::HashMap;

use shoal_api::Task;

use crate::executor::Executor;

/// The kind of workload a node runs. `handle` is what identifies a
/// workload to its driver (a process group id for processes).
pub trait Driver: Send + Sync + 'static {
    type Executor: Executor;
    /// An executor for a task that starts on this node.
    fn executor(&self, task: &Task) -> Self::Executor;
    /// An executor that takes over `handle`, the workload of this task an
    /// earlier agent started and left running.
    fn adopt(&self, task: &Task, handle: u32) -> Self::Executor;
    /// The workloads earlier agents left running, by task id.
    fn leftovers(&self) -> HashMap<String, u32>;
    /// Ends a leftover workload that no task may run any more, outright.
    fn kill(&self, task_id: &str, handle: u32);
    /// Removes what a task that left this node left behind (its directory,
    /// its logs).
    fn clean_up(&self, task_id: &str);
    /// The directory holding a task's `stdout.log` and `stderr.log`;
    /// `None` where tasks keep no logs.
    fn log_dir(&self, task_id: &str) -> Option<std::path::PathBuf>;
}
