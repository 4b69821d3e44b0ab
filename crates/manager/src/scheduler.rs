//! The scheduler: PENDING → ASSIGNED (DESIGN.md §3).
//!
//! Owns: task `node_id` and the PENDING → ASSIGNED move.
//!
//! Each pending task goes through the filters (node ready and active,
//! resources, constraints, max replicas per node); among the nodes left,
//! nodes where the service failed several times in the last minutes go last,
//! then placement preferences spread tasks evenly over each label's values
//! (nested, in order), then the node with the fewest tasks of the service
//! wins, then the one with the fewest tasks overall. A task no node can take stays PENDING and says
//! why: `no suitable node (insufficient memory on 2 nodes; …)`. Tasks of
//! global services arrive with their node chosen; the filters still apply.

use std::collections::{BTreeMap, HashMap};

use shoal_api::{
    node_spec, node_status, store_action, Node, StoreAction, Task, TaskState, TaskStatus,
};
use shoal_store::Tables;

use crate::constraint::Constraint;

/// What a node has left, and how many tasks it runs.
#[derive(Debug, Default, Clone)]
struct Load {
    cpu_left: i64,
    memory_left: i64,
    tasks: usize,
    by_service: HashMap<String, usize>,
}

fn reservations(task: &Task) -> (i64, i64) {
    let r = task
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.reservations)
        .unwrap_or_default();
    (r.nano_cpus, r.memory_bytes)
}

fn holds_resources(task: &Task) -> bool {
    let state = task.status.as_ref().map_or(0, |s| s.state);
    !task.node_id.is_empty()
        && state >= TaskState::Assigned as i32
        && !TaskState::try_from(state).is_ok_and(TaskState::is_terminal)
}

/// How a candidate node ranks for a task, lowest first: recently failing,
/// tasks of the service per spread group (one per preference), tasks of the
/// service on the node, tasks on the node.
type Score = (bool, Vec<usize>, usize, usize);

/// A node where a service failed this many times within
/// `FAILURE_WINDOW_MS` goes after every other node for that service.
const FAILURES_TO_AVOID: usize = 3;
const FAILURE_WINDOW_MS: i64 = 5 * 60_000;

/// The value a node has for a spread descriptor (`node.labels.zone`); nodes
/// without the label form a group of their own.
fn spread_value(node: &Node, descriptor: &str) -> String {
    let key = descriptor
        .strip_prefix("node.labels.")
        .unwrap_or(descriptor);
    node.spec
        .as_ref()
        .and_then(|s| s.annotations.as_ref())
        .and_then(|a| a.labels.get(key).cloned())
        .unwrap_or_default()
}

