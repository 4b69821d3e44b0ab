//! Declared services run as processes and stay as declared through task and
//! daemon failures: the real daemon, CLI and processes.

mod harness;

use std::collections::HashMap;
use std::time::Instant;

use harness::{after_an_orchestrator_pass, json_lines, replicas, wait_until, Daemon, READY_WITHIN};

/// The live task processes of this daemon, by task id.
fn processes(d: &Daemon) -> HashMap<String, u32> {
    shoal_agent::find_task_processes(&d.state_dir.join("tasks"))
}

fn tasks(d: &Daemon, service: &str) -> Vec<serde_json::Value> {
    json_lines(&d.ok(&["service", "ps", "-a", service, "--format", "json"]))
}

#[test]
fn replicas_run_as_processes_and_follow_scale_and_removal() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    d.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "--",
        "sleep",
        "300",
    ]);
    wait_until("3/3 running", || {
        replicas(&d, "web") == "3/3" && processes(&d).len() == 3
    });
    let rows = json_lines(&d.ok(&["service", "ps", "web", "--format", "json"]));
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["web.1", "web.2", "web.3"]);
    assert!(rows
        .iter()
        .all(|r| r["current_state"].as_str().unwrap().starts_with("Running")));

    d.ok(&["service", "scale", "web=5"]);
    wait_until("5 processes", || {
        replicas(&d, "web") == "5/5" && processes(&d).len() == 5
    });
    d.ok(&["service", "scale", "web=1"]);
    wait_until("1 process", || {
        replicas(&d, "web") == "1/1" && processes(&d).len() == 1
    });
    d.ok(&["service", "rm", "web"]);
    wait_until("every process gone", || processes(&d).is_empty());
    wait_until("every task reaped", || {
        d.ok(&["task", "ls", "-a", "-q"]).is_empty()
    });
}

#[test]
fn a_killed_task_is_replaced_unless_the_restart_policy_says_no() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    d.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--restart-delay",
        "0s",
        "--",
        "sleep",
        "300",
    ]);
    d.ok(&[
        "service",
        "create",
        "--name",
        "once",
        "--restart-condition",
        "none",
        "--",
        "sleep",
        "300",
    ]);
    wait_until("both running", || {
        replicas(&d, "web") == "1/1" && replicas(&d, "once") == "1/1"
    });
    for pgid in processes(&d).values() {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pgid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    // web: the killed task is Failed with exit status 137 and a new one runs.
    wait_until("web replaced", || {
        let t = tasks(&d, "web");
        t.len() == 2 && replicas(&d, "web") == "1/1"
    });
    let failed = tasks(&d, "web")
        .into_iter()
        .find(|t| t["desired_state"] == "Shutdown")
        .unwrap();
    assert!(
        failed["current_state"]
            .as_str()
            .unwrap()
            .starts_with("Failed"),
        "{failed}"
    );
    assert_eq!(failed["error"], "exit status 137");
    // once: left Failed, not replaced.
    wait_until("once failed", || {
        tasks(&d, "once")[0]["current_state"]
            .as_str()
            .unwrap()
            .starts_with("Failed")
    });
    assert_eq!(tasks(&d, "once").len(), 1);
    assert_eq!(replicas(&d, "once"), "0/1");
}

#[test]
fn a_clean_exit_under_on_failure_is_complete_and_not_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    d.ok(&[
        "service",
        "create",
        "--name",
        "job",
        "--restart-condition",
        "on-failure",
        "--",
        "true",
    ]);
    wait_until("complete", || {
        tasks(&d, "job")
            .first()
            .is_some_and(|t| t["current_state"].as_str().unwrap().starts_with("Complete"))
    });
    // A pass that saw the completion must not have added a task.
    after_an_orchestrator_pass(&d);
    assert_eq!(tasks(&d, "job").len(), 1);
}

