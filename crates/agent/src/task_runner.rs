//! One task's state machine on the agent (DESIGN.md §2): ASSIGNED → ACCEPTED
//! → PREPARING → READY → STARTING → RUNNING → COMPLETE | FAILED, SHUTDOWN when
//! asked, REJECTED when prepare fails.
//!
//! [`next_step`] decides from the observed and desired states alone; the
//! [`TaskRunner`] performs the step and reports the new status. The observed
//! state only moves forward and never past what is desired: a task desired
//! READY (a delayed restart) waits there until it is let go.

use shoal_api::clock::now_ms;
use std::time::Duration;

use shoal_api::{task_status::Health, HealthConfig, HealthProbe, TaskState, TaskStatus};
use tokio::sync::{mpsc, watch};

use crate::executor::{Executor, ExitOutcome, TaskFailure, Workload};
use crate::health::HealthTracker;

/// What to do next for a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Acknowledge the assignment (→ ACCEPTED).
    Accept,
    /// Prepare the workload (→ PREPARING → READY, or REJECTED).
    Prepare,
    /// Ready, and desired no further: wait for the desired state to change.
    HoldReady,
    /// Start the workload (→ STARTING → RUNNING, or FAILED).
    Start,
    /// Running: wait for it to end (→ COMPLETE or FAILED).
    Wait,
    /// Stop it (→ SHUTDOWN).
    Shutdown,
    /// Terminal: nothing more to do.
    Finished,
}

/// The pure decision: from what the task is to what it should become.
pub fn next_step(observed: TaskState, desired: TaskState) -> Step {
    use TaskState::*;
    if observed.is_terminal() {
        return Step::Finished;
    }
    if desired as i32 >= Shutdown as i32 {
        return Step::Shutdown;
    }
    match observed {
        New | Pending | Assigned => Step::Accept,
        Accepted | Preparing => Step::Prepare,
        Ready if desired == Running => Step::Start,
        Ready => Step::HoldReady,
        Starting => Step::Start,
        Running => Step::Wait,
        _ => Step::Finished,
    }
}

/// A status report for the dispatcher.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskUpdate {
    pub task_id: String,
    pub status: TaskStatus,
}

/// A health check in flight.
type Probe = std::pin::Pin<Box<dyn std::future::Future<Output = HealthProbe> + Send>>;

/// Waits until `at`, or for ever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The health check in flight's result.
async fn run_probe(probe: &mut Option<Probe>) -> HealthProbe {
    match probe.as_mut() {
        Some(p) => p.await,
        None => std::future::pending().await,
    }
}

/// Sends a task's status to the agent. A closed channel means the agent is
/// going away; the state is kept by the runner and reported again by
/// whoever restarts the task.
async fn deliver(updates: &mpsc::Sender<TaskUpdate>, task_id: &str, status: TaskStatus) {
    let _ = updates
        .send(TaskUpdate {
            task_id: task_id.to_string(),
            status,
        })
        .await;
}

/// How often a long prepare's news is reported, at most.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// How often a running task gets its housekeeping (log rotation).
const HOUSEKEEPING_PERIOD_MS: u64 = 5_000;

/// Drives one task; see the module docs.
pub struct TaskRunner<E: Executor> {
    task_id: String,
    executor: E,
    observed: TaskState,
    workload: Workload,
    desired: watch::Receiver<TaskState>,
    updates: mpsc::Sender<TaskUpdate>,
    stop_grace: Duration,
    /// The task's health check, if it has one, and its verdicts since the
    /// task ran here.
    health_check: Option<HealthConfig>,
    health: Option<HealthTracker>,
}

impl<E: Executor> TaskRunner<E> {
    /// A runner for a task currently `observed`, following `desired`.
    pub fn new(
        task_id: String,
        executor: E,
        observed: TaskState,
        desired: watch::Receiver<TaskState>,
        updates: mpsc::Sender<TaskUpdate>,
        stop_grace: Duration,
    ) -> TaskRunner<E> {
        TaskRunner {
            task_id,
            executor,
            observed,
            workload: Workload::default(),
            desired,
            updates,
            stop_grace,
            health_check: None,
            health: None,
        }
    }

    /// The task's health check: run while the task runs, its verdicts
    /// reported, and the task failed once it is unhealthy.
    pub fn with_health(mut self, check: Option<HealthConfig>) -> TaskRunner<E> {
        self.health_check = check;
        self
    }

