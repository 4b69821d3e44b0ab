//! The components that run on the leader manager (DESIGN.md §3): the
//! orchestrator, allocator, scheduler and reaper, each a reconciler loop over
//! the store, and the dispatcher that agents open sessions with.
//!
//! Owns nothing itself: it starts the components that own fields, and stops
//! them together. The daemon and the simulator start the manager the same way.

use std::path::Path;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shoal_api::transport::TransportError;
use shoal_raft::LeaderTerm;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::allocator::Allocator;
use crate::orchestrator::task_reaper::Reaper;
use crate::orchestrator::Orchestrator;
use crate::reconciler;
use crate::scheduler::{Scheduler, Search};
use crate::Dispatcher;

/// The dispatcher's gRPC service, for the node listener to serve.
pub type DispatcherService = shoal_api::dispatcher_server::DispatcherServer<Dispatcher>;

/// Starts the reconcilers and serves the dispatcher and the log broker on
/// a unix socket at `dispatcher_socket`, with no authorization (the
/// simulator's agents); returns them and the broker, for the control API:
/// a daemon serves it on its node listener instead ([`start`]).
/// Everything stops when `stop` turns true.
pub fn start_on_unix_socket(
    term: &LeaderTerm,
    dispatcher_socket: &Path,
    stop: &watch::Receiver<bool>,
    rng: &mut StdRng,
) -> Result<(JoinSet<()>, Arc<crate::LogBroker>), TransportError> {
    let incoming = shoal_api::transport::listen_unix(dispatcher_socket)?;
    let logs = Arc::new(crate::LogBroker::default());
    let leader = start(term, stop, rng, Arc::clone(&logs));
    let mut set = leader.tasks;
    let dispatcher = DispatcherService::from_arc(leader.dispatcher);
    let publishing = crate::LogPublishing::server(Arc::clone(&logs));
    let mut server_stop = stop.clone();
    set.spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(dispatcher)
            .add_service(publishing)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = server_stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the dispatcher stopped serving");
        }
    });
    Ok((set, logs))
}

/// What [`start`] started.
pub struct Leader {
    /// The reconcilers and the dispatcher's own loops.
    pub tasks: JoinSet<()>,
    /// The dispatcher, for the caller to serve.
    pub dispatcher: Arc<Dispatcher>,
}

/// Starts the reconcilers, the membership loop and the dispatcher's own
/// loops, each writing as the leader of `term` only; the dispatcher asks
/// for logs through `logs`, which the control API shares. Everything stops
/// when `stop` turns true.
pub fn start(
    term: &LeaderTerm,
    stop: &watch::Receiver<bool>,
    rng: &mut StdRng,
    logs: Arc<crate::LogBroker>,
) -> Leader {
    let mut set = JoinSet::new();
    // Each component draws from a generator seeded from `rng`: the same seed
    // gives the same ids, whatever order the components run in.
    let mut task_ids = StdRng::seed_from_u64(rng.gen());
    let dispatcher_ids = StdRng::seed_from_u64(rng.gen());
    let new_id = move || crate::new_object_id(&mut task_ids);
    set.spawn(reconciler::run(
        "orchestrator",
        term.clone(),
        stop.clone(),
        Orchestrator::new(new_id),
    ));
    set.spawn(reconciler::run(
        "allocator",
        term.clone(),
        stop.clone(),
        Allocator::default(),
    ));
    set.spawn(reconciler::run(
        "scheduler",
        term.clone(),
        stop.clone(),
        Scheduler::new(Search::Auto),
    ));
    set.spawn(reconciler::run(
        "reaper",
        term.clone(),
        stop.clone(),
        Reaper::default(),
    ));
    set.spawn(crate::membership::run(term.clone(), stop.clone()));
    let dispatcher = Dispatcher::new(term.clone(), stop.clone(), dispatcher_ids, logs);
    set.spawn(dispatcher.monitor());
    set.spawn(dispatcher.fan_out());
    Leader {
        tasks: set,
        dispatcher: Arc::new(dispatcher),
    }
}
