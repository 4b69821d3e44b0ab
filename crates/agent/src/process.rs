//! The process executor: runs a task's command as a child process of the
//! agent, in its own process group, its stdout and stderr kept in log files
//! in the task's directory.
//!
//! Its output goes through a FIFO per stream that the agent copies into the
//! task's log files, each line stamped with the time it was read, and
//! rotated by size ([`LogPipe`]); the process holds its FIFOs open both
//! ways, so it keeps running when the agent restarts, and the next agent
//! goes on copying.
//!
//! Memory and CPU limits go through the task's own cgroup ([`Cgroups`]).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use shoal_api::{Runtime, Task};
use tokio::process::{Child, Command};

use crate::cgroup::{Cgroups, TaskCgroup};
use crate::executor::{Executor, ExitOutcome, TaskFailure, Workload};
use crate::log_pipe::LogPipe;

const STREAMS: [&str; 2] = ["stdout", "stderr"];
/// After the task's processes are gone, how long what is left in its FIFOs
/// may take to reach the logs.
const LOG_DRAIN_MS: u64 = 5_000;

/// Where tasks live, how big their logs grow, how limits are enforced.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// Each task gets `<tasks_dir>/<task id>/`.
    pub tasks_dir: PathBuf,
    /// A log file larger than this is rotated to `<name>.1` (one kept).
    pub max_log_bytes: u64,
    /// How memory and CPU limits are enforced (detected once per agent).
    pub cgroups: std::sync::Arc<Cgroups>,
}

impl ProcessConfig {
    /// Tasks under `tasks_dir`, limits through the host's cgroups.
    pub fn new(tasks_dir: PathBuf) -> ProcessConfig {
        ProcessConfig {
            tasks_dir,
            max_log_bytes: 16 << 20,
            cgroups: std::sync::Arc::new(Cgroups::detect()),
        }
    }
}

/// Runs every task of the node as a process ([`ProcessExecutor`]), each in
/// `<tasks_dir>/<task id>/`; finds earlier agents' processes through
/// /proc ([`find_task_processes`]).
#[derive(Debug, Clone)]
pub struct ProcessDriver {
    pub config: ProcessConfig,
}

impl crate::driver::Driver for ProcessDriver {
    type Executor = ProcessExecutor;

    fn executor(&self, task: &Task) -> ProcessExecutor {
        ProcessExecutor::new(&self.config, task)
    }

    fn adopt(&self, task: &Task, workload: Workload) -> ProcessExecutor {
        ProcessExecutor::adopt(&self.config, task, workload.pid)
    }

    async fn leftovers(&self) -> Result<std::collections::HashMap<String, Workload>, String> {
        Ok(find_task_processes(&self.config.tasks_dir)
            .into_iter()
            .map(|(task, pgid)| (task, Workload::process(pgid)))
            .collect())
    }

    fn kill(&self, _task_id: &str, workload: &Workload) {
        kill_group(workload.pid);
    }

    fn clean_up(&self, task_id: &str) {
        let _ = std::fs::remove_dir_all(self.config.tasks_dir.join(task_id));
    }

    fn log_dir(&self, task_id: &str) -> Option<std::path::PathBuf> {
        Some(self.config.tasks_dir.join(task_id))
    }
}

/// Set in every task's environment, so an agent that restarts finds the
/// processes of its tasks again (see [`find_task_processes`]).
pub const TASK_ID_ENV: &str = "SHOAL_TASK_ID";
pub const TASK_DIR_ENV: &str = "SHOAL_TASK_DIR";
/// How often an adopted process (not our child) is checked for exit.
const ADOPTED_POLL_MS: u64 = 200;
/// Removing a task's cgroup waits for its last process to exit: this many
/// tries, this far apart (10 s in all).
const CGROUP_REMOVE_TRIES: u32 = 100;
const CGROUP_REMOVE_PAUSE_MS: u64 = 100;

