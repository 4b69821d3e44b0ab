//! The simulator's executor: a task "runs" for a while and ends, without any
//! process. What happens to each task is drawn from a seeded RNG, so a
//! scenario with the same seed makes the same choices.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;
use shoal_api::TaskState;

/// How simulated tasks behave.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FakeExecutor {
    /// From the assignment to RUNNING.
    pub start_delay: Duration,
    /// From RUNNING to the end; `None` runs until told to stop.
    pub run_time: Option<Duration>,
    /// The share of tasks (0.0–1.0) that end FAILED instead of COMPLETE;
    /// with no run time, that fail right after starting.
    pub failure_rate: f64,
}

impl Default for FakeExecutor {
    fn default() -> FakeExecutor {
        FakeExecutor {
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

impl FakeExecutor {
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_failure_rate_decides_the_share_of_failed_tasks_and_the_seed_repeats_it() {
        let executor = FakeExecutor {
            failure_rate: 0.25,
            run_time: Some(Duration::from_secs(1)),
            ..Default::default()
        };
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..4_000)
                .map(|_| executor.plan(&mut rng))
                .collect::<Vec<_>>()
        };
        let plans = draw(7);
        let failed = plans
            .iter()
            .filter(|p| p.ends.is_some_and(|(_, s)| s == TaskState::Failed))
            .count();
        assert!((800..1_200).contains(&failed), "{failed} of 4000 failed");
        assert_eq!(plans, draw(7));
        let forever = FakeExecutor::default().plan(&mut StdRng::seed_from_u64(1));
        assert_eq!(forever.ends, None);
    }
}
