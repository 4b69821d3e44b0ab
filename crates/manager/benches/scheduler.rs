//! The scheduler alone, on the in-memory store without raft (issue #4,
//! benchmark 1): N ready nodes, T pending tasks each of its own service; time
//! from the pending tasks being in the store until all T are ASSIGNED: the
//! scheduler, which has seen the nodes, is told the tasks' changes, decides,
//! and its actions are applied to the store.
//!
//! Sizes are `NODESxTASKS`, with a suffix: `c` puts a constraint on every
//! task that one node in three matches (`node.labels.tier==a`), `s` makes
//! the tasks replicas of one service instead of one service each.
//!
//! `cargo bench -p shoal-manager --bench scheduler` (SHOAL_BENCH_SIZES, e.g.
//! `1000x10000,5000x100000c`, picks the sizes).

use std::time::Instant;

use shoal_api::{
    node_spec, node_status, store_action, Annotations, Batch, Node, NodeDescription, NodeSpec,
    NodeStatus, Placement, Resources, StoreAction, Task, TaskSpec, TaskState, TaskStatus,
    Transaction,
};
use shoal_manager::reconciler::Reconciler;
use shoal_manager::scheduler::{Scheduler, Search};
use shoal_store::Store;

/// The allocator and page policy `shoal daemon` runs with, so the figure is
/// the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn create(object: impl Into<shoal_api::Object>) -> StoreAction {
    StoreAction {
        kind: store_action::Kind::Create as i32,
        target: Some(object.into()),
    }
}

fn run(nodes: usize, tasks: usize, constrained: bool, one_service: bool) {
    let store = Store::new();
    let mut version = 0;
    let mut apply = |mut actions: Vec<StoreAction>| {
        while !actions.is_empty() {
            let rest = actions.split_off(actions.len().min(10_000));
            version += 1;
            store.apply(
                version,
                Batch {
                    transactions: vec![Transaction {
                        leader_term: 0,
                        actions,
                        timestamp_ms: 0,
                    }],
                },
            );
            actions = rest;
        }
    };
    apply(
        (0..nodes)
            .map(|i| {
                create(Node {
                    id: format!("n{i:06}"),
                    spec: Some(NodeSpec {
                        annotations: Some(Annotations {
                            name: String::new(),
                            labels: [("tier".to_string(), ["a", "b", "c"][i % 3].to_string())]
                                .into(),
                        }),
                        availability: node_spec::Availability::Active as i32,
                        ..Default::default()
                    }),
                    description: Some(NodeDescription {
                        resources: Some(Resources {
                            pids: 0,
                            nano_cpus: 64_000_000_000,
                            memory_bytes: 256 << 30,
                        }),
                        ..Default::default()
                    }),
                    status: Some(NodeStatus {
                        state: node_status::State::Ready as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            })
            .collect(),
    );
    // The scheduler as it runs in a manager: it has seen the nodes (a full
    // pass), and is told the tasks' changes.
    let mut scheduler = Scheduler::new(Search::Auto);
    let mut changes = store.watch();
    let _ = scheduler.decide(&store.view(), 0, true);
    apply(
        (0..tasks)
            .map(|i| {
                create(Task {
                    id: format!("t{i:08}"),
                    service_id: if one_service {
                        "s".to_string()
                    } else {
                        format!("s{i:08}")
                    },
                    slot: if one_service { i as u64 + 1 } else { 1 },
                    spec: Some(TaskSpec {
                        placement: constrained.then(|| Placement {
                            constraints: vec!["node.labels.tier==a".into()],
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    desired_state: TaskState::Running as i32,
                    status: Some(TaskStatus {
                        state: TaskState::Pending as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            })
            .collect(),
    );
    let start = Instant::now();
    let actions: Vec<StoreAction> = {
        let view = store.view();
        assert!(changes.drain_with(view.version(), |e| scheduler.observe(&view, e)));
        scheduler
            .decide(&view, 0, false)
            .transactions
            .into_iter()
            .flatten()
            .collect()
    };
    let decided = start.elapsed();
    let placed = actions.len();
    apply(actions);
    let total = start.elapsed();
    assert_eq!(placed, tasks, "every task fits somewhere");
    let shape = match (constrained, one_service) {
        (true, _) => " (constraint matching 1 node in 3)",
        (_, true) => " (one service)",
        _ => "",
    };
    println!(
        "{nodes} nodes x {tasks} tasks{shape}: all ASSIGNED in {:.3} s ({:.0} placements/s; decision {:.3} s, applying {:.3} s)",
        total.as_secs_f64(),
        tasks as f64 / total.as_secs_f64(),
        decided.as_secs_f64(),
        (total - decided).as_secs_f64()
    );
}

fn main() {
    let _ = nix::sys::prctl::set_thp_disable(true);
    let sizes = std::env::var("SHOAL_BENCH_SIZES").unwrap_or_else(|_| {
        "1000x10000,1000x100000,100000x100000,5000x100000c,5000x100000s".into()
    });
    for size in sizes.split(',') {
        let size = size.trim();
        let constrained = size.ends_with('c');
        let one_service = size.ends_with('s');
        let Some((n, t)) = size.trim_end_matches(['c', 's']).split_once('x') else {
            continue;
        };
        let (Ok(n), Ok(t)) = (n.parse(), t.parse()) else {
            continue;
        };
        run(n, t, constrained, one_service);
    }
}
