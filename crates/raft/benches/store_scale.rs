//! 1,000,000 tasks (10,000 services × 100 tasks) in the store: resident memory
//! per task, time to list one service's tasks by index, time to take and
//! restore a snapshot; then the same state through raft on disk: ingest rate
//! and the time a restart takes to load it and lead again.
//!
//! `cargo bench -p shoal-raft --bench store_scale` (SHOAL_BENCH_SERVICES and
//! SHOAL_BENCH_TASKS_PER_SERVICE shrink it; SHOAL_BENCH_DIR picks the disk).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use prost::Message;
use shoal_api::{
    store_action, Annotations, Batch, Meta, ResourceRequirements, Resources, Runtime, Service,
    ServiceSpec, StoreAction, StoreSnapshot, Task, TaskSpec, TaskState, TaskStatus, Transaction,
};
use shoal_raft::{Replica, ReplicaConfig};
use shoal_store::Store;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn id(prefix: char, n: usize) -> String {
    format!("{prefix}{n:024}")
}

fn task_spec(service: usize) -> TaskSpec {
    TaskSpec {
        runtime: Some(Runtime {
            command: vec!["python3".into(), "-m".into(), "http.server".into()],
            env: vec![format!("SERVICE={service}"), "A=1".into()],
            ..Default::default()
        }),
        resources: Some(ResourceRequirements {
            limits: None,
            reservations: Some(Resources {
                pids: 0,
                nano_cpus: 100_000_000,
                memory_bytes: 64 << 20,
            }),
        }),
        ..Default::default()
    }
}

