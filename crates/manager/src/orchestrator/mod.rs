//! The orchestrators: replicated (slots 1..N), global (one task per eligible
//! node) and jobs, with the restart supervisor (DESIGN.md §3).
//!
//! Owns: creating tasks, and task `desired_state`.
//!
//! A task *occupies* its slot (its node, for global services) while its
//! desired state is RUNNING or READY, even after it finished: a task that
//! completed under `--restart-condition on-failure` keeps its slot and is not
//! replaced. When an occupying task ends, the restart policy decides: no
//! restart, or the old task is let go (desired SHUTDOWN) and a replacement is
//! created in the same slot, desired READY while the restart delay runs and
//! RUNNING after it.
//!
//! [`decide`] is pure: a store view and the time in, one transaction per
//! service out, plus when to look again for delayed restarts.

//!
//! # Layout
//! [`service`] decides one service; [`replicated`] and [`global`] say which
//! places a service wants; [`restart`] is the restart supervisor;
//! [`update`] the update supervisor (rolling updates and rollbacks);
//! [`constraint_enforcer`] says which tasks must leave their node;
//! [`task_reaper`] removes what the history limit no longer keeps. The
//! [`Orchestrator`] here remembers what changed between passes.

mod constraint_enforcer;
mod global;
mod replicated;
mod restart;
mod service;
pub mod task_reaper;
mod update;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use shoal_api::{object, watch_event, Node, ServiceMode, StoreAction, Task, TaskState};
use shoal_store::{Event, Tables};

use crate::reconciler::{pack, Pass, Reconciler};

use constraint_enforcer::*;
use global::*;
use replicated::*;
use restart::*;
use service::*;
use update::*;

pub use service::decide;

/// What one pass decided.
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    /// One list of actions per service, each proposed as its own transaction.
    pub transactions: Vec<Vec<StoreAction>>,
    /// The earliest time a delayed restart is due, if any is waiting.
    pub wake_at_ms: Option<i64>,
    /// Services that need more new tasks than the pass could create
    /// (`max_new_tasks_per_pass`): the next pass goes on with them.
    pub unfinished: Vec<String>,
}

/// The orchestrator between passes: which services to look at again.
///
/// A service is looked at again when it changed, when one of its occupying
/// tasks ended or sits on a node that cannot keep it, when a delayed
/// restart of it is due, and when a node it has tasks on changed (global
/// services: when any node changed). A node whose resources changed makes
/// the next pass a full one: which tasks must leave it is worked out over
/// every node.
pub struct Orchestrator<F> {
    new_id: F,
    /// Services to look at as a whole.
    dirty: BTreeSet<String>,
    /// Slots of replicated services to look at, alone.
    dirty_slots: BTreeMap<String, BTreeSet<u64>>,
    /// When each delayed restart is due, by service and slot (0: the
    /// service as a whole).
    delayed: HashMap<(String, u64), i64>,
    /// What each node offered when last seen.
    offered: HashMap<String, Option<shoal_api::Resources>>,
    rebuild: bool,
    /// Services the last pass ran out of budget for: the next pass serves
    /// the others first.
    waited: BTreeSet<String>,
}

