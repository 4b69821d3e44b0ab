//! `shoal daemon`: open the state dir and run the node it holds, a manager
//! or a worker, until SIGTERM or SIGINT (or, on a worker, `shoal leave`).
//!
//! An empty state dir becomes a new cluster with this node its first
//! manager, or, given `--join` and `--token`, a worker of an existing one
//! ([`crate::join`]). A node that joined restarts from its state dir alone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shoal_api::{
    manager_status, node_status, store_action, Annotations, Cluster, ClusterSpec, DispatcherConfig,
    ManagerStatus, Node, NodeRole, NodeSpec, NodeStatus, Object, OrchestrationConfig, StoreAction,
    Transaction,
};
use shoal_manager::certificate_authority::{new_join_tokens, CertificateAuthority};
use shoal_manager::controlapi::grpc::GrpcControl;
use shoal_manager::{new_object_id, ControlApi, ControlConfig};
use shoal_raft::{Replica, ReplicaConfig};

use crate::certificates::{NodeCertificates, CERTIFICATES_DIR};
use crate::host::describe_host;
use crate::local_node::{KnownManagers, LocalNodeService};
use crate::state_dir::{Marker, NodeKind, StateDir, StateDirError};

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
/// The local agent's record of its tasks' last states.
pub(crate) const AGENT_DB_FILE: &str = "agent.redb";
/// Where the local agent keeps each task's directory (logs).
pub const AGENT_TASKS_DIR: &str = "tasks";
/// The port a manager listens on when `--listen-addr` names none.
pub const DEFAULT_PORT: u16 = 4242;

/// How to run the daemon.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub state_dir: PathBuf,
    /// The control socket; `<state dir>/shoal.sock` when unset.
    pub socket: Option<PathBuf>,
    /// Raft log entries between snapshots.
    pub snapshot_interval_entries: u64,
    /// Where a manager listens for other nodes (`host:port`; port 0 picks
    /// a free one).
    pub listen_addr: String,
    /// The address other nodes dial; by default the listen address, or the
    /// address of the default route's interface when listening on all.
    pub advertise_addr: Option<String>,
    /// Join the cluster of the manager at this address, with `token`.
    pub join: Option<JoinConfig>,
    /// Make this manager the only one of its cluster, keeping its store.
    pub force_new_cluster: bool,
    /// Bring a cluster back from this backup, into an empty state dir.
    pub restore: Option<PathBuf>,
}

/// `--join ADDR --token TOKEN`.
#[derive(Clone)]
pub struct JoinConfig {
    pub addr: String,
    pub token: String,
}

/// Never prints the token.
impl std::fmt::Debug for JoinConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinConfig")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
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
    #[error("TLS: {0}")]
    Tls(#[from] shoal_ca::CaError),
    #[error(transparent)]
    Join(#[from] crate::join::JoinError),
    #[error("this state dir is node {node_id} of cluster {cluster_id} already: start the daemon without --join and --token (or give it an empty state dir to join another cluster)")]
    AlreadyJoined { node_id: String, cluster_id: String },
    #[error("node {node_id} left cluster {cluster_id} (shoal leave, or removed with node rm): start it with --join ADDR --token TOKEN to join a cluster again, or give it an empty state dir to create a new cluster")]
    Left { node_id: String, cluster_id: String },
    #[error("--advertise-addr {addr}: {message}")]
    Advertise { addr: String, message: String },
    #[error("{0}: this node stopped its tasks and deleted its identity; to join again, start it with --join and a token")]
    Removed(String),
    #[error("this node's certificate expired at {at} (it was not running to renew it): give it an empty state dir and join again")]
    Expired { at: String },
    #[error("--force-new-cluster: {0}")]
    ForceNewCluster(String),
    #[error("--restore {path}: {message}")]
    Restore { path: String, message: String },
}

/// How a manager's store begins this start.
enum Start {
    /// As its state dir holds it (or a new cluster's, or a joined one's).
    AsItIs,
    /// The only manager of its cluster, with the store it has.
    ForceNewCluster,
    /// The only manager of a cluster brought back from a backup.
    Restore(shoal_api::StoreSnapshot),
}

/// A new root CA for the cluster `cluster_id`, as the store keeps it.
fn new_root_ca(
    cluster_id: &str,
) -> Result<(shoal_api::RootCa, shoal_api::JoinTokens), DaemonError> {
    let fail = |e: shoal_ca::CaError| DaemonError::Bootstrap {
        what: "cluster's root CA",
        message: e.to_string(),
    };
    let ca = shoal_ca::RootCa::create(cluster_id, std::time::SystemTime::now()).map_err(fail)?;
    let tokens = new_join_tokens(&ca).map_err(fail)?;
    Ok((
        shoal_api::RootCa {
            cert_pem: ca.cert_pem().to_string(),
            key_pem: ca.key_pem().to_string(),
            digest: ca.digest().to_string(),
        },
        tokens,
    ))
}

/// What a node's run ended with: the daemon stops, or the node goes on in
/// another role ([`crate::role_change`]).
pub(crate) enum Next {
    Stop,
    /// Promoted: it runs as a manager, its node listener bound already.
    Manager((tokio::net::TcpListener, SocketAddr)),
    /// Demoted: it runs as a worker.
    Worker,
}

/// Runs the daemon until a shutdown signal.
pub async fn run(config: DaemonConfig) -> Result<(), DaemonError> {
    // The one draw from the OS: every id and every jitter of this run comes
    // from generators seeded from it (DESIGN.md §4), so the log's seed
    // names the run. (Keys and token secrets come from the OS: see
    // shoal_ca.)
    let seed: u64 = rand::random();
    tracing::info!(seed, "the daemon's random choices come from this seed");
    let mut rng = StdRng::seed_from_u64(seed);
    shoal_raft::seed_elections(rand::Rng::gen(&mut rng));
    let mut roles = StdRng::seed_from_u64(rng.gen());
    // One watch of the signals for the whole run: a signal that comes
    // while the node changes its role is not lost between two roles.
    let shutdown = shutdown_watch();
    let mut next = begin(&config, rng, shutdown.clone()).await?;
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let rng = StdRng::seed_from_u64(roles.gen());
        // The state dir is opened again in the new role: its lock was
        // dropped with the last run.
        next = match next {
            Next::Stop => return Ok(()),
            Next::Manager(listener) => {
                let state = StateDir::open(&config.state_dir)?;
                run_manager(
                    state,
                    &config,
                    rng,
                    Some(listener),
                    Start::AsItIs,
                    shutdown.clone(),
                )
                .await?
            }
            Next::Worker => {
                let state = StateDir::open(&config.state_dir)?;
                crate::worker_node::run(state, &config, rng, shutdown.clone()).await?
            }
        };
    }
}

