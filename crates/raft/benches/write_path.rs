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
    store_action, Annotations, Runtime, Service, ServiceSpec, StoreAction, TaskSpec, Transaction,
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

fn service(id: String) -> Service {
    Service {
        spec: Some(ServiceSpec {
            annotations: Some(Annotations {
                name: id.clone(),
                labels: [("tier".to_string(), "front".to_string())].into(),
            }),
            task: Some(TaskSpec {
                runtime: Some(Runtime {
                    command: vec!["python3".into(), "-m".into(), "http.server".into()],
                    env: vec!["A=1".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            replicas: Some(3),
            ..Default::default()
        }),
        id,
        ..Default::default()
    }
}

fn create(objects: impl Iterator<Item = String>) -> Transaction {
    Transaction {
        actions: objects
            .map(|id| StoreAction {
                kind: store_action::Kind::Create as i32,
                target: Some(service(id).into()),
            })
            .collect(),
        timestamp_ms: 0,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn raw_fdatasync_rate(dir: &std::path::Path) -> f64 {
    let mut f = std::fs::File::create(dir.join("fdatasync-probe")).unwrap();
    let block = vec![7u8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < PHASE {
        f.write_all(&block).unwrap();
        f.sync_data().unwrap();
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
) -> (f64, f64, Duration, Duration) {
    let start = Instant::now();
    let mut handles = Vec::new();
    for w in 0..writers {
        let r = Arc::clone(replica);
        let tag = tag.to_string();
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0usize;
            while start.elapsed() < PHASE {
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
    let raw = raw_fdatasync_rate(&dir);
    println!("raw fdatasync (4 KiB writes): {raw:.0}/s");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let replica = Arc::new(Replica::open(ReplicaConfig::new(dir.join("raft"), 1, "127.0.0.1:0".into()), true).await.unwrap());
        replica.wait_leader(Duration::from_secs(30)).await.unwrap();
        let (w, _, p50, p99) = run(&replica, 1, 1, "one").await;
        println!("1 writer, 1 object per write: {w:.0} writes/s ({:.0}% of raw fdatasync), p50 {p50:?}, p99 {p99:?}", 100.0 * w / raw);
        let (w, _, p50, p99) = run(&replica, 64, 1, "many").await;
        println!("64 writers, 1 object per write: {w:.0} writes/s, p50 {p50:?}, p99 {p99:?}");
        let (o, t, p50, p99) = run(&replica, 1, 100, "batch1").await;
        println!("1 writer, 100 objects per transaction: {o:.0} objects/s ({t:.0} txns/s), p50 {p50:?}, p99 {p99:?}");
        let (o, t, p50, p99) = run(&replica, 16, 100, "batch16").await;
        println!("16 writers, 100 objects per transaction: {o:.0} objects/s ({t:.0} txns/s), p50 {p50:?}, p99 {p99:?}");
        replica.shutdown().await;
    });
    let _ = std::fs::remove_dir_all(&dir);
}
