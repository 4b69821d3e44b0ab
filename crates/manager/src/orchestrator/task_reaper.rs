//! The task reaper: keeps the cluster's task history limit of finished tasks
//! per slot (per node for global services), and removes every task of a
//! removed service once it has stopped.
//!
//! Owns: deleting tasks.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use shoal_api::{object, store_action, watch_event, StoreAction, Task, TaskState};
use shoal_store::{Event, Tables};

use crate::reconciler::{Pass, Reconciler};

/// A task is history once it no longer occupies its slot and can no longer
/// run: it ended, it never reached a node, or its node was removed.
fn finished(view: &Tables, t: &Task) -> bool {
    let let_go = t.desired_state >= TaskState::Shutdown as i32;
    let state = t.observed();
    let node_gone = !t.node_id.is_empty() && view.node(&t.node_id).is_none();
    let_go && (state.is_terminal() || (state as i32) < TaskState::Assigned as i32 || node_gone)
}

/// Where history is kept: a service's slot, or its node for global tasks.
type Place = (String, u64, String);

fn place_of(t: &Task) -> Place {
    let node = if t.slot == 0 {
        t.node_id.clone()
    } else {
        String::new()
    };
    (t.service_id.clone(), t.slot, node)
}

fn created_at(t: &Task) -> i64 {
    t.meta.as_ref().map_or(0, |m| m.created_at_ms)
}

/// Every removal a pass over the whole store decides.
pub fn decide(view: &Tables) -> Vec<StoreAction> {
    Reaper::default().reap(view, true)
}

/// The reaper between passes: the finished tasks of every place, oldest
/// first. A task, once finished, stays finished until it is removed
/// (desired state only grows, observed state only advances), unless a node
/// or service is removed: those changes make the next pass a full one.
#[derive(Debug, Default)]
pub struct Reaper {
    history: BTreeMap<Place, BTreeSet<(i64, String)>>,
    /// Places that got a finished task since the last pass.
    grown: HashSet<Place>,
    /// Finished tasks whose service is gone: removed at once.
    unowned: BTreeSet<String>,
    /// Something happened that only a full pass sees right.
    rebuild: bool,
}

impl Reaper {
    fn limit(view: &Tables) -> usize {
        view.cluster()
            .and_then(|c| c.spec.as_ref())
            .and_then(|s| s.orchestration)
            .map_or(5, |o| o.task_history_retention_limit.max(0) as usize)
    }

    fn reap(&mut self, view: &Tables, full: bool) -> Vec<StoreAction> {
        let mut removals: BTreeSet<String> = std::mem::take(&mut self.unowned);
        let grown: Vec<Place> = if full || std::mem::take(&mut self.rebuild) {
            self.history.clear();
            self.grown.clear();
            removals.clear();
            for (t, _) in view.tasks_sharing_specs() {
                if !finished(view, &t) {
                    continue;
                }
                if view.service(&t.service_id).is_none() {
                    removals.insert(t.id);
                    continue;
                }
                self.history
                    .entry(place_of(&t))
                    .or_default()
                    .insert((created_at(&t), t.id));
            }
            self.history.keys().cloned().collect()
        } else {
            self.grown.drain().collect()
        };
        let limit = Self::limit(view);
        for place in grown {
            let Some(history) = self.history.get_mut(&place) else {
                continue;
            };
            // Oldest first: everything before the newest `limit` goes.
            while history.len() > limit {
                if let Some((_, id)) = history.pop_first() {
                    removals.insert(id);
                }
            }
            if history.is_empty() {
                self.history.remove(&place);
            }
        }
        removals
            .into_iter()
            .filter_map(|id| view.task_without_spec(&id))
            .map(remove)
            .collect()
    }
}

impl Reconciler for Reaper {
    fn observe(&mut self, view: &Tables, event: &Event) {
        let Event::Change { action, object, .. } = event else {
            return;
        };
        match &object.kind {
            Some(object::Kind::Task(t)) => {
                if *action == watch_event::Action::Remove {
                    let place = place_of(t);
                    if let Some(history) = self.history.get_mut(&place) {
                        history.remove(&(created_at(t), t.id.clone()));
                        if history.is_empty() {
                            self.history.remove(&place);
                        }
                    }
                    return;
                }
                // Only a task let go can be history; letting it go later
                // is a change of its own.
                if t.desired_state < TaskState::Shutdown as i32 {
                    return;
                }
                // Judged as the task is now: the view may be ahead.
                let Some(now) = view.task_without_spec(&t.id) else {
                    return;
                };
                if !finished(view, &now) {
                    return;
                }
                if view.service(&now.service_id).is_none() {
                    self.unowned.insert(now.id);
                    return;
                }
                let place = place_of(&now);
                self.history
                    .entry(place.clone())
                    .or_default()
                    .insert((created_at(&now), now.id));
                self.grown.insert(place);
            }
            // A removed node or service, or a new limit: what is finished,
            // and how much of it stays, changes for many tasks at once.
            Some(object::Kind::Node(_)) | Some(object::Kind::Service(_))
                if *action == watch_event::Action::Remove =>
            {
                self.rebuild = true
            }
            Some(object::Kind::Cluster(_)) => self.rebuild = true,
            _ => {}
        }
    }

    fn decide(&mut self, view: &Tables, _: i64, full: bool) -> Pass {
        Pass::chunked(self.reap(view, full))
    }
}

fn remove(t: Task) -> StoreAction {
    StoreAction {
        kind: store_action::Kind::Remove as i32,
        target: Some(t.into()),
    }
}
