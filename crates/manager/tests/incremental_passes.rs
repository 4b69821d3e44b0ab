//! A reconciler that looks again only at what changed decides what one
//! that reads every object decides.
//!
//! Random histories of services, nodes and agents' reports are applied to a
//! store; after each step, the orchestrator, allocator, scheduler and reaper
//! that were told the changes (as `reconciler::run` tells them: the watch
//! drained under the view they decide from) are compared with fresh ones
//! that read everything, and the incremental ones' actions are applied.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use proptest::prelude::*;
use prost::Message;
use shoal_api::{
    node_spec, node_status, object, restart_policy, store_action, update_config, Annotations,
    Batch, Node, NodeDescription, NodeSpec, NodeStatus, Placement, ResourceRequirements, Resources,
    RestartPolicy, Runtime, Service, ServiceMode, ServiceSpec, StoreAction, Task, TaskSpec,
    TaskState, TaskStatus, Transaction, UpdateConfig,
};
use shoal_manager::allocator::Allocator;
use shoal_manager::orchestrator::task_reaper::Reaper;
use shoal_manager::orchestrator::Orchestrator;
use shoal_manager::reconciler::Reconciler;
use shoal_manager::scheduler::{Scheduler, Search};
use shoal_store::{Store, WatchStream};

const GIB: i64 = 1 << 30;

#[derive(Debug, Clone)]
enum Op {
    Service {
        which: u8,
        replicas: u8,
        reserve: bool,
        zone: Option<u8>,
        global: bool,
        delay_ms: u64,
        /// Update parallelism (0: all at once) and order.
        parallelism: u8,
        start_first: bool,
        /// A replicated job, two at a time (when not global).
        job: bool,
        /// Failure action (pause, continue, rollback) and whether half the
        /// tasks may fail.
        failure_action: u8,
        tolerant: bool,
    },
    RemoveService(u8),
    Node {
        which: u8,
        ready: bool,
        availability: u8,
        zone: u8,
        memory_gib: i64,
    },
    RemoveNode(u8),
    /// An agent reports on one of the tasks it could report on.
    Agent {
        pick: u16,
        outcome: u8,
    },
    Tick(i64),
    Pass,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => ((0u8..3, 0u8..6, any::<bool>(), proptest::option::of(0u8..2), prop::bool::weighted(0.2), prop_oneof![Just(0u64), Just(1_000), Just(5_000)]), (0u8..3, any::<bool>(), prop::bool::weighted(0.2), 0u8..3, any::<bool>()))
            .prop_map(|((which, replicas, reserve, zone, global, delay_ms), (parallelism, start_first, job, failure_action, tolerant))| Op::Service { which, replicas, reserve, zone, global, delay_ms, parallelism, start_first, job, failure_action, tolerant }),
        1 => (0u8..3).prop_map(Op::RemoveService),
        2 => (0u8..5, prop::bool::weighted(0.8), 0u8..3, 0u8..2, 1i64..4)
            .prop_map(|(which, ready, availability, zone, memory_gib)| Op::Node { which, ready, availability, zone, memory_gib }),
        1 => (0u8..5).prop_map(Op::RemoveNode),
        6 => (any::<u16>(), 0u8..6).prop_map(|(pick, outcome)| Op::Agent { pick, outcome }),
        2 => prop_oneof![0i64..3_000, Just(6 * 60_000)].prop_map(Op::Tick),
        6 => Just(Op::Pass),
    ]
}

/// Services 1 and 2 ask for named ports, given once their tasks are
/// placed: svc1 a dynamic one, svc2 a static one (so at most one of its
/// tasks per node) and a dynamic one.
fn named_ports(which: u8) -> Vec<shoal_api::NamedPort> {
    let port = |name: &str, static_port| shoal_api::NamedPort {
        name: name.into(),
        static_port,
    };
    match which {
        1 => vec![port("http", 0)],
        2 => vec![port("admin", 9000), port("http", 0)],
        _ => Vec::new(),
    }
}

struct Incremental<R> {
    reconciler: R,
    changes: WatchStream,
}

struct World {
    store: Store,
    version: u64,
    now_ms: i64,
    ids: Arc<AtomicU64>,
    orchestrator: Incremental<Orchestrator<MakeId>>,
    allocator: Incremental<Allocator>,
    scheduler: Incremental<Scheduler>,
    reaper: Incremental<Reaper>,
}

