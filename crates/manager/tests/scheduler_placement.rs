//! The scheduler's fast paths (walk in load order, heap per large group,
//! explanations once per group) must place exactly as the exhaustive rule:
//! every pending task, in group order, scored against every node.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use shoal_api::{
    node_spec, node_status, port_config, store_action, Annotations, Batch, Endpoint, Node,
    NodeDescription, NodeSpec, NodeStatus, Placement, PlacementPreference, PortConfig,
    ResourceRequirements, Resources, Runtime, StoreAction, Task, TaskSpec, TaskState, TaskStatus,
    Transaction,
};
use shoal_manager::{scheduler, Constraint};
use shoal_store::{Store, Tables};

const NOW: i64 = 10_000_000;

#[derive(Debug, Clone)]
struct NodeCase {
    memory_gib: i64,
    cores: i64,
    zone: Option<&'static str>,
    ready: bool,
    availability: node_spec::Availability,
    /// Whether it has a Docker Engine.
    engine: bool,
}

#[derive(Debug, Clone)]
struct ServiceCase {
    memory_mib: i64,
    cores: i64,
    constraint: Option<&'static str>,
    spread: bool,
    max_per_node: u64,
    host_port: bool,
    /// Its tasks run an image (only nodes with an engine take them).
    image: bool,
}

#[derive(Debug, Clone)]
struct Existing {
    service: usize,
    node: usize,
    state: TaskState,
}

#[derive(Debug, Clone)]
struct Pending {
    service: usize,
    /// A global service's task arrives with its node chosen.
    node: Option<usize>,
}

fn node_case() -> impl Strategy<Value = NodeCase> {
    (
        prop::sample::select(vec![1i64, 2, 4]),
        prop::sample::select(vec![1i64, 2, 4]),
        prop::sample::select(vec![None, Some("a"), Some("b"), Some("c")]),
        prop::bool::weighted(0.85),
        prop::sample::select(vec![
            node_spec::Availability::Active,
            node_spec::Availability::Active,
            node_spec::Availability::Active,
            node_spec::Availability::Pause,
            node_spec::Availability::Drain,
        ]),
        prop::bool::weighted(0.7),
    )
        .prop_map(
            |(memory_gib, cores, zone, ready, availability, engine)| NodeCase {
                memory_gib,
                cores,
                zone,
                ready,
                availability,
                engine,
            },
        )
}

fn service_case() -> impl Strategy<Value = ServiceCase> {
    (
        prop::sample::select(vec![0i64, 512, 1024]),
        prop::sample::select(vec![0i64, 0, 1]),
        prop::sample::select(vec![
            None,
            None,
            Some("node.labels.zone==a"),
            Some("node.labels.zone!=b"),
        ]),
        prop::bool::weighted(0.3),
        prop::sample::select(vec![0u64, 0, 1, 2]),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.3),
    )
        .prop_map(
            |(memory_mib, cores, constraint, spread, max_per_node, host_port, image)| ServiceCase {
                memory_mib,
                cores,
                constraint,
                spread,
                max_per_node,
                host_port,
                image,
            },
        )
}

