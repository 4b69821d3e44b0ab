//! The allocator: network attachments, virtual IPs and published ports
//! (DESIGN.md §3). Networks and ports are not allocated yet (a later issue);
//! today the allocator moves every new task NEW → PENDING, and stays its own
//! component so that work has its home.
//!
//! Owns: task `networks`, service and task `endpoint`; the NEW → PENDING move.

use shoal_api::{store_action, StoreAction, Task, TaskState, TaskStatus};
use shoal_store::Tables;

/// One action per task that is NEW and still wanted.
pub fn decide(view: &Tables, now_ms: i64) -> Vec<StoreAction> {
    view.tasks()
        .filter(|t| t.status.as_ref().map_or(0, |s| s.state) == TaskState::New as i32)
        .filter(|t| t.desired_state <= TaskState::Running as i32)
        .map(|t| pending(t, now_ms))
        .collect()
}

fn pending(mut task: Task, now_ms: i64) -> StoreAction {
    task.advance_status(TaskStatus {
        timestamp_ms: now_ms,
        state: TaskState::Pending as i32,
        message: "pending task scheduling".into(),
        ..Default::default()
    });
    StoreAction {
        kind: store_action::Kind::Update as i32,
        target: Some(task.into()),
    }
}
