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

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use shoal_api::{
    node_spec, node_status, port_config, store_action, Node, StoreAction, Task, TaskSpec,
    TaskState, TaskStatus,
};
use shoal_store::Tables;

use crate::constraint::Constraint;

/// A node where a service failed this many times within
/// `FAILURE_WINDOW_MS` goes after every other node for that service.
const FAILURES_TO_AVOID: usize = 3;
const FAILURE_WINDOW_MS: i64 = 5 * 60_000;
/// A group whose tasks times (nodes it already uses + this) reach the
/// number of nodes is ranked in a heap once, instead of a walk per task.
const WALK_COST: usize = 8;

/// Constraint sets that get nodes ordered by load of their own, at most.
const MAX_LANES: usize = 64;

/// A host port: protocol and published number.
type HostPort = (i32, u32);

/// What a node has left, and how many tasks it runs.
#[derive(Debug, Default, Clone)]
struct Load {
    cpu_left: i64,
    memory_left: i64,
    tasks: usize,
    /// Host ports its tasks publish; most nodes have none.
    ports: Option<HashSet<HostPort>>,
}

/// Why a node cannot take a task, in filter order (the explanation lists
/// reasons in this order).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Reason {
    NotReady,
    NotActive,
    Memory,
    Cpu,
    Constraint(usize),
    Port(HostPort),
    MaxReplicas,
}

fn reservations(spec: &TaskSpec) -> (i64, i64) {
    let r = spec
        .resources
        .as_ref()
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

fn host_ports(task: &Task) -> Vec<HostPort> {
    task.endpoint
        .as_ref()
        .map(|e| {
            e.ports
                .iter()
                .filter(|p| {
                    p.publish_mode == port_config::PublishMode::Host as i32 && p.published_port > 0
                })
                .map(|p| (p.protocol, p.published_port))
                .collect()
        })
        .unwrap_or_default()
}

/// The value a node has for a spread descriptor (`node.labels.zone`); nodes
/// without the label form a group of their own.
fn spread_value<'a>(node: &'a Node, descriptor: &str) -> &'a str {
    let key = descriptor
        .strip_prefix("node.labels.")
        .unwrap_or(descriptor);
    node.spec
        .as_ref()
        .and_then(|s| s.annotations.as_ref())
        .and_then(|a| a.labels.get(key))
        .map_or("", String::as_str)
}

/// Tasks that share a service and a spec version, so ask the same of a node.
struct Group {
    service_id: String,
    cpu: i64,
    memory: i64,
    constraints: Vec<Constraint>,
    preferences: Vec<String>,
    max_per_node: usize,
    ports: Vec<HostPort>,
    /// The lane of nodes to search ([`Cluster::lane`]).
    lane: usize,
    /// Boxed: a task is large (moving 100,000 of them as the list grows
    /// cost more than deciding), and a box moves into its store action as is.
    #[allow(clippy::vec_box)]
    tasks: Vec<Box<Task>>,
}

/// Ready, active nodes ordered by load; `members` says which nodes the lane
/// holds (all when `None`).
struct Lane {
    members: Option<Vec<bool>>,
    order: BTreeSet<(usize, usize)>,
}

impl Group {
    fn new(service_id: String, spec: Arc<TaskSpec>, ports: Vec<HostPort>) -> Group {
        let (cpu, memory) = reservations(&spec);
        let placement = spec.placement.clone().unwrap_or_default();
        Group {
            service_id,
            cpu,
            memory,
            constraints: placement
                .constraints
                .iter()
                .filter_map(|c| Constraint::parse(c).ok())
                .collect(),
            preferences: placement
                .preferences
                .iter()
                .map(|p| p.spread_descriptor.clone())
                .collect(),
            max_per_node: usize::try_from(placement.max_replicas_per_node).unwrap_or(usize::MAX),
            ports,
            lane: 0,
            tasks: Vec::new(),
        }
    }
}

/// The cluster as the scheduler sees it during one pass: every node's load,
/// the nodes that can take tasks ordered by load, and per service where its
/// tasks are and where it failed.
struct Cluster<'a> {
    nodes: Vec<&'a Node>,
    index_of: HashMap<&'a str, usize>,
    loads: Vec<Load>,
    schedulable: Vec<bool>,
    /// Ready, active nodes ordered by (tasks, index): lane 0 holds all of
    /// them, each other lane those that satisfy one set of constraints, so
    /// a walk for a constrained task does not pass every node it cannot use.
    lanes: Vec<Lane>,
    lane_of: HashMap<Vec<String>, usize>,
    /// Per service: node index → its tasks there.
    placed: HashMap<String, HashMap<usize, usize>>,
    /// Per service: node index → recent failures there (after the scan of
    /// tasks, only where there were `FAILURES_TO_AVOID` or more).
    failures: HashMap<String, HashMap<usize, usize>>,
    /// Tasks of a service per (descriptor, value).
    spread: HashMap<String, HashMap<(String, String), usize>>,
}