/// Runs one task as a process.
pub struct ProcessExecutor {
    task_id: String,
    dir: PathBuf,
    /// The spec's runtime, its env with the named ports' variables added.
    runtime: Runtime,
    /// The named ports the task was given on this node: (name, port).
    ports: Vec<(String, u32)>,
    max_log_bytes: u64,
    program: Option<PathBuf>,
    uid: Option<(u32, u32)>,
    child: Option<Child>,
    pid: Option<u32>,
    /// How the process ended, once reaped, and then once cleaned up after.
    reaped: Option<ExitOutcome>,
    exited: Option<ExitOutcome>,
    /// Tries left to remove the task's cgroup: kept across waits, which the
    /// task runner cancels (every housekeeping tick), so the bound holds
    /// over all of them together.
    cgroup_tries_left: u32,
    limits: shoal_api::Resources,
    cgroups: std::sync::Arc<Cgroups>,
    cgroup: Option<TaskCgroup>,
    /// The copies from the task's FIFOs into its logs, while they run.
    log_copies: Vec<tokio::task::JoinHandle<()>>,
    /// Until when the copies may drain once the task ended: set once, so
    /// the bound holds across waits the task runner cancels.
    drain_deadline: Option<tokio::time::Instant>,
}

/// Fails when a named port the task was given is held by something else
/// on this node: the task fails saying so, and its replacement is placed
/// again (with another port, or on another node).
pub(crate) fn ports_free(ports: &[(String, u32)]) -> Result<(), TaskFailure> {
    for (name, port) in ports {
        if *port == 0 {
            // The allocator found none free here when the task was placed.
            return Err(TaskFailure(format!(
                "port {name}: no port of the cluster's dynamic range was free on this node"
            )));
        }
        let Ok(number) = u16::try_from(*port) else {
            return Err(TaskFailure(format!(
                "port {port} ({name}) is not a port number"
            )));
        };
        // Bound and let go at once: the process binds it next.
        if let Err(e) = std::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, number)) {
            return Err(TaskFailure(format!(
                "port {port} ({name}) is not free on this node: {e}"
            )));
        }
    }
    Ok(())
}

impl Drop for ProcessExecutor {
    fn drop(&mut self) {
        // An agent that goes away leaves the FIFOs to the next one.
        for copy in &self.log_copies {
            copy.abort();
        }
    }
}