#[test]
fn a_missing_program_is_rejected_with_the_os_error_and_restarts_stop_at_max_attempts() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    d.ok(&[
        "service",
        "create",
        "--name",
        "bad",
        "--restart-delay",
        "0s",
        "--restart-max-attempts",
        "2",
        "--",
        "no-such-program-xyz",
    ]);
    wait_until("three rejected tasks", || {
        let t = tasks(&d, "bad");
        t.len() == 3
            && t.iter()
                .all(|t| t["current_state"].as_str().unwrap().starts_with("Rejected"))
    });
    let t = tasks(&d, "bad");
    assert!(
        t.iter()
            .all(|t| t["error"]
                == "exec \"no-such-program-xyz\": executable file not found in $PATH"),
        "{t:?}"
    );
    // A fourth task would come once the last one's restart delay (at least
    // 1 s for a rejected task) is over: wait past that, then for a pass.
    let newest = t
        .iter()
        .map(|t| {
            let id = t["id"].as_str().unwrap();
            let inspected: serde_json::Value =
                serde_json::from_str(&d.ok(&["task", "inspect", id])).unwrap();
            inspected[0]["meta"]["created_at_ms"].as_i64().unwrap()
        })
        .max()
        .unwrap();
    wait_until("the last restart delay is over", || {
        shoal_api::clock::now_ms() > newest + 1_500
    });
    after_an_orchestrator_pass(&d);
    assert_eq!(tasks(&d, "bad").len(), 3, "restarts went past max attempts");
}

#[test]
fn kill_9_of_the_daemon_neither_duplicates_nor_loses_running_tasks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s1");
    let mut d = Daemon::start(&dir);
    d.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "--",
        "sleep",
        "300",
    ]);
    wait_until("3 running", || {
        replicas(&d, "web") == "3/3" && processes(&d).len() == 3
    });
    let before = processes(&d);
    d.kill9();
    assert_eq!(processes(&d), before, "task processes outlive the daemon");

    // Phase 2: the restarted daemon adopts them: same tasks, same processes.
    let d = Daemon::start(&dir);
    wait_until("3/3 again", || replicas(&d, "web") == "3/3");
    assert_eq!(
        processes(&d),
        before,
        "a restart must not duplicate or replace running tasks"
    );

    // Phase 3: a crash in the middle of a scale-up converges to exactly 6.
    d.ok(&["service", "scale", "web=6"]);
    let mut d = d;
    d.kill9();
    let d = Daemon::start(&dir);
    wait_until("exactly 6", || {
        replicas(&d, "web") == "6/6" && processes(&d).len() == 6
    });
    d.ok(&["service", "rm", "web"]);
    wait_until("no leftovers", || processes(&d).is_empty());
}

#[test]
fn logs_show_each_tasks_output_under_its_name_and_inspect_shows_the_status_history() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    d.ok(&[
        "service",
        "create",
        "--name",
        "talk",
        "--replicas",
        "2",
        "--",
        "sh",
        "-c",
        "echo hello from $SHOAL_TASK_ID; echo oops >&2; sleep 300",
    ]);
    wait_until("both tasks wrote", || {
        let out = d.shoal(&["service", "logs", "talk"]);
        String::from_utf8_lossy(&out.stdout).lines().count() == 2
            && String::from_utf8_lossy(&out.stderr).lines().count() == 2
    });
    let out = d.shoal(&["service", "logs", "talk"]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    for row in json_lines(&d.ok(&["service", "ps", "talk", "--format", "json"])) {
        let id = row["id"].as_str().unwrap();
        let prefix = format!("{}.{}", row["name"].as_str().unwrap(), &id[..12]);
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no line of {prefix}: {stdout}"));
        assert!(line.ends_with(&format!("| hello from {id}")), "{line}");
    }
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .lines()
        .all(|l| l.ends_with("| oops")));

    // task inspect: the whole task, with the statuses it went through.
    let id = d
        .ok(&["service", "ps", "talk", "-q"])
        .lines()
        .next()
        .unwrap()
        .to_string();
    let task: Vec<serde_json::Value> =
        serde_json::from_str(&d.ok(&["task", "inspect", &id])).unwrap();
    let task = &task[0];
    assert_eq!(task["status"]["state"], "RUNNING");
    assert!(task["status"]["pid"].as_u64().unwrap() > 0);
    let history: Vec<&str> = task["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    // Every transition is recorded, in order.
    assert_eq!(
        history,
        [
            "NEW",
            "PENDING",
            "ASSIGNED",
            "ACCEPTED",
            "PREPARING",
            "READY",
            "STARTING"
        ],
        "{history:?}"
    );
}

