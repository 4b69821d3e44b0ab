//! A simulated agent: a real dispatcher client (session, heartbeats, status
//! reports over the transport module) whose tasks run on the
//! [`FakeExecutor`] instead of as processes.
//!
//! It drives each task's observed state towards its desired state, never past
//! it, as the real agent does: ACCEPTED … STARTING at once, RUNNING after the
//! start delay, then COMPLETE or FAILED if its plan ends it, SHUTDOWN when
//! told to stop. A task the manager already counts as ended (it was orphaned
//! while this agent was cut off) is stopped here without a report.
//!
//! What the agent believes runs is shared ([`SimAgent::running`]), so tests
//! can check that a slot never has two live tasks across the cluster.

use shoal_api::clock::now_ms;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use shoal_agent::{Heartbeat, Reports};
use shoal_api::dispatcher_client::DispatcherClient;
use shoal_api::{
    NodeDescription, SessionMessage, SessionRequest, TaskState, TaskStatus, TaskStatusUpdate,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::fake_executor::FakeExecutor;

const RECONNECT_MIN_MS: u64 = 50;
const RECONNECT_MAX_MS: u64 = 2_000;
/// Reports sent in one status call at most.
const MAX_REPORTS_PER_CALL: usize = 512;
/// Reports kept while the manager is out of reach; past this, only the
/// latest of each task.
const MAX_UNSENT_REPORTS: usize = 16_384;

/// A task as this agent runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveTask {
    pub slot: u64,
    pub state: TaskState,
}

/// Tasks the agent runs (not ended), by task id, with the service's slot.
pub type Running = Arc<Mutex<HashMap<String, (String, LiveTask)>>>;

/// How to run one simulated agent.
#[derive(Debug, Clone)]
pub struct SimAgent {
    pub node_id: String,
    pub description: NodeDescription,
    pub dispatcher_socket: PathBuf,
    pub executor: FakeExecutor,
    pub seed: u64,
    pub running: Running,
}

/// One timer: at `.0`, move the task to this state.
type Timers = BTreeMap<(Instant, u64), (String, TaskState)>;

struct State {
    agent: SimAgent,
    rng: StdRng,
    timers: Timers,
    sequence: u64,
    /// The task's desired state as last sent, and what was last reported.
    tasks: HashMap<String, (TaskState, TaskState)>,
    reports: Reports,
}

impl State {
    fn report(&mut self, task_id: &str, state: TaskState, message: &str) {
        let Some((_, reported)) = self.tasks.get_mut(task_id) else {
            return;
        };
        if !reported.may_become(state) {
            return;
        }
        *reported = state;
        {
            let mut running = self.agent.running.lock().unwrap_or_else(|e| e.into_inner());
            if state.is_terminal() {
                running.remove(task_id);
            } else if let Some((_, live)) = running.get_mut(task_id) {
                live.state = state;
            }
        }
        self.reports.push(TaskStatusUpdate {
            task_id: task_id.to_string(),
            status: Some(TaskStatus {
                timestamp_ms: now_ms(),
                state: state as i32,
                message: message.to_string(),
                exit_code: if state == TaskState::Failed { 1 } else { 0 },
                ..Default::default()
            }),
        });
    }

    fn after(&mut self, delay: Duration, task_id: &str, state: TaskState) {
        self.sequence += 1;
        self.timers.insert(
            (Instant::now() + delay, self.sequence),
            (task_id.to_string(), state),
        );
    }

    /// Starts a task that is wanted RUNNING and has not started.
    fn start(&mut self, task_id: &str) {
        let Some((_, reported)) = self.tasks.get(task_id) else {
            return;
        };
        if *reported >= TaskState::Starting {
            return;
        }
        self.report(task_id, TaskState::Starting, "starting");
        let plan = self.agent.executor.plan(&mut self.rng);
        self.after(plan.running_after, task_id, TaskState::Running);
        if let Some((run, end)) = plan.ends {
            self.after(plan.running_after + run, task_id, end);
        }
    }

    fn stop(&mut self, task_id: &str) {
        self.report(task_id, TaskState::Shutdown, "shut down");
    }

    fn forget(&mut self, task_id: &str) {
        self.tasks.remove(task_id);
        self.agent
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(task_id);
    }

