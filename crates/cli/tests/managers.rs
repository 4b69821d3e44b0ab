//! Highly available managers (DESIGN.md §7): managers join with the manager
//! token, every manager answers the control API, writes through a follower
//! reach the leader, and the cluster survives the loss of its leader with
//! every acknowledged write and every running task.

mod harness;

use std::collections::{BTreeMap, HashMap};

use harness::{
    all_tasks, join, join_manager, json_lines, manager_statuses, shows_managers, task_processes,
    update_state, wait_until, Daemon,
};

/// A founding manager and two that joined it, each showing all three.
fn three_managers(tmp: &std::path::Path) -> Vec<Daemon> {
    let first = Daemon::start(&tmp.join("m1"));
    let second = join_manager(&tmp.join("m2"), &first);
    let third = join_manager(&tmp.join("m3"), &first);
    let managers = vec![first, second, third];
    for m in &managers {
        wait_until("every manager shows one leader and two reachable", || {
            shows_managers(m, 3)
        });
    }
    managers
}

/// Waits until `n` task processes run on `daemons` together.
fn wait_tasks<'a>(daemons: impl Iterator<Item = &'a Daemon> + Clone, n: usize) {
    wait_until("the tasks run", || {
        daemons
            .clone()
            .map(|d| task_processes(d).len())
            .sum::<usize>()
            == n
    });
}

/// The index of the leader among `managers`, as the first live one says.
fn leader_of(managers: &[&Daemon]) -> String {
    let statuses = manager_statuses(managers[0]);
    statuses
        .iter()
        .find(|(_, s)| s == "Leader")
        .map(|(id, _)| id.clone())
        .unwrap_or_default()
}

/// The node id a daemon's `version` names.
fn node_id(d: &Daemon) -> String {
    let v = d.ok(&["version"]);
    let server = v.lines().find(|l| l.starts_with("Server:")).unwrap();
    let after = server.split(" node ").nth(1).unwrap();
    after.split(',').next().unwrap().trim().to_string()
}

/// Each network `d` shows, with its version.
fn networks(d: &Daemon) -> BTreeMap<String, u64> {
    let out = d.ok(&["network", "ls", "--format", "json"]);
    json_lines(&out)
        .into_iter()
        .filter_map(|n| {
            let name = n["name"].as_str()?.to_string();
            let inspect: Vec<serde_json::Value> =
                serde_json::from_str(&d.ok(&["network", "inspect", &name])).ok()?;
            Some((name, inspect[0]["meta"]["version"].as_u64()?))
        })
        .collect()
}

/// Live tasks per slot of `service`, as `d` shows them.
fn live_per_slot(d: &Daemon, service: &str) -> HashMap<u64, usize> {
    let mut slots = HashMap::new();
    for t in json_lines(&d.ok(&["service", "ps", service, "--format", "json"])) {
        let live = t["desired_state"] == "Running"
            && matches!(
                t["current_state"]
                    .as_str()
                    .map(|s| s.split(' ').next().unwrap_or("")),
                Some("Running" | "Starting" | "Assigned" | "Accepted" | "Preparing" | "Ready")
            );
        if live {
            let name = t["name"].as_str().unwrap_or_default();
            let slot: u64 = name
                .rsplit('.')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            *slots.entry(slot).or_insert(0) += 1;
        }
    }
    slots
}

#[test]
fn managers_join_with_the_manager_token_and_every_one_answers_with_what_was_written_through_it() {
    let tmp = tempfile::tempdir().unwrap();
    let managers = three_managers(tmp.path());
    // Each of them: a write through it is there when it answers, in it.
    for (i, m) in managers.iter().enumerate() {
        let name = format!("net{i}");
        m.ok(&["network", "create", &name]);
        let shown = m.ok(&["network", "ls"]);
        assert!(shown.contains(&name), "{shown}");
    }
    // The joined managers are managers in their certificates and the store.
    for m in &managers[1..] {
        let cert = std::fs::read_to_string(m.state_dir.join("certificates/node.crt")).unwrap();
        let (identity, _) = shoal_ca::NodeIdentity::of_certificate_pem(&cert).unwrap();
        assert_eq!(identity.role, shoal_ca::Role::Manager);
        assert!(m.ok(&["version"]).contains("manager"));
    }
    // A refused write is refused through a follower too, and says why.
    let leader = leader_of(&[&managers[0]]);
    let follower = managers
        .iter()
        .find(|m| !leader.starts_with(&node_id(m)) && !node_id(m).starts_with(&leader))
        .unwrap();
    let err = follower.fails(&["network", "create", "net0"]);
    assert!(err.contains("net0"), "{err}");
    // Task logs through a follower come from the leader's sessions.
    managers[0].ok(&[
        "service",
        "create",
        "--name",
        "hello",
        "--replicas",
        "1",
        "--",
        "sh",
        "-c",
        "echo hello from shoal; sleep 600",
    ]);
    wait_until("the task's line is in the logs through a follower", || {
        let out = follower.shoal(&["service", "logs", "hello"]);
        String::from_utf8_lossy(&out.stdout).contains("hello from shoal")
    });
}

