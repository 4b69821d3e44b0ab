//! The agent: the node's end of the dispatcher session.
//!
//! It opens a session with the node's description, runs one [`TaskRunner`]
//! per assigned task, passes desired-state changes to the runners, reports
//! their status in batches, and keeps the session with heartbeats. A lost
//! session is reopened with backoff; reports made meanwhile are kept (the
//! latest per task) and sent on the next session.
//!
//! # Restarts
//! Task processes outlive the agent (their output goes to files, they are not
//! killed on exit). A new agent finds them again through their environment
//! ([`find_task_processes`]): a process of a task still assigned and running
//! is adopted; any other is killed. So a restart neither duplicates nor
//! loses a workload, and leaves nothing behind.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use shoal_api::dispatcher_client::DispatcherClient;
use shoal_api::{
    HeartbeatRequest, NodeDescription, SessionMessage, SessionRequest, Task, TaskState, TaskStatus,
    TaskStatusUpdate, UpdateTaskStatusRequest,
};
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

use crate::process::{find_task_processes, kill_group, ProcessConfig, ProcessExecutor};
use crate::task_runner::{TaskRunner, TaskUpdate};

/// Reports sent in one status call at most.
const MAX_REPORTS_PER_CALL: usize = 256;
/// Reports queued from runners before they wait.
const REPORT_QUEUE: usize = 1_024;
const RECONNECT_MIN_MS: u64 = 100;
const RECONNECT_MAX_MS: u64 = 5_000;
/// A task's stop grace period when its spec sets none.
const DEFAULT_STOP_GRACE_MS: u64 = 10_000;

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_id: String,
    pub description: NodeDescription,
    /// The dispatcher's unix socket.
    pub dispatcher_socket: PathBuf,
    pub process: ProcessConfig,
}

struct Runner {
    desired: watch::Sender<TaskState>,
    removed: bool,
}