impl<'a> Cluster<'a> {
    fn new(view: &'a Tables) -> Cluster<'a> {
        let nodes: Vec<&Node> = view.nodes().collect();
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
        let schedulable: Vec<bool> = nodes
            .iter()
            .map(|n| {
                n.status.as_ref().map(|s| s.state) == Some(node_status::State::Ready as i32)
                    && n.spec.as_ref().map_or(0, |s| s.availability)
                        == node_spec::Availability::Active as i32
            })
            .collect();
        Cluster {
            index_of: nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.id.as_str(), i))
                .collect(),
            nodes,
            loads,
            schedulable,
            lanes: Vec::new(),
            lane_of: HashMap::new(),
            placed: HashMap::new(),
            failures: HashMap::new(),
            spread: HashMap::new(),
        }
    }

    /// Counts a task that holds resources on its node.
    fn hold(&mut self, index: usize, task: &Task, spec: &TaskSpec) {
        let (cpu, memory) = reservations(spec);
        let preferences = spec.placement.as_ref().map(|p| &p.preferences);
        self.count(
            index,
            &task.service_id,
            (cpu, memory),
            &host_ports(task),
            preferences
                .into_iter()
                .flatten()
                .map(|p| p.spread_descriptor.as_str()),
        );
    }

    /// Adds one task of `service_id` to node `index`: what it reserves, the
    /// host ports it publishes, its place in the service's spread groups.
    fn count<'d>(
        &mut self,
        index: usize,
        service_id: &str,
        (cpu, memory): (i64, i64),
        ports: &[HostPort],
        preferences: impl Iterator<Item = &'d str>,
    ) {
        let load = &mut self.loads[index];
        load.cpu_left -= cpu;
        load.memory_left -= memory;
        load.tasks += 1;
        if !ports.is_empty() {
            load.ports
                .get_or_insert_default()
                .extend(ports.iter().copied());
        }
        *self
            .placed
            .entry(service_id.to_string())
            .or_default()
            .entry(index)
            .or_default() += 1;
        for d in preferences {
            let value = spread_value(self.nodes[index], d).to_string();
            *self
                .spread
                .entry(service_id.to_string())
                .or_default()
                .entry((d.to_string(), value))
                .or_default() += 1;
        }
    }

    fn order_by_load(&mut self) {
        let order = (0..self.nodes.len())
            .filter(|i| self.schedulable[*i])
            .map(|i| (self.loads[i].tasks, i))
            .collect();
        self.lanes = vec![Lane {
            members: None,
            order,
        }];
    }

    /// The lane of nodes that satisfy `group`'s constraints, made on first
    /// use; the lane of all nodes when there are none or lanes ran out.
    fn lane(&mut self, group: &Group) -> usize {
        if group.constraints.is_empty() {
            return 0;
        }
        let mut key: Vec<String> = group.constraints.iter().map(|c| c.to_string()).collect();
        key.sort();
        if let Some(lane) = self.lane_of.get(&key) {
            return *lane;
        }
        if self.lanes.len() >= MAX_LANES {
            return 0;
        }
        let members: Vec<bool> = self
            .nodes
            .iter()
            .map(|n| group.constraints.iter().all(|c| c.matches(n)))
            .collect();
        let order = self.lanes[0]
            .order
            .iter()
            .filter(|(_, i)| members[*i])
            .copied()
            .collect();
        self.lanes.push(Lane {
            members: Some(members),
            order,
        });
        self.lane_of.insert(key, self.lanes.len() - 1);
        self.lanes.len() - 1
    }

    /// Places one task of `group` on node `index`.
    fn place(&mut self, index: usize, group: &Group) {
        if self.schedulable[index] {
            let tasks = self.loads[index].tasks;
            for lane in &mut self.lanes {
                if lane.members.as_ref().is_none_or(|m| m[index]) {
                    lane.order.remove(&(tasks, index));
                    lane.order.insert((tasks + 1, index));
                }
            }
        }
        self.count(
            index,
            &group.service_id,
            (group.cpu, group.memory),
            &group.ports,
            group.preferences.iter().map(String::as_str),
        );
    }

    fn placed_on(&self, group: &Group, index: usize) -> usize {
        self.placed
            .get(&group.service_id)
            .and_then(|p| p.get(&index))
            .copied()
            .unwrap_or(0)
    }

    fn failing_on(&self, group: &Group, index: usize) -> bool {
        self.failures
            .get(&group.service_id)
            .and_then(|f| f.get(&index))
            .is_some_and(|n| *n >= FAILURES_TO_AVOID)
    }

    /// The first filter node `index` fails for a task of `group`.
    fn reject(&self, group: &Group, index: usize) -> Option<Reason> {
        let node = self.nodes[index];
        let load = &self.loads[index];
        if !self.schedulable[index] {
            return Some(
                if node.status.as_ref().map(|s| s.state) != Some(node_status::State::Ready as i32) {
                    Reason::NotReady
                } else {
                    Reason::NotActive
                },
            );
        }
        if group.memory > load.memory_left {
            return Some(Reason::Memory);
        }
        if group.cpu > load.cpu_left {
            return Some(Reason::Cpu);
        }
        if let Some(i) = group.constraints.iter().position(|c| !c.matches(node)) {
            return Some(Reason::Constraint(i));
        }
        if let Some(ports) = &load.ports {
            if let Some(p) = group.ports.iter().find(|p| ports.contains(p)) {
                return Some(Reason::Port(*p));
            }
        }
        if group.max_per_node > 0 && self.placed_on(group, index) >= group.max_per_node {
            return Some(Reason::MaxReplicas);
        }
        None
    }

    /// How a node ranks for a task of a group without spread preferences,
    /// lowest first.
    fn rank(&self, group: &Group, index: usize) -> (bool, usize, usize, usize) {
        (
            self.failing_on(group, index),
            self.placed_on(group, index),
            self.loads[index].tasks,
            index,
        )
    }

    /// The node for the next task of a group without preferences: any node
    /// that has no task of the service and no recent failure of it ranks
    /// before every node that has, so the first such node in load order that
    /// passes the filters wins; only when there is none do the service's own
    /// nodes compete.
    fn walk(&self, group: &Group) -> Option<usize> {
        let placed = self.placed.get(&group.service_id);
        let failing = self.failures.get(&group.service_id);
        let known = |i: &usize| {
            placed.is_some_and(|p| p.contains_key(i)) || failing.is_some_and(|f| f.contains_key(i))
        };
        let fresh = self.lanes[group.lane]
            .order
            .iter()
            .map(|(_, i)| *i)
            .filter(|i| !known(i))
            .find(|i| self.reject(group, *i).is_none());
        if fresh.is_some() {
            return fresh;
        }
        let mut known_nodes: Vec<usize> = placed
            .into_iter()
            .flat_map(|p| p.keys())
            .chain(failing.into_iter().flat_map(|f| f.keys()))
            .copied()
            .collect();
        known_nodes.sort_unstable();
        known_nodes.dedup();
        known_nodes
            .into_iter()
            .filter(|i| self.reject(group, *i).is_none())
            .min_by_key(|i| self.rank(group, *i))
    }

    /// The node for the next task of a group with spread preferences: the
    /// exhaustive rule, over the nodes that pass the filters.
    fn spread_choice(&self, group: &Group) -> Option<usize> {
        let counts = self.spread.get(&group.service_id);
        self.lanes[group.lane]
            .order
            .iter()
            .map(|(_, i)| *i)
            .filter(|i| self.reject(group, *i).is_none())
            .min_by_key(|i| {
                let groups: Vec<usize> = group
                    .preferences
                    .iter()
                    .map(|d| {
                        let value = spread_value(self.nodes[*i], d);
                        counts
                            .and_then(|c| c.get(&(d.clone(), value.to_string())))
                            .copied()
                            .unwrap_or(0)
                    })
                    .collect();
                (
                    self.failing_on(group, *i),
                    groups,
                    self.placed_on(group, *i),
                    self.loads[*i].tasks,
                    *i,
                )
            })
    }

    /// Why no node can take a task of `group`: each reason with its count.
    fn explain(&self, group: &Group, only: Option<usize>) -> String {
        let mut reasons: BTreeMap<Reason, usize> = BTreeMap::new();
        let indexes: Vec<usize> = match only {
            Some(i) => vec![i],
            None => (0..self.nodes.len()).collect(),
        };
        for i in indexes {
            if let Some(r) = self.reject(group, i) {
                *reasons.entry(r).or_default() += 1;
            }
        }
        if reasons.is_empty() {
            return "no suitable node (no nodes)".to_string();
        }
        let parts: Vec<String> = reasons
            .iter()
            .map(|(r, n)| {
                format!(
                    "{} on {n} node{}",
                    ReasonText(r, group),
                    if *n == 1 { "" } else { "s" }
                )
            })
            .collect();
        format!("no suitable node ({})", parts.join("; "))
    }
}