/// The node's first run this start: as its state dir says, or as asked
/// (a join, a restore, a new cluster forced).
async fn begin(
    config: &DaemonConfig,
    mut rng: StdRng,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Next, DaemonError> {
    let mut state = StateDir::open(&config.state_dir)?;
    if let Some(path) = &config.restore {
        let restore_error = |message: String| DaemonError::Restore {
            path: path.display().to_string(),
            message,
        };
        if let Some(marker) = state.marker().filter(|m| m.role != NodeKind::Left) {
            return Err(restore_error(format!(
                "this state dir is node {} of cluster {} already; restore into an empty state dir",
                marker.node_id, marker.cluster_id
            )));
        }
        let snapshot = read_backup(path).map_err(restore_error)?;
        let cluster_id = snapshot
            .clusters
            .first()
            .map(|c| c.id.clone())
            .ok_or_else(|| restore_error("the backup holds no cluster".into()))?;
        state.clear()?;
        let node_id = new_object_id(&mut rng);
        state.create(Marker::new(cluster_id, node_id, NodeKind::Manager))?;
        return run_manager(state, config, rng, None, Start::Restore(snapshot), shutdown).await;
    }
    if config.force_new_cluster {
        match state.marker() {
            Some(m) if m.role == NodeKind::Manager && !state.is_fresh() => {}
            _ => {
                return Err(DaemonError::ForceNewCluster(
                    "this state dir holds no manager's store: it is for a surviving manager's state dir".into(),
                ))
            }
        }
        return run_manager(state, config, rng, None, Start::ForceNewCluster, shutdown).await;
    }
    match (state.marker().cloned(), &config.join) {
        (Some(marker), None) if marker.role == NodeKind::Left => Err(DaemonError::Left {
            node_id: marker.node_id,
            cluster_id: marker.cluster_id,
        }),
        (Some(marker), Some(_)) if marker.role != NodeKind::Left => {
            Err(DaemonError::AlreadyJoined {
                node_id: marker.node_id,
                cluster_id: marker.cluster_id,
            })
        }
        (_, Some(join)) => {
            // An empty dir, or one whose node left: what it held goes.
            state.clear()?;
            // Bound first: a manager token makes this node a manager, and
            // its address goes with the join. A worker does not listen.
            let listener = bind(&config.listen_addr).await;
            let advertise = match &listener {
                Ok((_, bound)) => advertised(*bound, config.advertise_addr.as_deref())?,
                Err(_) => String::new(),
            };
            let joined = crate::join::join(&join.addr, &join.token, &advertise)
                .await
                .map_err(|e| match (&listener, e) {
                    (Err(bind), crate::join::JoinError::Refused { addr, message })
                        if message.contains("advertise_addr") =>
                    {
                        crate::join::JoinError::Refused {
                            addr,
                            message: format!("{message} (--listen-addr: {bind})"),
                        }
                    }
                    (_, e) => e,
                })?;
            joined
                .certificates
                .write(&state.path().join(CERTIFICATES_DIR))?;
            state
                .save_managers(&joined.managers)
                .map_err(|e| DaemonError::Agent(format!("saving the managers' addresses: {e}")))?;
            let kind = match joined.raft_id {
                Some(_) => NodeKind::Manager,
                None => NodeKind::Worker,
            };
            let mut marker = Marker::new(joined.cluster_id.clone(), joined.node_id.clone(), kind);
            if let Some(raft_id) = joined.raft_id {
                marker.raft_id = raft_id;
                marker.joined = true;
            }
            // Last: until the marker is there, the dir counts as empty.
            state.create(marker)?;
            eprintln!(
                "shoal daemon: joined cluster {} as {} node {}",
                joined.cluster_id,
                if joined.raft_id.is_some() {
                    "manager"
                } else {
                    "worker"
                },
                joined.node_id
            );
            match joined.raft_id {
                Some(_) => {
                    run_manager(state, config, rng, Some(listener?), Start::AsItIs, shutdown).await
                }
                None => {
                    drop(listener);
                    crate::worker_node::run(state, config, rng, shutdown).await
                }
            }
        }
        (Some(marker), None) if marker.role == NodeKind::Worker => {
            crate::worker_node::run(state, config, rng, shutdown).await
        }
        (marker, None) => {
            if marker.is_none() {
                let (cluster_id, node_id) = (new_object_id(&mut rng), new_object_id(&mut rng));
                state.create(Marker::new(cluster_id, node_id, NodeKind::Manager))?;
            }
            run_manager(state, config, rng, None, Start::AsItIs, shutdown).await
        }
    }
}

/// Reads a backup file: its store, checked whole.
fn read_backup(path: &std::path::Path) -> Result<shoal_api::StoreSnapshot, String> {
    use prost::Message;
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let body = shoal_api::backup_file::body(&bytes).map_err(|e| e.to_string())?;
    let snapshot = shoal_api::StoreSnapshot::decode(body)
        .map_err(|e| format!("the backup is damaged: {e}"))?;
    if snapshot
        .clusters
        .first()
        .is_none_or(|c| c.root_ca.as_ref().is_none_or(|r| r.key_pem.is_empty()))
    {
        return Err("the backup holds no cluster with its CA".into());
    }
    Ok(snapshot)
}

/// The changes that make this manager the only one of the store `view`
/// holds: every other manager is removed (and recorded so, as `node rm`
/// does: their certificates are refused, and they join again with a
/// manager token), and this one is recorded as the leader at `addr`.
fn sole_manager(view: &shoal_store::Tables, marker: &Marker, addr: &str) -> Vec<StoreAction> {
    let mut actions = Vec::new();
    let Some(mut cluster) = view.cluster().cloned() else {
        return actions;
    };
    let now = shoal_api::clock::now_ms() / 1_000;
    let until = now
        + shoal_manager::certificate_authority::node_cert_expiry(&cluster).as_secs() as i64
        + shoal_manager::certificate_authority::CLOCK_SKEW.as_secs() as i64;
    for other in view
        .nodes()
        .filter(|n| n.role == NodeRole::Manager as i32 && n.id != marker.node_id)
    {
        actions.push(StoreAction {
            kind: store_action::Kind::Remove as i32,
            target: Some(other.clone().into()),
        });
        cluster.removed_nodes.retain(|r| r.node_id != other.id);
        cluster.removed_nodes.push(shoal_api::RemovedNode {
            node_id: other.id.clone(),
            until_unix: until,
        });
    }
    let status = ManagerStatus {
        raft_id: marker.raft_id,
        addr: addr.to_string(),
        leader: true,
        reachability: manager_status::Reachability::Reachable as i32,
    };
    match view.node(&marker.node_id) {
        Some(node) => {
            let mut node = node.clone();
            node.manager_status = Some(status);
            actions.push(StoreAction {
                kind: store_action::Kind::Update as i32,
                target: Some(node.into()),
            });
        }
        None => {
            let mut node = shoal_manager::certificate_authority::joined_manager(
                &marker.node_id,
                "",
                addr,
                marker.raft_id,
            );
            node.manager_status = Some(status);
            actions.push(create(node));
        }
    }
    if view.cluster() != Some(&cluster) {
        actions.push(StoreAction {
            kind: store_action::Kind::Update as i32,
            target: Some(cluster.into()),
        });
    }
    actions
}

/// Binds the node listener at `addr`, or, when `addr` names port 0 and
/// this manager listened on the same IP before, on that port again.
async fn bind_again(
    state: &StateDir,
    addr: &str,
) -> Result<(tokio::net::TcpListener, SocketAddr), shoal_api::transport::TransportError> {
    let asked: Option<SocketAddr> = addr.parse().ok();
    if let (Some(asked), Some(before)) = (asked, state.listened()) {
        if asked.port() == 0 && asked.ip() == before.ip() {
            match bind(&before.to_string()).await {
                Ok(bound) => return Ok(bound),
                Err(e) => {
                    tracing::warn!(error = %e, %before, "the port this manager had is taken; another is picked")
                }
            }
        }
    }
    bind(addr).await
}

/// Binds the node listener at `addr`: the socket and where it is bound.
pub(crate) async fn bind(
    addr: &str,
) -> Result<(tokio::net::TcpListener, SocketAddr), shoal_api::transport::TransportError> {
    let failed = |source| shoal_api::transport::TransportError::Listen {
        path: addr.to_string(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(failed)?;
    let bound = listener.local_addr().map_err(failed)?;
    Ok((listener, bound))
}

/// The address other nodes dial for a listener bound at `bound`.
pub(crate) fn advertised(
    bound: SocketAddr,
    advertise: Option<&str>,
) -> Result<String, DaemonError> {
    if let Some(addr) = advertise {
        let invalid = |message: String| DaemonError::Advertise {
            addr: addr.to_string(),
            message,
        };
        if addr.parse::<SocketAddr>().is_ok() {
            return Ok(addr.to_string());
        }
        let ip: std::net::IpAddr = addr
            .parse()
            .map_err(|_| invalid("must be an IP address, with or without a port".into()))?;
        return Ok(SocketAddr::new(ip, bound.port()).to_string());
    }
    if !bound.ip().is_unspecified() {
        return Ok(bound.to_string());
    }
    // The source address the kernel picks for the default route: a UDP
    // socket's connect sends nothing, it only routes.
    let routed = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|()| s))
        .and_then(|s| s.local_addr());
    match routed {
        Ok(local) => Ok(SocketAddr::new(local.ip(), bound.port()).to_string()),
        Err(e) => {
            tracing::warn!(error = %e, "no default route: advertising 127.0.0.1; set --advertise-addr for other hosts to reach this node");
            Ok(SocketAddr::new([127, 0, 0, 1].into(), bound.port()).to_string())
        }
    }
}

/// Where this host's own agent dials a listener bound at `bound`.
fn local_dial(bound: SocketAddr) -> String {
    if bound.ip().is_unspecified() {
        SocketAddr::new([127, 0, 0, 1].into(), bound.port()).to_string()
    } else {
        bound.to_string()
    }
}

/// Starts this node's agent: processes run by `process`, its record in
/// the state dir, sessions through `connector`.
pub(crate) fn start_agent(
    state: &StateDir,
    node_id: &str,
    description: shoal_api::NodeDescription,
    process: shoal_agent::ProcessConfig,
    engine: Option<shoal_agent::Engine>,
    connector: shoal_agent::Connector,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<shoal_agent::AgentExit>, DaemonError> {
    let agent = shoal_agent::AgentConfig {
        node_id: node_id.to_string(),
        description,
        dispatcher: connector,
    };
    let db = shoal_agent::TaskDb::open(&state.path().join(AGENT_DB_FILE))
        .map_err(|e| DaemonError::Agent(e.to_string()))?;
    let driver = Arc::new(host_driver(node_id, process, engine));
    Ok(tokio::spawn(shoal_agent::run(
        agent,
        driver,
        Arc::new(db),
        stop.clone(),
    )))
}

/// The node's driver: processes, and containers on `engine`.
pub(crate) fn host_driver(
    node_id: &str,
    process: shoal_agent::ProcessConfig,
    engine: Option<shoal_agent::Engine>,
) -> shoal_agent::HostDriver {
    shoal_agent::HostDriver {
        process: shoal_agent::ProcessDriver { config: process },
        engine,
        node_id: node_id.to_string(),
    }
}

/// Finds the node's Docker Engine and says what it found, once: the
/// description carries its version and labels, or a warning that the node
/// runs processes only.
pub(crate) async fn find_engine(
    description: &mut shoal_api::NodeDescription,
) -> Option<shoal_agent::Engine> {
    match shoal_agent::Engine::detect().await {
        Ok(engine) => {
            eprintln!(
                "shoal daemon: Docker Engine {} at {}: tasks with an image run as containers",
                engine.version, engine.host
            );
            description.engine_version = engine.version.clone();
            description.engine_labels = engine.labels.clone().into_iter().collect();
            Some(engine)
        }
        Err(e) => {
            let warning = format!(
                "{e}; this node runs processes only (tasks with an image are not placed here)"
            );
            eprintln!("shoal daemon: {warning}");
            description.warnings.push(warning);
            None
        }
    }
}

/// A connector to the managers at `addresses` over mutual TLS as the node
/// `identity` shows.
pub(crate) fn tls_connector(
    addresses: Vec<String>,
    ca_der: &[u8],
    identity: Arc<shoal_ca::tls::NodeTlsIdentity>,
) -> Result<shoal_agent::Connector, DaemonError> {
    let config = shoal_ca::tls::renewable_client_config(ca_der, identity)?;
    Ok(shoal_agent::Connector::rotating(addresses, move |addr| {
        shoal_api::mtls::connect(addr, Arc::clone(&config), shoal_ca::tls::MANAGER_NAME)
            .map_err(|e| e.to_string())
    }))
}

/// What a connector does with the managers' addresses a session names:
/// they become `known` (what `version` shows) and are kept in the state
/// dir for the next start.
pub(crate) fn keep_learned(
    known: &KnownManagers,
    state: &StateDir,
) -> impl Fn(&[String]) + Send + Sync + 'static {
    let known = Arc::clone(known);
    let dir = state.path().to_path_buf();
    move |list: &[String]| {
        *known.lock().unwrap_or_else(|e| e.into_inner()) = list.to_vec();
        if let Err(e) = crate::state_dir::save_managers_in(&dir, list) {
            tracing::warn!(error = %e, "saving the managers' addresses failed");
        }
    }
}

/// Serves `router` on the control socket until `stop`; a graceful stop
/// waits for open calls, but a watch (`shoal events`) or `logs -f` ends
/// only when its client goes: bounded by [`CONTROL_DRAIN_MS`].
pub(crate) fn serve_control_socket(
    socket: &std::path::Path,
    router: tonic::service::Routes,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<Result<(), DaemonError>>, DaemonError> {
    let incoming = shoal_api::transport::listen_unix(socket)?;
    let mut stop = stop.clone();
    Ok(tokio::spawn(async move {
        let server = tonic::transport::Server::builder()
            .add_routes(router)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|s| *s).await;
            });
        server.await.map_err(|e| DaemonError::Serve {
            what: "the control API",
            message: e.to_string(),
        })
    }))
}

