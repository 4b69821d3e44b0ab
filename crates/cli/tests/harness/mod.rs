//! Runs the real `shoal` binary: a daemon in its own temp state dir, and CLI
//! commands against it. Every wait polls with a generous bound.

#![allow(dead_code)]

pub mod host;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_shoal");
/// Generous: the CI box is a loaded 2-core machine.
pub const READY_WITHIN: Duration = Duration::from_secs(90);

pub struct Daemon {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// The daemon's stderr, kept across restarts on the same state dir: a
    /// file, so a chatty daemon never blocks on a pipe nobody reads.
    pub log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// Starts a daemon on `state_dir` and waits until it answers.
    pub fn start(state_dir: &Path) -> Daemon {
        let mut daemon = Daemon::spawn(state_dir);
        daemon.wait_ready();
        daemon
    }

    /// Starts a daemon without waiting, on a free loopback port.
    pub fn spawn(state_dir: &Path) -> Daemon {
        Daemon::spawn_with(state_dir, &["--listen-addr", "127.0.0.1:0"])
    }

    /// Starts a daemon with `args` after `daemon --state-dir DIR`, and waits
    /// until it answers.
    pub fn start_with(state_dir: &Path, args: &[&str]) -> Daemon {
        let mut daemon = Daemon::spawn_with(state_dir, args);
        daemon.wait_ready();
        daemon
    }

    /// Starts a daemon with `args` after `daemon --state-dir DIR`.
    pub fn spawn_with(state_dir: &Path, args: &[&str]) -> Daemon {
        Daemon::spawn_in(None, state_dir, args)
    }

    /// Starts a daemon in the network namespace `netns` (another host, as
    /// far as the network goes), and waits until it answers.
    pub fn start_in(netns: &str, state_dir: &Path, args: &[&str]) -> Daemon {
        let mut daemon = Daemon::spawn_in(Some(netns), state_dir, args);
        daemon.wait_ready();
        daemon
    }

    /// Starts a daemon, in `netns` when given (`ip netns exec` execs the
    /// daemon: the child is the daemon itself).
    pub fn spawn_in(netns: Option<&str>, state_dir: &Path, args: &[&str]) -> Daemon {
        Daemon::spawn_env(netns, state_dir, args, &[])
    }

