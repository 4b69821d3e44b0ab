//! The user-visible behaviour of `shoal`, through the real binary and daemon.

mod harness;

use harness::{json_lines, run, Daemon};

fn inspect_one(d: &Daemon, args: &[&str]) -> serde_json::Value {
    let out = d.ok(args);
    let mut list: Vec<serde_json::Value> = serde_json::from_str(&out).expect("inspect prints JSON");
    assert_eq!(list.len(), 1);
    list.remove(0)
}

#[test]
fn a_new_daemon_records_its_cluster_and_itself_as_a_manager_node() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    let nodes = json_lines(&d.ok(&["node", "ls", "--format", "json"]));
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["status"], "Ready");
    assert_eq!(nodes[0]["manager_status"], "Leader");
    let me = inspect_one(&d, &["node", "inspect", "self"]);
    assert_eq!(me["role"], "MANAGER");
    assert_eq!(me["description"]["platform"]["os"], std::env::consts::OS);
    assert!(
        me["description"]["resources"]["nano_cpus"]
            .as_i64()
            .unwrap()
            >= 1_000_000_000
    );
    assert!(
        me["description"]["resources"]["memory_bytes"]
            .as_i64()
            .unwrap()
            > 0
    );
    assert!(!me["description"]["hostname"].as_str().unwrap().is_empty());
    let cluster: serde_json::Value = serde_json::from_str(&d.ok(&["cluster", "inspect"])).unwrap();
    assert_eq!(
        cluster["spec"]["orchestration"]["task_history_retention_limit"],
        5
    );
    let version = d.ok(&["version"]);
    assert!(
        version.contains(&format!("Client: {}", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    assert!(version.contains(me["id"].as_str().unwrap()), "{version}");
    let socket_mode = std::fs::metadata(&d.socket)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap();
    assert_eq!(socket_mode, 0o600, "the control socket must be private");
}

#[test]
fn the_readme_service_lifecycle_works() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    // Create with every kind of flag the issue lists.
    d.ok(&["network", "create", "backend", "--subnet", "10.20.0.0/16"]);
    let id = d.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "--env",
        "A=1",
        "--label",
        "tier=front",
        "--constraint",
        "node.labels.zone==a",
        "--reserve-memory",
        "64M",
        "--limit-memory",
        "1G",
        "--reserve-cpu",
        "0.5",
        "--restart-condition",
        "on-failure",
        "--restart-delay",
        "2s",
        "--restart-max-attempts",
        "3",
        "--restart-window",
        "1m30s",
        "--update-parallelism",
        "2",
        "--update-delay",
        "5s",
        "--update-failure-action",
        "rollback",
        "--update-order",
        "start-first",
        "--update-monitor",
        "250ms",
        "--update-max-failure-ratio",
        "0.2",
        "--rollback-parallelism",
        "1",
        "--publish",
        "8080:80/tcp",
        "--network",
        "backend",
        "--stop-grace-period",
        "10s",
        "--workdir",
        "/tmp",
        "--placement-pref",
        "spread=node.labels.zone",
        "--",
        "python3",
        "-m",
        "http.server",
    ]);
    let id = id.trim();
    assert_eq!(id.len(), 25);

    let rows = json_lines(&d.ok(&["service", "ls", "--format", "json"]));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["name"], "web");
    assert_eq!(rows[0]["mode"], "replicated");
    assert_eq!(rows[0]["replicas"], "0/3");
    assert_eq!(rows[0]["command"], "python3 -m http.server");
    assert_eq!(d.ok(&["service", "ls", "-q"]).trim(), id);
    let table = d.ok(&["service", "ls"]);
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains(&id[..12]) && table.contains("web"),
        "{table}"
    );

    let s = inspect_one(&d, &["service", "inspect", "web"]);
    let spec = &s["spec"];
    assert_eq!(spec["replicas"], 3);
    assert_eq!(spec["task"]["runtime"]["env"][0], "A=1");
    assert_eq!(spec["task"]["runtime"]["dir"], "/tmp");
    assert_eq!(spec["task"]["runtime"]["stop_grace_period_ms"], 10_000);
    assert_eq!(spec["annotations"]["labels"]["tier"], "front");
    assert_eq!(
        spec["task"]["placement"]["constraints"][0],
        "node.labels.zone==a"
    );
    assert_eq!(
        spec["task"]["placement"]["preferences"][0]["spread_descriptor"],
        "node.labels.zone"
    );
    assert_eq!(
        spec["task"]["resources"]["reservations"]["memory_bytes"],
        64 << 20
    );
    assert_eq!(
        spec["task"]["resources"]["reservations"]["nano_cpus"],
        500_000_000
    );
    assert_eq!(spec["task"]["restart"]["condition"], "ON_FAILURE");
    assert_eq!(spec["task"]["restart"]["delay_ms"], 2_000);
    assert_eq!(spec["task"]["restart"]["window_ms"], 90_000);
    assert_eq!(spec["update"]["parallelism"], 2);
    assert_eq!(spec["update"]["delay_ms"], 5_000);
    assert_eq!(spec["update"]["failure_action"], "ROLLBACK");
    assert_eq!(spec["update"]["order"], "START_FIRST");
    assert_eq!(spec["rollback"]["parallelism"], 1);
    assert_eq!(spec["endpoint"]["ports"][0]["published_port"], 8080);
    let network_id = inspect_one(&d, &["network", "inspect", "backend"])["id"].clone();
    assert_eq!(
        spec["task"]["networks"][0]["target"], network_id,
        "networks are stored by id"
    );
    let v1 = s["meta"]["version"].as_u64().unwrap();
    assert!(v1 > 0);

    // Update: env added, replicas changed, previous spec kept.
    d.ok(&[
        "service",
        "update",
        "web",
        "--env",
        "B=2",
        "--replicas",
        "5",
    ]);
    let s = inspect_one(&d, &["service", "inspect", id]);
    assert_eq!(s["spec"]["replicas"], 5);
    assert_eq!(
        s["spec"]["task"]["runtime"]["env"],
        serde_json::json!(["A=1", "B=2"])
    );
    assert_eq!(s["previous_spec"]["replicas"], 3);
    let v2 = s["meta"]["version"].as_u64().unwrap();
    assert!(v2 > v1);
    // The template changed with this write; the update supervisor may have
    // written the service since (its update status).
    let spec_version = s["spec_version"].as_u64().unwrap();
    assert!(
        spec_version > v1 && spec_version <= v2,
        "{spec_version} not in {v1}..={v2}"
    );

    // Scale, addressed by an ID prefix.
    let out = d.ok(&["service", "scale", &format!("{}=4", &id[..6])]);
    assert!(out.contains("scaled to 4"), "{out}");
    assert_eq!(
        inspect_one(&d, &["service", "inspect", "web"])["spec"]["replicas"],
        4
    );

    // A network in use cannot go; after the service is gone it can.
    let err = d.fails(&["network", "rm", "backend"]);
    assert!(err.contains("in use by service web"), "{err}");
    d.ok(&["service", "rm", "web"]);
    assert_eq!(d.ok(&["service", "ls", "-q"]), "");
    d.ok(&["network", "rm", "backend"]);
    assert_eq!(d.ok(&["network", "ls", "-q"]), "");
}