#[test]
fn the_leader_killed_a_new_one_leads_with_every_acknowledged_write_and_tasks_run_on_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let mut managers = three_managers(tmp.path());
    let worker = join(&tmp.path().join("w1"), &managers[0]);
    let worker2 = join(&tmp.path().join("w2"), &managers[0]);
    wait_until("both workers are Ready", || {
        json_lines(&managers[0].ok(&["node", "ls", "--format", "json"]))
            .iter()
            .filter(|r| r["status"] == "Ready")
            .count()
            == 5
    });
    harness::create_web(&managers[0], 6);
    wait_tasks(managers.iter().chain([&worker, &worker2]), 6);
    // Writes acknowledged through every manager.
    for i in 0..9 {
        managers[i % 3].ok(&["network", "create", &format!("before{i}")]);
    }
    // Each write was read back where it was made; the others catch up.
    wait_until("every manager has the nine writes", || {
        managers.iter().all(|m| networks(m).len() == 9)
    });
    let acknowledged = networks(&managers[1]);
    let on_workers: Vec<HashMap<String, u32>> = [&worker, &worker2]
        .iter()
        .map(|w| task_processes(w))
        .collect();

    let leader = leader_of(&[&managers[0]]);
    let index = managers
        .iter()
        .position(|m| leader.starts_with(&node_id(m)) || node_id(m).starts_with(&leader))
        .expect("the leader is one of the three");
    let mut dead = managers.remove(index);
    let dead_id = node_id(&dead);
    dead.kill9();
    for m in &managers {
        wait_until("a new leader, and the old one unreachable", || {
            let statuses = manager_statuses(m);
            let leader = statuses.iter().find(|(_, s)| s == "Leader");
            leader.is_some_and(|(id, _)| !dead_id.starts_with(id.as_str()))
                && statuses
                    .iter()
                    .any(|(id, s)| dead_id.starts_with(id.as_str()) && s == "Unreachable")
        });
    }
    // Nothing acknowledged is lost, and the cluster takes writes again,
    // through either survivor.
    for m in &managers {
        assert_eq!(networks(m), acknowledged);
    }
    managers[0].ok(&["network", "create", "after0"]);
    managers[1].ok(&["network", "create", "after1"]);
    // The workers' tasks were not touched by the change of leader.
    for (w, before) in [&worker, &worker2].iter().zip(&on_workers) {
        let now = task_processes(w);
        for (task, pid) in before {
            assert_eq!(now.get(task), Some(pid), "task {task} restarted or gone");
        }
    }
    // The dead manager's tasks run elsewhere; no slot has two.
    wait_until("every slot has one live task", || {
        let slots = live_per_slot(&managers[0], "web");
        slots.len() == 6 && slots.values().all(|n| *n == 1)
    });
    // Back with its disk: it follows, and has everything.
    let restarted = Daemon::start_with(&dead.state_dir.clone(), &["--listen-addr", "127.0.0.1:0"]);
    wait_until("the restarted manager has every write", || {
        let shown = networks(&restarted);
        acknowledged.iter().all(|(n, v)| shown.get(n) == Some(v))
            && shown.contains_key("after0")
            && shown.contains_key("after1")
    });
    wait_until("three managers again", || shows_managers(&restarted, 3));
    wait_until("every slot has one live task", || {
        let slots = live_per_slot(&restarted, "web");
        slots.len() == 6 && slots.values().all(|n| *n == 1)
    });
}

