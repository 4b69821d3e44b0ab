//! One manager's replica of the store: log store, state machine, raft and
//! proposer, opened together from one directory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, Config, ServerState, SnapshotPolicy};
use shoal_api::Transaction;
use shoal_store::Store;

use crate::log_store::{LogStore, OpenError};
use crate::network::Network;
use crate::proposer::{ProposeError, Proposer, ProposerConfig};
use crate::state_machine::{SnapshotLoadError, StateMachine};
use crate::Raft;

const LOG_FILE: &str = "raft.redb";

/// What a new replica does with an empty log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnCreate {
    /// Start a new raft group whose voters are these (raft id → address);
    /// this replica must be among them.
    Bootstrap(BTreeMap<u64, String>),
    /// Wait, empty, for a leader of an existing group to add this replica.
    Join,
}

/// Where and how a replica runs.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// Holds `raft.redb` and `snapshot`.
    pub dir: PathBuf,
    /// This manager's raft id.
    pub raft_id: u64,
    /// Where peers reach this manager's raft service.
    pub addr: String,
    /// Log entries between snapshots; the log is compacted after each.
    pub snapshot_interval_entries: u64,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub proposer: ProposerConfig,
    /// Used only when the replica is created.
    pub on_create: OnCreate,
    /// How this replica dials its peers: mutual TLS with this manager's
    /// certificate (a daemon), or plain TCP when `None` (tests).
    pub peers: Network,
}

impl ReplicaConfig {
    /// Defaults for a manager whose data lives in `dir`: a new replica
    /// bootstraps a group of one.
    pub fn new(dir: PathBuf, raft_id: u64, addr: String) -> ReplicaConfig {
        ReplicaConfig {
            on_create: OnCreate::Bootstrap(BTreeMap::from([(raft_id, addr.clone())])),
            dir,
            raft_id,
            addr,
            snapshot_interval_entries: 10_000,
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            proposer: ProposerConfig::default(),
            peers: Network::default(),
        }
    }
}

/// Why a replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Log(#[from] OpenError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotLoadError),
    #[error("invalid raft configuration: {0}")]
    Config(String),
    #[error("raft failed to start: {0}")]
    Raft(String),
    #[error("cannot create {path}: {source}")]
    Dir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no raft leader after {waited_ms} ms")]
    NoLeader { waited_ms: u64 },
}

/// A running replica.
pub struct Replica {
    raft: Raft,
    store: Arc<Store>,
    proposer: Proposer,
}

impl Replica {
    /// Opens (or with `create`, creates) the replica in `config.dir`. A new
    /// replica becomes the single voter of a new raft group.
    pub async fn open(config: ReplicaConfig, create: bool) -> Result<Replica, ReplicaError> {
        if create {
            std::fs::create_dir_all(&config.dir).map_err(|source| ReplicaError::Dir {
                path: config.dir.display().to_string(),
                source,
            })?;
        }
        let store = Arc::new(Store::new());
        let log = LogStore::open(&config.dir.join(LOG_FILE), create)?;
        let sm = StateMachine::open(&config.dir, Arc::clone(&store))?;
        let raft_config = Config {
            cluster_name: "shoal".into(),
            heartbeat_interval: config.heartbeat_interval_ms,
            election_timeout_min: config.election_timeout_min_ms,
            election_timeout_max: config.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_interval_entries),
            max_in_snapshot_log_to_keep: config.snapshot_interval_entries / 10,
            max_payload_entries: 64,
            ..Config::default()
        }
        .validate()
        .map_err(|e| ReplicaError::Config(e.to_string()))?;
        let raft = Raft::new(
            config.raft_id,
            Arc::new(raft_config),
            config.peers.clone(),
            log,
            sm,
        )
        .await
        .map_err(|e| ReplicaError::Raft(e.to_string()))?;
        if let (true, OnCreate::Bootstrap(members)) = (create, &config.on_create) {
            let members: BTreeMap<u64, BasicNode> = members
                .iter()
                .map(|(id, addr)| (*id, BasicNode::new(addr)))
                .collect();
            raft.initialize(members)
                .await
                .map_err(|e| ReplicaError::Raft(e.to_string()))?;
        }
        let proposer = Proposer::start(raft.clone(), config.proposer.clone());
        Ok(Replica {
            raft,
            store,
            proposer,
        })
    }

    /// Waits until this replica leads and has applied everything committed
    /// before it took over, so its store is current.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<(), ReplicaError> {
        let mut metrics = self.raft.metrics();
        let waited_ms = timeout.as_millis() as u64;
        let result = tokio::time::timeout(timeout, async {
            loop {
                {
                    let m = metrics.borrow_and_update();
                    let caught_up = m.last_applied.map(|l| l.index) >= m.last_log_index;
                    if m.state == ServerState::Leader && caught_up {
                        return;
                    }
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        result.map_err(|_| ReplicaError::NoLeader { waited_ms })?;
        if self.raft.metrics().borrow().state != ServerState::Leader {
            return Err(ReplicaError::NoLeader { waited_ms });
        }
        Ok(())
    }

    /// The replicated store (read side).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The proposer (write side).
    pub fn proposer(&self) -> &Proposer {
        &self.proposer
    }

    /// Proposes one transaction; see [`Proposer::propose`].
    pub async fn propose(&self, txn: Transaction) -> Result<u64, ProposeError> {
        self.proposer.propose(txn).await
    }

    /// Proposes agents' status reports; see [`Proposer::propose_report`].
    pub async fn propose_report(&self, txn: Transaction) -> Result<u64, ProposeError> {
        self.proposer.propose_report(txn).await
    }

    /// The raft handle, for the raft gRPC service and metrics.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Takes a snapshot now and compacts the log behind it.
    pub async fn snapshot_now(&self) -> Result<(), ReplicaError> {
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| ReplicaError::Raft(e.to_string()))
    }

    /// Resolves, with the reason, when raft stopped on its own: a storage
    /// error (a full disk, a failed fsync) ends openraft's core, and the
    /// replica can never write again. The process must then end
    /// (DESIGN.md §4: never a live daemon that can no longer write). Never
    /// resolves after [`Replica::shutdown`].
    ///
    /// # Cancel safety
    /// Cancel safe: it only watches raft's metrics.
    pub async fn failed(&self) -> String {
        let mut metrics = self.raft.metrics();
        loop {
            let state = metrics.borrow_and_update().running_state.clone();
            match state {
                Ok(()) => {}
                Err(openraft::error::Fatal::Stopped) => break,
                Err(fatal) => return fatal.to_string(),
            }
            if metrics.changed().await.is_err() {
                break;
            }
        }
        std::future::pending().await
    }

    /// Stops raft; pending proposals fail with `ShuttingDown`.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}
