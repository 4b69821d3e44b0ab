//! The agent: the node's end of the dispatcher session.
//!
//! It opens a session with the node's description, runs one [`TaskRunner`]
//! per assigned task, passes desired-state changes to the runners, reports
//! their status in batches ([`Reports`]: one call in flight beside the
//! session loop, so an assignment never waits for a report's commit), and
//! keeps the session with heartbeats. A lost session is reopened with
//! backoff; reports made meanwhile are kept (past a bound, the latest per
//! task) and sent on the next session.
//!
//! What runs a task is the [`Driver`] the agent is built with (processes in
//! the daemon, fakes in the simulator), where its record is kept a
//! [`TaskRecord`], and how it reaches the dispatcher a [`Connector`]: the
//! session, the runners and the restart rules below are the same code for
//! every node of every kind.
//!
//! # Restarts
//! Workloads outlive the agent (a process keeps its output pipes open both
//! ways, nothing is killed on exit). A new agent finds them again through its driver
//! ([`Driver::leftovers`]): a workload of a task still assigned and desired
//! running is adopted, and reported RUNNING if the manager never heard it
//! started; any other is killed ([`Resume`]). So a restart neither
//! duplicates nor loses a workload, and leaves nothing behind.
//!
//! # Sessions
//! A session's first message is the node's full set of tasks. A runner
//! whose task is not in it left the node while no session was open (it was
//! removed meanwhile) and is stopped; a task the manager counts as ended
//! (orphaned while the node was cut off) is stopped too, whatever its
//! desired state says, since its replacement may already run elsewhere.

use shoal_api::clock::now_ms;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_api::dispatcher_client::DispatcherClient;
use shoal_api::{
    NodeDescription, NodeRole, SessionMessage, SessionRequest, Task, TaskState, TaskStatus,
    TaskStatusUpdate,
};
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

use crate::driver::Driver;
use crate::heartbeat::Heartbeat;
use crate::log_publisher::LogPublishers;
use crate::reports::Reports;
use crate::task_db::TaskRecord;
use crate::task_runner::{TaskRunner, TaskUpdate};

/// Reports sent in one status call at most.
const MAX_REPORTS_PER_CALL: usize = 256;
/// Reports queued from runners before they wait.
const REPORT_QUEUE: usize = 1_024;
/// Reports kept for a dispatcher that cannot be reached; past this, only
/// the latest per task is kept (a forward jump is still a valid report).
const MAX_UNSENT_REPORTS: usize = 16_384;
const RECONNECT_MIN_MS: u64 = 100;
const RECONNECT_MAX_MS: u64 = 5_000;
/// A task's stop grace period when its spec sets none.
const DEFAULT_STOP_GRACE_MS: u64 = 10_000;

/// How the agent reaches the dispatcher: each session gets a new channel,
/// from the next of the managers' addresses it knows, and the addresses a
/// session names replace them (where to go when this manager is lost).
#[derive(Clone)]
pub struct Connector {
    dial: Arc<Dial>,
    addresses: Arc<Mutex<Addresses>>,
    /// Told of every new list of addresses (the daemon keeps it on disk);
    /// without one, the addresses never change (a manager's own agent
    /// dials its own manager).
    learned: Option<Arc<Learned>>,
    /// Told the role the node's spec asks for, with each session message
    /// (the daemon changes the node's role when it differs).
    role: Option<Arc<RoleAsked>>,
}

type RoleAsked = dyn Fn(NodeRole) + Send + Sync;
type Dial = dyn Fn(&str) -> Result<Channel, String> + Send + Sync;
type Learned = dyn Fn(&[String]) + Send + Sync;

#[derive(Debug, Default)]
struct Addresses {
    all: Vec<String>,
    next: usize,
}

impl Connector {
    /// The dispatcher on a unix socket.
    pub fn unix(path: &Path) -> Connector {
        let path: PathBuf = path.to_path_buf();
        Connector::new(path.display().to_string(), move || {
            shoal_api::transport::connect_unix(&path)
        })
    }

    /// Channels made by `connect`; `shown` names where they lead.
    pub fn new(shown: String, connect: impl Fn() -> Channel + Send + Sync + 'static) -> Connector {
        Connector::rotating(vec![shown], move |_| Ok(connect()))
    }

