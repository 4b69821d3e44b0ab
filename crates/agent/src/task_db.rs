//! The agent's own record of its tasks' last states, in a small redb file.
//!
//! A runner's every transition is recorded before it is reported. After a
//! restart the agent knows how each of its tasks last was, even when the
//! final report never reached a manager: a task that completed just before a
//! crash is reported COMPLETE with its exit code, not guessed as failed.
//!
//! Terminal states are written durably (fsync); the steps before them
//! without one: they become durable with the next durable write, and losing
//! them costs nothing, since the process itself is found again through
//! /proc.

use std::collections::HashMap;
use std::path::Path;

use prost::Message;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use shoal_api::{TaskState, TaskStatus};

const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");

/// Why the record could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("agent task record {path}: {message}")]
pub struct TaskDbError {
    pub path: String,
    pub message: String,
}

/// Where an agent keeps its tasks' last states. [`TaskDb`] is the agent's
/// on disk; the simulator keeps its agents' in memory.
pub trait TaskRecord: Send + Sync + 'static {
    /// Every recorded task's last status.
    fn load(&self) -> Result<HashMap<String, TaskStatus>, TaskDbError>;
    /// Records a task's newest status; durably when it is terminal.
    fn record(&self, task_id: &str, status: &TaskStatus) -> Result<(), TaskDbError>;
    /// Forgets a task that left this node.
    fn forget(&self, task_id: &str) -> Result<(), TaskDbError>;
}

/// The record in a redb file; one per agent.
pub struct TaskDb {
    db: Database,
    path: String,
}

impl TaskDb {
    /// Opens (or creates) the record at `path`.
    pub fn open(path: &Path) -> Result<TaskDb, TaskDbError> {
        let shown = path.display().to_string();
        let fail = |message: String| TaskDbError {
            path: shown.clone(),
            message,
        };
        let db = Database::create(path).map_err(|e| fail(e.to_string()))?;
        let txn = db.begin_write().map_err(|e| fail(e.to_string()))?;
        txn.open_table(TASKS).map_err(|e| fail(e.to_string()))?;
        txn.commit().map_err(|e| fail(e.to_string()))?;
        Ok(TaskDb { db, path: shown })
    }

    fn fail(&self, e: impl std::fmt::Display) -> TaskDbError {
        TaskDbError {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }
}

impl TaskRecord for TaskDb {
    fn load(&self) -> Result<HashMap<String, TaskStatus>, TaskDbError> {
        let txn = self.db.begin_read().map_err(|e| self.fail(e))?;
        let table = txn.open_table(TASKS).map_err(|e| self.fail(e))?;
        let mut out = HashMap::new();
        for entry in table.iter().map_err(|e| self.fail(e))? {
            let (id, bytes) = entry.map_err(|e| self.fail(e))?;
            // A record that does not decode is skipped, not fatal: the task
            // is then treated as unknown, the safe side.
            if let Ok(status) = TaskStatus::decode(bytes.value()) {
                out.insert(id.value().to_string(), status);
            }
        }
        Ok(out)
    }

    fn record(&self, task_id: &str, status: &TaskStatus) -> Result<(), TaskDbError> {
        let terminal = TaskState::try_from(status.state).is_ok_and(TaskState::is_terminal);
        let mut txn = self.db.begin_write().map_err(|e| self.fail(e))?;
        if !terminal {
            txn.set_durability(Durability::None)
                .map_err(|e| self.fail(e))?;
        }
        {
            let mut table = txn.open_table(TASKS).map_err(|e| self.fail(e))?;
            table
                .insert(task_id, status.encode_to_vec().as_slice())
                .map_err(|e| self.fail(e))?;
        }
        txn.commit().map_err(|e| self.fail(e))
    }

    fn forget(&self, task_id: &str) -> Result<(), TaskDbError> {
        let mut txn = self.db.begin_write().map_err(|e| self.fail(e))?;
        txn.set_durability(Durability::None)
            .map_err(|e| self.fail(e))?;
        {
            let mut table = txn.open_table(TASKS).map_err(|e| self.fail(e))?;
            table.remove(task_id).map_err(|e| self.fail(e))?;
        }
        txn.commit().map_err(|e| self.fail(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_status_of_each_task_survives_reopening() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("agent.redb");
        {
            let db = TaskDb::open(&path).unwrap();
            db.record(
                "a",
                &TaskStatus {
                    state: TaskState::Running as i32,
                    pid: 7,
                    ..Default::default()
                },
            )
            .unwrap();
            db.record(
                "a",
                &TaskStatus {
                    state: TaskState::Complete as i32,
                    exit_code: 0,
                    ..Default::default()
                },
            )
            .unwrap();
            db.record(
                "b",
                &TaskStatus {
                    state: TaskState::Failed as i32,
                    exit_code: 3,
                    ..Default::default()
                },
            )
            .unwrap();
            db.record(
                "c",
                &TaskStatus {
                    state: TaskState::Running as i32,
                    ..Default::default()
                },
            )
            .unwrap();
            db.forget("c").unwrap();
        }
        let loaded = TaskDb::open(&path).unwrap().load().unwrap();
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded["a"].state, TaskState::Complete as i32);
        assert_eq!(loaded["b"].exit_code, 3);
    }
}
