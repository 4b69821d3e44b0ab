//! The dispatcher: the manager's end of every agent's session (DESIGN.md §3).
//!
//! Owns: node `status` (and a node's description, which its agent reports),
//! and task `status` from ASSIGNED onwards as agents report it.
//!
//! An agent opens a session with its description; the dispatcher records
//! the node READY and streams the tasks assigned to it: the full set first,
//! then what changed after each commit. Heartbeats, on one stream per
//! session, keep the session; a node silent for `HEARTBEAT_TTL_PERIODS`
//! periods is marked DOWN. The status reports of one call are applied in
//! one transaction, and a report that would move a task backwards is
//! dropped.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_api::dispatcher_server::Dispatcher as DispatcherService;
use shoal_api::{
    node_status, object, store_action, watch_event, HeartbeatRequest, HeartbeatResponse, Node,
    NodeRole, NodeStatus, SessionMessage, SessionRequest, StoreAction, TaskState, TaskStatus,
    Transaction, UpdateTaskStatusRequest, UpdateTaskStatusResponse,
};
use shoal_raft::Replica;
use tokio::sync::{mpsc, watch, Notify};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::backoff::{retry_until_done, Backoff, Retried};

/// A node is DOWN after this many heartbeat periods without one.
pub const HEARTBEAT_TTL_PERIODS: u64 = 3;
/// Longest pause between two looks for expired sessions: part of the time
/// from a node's death to its tasks running elsewhere, and a look costs
/// about 10 µs per thousand sessions.
const MONITOR_TICK_MAX_MS: u64 = 50;
/// Messages buffered per session stream.
const SESSION_BUFFER: usize = 64;
/// Tries of one status write against concurrent writers.
const STATUS_WRITE_TRIES: usize = 5;

struct Session {
    id: String,
    last_seen: Instant,
}

/// What one node's session stream is told by the store watcher: which of
/// its tasks changed (or that it must look at all of them), and a bell.
#[derive(Default)]
struct Inbox {
    bell: Notify,
    changed: Mutex<Changed>,
}

#[derive(Default)]
struct Changed {
    everything: bool,
    tasks: HashSet<String>,
}

impl Inbox {
    fn post(&self, task_id: Option<&str>) {
        let mut changed = self.changed.lock().unwrap_or_else(|e| e.into_inner());
        match task_id {
            Some(id) => {
                changed.tasks.insert(id.to_string());
            }
            None => changed.everything = true,
        }
        self.bell.notify_one();
    }