struct Agent {
    config: AgentConfig,
    runners: HashMap<String, Runner>,
    /// Processes found at start that no runner has claimed yet.
    leftovers: HashMap<String, u32>,
    reports_tx: mpsc::Sender<TaskUpdate>,
    done_tx: mpsc::Sender<String>,
    /// Reports not yet accepted by a dispatcher: the latest per task.
    unsent: HashMap<String, TaskStatus>,
    /// Tasks whose runner ended in this agent. A later message may still show
    /// such a task running (the manager has not applied the final report
    /// yet); it must not be taken for a process that died unwatched. Cleared
    /// when the task leaves the node's assignments.
    finished: std::collections::HashSet<String>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Runs the agent until `shutdown` turns true. Task processes keep running
/// after it returns: the next agent adopts them.
pub async fn run(config: AgentConfig, mut shutdown: watch::Receiver<bool>) {
    let (reports_tx, mut reports) = mpsc::channel(REPORT_QUEUE);
    let (done_tx, mut done) = mpsc::channel(REPORT_QUEUE);
    let leftovers = find_task_processes(&config.process.tasks_dir);
    let mut agent = Agent {
        config,
        runners: HashMap::new(),
        leftovers,
        reports_tx,
        done_tx,
        unsent: HashMap::new(),
        finished: Default::default(),
    };
    let mut backoff = RECONNECT_MIN_MS;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let channel = shoal_api::transport::connect_unix(&agent.config.dispatcher_socket);
        let mut client = DispatcherClient::new(channel);
        let request = SessionRequest {
            node_id: agent.config.node_id.clone(),
            description: Some(agent.config.description.clone()),
        };
        let opened = tokio::select! {
            _ = shutdown.changed() => return,
            opened = client.session(request) => opened,
        };
        let mut stream = match opened {
            Ok(s) => s.into_inner(),
            Err(e) => {
                tracing::debug!(error = %e, "dispatcher session failed; retrying");
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
        let mut heartbeat = tokio::time::interval(Duration::from_millis(DEFAULT_STOP_GRACE_MS));
        // The session: until it breaks or the agent stops.
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                message = stream.message() => match message {
                    Ok(Some(m)) => {
                        if session_id != m.session_id {
                            session_id = m.session_id.clone();
                            heartbeat = tokio::time::interval(Duration::from_millis(m.heartbeat_period_ms.max(1)));
                            heartbeat.tick().await;
                        }
                        agent.apply(m).await;
                        if agent.flush(&mut client, &session_id).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) | Err(_) => break,
                },
                Some(update) = reports.recv() => {
                    agent.unsent.insert(update.task_id, update.status);
                    while agent.unsent.len() < MAX_REPORTS_PER_CALL {
                        let Ok(more) = reports.try_recv() else { break };
                        agent.unsent.insert(more.task_id, more.status);
                    }
                    if !session_id.is_empty() && agent.flush(&mut client, &session_id).await.is_err() {
                        break;
                    }
                }
                Some(task_id) = done.recv() => agent.finished(&task_id),
                _ = heartbeat.tick(), if !session_id.is_empty() => {
                    let beat = HeartbeatRequest { node_id: agent.config.node_id.clone(), session_id: session_id.clone() };
                    if client.heartbeat(beat).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
}

impl Agent {
    /// Follows one session message: new runners, desired-state changes,
    /// removals; after the full set, kills leftovers no task claimed.
    async fn apply(&mut self, message: SessionMessage) {
        for task in message.tasks {
            let desired = task.desired();
            if let Some(runner) = self.runners.get(&task.id) {
                runner.desired.send_replace(desired);
                continue;
            }
            self.start_runner(task, desired).await;
        }
        for id in message.removed {
            self.finished.remove(&id);
            match self.runners.get_mut(&id) {
                Some(runner) => {
                    runner.removed = true;
                    runner.desired.send_replace(TaskState::Remove);
                }
                None => {
                    if let Some(pgid) = self.leftovers.remove(&id) {
                        kill_group(pgid);
                    }
                    let _ = std::fs::remove_dir_all(self.config.process.tasks_dir.join(&id));
                }
            }
        }
        if message.full {
            for (_, pgid) in self.leftovers.drain() {
                kill_group(pgid);
            }
        }
    }

    async fn start_runner(&mut self, task: Task, desired: TaskState) {
        if self.finished.contains(&task.id) {
            return;
        }
        let observed = task.observed();
        let leftover = self.leftovers.remove(&task.id);
        if observed.is_terminal() {
            if let Some(pgid) = leftover {
                kill_group(pgid);
            }
            return;
        }
        let grace_ms = task
            .spec
            .as_ref()
            .and_then(|s| s.runtime.as_ref())
            .map_or(0, |r| r.stop_grace_period_ms);
        let grace = Duration::from_millis(if grace_ms == 0 {
            DEFAULT_STOP_GRACE_MS
        } else {
            grace_ms
        });
        let (executor, from) = match (leftover, observed as i32 >= TaskState::Starting as i32) {
            (Some(pgid), true) => (
                ProcessExecutor::adopt(&self.config.process, &task, pgid),
                TaskState::Running,
            ),
            (None, true) => {
                // It was started, and nothing of it runs any more: it ended
                // while no agent watched.
                let status = TaskStatus {
                    timestamp_ms: now_ms(),
                    state: TaskState::Failed as i32,
                    message: "failed".into(),
                    err: "the process ended while the agent was not running".into(),
                    exit_code: -1,
                    ..Default::default()
                };
                self.unsent.insert(task.id.clone(), status);
                return;
            }
            (leftover, false) => {
                // Not started as far as the manager knows: a process of it
                // can only be a start that was never reported.
                if let Some(pgid) = leftover {
                    kill_group(pgid);
                }
                (ProcessExecutor::new(&self.config.process, &task), observed)
            }
        };
        let (desired_tx, desired_rx) = watch::channel(desired);
        let runner = TaskRunner::new(
            task.id.clone(),
            executor,
            from,
            desired_rx,
            self.reports_tx.clone(),
            grace,
        );
        let done = self.done_tx.clone();
        let id = task.id.clone();
        tokio::spawn(async move {
            runner.run().await;
            let _ = done.send(id).await;
        });
        self.runners.insert(
            task.id,
            Runner {
                desired: desired_tx,
                removed: false,
            },
        );
    }

    fn finished(&mut self, task_id: &str) {
        if let Some(runner) = self.runners.remove(task_id) {
            if runner.removed {
                let _ = std::fs::remove_dir_all(self.config.process.tasks_dir.join(task_id));
            } else {
                self.finished.insert(task_id.to_string());
            }
        }
    }

    /// Sends every unsent report; keeps them when the call fails.
    async fn flush(
        &mut self,
        client: &mut DispatcherClient<Channel>,
        session_id: &str,
    ) -> Result<(), tonic::Status> {
        while !self.unsent.is_empty() {
            let ids: Vec<String> = self
                .unsent
                .keys()
                .take(MAX_REPORTS_PER_CALL)
                .cloned()
                .collect();
            let updates = ids
                .iter()
                .map(|id| TaskStatusUpdate {
                    task_id: id.clone(),
                    status: self.unsent.get(id).cloned(),
                })
                .collect();
            let request = UpdateTaskStatusRequest {
                node_id: self.config.node_id.clone(),
                session_id: session_id.to_string(),
                updates,
            };
            client.update_task_status(request).await?;
            for id in ids {
                self.unsent.remove(&id);
            }
        }
        Ok(())
    }
}
