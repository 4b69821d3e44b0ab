//! Write path through raft with fsync: one writer, 64 writers, batches of 100
//! objects, beside the raw fdatasync rate of the same directory (one fdatasync
//! per commit is the physical limit of a lone writer).
//!
//! `cargo bench -p shoal-raft --bench write_path` (SHOAL_BENCH_DIR picks the
//! directory; default: cargo's target tmp dir, on the repository's disk).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_api::{
    store_action, Runtime, StoreAction, Task, TaskSpec, TaskState, TaskStatus, Transaction,
};
use shoal_raft::{Replica, ReplicaConfig};

const PHASE: Duration = Duration::from_secs(5);

fn bench_dir() -> PathBuf {
    let base = std::env::var_os("SHOAL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap().keep()
}

/// A task as the orchestrator creates it: spec included (about 250 bytes
/// encoded). Tasks are what an orchestrator writes most: creations and
/// status updates.
fn task(id: String) -> Task {
    Task {
        service_id: "service0000000000000000001".into(),
        slot: 1,
        desired_state: TaskState::Running as i32,
        spec: Some(TaskSpec {
            runtime: Some(Runtime {
                command: vec!["python3".into(), "-m".into(), "http.server".into()],
                env: vec!["A=1".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: Some(TaskStatus {
            state: TaskState::New as i32,
            message: "created".into(),
            ..Default::default()
        }),
        id,
        ..Default::default()
    }
}

fn create(objects: impl Iterator<Item = String>) -> Transaction {
    Transaction {
        leader_term: 0,
        actions: objects
            .map(|id| StoreAction {
                kind: store_action::Kind::Create as i32,
                target: Some(task(id).into()),
            })
            .collect(),
        timestamp_ms: 0,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn raw_fdatasync_rate(dir: &std::path::Path, phase: Duration) -> f64 {
    let mut f = std::fs::File::create(dir.join("fdatasync-probe")).unwrap();
    let block = vec![7u8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < phase {
        f.write_all(&block).unwrap();
        f.sync_data().unwrap();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Commits of one 300-byte value to a bare redb file: the floor of any log
/// kept in redb, whatever runs above it.
fn raw_redb_commit_rate(dir: &std::path::Path, phase: Duration) -> f64 {
    const TABLE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("probe");
    let db = redb::Database::create(dir.join("redb-probe.redb")).unwrap();
    let value = vec![7u8; 300];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < phase {
        let txn = db.begin_write().unwrap();
        txn.open_table(TABLE)
            .unwrap()
            .insert(n, value.as_slice())
            .unwrap();
        txn.commit().unwrap();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Runs `writers` concurrent writers for one phase, each proposing
/// transactions of `per_txn` objects; returns (objects/s, txns/s, p50, p99).
async fn run(
    replica: &Arc<Replica>,
    writers: usize,
    per_txn: usize,
    tag: &str,
    phase: Duration,
) -> (f64, f64, Duration, Duration) {
    let start = Instant::now();
    let mut handles = Vec::new();
    for w in 0..writers {
        let r = Arc::clone(replica);
        let tag = tag.to_string();
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0usize;
            while start.elapsed() < phase {
                let txn = create((0..per_txn).map(|i| format!("{tag}-{w}-{n}-{i}")));
                let t = Instant::now();
                r.propose(txn).await.expect("write acknowledged");
                latencies.push(t.elapsed());
                n += 1;
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    let txns = all.len() as f64 / secs;
    (
        txns * per_txn as f64,
        txns,
        percentile(&all, 0.5),
        percentile(&all, 0.99),
    )
}

fn main() {
    let dir = bench_dir();
    println!("directory: {}", dir.display());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = ReplicaConfig::new(dir.join("raft"), 1, "127.0.0.1:0".into());
        let replica = Arc::new(Replica::open(config, true).await.unwrap());
        replica.wait_leader(Duration::from_secs(30)).await.unwrap();
        // The disk's fsync rate drifts by tens of percent from minute to
        // minute on shared machines: measure raw and raft in alternating
        // slices and compare the medians.
        let slice = Duration::from_secs(2);
        // SHOAL_BENCH_ONLY=64 runs only the 64-writer phase (for profiling).
        if std::env::var("SHOAL_BENCH_ONLY").as_deref() == Ok("64") {
            let (w, _, p50, p99) = run(&replica, 64, 1, "many", PHASE).await;
            println!("64 writers, 1 object per write: {w:.0} writes/s, p50 {p50:?}, p99 {p99:?}");
            return;
        }
        let (mut raws, mut singles, mut p50s, mut p99s) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut redbs = Vec::new();
        for round in 0..5 {
            raws.push(raw_fdatasync_rate(&dir, slice));
            redbs.push(raw_redb_commit_rate(&dir, slice));
            let (w, _, p50, p99) = run(&replica, 1, 1, &format!("one{round}"), slice).await;
            singles.push(w);
            p50s.push(p50);
            p99s.push(p99);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        let (raw, single, redb) = (median(&mut raws), median(&mut singles), median(&mut redbs));
        p50s.sort();
        p99s.sort();
        println!("raw fdatasync (4 KiB writes): {raw:.0}/s (median of 5 slices of 2 s)");
        println!("bare redb commit of one 300-byte value: {redb:.0}/s ({:.0}% of raw fdatasync)", 100.0 * redb / raw);
        println!(
            "1 writer, 1 object per write: {single:.0} writes/s ({:.0}% of raw fdatasync), p50 {:?}, p99 {:?} (medians of the 5 slices)",
            100.0 * single / raw,
            p50s[2],
            p99s[2]
        );
        let (w, _, p50, p99) = run(&replica, 64, 1, "many", PHASE).await;
        println!("64 writers, 1 object per write: {w:.0} writes/s, p50 {p50:?}, p99 {p99:?}");
        let (o, t, p50, p99) = run(&replica, 1, 100, "batch1", PHASE).await;
        println!("1 writer, 100 objects per transaction: {o:.0} objects/s ({t:.0} txns/s), p50 {p50:?}, p99 {p99:?}");
        let (o, t, p50, p99) = run(&replica, 16, 100, "batch16", PHASE).await;
        println!("16 writers, 100 objects per transaction: {o:.0} objects/s ({t:.0} txns/s), p50 {p50:?}, p99 {p99:?}");
        replica.shutdown().await;
    });
    let _ = std::fs::remove_dir_all(&dir);
}
