//! The scheduler: PENDING → ASSIGNED (DESIGN.md §3).
//!
//! Owns: task `node_id` and the PENDING → ASSIGNED move.
//!
//! Each pending task goes through the filters, in order: node ready and
//! active; resources (reservations against what the node has left);
//! constraints; host-published ports already taken on the node; max replicas
//! per node. Among the nodes left, nodes where the service failed several
//! times in the last minutes go last, then placement preferences spread tasks
//! evenly over each label's values (nested, in order), then the node with the
//! fewest tasks of the service wins, then the one with the fewest tasks
//! overall, then the first by id. A task no node can take stays PENDING and
//! says why: `no suitable node (insufficient memory on 2 nodes; …)`. Tasks of
//! global services arrive with their node chosen; the filters still apply.
//!
//! # Batching
//! Pending tasks are grouped by (service, spec version): the tasks of a group
//! ask for the same resources under the same constraints, so the filters'
//! static part and the explanation are worked out once per group, not once
//! per task. Nodes are kept ordered by their task count, so a task of a
//! service the node set has not seen takes the first node of that order that
//! passes the filters instead of a scan of every node; a large group instead
//! ranks every node that can take it once, in a heap, and takes from its top.
//! Every way gives the placement of the exhaustive rule above (a property
//! test compares them).
//!
//! # Layout
//! [`group`] holds what a batch of pending tasks shares and what a task
//! counts on its node; [`node_set`] the scheduler's picture of the nodes,
//! kept between passes; [`filter`] the filters and the explanation of a
//! refusal; [`search`] the ranking and the ways to find the best node.

mod filter;
mod group;
mod node_set;
mod search;

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::sync::Arc;

use shoal_api::{
    object, store_action, watch_event, StoreAction, Task, TaskSpec, TaskState, TaskStatus,
};
use shoal_store::{Event, Tables};

use crate::reconciler::{Pass, Reconciler};

use group::*;
use node_set::*;

/// A node where a service failed this many times within
/// `FAILURE_WINDOW_MS` goes after every other node for that service.
const FAILURES_TO_AVOID: usize = 3;
const FAILURE_WINDOW_MS: i64 = 5 * 60_000;
/// A group whose tasks times (nodes it already uses + this) reach the
/// number of nodes is ranked in a heap once, instead of a walk per task.
const WALK_COST: usize = 8;

/// Constraint sets that get nodes ordered by load of their own, at most.
const MAX_LANES: usize = 64;

/// How groups without spread preferences find their nodes. Every way gives
/// the same placements; `Auto` picks the cheaper per group, the others exist
/// so tests can hold each to the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Search {
    Auto,
    Walk,
    Heap,
}

/// Adds one to (or takes one from) a count, dropping it at zero: a key's
/// presence means "some" to the walk.
fn bump<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: K, add: bool) {
    if add {
        *counts.entry(key).or_default() += 1;
    } else if let Some(n) = counts.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(&key);
        }
    }
}

fn bump_nested<K: std::hash::Hash + Eq>(
    counts: &mut HashMap<ServiceId, HashMap<K, usize>>,
    outer: &ServiceId,
    key: K,
    add: bool,
) {
    if add {
        match counts.get_mut(outer) {
            Some(inner) => bump(inner, key, true),
            None => {
                counts.insert(Arc::clone(outer), [(key, 1)].into_iter().collect());
            }
        }
    } else if let Some(inner) = counts.get_mut(outer) {
        bump(inner, key, false);
        if inner.is_empty() {
            counts.remove(outer);
        }
    }
}

fn is_pending(t: &Task) -> bool {
    t.observed() == TaskState::Pending && t.desired_state <= TaskState::Running as i32
}

fn is_failure(t: &Task) -> bool {
    matches!(t.observed(), TaskState::Failed | TaskState::Rejected)
}

/// Assignments for every pending task that fits somewhere, and explanations
/// for the ones that do not (only when the explanation changed).
pub fn decide(view: &Tables, now_ms: i64) -> Vec<StoreAction> {
    decide_with(view, now_ms, Search::Auto)
}

/// [`decide`], with the search chosen.
pub fn decide_with(view: &Tables, now_ms: i64, search: Search) -> Vec<StoreAction> {
    Scheduler::new(search).schedule(view, now_ms, true)
}

/// The scheduler between passes: the cluster as it counted it, and which
/// tasks to look at.
///
/// A pending task is tried when it becomes pending; one that found no node
/// waits until something frees room on a node (a task stops holding
/// resources) or a node opens (ready and active again), since loads only
/// grow otherwise and it could not fit anywhere then either. A node going
/// down, drained or paused is taken in place; any other node change makes
/// the cluster anew from the store at the next pass.
pub struct Scheduler {
    search: Search,
    cluster: Option<NodeSet>,
    /// Tasks whose change may matter, since the last pass.
    changed: BTreeSet<String>,
    /// A node opened to new tasks since the last pass.
    room: bool,
}

impl Scheduler {
    pub fn new(search: Search) -> Scheduler {
        Scheduler {
            search,
            cluster: None,
            changed: BTreeSet::new(),
            room: false,
        }
    }