type MakeId = Box<dyn FnMut() -> String + Send>;

fn id_maker(ids: &Arc<AtomicU64>) -> MakeId {
    let ids = Arc::clone(ids);
    Box::new(move || format!("task{:04}", ids.fetch_add(1, Ordering::SeqCst)))
}

fn action(kind: store_action::Kind, object: impl Into<shoal_api::Object>) -> StoreAction {
    StoreAction {
        kind: kind as i32,
        target: Some(object.into()),
    }
}

/// Actions in a comparable form, sorted: what each does to which task.
fn comparable(actions: &[StoreAction]) -> Vec<String> {
    let mut out: Vec<String> = actions
        .iter()
        .map(|a| match a.target.as_ref().and_then(|t| t.kind.as_ref()) {
            Some(object::Kind::Task(t)) => format!(
                "{:?} {} of {} slot {} on {:?}: desired {:?}, {:?} ({} spec bytes)",
                store_action::Kind::try_from(a.kind),
                // A new task's id is made up, in whatever order its pass
                // visits places.
                if a.kind == store_action::Kind::Create as i32 {
                    "(new)"
                } else {
                    t.id.as_str()
                },
                t.service_id,
                t.slot,
                t.node_id,
                t.desired(),
                t.observed(),
                t.spec.as_ref().map_or(0, Message::encoded_len),
            ),
            other => format!("{other:?}"),
        })
        .collect();
    out.sort();
    out
}

/// The (task, node) of each assignment.
fn assignments(actions: &[StoreAction]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = actions
        .iter()
        .filter_map(|a| match a.target.as_ref()?.kind.as_ref()? {
            object::Kind::Task(t) if t.observed() == TaskState::Assigned => {
                Some((t.id.clone(), t.node_id.clone()))
            }
            _ => None,
        })
        .collect();
    out.sort();
    out
}

impl World {
    fn new() -> World {
        let store = Store::new();
        let ids = Arc::new(AtomicU64::new(0));
        let orchestrator = Orchestrator::new(id_maker(&ids));
        World {
            orchestrator: Incremental {
                reconciler: orchestrator,
                changes: store.watch(),
            },
            allocator: Incremental {
                reconciler: Allocator::default(),
                changes: store.watch(),
            },
            scheduler: Incremental {
                reconciler: Scheduler::new(Search::Auto),
                changes: store.watch(),
            },
            reaper: Incremental {
                reconciler: Reaper::default(),
                changes: store.watch(),
            },
            store,
            version: 0,
            now_ms: 1_000_000,
            ids,
        }
    }

