//! Which tasks must leave their node: the node is gone, down or drained,
//! no longer satisfies the task's constraints, or reports less CPU or
//! memory than its tasks reserve (the newest leave first).

use std::collections::{HashMap, HashSet};

use shoal_api::{Node, TaskState};
use shoal_store::Tables;

use crate::constraint::Constraint;

use super::*;

/// Whether a node may keep a task it already runs: it exists, is not down,
/// is not drained, and still satisfies the task's constraints. A paused node
/// keeps its tasks; a node not yet ready (just registering) is given time.
pub(super) fn keeps_tasks(node: Option<&Node>, constraints: &[Constraint]) -> bool {
    let Some(node) = node else { return false };
    let drained = node.availability() == shoal_api::node_spec::Availability::Drain;
    !node.is_down() && !drained && constraints.iter().all(|c| c.matches(node))
}

/// Tasks that must leave their node because it no longer has the CPU or
/// memory their reservations add up to (its agent reported less): the
/// newest go first, until the rest fit.
pub(super) fn evicted_for_resources(view: &Tables) -> HashSet<String> {
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

/// The constraints of a service's tasks (validated when the spec was
/// written; one that does not parse constrains nothing).
pub(super) fn constraints_of(spec: &shoal_api::ServiceSpec) -> Vec<Constraint> {
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
