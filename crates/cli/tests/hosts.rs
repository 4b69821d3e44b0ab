//! A manager and workers on separate network hosts: each worker runs in a
//! network namespace of its own that the test makes, joined to the
//! manager's by a veth pair, so cutting the link is a real network fault
//! (connections hang, nothing is refused). Needs root and `ip netns`; says
//! SKIPPED plainly otherwise.

mod harness;

use harness::host::Host;
use harness::{join_args, json_lines, service_processes, task_processes, wait_until, Daemon};

fn status_of(manager: &Daemon, host_ip: &str) -> Option<String> {
    json_lines(&manager.ok(&["node", "ls", "--format", "json"]))
        .into_iter()
        .find(|r| r["address"] == host_ip)
        .map(|r| r["status"].as_str().unwrap_or_default().to_string())
}

/// The version of the node at `host_ip`: each session it opens records it
/// anew.
fn node_version(manager: &Daemon, host_ip: &str) -> u64 {
    let id = json_lines(&manager.ok(&["node", "ls", "--format", "json"]))
        .into_iter()
        .find(|r| r["address"] == host_ip)
        .and_then(|r| r["id"].as_str().map(str::to_string))
        .unwrap();
    harness::node_version(manager, &id)
}

/// No slot has two tasks desired running, and `n` are.
fn one_live_task_per_slot(manager: &Daemon, n: usize) -> bool {
    let tasks = json_lines(&manager.ok(&["service", "ps", "web", "--format", "json"]));
    let live: Vec<String> = tasks
        .iter()
        .filter(|t| t["desired_state"] == "Running")
        .map(|t| t["name"].as_str().unwrap_or_default().to_string())
        .collect();
    let slots: std::collections::BTreeSet<&String> = live.iter().collect();
    live.len() == n && slots.len() == n
}

/// A manager here and a worker on `host`, four tasks spread over both.
fn cluster_over(host: &Host, tmp: &std::path::Path) -> (Daemon, Daemon, String) {
    let listen = format!("{}:0", host.root_ip);
    let manager = Daemon::start_with(&tmp.join("m"), &["--listen-addr", &listen]);
    manager.ok(&["cluster", "update", "--dispatcher-heartbeat", "500ms"]);
    let (addr, token) = join_args(&manager);
    assert!(addr.starts_with(&host.root_ip), "{addr}");
    let worker = Daemon::start_in(
        &host.ns,
        &tmp.join("w"),
        &["--join", &addr, "--token", &token],
    );
    let host_ip = host.host_ip.clone();
    wait_until("the worker on the other host is Ready", || {
        status_of(&manager, &host_ip).as_deref() == Some("Ready")
    });
    harness::create_web(&manager, 4);
    harness::wait_spread(&manager, &worker, 4);
    (manager, worker, host_ip)
}

#[test]
fn a_worker_cut_off_past_the_ttl_is_down_its_tasks_move_and_its_stale_ones_stop_when_it_returns() {
    let Some(host) = Host::new() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (manager, worker, host_ip) = cluster_over(&host, tmp.path());

    host.cut();
    wait_until("the cut-off worker is Down", || {
        status_of(&manager, &host_ip).as_deref() == Some("Down")
    });
    wait_until("its tasks run on the manager", || {
        task_processes(&manager).len() == 4
    });
    // Cut off, it cannot know: its tasks still run there.
    assert!(!task_processes(&worker).is_empty());

    host.heal();
    wait_until("the worker is back", || {
        status_of(&manager, &host_ip).as_deref() == Some("Ready")
    });
    wait_until("its stale tasks are stopped", || {
        task_processes(&worker).is_empty()
    });
    assert!(one_live_task_per_slot(&manager, 4));
    assert_eq!(task_processes(&manager).len(), 4);
}

#[test]
fn a_paused_worker_hands_its_tasks_over_and_a_killed_one_keeps_them_across_a_restart() {
    let Some(host) = Host::new() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (manager, mut worker, host_ip) = cluster_over(&host, tmp.path());

    // kill -9 and a restart inside the TTL: the same processes, adopted.
    manager.ok(&["cluster", "update", "--dispatcher-heartbeat", "5s"]);
    let before = service_processes(&worker, &manager, "web");
    let sessions_before = node_version(&manager, &host_ip);
    worker.kill9();
    let mut worker = Daemon::start_in(&host.ns, &tmp.path().join("w"), &[]);
    wait_until("the restarted worker opens a session", || {
        node_version(&manager, &host_ip) > sessions_before
            && status_of(&manager, &host_ip).as_deref() == Some("Ready")
    });
    harness::after_an_orchestrator_pass(&manager);
    assert_eq!(
        service_processes(&worker, &manager, "web"),
        before,
        "{}",
        manager.ok(&["service", "ps", "web"])
    );
    assert!(one_live_task_per_slot(&manager, 4));

    // Paused past the TTL: Down, its tasks elsewhere; going on, it stops
    // the stale ones.
    manager.ok(&["cluster", "update", "--dispatcher-heartbeat", "500ms"]);
    worker.signal(libc::SIGSTOP);
    wait_until("the paused worker is Down", || {
        status_of(&manager, &host_ip).as_deref() == Some("Down")
    });
    wait_until("its tasks run on the manager", || {
        task_processes(&manager).len() == 4
    });
    worker.signal(libc::SIGCONT);
    wait_until("the worker is back", || {
        status_of(&manager, &host_ip).as_deref() == Some("Ready")
    });
    wait_until("its stale tasks are stopped", || {
        task_processes(&worker).is_empty()
    });
    assert!(one_live_task_per_slot(&manager, 4));
    worker.stop();
}
