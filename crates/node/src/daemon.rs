//! `shoal daemon`: open the state dir, start the replica, record the cluster
//! and this node, serve the control API until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shoal_api::{
    manager_status, node_status, store_action, Annotations, Cluster, ClusterSpec, DispatcherConfig,
    ManagerStatus, Node, NodeRole, NodeSpec, NodeStatus, Object, OrchestrationConfig, StoreAction,
    Transaction,
};
use shoal_manager::controlapi::grpc::GrpcControl;
use shoal_manager::{new_object_id, ControlApi, ControlConfig};
use shoal_raft::{Replica, ReplicaConfig};

use crate::host::describe_host;
use crate::state_dir::{StateDir, StateDirError};

/// How long the daemon waits to become leader of its own store at start.
const LEADER_WAIT_MS: u64 = 30_000;
/// Largest control API request: larger than any valid one, so an oversized
/// spec is refused by validation naming its field, not by the transport.
const MAX_REQUEST_BYTES: usize = 64 << 20;
/// Largest control API answer message (lists stream in smaller pages).
const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// How long a stopping daemon waits for the control API's open calls.
const CONTROL_DRAIN_MS: u64 = 5_000;
/// Finished tasks kept per slot unless the user says otherwise.
const DEFAULT_TASK_HISTORY: i64 = 5;
const DEFAULT_HEARTBEAT_MS: u64 = 5_000;
/// The dispatcher's socket inside the state dir.
const DISPATCHER_SOCKET: &str = "dispatcher.sock";
/// The local agent's record of its tasks' last states.
const AGENT_DB_FILE: &str = "agent.redb";
/// Where the local agent keeps each task's directory (logs).
pub const AGENT_TASKS_DIR: &str = "tasks";

