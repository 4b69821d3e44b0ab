//! The scheduler's picture of the nodes: each node's load, the nodes that
//! can take tasks ordered by load, where each service's tasks are and where
//! it failed. Kept between passes and changed task by task.

use std::collections::BTreeSet;
use std::sync::Arc;

use shoal_api::{Node, Task, TaskSpec, TaskState};
use shoal_store::Tables;

use crate::constraint::Constraint;

use super::*;

/// The cluster as the scheduler sees it: every node's load, the nodes that
/// can take tasks ordered by load, and per service where its tasks are and
/// where it failed. Kept between passes and changed task by task; made
/// anew from the store when nodes change.
pub(super) struct NodeSet {
    pub(super) nodes: Vec<Node>,
    pub(super) index_of: HashMap<String, usize>,
    pub(super) loads: Vec<Load>,
    pub(super) schedulable: Vec<bool>,
    /// Ready, active nodes ordered by (tasks, index): lane 0 holds all of
    /// them, each other lane those that satisfy one set of constraints, so
    /// a walk for a constrained task does not pass every node it cannot use.
    pub(super) lanes: Vec<Lane>,
    pub(super) lane_of: HashMap<Vec<String>, usize>,
    /// Per service: node index → its tasks there.
    pub(super) placed: HashMap<ServiceId, HashMap<usize, usize>>,
    /// Per service: node index → recent failures there.
    pub(super) failure_counts: HashMap<ServiceId, HashMap<usize, usize>>,
    /// The same, only where there were `FAILURES_TO_AVOID` or more.
    pub(super) failures: HashMap<ServiceId, HashMap<usize, usize>>,
    /// Tasks of a service per (descriptor, value).
    pub(super) spread: HashMap<ServiceId, HashMap<(String, String), usize>>,
    /// What each task that holds resources counts, by task id.
    pub(super) held: HashMap<String, Hold>,
    /// Recent failures by task id, and the same ordered by time so they
    /// can be let go when they leave the window.
    pub(super) failed: HashMap<String, Failure>,
    pub(super) failed_by_time: BTreeSet<(i64, String)>,
}

