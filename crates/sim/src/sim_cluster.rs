//! A whole cluster in one process: a real manager (store, raft with its log
//! fsynced in redb, the reconcilers, the dispatcher, the control API on a
//! unix socket) and N real agents on fake drivers, each with a real
//! dispatcher session.
//!
//! The agents run on a tokio runtime of their own ([`SimNodes`]). Nodes can
//! be killed, restarted, cut off and reconnected, and the cluster polled
//! through the store.

use rand::SeedableRng;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_api::control_client::ControlClient;
use shoal_api::{
    object, store_action, watch_event, Annotations, Cluster, ClusterSpec, DispatcherConfig,
    NodeDescription, OrchestrationConfig, Platform, Resources, StoreAction, Task, Transaction,
};
use shoal_manager::controlapi::grpc::GrpcControl;
use shoal_manager::{ControlApi, ControlConfig};
use shoal_raft::{Replica, ReplicaConfig};
use shoal_store::{Event, Tables, WatchStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::fake_executor::{Machine, TaskBehaviour};
use crate::sim_nodes::{DispatcherAt, SimNodes};

/// Largest control API message, both ways.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// How to build the simulated cluster.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub nodes: usize,
    pub heartbeat_period_ms: u64,
    /// How every node's tasks behave.
    pub tasks: TaskBehaviour,
    pub seed: u64,
    /// Each node's CPU, in nano-CPUs, and memory, in bytes.
    pub node_nano_cpus: i64,
    pub node_memory_bytes: i64,
    /// Log entries between raft snapshots.
    pub snapshot_interval_entries: u64,
    /// How the agents reach the manager.
    pub transport: SimTransport,
}

/// How simulated agents reach the manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SimTransport {
    /// As a daemon's agents do: TCP, mutual TLS, a node certificate each,
    /// the authorization layer.
    Tls,
    /// TCP without TLS or authorization (for comparison only: no daemon
    /// opens a plaintext port).
    Tcp,
    /// A unix socket, no TLS.
    Unix,
}

impl SimConfig {
    /// The agent of node `i` of this cluster, reaching the dispatcher
    /// through `dispatcher`.
    pub fn agent(&self, i: usize, dispatcher: shoal_agent::Connector) -> shoal_agent::AgentConfig {
        shoal_agent::AgentConfig {
            node_id: node_id(i),
            description: NodeDescription {
                hostname: node_id(i),
                platform: Some(Platform {
                    os: "linux".into(),
                    architecture: "x86_64".into(),
                }),
                resources: Some(Resources {
                    pids: 0,
                    nano_cpus: self.node_nano_cpus,
                    memory_bytes: self.node_memory_bytes,
                }),
                ..Default::default()
            },
            dispatcher,
        }
    }

