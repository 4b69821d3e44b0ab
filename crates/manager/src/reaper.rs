//! The task reaper: keeps the cluster's task history limit of finished tasks
//! per slot (per node for global services), and removes every task of a
//! removed service once it has stopped.
//!
//! Owns: deleting tasks.

use std::collections::BTreeMap;

use shoal_api::{store_action, StoreAction, Task, TaskState};
use shoal_store::Tables;

/// A task is history once it no longer occupies its slot and can no longer
/// run: it ended, it never reached a node, or its node was removed.
fn finished(view: &Tables, t: &Task) -> bool {
    let let_go = t.desired_state >= TaskState::Shutdown as i32;
    let state = t.observed();
    let node_gone = !t.node_id.is_empty() && view.node(&t.node_id).is_none();
    let_go && (state.is_terminal() || (state as i32) < TaskState::Assigned as i32 || node_gone)
}

pub fn decide(view: &Tables) -> Vec<StoreAction> {
    let limit = view
        .cluster()
        .and_then(|c| c.spec.as_ref())
        .and_then(|s| s.orchestration)
        .map_or(5, |o| o.task_history_retention_limit.max(0) as usize);
    let mut by_place: BTreeMap<(String, u64, String), Vec<Task>> = BTreeMap::new();
    let mut actions = Vec::new();
    // Removals name a task and its version; its spec is not needed.
    for (t, _) in view.tasks_sharing_specs() {
        if view.service(&t.service_id).is_none() {
            if finished(view, &t) {
                actions.push(remove(t));
            }
            continue;
        }
        if finished(view, &t) {
            let node = if t.slot == 0 {
                t.node_id.clone()
            } else {
                String::new()
            };
            by_place
                .entry((t.service_id.clone(), t.slot, node))
                .or_default()
                .push(t);
        }
    }
    for mut history in by_place.into_values() {
        if history.len() > limit {
            history
                .sort_by_key(|t| std::cmp::Reverse(t.meta.as_ref().map_or(0, |m| m.created_at_ms)));
            actions.extend(history.drain(limit..).map(remove));
        }
    }
    actions
}

fn remove(t: Task) -> StoreAction {
    StoreAction {
        kind: store_action::Kind::Remove as i32,
        target: Some(t.into()),
    }
}
