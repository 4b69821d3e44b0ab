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
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt;
use std::sync::{Arc, LazyLock};

use shoal_api::{
    node_spec, node_status, object, port_config, store_action, watch_event, Node, StoreAction,
    Task, TaskSpec, TaskState, TaskStatus,
};
use shoal_store::{Event, Tables};

use crate::constraint::Constraint;
use crate::reconciler::{Pass, Reconciler};

/// A node where a service failed this many times within
/// `FAILURE_WINDOW_MS` goes after every other node for that service.
const FAILURES_TO_AVOID: usize = 3;
const FAILURE_WINDOW_MS: i64 = 5 * 60_000;
/// A group whose tasks times (nodes it already uses + this) reach the
/// number of nodes is ranked in a heap once, instead of a walk per task.
const WALK_COST: usize = 8;

/// Constraint sets that get nodes ordered by load of their own, at most.
const MAX_LANES: usize = 64;

/// The scheduler's maps hash with Fx: SipHash was a sixth of a placement's
/// cost, and every key here (ids the manager made, node indexes, host
/// ports) is counted, never chosen to collide.
type HashMap<K, V> = std::collections::HashMap<K, V, rustc_hash::FxBuildHasher>;

/// A host port: protocol and published number.
type HostPort = (i32, u32);

/// A service id, shared by everything the cluster counts per service (a
/// string per placement was a third of a placement's cost).
type ServiceId = Arc<str>;

/// One empty list of each kind, shared: most tasks publish no host port,
/// have no spread preference and no constraint, and a group is made per
/// service (an empty `Arc` slice is still an allocation).
static NO_PORTS: LazyLock<Arc<[HostPort]>> = LazyLock::new(|| Arc::from([]));
static NO_PREFERENCES: LazyLock<Arc<[String]>> = LazyLock::new(|| Arc::from([]));
static NO_CONSTRAINTS: LazyLock<Arc<[Constraint]>> = LazyLock::new(|| Arc::from([]));

fn preferences_of(spec: &TaskSpec) -> Arc<[String]> {
    match spec.placement.as_ref() {
        Some(p) if !p.preferences.is_empty() => p
            .preferences
            .iter()
            .map(|p| p.spread_descriptor.clone())
            .collect(),
        _ => Arc::clone(&NO_PREFERENCES),
    }
}

