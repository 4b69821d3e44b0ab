//! Named ports as a user sees them (`service create --port NAME[:PORT]`):
//! the real daemon and CLI, process tasks. Each task is given its ports on
//! its node and told them in its environment; static ones keep replicas
//! apart; a port something else holds fails the task, saying so.

mod harness;

use std::collections::HashSet;
use std::path::Path;

use harness::{all_tasks, json_lines, wait_until, Daemon};

/// A shell command that writes what the task was told of its ports to
/// `dir/<task id>`, then sleeps.
fn report_ports(dir: &Path) -> String {
    format!(
        "echo \"$SHOAL_PORT_HTTP $SHOAL_HOST_PORT_HTTP $SHOAL_IP_HTTP $SHOAL_ADDR_HTTP \
         $SHOAL_PORT_METRICS\" > {}/$SHOAL_TASK_ID.tmp && mv {0}/$SHOAL_TASK_ID.tmp \
         {0}/$SHOAL_TASK_ID; exec sleep 3600",
        dir.display()
    )
}

/// What each task wrote: task id → its words.
fn reports(dir: &Path) -> Vec<(String, Vec<String>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !n.ends_with(".tmp"))
        .map(|id| {
            let text = std::fs::read_to_string(dir.join(&id)).unwrap_or_default();
            (id, text.split_whitespace().map(str::to_string).collect())
        })
        .collect()
}

/// A TCP port nothing on this machine listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn each_task_is_told_its_own_ports_from_the_range_and_ps_shows_them() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let d = Daemon::start(&tmp.path().join("state"));
    // Six ports for three tasks of two ports each: every one is used, so
    // a port given twice leaves a task without one.
    d.ok(&["cluster", "update", "--dynamic-ports", "31000-31005"]);
    let script = report_ports(&out);
    d.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "--port",
        "http",
        "--port",
        "metrics",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    wait_until("three tasks report their ports", || {
        reports(&out).iter().filter(|(_, w)| w.len() == 5).count() >= 3
    });
    let reports = reports(&out);
    let mut ports = HashSet::new();
    for (id, words) in &reports {
        let [port, host_port, ip, addr, metrics] = &words[..] else {
            panic!("task {id} wrote {words:?}");
        };
        let port: u32 = port.parse().unwrap();
        assert!(
            (31000..=31999).contains(&port),
            "{port} is outside the range"
        );
        assert_eq!(
            host_port,
            &port.to_string(),
            "a process binds where it is reached"
        );
        assert!(ip.parse::<std::net::IpAddr>().is_ok(), "SHOAL_IP_HTTP={ip}");
        assert_eq!(addr, &format!("{ip}:{port}"));
        let metrics: u32 = metrics.parse().unwrap();
        assert!(
            ports.insert(port) && ports.insert(metrics),
            "a port was given twice on one node: {reports:?}"
        );
    }
    // `service ps` shows each task's ports as it was told them.
    let rows = json_lines(&d.ok(&["service", "ps", "web", "--format", "json"]));
    assert_eq!(rows.len(), 3);
    for row in rows {
        let id = row["id"].as_str().unwrap();
        let (_, words) = reports
            .iter()
            .find(|(t, _)| id.starts_with(t.as_str()) || t.starts_with(id))
            .unwrap_or_else(|| panic!("ps shows a task that never ran: {row}"));
        let shown = row["ports"].as_str().unwrap_or_default();
        assert_eq!(
            shown,
            format!("http={},metrics={}", words[0], words[4]),
            "ps shows other ports than the task was told"
        );
    }
}

