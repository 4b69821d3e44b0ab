//! The decision for one service: which places should hold a task, and
//! what each place needs (a new task, a replacement, a restart, or to be
//! let go), within the pass's budget of new tasks. Which places get the
//! service's new spec, and when, is the update supervisor's ([`super::update`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use shoal_api::{
    store_action, update_config, Node, Service, ServiceMode, StoreAction, Task, TaskState,
    TaskStatus,
};
use shoal_store::Tables;

use crate::constraint::Constraint;
use crate::reconciler::pack;

use super::*;

pub(super) fn update(task: Task) -> StoreAction {
    StoreAction {
        kind: store_action::Kind::Update as i32,
        target: Some(task.into()),
    }
}

pub(super) fn create(task: Task) -> StoreAction {
    StoreAction {
        kind: store_action::Kind::Create as i32,
        target: Some(task.into()),
    }
}

/// A task holds its place while it is wanted running (or waits out a
/// restart delay), and a job's task once it completed: its place is done.
pub(super) fn occupies(task: &Task) -> bool {
    matches!(
        task.desired(),
        TaskState::Running | TaskState::Ready | TaskState::Complete
    )
}

pub(super) fn with_desired(task: &Task, state: TaskState) -> Task {
    let mut t = task.clone();
    t.desired_state = state as i32;
    t
}

pub(super) fn created_at(task: &Task) -> i64 {
    task.meta.as_ref().map_or(0, |m| m.created_at_ms)
}

/// Where a task sits: a slot number, or a node for global services.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Place {
    Slot(u64),
    Node(String),
}

/// Makes new tasks for one service, within what is left of the pass's
/// budget of new tasks.
pub(super) struct Maker<'a, F: FnMut() -> String> {
    pub(super) service: &'a Service,
    pub(super) now_ms: i64,
    pub(super) new_id: &'a mut F,
    /// New tasks this pass may still create (all services together).
    pub(super) budget: &'a mut u64,
    /// The service needed a task the budget could not pay for.
    pub(super) starved: bool,
    /// Tasks of an older spec than the service's ([`stale_ids`]).
    pub(super) stale: &'a HashSet<&'a str>,
    /// Places the update supervisor replaces in this pass.
    pub(super) replace: &'a BTreeSet<Place>,
    /// The service's update order is start-first now ([`starts_first`]).
    pub(super) start_first: bool,
    /// A replicated job's room for more tasks running at once
    /// (`max_concurrent` less those running); `None` without a limit.
    pub(super) job_room: Option<usize>,
}

/// A replicated job's room for more tasks at once: `max_concurrent` less
/// the places whose task has not ended. `None` when it sets no limit.
pub(super) fn job_room<'a>(
    service: &Service,
    live: impl Iterator<Item = &'a Task>,
) -> Option<usize> {
    let limit = service.spec.as_ref().map_or(0, |s| s.max_concurrent) as usize;
    if limit == 0 {
        return None;
    }
    let active = live
        .filter(|t| occupies(t) && !t.observed().is_terminal())
        .count();
    Some(limit.saturating_sub(active))
}

/// Whether the service's update order now is start-first: a task of an
/// older spec keeps running until its replacement runs.
pub(super) fn starts_first(service: &Service) -> bool {
    if service.spec.as_ref().is_some_and(|s| s.is_job()) {
        // A job's runs are replaced at once: there is no rollout.
        return false;
    }
    let rolling_back = service
        .update_status
        .as_ref()
        .is_some_and(|s| s.rolling_back());
    let order = service
        .spec
        .as_ref()
        .map_or(0, |s| s.update_config(rolling_back).order);
    order == update_config::Order::StartFirst as i32
}

