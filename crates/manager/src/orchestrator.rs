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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use shoal_api::{
    object, restart_policy, store_action, watch_event, Node, RestartPolicy, Service, ServiceMode,
    StoreAction, Task, TaskState, TaskStatus,
};
use shoal_store::{Event, Tables};

use crate::constraint::Constraint;
use crate::reconciler::{pack, Pass, Reconciler};

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

fn update(task: Task) -> StoreAction {
    StoreAction {
        kind: store_action::Kind::Update as i32,
        target: Some(task.into()),
    }
}

fn create(task: Task) -> StoreAction {
    StoreAction {
        kind: store_action::Kind::Create as i32,
        target: Some(task.into()),
    }
}

fn occupies(task: &Task) -> bool {
    matches!(task.desired(), TaskState::Running | TaskState::Ready)
}

fn with_desired(task: &Task, state: TaskState) -> Task {
    let mut t = task.clone();
    t.desired_state = state as i32;
    t
}

fn created_at(task: &Task) -> i64 {
    task.meta.as_ref().map_or(0, |m| m.created_at_ms)
}

/// Whether a node may run tasks of a global service.
fn eligible(node: &Node, constraints: &[Constraint]) -> bool {
    let ready =
        node.status.as_ref().map(|s| s.state) == Some(shoal_api::node_status::State::Ready as i32);
    let active = node.spec.as_ref().map_or(0, |s| s.availability)
        == shoal_api::node_spec::Availability::Active as i32;
    ready && active && constraints.iter().all(|c| c.matches(node))
}

/// Whether a node may keep a task it already runs: it exists, is not down,
/// is not drained, and still satisfies the task's constraints. A paused node
/// keeps its tasks; a node not yet ready (just registering) is given time.
fn keeps_tasks(node: Option<&Node>, constraints: &[Constraint]) -> bool {
    let Some(node) = node else { return false };
    let down =
        node.status.as_ref().map(|s| s.state) == Some(shoal_api::node_status::State::Down as i32);
    let drained = node.spec.as_ref().map_or(0, |s| s.availability)
        == shoal_api::node_spec::Availability::Drain as i32;
    !down && !drained && constraints.iter().all(|c| c.matches(node))
}

/// Where a task sits: a slot number, or a node for global services.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Place {
    Slot(u64),
    Node(String),
}

/// Makes new tasks for one service, within what is left of the pass's
/// budget of new tasks.
struct Maker<'a, F: FnMut() -> String> {
    service: &'a Service,
    now_ms: i64,
    new_id: &'a mut F,
    /// New tasks this pass may still create (all services together).
    budget: &'a mut u64,
    /// The service needed a task the budget could not pay for.
    starved: bool,
}