#[test]
fn a_static_port_keeps_a_second_replica_off_the_node_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("state"));
    let port = free_port().to_string();
    d.ok(&[
        "service",
        "create",
        "--name",
        "one",
        "--replicas",
        "2",
        "--port",
        &format!("http:{port}"),
        "--",
        "sleep",
        "3600",
    ]);
    wait_until("one task runs and one waits, saying why", || {
        let tasks = all_tasks(&d, "one");
        let state = |t: &serde_json::Value| {
            t["status"]["state"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        let running = tasks.iter().filter(|t| state(t) == "RUNNING").count();
        let waiting = tasks.iter().any(|t| {
            state(t) == "PENDING"
                && t["status"]["err"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(&format!("host port {port}/tcp in use"))
        });
        running == 1 && waiting
    });
    let rows = json_lines(&d.ok(&["service", "ps", "one", "--format", "json"]));
    assert!(
        rows.iter().any(|r| r["ports"] == format!("http={port}")),
        "the running task shows its static port: {rows:?}"
    );
}

#[test]
fn a_port_held_by_something_else_fails_the_task_saying_so() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("state"));
    let holder = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    d.ok(&[
        "service",
        "create",
        "--name",
        "taken",
        "--port",
        &format!("http:{port}"),
        "--",
        "sleep",
        "3600",
    ]);
    wait_until("the task fails, naming the port", || {
        all_tasks(&d, "taken").iter().any(|t| {
            // Refused before it started: rejected, as docker says.
            t["status"]["state"] == "REJECTED"
                && t["status"]["err"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(&format!("port {port} (http) is not free on this node"))
        })
    });
    drop(holder);
    wait_until("a replacement runs once the port is free", || {
        all_tasks(&d, "taken")
            .iter()
            .any(|t| t["status"]["state"] == "RUNNING")
    });
}

#[test]
fn bad_named_ports_and_ranges_are_refused_naming_the_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("state"));
    let create = |ports: &[&str]| {
        let mut args = vec!["service", "create", "--name", "bad"];
        for p in ports {
            args.extend(["--port", p]);
        }
        args.extend(["--", "sleep", "60"]);
        d.fails(&args)
    };
    let e = create(&["1http"]);
    assert!(
        e.contains("port[0]") && e.contains("a letter, then letters, digits and '_'"),
        "{e}"
    );
    let e = create(&["http", "HTTP"]);
    assert!(e.contains("port[1]") && e.contains("given twice"), "{e}");
    let e = create(&["a:8080", "b:8080"]);
    assert!(
        e.contains("port[1]") && e.contains("asked for by both"),
        "{e}"
    );
    let e = d.fails(&[
        "service",
        "create",
        "--name",
        "bad",
        "--port",
        "http:8080",
        "--publish",
        "published=8080,target=80,mode=host",
        "--",
        "sleep",
        "60",
    ]);
    assert!(
        e.contains("publish[0]") && e.contains("named port \"http\" too"),
        "{e}"
    );
    let e = create(&["http:70000"]);
    assert!(
        e.contains("\"http:70000\"") && e.contains("NAME[:PORT]"),
        "{e}"
    );
    let e = d.fails(&["cluster", "update", "--dynamic-ports", "30000-20000"]);
    assert!(e.contains("30000 is above 20000"), "{e}");
    let e = d.fails(&["cluster", "update", "--dynamic-ports", "20000"]);
    assert!(e.contains("FIRST-LAST"), "{e}");
    // Nothing was half-written.
    assert!(d.ok(&["service", "ls", "-q"]).trim().is_empty());
}

#[test]
fn a_task_placed_where_no_port_of_the_range_is_free_is_rejected_saying_so() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("state"));
    let port = free_port();
    d.ok(&[
        "cluster",
        "update",
        "--dynamic-ports",
        &format!("{port}-{port}"),
    ]);
    d.ok(&[
        "service",
        "create",
        "--name",
        "two",
        "--replicas",
        "2",
        "--port",
        "http",
        "--detach",
        "--",
        "sleep",
        "3600",
    ]);
    wait_until(
        "one task runs on the range's one port, the other is rejected",
        || {
            let tasks = all_tasks(&d, "two");
            let running = tasks.iter().any(|t| t["status"]["state"] == "RUNNING");
            let rejected = tasks.iter().any(|t| {
                t["status"]["state"] == "REJECTED"
                    && t["status"]["err"].as_str().unwrap_or_default().contains(
                        "port http: no port of the cluster's dynamic range was free on this node",
                    )
            });
            running && rejected
        },
    );
}
