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

/// How often the leader asks a quorum to confirm it.
const CONFIRM_EVERY: Duration = Duration::from_millis(250);
/// Confirmations missed in a row before the leader counts itself deposed.
const CONFIRM_MISSES: u32 = 3;

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
        let leader = crate::leader::start(&replica, &term_stop, &mut rng, Arc::clone(&logs));
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

/// Waits until this manager leads, caught up and confirmed by a quorum;
/// the term.
async fn leading(replica: &Replica) -> u64 {
    let mut metrics = replica.raft().metrics();
    loop {
        let term = {
            let m = metrics.borrow_and_update();
            let caught_up = m.last_applied.map(|l| l.index) >= m.last_log_index;
            (m.state == shoal_raft::ServerState::Leader && caught_up).then_some(m.current_term)
        };
        if let Some(term) = term {
            if confirmed(replica).await {
                return term;
            }
            tokio::time::sleep(CONFIRM_EVERY).await;
            continue;
        }
        if metrics.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Whether a quorum confirms this manager's leadership now.
async fn confirmed(replica: &Replica) -> bool {
    matches!(
        tokio::time::timeout(CONFIRM_EVERY * 2, replica.raft().ensure_linearizable()).await,
        Ok(Ok(_))
    )
}

/// Resolves when this manager no longer leads in `term`, as raft says or
/// as a quorum's silence says.
async fn deposed(replica: &Replica, term: u64) {
    let mut metrics = replica.raft().metrics();
    let mut missed = 0;
    loop {
        {
            let m = metrics.borrow_and_update();
            if m.state != shoal_raft::ServerState::Leader || m.current_term != term {
                return;
            }
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(CONFIRM_EVERY) => {
                if confirmed(replica).await {
                    missed = 0;
                } else {
                    missed += 1;
                    if missed >= CONFIRM_MISSES {
                        tracing::warn!(term, "no quorum confirms this leader: its components stop");
                        return;
                    }
                }
            }
        }
    }
}
