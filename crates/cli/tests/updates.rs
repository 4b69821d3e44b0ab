//! Rolling updates and rollbacks as a user sees them: the real daemon, CLI
//! and processes. The exact decisions (parallelism, delay, monitor, failure
//! ratio, orders) are checked as action lists in the manager's
//! `rolling_updates` tests; these check that a user's flags reach them and
//! what `inspect` and `ls` report.

mod harness;

use harness::{all_tasks, json_lines, replicas, update_state, wait_until, Daemon};
use serde_json::Value;

fn inspect(d: &Daemon, service: &str) -> Value {
    let out: Value = serde_json::from_str(&d.ok(&["service", "inspect", service])).unwrap();
    out[0].clone()
}

fn command(spec: &Value) -> Vec<String> {
    spec["task"]["runtime"]["command"]
        .as_array()
        .unwrap_or_else(|| panic!("no command in {spec}"))
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect()
}

fn command_of_task(t: &Value) -> Vec<String> {
    command(&serde_json::json!({ "task": t["spec"] }))
}

/// When the task's status first said `state`, if it did.
fn time_of(t: &Value, state: &str) -> Option<i64> {
    std::iter::once(&t["status"])
        .chain(t["history"].as_array().into_iter().flatten())
        .find(|s| s["state"] == state)
        .map(|s| s["timestamp_ms"].as_i64().unwrap())
}

fn running_pids(d: &Daemon) -> Vec<u32> {
    let mut pids: Vec<u32> = harness::task_processes(d).into_values().collect();
    pids.sort();
    pids
}

fn create(d: &Daemon, name: &str, count: &str, flags: &[&str]) {
    let mut args = vec!["service", "create", "--name", name, "--replicas", count];
    args.extend(flags);
    args.extend(["--", "sleep", "300"]);
    d.ok(&args);
    let want = format!("{count}/{count}");
    wait_until("every replica running", || replicas(d, name) == want);
}

#[test]
fn an_update_whose_new_command_fails_rolls_back_by_itself_and_reports_rollback_completed() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    create(
        &d,
        "web",
        "3",
        &[
            "--update-parallelism",
            "1",
            // The next slot waits 30 s after the first new task runs: the
            // failure is seen long before, so only one slot is touched.
            "--update-delay",
            "30s",
            "--update-failure-action",
            "rollback",
            "--update-monitor",
            "2s",
            "--rollback-parallelism",
            "0",
            "--rollback-monitor",
            "1s",
        ],
    );
    let before = running_pids(&d);
    d.ok(&["service", "update", "web", "--", "sh", "-c", "exit 3"]);
    wait_until("the update rolled back and completed", || {
        update_state(&d, "web") == "ROLLBACK_COMPLETED"
    });
    let service = inspect(&d, "web");
    assert_eq!(
        command(&service["spec"]),
        ["sleep", "300"],
        "the previous spec is back"
    );
    assert_eq!(command(&service["previous_spec"]), ["sh", "-c", "exit 3"]);
    let message = service["update_status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("rollback completed"),
        "the last word is the rollback's: {message}"
    );
    wait_until("3/3 running the old command", || {
        replicas(&d, "web") == "3/3" && running_pids(&d).len() == 3
    });
    // One at a time, then the delay: the first new task failed, so the
    // other two slots never left their processes.
    let after = running_pids(&d);
    let kept = before.iter().filter(|p| after.contains(p)).count();
    assert_eq!(kept, 2, "before {before:?}, after {after:?}");
    let failed: Vec<Value> = all_tasks(&d, "web")
        .into_iter()
        .filter(|t| command_of_task(t) == ["sh", "-c", "exit 3"])
        .collect();
    assert_eq!(
        failed.len(),
        1,
        "only one task of the failing spec was made"
    );
}

#[test]
fn parallelism_and_delay_are_honoured_one_task_after_another() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    create(
        &d,
        "web",
        "3",
        &[
            "--update-parallelism",
            "1",
            "--update-delay",
            "1s",
            "--update-monitor",
            "500ms",
        ],
    );
    d.ok(&["service", "update", "web", "--env", "V=2"]);
    wait_until("the update completed", || {
        update_state(&d, "web") == "COMPLETED"
    });
    let mut new: Vec<Value> = all_tasks(&d, "web")
        .into_iter()
        .filter(|t| t["spec"]["runtime"]["env"][0] == "V=2")
        .collect();
    assert_eq!(new.len(), 3);
    new.sort_by_key(|t| t["meta"]["created_at_ms"].as_i64().unwrap());
    for pair in new.windows(2) {
        let ran = time_of(&pair[0], "RUNNING").expect("each new task ran");
        let next = pair[1]["meta"]["created_at_ms"].as_i64().unwrap();
        assert!(
            next >= ran + 1_000,
            "a task was made {} ms after the previous one ran, within the 1 s delay",
            next - ran
        );
    }
}