    /// What one pass decides: from every task when `full`, else from the
    /// tasks noted since the last pass.
    pub fn schedule(&mut self, view: &Tables, now_ms: i64, full: bool) -> Vec<StoreAction> {
        let changed = std::mem::take(&mut self.changed);
        let room = std::mem::take(&mut self.room);
        let actions = match self.cluster.take() {
            Some(mut cluster) if !full => {
                let mut freed = false;
                // Boxed as they are read (a task is large, and the list
                // would move each again as it grows, then into its group).
                let mut pending = Vec::with_capacity(changed.len());
                for id in &changed {
                    let task = view.task_sharing_spec(id);
                    let current = task.as_ref().map(|(t, spec)| (t, spec.as_ref()));
                    freed |= cluster.refresh(id, current, now_ms);
                    if let Some((t, spec)) = task.filter(|(t, _)| is_pending(t)) {
                        pending.push((Box::new(t), spec));
                    }
                }
                cluster.expire_failures(now_ms);
                if freed || room {
                    // The pending tasks that found no node before, through
                    // the store's pending index (each pass's assignments
                    // are committed before the next, so every pending task
                    // not changed since is one that waits).
                    pending.extend(
                        view.pending_task_ids()
                            .filter(|id| !changed.contains(*id))
                            .filter_map(|id| view.task_sharing_spec(id))
                            .filter(|(t, _)| is_pending(t))
                            .map(|(t, spec)| (Box::new(t), spec)),
                    );
                }
                let placed = place_pending(&mut cluster, pending.into_iter(), now_ms, self.search);
                self.cluster = Some(cluster);
                placed
            }
            _ => {
                let mut cluster = NodeSet::new(view);
                let mut pending = Vec::new();
                for (task, spec) in view.tasks_sharing_specs() {
                    if is_pending(&task) {
                        pending.push((Box::new(task), spec));
                    } else if holds_resources(&task) || is_failure(&task) {
                        cluster.refresh(&task.id, Some((&task, spec)), now_ms);
                    }
                }
                cluster.order_by_load();
                let placed = place_pending(&mut cluster, pending.into_iter(), now_ms, self.search);
                self.cluster = Some(cluster);
                placed
            }
        };
        // What found no node stays PENDING in the store, where the next
        // pass with room finds it.
        actions
    }
}

impl Reconciler for Scheduler {
    fn observe(&mut self, _: &Tables, event: &Event) {
        let Event::Change { action, object, .. } = event else {
            return;
        };
        match &object.kind {
            Some(object::Kind::Node(node)) => {
                // A node going down, drained or paused (or back) is taken in
                // place; anything else makes the cluster anew.
                let updated = match (&mut self.cluster, action) {
                    (Some(cluster), watch_event::Action::Update) => cluster.update_node(node),
                    _ => None,
                };
                match updated {
                    None => self.cluster = None,
                    Some(opened) => self.room |= opened,
                }
            }
            Some(object::Kind::Task(t)) => {
                if let (Some(cluster), true) =
                    (&self.cluster, *action != watch_event::Action::Remove)
                {
                    // Most changes move a task along without changing what
                    // it holds (ASSIGNED → RUNNING on the same node).
                    let hold = cluster.held.get(&t.id);
                    // Same node, and every named port the allocator gave it
                    // counted there (it holds dynamic ones from then on).
                    let same_hold = hold.is_some_and(|h| {
                        cluster.nodes[h.index].id == t.node_id
                            && t.named_ports()
                                .iter()
                                .filter(|p| p.published_port > 0)
                                .all(|p| h.ports.contains(&(p.protocol, p.published_port)))
                    });
                    let held = hold.is_some();
                    let holds = holds_resources(t);
                    let quiet = !is_pending(t)
                        && !is_failure(t)
                        && ((holds && same_hold) || (!holds && !held));
                    if quiet {
                        return;
                    }
                }
                self.changed.insert(t.id.clone());
            }
            _ => {}
        }
    }

    fn decide(&mut self, view: &Tables, now_ms: i64, full: bool) -> Pass {
        Pass::chunked(self.schedule(view, now_ms, full))
    }
}

