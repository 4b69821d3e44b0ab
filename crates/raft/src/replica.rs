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

/// The election timeout when the cluster spec sets none: a follower that
/// hears nothing from its leader for this long campaigns, and a failover
/// after a leader's death takes about this long.
pub const DEFAULT_ELECTION_TIMEOUT_MS: u64 = 350;
/// The shortest and longest election timeouts a cluster may set.
pub const MIN_ELECTION_TIMEOUT_MS: u64 = 100;
pub const MAX_ELECTION_TIMEOUT_MS: u64 = 60_000;

/// Raft's timing for an election timeout of `ms` (the longest a follower
/// waits): timeouts drawn from ¾ of it to all of it, a heartbeat every
/// quarter of it. Returns (heartbeat, min, max).
pub fn raft_timing(ms: u64) -> (u64, u64, u64) {
    let max = ms.clamp(MIN_ELECTION_TIMEOUT_MS, MAX_ELECTION_TIMEOUT_MS);
    (max / 4, max * 3 / 4, max)
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
            heartbeat_interval_ms: raft_timing(DEFAULT_ELECTION_TIMEOUT_MS).0,
            election_timeout_min_ms: raft_timing(DEFAULT_ELECTION_TIMEOUT_MS).1,
            election_timeout_max_ms: raft_timing(DEFAULT_ELECTION_TIMEOUT_MS).2,
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

/// How long a write waits for a leader to be known (an election).
const LEADER_WAIT: Duration = Duration::from_secs(10);
/// How long a write on the leader may wait for a quorum.
const LOCAL_WRITE_WAIT: Duration = Duration::from_secs(30);
/// How long a membership change may take to commit.
const MEMBERSHIP_WAIT: Duration = Duration::from_secs(10);
/// How long a write through a follower waits to be applied here after the
/// leader applied it.
const APPLY_WAIT: Duration = Duration::from_secs(30);

/// The raft group's members as this replica sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    pub voters: std::collections::BTreeSet<u64>,
    pub learners: std::collections::BTreeSet<u64>,
    /// Every member's address.
    pub addrs: BTreeMap<u64, String>,
    /// A membership change is under way (joint consensus, or its log entry
    /// not committed yet).
    pub changing: bool,
}