impl NodeSet {
    pub(super) fn new(view: &Tables) -> NodeSet {
        let nodes: Vec<Node> = view.nodes().cloned().collect();
        let loads = nodes
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
        let schedulable: Vec<bool> = nodes.iter().map(Node::takes_new_tasks).collect();
        NodeSet {
            index_of: nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.id.clone(), i))
                .collect(),
            nodes,
            loads,
            schedulable,
            lanes: Vec::new(),
            lane_of: HashMap::default(),
            placed: HashMap::default(),
            failure_counts: HashMap::default(),
            failures: HashMap::default(),
            spread: HashMap::default(),
            held: HashMap::default(),
            failed: HashMap::default(),
            failed_by_time: BTreeSet::new(),
        }
    }

    /// Counts what a task holds on its node (by task id, replacing what it
    /// held before). Returns whether anything was freed.
    pub(super) fn set_hold(&mut self, task_id: &str, hold: Option<Hold>) -> bool {
        if self.held.get(task_id) == hold.as_ref() {
            return false;
        }
        let old = self.held.remove(task_id);
        let freed = old.is_some();
        if let Some(old) = old {
            self.count(&old, false);
        }
        if let Some(hold) = hold {
            self.count(&hold, true);
            self.held.insert(task_id.to_string(), hold);
        }
        freed
    }

    /// Adds (or takes back) one task's hold on its node: what it reserves,
    /// the host ports it publishes, its place in its service's spread
    /// groups, and the node's place in the load order.
    pub(super) fn count(&mut self, hold: &Hold, add: bool) {
        let index = hold.index;
        let tasks = self.loads[index].tasks;
        let after = if add {
            tasks + 1
        } else {
            tasks.saturating_sub(1)
        };
        if self.schedulable[index] {
            for lane in &mut self.lanes {
                if lane.members.as_ref().is_none_or(|m| m[index]) {
                    lane.order.remove(&(tasks, index));
                    lane.order.insert((after, index));
                }
            }
        }
        let sign = if add { 1 } else { -1 };
        let load = &mut self.loads[index];
        load.cpu_left -= sign * hold.cpu;
        load.memory_left -= sign * hold.memory;
        load.tasks = after;
        if !hold.ports.is_empty() {
            let ports = load.ports.get_or_insert_default();
            for p in hold.ports.iter() {
                bump(ports, *p, add);
            }
            if ports.is_empty() {
                load.ports = None;
            }
        }
        bump_nested(&mut self.placed, &hold.service_id, index, add);
        for d in hold.preferences.iter() {
            let value = spread_value(&self.nodes[index], d).to_string();
            bump_nested(&mut self.spread, &hold.service_id, (d.clone(), value), add);
        }
    }

    /// Notes (or forgets) a recent failure of a task.
    pub(super) fn set_failure(&mut self, task_id: &str, failure: Option<Failure>) {
        if self.failed.contains_key(task_id) == failure.is_some() {
            return;
        }
        let (f, add) = match failure {
            Some(f) => {
                self.failed_by_time.insert((f.at_ms, task_id.to_string()));
                self.failed.insert(task_id.to_string(), f.clone());
                (f, true)
            }
            None => match self.failed.remove(task_id) {
                Some(f) => {
                    self.failed_by_time.remove(&(f.at_ms, task_id.to_string()));
                    (f, false)
                }
                None => return,
            },
        };
        bump_nested(&mut self.failure_counts, &f.service_id, f.index, add);
        let n = self
            .failure_counts
            .get(&f.service_id)
            .and_then(|c| c.get(&f.index))
            .copied()
            .unwrap_or(0);
        let avoid = self.failures.entry(Arc::clone(&f.service_id)).or_default();
        if n >= FAILURES_TO_AVOID {
            avoid.insert(f.index, n);
        } else {
            avoid.remove(&f.index);
        }
        if avoid.is_empty() {
            self.failures.remove(&f.service_id);
        }
    }

    /// Forgets failures older than the window.
    pub(super) fn expire_failures(&mut self, now_ms: i64) {
        while let Some((at, id)) = self.failed_by_time.first().cloned() {
            if at >= now_ms - FAILURE_WINDOW_MS {
                break;
            }
            self.set_failure(&id, None);
        }
    }

    /// Brings what one task counts up to date with the store; returns
    /// whether it freed anything on a node.
    pub(super) fn refresh(
        &mut self,
        task_id: &str,
        task: Option<(&Task, &TaskSpec)>,
        now_ms: i64,
    ) -> bool {
        let hold = task.and_then(|(t, spec)| {
            if !holds_resources(t) {
                return None;
            }
            let index = *self.index_of.get(t.node_id.as_str())?;
            Some(Hold::of(index, t, spec))
        });
        let failure = task.and_then(|(t, _)| {
            let stamp = t.status.as_ref().map_or(0, |s| s.timestamp_ms);
            let failed = matches!(t.observed(), TaskState::Failed | TaskState::Rejected);
            if !failed || stamp < now_ms - FAILURE_WINDOW_MS {
                return None;
            }
            Some(Failure {
                service_id: t.service_id.as_str().into(),
                index: *self.index_of.get(t.node_id.as_str())?,
                at_ms: stamp,
            })
        });
        self.set_failure(task_id, failure);
        self.set_hold(task_id, hold)
    }

    /// Takes a node's new status or availability in place, when nothing
    /// the cluster counted from it (labels, resources, description)
    /// changed. `None`: the cluster must be made anew; else whether the
    /// node can now take tasks and could not before.
    pub(super) fn update_node(&mut self, node: &Node) -> Option<bool> {
        let i = *self.index_of.get(&node.id)?;
        let counted = |n: &Node| {
            let mut n = n.clone();
            n.meta = None;
            n.status = None;
            if let Some(spec) = n.spec.as_mut() {
                spec.availability = 0;
            }
            n
        };
        if counted(&self.nodes[i]) != counted(node) {
            return None;
        }
        let was = self.schedulable[i];
        let now = node.takes_new_tasks();
        self.nodes[i] = node.clone();
        if was != now {
            let key = (self.loads[i].tasks, i);
            for lane in &mut self.lanes {
                if lane.members.as_ref().is_none_or(|m| m[i]) {
                    if now {
                        lane.order.insert(key);
                    } else {
                        lane.order.remove(&key);
                    }
                }
            }
            self.schedulable[i] = now;
        }
        Some(now && !was)
    }

    pub(super) fn order_by_load(&mut self) {
        let order = (0..self.nodes.len())
            .filter(|i| self.schedulable[*i])
            .map(|i| (self.loads[i].tasks, i))
            .collect();
        self.lanes = vec![Lane {
            constraints: Arc::clone(&NO_CONSTRAINTS),
            members: None,
            order,
        }];
        self.lane_of.clear();
    }

    /// Parses `group`'s constraints and finds the lane of nodes that
    /// satisfy them, made on first use; the lane of all nodes when there
    /// are none or lanes ran out.
    pub(super) fn lane(&mut self, group: &mut Group) {
        let spec = Arc::clone(&group.spec);
        let key = constraint_key(&spec);
        if key.is_empty() {
            return;
        }
        // Keyed by the constraints as written: the same set written in
        // another order only gets a lane of its own.
        if let Some(lane) = self.lane_of.get(key) {
            group.lane = *lane;
            group.constraints = Arc::clone(&self.lanes[*lane].constraints);
            return;
        }
        // The control API refuses a constraint that does not parse; one
        // that got in anyway constrains nothing.
        let constraints: Arc<[Constraint]> = key
            .iter()
            .filter_map(|c| Constraint::parse(c).ok())
            .collect();
        group.constraints = Arc::clone(&constraints);
        if constraints.is_empty() || self.lanes.len() >= MAX_LANES {
            return;
        }
        let members: Vec<bool> = self
            .nodes
            .iter()
            .map(|n| constraints.iter().all(|c| c.matches(n)))
            .collect();
        let order = self.lanes[0]
            .order
            .iter()
            .filter(|(_, i)| members[*i])
            .copied()
            .collect();
        self.lane_of.insert(key.to_vec(), self.lanes.len());
        self.lanes.push(Lane {
            constraints,
            members: Some(members),
            order,
        });
        group.lane = self.lanes.len() - 1;
    }

    /// Places one task of `group` on node `index`.
    pub(super) fn place(&mut self, task_id: &str, index: usize, group: &Group) {
        let hold = Hold {
            index,
            service_id: Arc::clone(&group.service_id),
            cpu: group.cpu,
            memory: group.memory,
            ports: Arc::clone(&group.ports),
            preferences: Arc::clone(&group.preferences),
        };
        self.set_hold(task_id, Some(hold));
    }

    pub(super) fn placed_on(&self, group: &Group, index: usize) -> usize {
        self.placed
            .get(&group.service_id)
            .and_then(|p| p.get(&index))
            .copied()
            .unwrap_or(0)
    }
}