    fn take(&self) -> Changed {
        std::mem::take(&mut *self.changed.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Per node, its session stream's inbox: one store watcher for all sessions
/// tells each only of its own tasks' changes, so a commit costs the
/// sessions it concerns, and each only for the tasks it changed.
type Inboxes = Arc<Mutex<HashMap<String, Arc<Inbox>>>>;

/// The dispatcher service.
pub struct Dispatcher {
    replica: Arc<Replica>,
    sessions: Arc<Mutex<HashMap<String, Session>>>,
    inboxes: Inboxes,
    shutdown: watch::Receiver<bool>,
    /// The cluster's heartbeat period, kept by the store watcher: a
    /// heartbeat is answered without waiting for the store, which a long
    /// write can hold (a heartbeat that waits is a node marked down).
    period_ms: Arc<AtomicU64>,
}

fn period_of(cluster: Option<&shoal_api::Cluster>) -> u64 {
    cluster
        .and_then(|c| c.spec.as_ref())
        .and_then(|s| s.dispatcher)
        .map_or(5_000, |d| d.heartbeat_period_ms.max(1))
}

fn random_id() -> String {
    use rand::SeedableRng;
    crate::identity::new_object_id(&mut rand::rngs::StdRng::from_entropy())
}

impl Dispatcher {
    /// The service, and the monitor that marks silent nodes DOWN (run it).
    pub fn new(replica: Arc<Replica>, shutdown: watch::Receiver<bool>) -> Dispatcher {
        let period_ms = Arc::new(AtomicU64::new(period_of(replica.store().view().cluster())));
        Dispatcher {
            period_ms,
            replica,
            sessions: Arc::default(),
            inboxes: Arc::default(),
            shutdown,
        }
    }

    /// Wakes the session of every node whose tasks a commit changed in a
    /// way its agent acts on: a task assigned, removed, or given another
    /// desired state (all of them when the cluster object changed, or when
    /// the watch lagged and nobody can say what changed). Status reports,
    /// most of the changes, are the agents' own and wake nobody. Runs until
    /// shutdown.
    pub fn fan_out(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let replica = Arc::clone(&self.replica);
        let inboxes = Arc::clone(&self.inboxes);
        let period_ms = Arc::clone(&self.period_ms);
        let mut shutdown = self.shutdown.clone();
        async move {
            let post = |changes: &mut Vec<(String, String)>, all: bool| {
                let inboxes = inboxes.lock().unwrap_or_else(|e| e.into_inner());
                if all {
                    inboxes.values().for_each(|i| i.post(None));
                } else {
                    for (node, task) in changes.iter() {
                        if let Some(inbox) = inboxes.get(node) {
                            inbox.post(Some(task));
                        }
                    }
                }
                changes.clear();
            };
            // What each assigned task's agent was last woken for: its node
            // and desired state.
            let mut known: HashMap<String, (String, i32)> = HashMap::new();
            let mut changes = replica.store().watch();
            // Read after the watch starts: a change made before it began is
            // in the store, one made after comes as an event.
            period_ms.store(
                period_of(replica.store().view().cluster()),
                Ordering::Relaxed,
            );
            let mut nodes = Vec::new();
            loop {
                if *shutdown.borrow() {
                    return;
                }
                let changed = tokio::select! {
                    _ = shutdown.changed() => return,
                    changed = changes.changed() => changed,
                };
                let mut all = false;
                let in_step = changed.is_ok()
                    && changes.drain_with(|event| {
                        let shoal_store::Event::Change { action, object, .. } = event else {
                            return;
                        };
                        match &object.kind {
                            Some(object::Kind::Task(task)) => {
                                let before = if *action == watch_event::Action::Remove {
                                    known.remove(&task.id)
                                } else if task.node_id.is_empty() {
                                    return;
                                } else {
                                    let now = (task.node_id.clone(), task.desired_state);
                                    match known.get(&task.id) {
                                        Some(was) if *was == now => return,
                                        _ => known.insert(task.id.clone(), now),
                                    }
                                };
                                nodes.extend(before.map(|(n, _)| (n, task.id.clone())));
                                if !task.node_id.is_empty() {
                                    nodes.push((task.node_id.clone(), task.id.clone()));
                                }
                            }
                            Some(object::Kind::Cluster(cluster)) => {
                                period_ms.store(period_of(Some(cluster)), Ordering::Relaxed);
                                all = true;
                            }
                            _ => {}
                        }
                    });
                if !in_step {
                    changes = replica.store().watch();
                    known.clear();
                    all = true;
                }
                post(&mut nodes, all);
            }
        }
    }

    /// Marks nodes whose heartbeats stopped DOWN. Runs until shutdown.
    pub fn monitor(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let replica = Arc::clone(&self.replica);
        let sessions = Arc::clone(&self.sessions);
        let period_ms = Arc::clone(&self.period_ms);
        let mut shutdown = self.shutdown.clone();
        async move {
            expect_recorded_nodes(&replica, &sessions, period_ms.load(Ordering::Relaxed));
            // DOWN writes still committing. The loop never waits for them:
            // a node that expires while others' writes commit (50-130 ms
            // each on a loaded manager) is marked at its own TTL, not after
            // theirs. Bounded by the sessions, each expiring once.
            let mut writes = tokio::task::JoinSet::new();
            loop {
                let period = period_ms.load(Ordering::Relaxed);
                tokio::select! {
                    _ = shutdown.changed() => {
                        // Their sessions are gone already: a node whose
                        // write was dropped here would stay READY.
                        while writes.join_next().await.is_some() {}
                        return;
                    }
                    // Checked often, so a dead node is seen DOWN within
                    // 50 ms of its TTL whatever the period.
                    _ = tokio::time::sleep(Duration::from_millis((period / 4).clamp(10, MONITOR_TICK_MAX_MS))) => {}
                }
                let ttl = Duration::from_millis(period * HEARTBEAT_TTL_PERIODS);
                let expired: Vec<String> = {
                    let mut sessions = sessions.lock().unwrap_or_else(|e| e.into_inner());
                    let gone: Vec<String> = sessions
                        .iter()
                        .filter(|(_, s)| s.last_seen.elapsed() > ttl)
                        .map(|(n, _)| n.clone())
                        .collect();
                    for n in &gone {
                        sessions.remove(n);
                    }
                    gone
                };
                while writes.try_join_next().is_some() {}
                // Every dead node at once: their writes share raft entries,
                // so losing 500 nodes costs about what losing one does.
                for node in expired {
                    let replica = Arc::clone(&replica);
                    let sessions = Arc::clone(&sessions);
                    let mut shutdown = shutdown.clone();
                    let message = format!("heartbeat missed for {} ms", ttl.as_millis());
                    writes.spawn(async move {
                        mark_down(&replica, &sessions, &mut shutdown, &node, &message).await
                    });
                }
            }
        }
    }
}

/// Gives every node the store records as live, and that has no session
/// here, a placeholder session that expires after the start-up grace: a
/// node whose agent never comes back is marked DOWN like any other silent
/// node (SwarmKit's dispatcher does the same on start). The placeholder's
/// id matches no agent's, so only a real session replaces it.
fn expect_recorded_nodes(
    replica: &Replica,
    sessions: &Mutex<HashMap<String, Session>>,
    period_ms: u64,
) {
    let ttl = Duration::from_millis(period_ms * HEARTBEAT_TTL_PERIODS);
    // `last_seen` in the future: the session expires `START_GRACE_TTLS`
    // TTLs from now.
    let last_seen = Instant::now() + ttl * START_GRACE_TTLS.saturating_sub(1);
    let live: Vec<String> = replica
        .store()
        .view()
        .nodes()
        .filter(|n| n.status.as_ref().map(|s| s.state) != Some(node_status::State::Down as i32))
        .map(|n| n.id.clone())
        .collect();
    let mut sessions = sessions.lock().unwrap_or_else(|e| e.into_inner());
    for id in live {
        sessions.entry(id).or_insert_with(|| Session {
            id: String::new(),
            last_seen,
        });
    }
}

/// Refreshes a session on a sign of life from its agent; refuses a session
/// that expired or was replaced.
fn check_session(
    sessions: &Mutex<HashMap<String, Session>>,
    node_id: &str,
    session_id: &str,
) -> Result<(), Status> {
    let mut sessions = sessions.lock().unwrap_or_else(|e| e.into_inner());
    match sessions.get_mut(node_id) {
        Some(s) if s.id == session_id => {
            s.last_seen = Instant::now();
            Ok(())
        }
        _ => Err(Status::not_found(
            "session expired or replaced; open a new session",
        )),
    }
}

/// Pauses between tries of a DOWN write that failed.
const DOWN_RETRY_MIN_MS: u64 = 50;
const DOWN_RETRY_MAX_MS: u64 = 2_000;
/// A node recorded live when this dispatcher starts (a restart, a new
/// leader) has this many TTLs to open a session before it is marked DOWN:
/// its agent may be reconnecting with backoff of its own.
const START_GRACE_TTLS: u32 = 2;

/// Marks a node whose heartbeats stopped DOWN, retrying with backoff until
/// the write commits, the node opens a new session, or shutdown (a node
/// left READY then is caught by the next dispatcher's start-up grace).
async fn mark_down(
    replica: &Replica,
    sessions: &Mutex<HashMap<String, Session>>,
    shutdown: &mut watch::Receiver<bool>,
    node_id: &str,
    message: &str,
) {
    tracing::info!(node = node_id, "{message}: the node is down");
    let seen_again = || {
        sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(node_id)
    };
    let outcome = retry_until_done(
        Backoff::new(DOWN_RETRY_MIN_MS, DOWN_RETRY_MAX_MS),
        shutdown,
        seen_again,
        || write_down(replica, node_id, message),
    )
    .await;
    match outcome {
        Retried::Done { tries } if tries > 1 => {
            tracing::info!(node = node_id, tries, "the node's DOWN write committed")
        }
        Retried::Done { .. } => {}
        Retried::Moot => tracing::info!(
            node = node_id,
            "the node opened a new session before its DOWN write committed"
        ),
        Retried::Stopped => tracing::warn!(
            node = node_id,
            "shutdown before the node's DOWN write committed; the next dispatcher marks it down after its start-up grace"
        ),
    }
}

/// One try of a node's DOWN write: the node DOWN and every live task of it
/// ORPHANED (nobody can say how they are any more), in one transaction, so
/// the orchestrator never sees the node down with tasks still live on it
/// and replaces them once, without racing this write. If the node comes
/// back, its agent finds the tasks terminal and stops them. True when it
/// committed (or the node is gone).
async fn write_down(replica: &Replica, node_id: &str, message: &str) -> bool {
    let (node, orphans) = {
        let view = replica.store().read().await;
        let Some(mut node) = view.node(node_id).cloned() else {
            return true;
        };
        let status = node.status.get_or_insert_with(NodeStatus::default);
        let down = status.state != node_status::State::Down as i32;
        status.state = node_status::State::Down as i32;
        status.message = message.to_string();
        let orphans: Vec<StoreAction> = view
            .task_versions_of_node(node_id)
            .filter_map(|(id, _)| view.task_without_spec(id))
            .filter(|t| t.observed().may_become(TaskState::Orphaned))
            .map(|mut t| {
                // No spec: the store keeps the task's own.
                t.advance_status(TaskStatus {
                    timestamp_ms: crate::reconciler::now_ms(),
                    state: TaskState::Orphaned as i32,
                    message: "the node is down".into(),
                    ..Default::default()
                });
                StoreAction {
                    kind: store_action::Kind::Update as i32,
                    target: Some(t.into()),
                }
            })
            .collect();
        let node = down.then(|| StoreAction {
            kind: store_action::Kind::Update as i32,
            target: Some(node.into()),
        });
        (node, orphans)
    };
    // The node goes with the first part; a node with more tasks than one
    // transaction holds has the rest follow.
    let parts = crate::reconciler::pack(node.into_iter().chain(orphans).map(|a| vec![a]));
    let mut committed = true;
    for part in parts {
        let written = replica
            .propose(Transaction {
                actions: part,
                timestamp_ms: 0,
            })
            .await;
        // A conflict means a report landed in between (a task ended): the
        // next try reads again and orphans what is still live.
        if let Err(e) = written {
            tracing::debug!(node = node_id, error = %e, "a DOWN write failed; retrying");
            committed = false;
        }
    }
    committed
}

/// Streams a node's assignments to its session: the full set first, then
/// what changed of the tasks its inbox names, until the session ends.
// Each is a separate piece of the dispatcher the stream reads; bundling
// them would only name the bundle.
#[allow(clippy::too_many_arguments)]
async fn stream_assignments(
    replica: &Replica,
    period_ms: &AtomicU64,
    sessions: &Mutex<HashMap<String, Session>>,
    node_id: &str,
    session_id: &str,
    inbox: &Inbox,
    tx: &mpsc::Sender<Result<SessionMessage, Status>>,
    shutdown: &mut watch::Receiver<bool>,
) {
    // What the agent was sent of each task: the version last looked at,
    // and the desired state. A task is sent again only when its desired
    // state changed: the agent acts on nothing else, and most changes are
    // the agent's own status reports coming back.
    let mut sent: HashMap<String, (u64, i32)> = HashMap::new();
    let mut first = true;
    let mut last_full = Instant::now();
    loop {
        let current = sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node_id)
            .is_some_and(|s| s.id == session_id);
        if !current || *shutdown.borrow() {
            return;
        }
        let changed = inbox.take();
        let everything = first || changed.everything;
        if everything {
            last_full = Instant::now();
        }
        let (tasks, removed) = if !everything && changed.tasks.is_empty() {
            // Woken by the clock alone: nothing to look at.
            (Vec::new(), Vec::new())
        } else {
            let view = replica.store().read().await;
            // Each task to look at, with its version when known without
            // decoding it (a task whose version did not move is skipped).
            let ids: Vec<(String, Option<u64>)> = if everything {
                // Every task it has, and every task it was sent (gone ones
                // are removals).
                let mut ids: HashMap<String, Option<u64>> = view
                    .task_versions_of_node(node_id)
                    .map(|(id, version)| (id.to_string(), Some(version)))
                    .collect();
                for id in sent.keys() {
                    ids.entry(id.clone()).or_insert(None);
                }
                ids.into_iter().collect()
            } else {
                changed.tasks.into_iter().map(|id| (id, None)).collect()
            };
            let mut tasks = Vec::new();
            let mut removed = Vec::new();
            for (id, version) in ids {
                let seen = sent.get(&id).copied();
                if version.is_some() && version == seen.map(|(v, _)| v) {
                    continue;
                }
                let bare = view.task_without_spec(&id).filter(|t| t.node_id == node_id);
                match bare {
                    None => {
                        if sent.remove(&id).is_some() {
                            removed.push(id);
                        }
                    }
                    Some(t) => {
                        let version = t.meta.as_ref().map_or(0, |m| m.version);
                        if seen.map(|(_, d)| d) != Some(t.desired_state) {
                            tasks.extend(view.task(&id));
                        }
                        sent.insert(id, (version, t.desired_state));
                    }
                }
            }
            (tasks, removed)
        };
        if first || !tasks.is_empty() || !removed.is_empty() {
            let message = SessionMessage {
                node_id: node_id.to_string(),
                session_id: session_id.to_string(),
                heartbeat_period_ms: period_ms.load(Ordering::Relaxed),
                tasks,
                removed,
                full: first,
            };
            first = false;
            if tx.send(Ok(message)).await.is_err() {
                return;
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tx.closed() => return,
            _ = inbox.bell.notified() => {}
            // Once a period: the session may have been replaced or expired.
            // And as a safety net, as often as the reconcilers make a full
            // pass, every task is looked at whatever the inbox says (once a
            // period, at 5,000 nodes and 1 s, that was most of the
            // dispatcher's work).
            _ = tokio::time::sleep(Duration::from_millis(period_ms.load(Ordering::Relaxed))) => {
                if last_full.elapsed() >= Duration::from_millis(crate::reconciler::FULL_PASS_MS) {
                    inbox.post(None);
                }
            }
        }
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<SessionMessage, Status>> + Send>>;
type HeartbeatStream = Pin<Box<dyn Stream<Item = Result<HeartbeatResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DispatcherService for Dispatcher {
    type SessionStream = SessionStream;
    type HeartbeatStream = HeartbeatStream;

    async fn session(
        &self,
        request: Request<SessionRequest>,
    ) -> Result<Response<SessionStream>, Status> {
        let req = request.into_inner();
        let node_id = if req.node_id.is_empty() {
            random_id()
        } else {
            req.node_id.clone()
        };
        // Record the node: created on first contact, refreshed after.
        let mut recorded = false;
        for _ in 0..STATUS_WRITE_TRIES {
            let existing = self.replica.store().read().await.node(&node_id).cloned();
            let (kind, mut node) = match existing {
                Some(n) => (store_action::Kind::Update, n),
                None => (
                    store_action::Kind::Create,
                    Node {
                        id: node_id.clone(),
                        role: NodeRole::Worker as i32,
                        ..Default::default()
                    },
                ),
            };
            node.description = req.description.clone();
            node.status = Some(NodeStatus {
                state: node_status::State::Ready as i32,
                message: String::new(),
                addr: node
                    .status
                    .as_ref()
                    .map(|s| s.addr.clone())
                    .unwrap_or_default(),
            });
            let action = StoreAction {
                kind: kind as i32,
                target: Some(node.into()),
            };
            if self
                .replica
                .propose(Transaction {
                    actions: vec![action],
                    timestamp_ms: 0,
                })
                .await
                .is_ok()
            {
                recorded = true;
                break;
            }
        }
        if !recorded {
            return Err(Status::unavailable("could not record the node; retry"));
        }
        let session_id = random_id();
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                node_id.clone(),
                Session {
                    id: session_id.clone(),
                    last_seen: Instant::now(),
                },
            );
        let (tx, rx) = mpsc::channel(SESSION_BUFFER);
        let inbox = Arc::new(Inbox::default());
        self.inboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node_id.clone(), Arc::clone(&inbox));
        let inboxes = Arc::clone(&self.inboxes);
        let replica = Arc::clone(&self.replica);
        let period_ms = Arc::clone(&self.period_ms);
        let sessions = Arc::clone(&self.sessions);
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            stream_assignments(
                &replica,
                &period_ms,
                &sessions,
                &node_id,
                &session_id,
                &inbox,
                &tx,
                &mut shutdown,
            )
            .await;
            let mut inboxes = inboxes.lock().unwrap_or_else(|e| e.into_inner());
            if inboxes
                .get(&node_id)
                .is_some_and(|i| Arc::ptr_eq(i, &inbox))
            {
                inboxes.remove(&node_id);
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn heartbeat(
        &self,
        request: Request<Streaming<HeartbeatRequest>>,
    ) -> Result<Response<HeartbeatStream>, Status> {
        let mut beats = request.into_inner();
        // One answer in flight is enough: an agent sends its next beat a
        // period after the last answer.
        let (tx, rx) = mpsc::channel(1);
        let sessions = Arc::clone(&self.sessions);
        let period_ms = Arc::clone(&self.period_ms);
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                if *shutdown.borrow() {
                    return;
                }
                let beat = tokio::select! {
                    _ = shutdown.changed() => return,
                    beat = beats.message() => beat,
                };
                let answer = match beat {
                    Ok(Some(beat)) => check_session(&sessions, &beat.node_id, &beat.session_id)
                        .map(|()| HeartbeatResponse {
                            period_ms: period_ms.load(Ordering::Relaxed),
                        }),
                    // The agent closed its end, or its connection is gone.
                    Ok(None) | Err(_) => return,
                };
                let refused = answer.is_err();
                if tx.send(answer).await.is_err() || refused {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn update_task_status(
        &self,
        request: Request<UpdateTaskStatusRequest>,
    ) -> Result<Response<UpdateTaskStatusResponse>, Status> {
        let req = request.into_inner();
        check_session(&self.sessions, &req.node_id, &req.session_id)?;
        // Each task's reports, in the order the agent made them: one write
        // per task applies them all, so none is lost to a race with another.
        let mut by_task: Vec<(String, Vec<TaskStatus>)> = Vec::new();
        for update in req.updates {
            let Some(status) = update.status else {
                continue;
            };
            match by_task.iter_mut().find(|(id, _)| *id == update.task_id) {
                Some((_, statuses)) => statuses.push(status),
                None => by_task.push((update.task_id, vec![status])),
            }
        }
        // The reports of one call go in as few transactions as the bounds
        // allow (one, for any agent's call), not one per task: a spawned
        // write per task queued thousands of tasks on the runtime, and
        // everything else, heartbeats included, waited behind them. A
        // transaction refused because another writer moved one of its tasks
        // first is read again and retried, with only the tasks still named.
        let mut pending = by_task;
        for _ in 0..STATUS_WRITE_TRIES {
            let parts = {
                let view = self.replica.store().read().await;
                let actions = pending.iter().filter_map(|(task_id, statuses)| {
                    let mut task = view.task_without_spec(task_id)?;
                    // Only the node's own tasks.
                    if task.node_id != req.node_id {
                        return None;
                    }
                    let mut moved = false;
                    for status in statuses {
                        // Only forward: a stale or repeated report is dropped.
                        let next = TaskState::try_from(status.state);
                        if next.is_ok_and(|next| task.observed().may_become(next)) {
                            task.advance_status(status.clone());
                            moved = true;
                        }
                    }
                    moved.then(|| {
                        vec![StoreAction {
                            kind: store_action::Kind::Update as i32,
                            target: Some(task.into()),
                        }]
                    })
                });
                crate::reconciler::pack(actions)
            };
            // In turn: an agent's call fits one part, so this waits for one
            // commit; a larger call has no claim to more at once.
            let mut conflicted: HashSet<String> = HashSet::new();
            for actions in parts {
                let ids: Vec<String> = actions
                    .iter()
                    .filter_map(|a| a.target.as_ref().map(|o| o.id().to_string()))
                    .collect();
                let written = self
                    .replica
                    .propose_report(Transaction {
                        actions,
                        timestamp_ms: 0,
                    })
                    .await;
                match written {
                    Ok(_) => {}
                    Err(shoal_raft::ProposeError::Txn(_)) => conflicted.extend(ids),
                    Err(e) => return Err(Status::unavailable(e.to_string())),
                }
            }
            pending.retain(|(id, _)| conflicted.contains(id));
            if pending.is_empty() {
                return Ok(Response::new(UpdateTaskStatusResponse {}));
            }
        }
        Err(Status::aborted(
            "task status kept changing; report it again",
        ))
    }
}