    /// Applies one transaction; one that conflicts is dropped, as a
    /// proposal that fails is.
    fn apply(&mut self, actions: Vec<StoreAction>) {
        if actions.is_empty() {
            return;
        }
        self.version += 1;
        self.store.apply(
            self.version,
            Batch {
                transactions: vec![Transaction {
                    leader_term: 0,
                    actions,
                    timestamp_ms: self.now_ms,
                }],
            },
        );
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Service {
                which,
                replicas,
                reserve,
                zone,
                global,
                delay_ms,
                parallelism,
                start_first,
                job,
                failure_action,
                tolerant,
            } => {
                let id = format!("svc{which}");
                let existing = self.store.view().service(&id).cloned();
                let service = Service {
                    id: id.clone(),
                    meta: existing.as_ref().and_then(|s| s.meta),
                    spec: Some(ServiceSpec {
                        annotations: Some(Annotations {
                            name: id.clone(),
                            labels: Default::default(),
                        }),
                        task: Some(TaskSpec {
                            runtime: Some(Runtime {
                                command: vec!["run".into()],
                                ..Default::default()
                            }),
                            resources: reserve.then(|| ResourceRequirements {
                                reservations: Some(Resources {
                                    pids: 0,
                                    nano_cpus: 0,
                                    memory_bytes: GIB,
                                }),
                                ..Default::default()
                            }),
                            restart: Some(RestartPolicy {
                                condition: restart_policy::Condition::Any as i32,
                                delay_ms: *delay_ms,
                                ..Default::default()
                            }),
                            placement: zone.map(|z| Placement {
                                constraints: vec![format!("node.labels.zone=={z}")],
                                ..Default::default()
                            }),
                            ports: named_ports(*which),
                            ..Default::default()
                        }),
                        // A service keeps its mode (the control API
                        // refuses to change it).
                        mode: match existing.as_ref().and_then(|s| s.spec.as_ref()) {
                            Some(spec) => spec.mode,
                            None if *global => ServiceMode::Global as i32,
                            None if *job => ServiceMode::ReplicatedJob as i32,
                            None => ServiceMode::Replicated as i32,
                        },
                        max_concurrent: match existing.as_ref().and_then(|s| s.spec.as_ref()) {
                            Some(spec) => spec.max_concurrent,
                            None if *job && !*global => 2,
                            None => 0,
                        },
                        replicas: Some(i64::from(*replicas)),
                        update: Some(UpdateConfig {
                            parallelism: u64::from(*parallelism),
                            order: if *start_first {
                                update_config::Order::StartFirst
                            } else {
                                update_config::Order::StopFirst
                            } as i32,
                            monitor_ms: 1_000,
                            failure_action: i32::from(*failure_action),
                            max_failure_ratio: if *tolerant { 0.5 } else { 0.0 },
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                // As the control API writes it: the previous spec kept, and
                // the update status reset when what the tasks run changed or
                // the update was paused.
                let mut service = service;
                if let Some(old) = &existing {
                    let old_spec = old.spec.clone().unwrap_or_default();
                    let new_spec = service.spec.clone().unwrap_or_default();
                    let paused = old.update_status.as_ref().is_some_and(|u| u.paused());
                    if old_spec.runs_same_tasks(&new_spec) && !paused {
                        service.update_status = old.update_status.clone();
                    }
                    service.previous_spec = if old_spec != new_spec {
                        Some(old_spec)
                    } else {
                        old.previous_spec.clone()
                    };
                }
                let kind = if existing.is_some() {
                    store_action::Kind::Update
                } else {
                    store_action::Kind::Create
                };
                self.apply(vec![action(kind, service)]);
            }
            Op::RemoveService(which) => {
                let existing = self.store.view().service(&format!("svc{which}")).cloned();
                if let Some(s) = existing {
                    self.apply(vec![action(store_action::Kind::Remove, s)]);
                }
            }
            Op::Node {
                which,
                ready,
                availability,
                zone,
                memory_gib,
            } => {
                let id = format!("node{which}");
                let existing = self.store.view().node(&id).cloned();
                let node = Node {
                    id: id.clone(),
                    meta: existing.as_ref().and_then(|n| n.meta),
                    spec: Some(NodeSpec {
                        annotations: Some(Annotations {
                            name: String::new(),
                            labels: [("zone".to_string(), zone.to_string())].into(),
                        }),
                        availability: [
                            node_spec::Availability::Active,
                            node_spec::Availability::Pause,
                            node_spec::Availability::Drain,
                        ][usize::from(*availability)] as i32,
                        ..Default::default()
                    }),
                    description: Some(NodeDescription {
                        hostname: id.clone(),
                        resources: Some(Resources {
                            pids: 0,
                            nano_cpus: 4_000_000_000,
                            memory_bytes: memory_gib * GIB,
                        }),
                        ..Default::default()
                    }),
                    status: Some(NodeStatus {
                        state: if *ready {
                            node_status::State::Ready
                        } else {
                            node_status::State::Down
                        } as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let kind = if existing.is_some() {
                    store_action::Kind::Update
                } else {
                    store_action::Kind::Create
                };
                self.apply(vec![action(kind, node)]);
                if !ready {
                    // As the dispatcher does for a node that went down.
                    let lost: Vec<StoreAction> = self
                        .store
                        .view()
                        .tasks_of_node(&id)
                        .filter(|t| !t.observed().is_terminal())
                        .map(|mut t| {
                            t.spec = None;
                            assert!(t.advance_status(TaskStatus {
                                state: TaskState::Orphaned as i32,
                                timestamp_ms: self.now_ms,
                                ..Default::default()
                            }));
                            action(store_action::Kind::Update, t)
                        })
                        .collect();
                    self.apply(lost);
                }
            }
            Op::RemoveNode(which) => {
                let existing = self.store.view().node(&format!("node{which}")).cloned();
                if let Some(n) = existing {
                    self.apply(vec![action(store_action::Kind::Remove, n)]);
                }
            }
            Op::Agent { pick, outcome } => {
                let candidates: Vec<Task> = self
                    .store
                    .view()
                    .tasks()
                    .filter(|t| {
                        let s = t.observed();
                        s >= TaskState::Assigned && !s.is_terminal()
                    })
                    .collect();
                if candidates.is_empty() {
                    return Ok(());
                }
                let mut t = candidates[usize::from(*pick) % candidates.len()].clone();
                let next = if t.desired_state > TaskState::Running as i32 {
                    TaskState::Shutdown
                } else {
                    [
                        TaskState::Running,
                        TaskState::Running,
                        TaskState::Running,
                        TaskState::Failed,
                        TaskState::Complete,
                        TaskState::Rejected,
                    ][usize::from(*outcome)]
                };
                if !t.observed().may_become(next) {
                    return Ok(());
                }
                t.spec = None;
                assert!(t.advance_status(TaskStatus {
                    state: next as i32,
                    timestamp_ms: self.now_ms,
                    ..Default::default()
                }));
                self.apply(vec![action(store_action::Kind::Update, t)]);
            }
            Op::Tick(ms) => self.now_ms += ms,
            Op::Pass => self.pass()?,
        }
        Ok(())
    }

    /// Runs each reconciler as `reconciler::run` does, compares it with a
    /// fresh one reading everything, and applies its actions.
    fn pass(&mut self) -> Result<(), TestCaseError> {
        let now = self.now_ms;
        // Orchestrator: the same actions, made-up ids included.
        let first_id = self.ids.load(Ordering::SeqCst);
        let incremental = decide(&self.store, &mut self.orchestrator, now);
        self.ids.store(first_id, Ordering::SeqCst);
        let full = Orchestrator::new(id_maker(&self.ids)).decide(&self.store.view(), now, true);
        let (incremental, full) = (flat(incremental), flat(full));
        prop_assert_eq!(comparable(&incremental), comparable(&full), "orchestrator");
        self.apply_all(incremental);

        let incremental = flat(decide(&self.store, &mut self.allocator, now));
        let full = flat(Allocator::default().decide(&self.store.view(), now, true));
        prop_assert_eq!(comparable(&incremental), comparable(&full), "allocator");
        self.apply_all(incremental);

        // Scheduler: the same assignments (an explanation of a task that
        // waits may lag until room frees).
        let incremental = flat(decide(&self.store, &mut self.scheduler, now));
        let full = flat(Scheduler::new(Search::Auto).decide(&self.store.view(), now, true));
        prop_assert_eq!(assignments(&incremental), assignments(&full), "scheduler");
        self.apply_all(incremental);

        let incremental = flat(decide(&self.store, &mut self.reaper, now));
        let full = flat(Reaper::default().decide(&self.store.view(), now, true));
        prop_assert_eq!(comparable(&incremental), comparable(&full), "reaper");
        self.apply_all(incremental);
        Ok(())
    }

    fn apply_all(&mut self, actions: Vec<StoreAction>) {
        for chunk in actions.chunks(50) {
            self.apply(chunk.to_vec());
        }
    }
}

fn decide<R: Reconciler>(
    store: &Store,
    r: &mut Incremental<R>,
    now_ms: i64,
) -> shoal_manager::reconciler::Pass {
    let view = store.view();
    let reconciler = &mut r.reconciler;
    assert!(r
        .changes
        .drain_with(view.version(), |e| reconciler.observe(&view, e)));
    r.reconciler.decide(&view, now_ms, false)
}

fn flat(pass: shoal_manager::reconciler::Pass) -> Vec<StoreAction> {
    pass.transactions.into_iter().flatten().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn reconcilers_told_the_changes_decide_as_reconcilers_that_read_everything(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        let mut world = World::new();
        // The first pass of each is a full one, as in `reconciler::run`.
        world.pass_full();
        for op in &ops {
            world.step(op)?;
        }
        world.step(&Op::Pass)?;
    }
}

impl World {
    fn pass_full(&mut self) {
        let now = self.now_ms;
        let view = self.store.view();
        let _ = self.orchestrator.changes.drain_with(u64::MAX, |_| {});
        let _ = self.orchestrator.reconciler.decide(&view, now, true);
        let _ = self.allocator.changes.drain_with(u64::MAX, |_| {});
        let _ = self.allocator.reconciler.decide(&view, now, true);
        let _ = self.scheduler.changes.drain_with(u64::MAX, |_| {});
        let _ = self.scheduler.reconciler.decide(&view, now, true);
        let _ = self.reaper.changes.drain_with(u64::MAX, |_| {});
        let _ = self.reaper.reconciler.decide(&view, now, true);
    }
}