    /// Channels made by `dial` to each of `addresses` in turn; an address
    /// that cannot be dialled counts as a failed session.
    pub fn rotating(
        addresses: Vec<String>,
        dial: impl Fn(&str) -> Result<Channel, String> + Send + Sync + 'static,
    ) -> Connector {
        Connector {
            dial: Arc::new(dial),
            addresses: Arc::new(Mutex::new(Addresses {
                all: addresses,
                next: 0,
            })),
            learned: None,
            role: None,
        }
    }

    /// Follows the addresses each session names, and calls `learned` with
    /// each new list.
    pub fn on_learned(mut self, learned: impl Fn(&[String]) + Send + Sync + 'static) -> Connector {
        self.learned = Some(Arc::new(learned));
        self
    }

    /// Calls `asked` with the role the node's spec asks for, as each
    /// session message says it.
    pub fn on_desired_role(
        mut self,
        asked: impl Fn(NodeRole) + Send + Sync + 'static,
    ) -> Connector {
        self.role = Some(Arc::new(asked));
        self
    }

    fn desired_role(&self, role: Option<i32>) {
        let role = role.and_then(|r| NodeRole::try_from(r).ok());
        if let (Some(asked), Some(role)) = (&self.role, role) {
            asked(role);
        }
    }

    /// The addresses it knows now.
    pub fn addresses(&self) -> Vec<String> {
        self.lock().all.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Addresses> {
        self.addresses.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A channel to the next address, and the address.
    fn channel(&self) -> (String, Result<Channel, String>) {
        let addr = {
            let mut addresses = self.lock();
            if addresses.all.is_empty() {
                return (String::new(), Err("no manager address is known".into()));
            }
            let i = addresses.next % addresses.all.len();
            addresses.next = i + 1;
            addresses.all[i].clone()
        };
        let channel = (self.dial)(&addr);
        (addr, channel)
    }

    /// A manager said the leader is at `addr`: dial it next.
    fn prefer(&self, addr: &str) {
        let mut known = self.lock();
        match known.all.iter().position(|a| a == addr) {
            Some(i) => known.next = i,
            None => {
                known.all.insert(0, addr.to_string());
                known.next = 0;
            }
        }
    }

    /// A session named the managers `addresses`: dial those from now on
    /// (starting with the one that answered, while it is among them).
    fn learn(&self, current: &str, addresses: &[String]) {
        let Some(learned) = &self.learned else {
            return;
        };
        let loopback = |a: &str| {
            a.parse::<std::net::SocketAddr>()
                .is_ok_and(|s| s.ip().is_loopback())
        };
        // The address that answered stays first: the managers may advertise
        // addresses this node cannot reach (another network, NAT). And a
        // loopback address from a manager elsewhere is that manager's own,
        // never this node's way to it.
        let mut list = vec![current.to_string()];
        list.extend(
            addresses
                .iter()
                .filter(|a| *a != current && (loopback(current) || !loopback(a)))
                .cloned(),
        );
        if addresses.is_empty() {
            return;
        }
        {
            let mut known = self.lock();
            if known.all == list {
                return;
            }
            known.all = list.clone();
            known.next = 0;
        }
        learned(&list);
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connector({:?})", self.lock().all)
    }
}

/// Why the agent stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentExit {
    /// Shutdown was asked for.
    Stopped,
    /// A manager said this node was removed from the cluster (the reason):
    /// it must not run tasks any more, its replacements run elsewhere.
    Removed(String),
}

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_id: String,
    pub description: NodeDescription,
    pub dispatcher: Connector,
}

/// What a new runner does with a task the dispatcher hands it, given what an
/// earlier agent left: the pure decision behind adoption after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// It ended here already: the recorded final status is reported again if
    /// the manager does not have a terminal one.
    ReportRecorded,
    /// Terminal at the manager: a leftover process of it is killed.
    Drop,
    /// Its process still runs: the runner takes it over at RUNNING, and
    /// reports RUNNING when the manager has an earlier state (the earlier
    /// agent started it and died before its report was committed).
    Adopt { report_running: bool },
    /// It was started and nothing of it runs: it ended while no agent
    /// watched, and is reported failed.
    Lost,
    /// Run it from the manager's state; a leftover process of it, which
    /// must not run (the task is no longer desired running), is killed.
    Run,
}

