//! The process executor and the task state machine with real processes.

use std::path::Path;
use std::time::{Duration, Instant};

use shoal_agent::{Executor, ProcessConfig, ProcessExecutor, TaskRunner, TaskUpdate};
use shoal_api::{Runtime, Task, TaskSpec, TaskState, TaskStatus};
use tokio::sync::{mpsc, watch};

/// Generous: the CI machine is a loaded 2-core box.
const WITHIN: Duration = Duration::from_secs(60);

/// A log's text without the time stamp at the start of each line; panics
/// on a line without one.
fn log_text(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let mut text = Vec::new();
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        let (_, rest) = shoal_api::log_time::split_stamp(line)
            .unwrap_or_else(|| panic!("a line without a stamp in {}: {line:?}", path.display()));
        text.extend_from_slice(rest);
    }
    String::from_utf8(text).unwrap()
}

fn task(id: &str, command: &[&str], configure: impl FnOnce(&mut Runtime)) -> Task {
    let mut runtime = Runtime {
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    configure(&mut runtime);
    Task {
        id: id.into(),
        spec: Some(TaskSpec {
            runtime: Some(runtime),
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct Running {
    desired: watch::Sender<TaskState>,
    updates: mpsc::Receiver<TaskUpdate>,
    seen: Vec<TaskStatus>,
    done: tokio::task::JoinHandle<TaskState>,
}

fn start(dir: &Path, task: &Task, desired: TaskState, grace: Duration) -> Running {
    let executor = ProcessExecutor::new(&ProcessConfig::new(dir.to_path_buf()), task);
    let (desired_tx, desired_rx) = watch::channel(desired);
    let (tx, updates) = mpsc::channel(64);
    let runner = TaskRunner::new(
        task.id.clone(),
        executor,
        TaskState::Assigned,
        desired_rx,
        tx,
        grace,
    );
    Running {
        desired: desired_tx,
        updates,
        seen: Vec::new(),
        done: tokio::spawn(runner.run()),
    }
}

impl Running {
    /// Collects updates until one reaches `state`; returns it.
    async fn until(&mut self, state: TaskState) -> TaskStatus {
        let deadline = Instant::now() + WITHIN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let update = tokio::time::timeout(left, self.updates.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("no {state:?} within {WITHIN:?}; saw {:?}", self.states())
                })
                .unwrap_or_else(|| {
                    panic!("runner ended before {state:?}; saw {:?}", self.states())
                });
            self.seen.push(update.status.clone());
            if update.status.state == state as i32 {
                return update.status;
            }
        }
    }

    fn states(&self) -> Vec<TaskState> {
        self.seen
            .iter()
            .map(|s| TaskState::try_from(s.state).unwrap())
            .collect()
    }

    async fn finish(self) -> (TaskState, Vec<TaskState>) {
        let states = self.states();
        let last = tokio::time::timeout(WITHIN, self.done)
            .await
            .expect("runner ends")
            .unwrap();
        (last, states)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_runs_to_completion_reporting_every_state_in_order_with_its_output_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let t = task("t1", &["sh", "-c", "echo hello; echo oops >&2"], |_| {});
    let mut run = start(tmp.path(), &t, TaskState::Running, WITHIN);
    let done = run.until(TaskState::Complete).await;
    assert_eq!(done.exit_code, 0);
    assert!(done.pid > 0, "the pid is reported");
    let (last, states) = run.finish().await;
    assert_eq!(last, TaskState::Complete);
    use TaskState::*;
    assert_eq!(
        states,
        [Accepted, Preparing, Ready, Starting, Running, Complete]
    );
    assert_eq!(log_text(&tmp.path().join("t1/stdout.log")), "hello\n");
    assert_eq!(log_text(&tmp.path().join("t1/stderr.log")), "oops\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonzero_exit_is_failed_with_its_exit_status() {
    let tmp = tempfile::tempdir().unwrap();
    let mut run = start(
        tmp.path(),
        &task("t1", &["sh", "-c", "exit 3"], |_| {}),
        TaskState::Running,
        WITHIN,
    );
    let failed = run.until(TaskState::Failed).await;
    assert_eq!(failed.exit_code, 3);
    assert_eq!(failed.err, "exit status 3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_process_is_failed_with_exit_status_137() {
    let tmp = tempfile::tempdir().unwrap();
    let mut run = start(
        tmp.path(),
        &task("t1", &["sleep", "300"], |_| {}),
        TaskState::Running,
        WITHIN,
    );
    let running = run.until(TaskState::Running).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(running.pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let failed = run.until(TaskState::Failed).await;
    assert_eq!(failed.exit_code, 137);
    assert_eq!(failed.err, "exit status 137");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_executable_or_bad_workdir_is_rejected_with_the_os_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: Vec<(Task, &str)> = vec![
        (
            task("t1", &["no-such-program-xyz"], |_| {}),
            "exec \"no-such-program-xyz\": executable file not found in $PATH",
        ),
        (
            task("t2", &["/no/such/program"], |_| {}),
            "exec \"/no/such/program\": No such file or directory (os error 2)",
        ),
        (
            task("t3", &["true"], |r| r.dir = "/no/such/dir".into()),
            "workdir /no/such/dir: No such file or directory (os error 2)",
        ),
        (
            task("t4", &["true"], |r| r.user = "no-such-user-xyz".into()),
            "user \"no-such-user-xyz\": no such user",
        ),
    ];
    for (t, expected) in cases {
        let mut run = start(tmp.path(), &t, TaskState::Running, WITHIN);
        let rejected = run.until(TaskState::Rejected).await;
        assert_eq!(rejected.err, expected);
        let (last, states) = run.finish().await;
        assert_eq!(last, TaskState::Rejected);
        assert!(
            !states.contains(&TaskState::Starting),
            "a rejected task never starts: {states:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_sigterm_and_sigkill_after_the_grace_period() {
    let tmp = tempfile::tempdir().unwrap();
    // A process that ignores SIGTERM (its sleep inherits the ignore).
    let stubborn = task(
        "t1",
        &["sh", "-c", "trap '' TERM; echo ready; sleep 300"],
        |_| {},
    );
    let grace = Duration::from_millis(300);
    let mut run = start(tmp.path(), &stubborn, TaskState::Running, grace);
    let pid = run.until(TaskState::Running).await.pid;
    // RUNNING means spawned; wait until the shell has set its trap.
    let log = tmp.path().join("t1/stdout.log");
    let deadline = Instant::now() + WITHIN;
    while log_text(&log) != "ready\n" {
        assert!(Instant::now() < deadline, "the script never got ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let asked = Instant::now();
    run.desired.send(TaskState::Shutdown).unwrap();
    run.until(TaskState::Shutdown).await;
    assert!(
        asked.elapsed() >= grace,
        "SIGKILL came before the grace period ended: {:?}",
        asked.elapsed()
    );
    let deadline = Instant::now() + WITHIN;
    while !live_members_of_group(pid).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the process group outlived its shutdown: {:?}",
            live_members_of_group(pid)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A process that honours SIGTERM stops without waiting for the grace period.
    let polite = task("t2", &["sleep", "300"], |_| {});
    let mut run = start(tmp.path(), &polite, TaskState::Running, WITHIN * 10);
    run.until(TaskState::Running).await;
    run.desired.send(TaskState::Shutdown).unwrap();
    run.until(TaskState::Shutdown).await;
    let (last, _) = run.finish().await;
    assert_eq!(last, TaskState::Shutdown);
}

/// Processes of a process group that are not zombies (a killed grandchild
/// stays a zombie until its new parent reaps it; it runs no more).
fn live_members_of_group(pgid: u32) -> Vec<u32> {
    let mut live = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command, which is in parentheses: state ppid pgrp …
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" {
            live.push(pid);
        }
    }
    live
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_desired_ready_waits_prepared_until_let_go() {
    let tmp = tempfile::tempdir().unwrap();
    let mut run = start(
        tmp.path(),
        &task("t1", &["true"], |_| {}),
        TaskState::Ready,
        WITHIN,
    );
    run.until(TaskState::Ready).await;
    // Nothing may follow READY while READY is all that is desired.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        run.updates.try_recv().is_err(),
        "the task moved past READY on its own"
    );
    run.desired.send(TaskState::Running).unwrap();
    run.until(TaskState::Complete).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_and_workdir_reach_the_process_and_nothing_else_of_the_agent_env() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    // cargo puts this in every test process's environment; it must not leak.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    let t = task(
        "t1",
        &["sh", "-c", "echo A=$A; echo LEAK=$CARGO_MANIFEST_DIR; pwd"],
        |r| {
            r.env = vec!["A=1".into()];
            r.dir = work.path().display().to_string();
        },
    );
    let mut run = start(tmp.path(), &t, TaskState::Running, WITHIN);
    run.until(TaskState::Complete).await;
    let out = log_text(&tmp.path().join("t1/stdout.log"));
    let expected_dir = std::fs::canonicalize(work.path()).unwrap();
    assert_eq!(out, format!("A=1\nLEAK=\n{}\n", expected_dir.display()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_over_the_size_limit_are_rotated_and_remove_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let t = task("t1", &["sh", "-c", "head -c 5000 /dev/zero"], |_| {});
    let mut config = ProcessConfig::new(tmp.path().to_path_buf());
    config.max_log_bytes = 1_000;
    let mut executor = ProcessExecutor::new(&config, &t);
    executor.prepare().await.unwrap();
    executor.start().await.unwrap();
    assert!(executor.wait().await.unwrap().success());
    // Rotated as it was written: nothing lost, the live log under the
    // limit again.
    let kept = log_text(&tmp.path().join("t1/stdout.log.1"));
    let live = log_text(&tmp.path().join("t1/stdout.log"));
    assert!(!kept.is_empty(), "the log was rotated");
    assert_eq!(kept.len() + live.len(), 5_000, "nothing lost");
    assert!(
        std::fs::metadata(tmp.path().join("t1/stdout.log"))
            .unwrap()
            .len()
            <= 1_000,
        "the live log is under its limit"
    );
    executor.remove().await.unwrap();
    assert!(!tmp.path().join("t1").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_cpu_limits_put_the_task_in_its_own_cgroup() {
    let cgroups = shoal_agent::Cgroups::detect();
    if let Some(warning) = cgroups.warning() {
        eprintln!("SKIPPED: this host cannot create cgroups: {warning}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Task ids name cgroups host-wide: make this one unique.
    let id = format!("limits-{}", std::process::id());
    let mut t = task(
        &id,
        &["sh", "-c", "cat /proc/self/cgroup; sleep 300"],
        |_| {},
    );
    t.spec.as_mut().unwrap().resources = Some(shoal_api::ResourceRequirements {
        limits: Some(shoal_api::Resources {
            pids: 0,
            nano_cpus: 500_000_000,
            memory_bytes: 64 << 20,
        }),
        reservations: None,
    });
    let config = ProcessConfig::new(tmp.path().to_path_buf());
    let mut executor = ProcessExecutor::new(&config, &t);
    executor.prepare().await.unwrap();
    let dirs = executor.cgroup_dirs();
    assert!(!dirs.is_empty());
    executor.start().await.unwrap();
    let log = tmp.path().join(&id).join("stdout.log");
    let deadline = Instant::now() + WITHIN;
    while !log_text(&log).contains(&id) {
        assert!(
            Instant::now() < deadline,
            "the task never reported its cgroup: {:?}",
            std::fs::read_to_string(&log)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let read = |name: &str| {
        dirs.iter()
            .map(|d| d.join(name))
            .find(|p| p.exists())
            .map(|p| std::fs::read_to_string(p).unwrap().trim().to_string())
    };
    match (read("memory.max"), read("memory.limit_in_bytes")) {
        (Some(v2), _) => {
            assert_eq!(v2, (64u64 << 20).to_string());
            assert_eq!(read("cpu.max").unwrap(), "50000 100000");
        }
        (None, Some(v1)) => {
            assert_eq!(v1, (64u64 << 20).to_string());
            assert_eq!(read("cpu.cfs_quota_us").unwrap(), "50000");
        }
        _ => panic!("no memory limit file in {dirs:?}"),
    }
    executor.shutdown(Duration::from_secs(10)).await.unwrap();
    assert!(
        dirs.iter().all(|d| !d.exists()),
        "the task's cgroups outlived it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_on_a_node_without_an_engine_is_rejected_naming_what_the_node_lacks() {
    let tmp = tempfile::tempdir().unwrap();
    let t = task("t1", &[], |r| r.image = "redis:7".into());
    let mut run = start(tmp.path(), &t, TaskState::Running, WITHIN);
    let rejected = run.until(TaskState::Rejected).await;
    assert_eq!(
        rejected.err,
        "image \"redis:7\": this node has no Docker Engine to run containers; it runs processes only"
    );
}

/// Waits until the process `pid` has ended (a zombie, or gone).
async fn until_ended(pid: u32) {
    let deadline = Instant::now() + WITHIN;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .unwrap_or("Z");
        if state == "Z" {
            return;
        }
        assert!(Instant::now() < deadline, "process {pid} never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_that_comes_after_the_task_ended_keeps_its_exit_code_and_kills_its_group() {
    let tmp = tempfile::tempdir().unwrap();
    // The main process exits 3 and leaves a child in its group.
    let t = task("t1", &["sh", "-c", "sleep 300 & exit 3"], |_| {});
    let config = ProcessConfig::new(tmp.path().to_path_buf());
    let mut executor = ProcessExecutor::new(&config, &t);
    executor.prepare().await.unwrap();
    let pid = executor.start().await.unwrap().pid;
    until_ended(pid).await;
    let outcome = executor.shutdown(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        outcome.map(|o| o.exit_code),
        Some(3),
        "the exit code was lost to the stop"
    );
    let deadline = Instant::now() + WITHIN;
    while !live_members_of_group(pid).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the rest of the process group outlived the task: {:?}",
            live_members_of_group(pid)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_dropped_at_any_point_still_cleans_up_and_keeps_the_exit_code() {
    let cgroups = shoal_agent::Cgroups::detect();
    if let Some(warning) = cgroups.warning() {
        eprintln!("SKIPPED: this host cannot create cgroups: {warning}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let id = format!("dropped-wait-{}", std::process::id());
    let mut t = task(&id, &["sh", "-c", "sleep 300 & exit 3"], |_| {});
    t.spec.as_mut().unwrap().resources = Some(shoal_api::ResourceRequirements {
        limits: Some(shoal_api::Resources {
            pids: 0,
            nano_cpus: 0,
            memory_bytes: 64 << 20,
        }),
        reservations: None,
    });
    let config = ProcessConfig::new(tmp.path().to_path_buf());
    let mut executor = ProcessExecutor::new(&config, &t);
    executor.prepare().await.unwrap();
    let dirs = executor.cgroup_dirs();
    assert!(!dirs.is_empty());
    let pid = executor.start().await.unwrap().pid;
    until_ended(pid).await;
    // Drop the wait at its first pause each time, as the task runner does
    // whenever the desired state changes, until one runs to the end.
    let deadline = Instant::now() + WITHIN;
    let outcome = loop {
        match tokio::time::timeout(Duration::from_millis(1), executor.wait()).await {
            Ok(outcome) => break outcome.unwrap(),
            Err(_) => assert!(Instant::now() < deadline, "wait never finished"),
        }
    };
    assert_eq!(outcome.exit_code, 3);
    assert_eq!(
        executor
            .shutdown(Duration::from_secs(10))
            .await
            .unwrap()
            .map(|o| o.exit_code),
        Some(3)
    );
    assert!(
        dirs.iter().all(|d| !d.exists()),
        "the task's cgroup outlived it: {dirs:?}"
    );
    assert!(live_members_of_group(pid).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_line_of_output_is_stamped_with_the_time_it_was_written() {
    let tmp = tempfile::tempdir().unwrap();
    let t = task(
        "t1",
        &["sh", "-c", "echo first; sleep 1.2; printf 'second\\nthird'"],
        |_| {},
    );
    let before = shoal_api::clock::now_ns();
    let mut run = start(tmp.path(), &t, TaskState::Running, WITHIN);
    run.until(TaskState::Complete).await;
    let after = shoal_api::clock::now_ns();
    let log = std::fs::read(tmp.path().join("t1/stdout.log")).unwrap();
    let lines: Vec<(i64, Vec<u8>)> = log
        .split(|b| *b == b'\n')
        .map(|l| {
            let (at, text) = shoal_api::log_time::split_stamp(l).expect("every line is stamped");
            (at, text.to_vec())
        })
        .collect();
    let texts: Vec<&[u8]> = lines.iter().map(|(_, t)| t.as_slice()).collect();
    assert_eq!(texts, [&b"first"[..], b"second", b"third"]);
    assert!(
        lines.iter().all(|(at, _)| (before..=after).contains(at)),
        "{lines:?}"
    );
    // The sleep sits between the first line and the others.
    assert!(lines[1].0 - lines[0].0 >= 1_000_000_000, "{lines:?}");
    assert!(lines[1].0 <= lines[2].0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_written_while_no_agent_reads_reaches_the_log_once_a_new_one_adopts_the_task() {
    let tmp = tempfile::tempdir().unwrap();
    let config = ProcessConfig::new(tmp.path().to_path_buf());
    // A line every 20 ms, numbered, for a while.
    let t = task(
        "t1",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 150 ]; do echo line-$i; i=$((i+1)); sleep 0.02; done",
        ],
        |_| {},
    );
    let mut first = ProcessExecutor::new(&config, &t);
    first.prepare().await.unwrap();
    let pid = first.start().await.unwrap().pid;
    let log = tmp.path().join("t1/stdout.log");
    let deadline = Instant::now() + WITHIN;
    while !log_text(&log).contains("line-5\n") {
        assert!(Instant::now() < deadline, "no output reached the log");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The agent goes away: nobody reads the FIFO for a while; the process
    // writes on.
    drop(first);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut second = ProcessExecutor::adopt(&config, &t, pid);
    let ended = second.wait().await.unwrap();
    assert_eq!(
        ended.exit_code, -1,
        "an adopted process's status is unknown"
    );
    let expected: String = (0..150).map(|i| format!("line-{i}\n")).collect();
    assert_eq!(log_text(&log), expected, "every line, once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_ends_when_its_main_process_does_even_if_an_escaped_child_holds_its_output() {
    let tmp = tempfile::tempdir().unwrap();
    // The child leaves the process group (setsid) and keeps stdout open, so
    // the copy of its output never sees the end of the pipe.
    let t = task(
        "t1",
        &["sh", "-c", "setsid sleep 120 & echo started"],
        |_| {},
    );
    let mut run = start(tmp.path(), &t, TaskState::Running, WITHIN);
    // Housekeeping cancels the runner's wait every few seconds: the bound on
    // draining the output must hold across those waits.
    let done = run.until(TaskState::Complete).await;
    assert_eq!(done.exit_code, 0);
    assert_eq!(log_text(&tmp.path().join("t1/stdout.log")), "started\n");
    for (_, pgid) in shoal_agent::find_task_processes(tmp.path()) {
        shoal_agent::kill_group(pgid);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_check_runs_as_the_task_runs_and_a_slow_one_is_cut_at_its_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let t = task("t1", &["sleep", "60"], |r| {
        r.env = vec!["A=1".into()];
        r.dir = work.path().display().to_string();
    });
    let mut executor = ProcessExecutor::new(&ProcessConfig::new(tmp.path().to_path_buf()), &t);
    executor.prepare().await.unwrap();
    let pid = executor.start().await.unwrap().pid;
    // The task's env and working dir; nothing of the agent's.
    let probe = executor
        .probe("echo A=$A LEAK=$CARGO_MANIFEST_DIR; pwd; exit 3", WITHIN)
        .await;
    let expected_dir = std::fs::canonicalize(work.path()).unwrap();
    assert_eq!(probe.exit_code, 3);
    assert_eq!(
        probe.output,
        format!("A=1 LEAK=\n{}\n", expected_dir.display())
    );
    // Too slow: cut, and said so.
    let probe = executor.probe("sleep 30", Duration::from_millis(200)).await;
    assert_eq!(probe.exit_code, -1);
    assert!(
        probe.output.contains("timed out after 200 ms"),
        "{}",
        probe.output
    );
    // Endless output is bounded.
    let probe = executor.probe("yes | head -c 1000000", WITHIN).await;
    assert_eq!(probe.output.len(), shoal_agent::MAX_PROBE_OUTPUT_BYTES);
    executor.shutdown(Duration::from_secs(1)).await.unwrap();
    assert!(pid > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_health_check_starts_failing_is_reported_unhealthy_and_failed() {
    use shoal_api::{task_status::Health, HealthConfig};
    let tmp = tempfile::tempdir().unwrap();
    let flag = tmp.path().join("healthy");
    std::fs::write(&flag, "").unwrap();
    let t = task("t1", &["sleep", "60"], |_| {});
    let executor = ProcessExecutor::new(&ProcessConfig::new(tmp.path().to_path_buf()), &t);
    let (desired_tx, desired_rx) = watch::channel(TaskState::Running);
    let (tx, mut updates) = mpsc::channel(64);
    let runner = TaskRunner::new(
        t.id.clone(),
        executor,
        TaskState::Assigned,
        desired_rx,
        tx,
        Duration::from_secs(1),
    )
    .with_health(Some(HealthConfig {
        command: format!("echo checking; test -f {}", flag.display()),
        interval_ms: 50,
        timeout_ms: 5_000,
        retries: 2,
        start_period_ms: 0,
        disabled: false,
    }));
    let done = tokio::spawn(runner.run());
    let mut seen: Vec<(i32, i32)> = Vec::new();
    let deadline = Instant::now() + WITHIN;
    let failed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let update = tokio::time::timeout(left, updates.recv())
            .await
            .expect("within the bound")
            .expect("the runner reports");
        let s = update.status;
        seen.push((s.state, s.health));
        if s.state == TaskState::Running as i32 && s.health == Health::Healthy as i32 {
            // Healthy: now make the check fail.
            std::fs::remove_file(&flag).unwrap();
        }
        if s.state == TaskState::Failed as i32 {
            break s;
        }
    };
    let running = TaskState::Running as i32;
    assert!(
        seen.contains(&(running, Health::Starting as i32)),
        "{seen:?}"
    );
    assert!(
        seen.contains(&(running, Health::Healthy as i32)),
        "{seen:?}"
    );
    assert_eq!(failed.health, Health::Unhealthy as i32);
    assert!(
        failed
            .err
            .starts_with("unhealthy: the health check failed 2 times in a row: checking"),
        "{}",
        failed.err
    );
    assert_eq!(failed.health_log.len(), 3, "{:?}", failed.health_log);
    assert!(failed.health_log.iter().all(|p| p.output == "checking\n"));
    assert_eq!(done.await.unwrap(), TaskState::Failed);
    drop(desired_tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_in_flight_is_never_taken_for_the_task_and_dies_with_its_future() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("probe.pid");
    let t = task("t1", &["sleep", "60"], |_| {});
    let mut executor = ProcessExecutor::new(&ProcessConfig::new(tmp.path().to_path_buf()), &t);
    executor.prepare().await.unwrap();
    let pid = executor.start().await.unwrap().pid;
    let check = format!("echo $$ > {}; sleep 30", marker.display());
    let in_flight = tokio::spawn(executor.probe(&check, WITHIN));
    let deadline = Instant::now() + WITHIN;
    let probe_pid: u32 = loop {
        if let Some(p) = std::fs::read_to_string(&marker)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            break p;
        }
        assert!(Instant::now() < deadline, "the check did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // An agent that restarts now finds the task, not its check.
    let found = shoal_agent::find_task_processes(tmp.path());
    assert_eq!(found.get("t1"), Some(&pid), "{found:?}");
    // The runner drops the check (the task stops): it goes, group and all.
    in_flight.abort();
    let _ = in_flight.await;
    while std::path::Path::new(&format!("/proc/{probe_pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{probe_pid}/stat"))
            .is_ok_and(|s| !s.contains(") Z "))
    {
        assert!(Instant::now() < deadline, "the dropped check still runs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    executor.shutdown(Duration::from_secs(1)).await.unwrap();
}
