//! The simulator's executor: a task "runs" for a while and ends, without any
//! process. What happens to each task is drawn from a seeded RNG, so a
//! scenario with the same seed makes the same choices.
//!
//! The workload is an entry in its node's [`Workloads`] from its start until
//! it is stopped or killed, so it outlives the agent that started it, as a
//! process does: a new agent finds it there and adopts it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;
use shoal_agent::{Executor, ExitOutcome, TaskFailure};
use shoal_api::{Task, TaskState};
use tokio::time::Instant;

/// How simulated tasks behave.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskBehaviour {
    /// From the start to RUNNING.
    pub start_delay: Duration,
    /// From RUNNING to the end; `None` runs until told to stop.
    pub run_time: Option<Duration>,
    /// The share of tasks (0.0–1.0) that end FAILED instead of COMPLETE;
    /// with no run time, that fail right after starting.
    pub failure_rate: f64,
}

impl Default for TaskBehaviour {
    fn default() -> TaskBehaviour {
        TaskBehaviour {
            start_delay: Duration::from_millis(10),
            run_time: None,
            failure_rate: 0.0,
        }
    }
}

/// What one task will do: RUNNING after `running_after`, then maybe end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub running_after: Duration,
    pub ends: Option<(Duration, TaskState)>,
}

impl TaskBehaviour {
    /// The plan of one task, drawn from `rng`.
    pub fn plan(&self, rng: &mut StdRng) -> Plan {
        let fails = self.failure_rate > 0.0 && rng.gen_bool(self.failure_rate.clamp(0.0, 1.0));
        let ends = match (self.run_time, fails) {
            (Some(run), false) => Some((run, TaskState::Complete)),
            (Some(run), true) => Some((run, TaskState::Failed)),
            (None, true) => Some((Duration::from_millis(1), TaskState::Failed)),
            (None, false) => None,
        };
        Plan {
            running_after: self.start_delay,
            ends,
        }
    }
}

/// One simulated workload, from its start until it is stopped.
#[derive(Debug, Clone)]
pub struct Workload {
    pub service_id: String,
    pub slot: u64,
    pub handle: u32,
    /// When it ends on its own, and how.
    pub ends: Option<(Instant, ExitOutcome)>,
}

impl Workload {
    /// Whether it still runs (has not ended on its own).
    pub fn runs(&self, now: Instant) -> bool {
        self.ends.as_ref().is_none_or(|(at, _)| *at > now)
    }
}

/// A node's workloads, by task id: what its "machine" runs.
pub type Workloads = Arc<Mutex<HashMap<String, Workload>>>;

/// What a node's executors share: its workloads, its seeded RNG, its next
/// handle.
#[derive(Clone)]
pub struct Machine {
    pub behaviour: TaskBehaviour,
    pub workloads: Workloads,
    pub rng: Arc<Mutex<StdRng>>,
    pub next_handle: Arc<std::sync::atomic::AtomicU32>,
}

impl Machine {
    pub fn workloads(&self) -> std::sync::MutexGuard<'_, HashMap<String, Workload>> {
        self.workloads.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs one task as a [`Workload`] of its node.
pub struct FakeExecutor {
    task_id: String,
    service_id: String,
    slot: u64,
    machine: Machine,
}

impl FakeExecutor {
    pub fn new(machine: &Machine, task: &Task) -> FakeExecutor {
        FakeExecutor {
            task_id: task.id.clone(),
            service_id: task.service_id.clone(),
            slot: task.slot,
            machine: machine.clone(),
        }
    }

    fn outcome(state: TaskState) -> ExitOutcome {
        let exit_code = i32::from(state != TaskState::Complete);
        ExitOutcome {
            exit_code,
            message: format!("exit status {exit_code}"),
        }
    }
}

impl Executor for FakeExecutor {
    async fn prepare(&mut self) -> Result<(), TaskFailure> {
        Ok(())
    }

    async fn start(&mut self) -> Result<shoal_agent::Workload, TaskFailure> {
        let plan = {
            let mut rng = self.machine.rng.lock().unwrap_or_else(|e| e.into_inner());
            self.machine.behaviour.plan(&mut rng)
        };
        tokio::time::sleep(plan.running_after).await;
        let handle = self
            .machine
            .next_handle
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = Instant::now();
        self.machine.workloads().insert(
            self.task_id.clone(),
            Workload {
                service_id: self.service_id.clone(),
                slot: self.slot,
                handle,
                ends: plan
                    .ends
                    .map(|(run, state)| (now + run, FakeExecutor::outcome(state))),
            },
        );
        Ok(shoal_agent::Workload::process(handle))
    }

    async fn wait(&mut self) -> Result<ExitOutcome, TaskFailure> {
        let ends = self
            .machine
            .workloads()
            .get(&self.task_id)
            .map(|w| w.ends.clone());
        match ends {
            None => Err(TaskFailure("the workload is gone".into())),
            Some(None) => std::future::pending().await,
            Some(Some((at, outcome))) => {
                tokio::time::sleep_until(at).await;
                Ok(outcome)
            }
        }
    }

    fn probe(
        &self,
        _command: &str,
        _timeout: Duration,
    ) -> impl std::future::Future<Output = shoal_api::HealthProbe> + Send + 'static {
        // A simulated workload is healthy while it runs.
        let now = shoal_api::clock::now_ms();
        std::future::ready(shoal_api::HealthProbe {
            started_ms: now,
            ended_ms: now,
            exit_code: 0,
            output: String::new(),
        })
    }

    async fn shutdown(&mut self, _grace: Duration) -> Result<Option<ExitOutcome>, TaskFailure> {
        let gone = self.machine.workloads().remove(&self.task_id);
        let now = Instant::now();
        Ok(gone
            .filter(|w| !w.runs(now))
            .and_then(|w| w.ends.map(|(_, outcome)| outcome)))
    }

    async fn remove(&mut self) -> Result<(), TaskFailure> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_failure_rate_decides_the_share_of_failed_tasks_and_the_seed_repeats_it() {
        let behaviour = TaskBehaviour {
            failure_rate: 0.25,
            run_time: Some(Duration::from_secs(1)),
            ..Default::default()
        };
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..4_000)
                .map(|_| behaviour.plan(&mut rng))
                .collect::<Vec<_>>()
        };
        let plans = draw(7);
        let failed = plans
            .iter()
            .filter(|p| p.ends.is_some_and(|(_, s)| s == TaskState::Failed))
            .count();
        assert!((800..1_200).contains(&failed), "{failed} of 4000 failed");
        assert_eq!(plans, draw(7));
        let forever = TaskBehaviour::default().plan(&mut StdRng::seed_from_u64(1));
        assert_eq!(forever.ends, None);
    }
}