#[test]
fn start_first_stops_each_old_task_only_after_its_replacement_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    create(
        &d,
        "web",
        "2",
        &["--update-order", "start-first", "--update-monitor", "500ms"],
    );
    d.ok(&["service", "update", "web", "--env", "V=2"]);
    wait_until("the update completed", || {
        update_state(&d, "web") == "COMPLETED"
    });
    let tasks = all_tasks(&d, "web");
    for slot in [1, 2] {
        let of_slot: Vec<&Value> = tasks.iter().filter(|t| t["slot"] == slot).collect();
        let old = of_slot
            .iter()
            .find(|t| t["spec"]["runtime"]["env"].as_array().unwrap().is_empty())
            .expect("the old task is kept in the history");
        let new = of_slot
            .iter()
            .find(|t| t["spec"]["runtime"]["env"][0] == "V=2")
            .unwrap();
        let new_ran = time_of(new, "RUNNING").unwrap();
        let old_stopped = time_of(old, "SHUTDOWN").unwrap();
        assert!(
            old_stopped >= new_ran,
            "slot {slot}: the old task stopped at {old_stopped}, before its replacement ran at {new_ran}"
        );
    }
}

#[test]
fn a_paused_update_shows_in_ls_and_a_service_update_resumes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    create(&d, "web", "2", &["--update-monitor", "1s"]);
    d.ok(&["service", "update", "web", "--", "sh", "-c", "exit 3"]);
    wait_until("the update paused", || update_state(&d, "web") == "PAUSED");
    let message = inspect(&d, "web")["update_status"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.starts_with("update paused due to failure or early termination of task "),
        "{message}"
    );
    let row = json_lines(&d.ok(&["service", "ls", "--format", "json"]))
        .into_iter()
        .find(|s| s["name"] == "web")
        .unwrap();
    assert_eq!(row["update"], "update paused");
    // A fixed spec resumes the update, which completes.
    d.ok(&["service", "update", "web", "--", "sleep", "301"]);
    wait_until("the update completed", || {
        update_state(&d, "web") == "COMPLETED"
    });
    wait_until("2/2 running", || replicas(&d, "web") == "2/2");
    let row = json_lines(&d.ok(&["service", "ls", "--format", "json"]))
        .into_iter()
        .find(|s| s["name"] == "web")
        .unwrap();
    assert_eq!(row["update"], "updated");
}

#[test]
fn service_rollback_brings_the_previous_spec_back_and_force_replaces_every_task() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    create(
        &d,
        "web",
        "2",
        &[
            "--update-parallelism",
            "0",
            "--update-monitor",
            "200ms",
            "--rollback-monitor",
            "200ms",
        ],
    );
    let err = d.fails(&["service", "rollback", "web"]);
    assert!(
        err.contains("service web has no previous spec to roll back to"),
        "{err}"
    );
    // --force: the same spec, every task replaced.
    let before = running_pids(&d);
    d.ok(&["service", "update", "--force", "web"]);
    wait_until("every task replaced", || {
        let now = running_pids(&d);
        update_state(&d, "web") == "COMPLETED"
            && now.len() == 2
            && now.iter().all(|p| !before.contains(p))
    });
    d.ok(&["service", "update", "web", "--env", "V=2"]);
    wait_until("the update completed", || {
        update_state(&d, "web") == "COMPLETED"
    });
    let err = d.fails(&["service", "update", "web", "--rollback", "--env", "V=3"]);
    assert!(
        err.contains("--rollback puts the previous spec back and takes no other change"),
        "{err}"
    );
    d.ok(&["service", "rollback", "web"]);
    wait_until("the rollback completed", || {
        update_state(&d, "web") == "ROLLBACK_COMPLETED"
    });
    let service = inspect(&d, "web");
    assert_eq!(service["update_status"]["message"], "rollback completed");
    assert!(service["spec"]["task"]["runtime"]["env"]
        .as_array()
        .unwrap()
        .is_empty());
    // A scale after a rollback waits for the scale alone, and succeeds.
    let out = d.shoal_waiting(&["service", "update", "web", "--replicas", "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("3/3 running the old spec", || {
        replicas(&d, "web") == "3/3"
            && harness::task_processes(&d).len() == 3
            && all_tasks(&d, "web")
                .iter()
                .filter(|t| t["desired_state"] == "RUNNING")
                .all(|t| t["spec"]["runtime"]["env"].as_array().unwrap().is_empty())
    });
}

