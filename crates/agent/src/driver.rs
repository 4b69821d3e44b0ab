//! The seam between the agent and the kind of workload its node runs.
//!
//! A [`Driver`] makes each task's [`Executor`] and knows the workloads an
//! earlier agent left running; the agent decides what to do with them
//! ([`crate::Resume`]) and never touches a process, a container or a file
//! itself. The process driver ([`crate::ProcessDriver`]) runs tasks as
//! processes, the host driver ([`crate::HostDriver`]) as processes or, when
//! they have an image, as containers; the simulator brings a fake one, so
//! its thousands of agents are this crate's agent.

use std::collections::HashMap;

use shoal_api::Task;

use crate::executor::{Executor, Workload};

/// The kind of workload a node runs.
pub trait Driver: Send + Sync + 'static {
    type Executor: Executor;
    /// An executor for a task that starts on this node.
    fn executor(&self, task: &Task) -> Self::Executor;
    /// An executor that takes over `workload`, the one of this task an
    /// earlier agent started and left running.
    fn adopt(&self, task: &Task, workload: Workload) -> Self::Executor;
    /// The workloads earlier agents left, by task id. An error means they
    /// cannot be known (the engine does not answer): the agent must not
    /// start then, or it would run a second copy of each beside them.
    fn leftovers(
        &self,
    ) -> impl std::future::Future<Output = Result<HashMap<String, Workload>, String>> + Send;
    /// Ends a leftover workload that no task may run any more, outright
    /// (in the background where that takes a call to an engine).
    fn kill(&self, task_id: &str, workload: &Workload);
    /// Removes what a task that left this node left behind (its directory,
    /// its logs).
    fn clean_up(&self, task_id: &str);
    /// The directory holding a task's `stdout.log` and `stderr.log`;
    /// `None` where tasks keep no logs.
    fn log_dir(&self, task_id: &str) -> Option<std::path::PathBuf>;
}