    /// The workload an earlier agent started (adopted running), shown in
    /// this runner's reports.
    pub fn with_workload(mut self, workload: Workload) -> TaskRunner<E> {
        self.workload = workload;
        self
    }

    /// The check to run: the spec's, else the one the workload brings,
    /// unless the spec disables checks (`--no-healthcheck`).
    async fn check(&mut self) -> Option<HealthConfig> {
        match &self.health_check {
            Some(c) if c.disabled => None,
            Some(c) if !c.command.trim().is_empty() => Some(c.clone()),
            _ => self
                .executor
                .own_health_check()
                .await
                .filter(|c| !c.command.trim().is_empty()),
        }
    }

    async fn report(&mut self, state: TaskState, message: &str, err: String, exit_code: i32) {
        debug_assert!(
            self.observed.may_become(state),
            "{:?} -> {state:?}",
            self.observed
        );
        self.observed = state;
        self.send(message, err, exit_code).await;
    }

    /// Sends the task's status: its observed state, with its health.
    async fn send(&mut self, message: &str, err: String, exit_code: i32) {
        let (health, health_log) = self
            .health
            .as_ref()
            .map_or((Health::None, Vec::new()), |h| (h.state(), h.log()));
        let status = TaskStatus {
            timestamp_ms: now_ms(),
            state: self.observed as i32,
            message: message.to_string(),
            err,
            exit_code,
            pid: self.workload.pid,
            container_id: self.workload.container_id.clone(),
            health: health as i32,
            health_log,
        };
        deliver(&self.updates, &self.task_id, status).await;
    }

    /// Runs until the task is terminal; returns its final state. When the
    /// desired-state sender goes away the task is shut down.
    pub async fn run(mut self) -> TaskState {
        let mut housekeeping = tokio::time::interval(Duration::from_millis(HOUSEKEEPING_PERIOD_MS));
        // The health check in flight, and when the next one is due.
        let mut probe: Option<Probe> = None;
        let mut next_probe: Option<tokio::time::Instant> = None;
        loop {
            let desired = *self.desired.borrow_and_update();
            let step = next_step(self.observed, desired);
            if step != Step::Wait {
                // No check outlives the running task: dropping one kills it.
                probe = None;
                next_probe = None;
            }
            match step {
                Step::Finished => return self.observed,
                Step::Accept => {
                    self.report(TaskState::Accepted, "accepted", String::new(), 0)
                        .await
                }
                Step::Prepare => {
                    // A task found PREPARING after an agent restart prepares
                    // again, without a second report of it.
                    if self.observed != TaskState::Preparing {
                        self.report(TaskState::Preparing, "preparing", String::new(), 0)
                            .await;
                    }
                    match self.prepare().await {
                        // Stopped meanwhile: the next step says how; with
                        // the desired state's sender gone, it is shut down.
                        None => {
                            if self.desired.has_changed().is_err() {
                                self.shutdown().await;
                            }
                            continue;
                        }
                        Some(Ok(())) => {
                            self.report(TaskState::Ready, "prepared", String::new(), 0)
                                .await
                        }
                        Some(Err(e)) => self.report(TaskState::Rejected, "rejected", e.0, 0).await,
                    }
                }
                Step::HoldReady => {
                    if self.desired.changed().await.is_err() {
                        self.report(TaskState::Shutdown, "shutdown", String::new(), 0)
                            .await;
                    }
                }
                Step::Start => {
                    self.report(TaskState::Starting, "starting", String::new(), 0)
                        .await;
                    match self.executor.start().await {
                        Ok(workload) => {
                            self.workload = workload;
                            self.health =
                                self.check().await.map(|c| HealthTracker::new(c, now_ms()));
                            self.report(TaskState::Running, "started", String::new(), 0)
                                .await;
                        }
                        Err(e) => {
                            self.report(TaskState::Failed, "failed to start", e.0, 0)
                                .await
                        }
                    }
                }
                Step::Wait => {
                    if self.health.is_none() {
                        // Adopted running: its checks start again here.
                        self.health = self.check().await.map(|c| HealthTracker::new(c, now_ms()));
                    }
                    if probe.is_none() && next_probe.is_none() {
                        next_probe = self
                            .health
                            .as_ref()
                            .map(|h| tokio::time::Instant::now() + h.interval());
                    }
                    let outcome = tokio::select! {
                        changed = self.desired.changed() => {
                            if changed.is_err() {
                                self.shutdown().await;
                            }
                            continue;
                        }
                        _ = housekeeping.tick() => {
                            self.executor.housekeeping();
                            continue;
                        }
                        _ = sleep_until(next_probe), if probe.is_none() => {
                            if let Some(h) = &self.health {
                                probe = Some(Box::pin(self.executor.probe(h.command(), h.timeout())));
                            }
                            next_probe = None;
                            continue;
                        }
                        result = run_probe(&mut probe), if probe.is_some() => {
                            probe = None;
                            self.checked(result).await;
                            continue;
                        }
                        outcome = self.executor.wait() => outcome,
                    };
                    self.report_exit(outcome).await;
                }
                Step::Shutdown => self.shutdown().await,
            }
        }
    }

