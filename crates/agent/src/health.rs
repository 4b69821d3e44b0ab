//! A running task's health, from its health check's results (docker's
//! rules): the task starts `starting`; a check that exits 0 makes it
//! `healthy`; `retries` failures in a row make it `unhealthy`, and the task
//! runner then fails the task. Failures within the start period do not
//! count while the task has not yet been healthy.
//!
//! [`HealthTracker::record`] is pure: a check's result in, the new verdict
//! out when it changed.

use std::collections::VecDeque;
use std::time::Duration;

use shoal_api::{task_status::Health, HealthConfig, HealthProbe};

/// Checks kept in the log a task reports.
pub const MAX_HEALTH_LOG: usize = 5;
/// Bytes of a check's output kept: a few checks of every task go into the
/// store with each change of health, so this stays small.
pub const MAX_PROBE_OUTPUT_BYTES: usize = 512;

/// One task's health, as its checks say.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    config: HealthConfig,
    started_ms: i64,
    failures: u64,
    state: Health,
    log: VecDeque<HealthProbe>,
}

impl HealthTracker {
    /// The health of a task that started running at `started_ms`.
    pub fn new(config: HealthConfig, started_ms: i64) -> HealthTracker {
        HealthTracker {
            config,
            started_ms,
            failures: 0,
            state: Health::Starting,
            log: VecDeque::with_capacity(MAX_HEALTH_LOG),
        }
    }

    pub fn state(&self) -> Health {
        self.state
    }

    /// The last checks, newest last.
    pub fn log(&self) -> Vec<HealthProbe> {
        self.log.iter().cloned().collect()
    }

    pub fn command(&self) -> &str {
        &self.config.command
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.config.interval_ms.max(1))
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeout_ms.max(1))
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// Records one check; returns the new verdict when it changed.
    pub fn record(&mut self, probe: HealthProbe) -> Option<Health> {
        let passed = probe.exit_code == 0;
        let starting = self.state == Health::Starting
            && probe.started_ms
                < self
                    .started_ms
                    .saturating_add(self.config.start_period_ms as i64);
        if self.log.len() == MAX_HEALTH_LOG {
            self.log.pop_front();
        }
        self.log.push_back(probe);
        let next = if passed {
            self.failures = 0;
            Health::Healthy
        } else if starting {
            Health::Starting
        } else {
            self.failures += 1;
            if self.failures >= self.config.retries.max(1) {
                Health::Unhealthy
            } else {
                self.state
            }
        };
        (next != self.state).then(|| {
            self.state = next;
            next
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(retries: u64, start_period_ms: u64) -> HealthTracker {
        HealthTracker::new(
            HealthConfig {
                command: "check".into(),
                interval_ms: 10,
                timeout_ms: 10,
                retries,
                start_period_ms,
                disabled: false,
            },
            1_000,
        )
    }

    fn probe(at: i64, exit_code: i32) -> HealthProbe {
        HealthProbe {
            started_ms: at,
            ended_ms: at + 1,
            exit_code,
            output: format!("exit {exit_code}"),
        }
    }

    #[test]
    fn a_pass_is_healthy_and_retries_failures_in_a_row_are_unhealthy() {
        let mut h = tracker(3, 0);
        assert_eq!(h.state(), Health::Starting);
        assert_eq!(h.record(probe(1_010, 0)), Some(Health::Healthy));
        assert_eq!(h.record(probe(1_020, 1)), None);
        assert_eq!(h.record(probe(1_030, 1)), None);
        // A pass in between starts the count again.
        assert_eq!(h.record(probe(1_040, 0)), None);
        assert_eq!(h.record(probe(1_050, 1)), None);
        assert_eq!(h.record(probe(1_060, 1)), None);
        assert_eq!(h.record(probe(1_070, 1)), Some(Health::Unhealthy));
        assert_eq!(h.failures(), 3);
    }

    #[test]
    fn failures_within_the_start_period_do_not_count_until_healthy() {
        let mut h = tracker(1, 500);
        assert_eq!(h.record(probe(1_100, 1)), None);
        assert_eq!(h.record(probe(1_400, 1)), None);
        assert_eq!(h.state(), Health::Starting);
        assert_eq!(h.record(probe(1_500, 1)), Some(Health::Unhealthy));
        // Once healthy, the start period no longer shields a failure.
        let mut h = tracker(1, 500);
        assert_eq!(h.record(probe(1_100, 0)), Some(Health::Healthy));
        assert_eq!(h.record(probe(1_200, 1)), Some(Health::Unhealthy));
    }

    #[test]
    fn the_log_keeps_the_last_few_checks() {
        let mut h = tracker(1_000, 0);
        for i in 0..(MAX_HEALTH_LOG as i64 + 3) {
            h.record(probe(1_000 + i, 1));
        }
        let log = h.log();
        assert_eq!(log.len(), MAX_HEALTH_LOG);
        assert_eq!(
            log.last().unwrap().started_ms,
            1_000 + MAX_HEALTH_LOG as i64 + 2
        );
    }
}
