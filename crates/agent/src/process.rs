//! The process executor: runs a task's command as a child process of the
//! agent, in its own process group, with stdout and stderr in log files in the
//! task's directory.
//!
//! The output goes straight to files (not through pipes), so a workload keeps
//! running and logging when the agent itself restarts. Logs are rotated by
//! size with copy-and-truncate: the files are opened for appending, so the
//! process keeps writing at the new end.
//!
//! Not here yet: memory and CPU limits through cgroups (the development
//! machines mount cgroup v1 only); they come with the rest of issue #3.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use shoal_api::{Runtime, Task};
use tokio::process::{Child, Command};

use crate::executor::{Executor, ExitOutcome, TaskFailure};

const STDOUT_LOG: &str = "stdout.log";
const STDERR_LOG: &str = "stderr.log";

/// Where tasks live and how big their logs grow.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// Each task gets `<tasks_dir>/<task id>/`.
    pub tasks_dir: PathBuf,
    /// A log file larger than this is rotated to `<name>.1` (one kept).
    pub max_log_bytes: u64,
}

impl ProcessConfig {
    pub fn new(tasks_dir: PathBuf) -> ProcessConfig {
        ProcessConfig {
            tasks_dir,
            max_log_bytes: 16 << 20,
        }
    }
}

/// Runs one task as a process.
pub struct ProcessExecutor {
    dir: PathBuf,
    runtime: Runtime,
    max_log_bytes: u64,
    program: Option<PathBuf>,
    uid: Option<(u32, u32)>,
    child: Option<Child>,
    pid: Option<u32>,
    exited: Option<ExitOutcome>,
}

impl ProcessExecutor {
    pub fn new(config: &ProcessConfig, task: &Task) -> ProcessExecutor {
        let runtime = task
            .spec
            .as_ref()
            .and_then(|s| s.runtime.clone())
            .unwrap_or_default();
        ProcessExecutor {
            dir: config.tasks_dir.join(&task.id),
            runtime,
            max_log_bytes: config.max_log_bytes,
            program: None,
            uid: None,
            child: None,
            pid: None,
            exited: None,
        }
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

    /// Copies a log over its size limit to `<name>.1` and truncates it.
    pub fn rotate_logs(&self) {
        for name in [STDOUT_LOG, STDERR_LOG] {
            let path = self.dir.join(name);
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

fn open_log(path: &Path) -> Result<std::fs::File, TaskFailure> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| TaskFailure(format!("log file {}: {e}", path.display())))
}

impl Executor for ProcessExecutor {
    async fn prepare(&mut self) -> Result<(), TaskFailure> {
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
        Ok(())
    }

    async fn start(&mut self) -> Result<u32, TaskFailure> {
        let program = self
            .program
            .clone()
            .ok_or_else(|| TaskFailure("start before prepare".into()))?;
        let mut command = Command::new(&program);
        command
            .args(self.runtime.command.iter().skip(1))
            .current_dir(self.workdir())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.runtime.env.iter().filter_map(|e| e.split_once('=')))
            .stdin(std::process::Stdio::null())
            .stdout(open_log(&self.dir.join(STDOUT_LOG))?)
            .stderr(open_log(&self.dir.join(STDERR_LOG))?)
            // Its own process group: shutdown signals the whole tree.
            .process_group(0)
            .kill_on_drop(false);
        if let Some((uid, gid)) = self.uid {
            command.uid(uid).gid(gid);
        }
        let child = command
            .spawn()
            .map_err(|e| TaskFailure(format!("exec {:?}: {e}", program.display())))?;
        let pid = child
            .id()
            .ok_or_else(|| TaskFailure("the process exited before it could be watched".into()))?;
        self.child = Some(child);
        self.pid = Some(pid);
        Ok(pid)
    }

    async fn wait(&mut self) -> Result<ExitOutcome, TaskFailure> {
        if let Some(done) = &self.exited {
            return Ok(done.clone());
        }
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| TaskFailure("no process to wait for".into()))?;
        let status = child
            .wait()
            .await
            .map_err(|e| TaskFailure(format!("waiting for the process: {e}")))?;
        let done = outcome(status);
        self.exited = Some(done.clone());
        Ok(done)
    }

    async fn shutdown(&mut self, grace: Duration) -> Result<(), TaskFailure> {
        let (Some(pid), None) = (self.pid, &self.exited) else {
            return Ok(());
        };
        let group = Pid::from_raw(pid as i32);
        // ESRCH: the group is already gone, which is what we want.
        let _ = killpg(group, Signal::SIGTERM);
        if tokio::time::timeout(grace, self.wait()).await.is_err() {
            let _ = killpg(group, Signal::SIGKILL);
            self.wait().await?;
        }
        Ok(())
    }

    async fn remove(&mut self) -> Result<(), TaskFailure> {
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
