//! Failover of the leader under a steady write load, Shoal beside etcd in
//! the same run: three managers (three etcd members) on this machine,
//! writers on every member; `kill -9` of the leader; the time from the kill
//! to the first write started after it and accepted. The killed member
//! comes back with its disk, and the next round kills the leader again.
//!
//! `cargo bench -p shoal --bench failover` (ROUNDS=20 by default; etcd is
//! skipped, said so, when `etcd` is not installed: `apt install
//! etcd-server`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_shoal");
const WRITERS_PER_MEMBER: usize = 2;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

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

struct Manager {
    dir: PathBuf,
    child: Child,
}

impl Manager {
    fn spawn(dir: &Path, args: &[&str]) -> Manager {
        let log = std::fs::File::create(dir.with_extension("log")).unwrap();
        let child = Command::new(BIN)
            .args(["daemon", "--state-dir"])
            .arg(dir)
            .args(["--listen-addr", "127.0.0.1:0"])
            .args(args)
            .env("SHOAL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let m = Manager {
            dir: dir.to_path_buf(),
            child,
        };
        wait_for("the manager answers", Duration::from_secs(60), || {
            m.cli(&["version"]).is_some()
        });
        m
    }

    fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new(BIN)
            .arg("--socket")
            .arg(self.dir.join("shoal.sock"))
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    }

    fn node_id(&self) -> String {
        let v = self.cli(&["version"]).unwrap_or_default();
        v.split(" node ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// (id, MANAGER STATUS) of each manager, as this one shows them.
    fn statuses(&self) -> Vec<(String, String)> {
        let Some(out) = self.cli(&["node", "ls", "--format", "json"]) else {
            return Vec::new();
        };
        out.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| r["manager_status"] != "")
            .map(|r| {
                (
                    r["id"].as_str().unwrap_or_default().to_string(),
                    r["manager_status"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    fn healthy(&self) -> bool {
        let s = self.statuses();
        s.len() == 3
            && s.iter().filter(|(_, st)| st == "Leader").count() == 1
            && s.iter().filter(|(_, st)| st == "Reachable").count() == 2
    }
}

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
        let req = shoal_api::CreateNetworkRequest {
            spec: Some(shoal_api::NetworkSpec {
                annotations: Some(shoal_api::Annotations {
                    name: format!("{name}-{n}"),
                    labels: Default::default(),
                }),
                ..Default::default()
            }),
        };
        let ok = tokio::time::timeout(Duration::from_secs(5), api.create_network(req))
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
    let first = Manager::spawn(&tmp.path().join("m1"), &[]);
    let addr = first
        .cli(&["join-token", "manager"])
        .unwrap()
        .split_whitespace()
        .skip_while(|w| *w != "--join")
        .nth(1)
        .unwrap()
        .to_string();
    let token = first
        .cli(&["join-token", "manager", "-q"])
        .unwrap()
        .trim()
        .to_string();
    let mut managers = vec![first];
    for name in ["m2", "m3"] {
        managers.push(Manager::spawn(
            &tmp.path().join(name),
            &["--join", &addr, "--token", &token],
        ));
    }
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
        let leader = managers[0]
            .statuses()
            .into_iter()
            .find(|(_, s)| s == "Leader")
            .map(|(id, _)| id)
            .unwrap();
        let index = managers
            .iter()
            .position(|m| m.node_id().starts_with(&leader))
            .unwrap();
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
    for m in &mut managers {
        let _ = m.child.kill();
        let _ = m.child.wait();
    }
    times
}

// ------------------------------------------------------------------- etcd

struct Member {
    name: String,
    dir: PathBuf,
    client: u16,
    child: Option<Child>,
}

const ETCD_CLIENT_BASE: u16 = 23_791;
const ETCD_PEER_BASE: u16 = 23_801;

impl Member {
    fn start(&mut self, cluster: &str) {
        let log = std::fs::File::create(self.dir.with_extension("log")).unwrap();
        let peer = self.client - ETCD_CLIENT_BASE + ETCD_PEER_BASE;
        let child = Command::new("etcd")
            .args(["--name", &self.name, "--data-dir"])
            .arg(&self.dir)
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{}", self.client),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{}", self.client),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-cluster",
                cluster,
                "--initial-cluster-state",
                "new",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// `POST path` with a JSON body on a fresh connection: the answer's body.
    fn post(&self, path: &str, body: &str) -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.client)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).ok()?;
        let (head, body) = answer.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_string())
    }

    fn status(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.post("/v3/maintenance/status", "{}")?).ok()
    }
}

/// One writer on one member: keep-alive HTTP puts.
fn etcd_writer(
    port: u16,
    name: String,
    writes: Arc<Mutex<Writes>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    use base64_lite::encode;
    let mut conn: Option<std::net::TcpStream> = None;
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        let start = Instant::now();
        let body = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            encode(format!("{name}-{n}").as_bytes()),
            encode(b"v")
        );
        let ok = (|| -> Option<()> {
            if conn.is_none() {
                let s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
                s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
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
                    let head = String::from_utf8_lossy(&buf[..i]).to_string();
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if !head.starts_with("HTTP/1.1 200") {
                        return None;
                    }
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

mod base64_lite {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

fn bench_etcd(rounds: usize) -> Option<Vec<Duration>> {
    if Command::new("etcd").arg("--version").output().is_err() {
        eprintln!("etcd: SKIPPED (not installed; apt install etcd-server)");
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut members: Vec<Member> = (0..3u16)
        .map(|i| Member {
            name: format!("e{i}"),
            dir: tmp.path().join(format!("e{i}")),
            client: ETCD_CLIENT_BASE + i,
            child: None,
        })
        .collect();
    let cluster = members
        .iter()
        .map(|m| {
            format!(
                "{}=http://127.0.0.1:{}",
                m.name,
                m.client - ETCD_CLIENT_BASE + ETCD_PEER_BASE
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    for m in &mut members {
        m.start(&cluster);
    }
    let mut times = Vec::new();
    for round in 0..rounds {
        wait_for(
            "three etcd members with a leader",
            Duration::from_secs(60),
            || {
                let statuses: Vec<_> = members.iter().filter_map(Member::status).collect();
                statuses.len() == 3
                    && statuses
                        .iter()
                        .all(|s| s["leader"].is_string() && s["leader"] == statuses[0]["leader"])
            },
        );
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
    for m in &mut members {
        if let Some(mut c) = m.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
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
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let shoal = bench_shoal(rounds, &runtime);
    let etcd = bench_etcd(rounds);
    report("shoal", shoal);
    if let Some(etcd) = etcd {
        report("etcd 3.4", etcd);
    }
}
