//! The allocator: network attachments, virtual IPs and ports (DESIGN.md
//! §3, §8). Network addresses and ingress ports are not allocated yet (a
//! later part of the networking issue). Today it gives each new task the
//! ports its service publishes in host mode (the scheduler keeps two tasks
//! that publish one host port off the same node) and moves it NEW →
//! PENDING; and once a task is placed, it gives the task the named ports
//! its spec asks for (`--port NAME[:STATIC]`) on that node: a static one as
//! asked, a dynamic one free on the node from the cluster's range. The
//! dispatcher sends a task to its node only once it has them all.
//!
//! Owns: task `networks`, service and task `endpoint`; the NEW → PENDING move.

use std::collections::{BTreeSet, HashMap, HashSet};

use shoal_api::{
    object, port_config, store_action, Endpoint, PortConfig, PortRange, StoreAction, Task,
    TaskSpec, TaskState, TaskStatus,
};
use shoal_store::{Event, Tables};

use crate::reconciler::{Pass, Reconciler};

/// One action per task that is NEW and still wanted, and one per placed
/// task that still lacks a named port.
pub fn decide(view: &Tables, now_ms: i64) -> Vec<StoreAction> {
    Allocator::default().allocate(view, now_ms, true)
}

fn wanted_new(t: &Task) -> bool {
    t.status.as_ref().map_or(0, |s| s.state) == TaskState::New as i32
        && t.desired_state <= TaskState::Running as i32
}

/// Placed, not started, still wanted: what gets its named ports. (Whether
/// it asks for any is in its spec, which events may not carry.)
fn placed(t: &Task) -> bool {
    !t.node_id.is_empty()
        && t.observed() == TaskState::Assigned
        && t.desired_state <= TaskState::Running as i32
}

/// The allocator between passes: the tasks that were NEW, and those that
/// were placed, when last changed.
#[derive(Debug, Default)]
pub struct Allocator {
    new: BTreeSet<String>,
    placed: BTreeSet<String>,
}

impl Allocator {
    fn allocate(&mut self, view: &Tables, now_ms: i64, full: bool) -> Vec<StoreAction> {
        let prepare = |mut t: Task| {
            // No spec: the store keeps the task's own.
            t.endpoint = host_ports(view, &t);
            pending(t, now_ms)
        };
        let new = std::mem::take(&mut self.new);
        let placed_ids = std::mem::take(&mut self.placed);
        let (mut actions, waiting): (Vec<StoreAction>, Vec<(Task, &TaskSpec)>) = if full {
            let mut actions = Vec::new();
            let mut waiting = Vec::new();
            for (t, spec) in view.tasks_sharing_specs() {
                if wanted_new(&t) {
                    actions.push(prepare(t));
                } else if placed(&t) && !t.has_ports_of(spec) {
                    waiting.push((t, &**spec));
                }
            }
            (actions, waiting)
        } else {
            let actions = new
                .iter()
                .filter_map(|id| view.task_without_spec(id))
                .filter(wanted_new)
                .map(prepare)
                .collect();
            let waiting = placed_ids
                .iter()
                .filter_map(|id| view.task_sharing_spec(id))
                .filter(|(t, spec)| placed(t) && !t.has_ports_of(spec))
                .map(|(t, spec)| (t, &**spec))
                .collect();
            (actions, waiting)
        };
        actions.extend(NodePorts::give(view, waiting));
        actions
    }
}

/// The ports in use on each node a pass gives ports on.
struct NodePorts<'a> {
    view: &'a Tables,
    range: (u32, u32),
    used: HashMap<String, HashSet<u32>>,
}

impl<'a> NodePorts<'a> {
    /// Gives each placed task in `waiting` the named ports it lacks: one
    /// update of its endpoint each.
    fn give(view: &'a Tables, waiting: Vec<(Task, &TaskSpec)>) -> Vec<StoreAction> {
        let range = PortRange::or_default(
            view.cluster()
                .and_then(|c| c.spec.as_ref())
                .and_then(|s| s.orchestration.as_ref())
                .and_then(|o| o.dynamic_ports.as_ref()),
        );
        let mut ports = NodePorts {
            view,
            range,
            used: HashMap::new(),
        };
        waiting
            .into_iter()
            .map(|(task, spec)| ports.give_one(task, spec))
            .collect()
    }

    fn used_on(&mut self, node_id: &str) -> &mut HashSet<u32> {
        let view = self.view;
        self.used.entry(node_id.to_string()).or_insert_with(|| {
            view.tasks_of_node(node_id)
                .filter(|t| !t.observed().is_terminal())
                .flat_map(|t| ports_held(&t))
                .collect()
        })
    }