/// The managers other than the leader, as `d` shows them: (leader, others).
fn leader_and_followers(managers: &[Daemon]) -> (usize, Vec<usize>) {
    let leader = leader_of(&[&managers[0]]);
    let index = managers
        .iter()
        .position(|m| leader.starts_with(&node_id(m)) || node_id(m).starts_with(&leader))
        .expect("the leader is one of them");
    let others = (0..managers.len()).filter(|i| *i != index).collect();
    (index, others)
}

#[test]
fn a_manager_is_removed_only_while_the_rest_keep_a_quorum_and_a_lost_one_joins_again_new() {
    let tmp = tempfile::tempdir().unwrap();
    let mut managers = three_managers(tmp.path());
    let (leader, followers) = leader_and_followers(&managers);
    let (live, lost) = (followers[0], followers[1]);
    let (live_id, lost_id) = (node_id(&managers[live]), node_id(&managers[lost]));
    // One follower's machine is gone, disk and all.
    managers[lost].kill9();
    std::fs::remove_dir_all(&managers[lost].state_dir).unwrap();
    wait_until("the lost manager is unreachable", || {
        manager_statuses(&managers[leader])
            .iter()
            .any(|(id, s)| lost_id.starts_with(id.as_str()) && s == "Unreachable")
    });
    // Removing the live follower would leave one reachable of two.
    let err = managers[leader].fails(&["node", "rm", &live_id]);
    assert!(err.contains("quorum") && err.contains("--force"), "{err}");
    // The lost one goes; the two left decide alone.
    managers[leader].ok(&["node", "rm", &lost_id]);
    wait_until("two managers", || shows_managers(&managers[leader], 2));
    managers[live].ok(&["network", "create", "with-two"]);
    // Its machine comes back empty: it joins as a new manager.
    let again = join_manager(&tmp.path().join("again"), &managers[leader]);
    assert_ne!(node_id(&again), lost_id);
    wait_until("three managers again", || shows_managers(&again, 3));
    assert!(again.ok(&["network", "ls"]).contains("with-two"));

    // A manager removed while it is stopped is told so when it comes
    // back with its disk: it forgets itself and exits.
    managers[live].stop();
    wait_until("the stopped manager is unreachable", || {
        manager_statuses(&managers[leader])
            .iter()
            .any(|(id, s)| live_id.starts_with(id.as_str()) && s == "Unreachable")
    });
    managers[leader].ok(&["node", "rm", &live_id]);
    wait_until("two managers", || shows_managers(&again, 2));
    let out = harness::run_daemon(&managers[live].state_dir, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("removed"), "{err}");
    let restarted = harness::run_daemon(&managers[live].state_dir, &[]);
    let err = String::from_utf8_lossy(&restarted.stderr);
    assert!(err.contains("--join"), "it only joins again: {err}");
    managers[leader].ok(&["network", "create", "after-removal"]);
}

#[test]
fn a_live_manager_removed_with_force_stops_and_forgets_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let mut managers = three_managers(tmp.path());
    let (leader, followers) = leader_and_followers(&managers);
    let live = followers[0];
    let live_id = node_id(&managers[live]);
    let other = followers[1];
    // A live manager removed with --force stops and forgets itself.
    managers[leader].ok(&["node", "rm", "--force", &live_id]);
    let exited = managers[live].wait_exit(harness::READY_WITHIN);
    assert!(exited.is_some_and(|s| !s.success()), "{exited:?}");
    let log = managers[live].log_text();
    assert!(log.contains("removed"), "{log}");
    wait_until("two managers", || shows_managers(&managers[other], 2));
    managers[leader].ok(&["network", "create", "after-removal"]);
}

