//! Many daemons, one cluster (DESIGN.md §6): workers join a manager with a
//! token over mutual TLS, on loopback addresses, each daemon with its own
//! state dir; what the user sees, and every way a join is refused.

mod harness;

use std::path::Path;

use harness::{
    join, join_args, json_lines, node_version, service_processes, task_processes, wait_until,
    Daemon,
};

/// A manager in `tmp/m` and a worker joined from `tmp/w`, Ready: both,
/// and the worker's node id.
fn manager_and_ready_worker(tmp: &Path) -> (Daemon, Daemon, String) {
    let manager = Daemon::start(&tmp.join("m"));
    let worker = join(&tmp.join("w"), &manager);
    let worker_id = node_id(&worker);
    wait_until("the worker is Ready", || ready(&manager, &worker_id));
    (manager, worker, worker_id)
}

/// `shoal daemon --join …` that must fail: its stderr.
fn refused_join(dir: &Path, addr: &str, token: &str) -> String {
    let out = harness::run_daemon(dir, &["--join", addr, "--token", token]);
    assert!(!out.status.success(), "the join succeeded");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.starts_with("Error: "), "{err}");
    err
}

/// The node id a daemon's `version` names.
fn node_id(d: &Daemon) -> String {
    let v = d.ok(&["version"]);
    let server = v.lines().find(|l| l.starts_with("Server:")).unwrap();
    let after = server.split(" node ").nth(1).unwrap();
    after.split(',').next().unwrap().trim().to_string()
}

/// `node ls` rows, by id.
fn node_row(manager: &Daemon, id: &str) -> Option<serde_json::Value> {
    json_lines(&manager.ok(&["node", "ls", "--format", "json"]))
        .into_iter()
        .find(|r| r["id"].as_str().is_some_and(|i| id.starts_with(i)))
}

fn ready(manager: &Daemon, id: &str) -> bool {
    node_row(manager, id).is_some_and(|r| r["status"] == "Ready")
}

#[test]
fn a_worker_joins_runs_tasks_and_restarts_from_its_state_dir_without_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let manager = Daemon::start(&tmp.path().join("m"));
    let mut worker = join(&tmp.path().join("w"), &manager);
    let worker_id = node_id(&worker);
    assert!(worker.ok(&["version"]).contains("worker node"));
    wait_until("the worker is Ready", || ready(&manager, &worker_id));
    let row = node_row(&manager, &worker_id).unwrap();
    assert_eq!(row["address"], "127.0.0.1", "{row}");
    assert_eq!(row["manager_status"], "", "{row}");
    // The worker's identity is its certificate's, issued for it.
    let cert = std::fs::read_to_string(worker.state_dir.join("certificates/node.crt")).unwrap();
    let (identity, _) = shoal_ca::NodeIdentity::of_certificate_pem(&cert).unwrap();
    assert_eq!(identity.node_id, worker_id);
    assert_eq!(identity.role, shoal_ca::Role::Worker);

    harness::create_web(&manager, 4);
    harness::wait_spread(&manager, &worker, 4);
    let before = service_processes(&worker, &manager, "web");

    // A restart: no token, no address; the same tasks, not new ones.
    let sessions_before = node_version(&manager, &worker_id);
    worker.stop();
    let mut worker = Daemon::start_with(&tmp.path().join("w"), &[]);
    assert_eq!(node_id(&worker), worker_id);
    wait_until("the restarted worker opens a session", || {
        node_version(&manager, &worker_id) > sessions_before && ready(&manager, &worker_id)
    });
    harness::after_an_orchestrator_pass(&manager);
    assert_eq!(service_processes(&worker, &manager, "web"), before);
    let running = manager.ok(&["service", "ps", "web", "--format", "json"]);
    let live = json_lines(&running)
        .iter()
        .filter(|t| t["desired_state"] == "Running")
        .count();
    assert_eq!(live, 4, "{running}");

    // Joining again on a state dir that has joined is refused.
    worker.stop();
    let (addr, token) = join_args(&manager);
    let err = refused_join(&tmp.path().join("w"), &addr, &token);
    assert!(err.contains("already"), "{err}");
}

#[test]
fn a_worker_cannot_use_the_control_api_and_a_manager_cannot_leave() {
    let tmp = tempfile::tempdir().unwrap();
    let manager = Daemon::start(&tmp.path().join("m"));
    let worker = join(&tmp.path().join("w"), &manager);
    let (addr, _) = join_args(&manager);
    for args in [
        &["node", "ls"][..],
        &["service", "ls"],
        &["service", "create", "--name", "x", "--", "true"],
        &["cluster", "inspect"],
        &["join-token", "worker"],
    ] {
        let err = worker.fails(args);
        assert!(
            err.contains("this node is not a manager"),
            "{args:?}: {err}"
        );
        assert!(err.contains(&addr), "{args:?}: {err}");
    }
    let err = manager.fails(&["leave"]);
    assert!(err.contains("manager"), "{err}");
    manager.ok(&["node", "ls"]);
}