/// A running replica.
pub struct Replica {
    raft: Raft,
    store: Arc<Store>,
    proposer: Proposer,
    id: u64,
    leader_link: crate::forward::LeaderLink,
    presence: Arc<crate::lead::Presence>,
    following: tokio::task::AbortHandle,
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
        let presence: Arc<crate::lead::Presence> = Arc::default();
        let following = tokio::spawn(crate::lead::follow(
            raft.clone(),
            config.raft_id,
            config.peers.clone(),
            Duration::from_millis(config.election_timeout_max_ms),
            Arc::clone(&presence),
        ))
        .abort_handle();
        Ok(Replica {
            raft,
            store,
            proposer,
            id: config.raft_id,
            leader_link: crate::forward::LeaderLink::new(config.peers.clone()),
            presence,
            following,
        })
    }

    /// openraft's leader lease, in ms: the longest election timeout.
    pub fn lease(&self) -> u64 {
        self.raft.config().election_timeout_max
    }

    /// This replica's raft id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// The leader this replica knows of, and its address.
    pub fn leader(&self) -> Option<(u64, String)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&id)?.addr.clone();
        Some((id, addr))
    }

    /// The members of the raft group, as the last membership entry this
    /// replica has says.
    pub fn members(&self) -> Members {
        let m = self.raft.metrics().borrow().clone();
        let config = m.membership_config.membership();
        let committed =
            m.last_applied.map(|l| l.index) >= m.membership_config.log_id().map(|l| l.index);
        let voters: std::collections::BTreeSet<u64> = config.voter_ids().collect();
        Members {
            learners: config
                .nodes()
                .map(|(id, _)| *id)
                .filter(|id| !voters.contains(id))
                .collect(),
            addrs: config
                .nodes()
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect(),
            changing: config.get_joint_config().len() > 1 || !committed,
            voters,
        }
    }

    /// The voters this replica's own log and snapshot name (read from
    /// raft's state, not its metrics: right after a start, the metrics may
    /// not say yet).
    pub async fn stored_voters(&self) -> std::collections::BTreeSet<u64> {
        self.raft
            .with_raft_state(|st| st.membership_state.effective().voter_ids().collect())
            .await
            .unwrap_or_default()
    }

    /// Waits until this replica's store holds every write committed before
    /// the call: an empty transaction goes through the leader (and is
    /// applied here). A restarted manager re-applies its log only as the
    /// leader commits it again, so until then its store is behind what it
    /// answered before.
    pub async fn barrier(&self) -> Result<u64, ProposeError> {
        self.propose(Transaction {
            leader_term: 0,
            actions: Vec::new(),
            timestamp_ms: 0,
        })
        .await
    }

    /// On the leader: the followers whose streams beat now
    /// ([`crate::lead`]), and this replica.
    pub fn reachable(&self) -> std::collections::BTreeSet<u64> {
        let mut ids: std::collections::BTreeSet<u64> =
            self.presence.reachable().into_iter().collect();
        ids.insert(self.id);
        ids
    }

    /// On the leader: the last log index each member is known to hold
    /// (members that acknowledged nothing yet are not in it).
    pub fn matched(&self) -> BTreeMap<u64, u64> {
        let m = self.raft.metrics().borrow().clone();
        // A member that acknowledged nothing yet is left out: it has
        // caught up with nothing, whatever the log's length.
        m.replication
            .map(|r| {
                r.into_iter()
                    .filter_map(|(id, log)| log.map(|l| (id, l.index)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The last index in this replica's log.
    pub fn last_log_index(&self) -> u64 {
        self.raft.metrics().borrow().last_log_index.unwrap_or(0)
    }

    /// On the leader: adds a learner at `addr`; it receives the log (a
    /// snapshot first when it is far behind) but does not vote.
    pub async fn add_learner(&self, id: u64, addr: &str) -> Result<(), ReplicaError> {
        self.raft
            .add_learner(id, BasicNode::new(addr), false)
            .await
            .map(|_| ())
            .map_err(|e| ReplicaError::Raft(e.to_string()))
    }

    /// On the leader: learner `id` becomes a voter, through joint
    /// consensus; other learners stay learners.
    pub async fn promote(&self, id: u64) -> Result<(), ReplicaError> {
        self.change(openraft::ChangeMembers::AddVoterIds([id].into()))
            .await
    }

    /// On the leader: the voters `ids` leave the group, through joint
    /// consensus.
    pub async fn remove_voters(
        &self,
        ids: std::collections::BTreeSet<u64>,
    ) -> Result<(), ReplicaError> {
        self.change(openraft::ChangeMembers::RemoveVoters(ids))
            .await
    }

    /// On the leader: makes `voters` the voters, through joint consensus;
    /// a member left out, learners included, is removed from the group.
    pub async fn set_voters(
        &self,
        voters: std::collections::BTreeSet<u64>,
    ) -> Result<(), ReplicaError> {
        self.change(openraft::ChangeMembers::ReplaceAllVoters(voters))
            .await
    }

    /// One membership change, waited for at most [`MEMBERSHIP_WAIT`]:
    /// without a quorum it would wait for ever.
    async fn change(
        &self,
        change: openraft::ChangeMembers<u64, BasicNode>,
    ) -> Result<(), ReplicaError> {
        match tokio::time::timeout(MEMBERSHIP_WAIT, self.raft.change_membership(change, false))
            .await
        {
            Ok(Ok(written)) => {
                // The answer can come before the metrics say the change is
                // applied; callers read membership from the metrics
                // (`members`), so they must not see the old config after
                // this returns.
                self.raft
                    .wait(Some(MEMBERSHIP_WAIT))
                    .applied_index_at_least(
                        Some(written.log_id.index),
                        "the membership change is applied",
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| ReplicaError::Raft(e.to_string()))
            }
            Ok(Err(e)) => Err(ReplicaError::Raft(e.to_string())),
            Err(_) => Err(ReplicaError::Raft(format!(
                "the membership change was not committed within {MEMBERSHIP_WAIT:?}"
            ))),
        }
    }

    /// On the leader: member `id` is reached at `addr` from now on.
    pub async fn set_address(&self, id: u64, addr: &str) -> Result<(), ReplicaError> {
        self.change(openraft::ChangeMembers::SetNodes(BTreeMap::from([(
            id,
            BasicNode::new(addr),
        )])))
        .await
    }

    /// On the leader: removes learners that are not voters.
    pub async fn remove_learners(
        &self,
        ids: std::collections::BTreeSet<u64>,
    ) -> Result<(), ReplicaError> {
        self.change(openraft::ChangeMembers::RemoveNodes(ids)).await
    }

    /// On the leader: tells voter `to` to campaign now, so leadership
    /// moves to it; false when it holds no stream to this leader.
    pub fn hand_over(&self, to: u64) -> bool {
        let term = self.raft.metrics().borrow().current_term;
        if !self.presence.hand_over(to, term) {
            return false;
        }
        // The other followers refuse a vote while this leader's heartbeats
        // renew their lease: they pause until the successor has had its
        // chance (it campaigns once a lease has run out).
        self.raft.runtime_config().heartbeat(false);
        let raft = self.raft.clone();
        let pause = Duration::from_millis(self.lease() * 3);
        tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            raft.runtime_config().heartbeat(true);
        });
        true
    }

    pub(crate) fn presence(&self) -> Arc<crate::lead::Presence> {
        Arc::clone(&self.presence)
    }

    /// The leader now, waiting up to [`LEADER_WAIT`] while there is none.
    async fn wait_for_leader(&self) -> Result<(u64, String), ProposeError> {
        let mut metrics = self.raft.metrics();
        let waited = tokio::time::timeout(LEADER_WAIT, async {
            loop {
                {
                    let m = metrics.borrow_and_update();
                    if let Some(id) = m.current_leader {
                        // This replica's own leadership counts once it
                        // has taken it (its state says so).
                        if id != self.id || m.state == ServerState::Leader {
                            if let Some(node) = m.membership_config.membership().get_node(&id) {
                                return Ok((id, node.addr.clone()));
                            }
                        }
                    }
                    if m.running_state.is_err() {
                        return Err(ProposeError::ShuttingDown);
                    }
                }
                if metrics.changed().await.is_err() {
                    return Err(ProposeError::ShuttingDown);
                }
            }
        })
        .await;
        waited.unwrap_or(Err(ProposeError::NoLeader {
            waited_ms: LEADER_WAIT.as_millis() as u64,
        }))
    }

    /// Proposes `txn` here when this replica leads, or through the leader
    /// and then waits until it is applied here too.
    async fn write(&self, txn: Transaction, report: bool) -> Result<u64, ProposeError> {
        let (leader, addr) = self.wait_for_leader().await?;
        if leader == self.id {
            // Bounded: a leader cut off from the others would wait for
            // ever (openraft 0.9 does not time a write out).
            let local = async {
                if report {
                    self.proposer.propose_report(txn).await
                } else {
                    self.proposer.propose(txn).await
                }
            };
            return tokio::time::timeout(LOCAL_WRITE_WAIT, local)
                .await
                .unwrap_or_else(|_| {
                    Err(ProposeError::Unknown {
                        leader: "this manager".into(),
                        message: format!(
                            "no quorum committed the write within {LOCAL_WRITE_WAIT:?}"
                        ),
                    })
                });
        }
        let index = self.leader_link.forward(&addr, &txn, report).await?;
        self.raft
            .wait(Some(APPLY_WAIT))
            .applied_index_at_least(Some(index), "a forwarded write")
            .await
            .map_err(|e| ProposeError::Raft(format!("applying the forwarded write here: {e}")))?;
        Ok(index)
    }

    /// Proposes `txn` here as the leader of `term`, never through another
    /// leader; see [`crate::LeaderTerm`].
    pub(crate) async fn propose_in_term(
        &self,
        term: u64,
        mut txn: Transaction,
        report: bool,
    ) -> Result<u64, ProposeError> {
        {
            let m = self.raft.metrics().borrow().clone();
            if m.state != ServerState::Leader || m.current_term != term {
                return Err(ProposeError::NotLeader {
                    leader: m.current_leader.filter(|id| *id != self.id),
                });
            }
        }
        txn.leader_term = term;
        let local = async {
            if report {
                self.proposer.propose_report(txn).await
            } else {
                self.proposer.propose(txn).await
            }
        };
        tokio::time::timeout(LOCAL_WRITE_WAIT, local)
            .await
            .unwrap_or_else(|_| {
                Err(ProposeError::Unknown {
                    leader: "this manager".into(),
                    message: format!("no quorum committed the write within {LOCAL_WRITE_WAIT:?}"),
                })
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

    /// Proposes one transaction; see [`Proposer::propose`]. On a follower
    /// it goes to the leader, and is answered once applied here.
    pub async fn propose(&self, txn: Transaction) -> Result<u64, ProposeError> {
        self.write(txn, false).await
    }

    /// Proposes agents' status reports; see [`Proposer::propose_report`].
    pub async fn propose_report(&self, txn: Transaction) -> Result<u64, ProposeError> {
        self.write(txn, true).await
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
        self.following.abort();
        let _ = self.raft.shutdown().await;
    }
}
