//! The simulated agents' task record, in memory: thousands of redb files
//! would measure the disk, not the manager. It outlives its agent (a killed
//! node restarts with it, as a rebooted machine finds its disk).

use std::collections::HashMap;
use std::sync::Mutex;

use shoal_agent::{TaskDbError, TaskRecord};
use shoal_api::TaskStatus;

#[derive(Default)]
pub struct MemoryRecord {
    tasks: Mutex<HashMap<String, TaskStatus>>,
}

impl MemoryRecord {
    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, TaskStatus>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl TaskRecord for MemoryRecord {
    fn load(&self) -> Result<HashMap<String, TaskStatus>, TaskDbError> {
        Ok(self.tasks().clone())
    }

    fn record(&self, task_id: &str, status: &TaskStatus) -> Result<(), TaskDbError> {
        self.tasks().insert(task_id.to_string(), status.clone());
        Ok(())
    }

    fn forget(&self, task_id: &str) -> Result<(), TaskDbError> {
        self.tasks().remove(task_id);
        Ok(())
    }
}
