//! Failover of the leader under a steady write load, Shoal beside etcd in
//! the same run: three managers (three etcd members) on this machine,
//! writers on every member; `kill -9` of the leader; the time from the kill
//! to the first write started after it and accepted. The killed member
//! comes back with its disk, and the next round kills the leader again.
//!
//! `cargo bench -p shoal --bench failover` (ROUNDS=20 by default; etcd is
//! skipped, said so, when `etcd` is not installed: `apt install
//! etcd-server`).

mod peers;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peers::{
    etcd_put_body, leader_index, percentile, three_etcd, three_managers, wait_for, Manager,
};

const WRITERS_PER_MEMBER: usize = 2;
/// A write not answered in this time is given up and another started (the
/// same for both systems): a write caught in flight at the kill waits for
/// its system's own timeout otherwise (etcd's is 5 s), and the first write
/// accepted after the kill would be measured late.
const WRITE_TIMEOUT: Duration = Duration::from_millis(250);

/// Completed writes: when each started and ended.
#[derive(Default)]
struct Writes {
    done: Vec<(Instant, Instant)>,
}

impl Writes {
    /// From `kill` to the end of the first write started after it.
    fn failover(&self, kill: Instant) -> Option<Duration> {
        self.done
            .iter()
            .filter(|(start, _)| *start >= kill)
            .map(|(_, end)| *end - kill)
            .min()
    }
}

// ------------------------------------------------------------------ shoal

async fn shoal_writer(
    socket: PathBuf,
    name: String,
    writes: Arc<Mutex<Writes>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut api =
        shoal_api::control_client::ControlClient::new(shoal_api::transport::connect_unix(&socket));
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        let start = Instant::now();
        let req = peers::network_request(format!("{name}-{n}"));
        let ok = tokio::time::timeout(WRITE_TIMEOUT, api.create_network(req))
            .await
            .is_ok_and(|r| r.is_ok());
        if ok {
            writes.lock().unwrap().done.push((start, Instant::now()));
        } else {
            // A dead member's socket: a new client, after a short pause.
            tokio::time::sleep(Duration::from_millis(2)).await;
            api = shoal_api::control_client::ControlClient::new(
                shoal_api::transport::connect_unix(&socket),
            );
        }
    }
}

fn bench_shoal(rounds: usize, runtime: &tokio::runtime::Runtime) -> Vec<Duration> {
    let tmp = tempfile::tempdir().unwrap();
    let mut managers = three_managers(tmp.path());
    let mut times = Vec::new();
    for round in 0..rounds {
        wait_for("three healthy managers", Duration::from_secs(60), || {
            managers.iter().all(Manager::healthy)
        });
        let writes = Arc::new(Mutex::new(Writes::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (i, m) in managers.iter().enumerate() {
            for w in 0..WRITERS_PER_MEMBER {
                tasks.push(runtime.spawn(shoal_writer(
                    m.dir.join("shoal.sock"),
                    format!("r{round}-m{i}-w{w}"),
                    Arc::clone(&writes),
                    Arc::clone(&stop),
                )));
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        let index = leader_index(&managers);
        let kill = Instant::now();
        managers[index].child.kill().unwrap();
        let _ = managers[index].child.wait();
        wait_for("a write after the kill", Duration::from_secs(30), || {
            writes.lock().unwrap().failover(kill).is_some()
        });
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            let _ = runtime.block_on(t);
        }
        let took = writes.lock().unwrap().failover(kill).unwrap();
        eprintln!("shoal round {round}: {} ms", took.as_millis());
        times.push(took);
        let dir = managers[index].dir.clone();
        managers[index] = Manager::spawn(&dir, &[]);
    }
    times
}

// ------------------------------------------------------------------- etcd

/// One writer on one member: keep-alive HTTP puts.
fn etcd_writer(
    port: u16,
    name: String,
    writes: Arc<Mutex<Writes>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut conn: Option<std::net::TcpStream> = None;
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        let start = Instant::now();
        let body = etcd_put_body(&format!("{name}-{n}"));
        let ok = (|| -> Option<()> {
            if conn.is_none() {
                let s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
                s.set_read_timeout(Some(WRITE_TIMEOUT)).ok()?;
                s.set_nodelay(true).ok()?;
                conn = Some(s);
            }
            let s = conn.as_mut()?;
            write!(
                s,
                "POST /v3/kv/put HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .ok()?;
            let mut buf = Vec::new();
            let mut byte = [0u8; 4096];
            // Headers, then Content-Length bytes of body.
            let (head_end, length) = loop {
                let got = s.read(&mut byte).ok()?;
                if got == 0 {
                    return None;
                }
                buf.extend_from_slice(&byte[..got]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let length = peers::ok_body_length(&String::from_utf8_lossy(&buf[..i]))?;
                    break (i + 4, length);
                }
            };
            while buf.len() < head_end + length {
                let got = s.read(&mut byte).ok()?;
                if got == 0 {
                    return None;
                }
                buf.extend_from_slice(&byte[..got]);
            }
            let body = String::from_utf8_lossy(&buf[head_end..]);
            // A put that failed says so in an error body.
            (!body.contains("\"error\"")).then_some(())
        })()
        .is_some();
        if ok {
            writes.lock().unwrap().done.push((start, Instant::now()));
        } else {
            conn = None;
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn bench_etcd(rounds: usize) -> Option<Vec<Duration>> {
    let tmp = tempfile::tempdir().unwrap();
    let (mut members, cluster) = three_etcd(tmp.path())?;
    let mut times = Vec::new();
    for round in 0..rounds {
        peers::wait_for_etcd_leader(&members);
        let writes = Arc::new(Mutex::new(Writes::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut threads = Vec::new();
        for (i, m) in members.iter().enumerate() {
            for w in 0..WRITERS_PER_MEMBER {
                let (port, writes, stop) = (m.client, Arc::clone(&writes), Arc::clone(&stop));
                let name = format!("r{round}-m{i}-w{w}");
                threads.push(std::thread::spawn(move || {
                    etcd_writer(port, name, writes, stop)
                }));
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        let status = members[0].status().unwrap();
        let leader_id = status["leader"].clone();
        let index = members
            .iter()
            .position(|m| {
                m.status()
                    .is_some_and(|s| s["header"]["member_id"] == leader_id)
            })
            .unwrap();
        let kill = Instant::now();
        let mut child = members[index].child.take().unwrap();
        child.kill().unwrap();
        let _ = child.wait();
        wait_for(
            "an etcd write after the kill",
            Duration::from_secs(60),
            || writes.lock().unwrap().failover(kill).is_some(),
        );
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in threads {
            let _ = t.join();
        }
        let took = writes.lock().unwrap().failover(kill).unwrap();
        eprintln!("etcd round {round}: {} ms", took.as_millis());
        times.push(took);
        members[index].start(&cluster);
    }
    Some(times)
}

fn report(name: &str, mut times: Vec<Duration>) {
    times.sort();
    println!(
        "{name}: {} kills, kill -9 of the leader to the first write accepted after it: p50 {} ms, p99 {} ms, max {} ms",
        times.len(),
        percentile(&times, 0.5).as_millis(),
        percentile(&times, 0.99).as_millis(),
        times.last().map_or(0, |t| t.as_millis()),
    );
}

fn main() {
    let rounds: usize = peers::env_or("ROUNDS", 20);
    let runtime = peers::runtime();
    let shoal = bench_shoal(rounds, &runtime);
    let etcd = bench_etcd(rounds);
    report("shoal", shoal);
    if let Some(etcd) = etcd {
        report("etcd 3.4", etcd);
    }
}