impl Resume {
    pub fn decide(
        observed: TaskState,
        desired: TaskState,
        recorded_terminal: bool,
        leftover: bool,
    ) -> Resume {
        let started = observed as i32 >= TaskState::Starting as i32;
        if recorded_terminal {
            Resume::ReportRecorded
        } else if observed.is_terminal() {
            Resume::Drop
        } else if leftover && (started || desired == TaskState::Running) {
            // A process exists only once a start was under way, and a task
            // starts at most once: the leftover is this task's one start.
            Resume::Adopt {
                report_running: observed != TaskState::Running,
            }
        } else if started {
            Resume::Lost
        } else {
            Resume::Run
        }
    }
}

struct Runner {
    desired: watch::Sender<TaskState>,
    removed: bool,
    /// Aborted when the agent stops: the workload is left to the next
    /// agent, not stopped.
    task: tokio::task::AbortHandle,
}

struct Agent<D: Driver> {
    config: AgentConfig,
    driver: Arc<D>,
    runners: HashMap<String, Runner>,
    /// Processes found at start that no runner has claimed yet.
    leftovers: HashMap<String, crate::Workload>,
    reports_tx: mpsc::Sender<TaskUpdate>,
    done_tx: mpsc::Sender<String>,
    /// Reports not yet accepted by a dispatcher, in the order made.
    reports: Reports,
    /// The last status of every task of this node, as recorded in `db`. A
    /// task whose record is terminal is never run again here, and its final
    /// report is made again if the manager has not applied it.
    recorded: HashMap<String, TaskStatus>,
    db: Arc<dyn TaskRecord>,
    /// Log reads managers asked of this node, running.
    log_publishers: LogPublishers,
}

impl<D: Driver> Drop for Agent<D> {
    fn drop(&mut self) {
        for runner in self.runners.values() {
            runner.task.abort();
        }
        self.log_publishers.cancel_all();
    }
}

