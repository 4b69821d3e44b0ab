//! Leadership on one manager (DESIGN.md §7): the leader-only components
//! ([`crate::leader::start`]) run while this manager leads, and stop when
//! it stops leading, before it could act on a stale view.
//!
//! Owns nothing in the store. A term of leadership starts once this
//! manager leads, has applied everything committed before it took over,
//! and a quorum has confirmed it; the components then start from full
//! passes over the store. The term ends when raft says another leads, or
//! when a quorum stops confirming it (a leader cut off from the others
//! keeps its raft state until it hears a newer term; its components stop
//! at once). Agents reach the dispatcher of the term through
//! [`DispatcherGate`], which on a follower refuses with the leader's
//! address.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rand::rngs::StdRng;
use shoal_api::dispatcher_server::Dispatcher as DispatcherService;
use shoal_api::{
    HeartbeatRequest, SessionRequest, UpdateTaskStatusRequest, UpdateTaskStatusResponse,
};
use shoal_raft::Replica;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use crate::{Dispatcher, LogBroker};

/// How often the leader looks whether a quorum still acknowledges it.
const CONFIRM_EVERY: Duration = Duration::from_millis(50);

/// The dispatcher of the current term, if this manager leads.
#[derive(Clone)]
pub struct DispatcherGate {
    current: Arc<RwLock<Option<Arc<Dispatcher>>>>,
    replica: Arc<Replica>,
}

impl DispatcherGate {
    pub fn new(replica: Arc<Replica>) -> DispatcherGate {
        DispatcherGate {
            current: Arc::default(),
            replica,
        }
    }

    fn set(&self, dispatcher: Option<Arc<Dispatcher>>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = dispatcher;
    }

    fn current(&self) -> Result<Arc<Dispatcher>, Status> {
        if let Some(d) = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            return Ok(Arc::clone(d));
        }
        let leader = self
            .replica
            .leader()
            .filter(|(id, _)| *id != self.replica.id())
            .map(|(_, addr)| addr);
        Err(shoal_api::not_leader(leader.as_deref()))
    }

    /// The gRPC service.
    pub fn server(self) -> shoal_api::dispatcher_server::DispatcherServer<DispatcherGate> {
        shoal_api::dispatcher_server::DispatcherServer::new(self)
    }
}

#[tonic::async_trait]
impl DispatcherService for DispatcherGate {
    type SessionStream = <Dispatcher as DispatcherService>::SessionStream;
    type HeartbeatStream = <Dispatcher as DispatcherService>::HeartbeatStream;

    async fn session(
        &self,
        request: Request<SessionRequest>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        self.current()?.session(request).await
    }

    async fn heartbeat(
        &self,
        request: Request<Streaming<HeartbeatRequest>>,
    ) -> Result<Response<Self::HeartbeatStream>, Status> {
        self.current()?.heartbeat(request).await
    }

    async fn update_task_status(
        &self,
        request: Request<UpdateTaskStatusRequest>,
    ) -> Result<Response<UpdateTaskStatusResponse>, Status> {
        self.current()?.update_task_status(request).await
    }
}

/// Runs terms of leadership on this manager until `stop`.
pub async fn run(
    replica: Arc<Replica>,
    mut stop: watch::Receiver<bool>,
    mut rng: StdRng,
    gate: DispatcherGate,
    logs: Arc<LogBroker>,
) {
    loop {
        let term = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            term = leading(&replica) => term,
        };
        tracing::info!(term, "this manager leads: starting the leader's components");
        let (term_stop_tx, term_stop) = watch::channel(false);
        let leader = crate::leader::start(
            &shoal_raft::LeaderTerm::new(Arc::clone(&replica), term),
            &term_stop,
            &mut rng,
            Arc::clone(&logs),
        );
        let mut tasks = leader.tasks;
        gate.set(Some(leader.dispatcher));
        let stopping = tokio::select! {
            _ = stop.wait_for(|s| *s) => true,
            () = deposed(&replica, term) => false,
        };
        gate.set(None);
        let _ = term_stop_tx.send(true);
        while tasks.join_next().await.is_some() {}
        tracing::info!(term, "the leader's components stopped");
        if stopping {
            return;
        }
    }
}

/// Waits until this manager leads, caught up and acknowledged by a quorum
/// within the lease; the term.
async fn leading(replica: &Replica) -> u64 {
    let lease = replica.lease();
    let mut metrics = replica.raft().metrics();
    loop {
        let term = {
            let m = metrics.borrow_and_update();
            let caught_up = m.last_applied.map(|l| l.index) >= m.last_log_index;
            let acked = m.millis_since_quorum_ack.is_some_and(|ms| ms < lease);
            (m.state == shoal_raft::ServerState::Leader && caught_up && acked)
                .then_some(m.current_term)
        };
        if let Some(term) = term {
            return term;
        }
        // openraft reports its metrics at every tick (a fraction of the
        // election timeout), so a quorum's acknowledgement is seen soon.
        if metrics.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Resolves when this manager no longer leads in `term`: raft says
/// another leads, or no quorum acknowledged it for a lease (a leader cut
/// off from the others keeps its raft state until it hears a newer term).
async fn deposed(replica: &Replica, term: u64) {
    let lease = replica.lease();
    let mut metrics = replica.raft().metrics();
    // The metrics' age of the last quorum acknowledgement is as old as
    // the report: a leader cut off may report rarely, so its age is also
    // checked on a clock of its own.
    let mut tick = tokio::time::interval(CONFIRM_EVERY);
    let mut acked_at = shoal_api::clock::Instant::now();
    loop {
        {
            let m = metrics.borrow_and_update();
            if m.state != shoal_raft::ServerState::Leader || m.current_term != term {
                return;
            }
            if let Some(ms) = m.millis_since_quorum_ack {
                let at = shoal_api::clock::Instant::now()
                    .checked_sub(Duration::from_millis(ms))
                    .unwrap_or(acked_at);
                acked_at = acked_at.max(at);
            }
        }
        if acked_at.elapsed() > Duration::from_millis(lease) {
            tracing::warn!(
                term,
                "no quorum acknowledged this leader for a lease: its components stop"
            );
            return;
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}
