//! The simulator's [`Driver`]: every task of a node becomes a
//! [`FakeExecutor`] whose workload lives in the node's [`Machine`]. Leftover
//! workloads are the machine's entries, so a restarted agent adopts what
//! still "runs" exactly as the process driver adopts processes.

use std::collections::HashMap;

use shoal_agent::{Driver, Workload};
use shoal_api::Task;

use crate::fake_executor::{FakeExecutor, Machine};

/// The driver of one simulated node.
pub struct FakeDriver {
    pub machine: Machine,
}

impl Driver for FakeDriver {
    type Executor = FakeExecutor;

    fn executor(&self, task: &Task) -> FakeExecutor {
        FakeExecutor::new(&self.machine, task)
    }

    fn adopt(&self, task: &Task, _workload: Workload) -> FakeExecutor {
        FakeExecutor::new(&self.machine, task)
    }

    async fn leftovers(&self) -> Result<HashMap<String, Workload>, String> {
        Ok(self
            .machine
            .workloads()
            .iter()
            .map(|(id, w)| (id.clone(), Workload::process(w.handle)))
            .collect())
    }

    fn kill(&self, task_id: &str, _workload: &Workload) {
        self.machine.workloads().remove(task_id);
    }

    fn clean_up(&self, task_id: &str) {
        self.machine.workloads().remove(task_id);
    }

    /// Fake workloads write nothing.
    fn log_dir(&self, _task_id: &str) -> Option<std::path::PathBuf> {
        None
    }
}