/// Runs the agent until `shutdown` turns true. Workloads keep running after
/// it returns (its runners are dropped, not stopped): the next agent adopts
/// them.
pub async fn run<D: Driver>(
    config: AgentConfig,
    driver: Arc<D>,
    db: Arc<dyn TaskRecord>,
    mut shutdown: watch::Receiver<bool>,
) -> AgentExit {
    let (reports_tx, mut updates) = mpsc::channel(REPORT_QUEUE);
    let (done_tx, mut done) = mpsc::channel(REPORT_QUEUE);
    // Until the workloads earlier agents left are known (the engine may
    // not answer yet), no task starts: it could run beside its leftover.
    let mut backoff = RECONNECT_MIN_MS;
    let leftovers = loop {
        if *shutdown.borrow() {
            return AgentExit::Stopped;
        }
        let listed = tokio::select! {
            _ = shutdown.changed() => return AgentExit::Stopped,
            listed = driver.leftovers() => listed,
        };
        match listed {
            Ok(found) => break found,
            Err(why) => {
                tracing::error!(%why, "the workloads earlier agents left cannot be known; this node takes no task until they can");
                tokio::select! {
                    _ = shutdown.changed() => return AgentExit::Stopped,
                    _ = tokio::time::sleep(Duration::from_millis(backoff)) => {}
                }
                backoff = (backoff * 2).min(RECONNECT_MAX_MS);
            }
        }
    };
    let mut agent = Agent {
        config,
        driver,
        runners: HashMap::new(),
        leftovers,
        reports_tx,
        done_tx,
        reports: Reports::new(MAX_REPORTS_PER_CALL, MAX_UNSENT_REPORTS),
        recorded: db.load().unwrap_or_else(|e| {
            tracing::error!(error = %e, "the agent's task record is unreadable; starting without it");
            HashMap::new()
        }),
        db,
        log_publishers: LogPublishers::default(),
    };
    let mut backoff = RECONNECT_MIN_MS;
    loop {
        if *shutdown.borrow() {
            return AgentExit::Stopped;
        }
        let (addr, channel) = agent.config.dispatcher.channel();
        let mut session_channel = None;
        let opened = match channel {
            Ok(channel) => {
                session_channel = Some(channel.clone());
                let mut client = DispatcherClient::new(channel);
                let request = SessionRequest {
                    node_id: agent.config.node_id.clone(),
                    description: Some(agent.config.description.clone()),
                };
                tokio::select! {
                    _ = shutdown.changed() => return AgentExit::Stopped,
                    opened = client.session(request) => opened.map(|s| (client, s)),
                }
            }
            Err(e) => Err(tonic::Status::unavailable(e)),
        };
        let (client, mut stream) = match opened {
            Ok((client, s)) => (client, s.into_inner()),
            Err(e) if shoal_api::is_node_removed(&e) => {
                tracing::error!(manager = %addr, error = %e.message(), "this node was removed from the cluster");
                return AgentExit::Removed(e.message().to_string());
            }
            Err(e) if shoal_api::leader_hint(&e).is_some() => {
                // A follower: the leader is elsewhere, and it said where.
                if let Some(leader) = shoal_api::leader_hint(&e) {
                    tracing::debug!(manager = %addr, %leader, "going to the leader");
                    agent.config.dispatcher.prefer(&leader);
                }
                tokio::select! {
                    _ = shutdown.changed() => return AgentExit::Stopped,
                    _ = tokio::time::sleep(Duration::from_millis(RECONNECT_MIN_MS)) => {}
                }
                continue;
            }
            Err(e) => {
                if matches!(
                    e.code(),
                    tonic::Code::PermissionDenied
                        | tonic::Code::Unauthenticated
                        | tonic::Code::InvalidArgument
                        | tonic::Code::FailedPrecondition
                ) {
                    // Not a passing fault: its certificate is not the
                    // cluster's, or what it sent is refused. Said loudly.
                    tracing::warn!(manager = %addr, error = %e.message(), "the manager refused this node's session");
                } else {
                    tracing::debug!(manager = %addr, error = %e, "dispatcher session failed; retrying");
                }
                tokio::select! {
                    _ = shutdown.changed() => return AgentExit::Stopped,
                    _ = tokio::time::sleep(Duration::from_millis(backoff)) => {}
                }
                backoff = (backoff * 2).min(RECONNECT_MAX_MS);
                continue;
            }
        };
        backoff = RECONNECT_MIN_MS;
        let mut session_id = String::new();
        // Started with the period the dispatcher sends in its first message.
        let mut heartbeat: Option<Heartbeat> = None;
        // The session: until it breaks or the agent stops. Reports go out
        // one call at a time beside it (`Reports`): an assignment never
        // waits for a report's commit.
        loop {
            tokio::select! {
                // Reports first: a runner's last report is queued before its
                // "done", and must be recorded before the runner is dropped.
                biased;
                _ = shutdown.changed() => return AgentExit::Stopped,
                message = stream.message() => match message {
                    Ok(Some(m)) => {
                        if session_id != m.session_id {
                            session_id = m.session_id.clone();
                            heartbeat = Some(Heartbeat::start(
                                client.clone(),
                                agent.config.node_id.clone(),
                                session_id.clone(),
                                m.heartbeat_period_ms,
                            ));
                        }
                        agent.config.dispatcher.learn(&addr, &m.managers);
                        agent.config.dispatcher.desired_role(m.desired_role);
                        if let Some(channel) = &session_channel {
                            agent.answer_log_reads(channel, &m);
                        }
                        agent.apply(m).await;
                    }
                    Ok(None) | Err(_) => break,
                },
                Some(update) = updates.recv() => {
                    agent.queue(update);
                    for _ in 1..MAX_REPORTS_PER_CALL {
                        let Ok(more) = updates.try_recv() else { break };
                        agent.queue(more);
                    }
                }
                Some(task_id) = done.recv() => agent.finished(&task_id),
                answered = agent.reports.answered() => {
                    if let Err(e) = answered {
                        tracing::debug!(error = %e, "a status report failed; a new session sends it again");
                        break;
                    }
                }
                _ = Heartbeat::lost_once_started(&mut heartbeat) => break,
            }
            if !session_id.is_empty() {
                agent
                    .reports
                    .send(&client, &agent.config.node_id, &session_id);
            }
        }
        agent.reports.abandon();
        // The manager dropped this session's reads with it.
        agent.log_publishers.cancel_all();
    }
}

