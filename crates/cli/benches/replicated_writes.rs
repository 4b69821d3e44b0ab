//! Replicated writes on three managers, Shoal beside etcd in the same run:
//! 1, 64 and 1,000 concurrent clients writing to the leader for a fixed
//! time each; writes/s and p99 latency. A Shoal write is a control-API
//! create (a network, validated, committed by two of three managers with
//! fsync, applied); an etcd write a put through its HTTP gateway, one
//! keep-alive connection per client.
//!
//! `cargo bench -p shoal --bench replicated_writes` (SECONDS=5 per level
//! by default; CLIENTS=1000 runs that level alone, CONNECTIONS=4 shares
//! four HTTP/2 connections instead of 16, ETCD=0 skips etcd; etcd is
//! skipped, said so, when not installed).

mod peers;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peers::{etcd_put_body, leader_index, percentile, three_etcd, three_managers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LEVELS: [usize; 3] = [1, 64, 1_000];
/// HTTP/2 connections the Shoal clients share at most.
const SHOAL_CONNECTIONS: usize = 16;

struct Outcome {
    writes: usize,
    seconds: f64,
    p99: Duration,
}

impl Outcome {
    fn of(latencies: Vec<Duration>, seconds: f64) -> Outcome {
        let mut sorted = latencies;
        sorted.sort();
        Outcome {
            writes: sorted.len(),
            seconds,
            p99: if sorted.is_empty() {
                Duration::ZERO
            } else {
                percentile(&sorted, 0.99)
            },
        }
    }

    fn line(&self, name: &str, clients: usize) -> String {
        format!(
            "{name}: {clients} clients: {:.0} writes/s, p99 {:.1} ms",
            self.writes as f64 / self.seconds,
            self.p99.as_secs_f64() * 1_000.0
        )
    }
}

async fn shoal_level(
    socket: &std::path::Path,
    clients: usize,
    seconds: u64,
    level: usize,
) -> Outcome {
    let channels: Vec<_> = (0..clients.min(peers::env_or("CONNECTIONS", SHOAL_CONNECTIONS).max(1)))
        .map(|_| shoal_api::transport::connect_unix(socket))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut api =
            shoal_api::control_client::ControlClient::new(channels[c % channels.len()].clone());
        let (stop, latencies) = (Arc::clone(&stop), Arc::clone(&latencies));
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let req = peers::network_request(format!("l{level}-c{c}-{n}"));
                let start = Instant::now();
                if api.create_network(req).await.is_ok() {
                    mine.push(start.elapsed());
                }
            }
            latencies.lock().unwrap().extend(mine);
        }));
    }
    run_for(seconds, &stop, tasks, &latencies).await
}

/// Lets the clients' `tasks` write for `seconds`, then stops them: what
/// they did.
async fn run_for(
    seconds: u64,
    stop: &AtomicBool,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    latencies: &Mutex<Vec<Duration>>,
) -> Outcome {
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    let latencies = std::mem::take(&mut *latencies.lock().unwrap());
    Outcome::of(latencies, seconds)
}

/// One keep-alive put on `stream`: whether it was accepted.
async fn etcd_put(stream: &mut tokio::net::TcpStream, body: &str) -> Option<()> {
    let request = format!(
        "POST /v3/kv/put HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_end, length) = loop {
        let got = stream.read(&mut chunk).await.ok()?;
        if got == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..got]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let length = peers::ok_body_length(&String::from_utf8_lossy(&buf[..i]))?;
            break (i + 4, length);
        }
    };
    while buf.len() < head_end + length {
        let got = stream.read(&mut chunk).await.ok()?;
        if got == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..got]);
    }
    (!String::from_utf8_lossy(&buf[head_end..]).contains("\"error\"")).then_some(())
}

async fn etcd_level(port: u16, clients: usize, seconds: u64, level: usize) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (stop, latencies) = (Arc::clone(&stop), Arc::clone(&latencies));
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut n = 0u64;
            let mut conn: Option<tokio::net::TcpStream> = None;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                if conn.is_none() {
                    conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .ok();
                    if let Some(s) = &conn {
                        let _ = s.set_nodelay(true);
                    }
                }
                let Some(stream) = conn.as_mut() else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let body = etcd_put_body(&format!("l{level}-c{c}-{n}"));
                let start = Instant::now();
                match etcd_put(stream, &body).await {
                    Some(()) => mine.push(start.elapsed()),
                    None => conn = None,
                }
            }
            latencies.lock().unwrap().extend(mine);
        }));
    }
    run_for(seconds, &stop, tasks, &latencies).await
}

fn main() {
    let seconds: u64 = peers::env_or("SECONDS", 5);
    let runtime = peers::runtime();
    let levels: Vec<usize> = match std::env::var("CLIENTS") {
        Ok(v) => v
            .split(',')
            .map(|c| match c.trim().parse() {
                Ok(n) if n > 0 => n,
                _ => panic!("CLIENTS={v}: a comma-separated list of client counts above 0"),
            })
            .collect(),
        Err(_) => LEVELS.to_vec(),
    };
    let mut lines = Vec::new();
    {
        let tmp = tempfile::tempdir().unwrap();
        let managers = three_managers(tmp.path());
        let socket = managers[leader_index(&managers)].dir.join("shoal.sock");
        for (level, &clients) in levels.iter().enumerate() {
            let outcome = runtime.block_on(shoal_level(&socket, clients, seconds, level));
            eprintln!("{}", outcome.line("shoal", clients));
            lines.push(outcome.line("shoal", clients));
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let etcd = if peers::env_or("ETCD", 1) == 0 {
        None
    } else {
        three_etcd(tmp.path())
    };
    if let Some((members, _)) = etcd {
        let leader = members[0].status().unwrap()["leader"].clone();
        let port = members
            .iter()
            .find(|m| {
                m.status()
                    .is_some_and(|s| s["header"]["member_id"] == leader)
            })
            .map(|m| m.client)
            .unwrap();
        for (level, &clients) in levels.iter().enumerate() {
            let outcome = runtime.block_on(etcd_level(port, clients, seconds, level));
            eprintln!("{}", outcome.line("etcd 3.4", clients));
            lines.push(outcome.line("etcd 3.4", clients));
        }
    }
    for line in lines {
        println!("{line}");
    }
}