struct ReasonText<'a>(&'a Reason, &'a Group);

impl fmt::Display for ReasonText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Reason::NotReady => write!(f, "node not ready"),
            Reason::NotActive => write!(f, "node not active"),
            Reason::Memory => write!(f, "insufficient memory"),
            Reason::Cpu => write!(f, "insufficient CPU"),
            Reason::Constraint(i) => match self.1.constraints.get(*i) {
                Some(c) => write!(f, "constraint {c} not satisfied"),
                None => write!(f, "constraint not satisfied"),
            },
            Reason::Port((protocol, port)) => {
                let protocol = port_config::Protocol::try_from(*protocol)
                    .unwrap_or(port_config::Protocol::Tcp)
                    .as_str_name()
                    .to_ascii_lowercase();
                write!(f, "host port {port}/{protocol} in use")
            }
            Reason::MaxReplicas => {
                write!(f, "max replicas per node ({}) reached", self.1.max_per_node)
            }
        }
    }
}

/// How groups without spread preferences find their nodes. Every way gives
/// the same placements; `Auto` picks the cheaper per group, the others exist
/// so tests can hold each to the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Search {
    Auto,
    Walk,
    Heap,
}

/// Assignments for every pending task that fits somewhere, and explanations
/// for the ones that do not (only when the explanation changed).
pub fn decide(view: &Tables, now_ms: i64) -> Vec<StoreAction> {
    decide_with(view, now_ms, Search::Auto)
}

