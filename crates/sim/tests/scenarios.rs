//! Multi-node behaviour through the simulator: a real manager (raft, store,
//! reconcilers, dispatcher, control API) and simulated agents with real
//! dispatcher sessions. Every wait polls the store with a generous bound.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use shoal_api::{
    node_spec, node_status, Annotations, CreateServiceRequest, GetRequest, NodeSpec, Placement,
    PlacementPreference, RemoveNodeRequest, RemoveRequest, Runtime, ServiceMode, ServiceSpec,
    TaskSpec, TaskState, UpdateNodeRequest,
};
use shoal_sim::{SimCluster, SimConfig};
use shoal_store::Tables;

const WAIT: Duration = Duration::from_secs(90);

async fn cluster(nodes: usize) -> SimCluster {
    SimCluster::start(SimConfig {
        nodes,
        // A short period keeps node-death tests short; the TTL is 3 periods.
        heartbeat_period_ms: 300,
        ..Default::default()
    })
    .await
    .expect("the simulated cluster starts")
}

fn spec(name: &str, mode: ServiceMode, replicas: Option<i64>, placement: Placement) -> ServiceSpec {
    ServiceSpec {
        annotations: Some(Annotations {
            name: name.into(),
            labels: Default::default(),
        }),
        task: Some(TaskSpec {
            runtime: Some(Runtime {
                command: vec!["simulated".into()],
                ..Default::default()
            }),
            placement: Some(placement),
            ..Default::default()
        }),
        mode: mode as i32,
        replicas,
        ..Default::default()
    }
}

async fn create(sim: &SimCluster, spec: ServiceSpec) -> String {
    sim.control()
        .create_service(CreateServiceRequest { spec: Some(spec) })
        .await
        .expect("the service is created")
        .into_inner()
        .service
        .expect("the response holds the service")
        .id
}

async fn update_node(sim: &SimCluster, i: usize, f: impl FnOnce(&mut NodeSpec)) {
    let mut control = sim.control();
    let node = control
        .get_node(GetRequest {
            reference: sim.node_id(i),
        })
        .await
        .expect("the node exists")
        .into_inner()
        .node
        .expect("the response holds the node");
    let mut spec = node.spec.clone().unwrap_or_default();
    f(&mut spec);
    control
        .update_node(UpdateNodeRequest {
            node_id: node.id.clone(),
            version: node.meta.map_or(0, |m| m.version),
            spec: Some(spec),
        })
        .await
        .expect("the node is updated");
}

async fn label(sim: &SimCluster, i: usize, key: &str, value: &str) {
    update_node(sim, i, |spec| {
        spec.annotations
            .get_or_insert_with(Default::default)
            .labels
            .insert(key.into(), value.into());
    })
    .await;
}

/// Creates a replicated service of `replicas` and waits until they all run.
async fn running_service(sim: &SimCluster, name: &str, replicas: usize) -> String {
    let service = create(
        sim,
        spec(
            name,
            ServiceMode::Replicated,
            Some(replicas as i64),
            Placement::default(),
        ),
    )
    .await;
    sim.wait_for("every replica RUNNING", WAIT, |v| {
        running_nodes(v, &service).len() == replicas
    })
    .await
    .unwrap();
    service
}

/// Waits until node `i` is DOWN.
async fn wait_down(sim: &SimCluster, i: usize) {
    let id = sim.node_id(i);
    sim.wait_for("the node DOWN", WAIT, |v| {
        v.node(&id).and_then(|n| n.status.as_ref()).map(|s| s.state)
            == Some(node_status::State::Down as i32)
    })
    .await
    .unwrap();
}

/// Node of every task of `service` that is RUNNING and wanted RUNNING.
fn running_nodes(view: &Tables, service: &str) -> Vec<String> {
    view.tasks_of_service(service)
        .filter(|t| t.observed() == TaskState::Running && t.desired() == TaskState::Running)
        .map(|t| t.node_id)
        .collect()
}