#[test]
fn node_and_cluster_updates_are_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    let node_id = inspect_one(&d, &["node", "inspect", "self"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    d.ok(&[
        "node",
        "update",
        "--label-add",
        "zone=a",
        "--availability",
        "drain",
        &node_id[..5],
    ]);
    let node = inspect_one(&d, &["node", "inspect", "self"]);
    assert_eq!(node["spec"]["availability"], "DRAIN");
    assert_eq!(node["spec"]["annotations"]["labels"]["zone"], "a");
    let rows = json_lines(&d.ok(&["node", "ls", "--format", "json"]));
    assert_eq!(rows[0]["availability"], "Drain");
    d.ok(&[
        "node",
        "update",
        "--label-rm",
        "zone",
        "--availability",
        "active",
        "self",
    ]);
    let node = inspect_one(&d, &["node", "inspect", "self"]);
    assert_eq!(node["spec"]["availability"], "ACTIVE");
    assert!(node["spec"]["annotations"]["labels"]
        .as_object()
        .unwrap()
        .is_empty());

    d.ok(&["cluster", "update", "--task-history-limit", "10"]);
    let cluster: serde_json::Value = serde_json::from_str(&d.ok(&["cluster", "inspect"])).unwrap();
    assert_eq!(
        cluster["spec"]["orchestration"]["task_history_retention_limit"],
        10
    );
    let err = d.fails(&["cluster", "update", "--task-history-limit", "-1"]);
    assert!(
        err.contains("task_history_limit: must be 0 or more"),
        "{err}"
    );
}

/// Each bad input: the error names the field and the rule, and nothing is written.
#[test]
fn invalid_input_is_refused_naming_the_field_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    d.ok(&["service", "create", "--name", "web", "--", "sleep", "100"]);
    let long = "a".repeat(64);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--name", "", "--", "x"], "name: a name is required"),
        (
            vec!["--name=-web", "--", "x"],
            "name: \"-web\" is not a valid name",
        ),
        (vec!["--name", "we_b", "--", "x"], "is not a valid name"),
        (vec!["--name", &long, "--", "x"], "at most 63"),
        (
            vec!["--name", "WEB", "--", "x"],
            "service name \"WEB\" is already in use",
        ),
        (
            vec!["--name", "a", "--replicas", "-1", "--", "x"],
            "replicas: must be 0 or more, got -1",
        ),
        (
            vec![
                "--name",
                "a",
                "--mode",
                "global",
                "--replicas",
                "3",
                "--",
                "x",
            ],
            "replicas: a global service",
        ),
        (
            vec!["--name", "a", "--restart-condition", "sometimes", "--", "x"],
            "'--restart-condition",
        ),
        (
            vec![
                "--name",
                "a",
                "--update-failure-action",
                "explode",
                "--",
                "x",
            ],
            "'--update-failure-action",
        ),
        (
            vec![
                "--name",
                "a",
                "--constraint",
                "node.labels.zone=a",
                "--",
                "x",
            ],
            "expected KEY==VALUE",
        ),
        (
            vec!["--name", "a", "--constraint", "foo==bar", "--", "x"],
            "unknown key \"foo\"",
        ),
        (
            vec!["--name", "a", "--restart-delay", "5x", "--", "x"],
            "'--restart-delay",
        ),
        (
            vec!["--name", "a", "--update-delay", "fast", "--", "x"],
            "is not a duration",
        ),
        (
            vec!["--name", "a", "--reserve-memory", "12Q", "--", "x"],
            "is not a memory size",
        ),
        (
            vec!["--name", "a", "--limit-cpu", "many", "--", "x"],
            "is not a number of CPUs",
        ),
        (
            vec![
                "--name",
                "a",
                "--reserve-memory",
                "128M",
                "--limit-memory",
                "64M",
                "--",
                "x",
            ],
            "reserve_memory: the reservation (128 MiB) is above the limit (64 MiB)",
        ),
        (
            vec![
                "--name",
                "a",
                "--reserve-cpu",
                "2",
                "--limit-cpu",
                "1",
                "--",
                "x",
            ],
            "reserve_cpu: the reservation",
        ),
        (
            vec!["--name", "a", "-p", "80:70000", "--", "x"],
            "out of range 1-65535",
        ),
        (
            vec!["--name", "a", "-p", "0:80", "--", "x"],
            "out of range 1-65535",
        ),
        (
            vec!["--name", "a", "-p", "80:80", "-p", "80:81", "--", "x"],
            "port 80/tcp is published twice",
        ),
        (
            vec!["--name", "a", "--network", "nope", "--", "x"],
            "network[0]: network \"nope\" does not exist",
        ),
        (vec!["--name", "a", "--env", "=1", "--", "x"], "env[0]"),
        (
            vec!["--name", "a", "--update-max-failure-ratio", "2", "--", "x"],
            "update_max_failure_ratio: must be between 0 and 1",
        ),
        (
            vec!["--name", "a", "--placement-pref", "spread=zone", "--", "x"],
            "placement_pref",
        ),
        (
            vec![
                "--name",
                "a",
                "--mode",
                "global",
                "--replicas-max-per-node",
                "2",
                "--",
                "x",
            ],
            "replicas_max_per_node",
        ),
        (vec!["--name", "a"], "command: a service needs a command"),
    ];
    for (args, expected) in cases {
        let mut full = vec!["service", "create"];
        full.extend(args.iter().copied());
        let err = d.fails(&full);
        assert!(
            err.contains(expected),
            "shoal {full:?}: expected {expected:?} in {err:?}"
        );
    }
    // Updates, scale and other objects are checked the same way.
    for (args, expected) in [
        (
            vec!["service", "update", "web", "--replicas", "-2"],
            "replicas: must be 0 or more",
        ),
        (
            vec![
                "service",
                "update",
                "web",
                "--constraint",
                "node.role=manager",
            ],
            "expected KEY==VALUE",
        ),
        (
            vec!["service", "scale", "web=-1"],
            "replicas: must be 0 or more",
        ),
        (vec!["service", "scale", "web"], "is not SERVICE=REPLICAS"),
        (
            vec!["service", "scale", "nosuch=2"],
            "service \"nosuch\" not found",
        ),
        (
            vec!["service", "inspect", "nosuch"],
            "service \"nosuch\" not found",
        ),
        (
            vec!["service", "rm", "nosuch"],
            "service \"nosuch\" not found",
        ),
        (
            vec!["network", "create", "n1", "--subnet", "10.20.0.1/16"],
            "subnet: \"10.20.0.1/16\" has host bits set; did you mean 10.20.0.0/16?",
        ),
        (
            vec!["network", "create", "n1", "--subnet", "banana"],
            "subnet: \"banana\" is not in CIDR form",
        ),
        (
            vec!["network", "create", "n1", "--driver", "weird"],
            "driver: unknown driver \"weird\"",
        ),
        (
            vec!["network", "create", "bad_name"],
            "name: \"bad_name\" is not a valid name",
        ),
        (
            vec![
                "network",
                "create",
                "n1",
                "--subnet",
                "10.0.0.0/24",
                "--gateway",
                "10.0.1.1",
            ],
            "gateway: 10.0.1.1 is outside the subnet",
        ),
        (
            vec!["node", "update", "--availability", "gone", "self"],
            "'--availability",
        ),
        (
            vec!["node", "update", "--label-add", "=x", "self"],
            "is not KEY=VALUE",
        ),
        (
            vec!["node", "inspect", "nosuch"],
            "node \"nosuch\" not found",
        ),
        (
            vec!["node", "rm", "self"],
            "is the one this manager runs on and cannot be removed",
        ),
        (vec!["node", "rm", "nosuch"], "node \"nosuch\" not found"),
    ] {
        let err = d.fails(&args);
        assert!(
            err.contains(expected),
            "shoal {args:?}: expected {expected:?} in {err:?}"
        );
    }
    d.ok(&["network", "create", "n1", "--subnet", "10.20.0.0/16"]);
    let err = d.fails(&["network", "create", "n2", "--subnet", "10.20.5.0/24"]);
    assert!(
        err.contains("subnet: 10.20.5.0/24 overlaps 10.20.0.0/16 of network n1"),
        "{err}"
    );
    let err = d.fails(&["network", "create", "n1"]);
    assert!(
        err.contains("network name \"n1\" is already in use"),
        "{err}"
    );

    // Nothing of the refused requests was written.
    let services = json_lines(&d.ok(&["service", "ls", "--format", "json"]));
    assert_eq!(services.len(), 1, "{services:?}");
    let s = inspect_one(&d, &["service", "inspect", "web"]);
    assert_eq!(s["spec"]["replicas"], 1);
    assert_eq!(d.ok(&["network", "ls", "-q"]).lines().count(), 1);
}

