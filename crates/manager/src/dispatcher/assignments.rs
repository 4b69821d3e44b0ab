//! Which node hears of which change: one store watcher for every session
//! posts each change to the inbox of the node it concerns, and each node's
//! session stream sends its agent the full set of its tasks first, then what
//! changed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_api::clock::Instant;

use shoal_api::{object, watch_event, SessionMessage, TaskState};
use shoal_raft::Replica;
use tokio::sync::{mpsc, watch, Notify};
use tonic::Status;

use super::*;

/// What one node's session stream is told by the store watcher: which of
/// its tasks changed (or that it must look at all of them), and a bell.
#[derive(Default)]
pub(super) struct Inbox {
    bell: Notify,
    changed: Mutex<Changed>,
    logs: Mutex<LogMail>,
}

/// Log reads to ask of the node, and to stop ([`super::log_broker`]).
#[derive(Debug, Default)]
pub(super) struct LogMail {
    pub subscriptions: Vec<shoal_api::LogSubscription>,
    pub cancellations: Vec<String>,
}

#[derive(Default)]
pub(super) struct Changed {
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

    pub(super) fn post_log_subscription(&self, subscription: shoal_api::LogSubscription) {
        self.logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .subscriptions
            .push(subscription);
        self.bell.notify_one();
    }

    pub(super) fn post_log_cancellation(&self, id: String) {
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        // Not asked yet: never ask.
        let before = logs.subscriptions.len();
        logs.subscriptions.retain(|s| s.id != id);
        if logs.subscriptions.len() == before {
            logs.cancellations.push(id);
        }
        drop(logs);
        self.bell.notify_one();
    }

    pub(super) fn take_logs(&self) -> LogMail {
        std::mem::take(&mut *self.logs.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Per node, its session stream's inbox: one store watcher for all sessions
/// tells each only of its own tasks' changes, so a commit costs the
/// sessions it concerns, and each only for the tasks it changed.
pub(super) type Inboxes = Arc<Mutex<HashMap<String, Arc<Inbox>>>>;

impl Dispatcher {
    /// Wakes the session of every node whose tasks a commit changed in a
    /// way its agent acts on: a task assigned, removed, or given another
    /// desired state (all of them when the cluster object changed, or when
    /// the watch lagged and nobody can say what changed). Status reports,
    /// most of the changes, are the agents' own and wake nobody. Runs until
    /// shutdown.
    pub fn fan_out(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let replica = self.replica.clone();
        let inboxes = Arc::clone(&self.inboxes);
        let sessions = Arc::clone(&self.sessions);
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
            // What each assigned task's agent was last woken for, per task:
            // its node, desired state and how many named ports it
            // was given (a task held back for its ports is sent when the
            // allocator gives them, which changes neither of the others).
            let mut known: HashMap<String, (String, i32, usize)> = HashMap::new();
            // Each node's desired role, as last seen: a change wakes its
            // session to tell the agent.
            let mut roles: HashMap<String, i32> = HashMap::new();
            let mut changes = replica.store().watch();
            let mut nodes = Vec::new();
            let mut joined = Vec::new();
            let mut removed = Vec::new();
            let mut woken = Vec::new();
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
                    && changes.drain_with(u64::MAX, |event| {
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
                                    let now = (
                                        task.node_id.clone(),
                                        task.desired_state,
                                        task.named_ports().len(),
                                    );
                                    match known.get(&task.id) {
                                        Some(was) if *was == now => return,
                                        _ => known.insert(task.id.clone(), now),
                                    }
                                };
                                nodes.extend(before.map(|(n, _, _)| (n, task.id.clone())));
                                if !task.node_id.is_empty() {
                                    nodes.push((task.node_id.clone(), task.id.clone()));
                                }
                            }
                            Some(object::Kind::Cluster(_)) => all = true,
                            Some(object::Kind::Node(node))
                                if *action == watch_event::Action::Create && !node.is_down() =>
                            {
                                joined.push(node.id.clone());
                            }
                            Some(object::Kind::Node(node))
                                if *action == watch_event::Action::Remove =>
                            {
                                roles.remove(&node.id);
                                removed.push(node.id.clone());
                            }
                            Some(object::Kind::Node(node)) => {
                                let role = node.spec.as_ref().map_or(node.role, |s| s.desired_role);
                                // A node not seen since this leader began
                                // is woken too: it may have changed.
                                if roles.insert(node.id.clone(), role) != Some(role) {
                                    woken.push(node.id.clone());
                                }
                            }
                            _ => {}
                        }
                    });
                // A removed node's session ends now, not at its next
                // heartbeat: its stream is woken to see it gone, and its
                // agent's next call is refused as removed.
                for node in removed.drain(..) {
                    sessions
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&node);
                    if let Some(inbox) =
                        inboxes.lock().unwrap_or_else(|e| e.into_inner()).get(&node)
                    {
                        inbox.post(None);
                    }
                }
                for node in woken.drain(..) {
                    if let Some(inbox) =
                        inboxes.lock().unwrap_or_else(|e| e.into_inner()).get(&node)
                    {
                        inbox.post(None);
                    }
                }
                if !joined.is_empty() {
                    super::heartbeat::expect_nodes(
                        &sessions,
                        joined.drain(..),
                        period_ms(replica.replica()),
                    );
                }
                if !in_step {
                    changes = replica.store().watch();
                    known.clear();
                    all = true;
                }
                post(&mut nodes, all);
            }
        }
    }
}