#[test]
fn a_worker_that_leaves_stops_its_tasks_forgets_its_identity_and_can_then_be_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let manager = Daemon::start(&tmp.path().join("m"));
    manager.ok(&["cluster", "update", "--dispatcher-heartbeat", "500ms"]);
    let mut worker = join(&tmp.path().join("w"), &manager);
    let worker_id = node_id(&worker);
    wait_until("the worker is Ready", || ready(&manager, &worker_id));
    harness::create_web(&manager, 4);
    wait_until("tasks run on the worker", || {
        !task_processes(&worker).is_empty()
    });
    let err = manager.fails(&["node", "rm", &worker_id]);
    assert!(err.contains("not down"), "{err}");

    assert!(worker.ok(&["leave"]).contains("left"));
    let status = worker
        .wait_exit(harness::READY_WITHIN)
        .expect("the worker's daemon exits after leaving");
    assert!(status.success(), "{}", worker.log_text());
    assert!(task_processes(&worker).is_empty());
    assert_left(&worker.state_dir);

    wait_until("the worker is down", || {
        node_row(&manager, &worker_id).is_some_and(|r| r["status"] == "Down")
    });
    wait_until("its tasks run on the manager", || {
        task_processes(&manager).len() == 4
    });
    manager.ok(&["node", "rm", &worker_id]);
    assert!(node_row(&manager, &worker_id).is_none());
    // Started again as it was (a supervisor would), it refuses: it left,
    // and it never becomes a cluster of its own.
    let out = harness::run_daemon(&worker.state_dir, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("left cluster") && err.contains("--join"),
        "{err}"
    );
    assert_left(&worker.state_dir);
    // With a token it joins again, as a new node.
    let again = join(&tmp.path().join("w"), &manager);
    assert_ne!(node_id(&again), worker_id);
}

/// A node's state dir after it left: the lock, and a marker that says it
/// left; no identity, no certificate, no task.
fn assert_left(dir: &Path) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec!["lock", "shoal-state.json"],
        "its identity is deleted"
    );
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("shoal-state.json")).unwrap()).unwrap();
    assert_eq!(marker["role"], "left", "{marker}");
}

/// A manager, its join address and worker token, and the token's digest
/// and secret apart.
fn manager_and_token(tmp: &Path) -> (Daemon, String, String, String, String) {
    let manager = Daemon::start(&tmp.join("m"));
    let (addr, token) = join_args(&manager);
    let (digest, secret) = token
        .strip_prefix("SWMTKN-1-")
        .unwrap()
        .split_once('-')
        .map(|(d, s)| (d.to_string(), s.to_string()))
        .unwrap();
    (manager, addr, token, digest, secret)
}

/// A refused join leaves nothing in its state dir but the lock.
fn left_nothing(dir: &Path) {
    assert!(
        std::fs::read_dir(dir)
            .unwrap()
            .all(|e| e.unwrap().file_name() == "lock"),
        "a refused join leaves nothing but the lock"
    );
}

#[test]
fn a_join_with_a_wrong_secret_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (_manager, addr, _, digest, secret) = manager_and_token(tmp.path());
    let wrong = format!("SWMTKN-1-{digest}-{}", "0".repeat(secret.len()));
    let err = refused_join(&tmp.path().join("j"), &addr, &wrong);
    assert!(
        err.contains("refused") && err.contains("not valid"),
        "{err}"
    );
    left_nothing(&tmp.path().join("j"));
}

#[test]
fn a_join_whose_token_names_another_ca_is_refused_before_it_sends_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let (_manager, addr, _, digest, secret) = manager_and_token(tmp.path());
    let foreign = format!("SWMTKN-1-{}-{secret}", "a".repeat(64));
    let err = refused_join(&tmp.path().join("j"), &addr, &foreign);
    assert!(err.contains("is not the one the token names"), "{err}");
    assert!(err.contains(&digest), "names what it was shown: {err}");
    left_nothing(&tmp.path().join("j"));
}

#[test]
fn a_join_with_a_malformed_token_is_refused_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let (_manager, addr, ..) = manager_and_token(tmp.path());
    let err = refused_join(&tmp.path().join("j"), &addr, "SWMTKN-1-nonsense");
    assert!(err.contains("--token"), "{err}");
}

#[test]
fn a_join_to_an_address_nobody_listens_on_is_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (_manager, _, token, ..) = manager_and_token(tmp.path());
    // Port 1 on loopback: nothing listens there.
    let err = refused_join(&tmp.path().join("j"), "127.0.0.1:1", &token);
    assert!(err.contains("cannot reach"), "{err}");
    left_nothing(&tmp.path().join("j"));
}

#[test]
fn a_rotated_token_is_refused_while_nodes_joined_with_it_run_on() {
    let tmp = tempfile::tempdir().unwrap();
    let (manager, addr, token, ..) = manager_and_token(tmp.path());
    let mut early = join(&tmp.path().join("early"), &manager);
    let early_id = node_id(&early);
    let rotated = manager.ok(&["join-token", "worker", "--rotate"]);
    assert!(rotated.contains("Rotated"), "{rotated}");
    let (_, new_token) = join_args(&manager);
    assert_ne!(new_token, token);
    let err = refused_join(&tmp.path().join("late"), &addr, &token);
    assert!(err.contains("rotated"), "{err}");
    let _late = Daemon::start_with(
        &tmp.path().join("late2"),
        &["--join", &addr, "--token", &new_token],
    );
    let sessions_before = node_version(&manager, &early_id);
    early.stop();
    let _early = Daemon::start_with(&early.state_dir.clone(), &[]);
    wait_until(
        "the node joined before the rotation opens a session",
        || node_version(&manager, &early_id) > sessions_before && ready(&manager, &early_id),
    );
}