#[test]
fn an_ambiguous_id_prefix_is_refused_and_names_resolve_first() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    // With 40 services, some pair shares a first character.
    for i in 0..40 {
        d.ok(&[
            "service",
            "create",
            "--name",
            &format!("s{i}"),
            "--",
            "sleep",
            "1",
        ]);
    }
    let ids: Vec<String> = d
        .ok(&["service", "ls", "-q"])
        .lines()
        .map(str::to_string)
        .collect();
    let prefix = ids
        .iter()
        .map(|id| &id[..1])
        .find(|p| ids.iter().filter(|id| id.starts_with(p)).count() > 1)
        .expect("40 ids over 36 first characters share one");
    let err = d.fails(&["service", "inspect", prefix]);
    assert!(err.contains("is ambiguous"), "{err}");
    assert_eq!(
        inspect_one(&d, &["service", "inspect", "s7"])["spec"]["annotations"]["name"],
        "s7"
    );
}

#[test]
fn events_stream_every_change_as_it_commits() {
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    let mut events = std::process::Command::new(harness::BIN)
        .args(["events", "--format", "json"])
        .env("SHOAL_SOCKET", &d.socket)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = events.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The stream may attach in the middle of a round: repeat rounds until one
    // service's create, update and remove have all been seen.
    let complete_round = |seen: &[serde_json::Value]| -> Option<serde_json::Value> {
        seen.iter()
            .find(|e| {
                e["type"] == "service"
                    && e["action"] == "create"
                    && seen.iter().any(|r| {
                        r["type"] == "service" && r["action"] == "remove" && r["name"] == e["name"]
                    })
            })
            .map(|e| e["name"].clone())
    };
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + harness::READY_WITHIN;
    let mut round = 0;
    while complete_round(&seen).is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "events never showed the changes: {seen:?}"
        );
        let name = format!("ev{round}");
        d.ok(&["service", "create", "--name", &name, "--", "sleep", "1"]);
        d.ok(&["service", "update", &name, "--replicas", "2"]);
        d.ok(&["service", "rm", &name]);
        round += 1;
        while let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(2)) {
            seen.push(serde_json::from_str(&line).unwrap());
        }
    }
    let _ = events.kill();
    let _ = events.wait();
    // Only that service's events (its tasks' events come in between).
    let name = complete_round(&seen).unwrap();
    let tail: Vec<&serde_json::Value> = seen
        .iter()
        .filter(|e| e["type"] == "service" && e["name"] == name)
        .collect();
    let actions: Vec<&str> = tail.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["create", "update", "remove"]);
    let versions: Vec<u64> = tail
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert!(
        versions[0] < versions[1] && versions[1] < versions[2],
        "{versions:?}"
    );
}