#[test]
fn a_change_waits_until_the_service_converges_printing_plain_lines_when_not_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    let out = d.shoal_waiting(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "2",
        "--",
        "sleep",
        "300",
    ]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("overall progress: 2 out of 2 tasks\n"),
        "{stdout}"
    );
    assert!(stdout.contains("1/2: running\n"), "{stdout}");
    assert!(
        stdout.ends_with("verify: Service web converged\n"),
        "{stdout}"
    );
    assert!(
        !stdout.contains('\x1b'),
        "control codes on a pipe: {stdout:?}"
    );
    // It returned once converged: nothing left to wait for.
    assert_eq!(replicas(&d, "web"), "2/2");

    // An update waits for the update to complete.
    let out = d.shoal_waiting(&[
        "service",
        "update",
        "web",
        "--env",
        "V=2",
        "--update-monitor",
        "200ms",
    ]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.ends_with("verify: Service web converged\n"),
        "{stdout}"
    );
    assert_eq!(update_state(&d, "web"), "COMPLETED");

    // --quiet: the ID alone.
    let out = d.shoal_waiting(&["service", "scale", "web=3", "-q"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "web scaled to 3\n");
    assert_eq!(replicas(&d, "web"), "3/3");
}

#[test]
fn an_update_that_pauses_or_rolls_back_fails_the_command_naming_why() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    create(&d, "web", "1", &["--update-monitor", "1s"]);
    let out = d.shoal_waiting(&["service", "update", "web", "--", "sh", "-c", "exit 3"]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success());
    assert!(
        stderr.starts_with("Error: update paused due to failure or early termination of task "),
        "{stderr}"
    );
    let out = d.shoal_waiting(&[
        "service",
        "update",
        "web",
        "--update-failure-action",
        "rollback",
        "--",
        "sh",
        "-c",
        "exit 4",
    ]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success());
    assert!(
        stderr.starts_with("Error: the update was rolled back: ")
            && stderr.contains("update rolled back due to failure or early termination of task "),
        "{stderr}"
    );
}

#[test]
fn detach_returns_at_once_even_when_the_service_cannot_converge() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    // No node has this label: without --detach this would wait for ever.
    let out = d.shoal_waiting(&[
        "service",
        "create",
        "--detach",
        "-q",
        "--name",
        "nowhere",
        "--constraint",
        "node.labels.zone==mars",
        "--",
        "sleep",
        "300",
    ]);
    assert!(out.status.success());
    let id = String::from_utf8(out.stdout).unwrap();
    assert_eq!(id.trim().len(), 25, "the ID alone: {id:?}");
    assert_eq!(replicas(&d, "nowhere"), "0/1");
}

#[test]
fn on_a_terminal_progress_is_drawn_in_place() {
    // A pseudo-terminal through util-linux's `script`.
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: no `script` (util-linux) to give the CLI a terminal");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    let command = format!(
        "{} service create --name web --replicas 2 -- sleep 300",
        env!("CARGO_BIN_EXE_shoal")
    );
    let out = std::process::Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .env("SHOAL_SOCKET", &d.socket)
        .env_remove("SHOAL_DETACH")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(
        screen.contains('\x1b'),
        "a terminal gets redrawn lines: {screen:?}"
    );
    assert!(
        screen.contains("overall progress: 2 out of 2 tasks"),
        "{screen:?}"
    );
    assert!(screen.contains("1/2: running"), "{screen:?}");
    assert!(
        screen.contains("verify: Service web converged"),
        "{screen:?}"
    );
    assert_eq!(replicas(&d, "web"), "2/2");
}