#[test]
fn a_stopped_leader_is_replaced_and_resumes_as_a_follower_that_acts_on_nothing_stale() {
    let tmp = tempfile::tempdir().unwrap();
    let managers = three_managers(tmp.path());
    let worker = join(&tmp.path().join("w"), &managers[0]);
    harness::create_web(&managers[0], 4);
    wait_tasks(managers.iter().chain([&worker]), 4);
    let (leader, followers) = leader_and_followers(&managers);
    let old_id = node_id(&managers[leader]);
    managers[leader].signal(libc::SIGSTOP);
    let survivor = &managers[followers[0]];
    wait_until("a new leader among the others", || {
        manager_statuses(survivor)
            .iter()
            .any(|(id, s)| s == "Leader" && !old_id.starts_with(id.as_str()))
    });
    // While the old leader sleeps: writes, and a change of the service.
    survivor.ok(&["network", "create", "while-stopped"]);
    survivor.ok(&["service", "scale", "web=2"]);
    wait_until("two tasks run", || {
        live_per_slot(survivor, "web").len() == 2
    });
    // Ten seconds on, it resumes with its stale term: it follows.
    std::thread::sleep(std::time::Duration::from_secs(10));
    managers[leader].signal(libc::SIGCONT);
    // Its own store said it led: it shows another leader once it has
    // heard of the new term and caught up.
    wait_until("the resumed manager follows the new leader", || {
        manager_statuses(&managers[leader])
            .iter()
            .any(|(id, s)| s == "Leader" && !old_id.starts_with(id.as_str()))
    });
    for m in &managers {
        wait_until("one leader, two reachable, on every manager", || {
            shows_managers(m, 3)
        });
        assert!(m.ok(&["network", "ls"]).contains("while-stopped"));
    }
    let statuses = manager_statuses(&managers[leader]);
    assert!(
        statuses
            .iter()
            .any(|(id, s)| old_id.starts_with(id.as_str()) && s == "Reachable"),
        "{statuses:?}"
    );
    // It acted on nothing it had seen before: the service stays at two.
    harness::after_an_orchestrator_pass(&managers[leader]);
    let slots = live_per_slot(&managers[leader], "web");
    assert_eq!(slots.len(), 2, "{slots:?}");
    assert!(slots.values().all(|n| *n == 1), "{slots:?}");
}

#[test]
fn the_election_timeout_is_validated_shown_and_taken_by_each_manager_at_its_next_start() {
    let tmp = tempfile::tempdir().unwrap();
    let mut manager = Daemon::start(&tmp.path().join("m"));
    for bad in ["50ms", "2m"] {
        let err = manager.fails(&["cluster", "update", "--election-timeout", bad]);
        assert!(
            err.contains("election_timeout") && err.contains("between 100 ms and 60000 ms"),
            "{err}"
        );
    }
    manager.ok(&[
        "cluster",
        "update",
        "--election-timeout",
        "1s",
        "--heartbeat-period",
        "4s",
    ]);
    let cluster: serde_json::Value =
        serde_json::from_str(&manager.ok(&["cluster", "inspect"])).unwrap();
    assert_eq!(cluster["spec"]["raft"]["election_timeout_ms"], 1000);
    assert_eq!(cluster["spec"]["dispatcher"]["heartbeat_period_ms"], 4000);
    wait_until(
        "the manager keeps the new timeout for its next start",
        || manager.log_text().contains("election timeout changed"),
    );
    manager.stop();
    let manager = Daemon::start_with(
        &manager.state_dir.clone(),
        &["--listen-addr", "127.0.0.1:0"],
    );
    wait_until("the restarted manager runs raft with it", || {
        manager
            .log_text()
            .contains("election timeouts of 750 to 1000 ms")
    });
}