    /// Prepares the workload; news of a long prepare (a pull) is reported
    /// as the PREPARING task's message, at most once a [`PROGRESS_EVERY`].
    /// `None` when the task is to stop meanwhile: a pull is not waited out
    /// for a task that is being removed (what it made is cleaned up with
    /// the task).
    async fn prepare(&mut self) -> Option<Result<(), TaskFailure>> {
        let mut progress = self.executor.progress();
        let (tx, mut rx) = mpsc::channel::<String>(1);
        let forward = async move {
            let Some(progress) = progress.as_mut() else {
                return;
            };
            while progress.changed().await.is_ok() {
                let news = progress.borrow_and_update().clone();
                if tx.send(news).await.is_err() {
                    return;
                }
                tokio::time::sleep(PROGRESS_EVERY).await;
            }
        };
        let prepare = self.executor.prepare();
        tokio::pin!(prepare, forward);
        let mut news = Vec::new();
        let mut forwarding = true;
        let result = loop {
            tokio::select! {
                result = &mut prepare => break Some(result),
                _ = &mut forward, if forwarding => forwarding = false,
                Some(message) = rx.recv() => news.push(message),
                changed = self.desired.changed() => {
                    let stop = changed.is_err()
                        || *self.desired.borrow() as i32 >= TaskState::Shutdown as i32;
                    if stop {
                        break None;
                    }
                }
            }
            if let Some(message) = news.pop() {
                // The future borrowing the executor is still pending: the
                // report goes out through the channel alone.
                let status = TaskStatus {
                    timestamp_ms: now_ms(),
                    state: self.observed as i32,
                    message,
                    pid: self.workload.pid,
                    container_id: self.workload.container_id.clone(),
                    ..Default::default()
                };
                deliver(&self.updates, &self.task_id, status).await;
            }
        };
        result
    }

