//! Sessions kept alive by heartbeats, and nodes whose heartbeats stopped
//! marked DOWN (with their tasks ORPHANED), retried until it commits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_api::clock::Instant;

use shoal_api::{
    node_status, store_action, HeartbeatRequest, HeartbeatResponse, NodeStatus, StoreAction,
    TaskState, TaskStatus, Transaction,
};
use shoal_raft::{LeaderTerm, Replica};
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

use crate::reconciler::backoff::{retry_until_done, Backoff, Retried};

use super::*;

impl Dispatcher {
    /// Marks nodes whose heartbeats stopped DOWN. Runs until shutdown.
    pub fn monitor(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let replica = self.replica.clone();
        let sessions = Arc::clone(&self.sessions);
        let mut shutdown = self.shutdown.clone();
        async move {
            expect_recorded_nodes(replica.replica(), &sessions, period_ms(replica.replica()));
            // DOWN writes still committing. The loop never waits for them:
            // a node that expires while others' writes commit (50-130 ms
            // each on a loaded manager) is marked at its own TTL, not after
            // theirs. Bounded by the sessions, each expiring once.
            let mut writes = tokio::task::JoinSet::new();
            loop {
                let period = period_ms(replica.replica());
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
                    let replica = replica.clone();
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

    /// Answers one heartbeat stream until the agent closes it, the session
    /// it names is gone, or shutdown.
    pub(super) fn answer_heartbeats(
        &self,
        peer: Option<Peer>,
        mut beats: Streaming<HeartbeatRequest>,
    ) -> HeartbeatStream {
        // One answer in flight is enough: an agent sends its next beat a
        // period after the last answer.
        let (tx, rx) = mpsc::channel(1);
        let sessions = Arc::clone(&self.sessions);
        let replica = self.replica.clone();
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
                    Ok(Some(beat)) => caller(peer.as_ref(), &beat.node_id)
                        .and_then(|node_id| {
                            // A node removed while its session is open
                            // (`node rm --force`) loses it at its next beat.
                            let view = replica.store().view();
                            if view.node(&node_id).is_none() {
                                return Err(crate::authorization::missing_node(&view, &node_id));
                            }
                            check_session(&sessions, &node_id, &beat.session_id)
                        })
                        .map(|()| HeartbeatResponse {
                            period_ms: period_ms(replica.replica()),
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
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
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
    let live: Vec<String> = replica
        .store()
        .view()
        .nodes()
        .filter(|n| !n.is_down())
        .map(|n| n.id.clone())
        .collect();
    expect_nodes(sessions, live, period_ms);
}

/// Placeholder sessions for `nodes` (those without a session), expiring
/// after the start-up grace: for nodes recorded live at start, and for a
/// node that just joined, so one whose agent never connects (its join
/// failed after the commit) is marked DOWN, not left UNKNOWN for ever.
pub(super) fn expect_nodes(
    sessions: &Mutex<HashMap<String, Session>>,
    nodes: impl IntoIterator<Item = String>,
    period_ms: u64,
) {
    let ttl = Duration::from_millis(period_ms * HEARTBEAT_TTL_PERIODS);
    // `last_seen` in the future: the session expires `START_GRACE_TTLS`
    // TTLs from now.
    let last_seen = Instant::now() + ttl * START_GRACE_TTLS.saturating_sub(1);
    let live = nodes;
    let mut sessions = sessions.lock().unwrap_or_else(|e| e.into_inner());
    for id in live {
        sessions.entry(id).or_insert_with(|| Session {
            id: None,
            last_seen,
        });
    }
}

/// Refreshes a session on a sign of life from its agent; refuses a session
/// that expired or was replaced.
pub(super) fn check_session(
    sessions: &Mutex<HashMap<String, Session>>,
    node_id: &str,
    session_id: &str,
) -> Result<(), Status> {
    let mut sessions = sessions.lock().unwrap_or_else(|e| e.into_inner());
    match sessions.get_mut(node_id) {
        Some(s) if s.id.as_deref() == Some(session_id) => {
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
    replica: &LeaderTerm,
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
async fn write_down(replica: &LeaderTerm, node_id: &str, message: &str) -> bool {
    let (node, orphans) = {
        let view = replica.store().view();
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
            .filter_map(|mut t| {
                // No spec: the store keeps the task's own. A task already
                // terminal stays as it ended.
                let orphaned = t.advance_status(TaskStatus {
                    timestamp_ms: shoal_api::clock::now_ms(),
                    state: TaskState::Orphaned as i32,
                    message: "the node is down".into(),
                    ..Default::default()
                });
                orphaned.then(|| StoreAction {
                    kind: store_action::Kind::Update as i32,
                    target: Some(t.into()),
                })
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
                leader_term: 0,
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