fn per_node(nodes: &[String]) -> BTreeMap<String, usize> {
    let mut count = BTreeMap::new();
    for n in nodes {
        *count.entry(n.clone()).or_insert(0) += 1;
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_preferences_spread_replicas_evenly_over_zones() {
    let sim = cluster(6).await;
    // Zones of unequal size: a has 3 nodes, b 2, c 1.
    for (i, zone) in ["a", "a", "a", "b", "b", "c"].iter().enumerate() {
        label(&sim, i, "zone", zone).await;
    }
    let zone_of: HashMap<String, &str> = ["a", "a", "a", "b", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, z)| (sim.node_id(i), *z))
        .collect();
    let service = create(
        &sim,
        spec(
            "spread",
            ServiceMode::Replicated,
            Some(9),
            Placement {
                preferences: vec![PlacementPreference {
                    spread_descriptor: "node.labels.zone".into(),
                }],
                ..Default::default()
            },
        ),
    )
    .await;
    sim.wait_for("9 replicas RUNNING", WAIT, |v| {
        running_nodes(v, &service).len() == 9
    })
    .await
    .unwrap();
    let nodes = sim.view(|v| running_nodes(v, &service));
    let mut per_zone: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &nodes {
        *per_zone.entry(zone_of[n]).or_insert(0) += 1;
    }
    assert_eq!(
        per_zone,
        BTreeMap::from([("a", 3), ("b", 3), ("c", 3)]),
        "even over zones, whatever their size"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constraints_keep_tasks_on_matching_nodes_and_a_label_change_moves_them() {
    let sim = cluster(5).await;
    for i in 0..2 {
        label(&sim, i, "disk", "ssd").await;
    }
    let service = create(
        &sim,
        spec(
            "db",
            ServiceMode::Replicated,
            Some(4),
            Placement {
                constraints: vec!["node.labels.disk==ssd".into()],
                ..Default::default()
            },
        ),
    )
    .await;
    sim.wait_for("4 replicas RUNNING", WAIT, |v| {
        running_nodes(v, &service).len() == 4
    })
    .await
    .unwrap();
    let ssd = [sim.node_id(0), sim.node_id(1)];
    let nodes = sim.view(|v| running_nodes(v, &service));
    assert!(nodes.iter().all(|n| ssd.contains(n)), "{nodes:?}");

    // Node 1 loses the label and node 4 gains it: the tasks on node 1 move.
    label(&sim, 4, "disk", "ssd").await;
    label(&sim, 1, "disk", "hdd").await;
    let allowed = [sim.node_id(0), sim.node_id(4)];
    sim.wait_for("the replicas on matching nodes only", WAIT, |v| {
        let nodes = running_nodes(v, &service);
        nodes.len() == 4 && nodes.iter().all(|n| allowed.contains(n))
    })
    .await
    .unwrap();
    sim.wait_for("node 1's agent runs nothing", WAIT, |_| {
        sim.running_on(1).is_empty()
    })
    .await
    .unwrap();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_tasks_away_pause_keeps_them_and_active_takes_new_ones() {
    let sim = cluster(3).await;
    let service = running_service(&sim, "web", 6).await;
    let n0 = sim.node_id(0);
    let n1 = sim.node_id(1);
    assert_eq!(
        per_node(&sim.view(|v| running_nodes(v, &service))).get(&n0),
        Some(&2)
    );

    update_node(&sim, 0, |s| {
        s.availability = node_spec::Availability::Drain as i32
    })
    .await;
    sim.wait_for("nothing on the drained node", WAIT, |v| {
        let nodes = running_nodes(v, &service);
        nodes.len() == 6 && !nodes.contains(&n0)
    })
    .await
    .unwrap();
    sim.wait_for("the drained agent runs nothing", WAIT, |_| {
        sim.running_on(0).is_empty()
    })
    .await
    .unwrap();

    // Paused: keeps its tasks, gets no new ones.
    update_node(&sim, 1, |s| {
        s.availability = node_spec::Availability::Pause as i32
    })
    .await;
    update_node(&sim, 0, |s| {
        s.availability = node_spec::Availability::Active as i32
    })
    .await;
    let on_paused = per_node(&sim.view(|v| running_nodes(v, &service)))
        .get(&n1)
        .copied()
        .unwrap_or(0);
    assert!(on_paused > 0);
    let more = create(
        &sim,
        spec(
            "more",
            ServiceMode::Replicated,
            Some(4),
            Placement::default(),
        ),
    )
    .await;
    sim.wait_for("4 more RUNNING", WAIT, |v| {
        running_nodes(v, &more).len() == 4
    })
    .await
    .unwrap();
    let nodes = sim.view(|v| running_nodes(v, &more));
    assert!(!nodes.contains(&n1), "a paused node gets no new task");
    assert!(nodes.contains(&n0), "an active node again takes new ones");
    assert_eq!(
        per_node(&sim.view(|v| running_nodes(v, &service)))
            .get(&n1)
            .copied()
            .unwrap_or(0),
        on_paused,
        "a paused node keeps its tasks"
    );
    sim.shutdown().await;
}

/// No slot of `service` is run by two agents at once.
fn assert_one_live_task_per_slot(sim: &SimCluster, service: &str) {
    let mut slots: BTreeMap<u64, usize> = BTreeMap::new();
    for i in 0..sim.node_count() {
        for (s, slot) in sim.running_on(i) {
            if s == service {
                *slots.entry(slot).or_insert(0) += 1;
            }
        }
    }
    assert!(
        slots.values().all(|n| *n <= 1),
        "a slot runs twice: {slots:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_tasks_run_elsewhere_and_its_stale_tasks_stop_when_it_returns() {
    let sim = cluster(4).await;
    let service = running_service(&sim, "api", 8).await;
    let n3 = sim.node_id(3);
    assert!(!sim.running_on(3).is_empty());

    // Cut off: the node keeps running its tasks, but misses its heartbeats.
    sim.set_connected(3, false);
    wait_down(&sim, 3).await;
    sim.wait_for("8 replicas RUNNING on the others", WAIT, |v| {
        let nodes = running_nodes(v, &service);
        nodes.len() == 8 && !nodes.contains(&n3)
    })
    .await
    .unwrap();

    // Back: its stale tasks are stopped, and no slot ends with two.
    sim.set_connected(3, true);
    sim.wait_for("node 3 READY and running nothing stale", WAIT, |v| {
        v.node(&n3).is_some_and(shoal_sim::sim_cluster::is_ready) && sim.running_on(3).is_empty()
    })
    .await
    .unwrap();
    assert_one_live_task_per_slot(&sim, &service);
    assert_eq!(sim.view(|v| running_nodes(v, &service)).len(), 8);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_rm_of_a_dead_node_removes_it_and_its_tasks_run_elsewhere() {
    let mut sim = cluster(3).await;
    let service = running_service(&sim, "cache", 3).await;
    let n2 = sim.node_id(2);
    // A live node is refused without --force.
    let refused = sim
        .control()
        .remove_node(RemoveNodeRequest {
            reference: n2.clone(),
            force: false,
        })
        .await
        .expect_err("a ready node is not removed without force");
    assert!(refused.message().contains("force"), "{}", refused.message());
    sim.kill(2).await;
    wait_down(&sim, 2).await;
    sim.control()
        .remove_node(RemoveNodeRequest {
            reference: n2.clone(),
            force: false,
        })
        .await
        .expect("a down node is removed");
    sim.wait_for("node gone, 3 RUNNING elsewhere", WAIT, |v| {
        let nodes = running_nodes(v, &service);
        v.node(&n2).is_none() && nodes.len() == 3 && !nodes.contains(&n2)
    })
    .await
    .unwrap();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_service_runs_one_task_on_each_of_50_nodes_and_follows_them() {
    let mut sim = cluster(50).await;
    let service = create(
        &sim,
        spec("agent", ServiceMode::Global, None, Placement::default()),
    )
    .await;
    sim.wait_for("one task RUNNING per node", WAIT, |v| {
        let nodes = per_node(&running_nodes(v, &service));
        nodes.len() == 50 && nodes.values().all(|n| *n == 1)
    })
    .await
    .unwrap();
    // A node that dies stops counting; drained, its task stops too.
    sim.kill(49).await;
    update_node(&sim, 48, |s| {
        s.availability = node_spec::Availability::Drain as i32
    })
    .await;
    let gone = [sim.node_id(48), sim.node_id(49)];
    sim.wait_for("48 tasks, none on the drained or dead node", WAIT, |v| {
        let nodes = per_node(&running_nodes(v, &service));
        nodes.len() == 48 && gone.iter().all(|g| !nodes.contains_key(g))
    })
    .await
    .unwrap();
    // It comes back: it gets its task again.
    sim.restart(49);
    let back = sim.node_id(49);
    sim.wait_for("49 tasks", WAIT, |v| {
        let nodes = per_node(&running_nodes(v, &service));
        nodes.len() == 49 && nodes.contains_key(&back)
    })
    .await
    .unwrap();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_removed_while_a_node_is_cut_off_stops_there_when_it_returns() {
    let sim = cluster(3).await;
    let service = running_service(&sim, "gone", 6).await;
    assert!(!sim.running_on(2).is_empty());
    let n2 = sim.node_id(2);
    sim.set_connected(2, false);
    wait_down(&sim, 2).await;
    sim.control()
        .remove_service(RemoveRequest {
            reference: service.clone(),
        })
        .await
        .expect("the service is removed");
    // Its tasks leave the store, those of the cut-off node included: the
    // node's next session cannot name them as removed.
    sim.wait_for("no task of the service left", WAIT, |v| {
        v.tasks_of_service(&service).next().is_none()
    })
    .await
    .unwrap();
    assert!(!sim.running_on(2).is_empty(), "the cut-off node runs on");
    sim.set_connected(2, true);
    sim.wait_for("node 2 READY and running nothing", WAIT, |v| {
        v.node(&n2).is_some_and(shoal_sim::sim_cluster::is_ready) && sim.running_on(2).is_empty()
    })
    .await
    .unwrap();
    sim.shutdown().await;
}