fn preferences(task: &Task) -> Vec<String> {
    task.spec
        .as_ref()
        .and_then(|s| s.placement.as_ref())
        .map(|p| {
            p.preferences
                .iter()
                .map(|p| p.spread_descriptor.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Assignments for every pending task that fits somewhere, and explanations
/// for the ones that do not (only when the explanation changed).
pub fn decide(view: &Tables, now_ms: i64) -> Vec<StoreAction> {
    let nodes: Vec<&Node> = view.nodes().collect();
    // What each node has left, indexed like `nodes`.
    let mut loads: Vec<Load> = nodes
        .iter()
        .map(|n| {
            let r = n
                .description
                .as_ref()
                .and_then(|d| d.resources)
                .unwrap_or_default();
            Load {
                cpu_left: r.nano_cpus,
                memory_left: r.memory_bytes,
                ..Default::default()
            }
        })
        .collect();
    let index_of: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let node_by_id: HashMap<&str, &Node> = nodes.iter().map(|n| (n.id.as_str(), *n)).collect();
    // Tasks of a service per value of each spread descriptor it uses.
    let mut spread: HashMap<(String, String, String), usize> = HashMap::new();
    // Recent failures per service, per node.
    let mut failures: HashMap<String, HashMap<String, usize>> = HashMap::new();
    let mut pending = Vec::new();
    for t in view.tasks() {
        let state = t.observed();
        let stamp = t.status.as_ref().map_or(0, |s| s.timestamp_ms);
        if matches!(state, TaskState::Failed | TaskState::Rejected)
            && stamp >= now_ms - FAILURE_WINDOW_MS
        {
            *failures
                .entry(t.service_id.clone())
                .or_default()
                .entry(t.node_id.clone())
                .or_default() += 1;
        }
        if holds_resources(&t) {
            if let Some(node) = node_by_id.get(t.node_id.as_str()) {
                for descriptor in preferences(&t) {
                    let value = spread_value(node, &descriptor);
                    *spread
                        .entry((t.service_id.clone(), descriptor, value))
                        .or_default() += 1;
                }
            }
            if let Some(load) = index_of.get(t.node_id.as_str()).map(|i| &mut loads[*i]) {
                let (cpu, mem) = reservations(&t);
                load.cpu_left -= cpu;
                load.memory_left -= mem;
                load.tasks += 1;
                *load.by_service.entry(t.service_id.clone()).or_default() += 1;
            }
        } else if t.status.as_ref().map_or(0, |s| s.state) == TaskState::Pending as i32
            && t.desired_state <= TaskState::Running as i32
        {
            pending.push(t);
        }
    }
    // Older tasks first, so a burst is placed in creation order.
    pending.sort_by_key(|t| (t.meta.as_ref().map_or(0, |m| m.created_at_ms), t.slot));
    let mut actions = Vec::new();
    for mut task in pending {
        let (cpu, mem) = reservations(&task);
        let placement = task
            .spec
            .as_ref()
            .and_then(|s| s.placement.clone())
            .unwrap_or_default();
        let constraints: Vec<Constraint> = placement
            .constraints
            .iter()
            .filter_map(|c| Constraint::parse(c).ok())
            .collect();
        let mut rejected: BTreeMap<String, usize> = BTreeMap::new();
        let prefs = preferences(&task);
        let service_failures = failures.get(&task.service_id);
        let mut best: Option<(usize, Score)> = None;
        for (index, node) in nodes.iter().enumerate() {
            if !task.node_id.is_empty() && task.node_id != node.id {
                continue;
            }
            let load = &loads[index];
            let reason = if node.status.as_ref().map(|s| s.state)
                != Some(node_status::State::Ready as i32)
            {
                Some("node not ready".to_string())
            } else if node.spec.as_ref().map_or(0, |s| s.availability)
                != node_spec::Availability::Active as i32
            {
                Some("node not active".to_string())
            } else if let Some(c) = constraints.iter().find(|c| !c.matches(node)) {
                Some(format!("constraint {c} not satisfied"))
            } else if mem > load.memory_left {
                Some("insufficient memory".to_string())
            } else if cpu > load.cpu_left {
                Some("insufficient CPU".to_string())
            } else if placement.max_replicas_per_node > 0
                && load.by_service.get(&task.service_id).copied().unwrap_or(0) as u64
                    >= placement.max_replicas_per_node
            {
                Some(format!(
                    "max replicas per node ({}) reached",
                    placement.max_replicas_per_node
                ))
            } else {
                None
            };
            match reason {
                Some(r) => *rejected.entry(r).or_default() += 1,
                None => {
                    // Order: nodes where the service keeps failing last; then
                    // the emptiest group of each spread preference, in order;
                    // then fewest tasks of the service; then fewest tasks.
                    let failing = service_failures
                        .and_then(|f| f.get(&node.id))
                        .is_some_and(|n| *n >= FAILURES_TO_AVOID);
                    let groups = prefs
                        .iter()
                        .map(|d| {
                            let key = (task.service_id.clone(), d.clone(), spread_value(node, d));
                            spread.get(&key).copied().unwrap_or(0)
                        })
                        .collect();
                    let score = (
                        failing,
                        groups,
                        load.by_service.get(&task.service_id).copied().unwrap_or(0),
                        load.tasks,
                    );
                    if best.as_ref().is_none_or(|(_, s)| score < *s) {
                        best = Some((index, score));
                    }
                }
            }
        }
        match best {
            Some((index, _)) => {
                let node = nodes[index];
                for descriptor in &prefs {
                    let key = (
                        task.service_id.clone(),
                        descriptor.clone(),
                        spread_value(node, descriptor),
                    );
                    *spread.entry(key).or_default() += 1;
                }
                let load = &mut loads[index];
                load.cpu_left -= cpu;
                load.memory_left -= mem;
                load.tasks += 1;
                *load.by_service.entry(task.service_id.clone()).or_default() += 1;
                task.node_id = node.id.clone();
                task.advance_status(TaskStatus {
                    timestamp_ms: now_ms,
                    state: TaskState::Assigned as i32,
                    message: "scheduler assigned task to node".into(),
                    ..Default::default()
                });
                actions.push(StoreAction {
                    kind: store_action::Kind::Update as i32,
                    target: Some(task.into()),
                });
            }
            None => {
                let why = if rejected.is_empty() {
                    "no suitable node (no nodes)".to_string()
                } else {
                    let parts: Vec<String> = rejected
                        .iter()
                        .map(|(r, n)| format!("{r} on {n} node{}", if *n == 1 { "" } else { "s" }))
                        .collect();
                    format!("no suitable node ({})", parts.join("; "))
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
    actions
}