/// Waits for a task that ends on `stop`, at most [`CONTROL_DRAIN_MS`].
pub(crate) async fn drained<T>(handle: tokio::task::JoinHandle<T>) -> Option<T> {
    tokio::time::timeout(Duration::from_millis(CONTROL_DRAIN_MS), handle)
        .await
        .ok()
        .and_then(Result::ok)
}

/// Runs a manager: its replica of the store, the leader's components while
/// it leads, the node listener, the control socket and its own agent.
/// `listener` is the node listener when the join bound it already.
async fn run_manager(
    mut state: StateDir,
    config: &DaemonConfig,
    mut rng: StdRng,
    listener: Option<(tokio::net::TcpListener, SocketAddr)>,
    start: Start,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Next, DaemonError> {
    let mut marker = state
        .marker()
        .cloned()
        .ok_or_else(|| DaemonError::Agent("the state dir has no identity".into()))?;
    std::fs::create_dir_all(state.raft_dir()).map_err(|e| {
        DaemonError::StateDir(StateDirError::Io {
            path: state.raft_dir().display().to_string(),
            source: e,
        })
    })?;
    // The listener first: its address is this manager's in the store, and
    // a port taken by another process is refused before anything changes.
    let (listener, bound) = match listener {
        Some(bound) => bound,
        None => bind_again(&state, &config.listen_addr).await?,
    };
    // Other managers dial this one where raft recorded it: a restart
    // with port 0 comes back on the same port.
    if let Err(e) = state.save_listened(bound) {
        tracing::warn!(error = %e, "recording the listen address failed");
    }
    let advertise = advertised(bound, config.advertise_addr.as_deref())?;
    let refounded = !matches!(start, Start::AsItIs);
    // A store made new this start (not one refounded from a store).
    let fresh = state.is_fresh() && !refounded;
    let origin = match start {
        Start::AsItIs => None,
        Start::ForceNewCluster => Some(shoal_raft::Origin::Replica),
        Start::Restore(snapshot) => Some(shoal_raft::Origin::Backup(snapshot)),
    };
    if let Some(origin) = origin {
        let index = shoal_raft::refound(
            &state.raft_dir(),
            marker.raft_id,
            &advertise,
            origin,
            |view| sole_manager(view, &marker, &advertise),
        )
        .await?;
        // Its raft group is its own now, as a founding manager's is.
        if marker.joined {
            marker.joined = false;
            state.create(marker.clone())?;
        }
        eprintln!(
            "shoal daemon: node {} is the only manager of cluster {}, with the store at version {index}",
            marker.node_id, marker.cluster_id
        );
    }
    let mut replica_config =
        ReplicaConfig::new(state.raft_dir(), marker.raft_id, advertise.clone());
    replica_config.snapshot_interval_entries = config.snapshot_interval_entries;
    let election_timeout = state
        .election_timeout()
        .unwrap_or(shoal_raft::DEFAULT_ELECTION_TIMEOUT_MS);
    let (heartbeat, min, max) = shoal_raft::raft_timing(election_timeout);
    replica_config.heartbeat_interval_ms = heartbeat;
    replica_config.election_timeout_min_ms = min;
    replica_config.election_timeout_max_ms = max;
    tracing::info!(
        "raft's timing: a heartbeat every {heartbeat} ms, election timeouts of {min} to {max} ms"
    );
    // The first manager makes the raft group; a joined one waits, empty,
    // for the leader to add it.
    let founding = !marker.joined;
    if !founding {
        replica_config.on_create = shoal_raft::OnCreate::Join;
    }
    // Raft reaches other managers over mutual TLS only, once this one has
    // its certificate (made below, from the store this replica opens).
    let (peers, peer_tls) = shoal_raft::Network::tls();
    replica_config.peers = peers;
    let replica = Arc::new(Replica::open(replica_config, fresh).await?);
    let process = shoal_agent::ProcessConfig::new(state.path().join(AGENT_TASKS_DIR));
    let mut description = describe_host();
    description.warnings.extend(process.cgroups.warning());
    let engine = find_engine(&mut description).await;
    let certificates_dir = state.path().join(CERTIFICATES_DIR);
    // The first manager makes the cluster object, and a manager alone in
    // its group (where an older version made it) gives it what it lacks:
    // it leads then, and its store is current once it does.
    let alone = replica.stored_voters().await == [marker.raft_id].into();
    if founding && (fresh || alone) {
        replica
            .wait_leader(Duration::from_millis(LEADER_WAIT_MS))
            .await?;
        replica
            .barrier()
            .await
            .map_err(|e| DaemonError::Bootstrap {
                what: "the store's state",
                message: e.to_string(),
            })?;
    }
    let incomplete = replica
        .store()
        .view()
        .cluster()
        .is_none_or(|c| c.root_ca.is_none() || c.join_tokens.is_none());
    if founding && (fresh || alone) && incomplete {
        bootstrap(
            &replica,
            &marker.cluster_id,
            &marker.node_id,
            marker.raft_id,
            &advertise,
            &description,
        )
        .await?;
    }
    let certificates = match replica.store().view().cluster() {
        Some(cluster) => NodeCertificates::ensure(
            &certificates_dir,
            Some(cluster),
            &marker.node_id,
            shoal_ca::Role::Manager,
        )?,
        // A manager that joined and has not received the store yet: the
        // certificate it joined with.
        None => NodeCertificates::read(&certificates_dir)
            .ok_or(crate::certificates::CertificatesError::NoRootCa)?,
    };
    let ca_der = certificates.ca_der()?;
    let identity =
        shoal_ca::tls::NodeTlsIdentity::new(&certificates.chain_pem(), &certificates.key_pem)?;
    let tls = shoal_ca::tls::renewable_server_config(
        &ca_der,
        Arc::clone(&identity),
        shoal_ca::tls::ClientAuth::Optional,
    )?;
    let client_tls = shoal_ca::tls::renewable_client_config(&ca_der, Arc::clone(&identity))?;
    *peer_tls.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&client_tls));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let logs = Arc::new(shoal_manager::LogBroker::default());
    let gate = shoal_manager::leadership::DispatcherGate::new(Arc::clone(&replica));
    let leader_dial: shoal_manager::controlapi::LeaderDial = {
        let client_tls = Arc::clone(&client_tls);
        Arc::new(move |addr: &str| {
            shoal_api::mtls::connect(addr, Arc::clone(&client_tls), shoal_ca::tls::MANAGER_NAME)
                .map_err(|e| e.to_string())
        })
    };
    let control = Arc::new(ControlApi::new(
        Arc::clone(&replica),
        ControlConfig {
            node_id: marker.node_id.clone(),
            logs: Arc::clone(&logs),
            leader_dial: Some(leader_dial),
        },
        StdRng::seed_from_u64(rng.gen()),
    ));
    let node_listener = crate::node_listener::start(
        listener,
        tls,
        &replica,
        &marker.cluster_id,
        crate::node_listener::NodeServices {
            dispatcher: gate.clone().server(),
            logs: shoal_manager::LogPublishing::server(Arc::clone(&logs)),
            ca: CertificateAuthority::new(Arc::clone(&replica), StdRng::seed_from_u64(rng.gen())),
            control: GrpcControl::server(
                Arc::clone(&control),
                MAX_REQUEST_BYTES,
                MAX_MESSAGE_BYTES,
            ),
        },
        stop_rx.clone(),
    )?;
    // A manager of many serves raft from here on; it goes on once its
    // store holds everything committed (a joined one: the store the leader
    // sent, with this node in it). Until then it answers nothing, so it
    // never shows a user less than it acknowledged before.
    //
    // Its own agent dials this manager first, and follows the leader. It
    // starts before the store has caught up: a promoted worker's tasks
    // stay watched over while the leader sends it the store.
    let mut addresses = vec![local_dial(bound)];
    addresses.extend(state.managers().into_iter().filter(|a| *a != advertise));
    let managers: KnownManagers = Arc::new(Mutex::new(vec![advertise.clone()]));
    let (tell_role, asked_role) = crate::role_change::role_channel();
    let connector = tls_connector(addresses, &ca_der, Arc::clone(&identity))?
        .on_learned(keep_learned(&managers, &state))
        .on_desired_role(tell_role);
    let mut agent = start_agent(
        &state,
        &marker.node_id,
        description.clone(),
        process,
        engine,
        connector,
        &stop_rx,
    )?;
    // Whether the CA says it is a worker now, asked from the start: a
    // manager restarted after raft let it go would wait for ever for a
    // store that never comes.
    let state_path = state.path().to_path_buf();
    let mut let_go = tokio::spawn(crate::role_change::let_go(
        asked_role,
        Arc::clone(&replica),
        advertise.clone(),
        move || crate::state_dir::managers_in(&state_path),
        certificates.clone(),
        Arc::clone(&identity),
    ));
    if !alone {
        enum Early {
            Stop,
            CaughtUp,
            Removed(String),
            LetGo(Result<crate::role_change::NewRole, tokio::task::JoinError>),
            Agent(Result<shoal_agent::AgentExit, tokio::task::JoinError>),
        }
        let early = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => Early::Stop,
            caught = caught_up(&replica, &marker.node_id) => match caught {
                Ok(()) => Early::CaughtUp,
                Err(reason) => Early::Removed(reason),
            },
            role = &mut let_go => Early::LetGo(role),
            exit = &mut agent => Early::Agent(exit),
        };
        if !matches!(early, Early::CaughtUp) {
            let _ = stop_tx.send(true);
            if !matches!(early, Early::Agent(_)) {
                let _ = agent.await;
            }
            let_go.abort();
            replica.shutdown().await;
            drained(node_listener).await;
            return match early {
                // Removed while it was away: it stops and forgets itself,
                // as a removed manager that runs does.
                Early::Removed(reason)
                | Early::Agent(Ok(shoal_agent::AgentExit::Removed(reason))) => {
                    state.forget()?;
                    Err(DaemonError::Removed(reason))
                }
                Early::LetGo(Ok(role)) => {
                    become_worker(&mut state, &marker, role)?;
                    Ok(Next::Worker)
                }
                Early::LetGo(Err(e)) => Err(DaemonError::Agent(format!(
                    "asking the CA for this node's role failed: {e}"
                ))),
                Early::Agent(Err(e)) => Err(DaemonError::Agent(format!("the agent failed: {e}"))),
                Early::Stop | Early::CaughtUp | Early::Agent(Ok(_)) => Ok(Next::Stop),
            };
        }
    }
    let mut background = tokio::task::JoinSet::new();
    background.spawn(record_self(
        Arc::clone(&replica),
        marker.clone(),
        advertise.clone(),
        description.clone(),
        stop_rx.clone(),
    ));
    background.spawn(follow_election_timeout(
        Arc::clone(&replica),
        state.path().to_path_buf(),
        election_timeout,
        stop_rx.clone(),
    ));
    background.spawn(shoal_manager::leadership::run(
        Arc::clone(&replica),
        stop_rx.clone(),
        StdRng::seed_from_u64(rng.gen()),
        gate,
        logs,
    ));
    background.spawn(crate::manager_renewal::run(
        Arc::clone(&replica),
        certificates_dir,
        marker.node_id.clone(),
        identity,
        StdRng::seed_from_u64(rng.gen()),
        stop_rx.clone(),
    ));

    let socket = config.socket.clone().unwrap_or_else(|| state.socket_path());
    let mut routes = tonic::service::Routes::new(GrpcControl::server(
        control,
        MAX_REQUEST_BYTES,
        MAX_MESSAGE_BYTES,
    ));
    routes = routes.add_service(shoal_api::local_node_server::LocalNodeServer::new(
        LocalNodeService::manager(marker.clone(), managers),
    ));
    let mut control_server = serve_control_socket(&socket, routes, &stop_rx)?;
    eprintln!(
        "shoal daemon: node {} of cluster {} is ready; control socket {}; listening on {} (advertised as {})",
        marker.node_id,
        marker.cluster_id,
        socket.display(),
        bound,
        advertise
    );
    let mut raft_failed = None;
    let mut removed = None;
    let mut demoted = None;
    let mut let_go_failed = None;
    let mut agent_done = false;
    let served = tokio::select! {
        _ = shutdown.wait_for(|s| *s) => None,
        // `node demote`: it goes on managing until raft has let it go and
        // the CA says it is a worker, then stops as a manager.
        role = &mut let_go => {
            match role {
                Ok(role) => demoted = Some(role),
                Err(e) => let_go_failed = Some(e.to_string()),
            }
            None
        }
        served = &mut control_server => Some(served),
        exit = &mut agent => {
            // Removed from the cluster (node rm): this manager stops and
            // forgets itself, as a removed worker does.
            agent_done = true;
            if let Ok(shoal_agent::AgentExit::Removed(reason)) = exit {
                tracing::error!(%reason, "this manager was removed from the cluster");
                removed = Some(reason);
            }
            None
        }
        reason = replica.failed() => {
            // Nothing can be written any more: stop everything and exit
            // non-zero, so a supervisor restarts the daemon (which recovers
            // every acknowledged write from the log) once the cause is gone.
            tracing::error!(%reason, "raft stopped; the daemon exits");
            raft_failed = Some(reason);
            None
        }
    };
    let _ = stop_tx.send(true);
    let served = match served {
        Some(served) => served.unwrap_or(Ok(())),
        None => drained(control_server).await.unwrap_or(Ok(())),
    };
    if !agent_done {
        let _ = agent.await;
    }
    let_go.abort();
    // Raft first: writes still waiting for a quorum fail at once (the
    // components waiting on them end), the followers' streams to this
    // manager end with it, so they campaign at once instead of after an
    // election timeout, and the listener has no stream left to wait for.
    replica.shutdown().await;
    while background.join_next().await.is_some() {}
    drained(node_listener).await;
    let _ = std::fs::remove_file(&socket);
    if let Some(reason) = removed {
        let mut state = state;
        state.forget()?;
        return Err(DaemonError::Removed(reason));
    }
    if let Some(reason) = raft_failed {
        return Err(DaemonError::RaftFailed(reason));
    }
    if let Some(e) = let_go_failed {
        return Err(DaemonError::Agent(format!(
            "asking the CA for this node's role failed: {e}"
        )));
    }
    if let Some(role) = demoted {
        let mut state = state;
        become_worker(&mut state, &marker, role)?;
        return Ok(Next::Worker);
    }
    served.map(|()| Next::Stop)
}