fn service(n: usize, tasks: usize) -> Service {
    Service {
        id: id('s', n),
        spec: Some(ServiceSpec {
            annotations: Some(Annotations {
                name: format!("svc-{n}"),
                labels: Default::default(),
            }),
            task: Some(task_spec(n)),
            replicas: Some(tasks as i64),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn task(service: usize, slot: usize, tasks_per_service: usize) -> Task {
    let n = service * tasks_per_service + slot;
    Task {
        id: id('t', n),
        meta: Some(Meta::default()),
        spec: Some(task_spec(service)),
        spec_version: 1,
        service_id: id('s', service),
        slot: slot as u64 + 1,
        node_id: id('n', n % 1_000),
        status: Some(TaskStatus {
            timestamp_ms: 1_795_000_000_000,
            state: TaskState::Running as i32,
            message: "started".into(),
            pid: 40_000 + (n % 20_000) as u32,
            ..Default::default()
        }),
        desired_state: TaskState::Running as i32,
        ..Default::default()
    }
}

fn create(target: impl Into<shoal_api::Object>) -> StoreAction {
    StoreAction {
        kind: store_action::Kind::Create as i32,
        target: Some(target.into()),
    }
}

/// Every action of the whole state, services first.
fn actions(services: usize, per_service: usize) -> impl Iterator<Item = StoreAction> {
    (0..services).flat_map(move |s| {
        std::iter::once(create(service(s, per_service)))
            .chain((0..per_service).map(move |t| create(task(s, t, per_service))))
    })
}

/// Resident memory after handing freed heap back to the OS, so the figure is
/// what the store holds, not what the ingest's temporary buffers left behind.
fn resident_bytes() -> u64 {
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe { libc::malloc_trim(0) };
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Apply latency while a client lists every task, over and over (the
/// control API's `task ls`: a view, then every task decoded with its spec).
/// DESIGN.md §3: no reader delays a commit.
fn apply_while_listing(store: &std::sync::Arc<Store>, mut version: u64) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    const APPLIES: usize = 2_000;
    // One status update per apply, each of another task, made from the
    // versions they have now (before the lister starts).
    let updates: Vec<StoreAction> = store
        .view()
        .tasks_sharing_specs()
        .take(APPLIES)
        .map(|(mut t, _)| {
            if let Some(status) = t.status.as_mut() {
                status.message = "still running".into();
            }
            StoreAction {
                kind: store_action::Kind::Update as i32,
                target: Some(t.into()),
            }
        })
        .collect();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let lists = std::sync::Arc::new(AtomicUsize::new(0));
    let lister = {
        let (store, stop, lists) = (
            std::sync::Arc::clone(store),
            std::sync::Arc::clone(&stop),
            std::sync::Arc::clone(&lists),
        );
        std::thread::spawn(move || {
            let mut listed_ms = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let view = store.view();
                let n = view.tasks().count();
                assert!(n > 0);
                drop(view);
                listed_ms.push(t.elapsed().as_secs_f64() * 1e3);
                lists.fetch_add(1, Ordering::Relaxed);
            }
            listed_ms
        })
    };
    let mut times = Vec::with_capacity(APPLIES);
    // Bounded in time too: with a store whose readers block its writer,
    // each apply waits for a whole list.
    let began = Instant::now();
    for action in updates {
        if began.elapsed() > Duration::from_secs(30) {
            break;
        }
        version += 1;
        let t = Instant::now();
        let results = store.apply(
            version,
            Batch {
                transactions: vec![Transaction {
                    leader_term: 0,
                    actions: vec![action],
                    timestamp_ms: 0,
                }],
            },
        );
        times.push(t.elapsed());
        assert_eq!(results, vec![Ok(())]);
        // About a thousand applies a second, as a busy manager makes.
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Relaxed);
    let listed_ms = lister.join().unwrap();
    times.sort();
    let pick = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    println!(
        "apply while listing every task ({} applies, {} lists of {:.0} ms median): p50 {:?}, p99 {:?}, max {:?}",
        times.len(),
        listed_ms.len(),
        {
            let mut l = listed_ms.clone();
            l.sort_by(f64::total_cmp);
            l.get(l.len() / 2).copied().unwrap_or(0.0)
        },
        pick(0.50),
        pick(0.99),
        times.last().unwrap()
    );
}

fn main() {
    let services = env_usize("SHOAL_BENCH_SERVICES", 10_000);
    let per_service = env_usize("SHOAL_BENCH_TASKS_PER_SERVICE", 100);
    let total = services * per_service;
    println!("{services} services x {per_service} tasks = {total} tasks");

    // Phase 1: the store alone, for memory and read times.
    let snapshot_bytes;
    {
        let before = resident_bytes();
        let store = std::sync::Arc::new(Store::new());
        let mut version = 0;
        let mut all = actions(services, per_service).peekable();
        while all.peek().is_some() {
            version += 1;
            let part: Vec<StoreAction> = all.by_ref().take(10_000).collect();
            store.apply(
                version,
                Batch {
                    transactions: vec![Transaction {
                        leader_term: 0,
                        actions: part,
                        timestamp_ms: 0,
                    }],
                },
            );
        }
        let after = resident_bytes();
        assert_eq!(store.view().task_count(), total);
        println!(
            "resident memory: {:.0} MiB for the store, {:.0} bytes per task (services included)",
            (after - before) as f64 / 1048576.0,
            (after - before) as f64 / total as f64
        );

        let mut times = Vec::new();
        for i in 0..1_000 {
            let s = id('s', (i * 7_919) % services);
            let t = Instant::now();
            let tasks: Vec<Task> = store.view().tasks_of_service(&s).collect();
            times.push(t.elapsed());
            assert_eq!(tasks.len(), per_service);
        }
        println!(
            "list one service's {per_service} tasks by index: median {:?}, max {:?}",
            median(times.clone()),
            times.iter().max().unwrap()
        );

        let t = Instant::now();
        let content = store.snapshot();
        let bytes = content.encode_to_vec();
        println!(
            "take snapshot: {:?} ({:.0} MiB encoded, {} shared task specs)",
            t.elapsed(),
            bytes.len() as f64 / 1048576.0,
            content.task_specs.len()
        );
        snapshot_bytes = bytes.len();
        drop(content);
        let t = Instant::now();
        let decoded = StoreSnapshot::decode(bytes.as_slice()).unwrap();
        let restored = Store::new();
        restored.restore(decoded).unwrap();
        println!("restore snapshot: {:?}", t.elapsed());
        assert_eq!(restored.view().task_count(), total);
        drop(restored);
        apply_while_listing(&store, version);
    }

    // Phase 2: the same state through raft on disk, then a restart.
    let base = std::env::var_os("SHOAL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(base).unwrap();
    let config = ReplicaConfig::new(dir.path().join("raft"), 1, "127.0.0.1:0".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let replica = Replica::open(config.clone(), true).await.unwrap();
        replica.wait_leader(Duration::from_secs(60)).await.unwrap();
        let t = Instant::now();
        replica
            .proposer()
            .propose_in_parts(actions(services, per_service).collect())
            .await
            .unwrap();
        let secs = t.elapsed().as_secs_f64();
        println!(
            "ingest through raft (1,000 objects per transaction): {:.1} s, {:.0} objects/s",
            secs,
            (total + services) as f64 / secs
        );
        let t = Instant::now();
        replica.snapshot_now().await.unwrap();
        let mut metrics = replica.raft().metrics();
        let target = replica.store().version();
        tokio::time::timeout(Duration::from_secs(600), async {
            while metrics.borrow_and_update().snapshot.map_or(0, |s| s.index) < target {
                metrics.changed().await.unwrap();
            }
        })
        .await
        .expect("snapshot taken");
        println!("snapshot through raft (to disk): {:?}", t.elapsed());
        replica.shutdown().await;
        drop(replica);

        let t = Instant::now();
        let replica = Replica::open(config.clone(), false).await.unwrap();
        replica.wait_leader(Duration::from_secs(600)).await.unwrap();
        println!(
            "restart (load snapshot of {:.0} MiB, replay tail, lead): {:?}",
            snapshot_bytes as f64 / 1048576.0,
            t.elapsed()
        );
        assert_eq!(replica.store().view().task_count(), total);
        replica.shutdown().await;
    });
}