/// Places `pending` tasks on `cluster`: assignments for those that fit,
/// and explanations for the others (only when it changed); those stay
/// PENDING, where the store's pending index finds them again.
fn place_pending<'s>(
    cluster: &mut NodeSet,
    pending: impl Iterator<Item = (Box<Task>, &'s Arc<TaskSpec>)>,
    now_ms: i64,
    search: Search,
) -> Vec<StoreAction> {
    // Pending tasks by (service, spec version), and those whose node is
    // chosen already (global services) each on its own.
    let mut groups: Vec<Group> = Vec::new();
    let mut group_of: HashMap<(ServiceId, u64), usize> = HashMap::default();
    let mut fixed: Vec<Group> = Vec::new();
    for (task, spec) in pending {
        if !task.node_id.is_empty() {
            let mut g = Group::new(task.service_id.as_str().into(), &task, Arc::clone(spec));
            g.tasks.push(task);
            fixed.push(g);
            continue;
        }
        // Most tasks come after one of their own group.
        let last = groups.len().checked_sub(1).filter(|i| {
            let g = &groups[*i];
            *g.service_id == *task.service_id && g.spec_version == task.spec_version
        });
        let index = match last {
            Some(index) => index,
            None => {
                let service: ServiceId = task.service_id.as_str().into();
                *group_of
                    .entry((Arc::clone(&service), task.spec_version))
                    .or_insert_with(|| {
                        groups.push(Group::new(service, &task, Arc::clone(spec)));
                        groups.len() - 1
                    })
            }
        };
        groups[index].tasks.push(task);
    }
    // Older tasks first, so a burst is placed in creation order; a group
    // goes in the order of its oldest task.
    // The id settles ties, so the order does not depend on the order the
    // tasks came in (a pass over every task, or over what changed).
    fn age(t: &Task) -> (i64, u64, &str) {
        (
            t.meta.as_ref().map_or(0, |m| m.created_at_ms),
            t.slot,
            t.id.as_str(),
        )
    }
    for g in groups.iter_mut().chain(fixed.iter_mut()) {
        g.tasks.sort_by(|a, b| age(a).cmp(&age(b)));
    }
    let mut order: Vec<Group> = groups.into_iter().chain(fixed).collect();
    fn first(g: &Group) -> Option<(i64, u64, &str)> {
        g.tasks.first().map(|t| age(t))
    }
    order.sort_by(|a, b| first(a).cmp(&first(b)));

    // Reserved up front: an action holds a whole task, and growing the list
    // by doubling copies every one of them again.
    let mut actions = Vec::with_capacity(order.iter().map(|g| g.tasks.len()).sum());
    cluster.held.reserve(actions.capacity());
    for mut group in order {
        cluster.lane(&mut group);
        let tasks = std::mem::take(&mut group.tasks);
        let count = tasks.len();
        let fixed_node = tasks
            .first()
            .filter(|t| !t.node_id.is_empty())
            .map(|t| cluster.index_of.get(t.node_id.as_str()).copied());
        let mut heap = None;
        let mut explanation: Option<String> = None;
        for mut task in tasks {
            let choice = match fixed_node {
                Some(Some(i)) => cluster.reject(&group, i).is_none().then_some(i),
                Some(None) => None,
                None if explanation.is_some() => None,
                None if !group.preferences.is_empty() => cluster.spread_choice(&group),
                None => {
                    let known = cluster
                        .placed
                        .get(&group.service_id)
                        .map_or(0, HashMap::len)
                        + cluster
                            .failures
                            .get(&group.service_id)
                            .map_or(0, HashMap::len);
                    let use_heap = match search {
                        Search::Auto => {
                            count.saturating_mul(known + WALK_COST)
                                >= cluster.lanes[group.lane].order.len()
                        }
                        Search::Walk => false,
                        Search::Heap => true,
                    };
                    if heap.is_none() && use_heap {
                        heap = Some(
                            cluster.lanes[group.lane]
                                .order
                                .iter()
                                .map(|(_, i)| *i)
                                .filter(|i| cluster.reject(&group, *i).is_none())
                                .map(|i| Reverse(cluster.rank(&group, i)))
                                .collect::<BinaryHeap<_>>(),
                        );
                    }
                    match heap.as_mut() {
                        // Only this group changes loads while it is placed,
                        // so the ranks in its heap stay exact.
                        Some(h) => h.pop().map(|Reverse((.., i))| i),
                        None => cluster.walk(&group),
                    }
                }
            };
            match choice {
                Some(index) => {
                    cluster.place(&task.id, index, &group);
                    if let Some(h) = heap.as_mut() {
                        if cluster.reject(&group, index).is_none() {
                            h.push(Reverse(cluster.rank(&group, index)));
                        }
                    }
                    // No spec: the store keeps the task's own.
                    task.node_id = cluster.nodes[index].id.clone();
                    let moved = task.advance_status(TaskStatus {
                        timestamp_ms: now_ms,
                        state: TaskState::Assigned as i32,
                        message: "scheduler assigned task to node".into(),
                        ..Default::default()
                    });
                    debug_assert!(moved, "only PENDING tasks are placed");
                    actions.push(StoreAction {
                        kind: store_action::Kind::Update as i32,
                        target: Some(task.into()),
                    });
                }
                None => {
                    // The rest of the group cannot fit either: loads only
                    // grew since, and its tasks ask the same.
                    let why = match (&explanation, fixed_node) {
                        (Some(why), _) => why.clone(),
                        (None, Some(only)) => match only {
                            Some(i) => cluster.explain(&group, Some(i)),
                            None => "no suitable node (its node is gone)".to_string(),
                        },
                        (None, None) => {
                            let why = cluster.explain(&group, None);
                            explanation = Some(why.clone());
                            why
                        }
                    };
                    let status = task.status.get_or_insert_with(Default::default);
                    if status.err != why {
                        status.err = why;
                        status.timestamp_ms = now_ms;
                        actions.push(StoreAction {
                            kind: store_action::Kind::Update as i32,
                            target: Some(task.into()),
                        });
                    }
                }
            }
        }
    }
    actions
}
