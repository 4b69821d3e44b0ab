//! Memory and CPU limits through cgroups: v2 where the host has the unified
//! hierarchy, v1 where it still mounts the separate `memory` and `cpu` ones
//! (the development machines do).
//!
//! Each task with limits gets its own cgroup under a `shoal` parent. The
//! child process joins it between fork and exec (writing `0` to
//! `cgroup.procs` means "the writer"), so nothing it runs escapes the limits,
//! not even what it forks in its first instant.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use shoal_api::Resources;

use crate::executor::TaskFailure;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const PARENT: &str = "shoal";
/// The CFS period CPU quotas are expressed in (100 ms, the kernel default).
const CPU_PERIOD_US: i64 = 100_000;

/// What this host offers.
#[derive(Debug, Clone)]
pub enum Cgroups {
    V2 {
        parent: PathBuf,
    },
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
    },
    /// Limits cannot be enforced; the reason goes into the node's warnings.
    Unavailable {
        reason: String,
    },
}

/// A task's cgroup(s): joined by the child, removed after it ends.
#[derive(Debug, Clone)]
pub struct TaskCgroup {
    procs: Vec<CString>,
    dirs: Vec<PathBuf>,
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("{}: {e}", path.display()))
}

fn make_dir(path: &Path) -> Result<(), String> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

impl Cgroups {
    /// Finds the hierarchy and makes the `shoal` parent cgroup.
    pub fn detect() -> Cgroups {
        let root = Path::new(CGROUP_ROOT);
        let attempt = if root.join("cgroup.controllers").exists() {
            let parent = root.join(PARENT);
            make_dir(&parent)
                .and_then(|()| write(&root.join("cgroup.subtree_control"), "+memory +cpu"))
                .and_then(|()| write(&parent.join("cgroup.subtree_control"), "+memory +cpu"))
                .map(|()| Cgroups::V2 { parent })
        } else if root.join("memory").is_dir() && root.join("cpu").is_dir() {
            let memory = root.join("memory").join(PARENT);
            let cpu = root.join("cpu").join(PARENT);
            make_dir(&memory)
                .and_then(|()| make_dir(&cpu))
                .map(|()| Cgroups::V1 { memory, cpu })
        } else {
            Err(format!(
                "no cgroup hierarchy with memory and cpu under {CGROUP_ROOT}"
            ))
        };
        attempt.unwrap_or_else(|reason| Cgroups::Unavailable { reason })
    }

    /// The line for the node description when limits cannot be enforced.
    pub fn warning(&self) -> Option<String> {
        match self {
            Cgroups::Unavailable { reason } => Some(format!(
                "memory and CPU limits are not enforced: cannot create cgroups ({reason})"
            )),
            _ => None,
        }
    }

    /// Makes the cgroup of one task and writes its limits. `None` when the
    /// task sets no limits or the host cannot enforce them.
    pub fn create(
        &self,
        task_id: &str,
        limits: &Resources,
    ) -> Result<Option<TaskCgroup>, TaskFailure> {
        if limits.memory_bytes <= 0 && limits.nano_cpus <= 0 {
            return Ok(None);
        }
        let quota_us = limits.nano_cpus * CPU_PERIOD_US / 1_000_000_000;
        let fail = |e: String| TaskFailure(format!("cgroup for the task's limits: {e}"));
        let dirs = match self {
            Cgroups::Unavailable { .. } => return Ok(None),
            Cgroups::V2 { parent } => {
                let dir = parent.join(task_id);
                make_dir(&dir).map_err(fail)?;
                if limits.memory_bytes > 0 {
                    write(&dir.join("memory.max"), &limits.memory_bytes.to_string())
                        .map_err(fail)?;
                }
                if quota_us > 0 {
                    write(&dir.join("cpu.max"), &format!("{quota_us} {CPU_PERIOD_US}"))
                        .map_err(fail)?;
                }
                vec![dir]
            }
            Cgroups::V1 { memory, cpu } => {
                let (mem_dir, cpu_dir) = (memory.join(task_id), cpu.join(task_id));
                make_dir(&mem_dir).map_err(fail)?;
                make_dir(&cpu_dir).map_err(fail)?;
                if limits.memory_bytes > 0 {
                    write(
                        &mem_dir.join("memory.limit_in_bytes"),
                        &limits.memory_bytes.to_string(),
                    )
                    .map_err(fail)?;
                }
                if quota_us > 0 {
                    write(
                        &cpu_dir.join("cpu.cfs_period_us"),
                        &CPU_PERIOD_US.to_string(),
                    )
                    .map_err(fail)?;
                    write(&cpu_dir.join("cpu.cfs_quota_us"), &quota_us.to_string())
                        .map_err(fail)?;
                }
                vec![mem_dir, cpu_dir]
            }
        };
        let procs = dirs
            .iter()
            .map(|d| CString::new(d.join("cgroup.procs").into_os_string().into_encoded_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(e.to_string()))?;
        Ok(Some(TaskCgroup { procs, dirs }))
    }
}

impl TaskCgroup {
    /// Joins the calling process to the cgroup. Runs in the child between
    /// fork and exec, so it only makes async-signal-safe calls (open, write,
    /// close) on paths prepared before the fork.
    pub fn join_self(&self) -> std::io::Result<()> {
        for path in &self.procs {
            // SAFETY: `path` is a valid NUL-terminated string owned by self;
            // open/write/close are async-signal-safe and allocate nothing.
            unsafe {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }

    /// Removes the cgroup once it is empty. Returns false while a process of
    /// it is still exiting (the caller retries).
    pub fn remove(&self) -> bool {
        let mut all = true;
        for dir in &self.dirs {
            match std::fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => all = false,
            }
        }
        all
    }

    /// The cgroup directories (tests read the limits back).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}