#[test]
fn a_worker_tries_the_next_manager_it_knows_when_one_is_unreachable() {
    let tmp = tempfile::tempdir().unwrap();
    let (manager, mut worker, worker_id) = manager_and_ready_worker(tmp.path());
    let (addr, _) = join_args(&manager);
    worker.stop();
    // Port 1 on loopback: nothing listens there.
    let dead = "127.0.0.1:1".to_string();
    let managers = worker.state_dir.join("managers.json");
    std::fs::write(&managers, serde_json::to_vec(&[&dead, &addr]).unwrap()).unwrap();
    // Marked down first, so Ready below is this start's.
    manager.ok(&["cluster", "update", "--dispatcher-heartbeat", "500ms"]);
    wait_until("the stopped worker is down", || {
        !ready(&manager, &worker_id)
    });
    let _worker = Daemon::start_with(&worker.state_dir.clone(), &[]);
    wait_until("the worker is Ready through the second address", || {
        ready(&manager, &worker_id)
    });
    // Its session named the managers there are: the dead one is forgotten.
    wait_until("the worker keeps the managers its session named", || {
        std::fs::read_to_string(&managers).is_ok_and(|m| m.contains(&addr) && !m.contains(&dead))
    });
}

#[test]
fn service_logs_show_the_lines_of_tasks_on_every_node_and_skip_a_node_that_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let (manager, mut worker, _) = manager_and_ready_worker(tmp.path());
    manager.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "4",
        "--",
        "sh",
        "-c",
        "echo line-of-$SHOAL_TASK_ID; sleep 600",
    ]);
    harness::wait_spread(&manager, &worker, 4);
    let on_worker: Vec<String> = task_processes(&worker).into_keys().collect();
    let on_manager: Vec<String> = task_processes(&manager).into_keys().collect();
    let all: Vec<String> = on_worker.iter().chain(&on_manager).cloned().collect();
    wait_until("every task's line is in the service's logs", || {
        let logs = manager.ok(&["service", "logs", "--raw", "web"]);
        all.iter().all(|id| logs.contains(&format!("line-of-{id}")))
    });
    // One task's logs, on the worker, by its id.
    let one = manager.ok(&["service", "logs", &on_worker[0]]);
    assert!(one.contains(&format!("line-of-{}", on_worker[0])), "{one}");

    let err = manager.fails(&["service", "logs", "nosuch"]);
    assert!(err.contains("no service or task \"nosuch\""), "{err}");

    // A node that is gone is left out, not waited for, and the user is
    // told which tasks are missing and why.
    worker.stop();
    let out = manager.shoal(&["service", "logs", "--raw", "web"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("could not be read") && err.contains("has no session"),
        "{err}"
    );
    let logs = String::from_utf8_lossy(&out.stdout).to_string();
    for id in &on_manager {
        assert!(logs.contains(&format!("line-of-{id}")), "{logs}");
    }
    for id in &on_worker {
        assert!(!logs.contains(&format!("line-of-{id}")), "{logs}");
    }
}

#[test]
fn a_followed_log_goes_on_across_a_restart_of_the_tasks_node_without_gaps_or_repeats() {
    let tmp = tempfile::tempdir().unwrap();
    let (manager, mut worker, worker_id) = manager_and_ready_worker(tmp.path());
    manager.ok(&[
        "service",
        "create",
        "--name",
        "tick",
        "--constraint",
        &format!("node.id=={worker_id}"),
        "--",
        "sh",
        "-c",
        "i=0; while true; do echo $i; i=$((i+1)); sleep 0.05; done",
    ]);
    let (mut follow, rx) = manager.follow(&["service", "logs", "-f", "--raw", "tick"]);
    let next = || {
        rx.recv_timeout(harness::READY_WITHIN)
            .expect("logs -f stopped printing")
            .trim()
            .parse::<u64>()
            .expect("a counter line")
    };
    let mut seen = vec![next()];
    while seen.len() < 20 {
        seen.push(next());
    }
    // The worker's daemon restarts: the session and its read go, the task
    // runs on, and the read is asked again when the node is back.
    let sessions_before = harness::node_version(&manager, &worker_id);
    worker.stop();
    let _worker = Daemon::start_with(&tmp.path().join("w"), &[]);
    wait_until("the worker opens a new session", || {
        harness::node_version(&manager, &worker_id) > sessions_before
    });
    let last_before = *seen.last().unwrap();
    while *seen.last().unwrap() < last_before + 40 {
        seen.push(next());
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let first = seen[0];
    let expected: Vec<u64> = (first..first + seen.len() as u64).collect();
    assert_eq!(seen, expected, "every line once, in order");
}