impl<F: FnMut() -> String + Send + 'static> Orchestrator<F> {
    pub fn new(new_id: F) -> Self {
        Orchestrator {
            new_id,
            dirty: BTreeSet::new(),
            dirty_slots: BTreeMap::new(),
            delayed: HashMap::new(),
            offered: HashMap::new(),
            rebuild: false,
            waited: BTreeSet::new(),
        }
    }

    /// Notes that a task's place needs a look: its slot, or its whole
    /// service when it has none (global services).
    fn mark(&mut self, t: &Task) {
        if t.slot > 0 {
            self.dirty_slots
                .entry(t.service_id.clone())
                .or_default()
                .insert(t.slot);
        } else {
            self.dirty.insert(t.service_id.clone());
        }
    }

    /// What one pass decides: over every service when `full`, else over
    /// the services and slots noted since the last pass.
    pub fn orchestrate(&mut self, view: &Tables, now_ms: i64, full: bool) -> Decision {
        let mut services = std::mem::take(&mut self.dirty);
        let mut slots = std::mem::take(&mut self.dirty_slots);
        if full || std::mem::take(&mut self.rebuild) {
            self.offered = view
                .nodes()
                .map(|n| {
                    (
                        n.id.clone(),
                        n.description.as_ref().and_then(|d| d.resources),
                    )
                })
                .collect();
            let decision = decide(view, now_ms, &mut self.new_id, &self.waited);
            self.waited = decision.unfinished.iter().cloned().collect();
            self.dirty.extend(decision.unfinished.iter().cloned());
            self.delayed.clear();
            // Which service is waiting is not kept by the full pass: look at
            // every service again when the earliest delay is due.
            if let Some(due) = decision.wake_at_ms {
                for s in view.services() {
                    self.delayed.insert((s.id.clone(), 0), due);
                }
            }
            return decision;
        }
        self.delayed.retain(|(id, slot), due| {
            if *due > now_ms {
                return true;
            }
            if *slot == 0 {
                services.insert(id.clone());
            } else {
                slots.entry(id.clone()).or_default().insert(*slot);
            }
            false
        });
        let mut decision = Decision::default();
        let mut budget = pass_budget(view);
        // Slots alone first: a slot whose service needs a look as a whole
        // joins it.
        for (id, dirty) in slots {
            if services.contains(&id) {
                continue;
            }
            match self.reconcile_slots(view, &id, &dirty, now_ms, &mut budget) {
                Some(transactions) => decision.transactions.extend(transactions),
                None => {
                    services.insert(id);
                }
            }
        }
        let nodes: Vec<&Node> = view.nodes().collect();
        // Evictions follow from changes of what nodes offer, which make
        // passes full.
        let evicted = HashSet::new();
        let (fresh, behind): (Vec<String>, Vec<String>) = services
            .into_iter()
            .partition(|id| !self.waited.contains(id));
        for id in fresh.into_iter().chain(behind) {
            self.delayed.retain(|(s, _), _| *s != id);
            let Some(service) = view.service(&id) else {
                decision.transactions.extend(let_go(
                    view.tasks_of_service_sharing_specs(&id).map(|(t, _)| t),
                ));
                continue;
            };
            let mut outcome = reconcile(
                view,
                service,
                &nodes,
                &evicted,
                now_ms,
                &mut self.new_id,
                &mut budget,
            );
            decision.transactions.extend(outcome.transactions());
            if outcome.starved {
                decision.unfinished.push(id.clone());
            }
            if let Some(due) = outcome.wake_at_ms {
                self.delayed.insert((id, 0), due);
            }
        }
        // Services the budget ran out for: the next pass goes on with them
        // (the loop makes it at once, as this one wrote).
        self.dirty.extend(decision.unfinished.iter().cloned());
        self.waited = decision.unfinished.iter().cloned().collect();
        decision.wake_at_ms = self.delayed.values().min().copied();
        decision
    }

    /// The actions some slots of a replicated service need, looked at
    /// alone. `None` when the service must be looked at as a whole: it is
    /// gone or not replicated, or a slot has no task occupying it (which
    /// slots are wanted is a decision over the whole service).
    fn reconcile_slots(
        &mut self,
        view: &Tables,
        service_id: &str,
        dirty: &BTreeSet<u64>,
        now_ms: i64,
        budget: &mut u64,
    ) -> Option<Vec<Vec<StoreAction>>> {
        let service = view.service(service_id)?;
        let spec = service.spec.clone().unwrap_or_default();
        // A rollout decides over the whole service (how many places are
        // busy is a count over all of them).
        let rolling_out = service
            .update_status
            .as_ref()
            .is_some_and(|s| s.in_progress());
        // So does a job that limits how many run at once: a place that
        // ends frees room for another.
        if !spec.is_replicated() || rolling_out || spec.max_concurrent > 0 {
            return None;
        }
        let constraints = constraints_of(&spec);
        let mut groups = Vec::new();
        let mut delayed = Vec::new();
        // Every slot's tasks first: one without an occupying task sends the
        // whole service to be looked at, before any id is made.
        let mut places = Vec::with_capacity(dirty.len());
        for slot in dirty {
            // Through the store's slot index: a slot is looked at without
            // reading its service's every task.
            let (tasks, specs): (Vec<Task>, Vec<_>) = view
                .task_ids_in_slot(service_id, *slot)
                .filter_map(|id| view.task_sharing_spec(id))
                .unzip();
            if !tasks.iter().any(occupies) {
                return None;
            }
            places.push((*slot, tasks, specs));
        }
        let stale = stale_ids(
            service,
            places
                .iter()
                .flat_map(|(_, tasks, specs)| tasks.iter().zip(specs.iter().map(|s| s.as_ref()))),
        );
        // Places get a new spec only through the update supervisor, which
        // the whole-service pass runs.
        let replace = BTreeSet::new();
        let mut maker = Maker {
            service,
            now_ms,
            new_id: &mut self.new_id,
            budget,
            starved: false,
            stale: &stale,
            replace: &replace,
            start_first: starts_first(service),
            job_room: None,
        };
        for (slot, tasks, _) in &places {
            let mut history: Vec<&Task> = tasks.iter().collect();
            history.sort_by(|a, b| (created_at(a), &a.id).cmp(&(created_at(b), &b.id)));
            let place = Place::Slot(*slot);
            let (actions, due) = place_actions(
                view,
                &constraints,
                &HashSet::new(),
                &place,
                &history,
                &mut maker,
            );
            if !actions.is_empty() {
                groups.push(actions);
            }
            if let Some(due) = due {
                delayed.push((*slot, due));
            }
        }
        if maker.starved {
            self.dirty.insert(service_id.to_string());
        }
        for (slot, due) in delayed {
            self.delayed.insert((service_id.to_string(), slot), due);
        }
        Some(pack(groups))
    }
}