/// Streams a node's assignments to its session: the full set first, then
/// what changed of the tasks its inbox names, until the session ends.
// Each is a separate piece of the dispatcher the stream reads; bundling
// them would only name the bundle.
#[allow(clippy::too_many_arguments)]
pub(super) async fn stream_assignments(
    replica: &Replica,
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
    // The role its spec asks for, as last sent.
    let mut role_sent = None;
    let mut last_full = Instant::now();
    loop {
        let current = sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node_id)
            .is_some_and(|s| s.id.as_deref() == Some(session_id));
        if !current || *shutdown.borrow() {
            return;
        }
        let changed = inbox.take();
        let mail = inbox.take_logs();
        let everything = first || changed.everything;
        if everything {
            last_full = Instant::now();
        }
        let (tasks, removed) = if !everything && changed.tasks.is_empty() {
            // Woken by the clock alone: nothing to look at.
            (Vec::new(), Vec::new())
        } else {
            let view = replica.store().view();
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
                let bare = view
                    .task_sharing_spec(&id)
                    .filter(|(t, _)| t.node_id == node_id);
                match bare {
                    None => {
                        if sent.remove(&id).is_some() {
                            removed.push(id);
                        }
                    }
                    // Placed to run, but its named ports are not given yet
                    // (the allocator does once it sees it placed): sent
                    // when they are (the fan-out wakes this stream for
                    // that). One no longer wanted running is sent as is:
                    // the agent ends it.
                    Some((t, spec))
                        if !sent.contains_key(&id)
                            && t.desired_state <= TaskState::Running as i32
                            && !t.has_ports_of(spec) => {}
                    Some((t, _)) => {
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
        let has_mail = !mail.subscriptions.is_empty() || !mail.cancellations.is_empty();
        let desired_role = replica
            .store()
            .view()
            .node(node_id)
            .map(|n| n.spec.as_ref().map_or(n.role, |s| s.desired_role));
        let role_changed = desired_role.is_some() && desired_role != role_sent;
        if first || !tasks.is_empty() || !removed.is_empty() || has_mail || role_changed {
            role_sent = desired_role;
            let message = SessionMessage {
                node_id: node_id.to_string(),
                session_id: session_id.to_string(),
                heartbeat_period_ms: period_ms(replica),
                tasks,
                removed,
                full: first,
                managers: if first {
                    crate::managers::addresses(&replica.store().view())
                } else {
                    Vec::new()
                },
                log_subscriptions: mail.subscriptions,
                log_cancellations: mail.cancellations,
                desired_role,
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
            _ = tokio::time::sleep(Duration::from_millis(period_ms(replica))) => {
                if last_full.elapsed() >= Duration::from_millis(crate::reconciler::FULL_PASS_MS) {
                    inbox.post(None);
                }
            }
        }
    }
}
