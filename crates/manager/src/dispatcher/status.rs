//! Agents' status reports: applied in as few transactions as the bounds
//! allow, only forward, only for the reporting node's own tasks.

use std::collections::HashSet;

use shoal_api::{
    store_action, StoreAction, TaskStatus, Transaction, UpdateTaskStatusRequest,
    UpdateTaskStatusResponse,
};
use tonic::Status;

use super::*;

impl Dispatcher {
    /// Applies one call's reports.
    pub(super) async fn apply_reports(
        &self,
        req: UpdateTaskStatusRequest,
    ) -> Result<UpdateTaskStatusResponse, Status> {
        check_session(&self.sessions, &req.node_id, &req.session_id)?;
        // Each task's reports, in the order the agent made them: one write
        // per task applies them all, so none is lost to a race with another.
        let mut by_task: Vec<(String, Vec<TaskStatus>)> = Vec::new();
        for update in req.updates {
            let Some(status) = update.status else {
                continue;
            };
            match by_task.iter_mut().find(|(id, _)| *id == update.task_id) {
                Some((_, statuses)) => statuses.push(status),
                None => by_task.push((update.task_id, vec![status])),
            }
        }
        // The reports of one call go in as few transactions as the bounds
        // allow (one, for any agent's call), not one per task: a spawned
        // write per task queued thousands of tasks on the runtime, and
        // everything else, heartbeats included, waited behind them. A
        // transaction refused because another writer moved one of its tasks
        // first is read again and retried, with only the tasks still named.
        let mut pending = by_task;
        for _ in 0..STATUS_WRITE_TRIES {
            let parts = {
                let view = self.replica.store().view();
                let actions = pending.iter().filter_map(|(task_id, statuses)| {
                    let mut task = view.task_without_spec(task_id)?;
                    // Only the node's own tasks.
                    if task.node_id != req.node_id {
                        return None;
                    }
                    let mut moved = false;
                    for status in statuses {
                        // Only forward: a stale or repeated report is dropped.
                        moved |= task.advance_status(status.clone());
                    }
                    moved.then(|| {
                        vec![StoreAction {
                            kind: store_action::Kind::Update as i32,
                            target: Some(task.into()),
                        }]
                    })
                });
                crate::reconciler::pack(actions)
            };
            // In turn: an agent's call fits one part, so this waits for one
            // commit; a larger call has no claim to more at once.
            let mut conflicted: HashSet<String> = HashSet::new();
            for actions in parts {
                let ids: Vec<String> = actions
                    .iter()
                    .filter_map(|a| a.target.as_ref().map(|o| o.id().to_string()))
                    .collect();
                let written = self
                    .replica
                    .propose_report(Transaction {
                        leader_term: 0,
                        actions,
                        timestamp_ms: 0,
                    })
                    .await;
                match written {
                    Ok(_) => {}
                    Err(shoal_raft::ProposeError::Txn(_)) => conflicted.extend(ids),
                    Err(e) => return Err(Status::unavailable(e.to_string())),
                }
            }
            pending.retain(|(id, _)| conflicted.contains(id));
            if pending.is_empty() {
                return Ok(UpdateTaskStatusResponse {});
            }
        }
        Err(Status::aborted(
            "task status kept changing; report it again",
        ))
    }
}
