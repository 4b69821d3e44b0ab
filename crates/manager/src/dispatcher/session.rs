//! Opening a session: the node is recorded READY (created on first contact)
//! and its assignment stream starts.

use shoal_api::clock::Instant;
use std::sync::Arc;

use shoal_api::{
    node_status, store_action, Node, NodeRole, NodeStatus, SessionRequest, StoreAction, Transaction,
};
use tokio::sync::mpsc;
use tonic::Status;

use super::*;

/// Largest description a node may give of itself (a host's is a few
/// hundred bytes; labels and warnings leave room).
const MAX_DESCRIPTION_BYTES: usize = 64 << 10;

impl Dispatcher {
    /// Records the node and starts streaming its assignments. A
    /// `certified` node (its id from its certificate) was created when it
    /// joined and is only refreshed; its address is where it connects from
    /// (a manager's is the one it advertises, recorded at its start).
    pub(super) async fn open_session(
        &self,
        req: SessionRequest,
        certified: bool,
        remote: Option<std::net::SocketAddr>,
    ) -> Result<SessionStream, Status> {
        // A node describes itself; what it says goes into the replicated
        // store on every session, so it is bounded.
        let described = req
            .description
            .as_ref()
            .map_or(0, prost::Message::encoded_len);
        if described > MAX_DESCRIPTION_BYTES {
            return Err(Status::invalid_argument(format!(
                "description: {described} bytes; a node's description takes at most {MAX_DESCRIPTION_BYTES}"
            )));
        }
        let node_id = if req.node_id.is_empty() {
            self.new_id()
        } else {
            req.node_id.clone()
        };
        // The session first, then the node's READY write: a DOWN write still
        // retrying for an earlier session sees the node back (and stops)
        // before it could read a view that already holds this READY.
        let session_id = self.new_id();
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                node_id.clone(),
                Session {
                    id: Some(session_id.clone()),
                    last_seen: Instant::now(),
                },
            );
        // Record the node: created on first contact, refreshed after.
        let mut recorded = false;
        for _ in 0..STATUS_WRITE_TRIES {
            let existing = self.replica.store().view().node(&node_id).cloned();
            let (kind, mut node) = match existing {
                Some(n) => (store_action::Kind::Update, n),
                None if certified => {
                    self.forget_session(&node_id, &session_id);
                    return Err(crate::authorization::missing_node(
                        &self.replica.store().view(),
                        &node_id,
                    ));
                }
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
            let known_addr = node
                .status
                .as_ref()
                .map(|s| s.addr.clone())
                .unwrap_or_default();
            let addr = match remote {
                Some(remote) if node.role != NodeRole::Manager as i32 => remote.ip().to_string(),
                _ => known_addr,
            };
            node.status = Some(NodeStatus {
                state: node_status::State::Ready as i32,
                message: String::new(),
                addr,
            });
            let action = StoreAction {
                kind: kind as i32,
                target: Some(node.into()),
            };
            match self
                .replica
                .propose(Transaction {
                    leader_term: 0,
                    actions: vec![action],
                    timestamp_ms: 0,
                })
                .await
            {
                Ok(_) => {
                    recorded = true;
                    break;
                }
                Err(e) => {
                    tracing::debug!(node = %node_id, error = %e, "recording a node's session failed")
                }
            }
        }
        if !recorded {
            self.forget_session(&node_id, &session_id);
            return Err(Status::unavailable("could not record the node; retry"));
        }
        let (tx, rx) = mpsc::channel(SESSION_BUFFER);
        let inbox = Arc::new(Inbox::default());
        self.inboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node_id.clone(), Arc::clone(&inbox));
        self.logs.session_opened(&node_id, &inbox);
        let logs = Arc::clone(&self.logs);
        let inboxes = Arc::clone(&self.inboxes);
        let replica = self.replica.clone();
        let sessions = Arc::clone(&self.sessions);
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            stream_assignments(
                replica.replica(),
                &sessions,
                &node_id,
                &session_id,
                &inbox,
                &tx,
                &mut shutdown,
            )
            .await;
            logs.session_closed(&node_id, &inbox);
            let mut inboxes = inboxes.lock().unwrap_or_else(|e| e.into_inner());
            if inboxes
                .get(&node_id)
                .is_some_and(|i| Arc::ptr_eq(i, &inbox))
            {
                inboxes.remove(&node_id);
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    /// Drops the session `session_id` of `node_id` if it is still the
    /// node's.
    fn forget_session(&self, node_id: &str, session_id: &str) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions
            .get(node_id)
            .is_some_and(|s| s.id.as_deref() == Some(session_id))
        {
            sessions.remove(node_id);
        }
    }
}