impl<D: Driver> Agent<D> {
    /// Starts and stops the log reads a session message asks for.
    fn answer_log_reads(&mut self, channel: &Channel, message: &SessionMessage) {
        for id in &message.log_cancellations {
            self.log_publishers.cancel(id);
        }
        for subscription in &message.log_subscriptions {
            let dir = self.driver.log_dir(&subscription.task_id);
            self.log_publishers
                .start(channel.clone(), dir, subscription.clone());
        }
    }

    /// Records a runner's report, then queues it for the dispatcher.
    fn queue(&mut self, update: TaskUpdate) {
        if let Err(e) = self.db.record(&update.task_id, &update.status) {
            tracing::warn!(error = %e, "recording a task status failed");
        }
        self.recorded
            .insert(update.task_id.clone(), update.status.clone());
        self.reports.push(TaskStatusUpdate {
            task_id: update.task_id,
            status: Some(update.status),
        });
    }

    /// Follows one session message: new runners, desired-state changes,
    /// removals; after the full set, stops runners of tasks it does not
    /// hold and kills leftovers no task claimed.
    async fn apply(&mut self, message: SessionMessage) {
        let mut removed = message.removed;
        if message.full {
            let listed: HashSet<&str> = message.tasks.iter().map(|t| t.id.as_str()).collect();
            removed.extend(
                self.runners
                    .keys()
                    .filter(|id| !listed.contains(id.as_str()))
                    .cloned(),
            );
        }
        for task in message.tasks {
            let desired = if task.observed().is_terminal() {
                // Ended as far as the manager knows: whatever runs of it
                // here must not run on beside its replacement.
                task.desired().max(TaskState::Shutdown)
            } else {
                task.desired()
            };
            if let Some(runner) = self.runners.get(&task.id) {
                runner.desired.send_replace(desired);
                continue;
            }
            self.start_runner(task, desired).await;
        }
        for id in removed {
            self.recorded.remove(&id);
            if let Err(e) = self.db.forget(&id) {
                tracing::warn!(error = %e, "forgetting a task failed");
            }
            match self.runners.get_mut(&id) {
                Some(runner) => {
                    runner.removed = true;
                    runner.desired.send_replace(TaskState::Remove);
                }
                None => {
                    if let Some(handle) = self.leftovers.remove(&id) {
                        self.driver.kill(&id, &handle);
                    }
                    self.driver.clean_up(&id);
                }
            }
        }
        if message.full {
            for (id, handle) in self.leftovers.drain() {
                self.driver.kill(&id, &handle);
            }
        }
    }

    async fn start_runner(&mut self, task: Task, desired: TaskState) {
        let observed = task.observed();
        let recorded = self
            .recorded
            .get(&task.id)
            .filter(|s| TaskState::try_from(s.state).is_ok_and(TaskState::is_terminal))
            .cloned();
        let leftover = self.leftovers.remove(&task.id);
        let resume = Resume::decide(observed, desired, recorded.is_some(), leftover.is_some());
        let mut adopted = crate::Workload::default();
        let (executor, from) = match (resume, leftover) {
            (Resume::ReportRecorded, leftover) => {
                if let Some(handle) = &leftover {
                    self.driver.kill(&task.id, handle);
                }
                if let Some(last) = recorded.filter(|_| !observed.is_terminal()) {
                    self.reports.push(TaskStatusUpdate {
                        task_id: task.id.clone(),
                        status: Some(last),
                    });
                }
                return;
            }
            (Resume::Drop, leftover) => {
                if let Some(handle) = &leftover {
                    self.driver.kill(&task.id, handle);
                }
                return;
            }
            (Resume::Adopt { report_running }, Some(handle)) => {
                if report_running {
                    self.queue(TaskUpdate {
                        task_id: task.id.clone(),
                        status: TaskStatus {
                            timestamp_ms: now_ms(),
                            state: TaskState::Running as i32,
                            message: "started".into(),
                            pid: handle.pid,
                            container_id: handle.container_id.clone(),
                            ..Default::default()
                        },
                    });
                }
                adopted = handle.clone();
                (self.driver.adopt(&task, handle), TaskState::Running)
            }
            (Resume::Lost, _) | (Resume::Adopt { .. }, None) => {
                let status = TaskStatus {
                    timestamp_ms: now_ms(),
                    state: TaskState::Failed as i32,
                    message: "failed".into(),
                    err: "its process or container ended, or was removed, while the agent was not running".into(),
                    exit_code: -1,
                    ..Default::default()
                };
                self.queue(TaskUpdate {
                    task_id: task.id.clone(),
                    status,
                });
                return;
            }
            (Resume::Run, leftover) => {
                if let Some(handle) = &leftover {
                    self.driver.kill(&task.id, handle);
                }
                (self.driver.executor(&task), observed)
            }
        };
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
        let (desired_tx, desired_rx) = watch::channel(desired);
        let runner = TaskRunner::new(
            task.id.clone(),
            executor,
            from,
            desired_rx,
            self.reports_tx.clone(),
            grace,
        )
        .with_health(task.spec.as_ref().and_then(|s| s.health.clone()))
        .with_workload(adopted);
        let done = self.done_tx.clone();
        let id = task.id.clone();
        let handle = tokio::spawn(async move {
            runner.run().await;
            let _ = done.send(id).await;
        });
        self.runners.insert(
            task.id,
            Runner {
                desired: desired_tx,
                removed: false,
                task: handle.abort_handle(),
            },
        );
    }

