//! Replication of the store through raft (DESIGN.md §3).
//!
//! Writers hand a [`shoal_api::Transaction`] to the [`Proposer`]; it packs every
//! transaction that waits while one raft write is in flight into the next log
//! entry (group commit), so one fsync acknowledges many writes. openraft orders
//! and replicates the entries; [`LogStore`] keeps the log and the vote in redb,
//! fsynced before openraft counts an entry as written; [`StateMachine`] applies
//! committed entries to the in-memory [`shoal_store::Store`] and keeps its
//! snapshots on disk. [`Replica`] ties them together for one manager.
//!
//! # Guarantees
//! - A write is acknowledged only after its entry is on disk (fsync) and
//!   applied, so it survives a crash of the process at any moment.
//! - Each transaction is checked against the versions it read when its entry
//!   is applied, in log order: a conflict fails that transaction alone.

mod codec;
mod forward;
mod lead;
mod leader_term;
mod log_store;
mod long_work;
mod network;
mod proposer;
mod refound;
mod replica;
mod runtime;
mod state_machine;
mod types;

pub use lead::BEAT as LEAD_BEAT;
pub use leader_term::LeaderTerm;
pub use log_store::LogStore;
pub use long_work::long_work;
pub use network::{Network, PeerTls, RaftService};
pub use openraft::ServerState;
pub use proposer::{ProposeError, Proposer, ProposerConfig, MAX_ENTRY_BYTES};
pub use refound::{refound, Origin};
pub use replica::{
    raft_timing, Members, OnCreate, Replica, ReplicaConfig, ReplicaError,
    DEFAULT_ELECTION_TIMEOUT_MS, MAX_ELECTION_TIMEOUT_MS, MIN_ELECTION_TIMEOUT_MS,
};
pub use runtime::{seed_elections, SeededRuntime};
pub use state_machine::StateMachine;
pub use types::{Applied, Proposal, TypeConfig};

/// The raft handle type for Shoal's type config.
pub type Raft = openraft::Raft<TypeConfig>;