impl ProcessExecutor {
    pub fn new(config: &ProcessConfig, task: &Task) -> ProcessExecutor {
        let mut runtime = task
            .spec
            .as_ref()
            .and_then(|s| s.runtime.clone())
            .unwrap_or_default();
        // The task's (and its health checks') view of its ports.
        runtime.env.extend(shoal_api::task_ports::port_env(task));
        let ports = task
            .named_ports()
            .iter()
            .map(|p| (p.name.clone(), p.published_port))
            .collect();
        let limits = task
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.limits)
            .unwrap_or_default();
        ProcessExecutor {
            task_id: task.id.clone(),
            dir: config.tasks_dir.join(&task.id),
            runtime,
            ports,
            max_log_bytes: config.max_log_bytes,
            program: None,
            uid: None,
            child: None,
            pid: None,
            reaped: None,
            exited: None,
            cgroup_tries_left: CGROUP_REMOVE_TRIES,
            limits,
            cgroups: std::sync::Arc::clone(&config.cgroups),
            cgroup: None,
            log_copies: Vec::new(),
            drain_deadline: None,
        }
    }

    fn log_pipe(&self, stream: &str) -> LogPipe {
        LogPipe {
            fifo: self.dir.join(format!("{stream}.pipe")),
            log: self.dir.join(format!("{stream}.log")),
            max_log_bytes: self.max_log_bytes,
        }
    }

    /// Waits, within a bound, for what the task's FIFOs still hold to reach
    /// its logs; its processes are gone, so each copy ends at the FIFO's end.
    async fn drain_logs(&mut self) {
        self.log_copies.retain(|c| !c.is_finished());
        let deadline = *self.drain_deadline.get_or_insert_with(|| {
            tokio::time::Instant::now() + Duration::from_millis(LOG_DRAIN_MS)
        });
        for copy in &mut self.log_copies {
            if tokio::time::timeout_at(deadline, copy).await.is_err() {
                // A process that left the group still holds the FIFO.
                tracing::warn!(task = %self.task_id, "the task's output did not reach its log in time");
            }
        }
        for copy in self.log_copies.drain(..) {
            copy.abort();
        }
    }

    /// Takes over the still-running process group `pgid` of this task, left
    /// by an earlier agent. Its exit code cannot be known (it is not our
    /// child): an end is reported as a failure with that said.
    ///
    /// The copies of its output into its logs start again here.
    pub fn adopt(config: &ProcessConfig, task: &Task, pgid: u32) -> ProcessExecutor {
        let mut executor = ProcessExecutor::new(config, task);
        executor.pid = Some(pgid);
        for stream in STREAMS {
            let pipe = executor.log_pipe(stream);
            if !pipe.exists() {
                continue;
            }
            match pipe.copy() {
                Ok(copy) => executor.log_copies.push(copy),
                Err(e) => {
                    tracing::warn!(task = %executor.task_id, error = %e, "the task's output cannot be copied to its log")
                }
            }
        }
        executor
    }

    /// The task ended with its main process, as a container does: whatever
    /// of its process group is left is killed, and its cgroup is removed
    /// once the last of them has exited (bounded wait).
    async fn clean_up_after_exit(&mut self) {
        if let Some(pid) = self.pid {
            if group_alive(pid) {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
        if let Some(cgroup) = &self.cgroup {
            while self.cgroup_tries_left > 0 {
                if cgroup.remove() {
                    return;
                }
                self.cgroup_tries_left -= 1;
                tokio::time::sleep(Duration::from_millis(CGROUP_REMOVE_PAUSE_MS)).await;
            }
            tracing::warn!(task = %self.task_id, "the task's cgroup could not be removed: a process of it is still running");
        }
    }

    /// The task's cgroup directories, once prepared with limits.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.cgroup
            .as_ref()
            .map(|c| c.dirs().to_vec())
            .unwrap_or_default()
    }

    /// The task's directory (logs live here).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn workdir(&self) -> PathBuf {
        if self.runtime.dir.is_empty() {
            self.dir.clone()
        } else {
            PathBuf::from(&self.runtime.dir)
        }
    }

    /// Copies a log over its size limit to `<name>.1` and truncates it:
    /// for a process an agent adopted from before logs went through FIFOs,
    /// which writes its log itself. Logs the agent copies are rotated as
    /// they are written.
    pub fn rotate_logs(&self) {
        if !self.log_copies.is_empty() {
            return;
        }
        for stream in STREAMS {
            let name = format!("{stream}.log");
            let path = self.dir.join(&name);
            let too_big = std::fs::metadata(&path).is_ok_and(|m| m.len() > self.max_log_bytes);
            if too_big {
                let rotated = self.dir.join(format!("{name}.1"));
                if std::fs::copy(&path, &rotated).is_ok() {
                    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&path) {
                        let _ = f.set_len(0);
                    }
                }
            }
        }
    }
}

/// Whether any process of the group `pgid` still runs (zombies do not).
fn group_alive(pgid: u32) -> bool {
    !group_members(pgid).is_empty()
}

/// Live (non-zombie) processes of a process group, read from /proc.
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| proc_stat(*pid).is_some_and(|(state, pgrp)| pgrp == pgid && state != 'Z'))
        .collect()
}

/// (state, process group) of a process, from /proc/<pid>/stat.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// The process groups of tasks started from `tasks_dir` that still run, by
/// task id: what an agent finds again after a restart. Read from each
/// process's environment ([`TASK_ID_ENV`], [`TASK_DIR_ENV`]), so it needs no
/// record written before the crash.
pub fn find_task_processes(tasks_dir: &Path) -> std::collections::HashMap<String, u32> {
    let mut found = std::collections::HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for pid in entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
    {
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let mut task_id = None;
        let mut dir = None;
        for var in environ.split(|b| *b == 0) {
            let var = String::from_utf8_lossy(var);
            if let Some(v) = var.strip_prefix(&format!("{TASK_ID_ENV}=")) {
                task_id = Some(v.to_string());
            } else if let Some(v) = var.strip_prefix(&format!("{TASK_DIR_ENV}=")) {
                dir = Some(PathBuf::from(v));
            }
        }
        let (Some(task_id), Some(dir)) = (task_id, dir) else {
            continue;
        };
        if dir.parent() != Some(tasks_dir) {
            continue;
        }
        if let Some((state, pgrp)) = proc_stat(pid) {
            if state != 'Z' {
                found.insert(task_id, pgrp);
            }
        }
    }
    found
}