    fn give_one(&mut self, mut task: Task, spec: &TaskSpec) -> StoreAction {
        let host_ip = self
            .view
            .node(&task.node_id)
            .and_then(|n| n.status.as_ref())
            .map(|s| host_ip_of(&s.addr))
            .unwrap_or_default();
        let (first, last) = self.range;
        let node_id = task.node_id.clone();
        let task_id = task.id.clone();
        let mut given = task.named_ports().to_vec();
        for want in &spec.ports {
            if given.iter().any(|g| g.name == want.name) {
                continue;
            }
            let used = self.used_on(&node_id);
            let port = if want.static_port != 0 {
                // Taken on the node only if the scheduler's view was
                // behind: the agent then fails the task, saying so, and a
                // new one is placed.
                want.static_port
            } else {
                match free_port(&task_id, &want.name, first, last, used) {
                    Some(p) => p,
                    None => {
                        // Given as 0: the agent rejects the task, saying no
                        // port was free, and its replacement is placed again.
                        tracing::warn!(
                            task = %task_id,
                            node = %node_id,
                            "no port of {first}-{last} is free on the node"
                        );
                        0
                    }
                }
            };
            if port != 0 {
                used.insert(port);
            }
            given.push(PortConfig::named(&want.name, port, &host_ip));
        }
        task.endpoint
            .get_or_insert_with(Endpoint::default)
            .named_ports = given;
        // No spec: the store keeps the task's own.
        task.spec = None;
        StoreAction {
            kind: store_action::Kind::Update as i32,
            target: Some(task.into()),
        }
    }
}

/// Every port a task holds, or is about to hold, on its node: the host
/// ports it publishes and its named ports, given or asked for statically.
fn ports_held(task: &Task) -> Vec<u32> {
    let published = task
        .endpoint
        .iter()
        .flat_map(|e| &e.ports)
        .filter(|p| p.publish_mode == port_config::PublishMode::Host as i32)
        .map(|p| p.published_port);
    let named = task.named_ports().iter().map(|p| p.published_port);
    let asked = task
        .spec
        .iter()
        .flat_map(|s| &s.ports)
        .map(|p| p.static_port);
    published
        .chain(named)
        .chain(asked)
        .filter(|&p| p != 0)
        .collect()
}

/// A free port of `first..=last` for one named port of one task: the
/// search starts at a place drawn from both names, so tasks placed
/// together do not race for the same low ports, and a decision is the
/// same on every replay.
fn free_port(task_id: &str, name: &str, first: u32, last: u32, used: &HashSet<u32>) -> Option<u32> {
    if first == 0 || last < first {
        return None;
    }
    let size = u64::from(last - first) + 1;
    // FNV-1a: stable across builds and platforms, unlike the std hasher.
    let start = task_id
        .bytes()
        .chain([0])
        .chain(name.bytes())
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
        % size;
    (0..size)
        .map(|i| first + ((start + i) % size) as u32)
        .find(|p| !used.contains(p))
}

/// The IP of a node's recorded address (`10.0.0.2` or `10.0.0.2:4242`);
/// empty when it has none.
fn host_ip_of(addr: &str) -> String {
    if let Ok(ip) = addr.parse::<std::net::IpAddr>() {
        return ip.to_string();
    }
    addr.parse::<std::net::SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_default()
}

impl Reconciler for Allocator {
    fn observe(&mut self, _: &Tables, event: &Event) {
        if let Event::Change { object, .. } = event {
            if let Some(object::Kind::Task(t)) = &object.kind {
                if wanted_new(t) {
                    self.new.insert(t.id.clone());
                } else if placed(t) {
                    self.placed.insert(t.id.clone());
                }
            }
        }
    }

    fn decide(&mut self, view: &Tables, now_ms: i64, full: bool) -> Pass {
        Pass::chunked(self.allocate(view, now_ms, full))
    }
}

/// The ports the task's service publishes on the node itself.
fn host_ports(view: &Tables, task: &Task) -> Option<Endpoint> {
    let spec = view
        .service(&task.service_id)?
        .spec
        .as_ref()?
        .endpoint
        .clone()?;
    let ports: Vec<_> = spec
        .ports
        .iter()
        .filter(|p| p.publish_mode == port_config::PublishMode::Host as i32)
        .cloned()
        .collect();
    (!ports.is_empty()).then(|| Endpoint {
        spec: Some(spec),
        ports,
        ..Default::default()
    })
}

fn pending(mut task: Task, now_ms: i64) -> StoreAction {
    let moved = task.advance_status(TaskStatus {
        timestamp_ms: now_ms,
        state: TaskState::Pending as i32,
        message: "pending task scheduling".into(),
        ..Default::default()
    });
    debug_assert!(moved, "only NEW tasks are allocated");
    StoreAction {
        kind: store_action::Kind::Update as i32,
        target: Some(task.into()),
    }
}