#[test]
fn a_replicated_job_runs_its_completions_max_concurrent_at_a_time_and_force_runs_it_again() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    // Waits until every completion is done.
    let out = d.shoal_waiting(&[
        "service",
        "create",
        "--name",
        "batch",
        "--mode",
        "replicated-job",
        "--replicas",
        "3",
        "--max-concurrent",
        "1",
        "--",
        "true",
    ]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.ends_with("verify: Service batch converged\n"),
        "{stdout}"
    );
    assert_eq!(replicas(&d, "batch"), "0/1 (3/3 completed)");
    let rows = json_lines(&d.ok(&["service", "ps", "batch", "--format", "json"]));
    assert_eq!(rows.len(), 3, "completed runs show in ps: {rows:?}");
    assert!(
        rows.iter().all(|r| r["desired_state"] == "Complete"),
        "{rows:?}"
    );
    // One at a time: each run was made after the previous one ended.
    let mut runs = all_tasks(&d, "batch");
    runs.sort_by_key(|t| t["meta"]["created_at_ms"].as_i64().unwrap());
    for pair in runs.windows(2) {
        let ended = time_of(&pair[0], "COMPLETE").unwrap();
        let next = pair[1]["meta"]["created_at_ms"].as_i64().unwrap();
        assert!(
            next >= ended,
            "a run began before the one before it completed"
        );
    }
    let before: Vec<String> = runs.iter().map(|t| t["id"].to_string()).collect();
    let out = d.shoal_waiting(&["service", "update", "--force", "batch"]);
    assert!(out.status.success());
    assert_eq!(replicas(&d, "batch"), "0/1 (3/3 completed)");
    let again = all_tasks(&d, "batch")
        .into_iter()
        .filter(|t| t["desired_state"] == "COMPLETE")
        .filter(|t| !before.contains(&t["id"].to_string()))
        .count();
    assert_eq!(again, 3, "--force ran every completion again");
    let err = d.fails(&["service", "rollback", "batch"]);
    assert!(
        err.contains("service batch is a job: a job's runs are not rolled out"),
        "{err}"
    );
}

/// The CURRENT STATE column of the service's live tasks.
fn current_states(d: &Daemon, service: &str) -> Vec<String> {
    json_lines(&d.ok(&["service", "ps", service, "--format", "json"]))
        .iter()
        .map(|r| r["current_state"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn a_health_check_shows_in_ps_replaces_a_task_that_turns_unhealthy_and_gates_updates() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    let flag = tmp.path().join("healthy");
    let check = format!("test -f {}", flag.display());
    let err = d.fails(&[
        "service",
        "create",
        "--name",
        "bad",
        "--health-cmd",
        &check,
        "--health-retries",
        "0",
        "--",
        "sleep",
        "300",
    ]);
    assert!(
        err.contains("health_retries: must be from 1 to 1000, got 0"),
        "{err}"
    );
    d.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--health-cmd",
        &check,
        "--health-interval",
        "100ms",
        "--health-retries",
        "2",
        "--restart-delay",
        "0s",
        "--update-monitor",
        "200ms",
        "--",
        "sleep",
        "300",
    ]);
    wait_until("the task runs, health starting", || {
        current_states(&d, "web")
            .iter()
            .any(|s| s.starts_with("Running") && s.ends_with("(health: starting)"))
    });
    std::fs::write(&flag, "").unwrap();
    wait_until("healthy", || {
        current_states(&d, "web")
            .iter()
            .any(|s| s.ends_with("(healthy)"))
    });
    let first = d.ok(&["service", "ps", "-q", "web"]).trim().to_string();
    let task: Vec<Value> = serde_json::from_str(&d.ok(&["task", "inspect", &first])).unwrap();
    assert_eq!(task[0]["status"]["health"], "HEALTHY");
    assert!(!task[0]["status"]["health_log"]
        .as_array()
        .unwrap()
        .is_empty());
    // The check starts failing: the task is failed, naming why, and replaced.
    std::fs::remove_file(&flag).unwrap();
    wait_until("the unhealthy task failed and was replaced", || {
        let now = d.ok(&["service", "ps", "-q", "web"]).trim().to_string();
        !now.is_empty() && now != first
    });
    let task: Vec<Value> = serde_json::from_str(&d.ok(&["task", "inspect", &first])).unwrap();
    assert_eq!(task[0]["status"]["state"], "FAILED");
    assert!(
        task[0]["status"]["err"]
            .as_str()
            .unwrap()
            .starts_with("unhealthy: the health check failed 2 times in a row"),
        "{}",
        task[0]["status"]
    );
    // An update counts a task as up only once healthy: never, here.
    let out = d.shoal_waiting(&["service", "update", "web", "--env", "V=2"]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success());
    assert!(stderr.contains("update paused due to failure"), "{stderr}");
    // Healthy again: a user's update resumes, and it completes.
    std::fs::write(&flag, "").unwrap();
    let out = d.shoal_waiting(&["service", "update", "web", "--env", "V=3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(update_state(&d, "web"), "COMPLETED");
}

#[test]
fn past_twenty_places_only_the_overall_line_is_drawn_from_the_managers_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("s1"));
    let out = d.shoal_waiting(&[
        "service",
        "create",
        "--name",
        "wide",
        "--replicas",
        "25",
        "--",
        "sleep",
        "300",
    ]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("overall progress: 25 out of 25 tasks\n"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("1/25:"),
        "no row per slot past 20: {stdout}"
    );
    assert!(
        stdout.ends_with("verify: Service wide converged\n"),
        "{stdout}"
    );
    assert_eq!(replicas(&d, "wide"), "25/25");
}