/// How to run the daemon.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub state_dir: PathBuf,
    /// The control socket; `<state dir>/shoal.sock` when unset.
    pub socket: Option<PathBuf>,
    /// Raft log entries between snapshots.
    pub snapshot_interval_entries: u64,
}

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    #[error(transparent)]
    Replica(#[from] shoal_raft::ReplicaError),
    #[error("recording the {what} in the store failed: {message}")]
    Bootstrap { what: &'static str, message: String },
    #[error(transparent)]
    Transport(#[from] shoal_api::transport::TransportError),
    #[error("the agent cannot start: {0}")]
    Agent(String),
    #[error("raft stopped and can write no more ({0}); fix the cause (free disk space in the state dir) and start the daemon again: every acknowledged write is in its log")]
    RaftFailed(String),
    #[error("serving {what} failed: {message}")]
    Serve { what: &'static str, message: String },
    #[error(transparent)]
    Certificates(#[from] crate::certificates::CertificatesError),
}

/// A new root CA for the cluster `cluster_id`, as the store keeps it.
fn new_root_ca(cluster_id: &str) -> Result<shoal_api::RootCa, DaemonError> {
    let ca = shoal_ca::RootCa::create(cluster_id, std::time::SystemTime::now()).map_err(|e| {
        DaemonError::Bootstrap {
            what: "cluster's root CA",
            message: e.to_string(),
        }
    })?;
    Ok(shoal_api::RootCa {
        cert_pem: ca.cert_pem().to_string(),
        key_pem: ca.key_pem().to_string(),
        digest: ca.digest().to_string(),
    })
}

/// Runs the daemon until a shutdown signal.
pub async fn run(config: DaemonConfig) -> Result<(), DaemonError> {
    // The one draw from the OS: every id and every jitter of this run comes
    // from generators seeded from it (DESIGN.md §4), so the log's seed
    // names the run.
    let seed: u64 = rand::random();
    tracing::info!(seed, "the daemon's random choices come from this seed");
    let mut rng = StdRng::seed_from_u64(seed);
    shoal_raft::seed_elections(rand::Rng::gen(&mut rng));
    let state = StateDir::open(&config.state_dir, || {
        (new_object_id(&mut rng), new_object_id(&mut rng))
    })?;
    let marker = state.marker().clone();
    // A single manager needs no raft listener; joining managers (the HA
    // work) will advertise a real address here.
    let advertise = "127.0.0.1:0".to_string();
    let mut replica_config =
        ReplicaConfig::new(state.raft_dir(), marker.raft_id, advertise.clone());
    replica_config.snapshot_interval_entries = config.snapshot_interval_entries;
    let replica = Arc::new(Replica::open(replica_config, state.is_fresh()).await?);
    replica
        .wait_leader(Duration::from_millis(LEADER_WAIT_MS))
        .await?;
    let process = shoal_agent::ProcessConfig::new(state.path().join(AGENT_TASKS_DIR));
    let mut description = describe_host();
    description.warnings.extend(process.cgroups.warning());
    bootstrap(
        &replica,
        &marker.cluster_id,
        &marker.node_id,
        &advertise,
        &description,
    )
    .await?;
    crate::certificates::NodeCertificates::ensure(
        &state.path().join(crate::certificates::CERTIFICATES_DIR),
        replica.store().view().cluster(),
        &marker.node_id,
        shoal_ca::Role::Manager,
    )?;

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    // The convergence loop: reconcilers, the dispatcher, and this node's agent.
    let mut background = start_convergence(
        &replica,
        &state,
        &marker.node_id,
        description,
        process,
        &stop_rx,
        &mut rng,
    )?;

    let socket = config.socket.clone().unwrap_or_else(|| state.socket_path());
    let incoming = shoal_api::transport::listen_unix(&socket)?;
    let control = ControlApi::new(
        Arc::clone(&replica),
        ControlConfig {
            node_id: marker.node_id.clone(),
            tasks_dir: state.path().join(AGENT_TASKS_DIR),
        },
        StdRng::seed_from_u64(rng.gen()),
    );
    let service = GrpcControl::server(Arc::new(control), MAX_REQUEST_BYTES, MAX_MESSAGE_BYTES);
    eprintln!(
        "shoal daemon: node {} of cluster {} is ready; control socket {}",
        marker.node_id,
        marker.cluster_id,
        socket.display()
    );
    let mut stop = stop_rx.clone();
    let control_server = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|s| *s).await;
        });
    tokio::pin!(control_server);
    let mut raft_failed = None;
    // A graceful stop waits for the control API's open calls, but a watch
    // (`shoal events`) or `logs -f` ends only when its client goes: bounded.
    let drained = |server| async move {
        tokio::time::timeout(Duration::from_millis(CONTROL_DRAIN_MS), server)
            .await
            .unwrap_or(Ok(()))
    };
    let served = tokio::select! {
        _ = &mut shutdown => {
            let _ = stop_tx.send(true);
            drained(&mut control_server).await
        }
        served = &mut control_server => served,
        reason = replica.failed() => {
            // Nothing can be written any more: stop everything and exit
            // non-zero, so a supervisor restarts the daemon (which recovers
            // every acknowledged write from the log) once the cause is gone.
            tracing::error!(%reason, "raft stopped; the daemon exits");
            raft_failed = Some(reason);
            let _ = stop_tx.send(true);
            drained(&mut control_server).await
        }
    };
    let _ = stop_tx.send(true);
    while background.join_next().await.is_some() {}
    replica.shutdown().await;
    let _ = std::fs::remove_file(&socket);
    if let Some(reason) = raft_failed {
        return Err(DaemonError::RaftFailed(reason));
    }
    served.map_err(|e| DaemonError::Serve {
        what: "the control API",
        message: e.to_string(),
    })
}

/// Starts the leader's components (reconcilers and the dispatcher, on a unix
/// socket in the state dir) and the local agent. All of them stop when
/// `stop` turns true; task processes keep running for the next start to
/// adopt.
fn start_convergence(
    replica: &Arc<Replica>,
    state: &StateDir,
    node_id: &str,
    description: shoal_api::NodeDescription,
    process: shoal_agent::ProcessConfig,
    stop: &tokio::sync::watch::Receiver<bool>,
    rng: &mut StdRng,
) -> Result<tokio::task::JoinSet<()>, DaemonError> {
    let dispatcher_socket = state.path().join(DISPATCHER_SOCKET);
    let mut set = shoal_manager::leader::start(replica, &dispatcher_socket, stop, rng)?;
    let agent = shoal_agent::AgentConfig {
        node_id: node_id.to_string(),
        description,
        dispatcher: shoal_agent::Connector::unix(&dispatcher_socket),
    };
    let db = shoal_agent::TaskDb::open(&state.path().join(AGENT_DB_FILE))
        .map_err(|e| DaemonError::Agent(e.to_string()))?;
    let driver = Arc::new(shoal_agent::ProcessDriver { config: process });
    set.spawn(shoal_agent::run(agent, driver, Arc::new(db), stop.clone()));
    Ok(set)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the daemon can still be killed; it just
        // cannot stop gracefully.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn create(target: impl Into<Object>) -> StoreAction {
    StoreAction {
        kind: store_action::Kind::Create as i32,
        target: Some(target.into()),
    }
}

/// Makes sure the cluster object and this node's object exist and describe
/// the machine as it is now. Runs on every start, after the replica has
/// caught up, so it only writes what is missing or changed.
async fn bootstrap(
    replica: &Replica,
    cluster_id: &str,
    node_id: &str,
    addr: &str,
    description: &shoal_api::NodeDescription,
) -> Result<(), DaemonError> {
    let description = description.clone();
    let status = NodeStatus {
        state: node_status::State::Ready as i32,
        message: String::new(),
        addr: addr.to_string(),
    };
    let manager = ManagerStatus {
        raft_id: 1,
        addr: addr.to_string(),
        leader: true,
        reachability: manager_status::Reachability::Reachable as i32,
    };
    let mut actions = Vec::new();
    {
        let view = replica.store().view();
        match view.cluster() {
            // A state dir made before clusters had a CA gets one: nothing
            // can have joined it yet.
            Some(cluster) if cluster.root_ca.is_none() => {
                let mut updated = cluster.clone();
                updated.root_ca = Some(new_root_ca(&cluster.id)?);
                actions.push(StoreAction {
                    kind: store_action::Kind::Update as i32,
                    target: Some(updated.into()),
                });
            }
            Some(_) => {}
            None => actions.push(create(Cluster {
                id: cluster_id.to_string(),
                root_ca: Some(new_root_ca(cluster_id)?),
                spec: Some(ClusterSpec {
                    annotations: Some(Annotations {
                        name: "default".into(),
                        labels: Default::default(),
                    }),
                    orchestration: Some(OrchestrationConfig {
                        task_history_retention_limit: DEFAULT_TASK_HISTORY,
                        max_replicas_per_service: shoal_manager::DEFAULT_MAX_REPLICAS_PER_SERVICE,
                        max_replicas_total: shoal_manager::DEFAULT_MAX_REPLICAS_TOTAL,
                        max_new_tasks_per_pass: shoal_manager::DEFAULT_MAX_NEW_TASKS_PER_PASS,
                    }),
                    dispatcher: Some(DispatcherConfig {
                        heartbeat_period_ms: DEFAULT_HEARTBEAT_MS,
                    }),
                }),
                ..Default::default()
            })),
        }
        match view.node(node_id) {
            None => actions.push(create(Node {
                id: node_id.to_string(),
                spec: Some(NodeSpec {
                    annotations: Some(Annotations::default()),
                    desired_role: NodeRole::Manager as i32,
                    availability: 0,
                }),
                description: Some(description),
                status: Some(status),
                manager_status: Some(manager),
                role: NodeRole::Manager as i32,
                ..Default::default()
            })),
            Some(node) => {
                let mut updated = node.clone();
                updated.description = Some(description);
                updated.status = Some(status);
                updated.manager_status = Some(manager);
                if &updated != node {
                    actions.push(StoreAction {
                        kind: store_action::Kind::Update as i32,
                        target: Some(updated.into()),
                    });
                }
            }
        }
    }
    if actions.is_empty() {
        return Ok(());
    }
    replica
        .propose(Transaction {
            actions,
            timestamp_ms: 0,
        })
        .await
        .map_err(|e| DaemonError::Bootstrap {
            what: "cluster and this node",
            message: e.to_string(),
        })?;
    Ok(())
}