#[test]
fn a_survivor_forced_into_a_new_cluster_keeps_everything_and_a_backup_brings_it_all_back() {
    let tmp = tempfile::tempdir().unwrap();
    let mut managers = three_managers(tmp.path());
    let worker = join(&tmp.path().join("w"), &managers[0]);
    harness::create_web(&managers[0], 3);
    for i in 0..6 {
        managers[i % 3].ok(&["network", "create", &format!("net{i}")]);
    }
    wait_tasks(managers.iter().chain([&worker]), 3);
    let (leader, followers) = leader_and_followers(&managers);
    let backup = tmp.path().join("cluster.backup");
    let shown = managers[followers[0]].ok(&["cluster", "backup", backup.to_str().unwrap()]);
    assert!(shown.contains("backup of cluster"), "{shown}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the backup holds the CA's key");
    let at_backup = networks(&managers[followers[0]]);
    let on_worker = task_processes(&worker);

    // Two of three managers are lost for good: no quorum.
    let survivor = followers[1];
    managers[leader].kill9();
    managers[followers[0]].kill9();
    let err = managers[survivor].fails(&["network", "create", "no-quorum"]);
    assert!(err.contains("leader") || err.contains("quorum"), "{err}");
    managers[survivor].stop();
    let dir = managers[survivor].state_dir.clone();
    let forced = Daemon::start_with(
        &dir,
        &["--listen-addr", "127.0.0.1:0", "--force-new-cluster"],
    );
    wait_until("the survivor leads alone", || shows_managers(&forced, 1));
    let after = networks(&forced);
    for (name, version) in &at_backup {
        assert_eq!(after.get(name), Some(version), "{name}");
    }
    forced.ok(&["network", "create", "after-force"]);
    // The worker comes back to it, its tasks untouched.
    wait_until("the worker is Ready", || {
        json_lines(&forced.ok(&["node", "ls", "--format", "json"]))
            .iter()
            .filter(|r| r["status"] == "Ready")
            .count()
            == 2
    });
    let now = task_processes(&worker);
    for (task, pid) in &on_worker {
        assert_eq!(now.get(task), Some(pid), "task {task} restarted");
    }
    // Another manager joins it with a manager token.
    let joined = join_manager(&tmp.path().join("m4"), &forced);
    wait_until("two managers", || shows_managers(&joined, 2));

    // The backup, restored into an empty state dir: every object, every
    // version, and it leads alone.
    let restored = Daemon::start_with(
        &tmp.path().join("restored"),
        &[
            "--listen-addr",
            "127.0.0.1:0",
            "--restore",
            backup.to_str().unwrap(),
        ],
    );
    wait_until("the restored manager leads alone", || {
        shows_managers(&restored, 1)
    });
    assert_eq!(networks(&restored), at_backup);
    assert!(restored.ok(&["service", "ls"]).contains("web"));
    restored.ok(&["network", "create", "after-restore"]);
    // A backup that is not one is refused, and nothing is left behind.
    std::fs::write(tmp.path().join("junk"), b"not a backup").unwrap();
    let out = harness::run_daemon(
        &tmp.path().join("junk-dir"),
        &["--restore", tmp.path().join("junk").to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not a backup"),
        "{err}"
    );
    // A backup cut short (a full disk, a copy stopped half way) is refused
    // whole, never restored with fewer objects; so is one damaged inside.
    let whole = std::fs::read(&backup).unwrap();
    let cut = tmp.path().join("cut.backup");
    std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
    let out = harness::run_daemon(
        &tmp.path().join("cut-dir"),
        &["--restore", cut.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cut short"), "{err}");
    let mut damaged = whole.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x20;
    std::fs::write(&cut, &damaged).unwrap();
    let out = harness::run_daemon(
        &tmp.path().join("damaged-dir"),
        &["--restore", cut.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("damaged"), "{err}");
}

#[test]
fn a_rollout_goes_on_under_a_new_leader_replacing_each_slot_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut managers = three_managers(tmp.path());
    // The tasks run on workers, so the leader's death takes none with it.
    let worker = join(&tmp.path().join("w1"), &managers[0]);
    let worker2 = join(&tmp.path().join("w2"), &managers[0]);
    managers[0].ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "4",
        "--constraint",
        "node.role==worker",
        "--update-parallelism",
        "1",
        "--update-delay",
        "1s",
        "--update-monitor",
        "500ms",
        "--",
        "sleep",
        "600",
    ]);
    wait_tasks([&worker, &worker2].into_iter(), 4);
    managers[0].ok(&["service", "update", "web", "--env", "V=2"]);
    let new = |t: &serde_json::Value| t["spec"]["runtime"]["env"][0] == "V=2";
    wait_until("the first new task runs", || {
        all_tasks(&managers[0], "web")
            .iter()
            .any(|t| new(t) && t["status"]["state"] == "RUNNING")
    });
    // The leader dies mid-rollout.
    let (leader, _) = leader_and_followers(&managers);
    let mut dead = managers.remove(leader);
    dead.kill9();
    wait_until("the rollout completed under the new leader", || {
        update_state(&managers[0], "web") == "COMPLETED"
    });
    // Each slot got the new spec once: none replaced twice, none skipped.
    let tasks = all_tasks(&managers[0], "web");
    for slot in 1..=4 {
        let made = tasks.iter().filter(|t| t["slot"] == slot && new(t)).count();
        assert_eq!(made, 1, "slot {slot} got {made} tasks of the new spec");
    }
    wait_until("every slot has one live task", || {
        let slots = live_per_slot(&managers[1], "web");
        slots.len() == 4 && slots.values().all(|n| *n == 1)
    });
}

/// A worker joined to `manager` with a node listener of its own on a free
/// loopback port, so it can be promoted.
fn join_promotable(dir: &std::path::Path, manager: &Daemon) -> Daemon {
    let (_, token) = harness::join_args(manager);
    harness::join_listening(dir, manager, &token)
}

/// The role a daemon's state dir records.
fn recorded_role(d: &Daemon) -> String {
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.state_dir.join("shoal-state.json")).unwrap())
            .unwrap();
    marker["role"].as_str().unwrap_or_default().to_string()
}

