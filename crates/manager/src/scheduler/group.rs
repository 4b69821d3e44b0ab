//! What the tasks of one batch share (their group), and what one placed
//! task counts on its node.

use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock};

use shoal_api::{port_config, Node, Task, TaskSpec, TaskState};

use crate::constraint::Constraint;

/// The scheduler's maps hash with Fx: SipHash was a sixth of a placement's
/// cost, and every key here (ids the manager made, node indexes, host
/// ports) is counted, never chosen to collide.
pub(super) type HashMap<K, V> = std::collections::HashMap<K, V, rustc_hash::FxBuildHasher>;

/// A host port: protocol and published number.
pub(super) type HostPort = (i32, u32);

/// A service id, shared by everything the cluster counts per service (a
/// string per placement was a third of a placement's cost).
pub(super) type ServiceId = Arc<str>;

/// One empty list of each kind, shared: most tasks publish no host port,
/// have no spread preference and no constraint, and a group is made per
/// service (an empty `Arc` slice is still an allocation).
pub(super) static NO_PORTS: LazyLock<Arc<[HostPort]>> = LazyLock::new(|| Arc::from([]));
pub(super) static NO_PREFERENCES: LazyLock<Arc<[String]>> = LazyLock::new(|| Arc::from([]));
pub(super) static NO_CONSTRAINTS: LazyLock<Arc<[Constraint]>> = LazyLock::new(|| Arc::from([]));

pub(super) fn preferences_of(spec: &TaskSpec) -> Arc<[String]> {
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
pub(super) struct Load {
    pub(super) cpu_left: i64,
    pub(super) memory_left: i64,
    pub(super) tasks: usize,
    /// Host ports its tasks publish, with how many publish each (two
    /// should never, but the count keeps a removal exact); most nodes have
    /// none.
    pub(super) ports: Option<HashMap<HostPort, usize>>,
}

pub(super) fn reservations(spec: &TaskSpec) -> (i64, i64) {
    let r = spec
        .resources
        .as_ref()
        .and_then(|r| r.reservations)
        .unwrap_or_default();
    (r.nano_cpus, r.memory_bytes)
}

pub(super) fn holds_resources(task: &Task) -> bool {
    let state = task.status.as_ref().map_or(0, |s| s.state);
    !task.node_id.is_empty()
        && state >= TaskState::Assigned as i32
        && !TaskState::try_from(state).is_ok_and(TaskState::is_terminal)
}

/// The host ports a task holds on its node, or will once placed: those
/// its service publishes in host mode, its named ports as given, and the
/// static named ports its spec asks for and it was not given yet (a task
/// is placed before the allocator gives them).
pub(super) fn host_ports(task: &Task, spec: &TaskSpec) -> Arc<[HostPort]> {
    let published = task.endpoint.iter().flat_map(|e| &e.ports).filter(|p| {
        p.publish_mode == port_config::PublishMode::Host as i32 && p.published_port > 0
    });
    // A port given as 0 is none: the agent rejects that task.
    let named = task.named_ports();
    let asked = spec
        .ports
        .iter()
        .filter(|p| p.static_port != 0 && !named.iter().any(|n| n.name == p.name))
        .map(|p| (port_config::Protocol::Tcp as i32, p.static_port));
    if published.clone().next().is_none() && named.is_empty() && asked.clone().next().is_none() {
        return Arc::clone(&NO_PORTS);
    }
    published
        .chain(named.iter().filter(|p| p.published_port > 0))
        .map(|p| (p.protocol, p.published_port))
        .chain(asked)
        .collect()
}

/// The value a node has for a spread descriptor (`node.labels.zone`); nodes
/// without the label form a group of their own.
pub(super) fn spread_value<'a>(node: &'a Node, descriptor: &str) -> &'a str {
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
pub(super) fn constraint_key(spec: &TaskSpec) -> &[String] {
    spec.placement
        .as_ref()
        .map_or(&[], |p| p.constraints.as_slice())
}

/// Tasks that share a service and a spec version, so ask the same of a node.
pub(super) struct Group {
    pub(super) service_id: ServiceId,
    pub(super) spec_version: u64,
    pub(super) spec: Arc<TaskSpec>,
    pub(super) cpu: i64,
    pub(super) memory: i64,
    /// Parsed with its lane ([`NodeSet::lane`]): groups that share a set of
    /// constraints share one parse of it.
    pub(super) constraints: Arc<[Constraint]>,
    pub(super) preferences: Arc<[String]>,
    pub(super) max_per_node: usize,
    pub(super) ports: Arc<[HostPort]>,
    /// Its tasks run an image: only a node with a Docker Engine takes them.
    pub(super) needs_engine: bool,
    /// The lane of nodes to search ([`NodeSet::lane`]).
    pub(super) lane: usize,
    /// Boxed: a task is large (moving 100,000 of them as the list grows
    /// cost more than deciding), and a box moves into its store action as is.
    #[allow(clippy::vec_box)]
    pub(super) tasks: Vec<Box<Task>>,
}

/// Ready, active nodes ordered by load; `members` says which nodes the lane
/// holds (all when `None`), those that satisfy `constraints`.
pub(super) struct Lane {
    pub(super) constraints: Arc<[Constraint]>,
    pub(super) members: Option<Vec<bool>>,
    pub(super) order: BTreeSet<(usize, usize)>,
}

impl Group {
    /// The group of `task`, whose service id is `service_id`.
    pub(super) fn new(service_id: ServiceId, task: &Task, spec: Arc<TaskSpec>) -> Group {
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
            ports: host_ports(task, &spec),
            needs_engine: spec.runtime.as_ref().is_some_and(|r| !r.image.is_empty()),
            lane: 0,
            tasks: Vec::new(),
            spec,
        }
    }
}

/// What a task that holds resources on a node counts there, kept so that
/// its change or removal can be taken back exactly.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Hold {
    pub(super) index: usize,
    pub(super) service_id: ServiceId,
    pub(super) cpu: i64,
    pub(super) memory: i64,
    pub(super) ports: Arc<[HostPort]>,
    pub(super) preferences: Arc<[String]>,
}

impl Hold {
    pub(super) fn of(index: usize, task: &Task, spec: &TaskSpec) -> Hold {
        let (cpu, memory) = reservations(spec);
        Hold {
            index,
            service_id: task.service_id.as_str().into(),
            cpu,
            memory,
            ports: host_ports(task, spec),
            preferences: preferences_of(spec),
        }
    }
}

/// A recent failure of a service on a node.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    pub(super) service_id: ServiceId,
    pub(super) index: usize,
    pub(super) at_ms: i64,
}