    /// Takes a health check's result: a change of verdict is reported, and
    /// an unhealthy task is stopped and failed, naming why.
    async fn checked(&mut self, result: HealthProbe) {
        let Some(health) = self.health.as_mut() else {
            return;
        };
        let output = result.output.trim().to_string();
        let Some(verdict) = health.record(result) else {
            return;
        };
        if verdict != Health::Unhealthy {
            let message = match verdict {
                Health::Healthy => "healthy",
                _ => "health: starting",
            };
            // The same state, news of it.
            self.send(message, String::new(), 0).await;
            return;
        }
        let failures = health.failures();
        let why = if output.is_empty() {
            format!("unhealthy: the health check failed {failures} times in a row")
        } else {
            format!("unhealthy: the health check failed {failures} times in a row: {output}")
        };
        match self.executor.shutdown(self.stop_grace).await {
            // It ended on its own first: that end is its outcome.
            Ok(Some(exit)) => return self.report_exit(Ok(exit)).await,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(task = %self.task_id, error = %e, "stopping an unhealthy task")
            }
        }
        self.report(TaskState::Failed, "unhealthy", why, 0).await;
    }

    /// Reports how the workload ended on its own.
    async fn report_exit(&mut self, outcome: Result<ExitOutcome, TaskFailure>) {
        match outcome {
            Ok(exit) if exit.success() => {
                self.report(TaskState::Complete, "finished", String::new(), 0)
                    .await
            }
            Ok(exit) => {
                self.report(TaskState::Failed, "failed", exit.message, exit.exit_code)
                    .await
            }
            Err(e) => self.report(TaskState::Failed, "failed", e.0, 0).await,
        }
    }

    async fn shutdown(&mut self) {
        if self.observed as i32 >= TaskState::Starting as i32 {
            match self.executor.shutdown(self.stop_grace).await {
                // It ended before the stop reached it: that end is the
                // task's outcome, exit code included.
                Ok(Some(exit)) => return self.report_exit(Ok(exit)).await,
                Ok(None) => {}
                Err(e) => {
                    self.report(TaskState::Shutdown, "shutdown", e.0, 0).await;
                    return;
                }
            }
        }
        self.report(TaskState::Shutdown, "shutdown", String::new(), 0)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    #[test]
    fn a_task_walks_forward_to_its_desired_state() {
        let path = [
            (Assigned, Running, Step::Accept),
            (Accepted, Running, Step::Prepare),
            (Preparing, Running, Step::Prepare),
            (Ready, Running, Step::Start),
            (Starting, Running, Step::Start),
            (Running, Running, Step::Wait),
        ];
        for (observed, desired, step) in path {
            assert_eq!(
                next_step(observed, desired),
                step,
                "{observed:?} desired {desired:?}"
            );
        }
    }

    #[test]
    fn a_task_desired_ready_waits_there_and_never_starts() {
        assert_eq!(next_step(Assigned, Ready), Step::Accept);
        assert_eq!(next_step(Accepted, Ready), Step::Prepare);
        assert_eq!(next_step(Ready, Ready), Step::HoldReady);
    }

    #[test]
    fn shutdown_and_remove_stop_a_task_at_any_live_state() {
        for observed in [Assigned, Accepted, Preparing, Ready, Starting, Running] {
            assert_eq!(next_step(observed, Shutdown), Step::Shutdown);
            assert_eq!(next_step(observed, Remove), Step::Shutdown);
        }
    }

    /// Prepares until let go, telling its progress meanwhile.
    struct Pulling {
        progress: tokio::sync::watch::Sender<String>,
        done: Option<tokio::sync::oneshot::Receiver<()>>,
    }

    impl Executor for Pulling {
        async fn prepare(&mut self) -> Result<(), TaskFailure> {
            if let Some(done) = self.done.take() {
                let _ = done.await;
            }
            Err(TaskFailure("no such image".into()))
        }
        async fn start(&mut self) -> Result<Workload, TaskFailure> {
            unreachable!("a rejected task never starts")
        }
        async fn wait(&mut self) -> Result<ExitOutcome, TaskFailure> {
            std::future::pending().await
        }
        async fn shutdown(&mut self, _: Duration) -> Result<Option<ExitOutcome>, TaskFailure> {
            Ok(None)
        }
        async fn remove(&mut self) -> Result<(), TaskFailure> {
            Ok(())
        }
        fn probe(
            &self,
            _: &str,
            _: Duration,
        ) -> impl std::future::Future<Output = HealthProbe> + Send + 'static {
            std::future::pending()
        }
        fn progress(&mut self) -> Option<watch::Receiver<String>> {
            Some(self.progress.subscribe())
        }
    }

    #[tokio::test]
    async fn a_long_prepare_reports_its_progress_as_the_preparing_message() {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let progress = tokio::sync::watch::Sender::new(String::new());
        let executor = Pulling {
            progress: progress.clone(),
            done: Some(done_rx),
        };
        let (_desired_tx, desired_rx) = watch::channel(Running);
        let (updates_tx, mut updates) = mpsc::channel(16);
        let runner = TaskRunner::new(
            "t1".into(),
            executor,
            Accepted,
            desired_rx,
            updates_tx,
            Duration::from_secs(1),
        );
        let run = tokio::spawn(runner.run());
        let first = updates.recv().await.unwrap().status;
        assert_eq!(
            (first.state, first.message.as_str()),
            (Preparing as i32, "preparing")
        );
        progress.send_replace("pulling redis:7: Downloading 40%".into());
        let news = updates.recv().await.unwrap().status;
        assert_eq!(news.state, Preparing as i32);
        assert_eq!(news.message, "pulling redis:7: Downloading 40%");
        done_tx.send(()).unwrap();
        let last = updates.recv().await.unwrap().status;
        assert_eq!(
            (last.state, last.err.as_str()),
            (Rejected as i32, "no such image")
        );
        assert_eq!(run.await.unwrap(), Rejected);
    }

    #[test]
    fn terminal_tasks_are_never_touched_again() {
        for observed in [Complete, Shutdown, Failed, Rejected, Orphaned] {
            for desired in [Running, Ready, Shutdown, Remove] {
                assert_eq!(next_step(observed, desired), Step::Finished);
            }
        }
    }
}
