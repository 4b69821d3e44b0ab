//! The members the benchmarks start: Shoal managers (the real binary, each
//! its own state dir and port) and etcd members, on this machine.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_shoal");

pub fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The number in environment variable `name`, or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The runtime the benchmarks' clients run on: two workers, as the cores.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

// ------------------------------------------------------------------ shoal

pub struct Manager {
    pub dir: PathBuf,
    pub child: Child,
}

impl Manager {
    pub fn spawn(dir: &Path, args: &[&str]) -> Manager {
        Manager::spawn_within(dir, args, Duration::from_secs(60))
    }

    /// Starts a manager and waits up to `within` until it answers.
    pub fn spawn_within(dir: &Path, args: &[&str], within: Duration) -> Manager {
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
        wait_for("the manager answers", within, || {
            m.cli(&["version"]).is_some()
        });
        m
    }

    pub fn cli(&self, args: &[&str]) -> Option<String> {
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

    pub fn node_id(&self) -> String {
        let v = self.cli(&["version"]).unwrap_or_default();
        v.split(" node ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// (id, MANAGER STATUS) of each manager, as this one shows them.
    pub fn statuses(&self) -> Vec<(String, String)> {
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

    pub fn healthy(&self) -> bool {
        let s = self.statuses();
        s.len() == 3
            && s.iter().filter(|(_, st)| st == "Leader").count() == 1
            && s.iter().filter(|(_, st)| st == "Reachable").count() == 2
    }
}

/// Where to join `manager` as a manager: its address and the manager token.
pub fn manager_join_args(manager: &Manager) -> (String, String) {
    let addr = manager
        .cli(&["join-token", "manager"])
        .unwrap()
        .split_whitespace()
        .skip_while(|w| *w != "--join")
        .nth(1)
        .unwrap()
        .to_string();
    let token = manager
        .cli(&["join-token", "manager", "-q"])
        .unwrap()
        .trim()
        .to_string();
    (addr, token)
}

/// A founding manager in `dir/m1` and two joined with the manager token.
pub fn three_managers(dir: &Path) -> Vec<Manager> {
    let first = Manager::spawn(&dir.join("m1"), &[]);
    let (addr, token) = manager_join_args(&first);
    let mut managers = vec![first];
    for name in ["m2", "m3"] {
        managers.push(Manager::spawn(
            &dir.join(name),
            &["--join", &addr, "--token", &token],
        ));
    }
    wait_for("three healthy managers", Duration::from_secs(60), || {
        managers.iter().all(Manager::healthy)
    });
    managers
}

/// The index of the leader among `managers`.
pub fn leader_index(managers: &[Manager]) -> usize {
    let leader = managers[0]
        .statuses()
        .into_iter()
        .find(|(_, s)| s == "Leader")
        .map(|(id, _)| id)
        .unwrap();
    managers
        .iter()
        .position(|m| m.node_id().starts_with(&leader))
        .unwrap()
}

// ------------------------------------------------------------------- etcd

pub struct Member {
    pub name: String,
    pub dir: PathBuf,
    pub client: u16,
    pub child: Option<Child>,
}

pub const ETCD_CLIENT_BASE: u16 = 23_791;
pub const ETCD_PEER_BASE: u16 = 23_801;

impl Member {
    pub fn start(&mut self, cluster: &str) {
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
    pub fn post(&self, path: &str, body: &str) -> Option<String> {
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

    pub fn status(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.post("/v3/maintenance/status", "{}")?).ok()
    }
}

/// Three etcd members in `dir`, started, with a leader; `None` when etcd
/// is not installed.
pub fn three_etcd(dir: &Path) -> Option<(Vec<Member>, String)> {
    if Command::new("etcd").arg("--version").output().is_err() {
        eprintln!("etcd: SKIPPED (not installed; apt install etcd-server)");
        return None;
    }
    let mut members: Vec<Member> = (0..3u16)
        .map(|i| Member {
            name: format!("e{i}"),
            dir: dir.join(format!("e{i}")),
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
    wait_for_etcd_leader(&members);
    Some((members, cluster))
}

pub fn wait_for_etcd_leader(members: &[Member]) {
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
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Shoal write: the creation of network `name`.
pub fn network_request(name: String) -> shoal_api::CreateNetworkRequest {
    shoal_api::CreateNetworkRequest {
        spec: Some(shoal_api::NetworkSpec {
            annotations: Some(shoal_api::Annotations {
                name,
                labels: Default::default(),
            }),
            ..Default::default()
        }),
    }
}

/// The body length an HTTP/1.1 answer's head announces, when the answer
/// is a 200; `None` otherwise.
pub fn ok_body_length(head: &str) -> Option<usize> {
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    Some(
        head.lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap_or(0))
            })
            .unwrap_or(0),
    )
}

/// A put's JSON body for etcd's HTTP gateway.
pub fn etcd_put_body(key: &str) -> String {
    format!(
        r#"{{"key":"{}","value":"{}"}}"#,
        base64_lite::encode(key.as_bytes()),
        base64_lite::encode(b"v")
    )
}

pub mod base64_lite {
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