/// What a node has left, and how many tasks it runs.
#[derive(Debug, Default, Clone)]
struct Load {
    cpu_left: i64,
    memory_left: i64,
    tasks: usize,
    /// Host ports its tasks publish, with how many publish each (two
    /// should never, but the count keeps a removal exact); most nodes have
    /// none.
    ports: Option<HashMap<HostPort, usize>>,
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

fn host_ports(task: &Task) -> Arc<[HostPort]> {
    let published = task.endpoint.iter().flat_map(|e| &e.ports).filter(|p| {
        p.publish_mode == port_config::PublishMode::Host as i32 && p.published_port > 0
    });
    if published.clone().next().is_none() {
        return Arc::clone(&NO_PORTS);
    }
    published.map(|p| (p.protocol, p.published_port)).collect()
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

/// The constraints as written in a spec: the key of their lane.
fn constraint_key(spec: &TaskSpec) -> &[String] {
    spec.placement
        .as_ref()
        .map_or(&[], |p| p.constraints.as_slice())
}

/// Tasks that share a service and a spec version, so ask the same of a node.
struct Group {
    service_id: ServiceId,
    spec_version: u64,
    spec: Arc<TaskSpec>,
    cpu: i64,
    memory: i64,
    /// Parsed with its lane ([`Cluster::lane`]): groups that share a set of
    /// constraints share one parse of it.
    constraints: Arc<[Constraint]>,
    preferences: Arc<[String]>,
    max_per_node: usize,
    ports: Arc<[HostPort]>,
    /// The lane of nodes to search ([`Cluster::lane`]).
    lane: usize,
    /// Boxed: a task is large (moving 100,000 of them as the list grows
    /// cost more than deciding), and a box moves into its store action as is.
    #[allow(clippy::vec_box)]
    tasks: Vec<Box<Task>>,
}

/// Ready, active nodes ordered by load; `members` says which nodes the lane
/// holds (all when `None`), those that satisfy `constraints`.
struct Lane {
    constraints: Arc<[Constraint]>,
    members: Option<Vec<bool>>,
    order: BTreeSet<(usize, usize)>,
}

impl Group {
    /// The group of `task`, whose service id is `service_id`.
    fn new(service_id: ServiceId, task: &Task, spec: Arc<TaskSpec>) -> Group {
        let (cpu, memory) = reservations(&spec);
        let placement = spec.placement.as_ref();
        Group {
            service_id,
            spec_version: task.spec_version,
            cpu,
            memory,
            constraints: Arc::clone(&NO_CONSTRAINTS),
            preferences: preferences_of(&spec),
            max_per_node: placement.map_or(usize::MAX, |p| {
                usize::try_from(p.max_replicas_per_node).unwrap_or(usize::MAX)
            }),
            ports: host_ports(task),
            lane: 0,
            tasks: Vec::new(),
            spec,
        }
    }
}

/// What a task that holds resources on a node counts there, kept so that
/// its change or removal can be taken back exactly.
#[derive(Debug, Clone, PartialEq)]
struct Hold {
    index: usize,
    service_id: ServiceId,
    cpu: i64,
    memory: i64,
    ports: Arc<[HostPort]>,
    preferences: Arc<[String]>,
}

impl Hold {
    fn of(index: usize, task: &Task, spec: &TaskSpec) -> Hold {
        let (cpu, memory) = reservations(spec);
        Hold {
            index,
            service_id: task.service_id.as_str().into(),
            cpu,
            memory,
            ports: host_ports(task),
            preferences: preferences_of(spec),
        }
    }
}

/// A recent failure of a service on a node.
#[derive(Debug, Clone)]
struct Failure {
    service_id: ServiceId,
    index: usize,
    at_ms: i64,
}

/// The cluster as the scheduler sees it: every node's load, the nodes that
/// can take tasks ordered by load, and per service where its tasks are and
/// where it failed. Kept between passes and changed task by task; made
/// anew from the store when nodes change.
struct Cluster {
    nodes: Vec<Node>,
    index_of: HashMap<String, usize>,
    loads: Vec<Load>,
    schedulable: Vec<bool>,
    /// Ready, active nodes ordered by (tasks, index): lane 0 holds all of
    /// them, each other lane those that satisfy one set of constraints, so
    /// a walk for a constrained task does not pass every node it cannot use.
    lanes: Vec<Lane>,
    lane_of: HashMap<Vec<String>, usize>,
    /// Per service: node index → its tasks there.
    placed: HashMap<ServiceId, HashMap<usize, usize>>,
    /// Per service: node index → recent failures there.
    failure_counts: HashMap<ServiceId, HashMap<usize, usize>>,
    /// The same, only where there were `FAILURES_TO_AVOID` or more.
    failures: HashMap<ServiceId, HashMap<usize, usize>>,
    /// Tasks of a service per (descriptor, value).
    spread: HashMap<ServiceId, HashMap<(String, String), usize>>,
    /// What each task that holds resources counts, by task id.
    held: HashMap<String, Hold>,
    /// Recent failures by task id, and the same ordered by time so they
    /// can be let go when they leave the window.
    failed: HashMap<String, Failure>,
    failed_by_time: BTreeSet<(i64, String)>,
}

impl Cluster {
    fn new(view: &Tables) -> Cluster {
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
    fn set_hold(&mut self, task_id: &str, hold: Option<Hold>) -> bool {
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
    fn count(&mut self, hold: &Hold, add: bool) {
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
    fn set_failure(&mut self, task_id: &str, failure: Option<Failure>) {
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
    fn expire_failures(&mut self, now_ms: i64) {
        while let Some((at, id)) = self.failed_by_time.first().cloned() {
            if at >= now_ms - FAILURE_WINDOW_MS {
                break;
            }
            self.set_failure(&id, None);
        }
    }

    /// Brings what one task counts up to date with the store; returns
    /// whether it freed anything on a node.
    fn refresh(&mut self, task_id: &str, task: Option<(&Task, &TaskSpec)>, now_ms: i64) -> bool {
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
    fn update_node(&mut self, node: &Node) -> Option<bool> {
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
        let now = node.status.as_ref().map(|s| s.state) == Some(node_status::State::Ready as i32)
            && node.spec.as_ref().map_or(0, |s| s.availability)
                == node_spec::Availability::Active as i32;
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

    fn order_by_load(&mut self) {
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
    fn lane(&mut self, group: &mut Group) {
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
    fn place(&mut self, task_id: &str, index: usize, group: &Group) {
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
        let node = &self.nodes[index];
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
            if let Some(p) = group.ports.iter().find(|p| ports.contains_key(p)) {
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
                        let value = spread_value(&self.nodes[*i], d);
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
    cluster: Option<Cluster>,
    /// Tasks whose change may matter, since the last pass.
    changed: BTreeSet<String>,
    /// Pending tasks that found no node, tried again when room frees.
    waiting: BTreeSet<String>,
    /// A node opened to new tasks since the last pass.
    room: bool,
}

impl Scheduler {
    pub fn new(search: Search) -> Scheduler {
        Scheduler {
            search,
            cluster: None,
            changed: BTreeSet::new(),
            waiting: BTreeSet::new(),
            room: false,
        }
    }

    /// What one pass decides: from every task when `full`, else from the
    /// tasks noted since the last pass.
    pub fn schedule(&mut self, view: &Tables, now_ms: i64, full: bool) -> Vec<StoreAction> {
        let changed = std::mem::take(&mut self.changed);
        let room = std::mem::take(&mut self.room);
        let (actions, unplaced) = match self.cluster.take() {
            Some(mut cluster) if !full => {
                let mut freed = false;
                // Boxed as they are read (a task is large, and the list
                // would move each again as it grows, then into its group).
                let mut pending = Vec::with_capacity(changed.len());
                for id in &changed {
                    let task = view.task_sharing_spec(id);
                    let current = task.as_ref().map(|(t, spec)| (t, spec.as_ref()));
                    freed |= cluster.refresh(id, current, now_ms);
                    self.waiting.remove(id);
                    if let Some((t, spec)) = task.filter(|(t, _)| is_pending(t)) {
                        pending.push((Box::new(t), spec));
                    }
                }
                cluster.expire_failures(now_ms);
                if freed || room {
                    let waiting = std::mem::take(&mut self.waiting);
                    pending.extend(
                        waiting
                            .iter()
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
                let mut cluster = Cluster::new(view);
                self.waiting.clear();
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
        self.waiting.extend(unplaced);
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
                    let same_hold = hold.is_some_and(|h| cluster.nodes[h.index].id == t.node_id);
                    let held = hold.is_some();
                    let holds = holds_resources(t);
                    let quiet = !is_pending(t)
                        && !is_failure(t)
                        && !self.waiting.contains(&t.id)
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
/// explanations for the others (only when it changed), and the ids of
/// those that did not fit.
fn place_pending<'s>(
    cluster: &mut Cluster,
    pending: impl Iterator<Item = (Box<Task>, &'s Arc<TaskSpec>)>,
    now_ms: i64,
    search: Search,
) -> (Vec<StoreAction>, Vec<String>) {
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
    let mut unplaced = Vec::new();
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
                    unplaced.push(task.id.clone());
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
    (actions, unplaced)
}
