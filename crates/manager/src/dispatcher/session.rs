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

impl Dispatcher {
    /// Records the node and starts streaming its assignments.
    pub(super) async fn open_session(&self, req: SessionRequest) -> Result<SessionStream, Status> {
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
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            if sessions
                .get(&node_id)
                .is_some_and(|s| s.id.as_deref() == Some(session_id.as_str()))
            {
                sessions.remove(&node_id);
            }
            return Err(Status::unavailable("could not record the node; retry"));
        }
        let (tx, rx) = mpsc::channel(SESSION_BUFFER);
        let inbox = Arc::new(Inbox::default());
        self.inboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node_id.clone(), Arc::clone(&inbox));
        let inboxes = Arc::clone(&self.inboxes);
        let replica = Arc::clone(&self.replica);
        let sessions = Arc::clone(&self.sessions);
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            stream_assignments(
                &replica,
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
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}