/// [`decide`], with the search chosen.
pub fn decide_with(view: &Tables, now_ms: i64, search: Search) -> Vec<StoreAction> {
    let mut cluster = Cluster::new(view);
    // Pending tasks by (service, spec version), and those whose node is
    // chosen already (global services) each on its own.
    let mut groups: Vec<Group> = Vec::new();
    let mut group_of: HashMap<(String, u64), usize> = HashMap::new();
    let mut fixed: Vec<Group> = Vec::new();
    for (task, spec) in view.tasks_sharing_specs() {
        let state = task.observed();
        let stamp = task.status.as_ref().map_or(0, |s| s.timestamp_ms);
        if matches!(state, TaskState::Failed | TaskState::Rejected)
            && stamp >= now_ms - FAILURE_WINDOW_MS
        {
            if let Some(i) = cluster.index_of.get(task.node_id.as_str()) {
                *cluster
                    .failures
                    .entry(task.service_id.clone())
                    .or_default()
                    .entry(*i)
                    .or_default() += 1;
            }
        }
        if holds_resources(&task) {
            if let Some(i) = cluster.index_of.get(task.node_id.as_str()).copied() {
                cluster.hold(i, &task, spec);
            }
        } else if state == TaskState::Pending && task.desired_state <= TaskState::Running as i32 {
            if !task.node_id.is_empty() {
                let mut g =
                    Group::new(task.service_id.clone(), Arc::clone(spec), host_ports(&task));
                g.tasks.push(Box::new(task));
                fixed.push(g);
                continue;
            }
            let key = (task.service_id.clone(), task.spec_version);
            let index = *group_of.entry(key).or_insert_with(|| {
                groups.push(Group::new(
                    task.service_id.clone(),
                    Arc::clone(spec),
                    host_ports(&task),
                ));
                groups.len() - 1
            });
            groups[index].tasks.push(Box::new(task));
        }
    }
    // Only nodes the service keeps failing on rank differently.
    for f in cluster.failures.values_mut() {
        f.retain(|_, n| *n >= FAILURES_TO_AVOID);
    }
    cluster.failures.retain(|_, f| !f.is_empty());
    cluster.order_by_load();
    // Older tasks first, so a burst is placed in creation order; a group
    // goes in the order of its oldest task.
    let age = |t: &Task| (t.meta.as_ref().map_or(0, |m| m.created_at_ms), t.slot);
    for g in groups.iter_mut().chain(fixed.iter_mut()) {
        g.tasks.sort_by_key(|t| age(t));
    }
    let mut order: Vec<Group> = groups.into_iter().chain(fixed).collect();
    order.sort_by_key(|g| g.tasks.first().map(|t| age(t)));

    // Reserved up front: an action holds a whole task, and growing the list
    // by doubling copies every one of them again.
    let mut actions = Vec::with_capacity(order.iter().map(|g| g.tasks.len()).sum());
    for mut group in order {
        group.lane = cluster.lane(&group);
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
                    cluster.place(index, &group);
                    if let Some(h) = heap.as_mut() {
                        if cluster.reject(&group, index).is_none() {
                            h.push(Reverse(cluster.rank(&group, index)));
                        }
                    }
                    // No spec: the store keeps the task's own.
                    task.node_id = cluster.nodes[index].id.clone();
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