impl<F: FnMut() -> String> Maker<'_, F> {
    /// Whether a task may be created now; when not, the service is noted
    /// as unfinished and the place is left as it is for the next pass.
    fn may_create(&mut self) -> bool {
        if *self.budget == 0 {
            self.starved = true;
        }
        *self.budget > 0
    }

    fn task(&mut self, place: &Place, desired: TaskState) -> Task {
        debug_assert!(*self.budget > 0, "a task made past the pass's budget");
        *self.budget = self.budget.saturating_sub(1);
        let (slot, node_id) = match place {
            Place::Slot(s) => (*s, String::new()),
            Place::Node(n) => (0, n.clone()),
        };
        Task {
            id: (self.new_id)(),
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

/// A service without a restart policy restarts any ended task after 5 s, as
/// docker does.
const DEFAULT_RESTART_DELAY_MS: u64 = 5_000;
/// A task rejected before it started (missing program, bad workdir) cannot
/// succeed by retrying faster: its replacement waits at least this long,
/// whatever the policy says, so a broken spec never spins.
const MIN_REJECTED_RESTART_DELAY_MS: u64 = 1_000;

fn restart_policy(service: &Service) -> RestartPolicy {
    service
        .spec
        .as_ref()
        .and_then(|s| s.task.as_ref())
        .and_then(|t| t.restart)
        .unwrap_or(RestartPolicy {
            condition: restart_policy::Condition::Any as i32,
            delay_ms: DEFAULT_RESTART_DELAY_MS,
            ..Default::default()
        })
}

/// How long the replacement of a task that ended in `ended` waits. A task
/// lost with its node did not fail: its replacement starts at once (the
/// delay is there to slow a crash loop, and node loss is not one).
fn restart_delay_ms(service: &Service, ended: TaskState) -> u64 {
    let delay = restart_policy(service).delay_ms;
    if ended == TaskState::Orphaned {
        0
    } else if ended == TaskState::Rejected {
        delay.max(MIN_REJECTED_RESTART_DELAY_MS)
    } else {
        delay
    }
}

/// The restart supervisor's verdict on an occupying task that ended.
fn should_restart(service: &Service, history: &[&Task], ended: &Task, now_ms: i64) -> bool {
    let spec = service.spec.clone().unwrap_or_default();
    let policy = restart_policy(service);
    let job = matches!(
        ServiceMode::try_from(spec.mode),
        Ok(ServiceMode::ReplicatedJob | ServiceMode::GlobalJob)
    );
    let state = ended.observed();
    if state == TaskState::Orphaned {
        // Its node was lost: not the task's failure, so no policy stops
        // its replacement.
        return true;
    }
    let condition = restart_policy::Condition::try_from(policy.condition).unwrap_or_default();
    let wanted = match condition {
        _ if job && state == TaskState::Complete => false,
        restart_policy::Condition::None => false,
        restart_policy::Condition::OnFailure => state != TaskState::Complete,
        restart_policy::Condition::Any => true,
    };
    if !wanted {
        return false;
    }
    if policy.max_attempts == 0 {
        return true;
    }
    // Restarts already made in the window: tasks of this place created after
    // the first, within the window.
    let first = history.iter().map(|t| created_at(t)).min().unwrap_or(0);
    let since = if policy.window_ms == 0 {
        i64::MIN
    } else {
        now_ms - policy.window_ms as i64
    };
    let restarts = history
        .iter()
        .filter(|t| created_at(t) > first && created_at(t) >= since)
        .count() as u64;
    restarts < policy.max_attempts
}

/// Tasks that must leave their node because it no longer has the CPU or
/// memory their reservations add up to (its agent reported less): the
/// newest go first, until the rest fit.
fn evicted_for_resources(view: &Tables) -> HashSet<String> {
    let mut on_node: HashMap<&str, Vec<(i64, String, i64, i64)>> = HashMap::new();
    let nodes: HashMap<&str, &Node> = view.nodes().map(|n| (n.id.as_str(), n)).collect();
    for (t, spec) in view.tasks_sharing_specs() {
        let state = t.observed();
        if t.node_id.is_empty()
            || state < TaskState::Assigned
            || state.is_terminal()
            || t.desired_state > TaskState::Running as i32
        {
            continue;
        }
        let r = spec
            .resources
            .as_ref()
            .and_then(|r| r.reservations)
            .unwrap_or_default();
        if r.nano_cpus == 0 && r.memory_bytes == 0 {
            continue;
        }
        if let Some((id, _)) = nodes.get_key_value(t.node_id.as_str()) {
            on_node.entry(id).or_default().push((
                created_at(&t),
                t.id,
                r.nano_cpus,
                r.memory_bytes,
            ));
        }
    }
    let mut evicted = HashSet::new();
    for (node_id, mut tasks) in on_node {
        let capacity = nodes
            .get(node_id)
            .and_then(|n| n.description.as_ref())
            .and_then(|d| d.resources)
            .unwrap_or_default();
        let mut cpu: i64 = tasks.iter().map(|t| t.2).sum();
        let mut memory: i64 = tasks.iter().map(|t| t.3).sum();
        tasks.sort();
        while cpu > capacity.nano_cpus || memory > capacity.memory_bytes {
            let Some((_, id, c, m)) = tasks.pop() else {
                break;
            };
            cpu -= c;
            memory -= m;
            evicted.insert(id);
        }
    }
    evicted
}

/// The new tasks one pass may create, as the cluster sets it.
fn pass_budget(view: &Tables) -> u64 {
    crate::Limits::of(view.cluster()).max_new_tasks_per_pass
}

/// Decides the tasks of every service. `new_id` makes task ids (seeded in tests).
pub fn decide(view: &Tables, now_ms: i64, new_id: &mut impl FnMut() -> String) -> Decision {
    let mut decision = Decision::default();
    let nodes: Vec<&Node> = view.nodes().collect();
    let evicted = evicted_for_resources(view);
    let mut budget = pass_budget(view);
    for service in view.services() {
        let outcome = reconcile(view, service, &nodes, &evicted, now_ms, new_id, &mut budget);
        decision.transactions.extend(pack(outcome.groups));
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
fn let_go(tasks: impl Iterator<Item = Task>) -> Vec<Vec<StoreAction>> {
    pack(
        tasks
            .filter(|t| t.desired() != TaskState::Remove)
            .map(|t| vec![update(with_desired(&t, TaskState::Remove))]),
    )
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
    /// Replicated services' task ids by slot, kept from the changes seen,
    /// so a slot can be looked at without reading its service's every task.
    slots: Slots,
    /// When each delayed restart is due, by service and slot (0: the
    /// service as a whole).
    delayed: HashMap<(String, u64), i64>,
    /// What each node offered when last seen.
    offered: HashMap<String, Option<shoal_api::Resources>>,
    rebuild: bool,
}

impl<F: FnMut() -> String + Send + 'static> Orchestrator<F> {
    pub fn new(new_id: F) -> Self {
        Orchestrator {
            new_id,
            dirty: BTreeSet::new(),
            dirty_slots: BTreeMap::new(),
            slots: Slots::default(),
            delayed: HashMap::new(),
            offered: HashMap::new(),
            rebuild: false,
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
            self.slots.clear();
            for (t, _) in view.tasks_sharing_specs() {
                if t.slot > 0 {
                    self.slots
                        .entry(t.service_id)
                        .or_default()
                        .entry(t.slot)
                        .or_default()
                        .insert(t.id);
                }
            }
            let decision = decide(view, now_ms, &mut self.new_id);
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
        for id in services {
            self.delayed.retain(|(s, _), _| *s != id);
            let Some(service) = view.service(&id) else {
                decision.transactions.extend(let_go(
                    view.tasks_of_service_sharing_specs(&id).map(|(t, _)| t),
                ));
                continue;
            };
            let outcome = reconcile(
                view,
                service,
                &nodes,
                &evicted,
                now_ms,
                &mut self.new_id,
                &mut budget,
            );
            decision.transactions.extend(pack(outcome.groups));
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
        if !matches!(
            ServiceMode::try_from(spec.mode),
            Ok(ServiceMode::Replicated | ServiceMode::ReplicatedJob)
        ) {
            return None;
        }
        let constraints = constraints_of(&spec);
        let known = self.slots.get(service_id);
        let mut groups = Vec::new();
        let mut delayed = Vec::new();
        let mut maker = Maker {
            service,
            now_ms,
            new_id: &mut self.new_id,
            budget,
            starved: false,
        };
        // Every slot's tasks first: one without an occupying task sends the
        // whole service to be looked at, before any id is made.
        let mut places = Vec::with_capacity(dirty.len());
        for slot in dirty {
            let tasks: Vec<Task> = known
                .and_then(|k| k.get(slot))
                .into_iter()
                .flatten()
                .filter_map(|id| view.task_without_spec(id))
                .collect();
            if !tasks.iter().any(occupies) {
                return None;
            }
            places.push((*slot, tasks));
        }
        for (slot, tasks) in &places {
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

/// Replicated services' task ids by slot. Looked up on every task change
/// the orchestrator observes, under the store's read lock: hashed with Fx.
type Slots = rustc_hash::FxHashMap<String, rustc_hash::FxHashMap<u64, BTreeSet<String>>>;

/// Notes `t` under its service's slot; copies its ids only when new there.
fn note_slot(slots: &mut Slots, t: &Task) {
    if let Some(service) = slots.get_mut(t.service_id.as_str()) {
        let ids = service.entry(t.slot).or_default();
        if !ids.contains(&t.id) {
            ids.insert(t.id.clone());
        }
        return;
    }
    let mut service = rustc_hash::FxHashMap::default();
    service.insert(t.slot, BTreeSet::from([t.id.clone()]));
    slots.insert(t.service_id.clone(), service);
}

/// The constraints of a service's tasks (validated when the spec was
/// written; one that does not parse constrains nothing).
fn constraints_of(spec: &shoal_api::ServiceSpec) -> Vec<Constraint> {
    spec.task
        .as_ref()
        .and_then(|t| t.placement.as_ref())
        .map(|p| {
            p.constraints
                .iter()
                .filter_map(|c| Constraint::parse(c).ok())
                .collect()
        })
        .unwrap_or_default()
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
            Some(object::Kind::Task(t)) if *action == watch_event::Action::Remove => {
                if let Some(ids) = self
                    .slots
                    .get_mut(&t.service_id)
                    .and_then(|s| s.get_mut(&t.slot))
                {
                    ids.remove(&t.id);
                }
            }
            Some(object::Kind::Task(t)) => {
                if t.slot > 0 {
                    note_slot(&mut self.slots, t);
                }
                let ended = occupies(t) && t.observed().is_terminal();
                let stranded = occupies(t)
                    && !t.node_id.is_empty()
                    && !keeps_tasks(view.node(&t.node_id), &[]);
                // A replacement waiting out its restart delay: its service
                // is looked at again, which notes when the delay is due.
                let delayed = t.desired() == TaskState::Ready;
                let unowned =
                    t.desired() != TaskState::Remove && view.service(&t.service_id).is_none();
                if unowned {
                    self.dirty.insert(t.service_id.clone());
                } else if ended || stranded || delayed {
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

/// What one service needs.
struct ServiceOutcome {
    groups: Vec<Vec<StoreAction>>,
    /// When its earliest delayed restart is due.
    wake_at_ms: Option<i64>,
    /// It needs more new tasks than the pass's budget had left.
    starved: bool,
}

/// The actions one service needs, and when its earliest delayed restart is
/// due. At most `budget` new tasks are made (and taken from it).
fn reconcile(
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
    let tasks: Vec<Task> = view
        .tasks_of_service_sharing_specs(&service.id)
        .map(|(t, _)| t)
        .collect();
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
    let mut starved = matches!(mode, ServiceMode::Replicated | ServiceMode::ReplicatedJob)
        && wanted.len() < spec.replicas.unwrap_or(1).max(0) as usize;
    // One group per place: a task let go and its replacement commit together.
    let mut groups: Vec<Vec<StoreAction>> = Vec::new();
    let mut maker = Maker {
        service,
        now_ms,
        new_id,
        budget,
        starved: false,
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
        groups,
        wake_at_ms,
        starved,
    }
}

/// The actions one wanted place of a service needs (its tasks in
/// `history`, oldest first), and when its delayed restart is due.
fn place_actions<F: FnMut() -> String>(
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
    // At most one live task per place: keep the newest.
    while live.len() > 1 {
        let extra = live.remove(0);
        actions.push(update(with_desired(extra, TaskState::Shutdown)));
    }
    let Some(current) = live.first() else {
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
    let replace = stranded || (current.spec_version < service.spec_version && !state.is_terminal());
    let restart =
        !replace && state.is_terminal() && should_restart(service, history, current, now_ms);
    if (replace || restart) && !maker.may_create() {
        // A task let go and its replacement commit together: both wait
        // for a pass with budget left.
        return (actions, None);
    }
    if replace {
        // Moved off a node that cannot keep it, or a plain
        // replacement of an old template (rolling updates grow here).
        actions.push(update(with_desired(current, TaskState::Shutdown)));
        actions.push(create(maker.task(place, TaskState::Running)));
    } else if state.is_terminal() {
        if restart {
            let delay = restart_delay_ms(service, state);
            actions.push(update(with_desired(current, TaskState::Shutdown)));
            let next = if delay == 0 {
                TaskState::Running
            } else {
                TaskState::Ready
            };
            actions.push(create(maker.task(place, next)));
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

/// Which slots a replicated service keeps: the occupied ones, dropping first
/// those whose task is not running, then the highest; then the lowest free
/// numbers until there are `replicas`, at most `max_new` of them (the
/// pass's budget: a service of millions never makes millions of slots in
/// one pass).
fn choose_slots(
    by_place: &BTreeMap<Place, Vec<&Task>>,
    replicas: usize,
    max_new: usize,
) -> Vec<Place> {
    let mut occupied: Vec<(bool, u64)> = by_place
        .iter()
        .filter_map(|(place, history)| match place {
            Place::Slot(s) if history.iter().any(|t| occupies(t)) => {
                let running = history
                    .iter()
                    .any(|t| occupies(t) && t.observed() == TaskState::Running);
                Some((running, *s))
            }
            _ => None,
        })
        .collect();
    // Keep running tasks first, lower slots first.
    occupied.sort_by_key(|(running, slot)| (!running, *slot));
    occupied.truncate(replicas);
    let mut slots: std::collections::BTreeSet<u64> = occupied.into_iter().map(|(_, s)| s).collect();
    let wanted = replicas.min(slots.len().saturating_add(max_new));
    let mut next = 1;
    while slots.len() < wanted {
        slots.insert(next);
        next += 1;
    }
    slots.into_iter().map(Place::Slot).collect()
}