impl<F: FnMut() -> String + Send + 'static> Reconciler for Orchestrator<F> {
    fn observe(&mut self, view: &Tables, event: &Event) {
        let Event::Change { action, object, .. } = event else {
            return;
        };
        match &object.kind {
            Some(object::Kind::Node(node)) => {
                // What a node offers changed: which tasks it must give up
                // is worked out over every node, in a full pass.
                let offered = node.description.as_ref().and_then(|d| d.resources);
                let known = self.offered.insert(node.id.clone(), offered);
                if *action == watch_event::Action::Remove {
                    self.offered.remove(&node.id);
                } else if known != Some(offered) {
                    self.rebuild = true;
                    return;
                }
                // Otherwise only the places of its tasks, and the global
                // services, which may gain or lose a task there.
                for (id, _) in view.task_versions_of_node(&node.id) {
                    if let Some(t) = view.task_without_spec(id) {
                        self.mark(&t);
                    }
                }
                for s in view.services() {
                    let mode = s.spec.as_ref().map_or(0, |s| s.mode);
                    if mode == ServiceMode::Global as i32 || mode == ServiceMode::GlobalJob as i32 {
                        self.dirty.insert(s.id.clone());
                    }
                }
            }
            Some(object::Kind::Service(s)) => {
                self.dirty.insert(s.id.clone());
            }
            Some(object::Kind::Task(_)) if *action == watch_event::Action::Remove => {}
            Some(object::Kind::Task(t)) => {
                let ended = occupies(t) && t.observed().is_terminal();
                let stranded = occupies(t)
                    && !t.node_id.is_empty()
                    && !keeps_tasks(view.node(&t.node_id), &[]);
                // A replacement waiting out its restart delay: its service
                // is looked at again, which notes when the delay is due.
                let delayed = t.desired() == TaskState::Ready;
                let service = view.service(&t.service_id);
                let unowned = t.desired() != TaskState::Remove && service.is_none();
                // A rollout counts over the whole service: any change of
                // one of its tasks may free room for the next.
                let rolling_out = service
                    .and_then(|s| s.update_status.as_ref())
                    .is_some_and(|s| s.in_progress());
                // A job that runs a few at a time starts the next as one ends.
                let paced = ended
                    && service
                        .is_some_and(|s| s.spec.as_ref().is_some_and(|s| s.max_concurrent > 0));
                // A task of an older spec is held to the service's current
                // constraints wherever it lands.
                let outdated = service.is_some_and(|s| t.spec_version < s.spec_version);
                // Under start-first, a task that runs lets the task it
                // replaces go.
                let replaces =
                    t.observed() == TaskState::Running && service.is_some_and(starts_first);
                if unowned || rolling_out || paced {
                    self.dirty.insert(t.service_id.clone());
                } else if ended || stranded || delayed || outdated || replaces {
                    self.mark(t);
                }
            }
            _ => {}
        }
    }

    fn decide(&mut self, view: &Tables, now_ms: i64, full: bool) -> Pass {
        let decision = self.orchestrate(view, now_ms, full);
        Pass {
            transactions: decision.transactions,
            wake_at_ms: decision.wake_at_ms,
        }
    }
}
