//! The components that run on the leader manager (DESIGN.md §3): the
//! orchestrator, allocator, scheduler and reaper, each a reconciler loop over
//! the store, and the dispatcher that agents open sessions with.
//!
//! Owns nothing itself: it starts the components that own fields, and stops
//! them together. The daemon and the simulator start the manager the same way.

use std::path::Path;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::SeedableRng;
use shoal_api::transport::TransportError;
use shoal_api::StoreAction;
use shoal_raft::Replica;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::reconciler::{self, Pass};
use crate::{allocator, orchestrator, reaper, scheduler, Dispatcher};

/// A reconciler's pure decision that yields a flat list of actions.
type FlatDecision = fn(&shoal_store::Tables, i64) -> Vec<StoreAction>;

/// Starts the reconcilers and serves the dispatcher on a unix socket at
/// `dispatcher_socket` (until mutual TLS exists, never on a network
/// address). Everything stops when `stop` turns true.
pub fn start(
    replica: &Arc<Replica>,
    dispatcher_socket: &Path,
    stop: &watch::Receiver<bool>,
) -> Result<JoinSet<()>, TransportError> {
    let incoming = shoal_api::transport::listen_unix(dispatcher_socket)?;
    let mut set = JoinSet::new();
    let mut rng = StdRng::from_entropy();
    set.spawn(reconciler::run(
        "orchestrator",
        Arc::clone(replica),
        stop.clone(),
        move |view, now| {
            let decision = orchestrator::decide(view, now, &mut || crate::new_object_id(&mut rng));
            Pass {
                transactions: decision.transactions,
                wake_at_ms: decision.wake_at_ms,
            }
        },
    ));
    // The others decide a flat list of actions, proposed in bounded parts.
    let simple: [(&'static str, FlatDecision); 3] = [
        ("allocator", allocator::decide),
        ("scheduler", scheduler::decide),
        ("reaper", |view, _| reaper::decide(view)),
    ];
    for (name, decide) in simple {
        set.spawn(reconciler::run(
            name,
            Arc::clone(replica),
            stop.clone(),
            move |view, now| Pass {
                transactions: decide(view, now)
                    .chunks(crate::MAX_ACTIONS_PER_PASS)
                    .map(<[StoreAction]>::to_vec)
                    .collect(),
                wake_at_ms: None,
            },
        ));
    }
    let dispatcher = Dispatcher::new(Arc::clone(replica), stop.clone());
    set.spawn(dispatcher.monitor());
    set.spawn(dispatcher.fan_out());
    let mut server_stop = stop.clone();
    set.spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(shoal_api::dispatcher_server::DispatcherServer::new(
                dispatcher,
            ))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = server_stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the dispatcher stopped serving");
        }
    });
    Ok(set)
}