    fn apply(&mut self, message: SessionMessage) {
        if message.full {
            let listed: std::collections::HashSet<&str> =
                message.tasks.iter().map(|t| t.id.as_str()).collect();
            let gone: Vec<String> = self
                .tasks
                .keys()
                .filter(|id| !listed.contains(id.as_str()))
                .cloned()
                .collect();
            for id in gone {
                self.forget(&id);
            }
        }
        for task in message.tasks {
            let desired = task.desired();
            let observed = task.observed();
            if observed.is_terminal() {
                // Ended as far as the manager knows (orphaned while this
                // agent was away): stop it here, silently.
                self.forget(&task.id);
                continue;
            }
            let known = self.tasks.contains_key(&task.id);
            if !known {
                let reported = observed.max(TaskState::Assigned);
                self.tasks.insert(task.id.clone(), (desired, reported));
                self.agent
                    .running
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(
                        task.id.clone(),
                        (
                            task.service_id.clone(),
                            LiveTask {
                                slot: task.slot,
                                state: reported,
                            },
                        ),
                    );
                if reported < TaskState::Accepted {
                    self.report(&task.id, TaskState::Accepted, "accepted");
                }
            } else if let Some(entry) = self.tasks.get_mut(&task.id) {
                entry.0 = desired;
            }
            if desired >= TaskState::Shutdown {
                self.stop(&task.id);
            } else if desired == TaskState::Running {
                self.start(&task.id);
            } else if desired == TaskState::Ready {
                self.report(&task.id, TaskState::Ready, "prepared");
            }
        }
        for id in message.removed {
            self.forget(&id);
        }
    }

    fn fire_due(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (task_id, state) = entry.remove();
            let wanted = self.tasks.get(&task_id).map(|(d, _)| *d);
            // Only towards what is still wanted.
            if wanted == Some(TaskState::Running) {
                let message = match state {
                    TaskState::Running => "started",
                    TaskState::Complete => "finished",
                    _ => "failed",
                };
                self.report(&task_id, state, message);
            }
        }
    }
}

impl SimAgent {
    /// Runs until `shutdown` turns true. While `connected` is false the agent
    /// is cut off from the manager (no session, no heartbeats) but keeps
    /// running its tasks, as a partitioned node does.
    pub async fn run(
        self,
        mut shutdown: watch::Receiver<bool>,
        mut connected: watch::Receiver<bool>,
    ) {
        let mut state = State {
            rng: StdRng::seed_from_u64(self.seed),
            agent: self,
            timers: BTreeMap::new(),
            sequence: 0,
            tasks: HashMap::new(),
            reports: Reports::new(MAX_REPORTS_PER_CALL, MAX_UNSENT_REPORTS),
        };
        let mut backoff = RECONNECT_MIN_MS;
        loop {
            if *shutdown.borrow() {
                return;
            }
            if !*connected.borrow() {
                tokio::select! {
                    _ = shutdown.changed() => {}
                    _ = connected.changed() => {}
                }
                continue;
            }
            let mut client = DispatcherClient::new(shoal_api::transport::connect_unix(
                &state.agent.dispatcher_socket,
            ));
            let request = SessionRequest {
                node_id: state.agent.node_id.clone(),
                description: Some(state.agent.description.clone()),
            };
            let opened = tokio::select! {
                _ = shutdown.changed() => return,
                opened = client.session(request) => opened,
            };
            let mut stream = match opened {
                Ok(s) => s.into_inner(),
                Err(_) => {
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = tokio::time::sleep(Duration::from_millis(backoff)) => {}
                    }
                    backoff = (backoff * 2).min(RECONNECT_MAX_MS);
                    continue;
                }
            };
            backoff = RECONNECT_MIN_MS;
            let mut session_id = String::new();
            let mut heartbeat: Option<Heartbeat> = None;
            loop {
                let next_timer = state.timers.first_key_value().map(|((at, _), _)| *at);
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = connected.changed() => {
                        if !*connected.borrow() {
                            break;
                        }
                    }
                    message = stream.message() => match message {
                        Ok(Some(m)) => {
                            if session_id != m.session_id {
                                session_id = m.session_id.clone();
                                heartbeat = Some(Heartbeat::start(
                                    client.clone(),
                                    state.agent.node_id.clone(),
                                    session_id.clone(),
                                    m.heartbeat_period_ms,
                                ));
                            }
                            state.apply(m);
                        }
                        Ok(None) | Err(_) => break,
                    },
                    _ = tokio::time::sleep_until(next_timer.unwrap_or_else(Instant::now)), if next_timer.is_some() => {
                        state.fire_due();
                    }
                    answered = state.reports.answered() => {
                        if answered.is_err() {
                            break;
                        }
                    }
                    _ = Heartbeat::lost_once_started(&mut heartbeat) => break,
                }
                if !session_id.is_empty() {
                    state
                        .reports
                        .send(&client, &state.agent.node_id, &session_id);
                }
            }
            state.reports.abandon();
            // Cut off: timers keep their due times; what fires meanwhile is
            // reported on the next session.
        }
    }
}