#[test]
fn logs_follow_prints_what_tasks_write_as_they_write_it_until_the_client_goes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    d.ok(&[
        "service",
        "create",
        "--name",
        "tick",
        "--",
        "sh",
        "-c",
        "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done",
    ]);
    let (mut follow, rx) = d.follow(&["service", "logs", "-f", "tick"]);
    // Lines keep coming: at least ten distinct ticks.
    let mut ticks = std::collections::BTreeSet::new();
    let deadline = Instant::now() + READY_WITHIN;
    while ticks.len() < 10 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("logs -f stopped printing");
        ticks.insert(line.rsplit("| ").next().unwrap().to_string());
    }
    let _ = follow.kill();
    let _ = follow.wait();
    // The client went: its read stops where the task runs.
    harness::wait_until("the agent's read of the task stops", || {
        d.log_text().contains("a log read ended: cancelled")
    });
}

#[test]
fn logs_of_any_size_end_with_the_newest_line_and_take_tail_raw_and_no_task_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    // About 2.3 MB: larger than one read of the log.
    d.ok(&[
        "service",
        "create",
        "--name",
        "big",
        "--restart-condition",
        "none",
        "--",
        "seq",
        "1",
        "300000",
    ]);
    wait_until("the task finished", || {
        tasks(&d, "big").iter().any(|t| {
            t["current_state"]
                .as_str()
                .unwrap_or("")
                .starts_with("Complete")
        })
    });
    let raw = d.ok(&["service", "logs", "--raw", "big"]);
    let lines: Vec<&str> = raw.lines().collect();
    assert_eq!(lines.len(), 300_000, "not the whole log");
    assert_eq!(lines.first(), Some(&"1"));
    assert_eq!(lines.last(), Some(&"300000"), "the newest line is missing");

    let tail = d.ok(&["service", "logs", "--tail", "3", "big"]);
    let ends: Vec<&str> = tail
        .lines()
        .map(|l| l.rsplit("| ").next().unwrap())
        .collect();
    assert_eq!(ends, ["299998", "299999", "300000"]);
    assert!(tail.lines().all(|l| l.starts_with("big.1.")), "{tail}");

    let short = d.ok(&["service", "logs", "-n", "1", "--no-task-ids", "big"]);
    assert_eq!(
        short.split_whitespace().collect::<Vec<_>>(),
        ["big.1", "|", "300000"]
    );

    let err = d.fails(&["service", "logs", "--tail", "many", "big"]);
    assert!(err.contains("must be a number of lines or `all`"), "{err}");
}

#[test]
fn logs_timestamps_show_when_each_line_was_written_and_since_keeps_the_later_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    d.ok(&[
        "service",
        "create",
        "--name",
        "clock",
        "--",
        "sh",
        "-c",
        "echo early; sleep 1.5; echo late; sleep 1000",
    ]);
    wait_until("both lines logged", || {
        d.ok(&["service", "logs", "--raw", "clock"])
            .contains("late")
    });
    let stamped = d.ok(&["service", "logs", "--timestamps", "--raw", "clock"]);
    let lines: Vec<(i64, &str)> = stamped
        .lines()
        .map(|l| {
            let (stamp, text) = l.split_once(' ').expect("a stamp, a space, the line");
            let at = shoal_api::log_time::parse_rfc3339(stamp)
                .unwrap_or_else(|| panic!("not an RFC 3339 time: {stamp:?}"));
            (at, text)
        })
        .collect();
    assert_eq!(
        lines.iter().map(|(_, t)| *t).collect::<Vec<_>>(),
        ["early", "late"]
    );
    assert!(lines[1].0 - lines[0].0 >= 1_000_000_000, "{lines:?}");
    // With the task's name too, the stamp comes first.
    let named = d.ok(&["service", "logs", "-t", "--no-task-ids", "clock"]);
    assert!(
        named
            .lines()
            .all(|l| l.split(' ').nth(1) == Some("clock.1")),
        "{named}"
    );

    let late_stamp = stamped.lines().nth(1).unwrap().split(' ').next().unwrap();
    let since = d.ok(&["service", "logs", "--raw", "--since", late_stamp, "clock"]);
    assert_eq!(since.lines().collect::<Vec<_>>(), ["late"]);
    let hour = d.ok(&["service", "logs", "--raw", "--since", "1h", "clock"]);
    assert_eq!(hour.lines().collect::<Vec<_>>(), ["early", "late"]);
    let future = d.ok(&[
        "service",
        "logs",
        "--raw",
        "--since",
        "2100-01-01T00:00:00Z",
        "clock",
    ]);
    assert_eq!(future, "");

    let err = d.fails(&["service", "logs", "--since", "yesterday", "clock"]);
    assert!(err.contains("--since") && err.contains("RFC 3339"), "{err}");
}