    /// The machine of node `i`: nothing runs on it yet; its own seed.
    pub fn machine(&self, i: usize) -> Machine {
        let seed = self.seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
        Machine {
            behaviour: self.tasks,
            workloads: Default::default(),
            rng: Arc::new(std::sync::Mutex::new(rand::rngs::StdRng::seed_from_u64(
                seed,
            ))),
            next_handle: Arc::new(std::sync::atomic::AtomicU32::new(1)),
        }
    }
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            nodes: 3,
            heartbeat_period_ms: 1_000,
            tasks: TaskBehaviour::default(),
            seed: 1,
            node_nano_cpus: 64_000_000_000,
            node_memory_bytes: 256 << 30,
            snapshot_interval_entries: 10_000,
            transport: SimTransport::Tls,
        }
    }
}

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("the state directory: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Replica(#[from] shoal_raft::ReplicaError),
    #[error(transparent)]
    Transport(#[from] shoal_api::transport::TransportError),
    #[error("recording the cluster: {0}")]
    Bootstrap(String),
    #[error("waited {waited:?} for {what}")]
    Timeout { what: String, waited: Duration },
}

/// The running cluster.
pub struct SimCluster {
    _dir: tempfile::TempDir,
    control_socket: PathBuf,
    dispatcher: DispatcherAt,
    replica: Arc<Replica>,
    stop: watch::Sender<bool>,
    manager: JoinSet<()>,
    nodes: SimNodes,
}

/// The id of simulated node `i`.
pub fn node_id(i: usize) -> String {
    format!("sim-node-{i:05}")
}

impl SimCluster {
    /// Starts the manager and every agent; returns once every node is READY.
    pub async fn start(config: SimConfig) -> Result<SimCluster, SimError> {
        // Raft's election timeouts replay from the run's seed too.
        shoal_raft::seed_elections(config.seed);
        let dir = tempfile::Builder::new().prefix("shoal-sim-").tempdir()?;
        let mut replica_config =
            ReplicaConfig::new(dir.path().join("raft"), 1, "127.0.0.1:0".to_string());
        replica_config.snapshot_interval_entries = config.snapshot_interval_entries;
        std::fs::create_dir_all(&replica_config.dir)?;
        let replica = Arc::new(Replica::open(replica_config, true).await?);
        replica.wait_leader(Duration::from_secs(30)).await?;
        // The one manager leads from here on, in this term.
        let term = shoal_raft::LeaderTerm::current(Arc::clone(&replica))
            .ok_or(shoal_raft::ReplicaError::NoLeader { waited_ms: 30_000 })?;
        let root = if config.transport == SimTransport::Tls {
            Some(crate::sim_pki::new_root(CLUSTER_ID)?)
        } else {
            None
        };
        record_cluster(
            &replica,
            config.heartbeat_period_ms,
            root.as_ref().map(|(_, stored)| stored.clone()),
        )
        .await?;

        let (stop, stop_rx) = watch::channel(false);
        // Every id the manager makes comes from the run's seed.
        let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
        let (mut manager, logs, dispatcher) = match &root {
            Some((ca, _)) => {
                let (mut manager, logs, routes) = leader_routes(&term, &stop_rx, &mut rng);
                let ids: Vec<String> = (0..config.nodes).map(node_id).collect();
                let tls = crate::sim_pki::start(
                    &replica,
                    ca,
                    CLUSTER_ID,
                    &ids,
                    routes,
                    stop_rx.clone(),
                    &mut manager,
                )
                .await?;
                (manager, logs, DispatcherAt::Tls(tls))
            }
            None if config.transport == SimTransport::Tcp => {
                let (mut manager, logs, routes) = leader_routes(&term, &stop_rx, &mut rng);
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let addr = listener.local_addr()?;
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                let mut server_stop = stop_rx.clone();
                manager.spawn(async move {
                    let _ = tonic::transport::Server::builder()
                        .tcp_nodelay(true)
                        .add_routes(routes)
                        .serve_with_incoming_shutdown(incoming, async move {
                            let _ = server_stop.wait_for(|s| *s).await;
                        })
                        .await;
                });
                (manager, logs, DispatcherAt::Tcp(addr))
            }
            None => {
                let socket = dir.path().join("dispatcher.sock");
                let (manager, logs) = shoal_manager::leader::start_on_unix_socket(
                    &term, &socket, &stop_rx, &mut rng,
                )?;
                (manager, logs, DispatcherAt::Unix(socket))
            }
        };
        let control_socket = dir.path().join("shoal.sock");
        let incoming = shoal_api::transport::listen_unix(&control_socket)?;
        let control = ControlApi::new(
            Arc::clone(&replica),
            ControlConfig {
                node_id: String::new(),
                logs,
                leader_dial: None,
            },
            rand::rngs::StdRng::seed_from_u64(rand::Rng::gen(&mut rng)),
        );
        let mut server_stop = stop_rx.clone();
        manager.spawn(async move {
            let service =
                GrpcControl::server(Arc::new(control), MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = server_stop.wait_for(|s| *s).await;
                })
                .await;
        });

        let nodes = SimNodes::start(&config, &dispatcher)?;
        let cluster = SimCluster {
            _dir: dir,
            control_socket,
            dispatcher,
            replica,
            stop,
            manager,
            nodes,
        };
        let expected = config.nodes;
        cluster
            .wait_for("every node READY", Duration::from_secs(300), |view| {
                view.nodes().filter(|n| is_ready(n)).count() == expected
            })
            .await?;
        Ok(cluster)
    }

    /// A client of the control API, as the CLI would use.
    pub fn control(&self) -> ControlClient<Channel> {
        ControlClient::new(shoal_api::transport::connect_unix(&self.control_socket))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub fn control_socket(&self) -> &Path {
        &self.control_socket
    }

    /// Where the dispatcher listens: agents outside this cluster (another
    /// process) connect here.
    pub fn dispatcher(&self) -> &DispatcherAt {
        &self.dispatcher
    }

    pub fn node_id(&self, i: usize) -> String {
        node_id(i)
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The workloads node `i` runs right now: (service, slot).
    pub fn running_on(&self, i: usize) -> Vec<(String, u64)> {
        self.nodes.running_on(i)
    }

    /// Stops node `i` as a crash would: no goodbye, its workloads gone.
    pub async fn kill(&mut self, i: usize) {
        self.nodes.kill(i).await;
    }

    /// Starts node `i`'s agent again after [`SimCluster::kill`]: nothing
    /// runs on it, and its record says what ran before the crash.
    pub fn restart(&mut self, i: usize) {
        self.nodes.restart(i);
    }

    /// Cuts node `i` off the manager (it keeps running its tasks) or joins
    /// it again.
    pub fn set_connected(&self, i: usize, connected: bool) {
        self.nodes.set_connected(i, connected);
    }

    /// Polls the store until `done` holds; returns how long it took.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Tables) -> bool,
    ) -> Result<Duration, SimError> {
        let start = Instant::now();
        let mut changes = self.replica.store().watch();
        loop {
            changes.drain();
            if done(&self.replica.store().view()) {
                return Ok(start.elapsed());
            }
            let left = time_left(what, timeout, start)?;
            // A change, or a look again after a while (time-based moves such
            // as a node going DOWN change the store too, so this is a bound,
            // not a poll interval anything depends on).
            let _ =
                tokio::time::timeout(left.min(Duration::from_millis(200)), changes.next()).await;
        }
    }

    /// Waits until exactly `target` tasks satisfy `counts`; returns how long
    /// it took.
    pub async fn wait_for_tasks(
        &self,
        what: &str,
        timeout: Duration,
        target: usize,
        counts: impl Fn(&Task) -> bool,
    ) -> Result<Duration, SimError> {
        let (took, _) = self
            .follow_tasks(what, timeout, counts, |matching, _| matching == target)
            .await?;
        Ok(took)
    }

    /// Follows how many tasks satisfy `counts` after each commit until
    /// `done` (given that count and the store) holds; returns how long it
    /// took and the fewest that satisfied `counts` after any commit on the
    /// way. Follows the store's changes task by task instead of reading
    /// every task after each commit, so the waiting does not slow the
    /// cluster it measures.
    pub async fn follow_tasks(
        &self,
        what: &str,
        timeout: Duration,
        counts: impl Fn(&Task) -> bool,
        done: impl Fn(usize, &Tables) -> bool,
    ) -> Result<(Duration, usize), SimError> {
        let start = Instant::now();
        let (mut matching, mut changes) = self.tasks_matching(&counts);
        let mut fewest = matching.len();
        loop {
            fewest = fewest.min(matching.len());
            if done(matching.len(), &self.replica.store().view()) {
                return Ok((start.elapsed(), fewest));
            }
            let left = time_left(what, timeout, start)?;
            let Ok(next) = tokio::time::timeout(left, changes.changed()).await else {
                continue;
            };
            // Read in place: copying every change would slow what is measured.
            let mut commit = 0;
            let in_step = next.is_ok()
                && changes.drain_with(u64::MAX, |event| {
                    if let Event::Change {
                        action,
                        object,
                        version,
                        ..
                    } = event
                    {
                        // A commit's changes all applied: count.
                        if *version != commit {
                            fewest = fewest.min(matching.len());
                            commit = *version;
                        }
                        if let Some(object::Kind::Task(t)) = &object.kind {
                            if *action != watch_event::Action::Remove && counts(t) {
                                matching.insert(t.id.clone());
                            } else {
                                matching.remove(&t.id);
                            }
                        }
                    }
                });
            if !in_step {
                (matching, changes) = self.tasks_matching(&counts);
            }
        }
    }

    /// The tasks that satisfy `counts` now, and every change after.
    fn tasks_matching(&self, counts: impl Fn(&Task) -> bool) -> (HashSet<String>, WatchStream) {
        let view = self.replica.store().view();
        let changes = self.replica.store().watch();
        let matching = view
            .tasks_sharing_specs()
            .filter(|(t, _)| counts(t))
            .map(|(t, _)| t.id)
            .collect();
        (matching, changes)
    }

    /// Reads the store.
    pub fn view<T>(&self, f: impl FnOnce(&Tables) -> T) -> T {
        f(&self.replica.store().view())
    }

    /// Stops every agent and the manager.
    pub async fn shutdown(mut self) {
        self.nodes.stop().await;
        let _ = self.stop.send(true);
        while self.manager.join_next().await.is_some() {}
        self.replica.shutdown().await;
    }
}

pub fn is_ready(node: &shoal_api::Node) -> bool {
    node.status.as_ref().map(|s| s.state) == Some(shoal_api::node_status::State::Ready as i32)
}

/// The simulated cluster's id.
const CLUSTER_ID: &str = "sim-cluster";

async fn record_cluster(
    replica: &Replica,
    heartbeat_period_ms: u64,
    root_ca: Option<shoal_api::RootCa>,
) -> Result<(), SimError> {
    let cluster = Cluster {
        id: CLUSTER_ID.into(),
        root_ca,
        spec: Some(ClusterSpec {
            annotations: Some(Annotations {
                name: "default".into(),
                labels: Default::default(),
            }),
            orchestration: Some(OrchestrationConfig {
                task_history_retention_limit: 5,
                ..Default::default()
            }),
            dispatcher: Some(DispatcherConfig {
                heartbeat_period_ms,
            }),
            ca: None,
            raft: None,
        }),
        ..Default::default()
    };
    replica
        .propose(Transaction {
            leader_term: 0,
            actions: vec![StoreAction {
                kind: store_action::Kind::Create as i32,
                target: Some(cluster.into()),
            }],
            timestamp_ms: 0,
        })
        .await
        .map_err(|e| SimError::Bootstrap(e.to_string()))?;
    Ok(())
}

/// What is left of `timeout` since `start`, or the timeout error for `what`.
fn time_left(what: &str, timeout: Duration, start: Instant) -> Result<Duration, SimError> {
    let left = timeout.saturating_sub(start.elapsed());
    if left.is_zero() {
        return Err(SimError::Timeout {
            what: what.to_string(),
            waited: timeout,
        });
    }
    Ok(left)
}

/// The leader's components over `replica`, and the dispatcher and log
/// broker as routes for a transport to serve.
fn leader_routes(
    term: &shoal_raft::LeaderTerm,
    stop: &watch::Receiver<bool>,
    rng: &mut rand::rngs::StdRng,
) -> (
    tokio::task::JoinSet<()>,
    Arc<shoal_manager::LogBroker>,
    tonic::service::Routes,
) {
    let logs = Arc::new(shoal_manager::LogBroker::default());
    let leader = shoal_manager::leader::start(term, stop, rng, Arc::clone(&logs));
    let routes = tonic::service::Routes::new(
        shoal_api::dispatcher_server::DispatcherServer::from_arc(leader.dispatcher),
    )
    .add_service(shoal_manager::LogPublishing::server(Arc::clone(&logs)));
    (leader.tasks, logs, routes)
}