#[test]
fn clients_without_a_daemon_get_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("none.sock");
    let out = run(&["--socket", socket.to_str().unwrap(), "service", "ls"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("Error: cannot reach the shoal daemon at"),
        "{err}"
    );
    assert!(err.contains("none.sock"), "{err}");
}

#[test]
fn foreign_damaged_or_busy_state_dirs_are_refused_never_reset() {
    let tmp = tempfile::tempdir().unwrap();
    // Foreign: a directory with someone else's files.
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let out = harness::run_daemon(&foreign, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a Shoal state dir"), "{err}");
    assert_eq!(
        std::fs::read_to_string(foreign.join("notes.txt")).unwrap(),
        "mine"
    );

    // Busy: a second daemon on a dir in use.
    let dir = tmp.path().join("s1");
    let mut d = Daemon::start(&dir);
    d.ok(&["service", "create", "--name", "web", "--", "sleep", "1"]);
    let out = harness::run_daemon(&dir, &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another shoal daemon"));
    d.stop();

    // Damaged raft log.
    let log = dir.join("raft").join("raft.redb");
    let original = std::fs::read(&log).unwrap();
    std::fs::write(&log, b"garbage").unwrap();
    let out = harness::run_daemon(&dir, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("Error: ") && err.contains("raft.redb"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&log).unwrap(),
        b"garbage",
        "the damaged file must be left for the operator"
    );

    // Damaged marker.
    std::fs::write(&log, &original).unwrap();
    std::fs::write(dir.join("shoal-state.json"), "{").unwrap();
    let out = harness::run_daemon(&dir, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("shoal-state.json is damaged"), "{err}");
}

#[test]
fn a_clean_restart_keeps_every_object_and_version() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s1");
    let mut d = Daemon::start(&dir);
    d.ok(&["network", "create", "backend"]);
    d.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--network",
        "backend",
        "--",
        "sleep",
        "1",
    ]);
    d.ok(&["service", "scale", "web=7"]);
    let before = inspect_one(&d, &["service", "inspect", "web"]);
    let node_before = inspect_one(&d, &["node", "inspect", "self"]);
    d.stop();
    assert!(
        !dir.join("shoal.sock").exists(),
        "a clean stop removes the socket"
    );
    let d = Daemon::start(&dir);
    assert_eq!(inspect_one(&d, &["service", "inspect", "web"]), before);
    let node_after = inspect_one(&d, &["node", "inspect", "self"]);
    assert_eq!(
        node_after["id"], node_before["id"],
        "the node keeps its identity"
    );
}

#[test]
fn a_daemon_never_takes_over_the_control_socket_another_daemon_answers_on() {
    let tmp = tempfile::tempdir().unwrap();
    let first = Daemon::start(&tmp.path().join("s1"));
    let out = harness::run_daemon(
        &tmp.path().join("s2"),
        &["--socket", first.socket.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another daemon answers on this socket"),
        "{err}"
    );
    // The first still answers on it.
    first.ok(&["node", "ls"]);
}

#[test]
fn a_client_whose_reader_went_ends_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    d.ok(&["service", "create", "--name", "web", "--", "sleep", "300"]);
    // `shoal service inspect web | grep -q web`: the reader is gone before
    // the client prints.
    let mut child = std::process::Command::new(harness::BIN)
        .args(["service", "inspect", "web"])
        .env("SHOAL_SOCKET", &d.socket)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "{stderr}");
}