/// Kills a process group outright (a leftover no task owns any more).
pub fn kill_group(pgid: u32) {
    let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
}

/// Finds `program` the way a shell does: a name with a slash is a path, any
/// other name is looked up in PATH.
fn resolve(program: &str) -> Result<PathBuf, TaskFailure> {
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = PathBuf::from(program);
        return match std::fs::metadata(&path) {
            Err(e) => Err(TaskFailure(format!("exec {program:?}: {e}"))),
            Ok(_) if !executable(&path) => Err(TaskFailure(format!(
                "exec {program:?}: permission denied (not an executable file)"
            ))),
            Ok(_) => Ok(path),
        };
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(program))
        .find(|candidate| executable(candidate))
        .ok_or_else(|| {
            TaskFailure(format!(
                "exec {program:?}: executable file not found in $PATH"
            ))
        })
}

fn outcome(status: std::process::ExitStatus) -> ExitOutcome {
    use std::os::unix::process::ExitStatusExt;
    let exit_code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => -1,
    };
    ExitOutcome {
        exit_code,
        message: format!("exit status {exit_code}"),
    }
}

/// Text of a check's output, at most [`crate::health::MAX_PROBE_OUTPUT_BYTES`]
/// bytes once made valid UTF-8, cut at a character's edge.
fn bounded_text(bytes: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    let limit = crate::health::MAX_PROBE_OUTPUT_BYTES;
    if text.len() > limit {
        let mut end = limit;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// A health check's process group, killed when dropped: a check never
/// outlives the future that runs it.
struct ProbeGroup(u32);

impl Drop for ProbeGroup {
    fn drop(&mut self) {
        if group_alive(self.0) {
            kill_group(self.0);
        }
    }
}

/// Reads at most `limit` bytes of `pipe` into `out`, then drops the rest,
/// so a check that prints without end neither blocks nor fills memory.
async fn read_bounded(
    pipe: Option<impl tokio::io::AsyncRead + Unpin>,
    limit: usize,
    out: &mut Vec<u8>,
) {
    use tokio::io::AsyncReadExt;
    let Some(mut pipe) = pipe else { return };
    let _ = (&mut pipe).take(limit as u64).read_to_end(out).await;
    let _ = tokio::io::copy(&mut pipe, &mut tokio::io::sink()).await;
}

impl Executor for ProcessExecutor {
    fn probe(
        &self,
        check: &str,
        timeout: Duration,
    ) -> impl std::future::Future<Output = shoal_api::HealthProbe> + Send + 'static {
        use shoal_api::clock::now_ms;
        // As the task runs: its user, env, working dir and cgroup.
        let mut command = Command::new("/bin/sh");
        command
            .args(["-c", check])
            .current_dir(self.workdir())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            // Not the task's id: the agent finds a task's processes by it
            // when it restarts, and must never take a check for the task.
            .envs(self.runtime.env.iter().filter_map(|e| e.split_once('=')))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // An adopted task was never prepared here: look its user up, and
        // run no check at all rather than one as the agent's user.
        let user: Result<Option<(u32, u32)>, String> = match self.uid {
            Some(ids) => Ok(Some(ids)),
            None if self.runtime.user.is_empty() => Ok(None),
            None => match nix::unistd::User::from_name(&self.runtime.user) {
                Ok(Some(u)) => Ok(Some((u.uid.as_raw(), u.gid.as_raw()))),
                Ok(None) => Err(format!("user {:?}: no such user", self.runtime.user)),
                Err(e) => Err(format!("user {:?}: {e}", self.runtime.user)),
            },
        };
        if let Ok(Some((uid, gid))) = user {
            command.uid(uid).gid(gid);
        }
        if let Some(cgroup) = self.cgroup.clone() {
            // SAFETY: as for the task itself (`start`).
            unsafe {
                command.pre_exec(move || cgroup.join_self());
            }
        }
        async move {
            let started_ms = now_ms();
            let finish = |exit_code: i32, output: String| shoal_api::HealthProbe {
                started_ms,
                ended_ms: now_ms(),
                exit_code,
                output,
            };
            if let Err(why) = user {
                return finish(
                    -1,
                    format!("the health check cannot run as the task's user: {why}"),
                );
            }
            let mut child = match command.spawn() {
                Ok(child) => child,
                Err(e) => return finish(-1, format!("cannot run the health check: {e}")),
            };
            // Dropped before the check ended (the task stops, the runner
            // goes): its whole group goes with it.
            let _group = child.id().map(ProbeGroup);
            let pgid = child.id();
            let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
            let run = async {
                let (mut out, mut err) = (Vec::new(), Vec::new());
                let limit = crate::health::MAX_PROBE_OUTPUT_BYTES;
                tokio::join!(
                    read_bounded(stdout, limit, &mut out),
                    read_bounded(stderr, limit, &mut err)
                );
                out.extend(err);
                out.truncate(limit);
                (child.wait().await, out)
            };
            match tokio::time::timeout(timeout, run).await {
                Ok((Ok(status), out)) => {
                    use std::os::unix::process::ExitStatusExt;
                    let code = status
                        .code()
                        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
                    finish(code, bounded_text(&out))
                }
                Ok((Err(e), _)) => finish(-1, format!("waiting for the health check: {e}")),
                Err(_) => {
                    // The whole check goes, not only its shell.
                    if let Some(pgid) = pgid {
                        kill_group(pgid);
                    }
                    finish(
                        -1,
                        format!(
                            "the health check timed out after {} ms",
                            timeout.as_millis()
                        ),
                    )
                }
            }
        }
    }

    async fn prepare(&mut self) -> Result<(), TaskFailure> {
        if !self.runtime.image.is_empty() {
            return Err(TaskFailure(format!(
                "image {:?}: this node has no Docker Engine to run containers; it runs processes only",
                self.runtime.image
            )));
        }
        let program = self
            .runtime
            .command
            .first()
            .ok_or_else(|| TaskFailure("the task has no command to run".into()))?;
        self.program = Some(resolve(program)?);
        if !self.runtime.dir.is_empty() {
            let dir = Path::new(&self.runtime.dir);
            match std::fs::metadata(dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(TaskFailure(format!(
                        "workdir {}: not a directory",
                        dir.display()
                    )))
                }
                Err(e) => return Err(TaskFailure(format!("workdir {}: {e}", dir.display()))),
            }
        }
        if !self.runtime.user.is_empty() {
            let user = nix::unistd::User::from_name(&self.runtime.user)
                .map_err(|e| TaskFailure(format!("user {:?}: {e}", self.runtime.user)))?
                .ok_or_else(|| {
                    TaskFailure(format!("user {:?}: no such user", self.runtime.user))
                })?;
            self.uid = Some((user.uid.as_raw(), user.gid.as_raw()));
        }
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| TaskFailure(format!("task directory {}: {e}", self.dir.display())))?;
        ports_free(&self.ports)?;
        self.cgroup = self.cgroups.create(&self.task_id, &self.limits)?;
        Ok(())
    }

    async fn start(&mut self) -> Result<Workload, TaskFailure> {
        if self.program.is_none() {
            // Prepared by an agent before a restart: resolved again here.
            self.prepare().await?;
        }
        let program = self
            .program
            .clone()
            .ok_or_else(|| TaskFailure("start before prepare".into()))?;
        let mut writers = Vec::new();
        let mut copies = Vec::new();
        for stream in STREAMS {
            let pipe = self.log_pipe(stream);
            let fail = |e: std::io::Error| TaskFailure(format!("log {}: {e}", pipe.fifo.display()));
            writers.push(pipe.create().map_err(fail)?);
            copies.push(pipe.copy().map_err(fail)?);
        }
        // Until the process runs, nobody writes: dropped copies end with
        // this start if it fails.
        let abort_copies = |copies: &[tokio::task::JoinHandle<()>]| {
            for c in copies {
                c.abort();
            }
        };
        let stderr = writers.pop();
        let stdout = writers.pop();
        let (Some(stdout), Some(stderr)) = (stdout, stderr) else {
            abort_copies(&copies);
            return Err(TaskFailure("the task's log pipes are missing".into()));
        };
        let mut command = Command::new(&program);
        command
            .args(self.runtime.command.iter().skip(1))
            .current_dir(self.workdir())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.runtime.env.iter().filter_map(|e| e.split_once('=')))
            .env(TASK_ID_ENV, &self.task_id)
            .env(TASK_DIR_ENV, &self.dir)
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Its own process group: shutdown signals the whole tree.
            .process_group(0)
            .kill_on_drop(false);
        if let Some((uid, gid)) = self.uid {
            command.uid(uid).gid(gid);
        }
        if let Some(cgroup) = self.cgroup.clone() {
            // SAFETY: join_self only makes async-signal-safe calls on data
            // prepared before the fork.
            unsafe {
                command.pre_exec(move || cgroup.join_self());
            }
        }
        let spawned = command.spawn();
        // The agent keeps no writing end: a copy ends once the task's
        // processes have all closed theirs.
        drop(command);
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                abort_copies(&copies);
                return Err(TaskFailure(format!("exec {:?}: {e}", program.display())));
            }
        };
        self.log_copies = copies;
        let pid = child
            .id()
            .ok_or_else(|| TaskFailure("the process exited before it could be watched".into()))?;
        self.child = Some(child);
        self.pid = Some(pid);
        Ok(Workload::process(pid))
    }

    async fn wait(&mut self) -> Result<ExitOutcome, TaskFailure> {
        if let Some(done) = &self.exited {
            return Ok(done.clone());
        }
        let Some(child) = self.child.as_mut() else {
            let pid = self
                .pid
                .ok_or_else(|| TaskFailure("no process to wait for".into()))?;
            while group_alive(pid) {
                tokio::time::sleep(Duration::from_millis(ADOPTED_POLL_MS)).await;
            }
            self.drain_logs().await;
            let done = ExitOutcome {
                exit_code: -1,
                message: "the process ended after an agent restart; its exit status is unknown"
                    .into(),
            };
            self.exited = Some(done.clone());
            return Ok(done);
        };
        // Cancel safe: the status is kept once reaped, and the exit is
        // recorded only after the clean-up, so a wait dropped during the
        // clean-up goes on with it next time (its tries are counted across
        // waits) instead of skipping it.
        let done = match &self.reaped {
            Some(done) => done.clone(),
            None => {
                let status = child
                    .wait()
                    .await
                    .map_err(|e| TaskFailure(format!("waiting for the process: {e}")))?;
                let done = outcome(status);
                self.reaped = Some(done.clone());
                done
            }
        };
        self.clean_up_after_exit().await;
        self.drain_logs().await;
        self.exited = Some(done.clone());
        Ok(done)
    }

    async fn shutdown(&mut self, grace: Duration) -> Result<Option<ExitOutcome>, TaskFailure> {
        if let Some(done) = &self.exited {
            return Ok(Some(done.clone()));
        }
        let Some(pid) = self.pid else {
            return Ok(None);
        };
        let ended_on_its_own = match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(Some(_))),
            None => !group_alive(pid),
        };
        if ended_on_its_own {
            return self.wait().await.map(Some);
        }
        let group = Pid::from_raw(pid as i32);
        let first = shoal_api::signal::number(&self.runtime.stop_signal)
            .and_then(|n| Signal::try_from(n).ok())
            .unwrap_or(Signal::SIGTERM);
        // ESRCH: the group is already gone, which is what we want.
        let _ = killpg(group, first);
        if tokio::time::timeout(grace, self.wait()).await.is_err() {
            let _ = killpg(group, Signal::SIGKILL);
            self.wait().await?;
        }
        // The leader is gone; SIGKILL whatever of its group outlived it.
        if group_alive(pid) {
            let _ = killpg(group, Signal::SIGKILL);
        }
        Ok(None)
    }

    async fn remove(&mut self) -> Result<(), TaskFailure> {
        if let Some(cgroup) = &self.cgroup {
            let _ = cgroup.remove();
        }
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(TaskFailure(format!("removing {}: {e}", self.dir.display()))),
        }
    }

    fn housekeeping(&mut self) {
        self.rotate_logs();
    }
}
