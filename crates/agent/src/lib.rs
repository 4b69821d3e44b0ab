//! The worker side of Shoal: what runs a task once the manager has assigned it.
//!
//! Each assigned task gets a [`TaskRunner`]: a state machine that drives the
//! task's observed state towards its desired state through an [`Executor`]
//! (prepare, start, wait, shutdown, remove), reporting every transition. The
//! decision of what to do next is the pure function [`next_step`]; the runner
//! only performs it.
//!
//! Owns: task `status` from ACCEPTED onwards (DESIGN.md §2), reported through
//! the dispatcher; never `desired_state`, which only moves the other way.
//!
//! The agent's session with the dispatcher is [`run`]; what runs the tasks
//! is the [`Driver`] it is given ([`HostDriver`] on a real node: processes,
//! and containers where the node has a Docker Engine; a fake one in the
//! simulator). The log reads managers ask of the node through its session
//! are read here ([`log_reader`]) and published back ([`log_publisher`]).

mod agent;
mod cgroup;
pub mod container;
mod driver;
mod engine;
mod executor;
mod health;
mod heartbeat;
mod host_driver;
mod log_pipe;
mod log_publisher;
pub mod log_reader;
mod process;
mod reports;
mod task_db;
mod task_runner;

pub use agent::{run, AgentConfig, AgentExit, Connector, Resume};
pub use cgroup::Cgroups;
pub use driver::Driver;
pub use engine::{Engine, NoEngine};
pub use executor::{Executor, ExitOutcome, TaskFailure, Workload};
pub use health::{HealthTracker, MAX_HEALTH_LOG, MAX_PROBE_OUTPUT_BYTES};
pub use heartbeat::Heartbeat;
pub use host_driver::{HostDriver, HostExecutor};
pub use process::{
    find_task_processes, kill_group, ProcessConfig, ProcessDriver, ProcessExecutor, TASK_DIR_ENV,
    TASK_ID_ENV,
};
pub use reports::Reports;
pub use task_db::{TaskDb, TaskDbError, TaskRecord};
pub use task_runner::{next_step, Step, TaskRunner, TaskUpdate};