fn node(i: usize, c: &NodeCase) -> Node {
    let mut labels = std::collections::BTreeMap::new();
    if let Some(z) = c.zone {
        labels.insert("zone".to_string(), z.to_string());
    }
    Node {
        id: format!("n{i:02}"),
        spec: Some(NodeSpec {
            annotations: Some(Annotations {
                name: String::new(),
                labels,
            }),
            availability: c.availability as i32,
            ..Default::default()
        }),
        description: Some(NodeDescription {
            resources: Some(Resources {
                pids: 0,
                nano_cpus: c.cores * 1_000_000_000,
                memory_bytes: c.memory_gib << 30,
            }),
            engine_version: if c.engine {
                "20.10.24".into()
            } else {
                String::new()
            },
            ..Default::default()
        }),
        status: Some(NodeStatus {
            state: if c.ready {
                node_status::State::Ready
            } else {
                node_status::State::Down
            } as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn task_spec(c: &ServiceCase) -> TaskSpec {
    TaskSpec {
        resources: Some(ResourceRequirements {
            limits: None,
            reservations: Some(Resources {
                pids: 0,
                nano_cpus: c.cores * 1_000_000_000,
                memory_bytes: c.memory_mib << 20,
            }),
        }),
        placement: Some(Placement {
            constraints: c.constraint.iter().map(|s| s.to_string()).collect(),
            preferences: if c.spread {
                vec![PlacementPreference {
                    spread_descriptor: "node.labels.zone".into(),
                }]
            } else {
                vec![]
            },
            max_replicas_per_node: c.max_per_node,
        }),
        runtime: Some(Runtime {
            image: if c.image {
                "busybox:1".into()
            } else {
                String::new()
            },
            command: vec!["sleep".into(), "60".into()],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn endpoint(c: &ServiceCase) -> Option<Endpoint> {
    c.host_port.then(|| Endpoint {
        spec: None,
        ports: vec![PortConfig {
            name: String::new(),
            protocol: port_config::Protocol::Tcp as i32,
            target_port: 80,
            published_port: 8080,
            publish_mode: port_config::PublishMode::Host as i32,
            host_ip: String::new(),
        }],
        virtual_ips: vec![],
        named_ports: vec![],
    })
}

fn apply(store: &Store, version: &mut u64, actions: Vec<StoreAction>, now: i64) {
    *version += 1;
    let results = store.apply(
        *version,
        Batch {
            transactions: vec![Transaction {
                leader_term: 0,
                actions,
                timestamp_ms: now,
            }],
        },
    );
    assert_eq!(results, vec![Ok(())]);
}

fn create(object: impl Into<shoal_api::Object>) -> StoreAction {
    StoreAction {
        kind: store_action::Kind::Create as i32,
        target: Some(object.into()),
    }
}

/// A candidate's rank, lowest first: failing, spread group, tasks of the
/// service, tasks, index.
type Score = (bool, usize, usize, usize, usize);

/// The exhaustive rule, written as plainly as possible.
fn reference(view: &Tables, now: i64) -> BTreeMap<String, Result<String, String>> {
    let nodes: Vec<&Node> = view.nodes().collect();
    let mut cpu: Vec<i64> = nodes
        .iter()
        .map(|n| n.description.as_ref().unwrap().resources.unwrap().nano_cpus)
        .collect();
    let mut mem: Vec<i64> = nodes
        .iter()
        .map(|n| {
            n.description
                .as_ref()
                .unwrap()
                .resources
                .unwrap()
                .memory_bytes
        })
        .collect();
    let mut count = vec![0usize; nodes.len()];
    let mut ports: Vec<Vec<u32>> = vec![vec![]; nodes.len()];
    let mut of_service: HashMap<(String, usize), usize> = HashMap::new();
    let mut failures: HashMap<(String, usize), usize> = HashMap::new();
    let mut spread: HashMap<(String, String), usize> = HashMap::new();
    let zone = |n: &Node| {
        n.spec
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()
            .labels
            .get("zone")
            .cloned()
            .unwrap_or_default()
    };
    let index = |id: &str| nodes.iter().position(|n| n.id == id);
    let mut pending: Vec<Task> = Vec::new();
    for t in view.tasks() {
        let state = t.observed();
        if matches!(state, TaskState::Failed | TaskState::Rejected) {
            if let Some(i) = index(&t.node_id) {
                *failures.entry((t.service_id.clone(), i)).or_default() += 1;
            }
        }
        let live = state >= TaskState::Assigned && !state.is_terminal();
        if live {
            let i = index(&t.node_id).unwrap();
            let r = t
                .spec
                .as_ref()
                .unwrap()
                .resources
                .unwrap()
                .reservations
                .unwrap();
            cpu[i] -= r.nano_cpus;
            mem[i] -= r.memory_bytes;
            count[i] += 1;
            if let Some(e) = &t.endpoint {
                ports[i].extend(e.ports.iter().map(|p| p.published_port));
            }
            *of_service.entry((t.service_id.clone(), i)).or_default() += 1;
            if !t
                .spec
                .as_ref()
                .unwrap()
                .placement
                .as_ref()
                .unwrap()
                .preferences
                .is_empty()
            {
                *spread
                    .entry((t.service_id.clone(), zone(nodes[i])))
                    .or_default() += 1;
            }
        } else if state == TaskState::Pending {
            pending.push(t);
        }
    }
    // Group order: unfixed tasks by (service, spec version), each fixed
    // task alone; groups by their oldest task, tasks by age within.
    let mut groups: Vec<Vec<Task>> = Vec::new();
    let mut keyed: HashMap<String, usize> = HashMap::new();
    for t in pending {
        if t.node_id.is_empty() {
            let g = *keyed.entry(t.service_id.clone()).or_insert_with(|| {
                groups.push(vec![]);
                groups.len() - 1
            });
            groups[g].push(t);
        } else {
            groups.push(vec![t]);
        }
    }
    let age = |t: &Task| t.meta.as_ref().unwrap().created_at_ms;
    for g in &mut groups {
        g.sort_by_key(age);
    }
    groups.sort_by_key(|g| age(&g[0]));

    let mut out = BTreeMap::new();
    for t in groups.into_iter().flatten() {
        let spec = t.spec.clone().unwrap();
        let r = spec.resources.unwrap().reservations.unwrap();
        let placement = spec.placement.clone().unwrap();
        let constraints: Vec<Constraint> = placement
            .constraints
            .iter()
            .map(|c| Constraint::parse(c).unwrap())
            .collect();
        let my_ports: Vec<u32> = t
            .endpoint
            .iter()
            .flat_map(|e| e.ports.iter().map(|p| p.published_port))
            .collect();
        let mut reasons: BTreeMap<u8, (String, usize)> = BTreeMap::new();
        let mut best: Option<(usize, Score)> = None;
        for (i, n) in nodes.iter().enumerate() {
            if !t.node_id.is_empty() && t.node_id != n.id {
                continue;
            }
            let spec_of_node = n.spec.as_ref().unwrap();
            let reason = if n.status.as_ref().unwrap().state != node_status::State::Ready as i32 {
                Some((0, "node not ready".to_string()))
            } else if spec_of_node.availability != node_spec::Availability::Active as i32 {
                Some((1, "node not active".to_string()))
            } else if !spec.runtime.as_ref().unwrap().image.is_empty()
                && n.description.as_ref().unwrap().engine_version.is_empty()
            {
                Some((2, "no Docker Engine for the image".to_string()))
            } else if r.memory_bytes > mem[i] {
                Some((3, "insufficient memory".to_string()))
            } else if r.nano_cpus > cpu[i] {
                Some((4, "insufficient CPU".to_string()))
            } else if let Some(c) = constraints.iter().find(|c| !c.matches(n)) {
                Some((5, format!("constraint {c} not satisfied")))
            } else if my_ports.iter().any(|p| ports[i].contains(p)) {
                Some((6, "host port 8080/tcp in use".to_string()))
            } else if placement.max_replicas_per_node > 0
                && of_service
                    .get(&(t.service_id.clone(), i))
                    .copied()
                    .unwrap_or(0) as u64
                    >= placement.max_replicas_per_node
            {
                Some((
                    7,
                    format!(
                        "max replicas per node ({}) reached",
                        placement.max_replicas_per_node
                    ),
                ))
            } else {
                None
            };
            match reason {
                Some((order, text)) => reasons.entry(order).or_insert((text, 0)).1 += 1,
                None => {
                    let failing = failures
                        .get(&(t.service_id.clone(), i))
                        .is_some_and(|f| *f >= 3);
                    let group = if placement.preferences.is_empty() {
                        0
                    } else {
                        spread
                            .get(&(t.service_id.clone(), zone(n)))
                            .copied()
                            .unwrap_or(0)
                    };
                    let score = (
                        failing,
                        group,
                        of_service
                            .get(&(t.service_id.clone(), i))
                            .copied()
                            .unwrap_or(0),
                        count[i],
                        i,
                    );
                    if best.is_none_or(|(_, s)| score < s) {
                        best = Some((i, score));
                    }
                }
            }
        }
        match best {
            Some((i, _)) => {
                cpu[i] -= r.nano_cpus;
                mem[i] -= r.memory_bytes;
                count[i] += 1;
                ports[i].extend(my_ports.iter().copied());
                *of_service.entry((t.service_id.clone(), i)).or_default() += 1;
                if !placement.preferences.is_empty() {
                    *spread
                        .entry((t.service_id.clone(), zone(nodes[i])))
                        .or_default() += 1;
                }
                out.insert(t.id.clone(), Ok(nodes[i].id.clone()));
            }
            None => {
                let why = if reasons.is_empty() {
                    if t.node_id.is_empty() {
                        "no suitable node (no nodes)".to_string()
                    } else {
                        "no suitable node (its node is gone)".to_string()
                    }
                } else {
                    let parts: Vec<String> = reasons
                        .values()
                        .map(|(r, n)| format!("{r} on {n} node{}", if *n == 1 { "" } else { "s" }))
                        .collect();
                    format!("no suitable node ({})", parts.join("; "))
                };
                out.insert(t.id.clone(), Err(why));
            }
        }
    }
    let _ = now;
    out
}

fn scenario(
    nodes: &[NodeCase],
    services: &[ServiceCase],
    existing: &[Existing],
    pending: &[Pending],
) -> Store {
    let store = Store::new();
    let mut version = 0;
    apply(
        &store,
        &mut version,
        nodes
            .iter()
            .enumerate()
            .map(|(i, c)| create(node(i, c)))
            .collect(),
        0,
    );
    let mut n = 0;
    let mut task = |service: usize, node_id: String, state: TaskState| {
        n += 1;
        let c = &services[service];
        Task {
            id: format!("t{n:03}"),
            service_id: format!("s{service}"),
            slot: n,
            spec: Some(task_spec(c)),
            node_id,
            desired_state: TaskState::Running as i32,
            status: Some(TaskStatus {
                state: state as i32,
                timestamp_ms: NOW - 1_000,
                ..Default::default()
            }),
            endpoint: endpoint(c),
            ..Default::default()
        }
    };
    for e in existing {
        if e.service >= services.len() || e.node >= nodes.len() {
            continue;
        }
        let t = task(e.service, format!("n{:02}", e.node), e.state);
        apply(&store, &mut version, vec![create(t)], 1);
    }
    for (i, p) in pending.iter().enumerate() {
        if p.service >= services.len() {
            continue;
        }
        let node_id = p.node.map(|n| format!("n{n:02}")).unwrap_or_default();
        let t = task(p.service, node_id, TaskState::Pending);
        apply(&store, &mut version, vec![create(t)], 100 + i as i64);
    }
    store
}

fn decided(
    view: &Tables,
    now: i64,
    search: scheduler::Search,
) -> BTreeMap<String, Result<String, String>> {
    scheduler::decide_with(view, now, search)
        .into_iter()
        .map(|a| {
            let Some(shoal_api::object::Kind::Task(t)) = a.target.and_then(|o| o.kind) else {
                panic!("the scheduler writes tasks only");
            };
            let status = t.status.unwrap();
            let outcome = if status.state == TaskState::Assigned as i32 {
                Ok(t.node_id)
            } else {
                assert_eq!(status.state, TaskState::Pending as i32);
                Err(status.err)
            };
            (t.id, outcome)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_scheduler_places_every_task_as_the_exhaustive_rule_does(
        // Up to 40 nodes and 8 services: small groups on many nodes take the
        // walk, large ones the heap.
        nodes in prop::collection::vec(node_case(), 0..40),
        services in prop::collection::vec(service_case(), 1..8),
        existing in prop::collection::vec(
            (0..8usize, 0..40usize, prop::sample::select(vec![
                TaskState::Running, TaskState::Running, TaskState::Failed, TaskState::Shutdown,
            ])).prop_map(|(service, node, state)| Existing { service, node, state }),
            0..40,
        ),
        pending in prop::collection::vec(
            (0..8usize, prop::option::weighted(0.15, 0..42usize))
                .prop_map(|(service, node)| Pending { service, node }),
            1..40,
        ),
    ) {
        let store = scenario(&nodes, &services, &existing, &pending);
        let view = store.view();
        let expected = reference(&view, NOW);
        for search in [scheduler::Search::Auto, scheduler::Search::Walk, scheduler::Search::Heap] {
            prop_assert_eq!(&decided(&view, NOW, search), &expected, "{:?}", search);
        }
    }
}

#[test]
fn a_service_that_failed_three_times_on_a_node_goes_elsewhere_first() {
    let nodes = vec![
        NodeCase {
            memory_gib: 4,
            cores: 4,
            zone: None,
            ready: true,
            availability: node_spec::Availability::Active,
            engine: true,
        };
        2
    ];
    let services = vec![ServiceCase {
        memory_mib: 0,
        cores: 0,
        constraint: None,
        spread: false,
        max_per_node: 0,
        host_port: false,
        image: false,
    }];
    // n00 is emptier, but the service failed there three times.
    let existing: Vec<Existing> = (0..3)
        .map(|_| Existing {
            service: 0,
            node: 0,
            state: TaskState::Failed,
        })
        .chain((0..2).map(|_| Existing {
            service: 0,
            node: 1,
            state: TaskState::Running,
        }))
        .collect();
    let pending = vec![Pending {
        service: 0,
        node: None,
    }];
    let store = scenario(&nodes, &services, &existing, &pending);
    let placed = decided(&store.view(), NOW, scheduler::Search::Auto);
    assert_eq!(placed.values().next(), Some(&Ok("n01".to_string())));
}

#[test]
fn a_host_port_taken_on_a_node_keeps_other_tasks_publishing_it_off_that_node() {
    let nodes = vec![
        NodeCase {
            memory_gib: 4,
            cores: 4,
            zone: None,
            ready: true,
            availability: node_spec::Availability::Active,
            engine: true,
        };
        2
    ];
    let publisher = ServiceCase {
        memory_mib: 0,
        cores: 0,
        constraint: None,
        spread: false,
        max_per_node: 0,
        host_port: true,
        image: false,
    };
    let services = vec![publisher.clone(), publisher];
    let pending: Vec<Pending> = (0..3)
        .map(|i| Pending {
            service: i % 2,
            node: None,
        })
        .collect();
    let store = scenario(&nodes, &services, &[], &pending);
    let placed = decided(&store.view(), NOW, scheduler::Search::Auto);
    let nodes: Vec<_> = placed.values().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(nodes.len(), 2, "two nodes, one port each: {placed:?}");
    assert_ne!(nodes[0], nodes[1]);
    assert!(placed
        .values()
        .any(|r| r == &Err("no suitable node (host port 8080/tcp in use on 2 nodes)".to_string())));
}

#[test]
fn a_task_with_an_image_goes_only_to_a_node_with_a_docker_engine_and_says_so() {
    let node = |engine| NodeCase {
        memory_gib: 4,
        cores: 4,
        zone: None,
        ready: true,
        availability: node_spec::Availability::Active,
        engine,
    };
    let container = ServiceCase {
        memory_mib: 0,
        cores: 0,
        constraint: None,
        spread: false,
        max_per_node: 0,
        host_port: false,
        image: true,
    };
    let one = Pending {
        service: 0,
        node: None,
    };
    let store = scenario(
        &[node(false), node(true), node(false)],
        std::slice::from_ref(&container),
        &[],
        std::slice::from_ref(&one),
    );
    let placed = decided(&store.view(), NOW, scheduler::Search::Auto);
    assert_eq!(placed.values().next(), Some(&Ok("n01".to_string())));
    let store = scenario(&[node(false), node(false)], &[container], &[], &[one]);
    let placed = decided(&store.view(), NOW, scheduler::Search::Auto);
    assert_eq!(
        placed.values().next(),
        Some(&Err(
            "no suitable node (no Docker Engine for the image on 2 nodes)".to_string()
        ))
    );
}