#[test]
fn a_worker_promoted_in_place_votes_and_a_demoted_leader_goes_on_as_a_worker_with_its_tasks_untouched(
) {
    let tmp = tempfile::tempdir().unwrap();
    let first = Daemon::start(&tmp.path().join("m1"));
    let second = join_promotable(&tmp.path().join("w2"), &first);
    let third = join_promotable(&tmp.path().join("w3"), &first);
    let (first_id, second_id, third_id) = (node_id(&first), node_id(&second), node_id(&third));
    // The only manager cannot be demoted: nothing would be left to decide.
    let refused = first.fails(&["node", "demote", &first_id]);
    assert!(refused.contains("only manager"), "{refused}");
    harness::create_web(&first, 6);
    let daemons = [&first, &second, &third];
    wait_until("the tasks run on every node", || {
        daemons.iter().all(|d| !task_processes(d).is_empty())
            && daemons
                .iter()
                .map(|d| task_processes(d).len())
                .sum::<usize>()
                == 6
    });
    let before: Vec<HashMap<String, u32>> = daemons.iter().map(|d| task_processes(d)).collect();

    let said = first.ok(&["node", "promote", &second_id, &third_id]);
    assert!(said.contains("promoted to a manager"), "{said}");
    for d in daemons {
        wait_until("every node shows three managers, one leading", || {
            shows_managers(d, 3)
        });
    }
    for d in &daemons[1..] {
        assert_eq!(recorded_role(d), "manager");
        let cert = std::fs::read_to_string(d.state_dir.join("certificates/node.crt")).unwrap();
        let (identity, _) = shoal_ca::NodeIdentity::of_certificate_pem(&cert).unwrap();
        assert_eq!(identity.role, shoal_ca::Role::Manager);
    }
    let again = first.ok(&["node", "promote", &second_id]);
    assert!(again.contains("already a manager"), "{again}");

    // The leader demoted through another manager: leadership moves, the
    // others keep a quorum, and it runs on as a worker.
    assert!(
        leader_of(&[&first]).starts_with(&first_id) || first_id.starts_with(&leader_of(&[&first]))
    );
    let said = second.ok(&["node", "demote", &first_id]);
    assert!(said.contains("demoted to a worker"), "{said}");
    wait_until("the demoted leader runs as a worker", || {
        recorded_role(&first) == "worker"
            && first.shoal(&["version"]).status.success()
            && String::from_utf8_lossy(&first.shoal(&["version"]).stdout).contains("worker node")
    });
    for d in &daemons[1..] {
        wait_until("two managers are left, one leading", || {
            shows_managers(d, 2)
        });
    }
    assert!(
        !first.state_dir.join("raft").exists(),
        "a worker keeps no raft log"
    );
    let cert = std::fs::read_to_string(first.state_dir.join("certificates/node.crt")).unwrap();
    let (identity, _) = shoal_ca::NodeIdentity::of_certificate_pem(&cert).unwrap();
    assert_eq!(identity.role, shoal_ca::Role::Worker);
    // Writes go on through what is left, and reach each manager.
    second.ok(&["network", "create", "after-the-changes"]);
    assert!(third.ok(&["network", "ls"]).contains("after-the-changes"));
    // No task was restarted by either change: the same processes run.
    wait_until("the demoted node is Ready again", || {
        json_lines(&second.ok(&["node", "ls", "--format", "json"]))
            .iter()
            .any(|r| {
                r["id"].as_str().is_some_and(|i| first_id.starts_with(i)) && r["status"] == "Ready"
            })
    });
    let after: Vec<HashMap<String, u32>> = daemons.iter().map(|d| task_processes(d)).collect();
    assert_eq!(before, after);
    let web = all_tasks(&second, "web");
    assert_eq!(web.len(), 6, "no task was replaced: {web:?}");
}