    /// Starts a daemon with `envs` set, and waits until it answers.
    pub fn start_env(state_dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Daemon {
        let mut daemon = Daemon::spawn_env(None, state_dir, args, envs);
        daemon.wait_ready();
        daemon
    }

    /// Starts a daemon, in `netns` when given, with `envs` set.
    pub fn spawn_env(
        netns: Option<&str>,
        state_dir: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Daemon {
        let socket = state_dir.join("shoal.sock");
        let mut log = state_dir.as_os_str().to_owned();
        log.push(".daemon.log");
        let log = PathBuf::from(log);
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("the daemon's log opens");
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, BIN]);
                c
            }
            None => Command::new(BIN),
        };
        let child = command
            .args(["daemon", "--state-dir"])
            .arg(state_dir)
            .args(args)
            .envs(envs.iter().copied())
            // Enough to follow a failed test's daemon through its log.
            .env(
                "SHOAL_LOG",
                std::env::var("SHOAL_LOG").unwrap_or("info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("daemon starts");
        Daemon {
            state_dir: state_dir.to_path_buf(),
            socket,
            log,
            child: Some(child),
        }
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!("daemon exited with {status}: {}", self.log_text());
                }
            }
            if self.shoal(&["version"]).status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready within {READY_WITHIN:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs a client command against this daemon. Changes to services
    /// return at once (`SHOAL_DETACH`): tests wait for what they check;
    /// [`Daemon::shoal_waiting`] runs one as a user's would.
    pub fn shoal(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("SHOAL_SOCKET", &self.socket)
            .env("SHOAL_DETACH", "true")
            .env_remove("SHOAL_STATE_DIR")
            .stdin(Stdio::null())
            .output()
            .expect("shoal runs")
    }

    /// Runs a client command as a user's shell would: a change to a service
    /// waits for it to converge.
    pub fn shoal_waiting(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("SHOAL_SOCKET", &self.socket)
            .env_remove("SHOAL_DETACH")
            .env_remove("SHOAL_STATE_DIR")
            .stdin(Stdio::null())
            .output()
            .expect("shoal runs")
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.shoal(args);
        assert!(
            out.status.success(),
            "shoal {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a command that must fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.shoal(args);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(
            !out.status.success(),
            "shoal {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            stderr.starts_with("Error: "),
            "shoal {args:?}: error not in the `Error: …` form: {stderr}"
        );
        stderr
    }

    /// Runs a client command that keeps printing (`logs -f`): the child,
    /// and its stdout's lines as they come.
    pub fn follow(&self, args: &[&str]) -> (Child, std::sync::mpsc::Receiver<String>) {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new(BIN)
            .args(args)
            .env("SHOAL_SOCKET", &self.socket)
            .env("SHOAL_DETACH", "true")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("shoal runs");
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        (child, rx)
    }

    /// Waits up to `within` for the daemon to exit on its own; its status.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends `signal` (SIGSTOP to pause, SIGCONT to go on).
    pub fn signal(&self, signal: i32) {
        assert_eq!(nix_kill(self.pid(), signal), 0, "signal {signal}");
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix_kill(child.id(), libc::SIGTERM);
            let status = child.wait().unwrap();
            assert!(
                status.success(),
                "daemon stopped uncleanly: {}",
                self.log_text()
            );
        }
    }

    /// What the daemon has written to stderr so far, over all its restarts.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn nix_kill(pid: u32, signal: i32) -> i32 {
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid as i32, signal) }
}

impl Drop for Daemon {
    /// Task processes outlive their daemon by design (a restart adopts them);
    /// a test's must not outlive the test.
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "--- daemon log {} ---\n{}",
                self.log.display(),
                self.log_text()
            );
        }
        for pgid in shoal_agent::find_task_processes(&self.state_dir.join("tasks")).into_values() {
            shoal_agent::kill_group(pgid);
        }
    }
}

/// Runs the binary with no daemon, e.g. `shoal daemon` on a bad state dir.
pub fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("SHOAL_SOCKET")
        .env_remove("SHOAL_STATE_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("shoal runs")
}

/// Runs `shoal daemon` on `state_dir` (a free loopback port) with `args`
/// in the foreground, for a start that must fail: its output.
pub fn run_daemon(state_dir: &Path, args: &[&str]) -> Output {
    let dir = state_dir.to_str().expect("a UTF-8 path");
    let mut all = vec!["daemon", "--listen-addr", "127.0.0.1:0", "--state-dir", dir];
    all.extend_from_slice(args);
    run(&all)
}

/// Lines of `--format json` output, parsed.
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