/// Makes this state dir a worker's: its marker, its certificate, the
/// managers it dials, and no raft log (a worker's start removes one left
/// by a crash).
fn become_worker(
    state: &mut StateDir,
    marker: &Marker,
    role: crate::role_change::NewRole,
) -> Result<(), DaemonError> {
    // The marker first: the CA has decided, and a worker starts with a
    // manager's certificate too (its renewal then gives a worker's).
    state.create(Marker {
        role: NodeKind::Worker,
        raft_id: 0,
        joined: false,
        ..marker.clone()
    })?;
    role.certificates
        .write(&state.path().join(CERTIFICATES_DIR))?;
    state
        .save_managers(&role.managers)
        .map_err(|e| DaemonError::Agent(format!("saving the managers' addresses: {e}")))?;
    match std::fs::remove_dir_all(state.raft_dir()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(DaemonError::StateDir(StateDirError::Io {
                path: state.raft_dir().display().to_string(),
                source,
            }))
        }
    }
    eprintln!(
        "shoal daemon: node {} was demoted: it goes on as a worker",
        marker.node_id
    );
    Ok(())
}

/// How often a manager looks whether the cluster's election timeout
/// changed.
const ELECTION_TIMEOUT_LOOK: Duration = Duration::from_secs(2);

/// Keeps the cluster's election timeout in the state dir, for the next
/// start (openraft takes its timing once, when it starts).
async fn follow_election_timeout(
    replica: Arc<Replica>,
    state_dir: PathBuf,
    mut saved: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        let wanted = replica
            .store()
            .view()
            .cluster()
            .and_then(|c| c.spec.as_ref())
            .and_then(|s| s.raft)
            .map(|r| r.election_timeout_ms)
            .filter(|ms| *ms != 0)
            .unwrap_or(shoal_raft::DEFAULT_ELECTION_TIMEOUT_MS);
        if wanted != saved {
            match crate::state_dir::save_election_timeout_in(&state_dir, wanted) {
                Ok(()) => {
                    tracing::info!(
                        from_ms = saved,
                        to_ms = wanted,
                        "the cluster's election timeout changed; this manager takes it when it next starts"
                    );
                    saved = wanted;
                }
                Err(e) => tracing::warn!(error = %e, "saving the election timeout failed"),
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(ELECTION_TIMEOUT_LOOK) => {}
        }
    }
}