#[test]
fn a_demotion_that_would_cost_the_other_managers_their_quorum_is_refused_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let first = Daemon::start(&tmp.path().join("m1"));
    let second = join_promotable(&tmp.path().join("w2"), &first);
    let mut third = join_promotable(&tmp.path().join("w3"), &first);
    let (second_id, third_id) = (node_id(&second), node_id(&third));
    first.ok(&["node", "promote", &second_id, &third_id]);
    wait_until("three managers", || shows_managers(&first, 3));
    third.kill9();
    wait_until("the killed manager shows unreachable", || {
        manager_statuses(&first)
            .iter()
            .any(|(id, s)| third_id.starts_with(id.as_str()) && s == "Unreachable")
    });
    let refused = first.fails(&["node", "demote", &second_id]);
    assert!(
        refused.contains("fewer than a quorum") && refused.contains("1 reachable of 2"),
        "{refused}"
    );
    // Nothing was asked of it: it is still a manager.
    let inspect: Vec<serde_json::Value> =
        serde_json::from_str(&first.ok(&["node", "inspect", &second_id])).unwrap();
    assert_eq!(inspect[0]["spec"]["desired_role"], "MANAGER", "{inspect:?}");
}

/// What one client saw of its writes: each acknowledged network's name in
/// the order acknowledged, and how many ended without an answer either way.
#[derive(Debug, Default)]
struct History {
    acknowledged: Vec<String>,
    unknown: usize,
}

/// Creates networks `<client>-<n>` through `d`, one after another, until
/// `stop`; what was acknowledged.
fn write_until(d: &Daemon, client: &str, stop: &std::sync::atomic::AtomicBool) -> History {
    let mut history = History::default();
    let mut n = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let name = format!("{client}-{n}");
        n += 1;
        if d.shoal(&["network", "create", &name]).status.success() {
            history.acknowledged.push(name);
        } else {
            history.unknown += 1;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    history
}

#[test]
fn a_leader_cut_off_from_the_others_is_replaced_and_after_healing_every_acknowledged_write_of_every_client_is_there(
) {
    let Some(host) = harness::host::Host::new() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // The founding manager, the leader, on the other host; two managers
    // here, reached over the link.
    let founder_listen = format!("{}:0", host.host_ip);
    let first = Daemon::start_in(
        &host.ns,
        &tmp.path().join("m1"),
        &["--listen-addr", &founder_listen],
    );
    let (addr, _) = harness::join_args(&first);
    let token = first
        .ok(&["join-token", "manager", "-q"])
        .trim()
        .to_string();
    let listen = format!("{}:0", host.root_ip);
    let join_here = |dir: &str| {
        Daemon::start_with(
            &tmp.path().join(dir),
            &["--listen-addr", &listen, "--join", &addr, "--token", &token],
        )
    };
    let (second, third) = (join_here("m2"), join_here("m3"));
    let managers = [&first, &second, &third];
    for m in managers {
        wait_until("three managers on each", || shows_managers(m, 3));
    }
    let first_id = node_id(&first);
    assert!(first_id.starts_with(&leader_of(&[&first])));
    harness::create_web(&first, 3);
    wait_until("three tasks run", || {
        live_per_slot(&second, "web").len() == 3
    });

    // Clients write through each manager while the leader is cut off and
    // the link healed.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let histories: Vec<History> = std::thread::scope(|scope| {
        let writers: Vec<_> = managers
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let stop = &stop;
                scope.spawn(move || write_until(m, &format!("client{i}"), stop))
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_secs(1));
        host.cut();
        wait_until("a leader among the two still connected", || {
            manager_statuses(&second)
                .iter()
                .any(|(id, s)| s == "Leader" && !first_id.starts_with(id.as_str()))
        });
        // The majority decides on: the service changes and converges.
        second.ok(&["service", "scale", "web=4"]);
        wait_until("four tasks, one per slot", || {
            let slots = live_per_slot(&third, "web");
            slots.len() == 4 && slots.values().all(|n| *n == 1)
        });
        // The one cut off knows it leads no quorum: its components stop.
        wait_until("the cut-off leader stops its components", || {
            first.log_text().contains("its components stop")
        });
        host.heal();
        for m in managers {
            wait_until("one leader, two reachable, on every manager", || {
                shows_managers(m, 3)
            });
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writers.into_iter().map(|w| w.join().unwrap()).collect()
    });

    // Every manager holds the same networks at the same versions, every
    // acknowledged one among them, and each client's writes in the order
    // it saw them acknowledged.
    for (i, h) in histories.iter().enumerate() {
        eprintln!(
            "client {i}: {} acknowledged, {} without an answer",
            h.acknowledged.len(),
            h.unknown
        );
    }
    let shown: Vec<BTreeMap<String, u64>> = managers.iter().map(|m| networks(m)).collect();
    assert_eq!(shown[0], shown[1]);
    assert_eq!(shown[0], shown[2]);
    for (i, history) in histories.iter().enumerate() {
        assert!(
            !history.acknowledged.is_empty(),
            "client {i} had no write acknowledged: {history:?}"
        );
        let versions: Vec<u64> = history
            .acknowledged
            .iter()
            .map(|name| {
                *shown[0]
                    .get(name)
                    .unwrap_or_else(|| panic!("acknowledged {name} is lost"))
            })
            .collect();
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "client {i}'s writes out of order: {versions:?}"
        );
    }
    // After convergence no slot has two live tasks, on any manager's view.
    for m in managers {
        wait_until("four tasks, one per slot", || {
            let slots = live_per_slot(m, "web");
            slots.len() == 4 && slots.values().all(|n| *n == 1)
        });
    }
}