/// Polls `done` until it holds, failing after [`READY_WITHIN`].
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + READY_WITHIN;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "not within {READY_WITHIN:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Returns once the orchestrator has made a pass over a store that holds
/// everything committed before this call: it creates a marker service and
/// waits for its task, which a pass can only make after it has seen every
/// earlier change (changes are observed in commit order). What a test
/// expects *not* to happen has then had its chance.
pub fn after_an_orchestrator_pass(d: &Daemon) {
    static MARKERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let name = format!(
        "pass-marker-{}",
        MARKERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    d.ok(&["service", "create", "--name", &name, "--", "sleep", "1000"]);
    wait_until("the orchestrator's marker task", || {
        !d.ok(&["service", "ps", "-q", &name]).trim().is_empty()
    });
    d.ok(&["service", "rm", &name]);
}

/// A service's REPLICAS column in `service ls` (`3/3`), empty if absent.
pub fn replicas(d: &Daemon, service: &str) -> String {
    json_lines(&d.ok(&["service", "ls", "--format", "json"]))
        .into_iter()
        .find(|s| s["name"] == service)
        .map(|s| s["replicas"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

/// The address a manager advertises and its worker token, as
/// `join-token worker` prints them.
pub fn join_args(manager: &Daemon) -> (String, String) {
    let shown = manager.ok(&["join-token", "worker"]);
    let addr = shown
        .split_whitespace()
        .skip_while(|w| *w != "--join")
        .nth(1)
        .unwrap_or_else(|| panic!("no join command in {shown}"))
        .to_string();
    let token = manager
        .ok(&["join-token", "worker", "-q"])
        .trim()
        .to_string();
    assert!(shown.contains(&token), "{shown}");
    (addr, token)
}

/// A worker joined to `manager`'s cluster from the empty `dir`.
pub fn join(dir: &Path, manager: &Daemon) -> Daemon {
    let (addr, token) = join_args(manager);
    Daemon::start_with(dir, &["--join", &addr, "--token", &token])
}

/// The version of node `id`'s object: each session the node opens records
/// it anew, so a greater one means a new session.
pub fn node_version(manager: &Daemon, id: &str) -> u64 {
    let nodes: Vec<serde_json::Value> =
        serde_json::from_str(&manager.ok(&["node", "inspect", id])).unwrap();
    nodes[0]["meta"]["version"].as_u64().unwrap()
}

/// The processes of `d`'s tasks, by task id.
pub fn task_processes(d: &Daemon) -> std::collections::HashMap<String, u32> {
    shoal_agent::find_task_processes(&d.state_dir.join("tasks"))
}

/// The processes of `service`'s tasks on `d` (other services' left out:
/// the orchestrator-pass marker may run anywhere).
pub fn service_processes(
    d: &Daemon,
    manager: &Daemon,
    service: &str,
) -> std::collections::HashMap<String, u32> {
    let ids: Vec<String> = json_lines(&manager.ok(&["service", "ps", service, "--format", "json"]))
        .iter()
        .filter_map(|t| t["id"].as_str().map(str::to_string))
        .collect();
    task_processes(d)
        .into_iter()
        .filter(|(id, _)| ids.iter().any(|short| id.starts_with(short.as_str())))
        .collect()
}

/// Creates the service `web` of `replicas` sleeping tasks on `manager`.
pub fn create_web(manager: &Daemon, replicas: usize) {
    manager.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        &replicas.to_string(),
        "--",
        "sleep",
        "600",
    ]);
}

/// Waits until `n` task processes run on `manager` and `worker` together,
/// some on each.
pub fn wait_spread(manager: &Daemon, worker: &Daemon, n: usize) {
    wait_until("tasks run on both nodes", || {
        let (m, w) = (task_processes(manager).len(), task_processes(worker).len());
        m > 0 && w > 0 && m + w == n
    });
}

/// A manager joined to `manager`'s cluster from the empty `dir`, with the
/// manager token, on a free loopback port.
pub fn join_manager(dir: &Path, manager: &Daemon) -> Daemon {
    let token = manager
        .ok(&["join-token", "manager", "-q"])
        .trim()
        .to_string();
    join_listening(dir, manager, &token)
}

/// A node joined to `manager`'s cluster from the empty `dir` with `token`,
/// its node listener on a free loopback port (a manager's, or a worker's
/// that may be promoted).
pub fn join_listening(dir: &Path, manager: &Daemon, token: &str) -> Daemon {
    let (addr, _) = join_args(manager);
    Daemon::start_with(
        dir,
        &[
            "--listen-addr",
            "127.0.0.1:0",
            "--join",
            &addr,
            "--token",
            token,
        ],
    )
}

/// `node ls` on `d`: each manager's id and MANAGER STATUS column.
pub fn manager_statuses(d: &Daemon) -> Vec<(String, String)> {
    let out = d.shoal(&["node", "ls", "--format", "json"]);
    if !out.status.success() {
        return Vec::new();
    }
    json_lines(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .filter(|r| r["manager_status"] != "")
        .map(|r| {
            (
                r["id"].as_str().unwrap_or_default().to_string(),
                r["manager_status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Whether `d` shows `n` managers: one Leader, the others Reachable.
pub fn shows_managers(d: &Daemon, n: usize) -> bool {
    let statuses = manager_statuses(d);
    statuses.len() == n
        && statuses.iter().filter(|(_, s)| s == "Leader").count() == 1
        && statuses.iter().filter(|(_, s)| s == "Reachable").count() == n - 1
}

/// Every task of `service` not yet reaped, as `task inspect` on `d` shows
/// them.
///
/// A task listed can be reaped before it is inspected (a service whose
/// tasks keep failing churns through its history): the pair is then taken
/// again.
pub fn all_tasks(d: &Daemon, service: &str) -> Vec<serde_json::Value> {
    for _ in 0..50 {
        let ids = d.ok(&["service", "ps", "-a", "-q", service]);
        if ids.trim().is_empty() {
            return Vec::new();
        }
        let mut args = vec!["task", "inspect"];
        args.extend(ids.split_whitespace());
        let out = d.shoal(&args);
        if out.status.success() {
            return serde_json::from_slice(&out.stdout).expect("task inspect prints JSON");
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("not found"),
            "task inspect failed: {stderr}"
        );
    }
    panic!("the tasks of {service} were reaped between every listing and inspection");
}

/// The service's update state as `service inspect` on `d` shows it (empty
/// when it has none, or `d` cannot answer).
pub fn update_state(d: &Daemon, service: &str) -> String {
    let out = d.shoal(&["service", "inspect", service]);
    if !out.status.success() {
        return String::new();
    }
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    s[0]["update_status"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The local test image (Debian's busybox-static, `docker import`ed by
/// `scripts/busybox-image.sh`), or `None`, said on stderr, when this
/// machine has no Docker Engine or no static busybox: container tests skip.
/// With `SHOAL_REQUIRE_ENGINE` set (CI, where an engine answers) a skip is
/// a failure.
pub fn test_image() -> Option<String> {
    const TAG: &str = "shoal-test/busybox:1";
    let skip = |why: String| {
        assert!(
            std::env::var_os("SHOAL_REQUIRE_ENGINE").is_none(),
            "SHOAL_REQUIRE_ENGINE is set, but {why}"
        );
        eprintln!("SKIPPED: {why}");
    };
    let engine = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output();
    if !engine.is_ok_and(|o| o.status.success()) {
        skip("no Docker Engine answers here (docker version failed)".into());
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/busybox-image.sh");
    let made = Command::new("bash")
        .arg(&script)
        .arg(TAG)
        .output()
        .expect("bash runs");
    if !made.status.success() {
        skip(format!(
            "the test image could not be made: {}",
            String::from_utf8_lossy(&made.stderr).trim()
        ));
        return None;
    }
    Some(TAG.to_string())
}

/// Removes, when dropped, every container of the node `node_id` (a test's
/// daemon is killed, not stopped; its containers must not outlive it).
pub struct Containers {
    pub node_id: String,
}

impl Containers {
    /// The ids of the node's containers, running or not.
    pub fn ids(&self) -> Vec<String> {
        docker(&[
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("label=com.shoal.node.id={}", self.node_id),
        ])
        .split_whitespace()
        .map(str::to_string)
        .collect()
    }

    /// The container of task `task_id`, if the engine has one.
    pub fn of_task(&self, task_id: &str) -> Option<String> {
        docker(&[
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("label=com.shoal.task.id={task_id}"),
        ])
        .split_whitespace()
        .next()
        .map(str::to_string)
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        let ids = self.ids();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(ids.iter().map(String::as_str));
            let _ = Command::new("docker").args(&args).output();
        }
    }
}

/// Runs `docker ARGS`; its stdout (empty when it failed).
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