    fn finished(&mut self, task_id: &str) {
        if let Some(runner) = self.runners.remove(task_id) {
            if runner.removed {
                self.driver.clean_up(task_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    const STATES: [TaskState; 14] = [
        New, Pending, Assigned, Accepted, Preparing, Ready, Starting, Running, Complete, Shutdown,
        Failed, Rejected, Remove, Orphaned,
    ];

    #[test]
    fn a_leader_named_by_a_follower_is_dialled_next_known_or_not() {
        let connector = Connector::rotating(vec!["a:1".into(), "b:1".into(), "c:1".into()], |_| {
            Err("not dialled".into())
        });
        assert_eq!(connector.channel().0, "a:1");
        connector.prefer("c:1");
        assert_eq!(connector.channel().0, "c:1");
        connector.prefer("d:1");
        assert_eq!(connector.channel().0, "d:1");
        assert_eq!(connector.addresses(), ["d:1", "a:1", "b:1", "c:1"]);
    }

    /// Every combination a restart can meet, checked against the rules that
    /// keep a workload running exactly once.
    #[test]
    fn a_restart_never_starts_a_started_task_again_nor_kills_a_wanted_workload() {
        for observed in STATES {
            for desired in STATES {
                for recorded_terminal in [false, true] {
                    for leftover in [false, true] {
                        let resume = Resume::decide(observed, desired, recorded_terminal, leftover);
                        let case = format!(
                            "{observed:?} desired {desired:?} recorded terminal {recorded_terminal} leftover {leftover}: {resume:?}"
                        );
                        let started = observed as i32 >= Starting as i32;
                        if recorded_terminal {
                            assert_eq!(resume, Resume::ReportRecorded, "{case}");
                            continue;
                        }
                        if observed.is_terminal() {
                            assert_eq!(resume, Resume::Drop, "{case}");
                            continue;
                        }
                        // Started once already: never run again.
                        if started {
                            assert_ne!(resume, Resume::Run, "{case}");
                        }
                        // Only a process that exists is adopted.
                        if matches!(resume, Resume::Adopt { .. }) {
                            assert!(leftover, "{case}");
                        }
                        // A workload still wanted is never killed.
                        let wanted_leftover = leftover && desired == Running;
                        if wanted_leftover {
                            assert!(matches!(resume, Resume::Adopt { .. }), "{case}");
                        }
                        // The manager hears RUNNING unless it has it.
                        if let Resume::Adopt { report_running } = resume {
                            assert_eq!(report_running, observed != Running, "{case}");
                        }
                        if started && !leftover {
                            assert_eq!(resume, Resume::Lost, "{case}");
                        }
                        if !started && !wanted_leftover {
                            assert_eq!(resume, Resume::Run, "{case}");
                        }
                    }
                }
            }
        }
    }
}