#[test]
fn a_manager_demoted_while_stopped_comes_back_as_a_worker_and_one_back_on_another_port_is_dialled_there(
) {
    let tmp = tempfile::tempdir().unwrap();
    let mut managers = three_managers(tmp.path());
    let (leader, followers) = leader_and_followers(&managers);
    let (moved, demoted) = (followers[0], followers[1]);
    let (moved_id, demoted_id) = (node_id(&managers[moved]), node_id(&managers[demoted]));

    // Restarted on another port: it says where it is, raft dials it there
    // (a change of address is a raft membership change: it needs a quorum
    // without the moved one, which three managers have and two would not).
    managers[moved].stop();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let moved_back = Daemon::start_with(&managers[moved].state_dir, &["--listen-addr", &listen]);
    wait_until("three managers again, the moved one reachable", || {
        shows_managers(&managers[leader], 3) && shows_managers(&moved_back, 3)
    });
    let inspect: Vec<serde_json::Value> =
        serde_json::from_str(&managers[leader].ok(&["node", "inspect", &moved_id])).unwrap();
    assert_eq!(
        inspect[0]["manager_status"]["addr"],
        listen.as_str(),
        "{inspect:?}"
    );
    moved_back.ok(&["network", "create", "through-the-moved-one"]);
    assert!(managers[leader]
        .ok(&["network", "ls"])
        .contains("through-the-moved-one"));

    // Stopped, then demoted: raft lets it go while it is away, and when it
    // comes back as a manager the CA tells it it is a worker now.
    managers[demoted].stop();
    wait_until("the stopped manager is unreachable", || {
        manager_statuses(&managers[leader])
            .iter()
            .any(|(id, s)| demoted_id.starts_with(id.as_str()) && s == "Unreachable")
    });
    managers[leader].ok(&["node", "demote", &demoted_id]);
    wait_until("two managers", || shows_managers(&managers[leader], 2));
    let back = Daemon::start_with(
        &managers[demoted].state_dir,
        &["--listen-addr", "127.0.0.1:0"],
    );
    wait_until("it runs as a worker", || {
        recorded_role(&back) == "worker"
            && String::from_utf8_lossy(&back.shoal(&["version"]).stdout).contains("worker node")
    });
    assert!(!back.state_dir.join("raft").exists());
    wait_until("it is Ready as a worker", || {
        json_lines(&managers[leader].ok(&["node", "ls", "--format", "json"]))
            .iter()
            .any(|r| {
                r["id"].as_str().is_some_and(|i| demoted_id.starts_with(i))
                    && r["status"] == "Ready"
                    && r["manager_status"] == ""
            })
    });
}