/// Between two tries of this manager's own record.
const RECORD_RETRY: Duration = Duration::from_secs(1);

/// Keeps this manager's node object describing it as it is now (its
/// machine, the address it advertises), once: retried while no leader
/// takes the write, until it is written or the daemon stops.
async fn record_self(
    replica: Arc<Replica>,
    marker: Marker,
    advertise: String,
    description: shoal_api::NodeDescription,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        let update = replica
            .store()
            .view()
            .node(&marker.node_id)
            .and_then(|node| {
                let mut updated = node.clone();
                updated.description = Some(description.clone());
                let status = updated.manager_status.get_or_insert_with(Default::default);
                status.raft_id = marker.raft_id;
                status.addr = advertise.clone();
                (&updated != node).then_some(updated)
            });
        let Some(update) = update else {
            if replica.store().view().node(&marker.node_id).is_some() {
                return;
            }
            // Not in this store (yet): looked for again.
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(RECORD_RETRY) => continue,
            }
        };
        let written = replica
            .propose(Transaction {
                leader_term: 0,
                actions: vec![StoreAction {
                    kind: store_action::Kind::Update as i32,
                    target: Some(update.into()),
                }],
                timestamp_ms: 0,
            })
            .await;
        match written {
            Ok(_) => return,
            Err(e) => tracing::debug!(error = %e, "recording this manager failed; retrying"),
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(RECORD_RETRY) => {}
        }
    }
}

