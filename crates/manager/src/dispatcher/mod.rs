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
//!
//! On the node listener a node's id is the one its certificate names (the
//! [`Peer`] the authorization layer found); a request naming another is
//! refused. Only on a transport without certificates (a unix socket in the
//! simulator) is the id in the request taken as it is.
//!
//! The parts: [`session`] records a node and opens its session;
//! [`assignments`] streams each node its tasks; [`heartbeat`] keeps sessions
//! and marks silent nodes DOWN; [`status`] applies the agents' reports.

mod assignments;
mod heartbeat;
pub mod log_broker;
mod session;
mod status;

pub use log_broker::LogBroker;

use assignments::{stream_assignments, Inbox, Inboxes};
use heartbeat::check_session;

use shoal_api::clock::Instant;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use shoal_api::dispatcher_server::Dispatcher as DispatcherService;
use shoal_api::{
    HeartbeatRequest, HeartbeatResponse, SessionMessage, SessionRequest, UpdateTaskStatusRequest,
    UpdateTaskStatusResponse,
};
use shoal_raft::{LeaderTerm, Replica};
use tokio::sync::watch;

use crate::authorization::Peer;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

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
    /// `None` for a node expected back after a restart (start-up grace):
    /// no agent's session id matches it.
    id: Option<String>,
    last_seen: Instant,
}

/// The dispatcher service.
pub struct Dispatcher {
    replica: LeaderTerm,
    sessions: Arc<Mutex<HashMap<String, Session>>>,
    inboxes: Inboxes,
    shutdown: watch::Receiver<bool>,
    /// Where node and session ids come from.
    ids: Mutex<rand::rngs::StdRng>,
    /// Log reads asked of the nodes through their sessions.
    logs: Arc<LogBroker>,
}

/// The cluster's heartbeat period now. Read from the store at every use: a
/// view costs a pointer copy, so nothing keeps a copy in step with the
/// cluster object.
fn period_ms(replica: &Replica) -> u64 {
    replica
        .store()
        .view()
        .cluster()
        .and_then(|c| c.spec.as_ref())
        .and_then(|s| s.dispatcher)
        .map_or(5_000, |d| d.heartbeat_period_ms.max(1))
}

impl Dispatcher {
    /// A new random id (node or session).
    fn new_id(&self) -> String {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        crate::identity::new_object_id(&mut *ids)
    }

    /// The service, and the monitor that marks silent nodes DOWN (run it).
    /// Node and session ids come from `ids` (seeded: a simulation replays).
    pub fn new(
        replica: LeaderTerm,
        shutdown: watch::Receiver<bool>,
        ids: rand::rngs::StdRng,
        logs: Arc<LogBroker>,
    ) -> Dispatcher {
        Dispatcher {
            logs,
            ids: Mutex::new(ids),
            replica,
            sessions: Arc::default(),
            inboxes: Arc::default(),
            shutdown,
        }
    }
}

/// The node a request is from: its certificate's, when it came with one
/// (a request naming another node is refused); else the one it names.
fn caller(peer: Option<&Peer>, named: &str) -> Result<String, Status> {
    let Some(peer) = peer else {
        return Ok(named.to_string());
    };
    let Some(node_id) = peer.node_id() else {
        return Err(Status::unauthenticated(
            "the dispatcher needs a node certificate",
        ));
    };
    if !named.is_empty() && named != node_id {
        return Err(Status::permission_denied(format!(
            "node {node_id} may not speak for node {named}"
        )));
    }
    Ok(node_id.to_string())
}

/// The `LogBroker` service: agents publish the lines of the reads asked of
/// them.
pub struct LogPublishing {
    broker: Arc<LogBroker>,
}

impl LogPublishing {
    pub fn server(
        broker: Arc<LogBroker>,
    ) -> shoal_api::log_broker_server::LogBrokerServer<LogPublishing> {
        shoal_api::log_broker_server::LogBrokerServer::new(LogPublishing { broker })
    }
}

#[tonic::async_trait]
impl shoal_api::log_broker_server::LogBroker for LogPublishing {
    async fn publish_logs(
        &self,
        request: Request<Streaming<shoal_api::PublishLogsMessage>>,
    ) -> Result<Response<shoal_api::PublishLogsResponse>, Status> {
        let from = Peer::of(&request)
            .and_then(Peer::node_id)
            .map(str::to_string);
        let mut messages = request.into_inner();
        while let Some(message) = messages.message().await? {
            let close = message.close;
            self.broker.publish(from.as_deref(), message).await?;
            if close {
                break;
            }
        }
        Ok(Response::new(shoal_api::PublishLogsResponse {}))
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
        let peer = Peer::of(&request).cloned();
        let mut req = request.into_inner();
        req.node_id = caller(peer.as_ref(), &req.node_id)?;
        let certified = peer.is_some();
        self.open_session(req, certified, peer.and_then(|p| p.remote_addr()))
            .await
            .map(Response::new)
    }

    async fn heartbeat(
        &self,
        request: Request<Streaming<HeartbeatRequest>>,
    ) -> Result<Response<HeartbeatStream>, Status> {
        let peer = Peer::of(&request).cloned();
        Ok(Response::new(
            self.answer_heartbeats(peer, request.into_inner()),
        ))
    }

    async fn update_task_status(
        &self,
        request: Request<UpdateTaskStatusRequest>,
    ) -> Result<Response<UpdateTaskStatusResponse>, Status> {
        let peer = Peer::of(&request).cloned();
        let mut req = request.into_inner();
        req.node_id = caller(peer.as_ref(), &req.node_id)?;
        self.apply_reports(req).await.map(Response::new)
    }
}