impl<F: FnMut() -> String> Maker<'_, F> {
    pub(super) fn is_stale(&self, task: &Task) -> bool {
        self.stale.contains(task.id.as_str())
    }

    /// A job's tasks take a new spec at once: there is no rollout of runs
    /// to completion.
    fn job(&self) -> bool {
        self.service.spec.as_ref().is_some_and(|s| s.is_job())
    }

    /// Whether a task may be created now; when not, the service is noted
    /// as unfinished and the place is left as it is for the next pass.
    pub(super) fn may_create(&mut self) -> bool {
        if *self.budget == 0 {
            self.starved = true;
        }
        *self.budget > 0 && self.job_room != Some(0)
    }

    pub(super) fn task(&mut self, place: &Place, desired: TaskState) -> Task {
        debug_assert!(*self.budget > 0, "a task made past the pass's budget");
        *self.budget = self.budget.saturating_sub(1);
        if let Some(room) = self.job_room.as_mut() {
            *room = room.saturating_sub(1);
        }
        let (slot, node_id) = match place {
            Place::Slot(s) => (*s, String::new()),
            Place::Node(n) => (0, n.clone()),
        };
        let service_name = self
            .service
            .spec
            .as_ref()
            .and_then(|s| s.annotations.as_ref())
            .map_or("", |a| a.name.as_str());
        // As `service ps` names it; a container is named after it.
        let name = match place {
            Place::Slot(s) => format!("{service_name}.{s}"),
            Place::Node(n) => format!("{service_name}.{n}"),
        };
        Task {
            id: (self.new_id)(),
            annotations: Some(shoal_api::Annotations {
                name,
                labels: Default::default(),
            }),
            spec: self.service.spec.as_ref().and_then(|s| s.task.clone()),
            spec_version: self.service.spec_version,
            service_id: self.service.id.clone(),
            slot,
            node_id,
            desired_state: desired as i32,
            status: Some(TaskStatus {
                timestamp_ms: self.now_ms,
                state: TaskState::New as i32,
                message: "created".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// The new tasks one pass may create, as the cluster sets it.
pub(super) fn pass_budget(view: &Tables) -> u64 {
    crate::Limits::of(view.cluster()).max_new_tasks_per_pass
}

/// Decides the tasks of every service. `new_id` makes task ids (seeded in tests).
pub fn decide(
    view: &Tables,
    now_ms: i64,
    new_id: &mut impl FnMut() -> String,
    waited: &BTreeSet<String>,
) -> Decision {
    let mut decision = Decision::default();
    let nodes: Vec<&Node> = view.nodes().collect();
    let evicted = evicted_for_resources(view);
    let mut budget = pass_budget(view);
    // Services the last pass ran out of budget for go after the others: a
    // small service is not kept waiting behind a large one converging.
    let (fresh, behind): (Vec<&Service>, Vec<&Service>) =
        view.services().partition(|s| !waited.contains(&s.id));
    for service in fresh.into_iter().chain(behind) {
        let mut outcome = reconcile(view, service, &nodes, &evicted, now_ms, new_id, &mut budget);
        decision.transactions.extend(outcome.transactions());
        if let Some(due) = outcome.wake_at_ms {
            decision.wake_at_ms = Some(decision.wake_at_ms.map_or(due, |w: i64| w.min(due)));
        }
        if outcome.starved {
            decision.unfinished.push(service.id.clone());
        }
    }
    let services: HashSet<&str> = view.services().map(|s| s.id.as_str()).collect();
    decision.transactions.extend(let_go(
        view.tasks_sharing_specs()
            .map(|(t, _)| t)
            .filter(|t| !services.contains(t.service_id.as_str())),
    ));
    decision
}

/// Tasks whose service is gone: let go (desired REMOVE) for the reaper to
/// remove once they stopped.
pub(super) fn let_go(tasks: impl Iterator<Item = Task>) -> Vec<Vec<StoreAction>> {
    pack(
        tasks
            .filter(|t| t.desired() != TaskState::Remove)
            .map(|t| vec![update(with_desired(&t, TaskState::Remove))]),
    )
}

/// What one service needs.
pub(super) struct ServiceOutcome {
    /// The service itself written back (its update status), proposed alone:
    /// an agent's report on one of the tasks below must not fail it.
    pub(super) service_write: Option<StoreAction>,
    pub(super) groups: Vec<Vec<StoreAction>>,
    /// When its earliest delayed restart is due.
    pub(super) wake_at_ms: Option<i64>,
    /// It needs more new tasks than the pass's budget had left.
    pub(super) starved: bool,
}

impl ServiceOutcome {
    /// The transactions to propose: the service's own write alone, then the
    /// tasks' actions packed.
    pub(super) fn transactions(&mut self) -> Vec<Vec<StoreAction>> {
        let mut out: Vec<Vec<StoreAction>> = self
            .service_write
            .take()
            .into_iter()
            .map(|a| vec![a])
            .collect();
        out.extend(pack(std::mem::take(&mut self.groups)));
        out
    }
}

/// The actions one service needs, and when its earliest delayed restart is
/// due. At most `budget` new tasks are made (and taken from it).
pub(super) fn reconcile(
    view: &Tables,
    service: &Service,
    nodes: &[&Node],
    evicted: &HashSet<String>,
    now_ms: i64,
    new_id: &mut impl FnMut() -> String,
    budget: &mut u64,
) -> ServiceOutcome {
    let mut wake_at_ms: Option<i64> = None;
    let spec = service.spec.clone().unwrap_or_default();
    let mode = ServiceMode::try_from(spec.mode).unwrap_or(ServiceMode::Replicated);
    // Without their specs: the updates below change only desired state,
    // and the store keeps the spec of a task updated without one.
    let (tasks, specs): (Vec<Task>, Vec<_>) =
        view.tasks_of_service_sharing_specs(&service.id).unzip();
    let stale = stale_ids(service, tasks.iter().zip(specs.iter().map(|s| s.as_ref())));
    let mut by_place: BTreeMap<Place, Vec<&Task>> = BTreeMap::new();
    for t in &tasks {
        let place = match mode {
            ServiceMode::Global | ServiceMode::GlobalJob => Place::Node(t.node_id.clone()),
            _ => Place::Slot(t.slot),
        };
        by_place.entry(place).or_default().push(t);
    }
    for history in by_place.values_mut() {
        history.sort_by(|a, b| (created_at(a), &a.id).cmp(&(created_at(b), &b.id)));
    }
    let constraints = constraints_of(&spec);
    // The places that should hold a task.
    let wanted: Vec<Place> = match mode {
        ServiceMode::Global | ServiceMode::GlobalJob => nodes
            .iter()
            .filter(|n| eligible(n, &constraints))
            .map(|n| Place::Node(n.id.clone()))
            .collect(),
        _ => {
            let replicas = spec.replicas.unwrap_or(1).max(0) as usize;
            choose_slots(&by_place, replicas, *budget as usize)
        }
    };
    // Fewer places than asked for: the budget bounded the new slots.
    let mut starved = spec
        .replicas_wanted()
        .is_some_and(|replicas| (wanted.len() as u64) < replicas);
    let rollout = if spec.is_job() {
        Rollout::default()
    } else {
        let blocked = service
            .update_status
            .as_ref()
            .is_some_and(|s| s.in_progress())
            .then(|| rollback_blocked(view, service))
            .flatten();
        update::plan(service, &by_place, &wanted, &stale, now_ms, blocked)
    };
    if let Some(due) = rollout.wake_at_ms {
        wake_at_ms = Some(due);
    }
    // One group per place: a task let go and its replacement commit together.
    let mut groups: Vec<Vec<StoreAction>> = Vec::new();
    let mut service_write = None;
    if let Some(written) = rollout.service {
        let rolled_back = written.spec != service.spec;
        service_write = Some(StoreAction {
            kind: store_action::Kind::Update as i32,
            target: Some(written.into()),
        });
        if rolled_back {
            // Every task made now would be of the spec being left.
            return ServiceOutcome {
                service_write,
                groups,
                wake_at_ms: None,
                starved,
            };
        }
    }
    let mut maker = Maker {
        service,
        now_ms,
        new_id,
        budget,
        starved: false,
        stale: &stale,
        replace: &rollout.replace,
        start_first: starts_first(service),
        job_room: job_room(service, tasks.iter()),
    };
    // Places that should be empty: let their tasks go.
    let wanted_set: std::collections::BTreeSet<&Place> = wanted.iter().collect();
    for (place, history) in &by_place {
        if !wanted_set.contains(place) {
            for t in history.iter().filter(|t| occupies(t)) {
                groups.push(vec![update(with_desired(t, TaskState::Shutdown))]);
            }
        }
    }
    for place in &wanted {
        let history: &[&Task] = by_place.get(place).map_or(&[], Vec::as_slice);
        let (actions, due) = place_actions(view, &constraints, evicted, place, history, &mut maker);
        if !actions.is_empty() {
            groups.push(actions);
        }
        if let Some(due) = due {
            wake_at_ms = Some(wake_at_ms.map_or(due, |w: i64| w.min(due)));
        }
    }
    starved |= maker.starved;
    ServiceOutcome {
        service_write,
        groups,
        wake_at_ms,
        starved,
    }
}

/// The actions one wanted place of a service needs (its tasks in
/// `history`, oldest first), and when its delayed restart is due.
pub(super) fn place_actions<F: FnMut() -> String>(
    view: &Tables,
    constraints: &[Constraint],
    evicted: &HashSet<String>,
    place: &Place,
    history: &[&Task],
    maker: &mut Maker<'_, F>,
) -> (Vec<StoreAction>, Option<i64>) {
    let service = maker.service;
    let now_ms = maker.now_ms;
    let mut actions = Vec::new();
    let mut live: Vec<&Task> = history.iter().copied().filter(|t| occupies(t)).collect();
    // A rollback came back to an older task that still runs: the newer
    // tasks of the spec left are let go, and it is the place's again.
    let kept = place_task(&live, |t| maker.is_stale(t)).map(|t| t.id.as_str());
    while live.len() > 1 && live.last().map(|t| t.id.as_str()) != kept {
        if let Some(newer) = live.pop() {
            actions.push(update(with_desired(newer, TaskState::Shutdown)));
        }
    }
    // At most one live task per place: keep the newest. Under start-first,
    // a task of an older spec keeps running until its replacement runs, or
    // until the replacement ended for good (it will not be restarted).
    let checked = service
        .spec
        .as_ref()
        .and_then(|s| s.task.as_ref())
        .is_some_and(|t| t.health.is_some());
    let hold = maker.start_first
        && live.last().is_some_and(|n| {
            !maker.is_stale(n)
                && match n.observed() {
                    // Up once running, and healthy when it has a check.
                    TaskState::Running => {
                        checked
                            && n.status.as_ref().map_or(0, |s| s.health)
                                != shoal_api::task_status::Health::Healthy as i32
                    }
                    s if s.is_terminal() => should_restart(service, history, n, now_ms),
                    _ => true,
                }
        });
    let newest = live.pop();
    for extra in live {
        let held = hold && maker.is_stale(extra) && !extra.observed().is_terminal();
        if !held {
            actions.push(update(with_desired(extra, TaskState::Shutdown)));
        }
    }
    let Some(current) = newest else {
        if maker.may_create() {
            actions.push(create(maker.task(place, TaskState::Running)));
        }
        return (actions, None);
    };
    let state = current.observed();
    let stranded = matches!(place, Place::Slot(_))
        && !state.is_terminal()
        && !current.node_id.is_empty()
        && (!keeps_tasks(view.node(&current.node_id), constraints)
            || evicted.contains(&current.id));
    // A new spec reaches a place when the update supervisor says so; a
    // job's at once.
    let updated = maker.is_stale(current)
        && if maker.job() {
            // A job of a new spec (`service update --force`) runs again,
            // whether or not its old run completed (a failed run is the
            // restart supervisor's).
            !state.is_terminal() || state == TaskState::Complete
        } else {
            !state.is_terminal() && maker.replace.contains(place)
        };
    let replace = stranded || updated;
    let restart =
        !replace && state.is_terminal() && should_restart(service, history, current, now_ms);
    // A replacement of a task that has not ended takes its place among a
    // job's tasks running at once: it needs no room of its own.
    let swaps = replace && !state.is_terminal();
    if let Some(room) = maker.job_room.as_mut().filter(|_| swaps) {
        *room += 1;
    }
    if (replace || restart) && !maker.may_create() {
        if let Some(room) = maker.job_room.as_mut().filter(|_| swaps) {
            *room -= 1;
        }
        // A task let go and its replacement commit together: both wait
        // for a pass with budget left.
        return (actions, None);
    }
    if replace {
        // Moved off a node that cannot keep it, or updated: start-first
        // stops the old task once the new one runs (above, next passes).
        if stranded || !maker.start_first {
            actions.push(update(with_desired(current, TaskState::Shutdown)));
        }
        actions.push(create(maker.task(place, TaskState::Running)));
    } else if state.is_terminal() {
        if restart {
            let delay = restart_delay_ms(service, state);
            // A replacement that ended while it still waited out its delay
            // (its preparation failed: a missing program is rejected at
            // once) is replaced when that delay is over, not at once:
            // otherwise a broken spec spins at the speed of a pass.
            let due = created_at(current) + delay as i64;
            if current.desired() == TaskState::Ready && now_ms < due {
                return (actions, Some(due));
            }
            actions.push(update(with_desired(current, TaskState::Shutdown)));
            let next = if delay == 0 {
                TaskState::Running
            } else {
                TaskState::Ready
            };
            actions.push(create(maker.task(place, next)));
        } else if maker.job()
            && state == TaskState::Complete
            && current.desired() == TaskState::Running
        {
            // Done: the job's place shows it wants nothing more.
            actions.push(update(with_desired(current, TaskState::Complete)));
        }
    } else if current.desired() == TaskState::Ready {
        // The delay follows from how the task it replaces ended.
        let replaced = history
            .iter()
            .rfind(|t| created_at(t) <= created_at(current) && t.id != current.id)
            .map_or(TaskState::Failed, |t| t.observed());
        let delay = restart_delay_ms(service, replaced) as i64;
        let due = created_at(current) + delay;
        if now_ms >= due {
            actions.push(update(with_desired(current, TaskState::Running)));
        } else {
            return (actions, Some(due));
        }
    }
    (actions, None)
}