/// Resolves once this replica's store holds every write committed, and
/// node `node_id` in it (a joined manager has received the store from the
/// leader). Tried again while no leader takes the barrier; the leader's
/// refusal of a removed node ends it.
async fn caught_up(replica: &Replica, node_id: &str) -> Result<(), String> {
    loop {
        match replica.barrier().await {
            Ok(_) if replica.store().view().node(node_id).is_some() => return Ok(()),
            Ok(_) => {}
            Err(shoal_raft::ProposeError::Removed { message }) => return Err(message),
            Err(e) => tracing::info!(error = %e, "waiting for the store to catch up"),
        }
        tokio::time::sleep(RECORD_RETRY).await;
    }
}

/// Turns true at the first SIGTERM or SIGINT.
fn shutdown_watch() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = tx.send(true);
        // Held, so the watch never reads as closed.
        std::future::pending::<()>().await;
    });
    rx
}

pub(crate) async fn shutdown_signal() {
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
    raft_id: u64,
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
        raft_id,
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
                let (root, tokens) = new_root_ca(&cluster.id)?;
                updated.root_ca = Some(root);
                updated.join_tokens = Some(tokens);
                actions.push(StoreAction {
                    kind: store_action::Kind::Update as i32,
                    target: Some(updated.into()),
                });
            }
            // One made before join tokens: the CA it has makes them.
            Some(cluster) if cluster.join_tokens.is_none() => {
                let mut updated = cluster.clone();
                let root = shoal_manager::certificate_authority::root_of(cluster).map_err(|e| {
                    DaemonError::Bootstrap {
                        what: "cluster's join tokens",
                        message: e.message().to_string(),
                    }
                })?;
                updated.join_tokens =
                    Some(new_join_tokens(&root).map_err(|e| DaemonError::Bootstrap {
                        what: "cluster's join tokens",
                        message: e.to_string(),
                    })?);
                actions.push(StoreAction {
                    kind: store_action::Kind::Update as i32,
                    target: Some(updated.into()),
                });
            }
            Some(_) => {}
            None => {
                let (root, tokens) = new_root_ca(cluster_id)?;
                actions.push(create(Cluster {
                    id: cluster_id.to_string(),
                    root_ca: Some(root),
                    join_tokens: Some(tokens),
                    spec: Some(ClusterSpec {
                        annotations: Some(Annotations {
                            name: "default".into(),
                            labels: Default::default(),
                        }),
                        orchestration: Some(OrchestrationConfig {
                            task_history_retention_limit: DEFAULT_TASK_HISTORY,
                            max_replicas_per_service:
                                shoal_manager::DEFAULT_MAX_REPLICAS_PER_SERVICE,
                            max_replicas_total: shoal_manager::DEFAULT_MAX_REPLICAS_TOTAL,
                            max_new_tasks_per_pass: shoal_manager::DEFAULT_MAX_NEW_TASKS_PER_PASS,
                            dynamic_ports: Some(shoal_api::PortRange {
                                first: shoal_api::task_ports::DEFAULT_DYNAMIC_PORTS.0,
                                last: shoal_api::task_ports::DEFAULT_DYNAMIC_PORTS.1,
                            }),
                        }),
                        dispatcher: Some(DispatcherConfig {
                            heartbeat_period_ms: DEFAULT_HEARTBEAT_MS,
                        }),
                        ca: None,
                        raft: None,
                    }),
                    ..Default::default()
                }));
            }
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
            leader_term: 0,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(addr: &str) -> SocketAddr {
        addr.parse().unwrap()
    }

    #[test]
    fn the_advertised_address_is_the_given_one_with_the_bound_port_when_it_names_none() {
        let at = bound("0.0.0.0:4242");
        assert_eq!(advertised(at, Some("10.0.0.1")).unwrap(), "10.0.0.1:4242");
        assert_eq!(
            advertised(at, Some("10.0.0.1:5000")).unwrap(),
            "10.0.0.1:5000"
        );
        let refused = advertised(at, Some("my-host")).unwrap_err().to_string();
        assert!(
            refused.contains("--advertise-addr my-host") && refused.contains("IP address"),
            "{refused}"
        );
    }

    #[test]
    fn without_one_it_is_the_listen_address_or_a_routable_one_for_all_interfaces() {
        assert_eq!(
            advertised(bound("127.0.0.2:7"), None).unwrap(),
            "127.0.0.2:7"
        );
        let chosen: SocketAddr = advertised(bound("0.0.0.0:4242"), None)
            .unwrap()
            .parse()
            .unwrap();
        assert!(!chosen.ip().is_unspecified(), "{chosen}");
        assert_eq!(chosen.port(), 4242);
        assert_eq!(local_dial(bound("0.0.0.0:9")), "127.0.0.1:9");
        assert_eq!(local_dial(bound("10.1.2.3:9")), "10.1.2.3:9");
    }
}
