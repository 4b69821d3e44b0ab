//! openraft's type configuration for Shoal.

use serde::{Deserialize, Serialize};
use shoal_store::TxnError;
use std::io::Cursor;

/// The data of one normal log entry: a protobuf-encoded [`shoal_api::Batch`].
/// It stays encoded from the proposer to the disk and back, so the hot path
/// never goes through serde.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub batch: Vec<u8>,
}

impl std::fmt::Display for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "batch of {} bytes", self.batch.len())
    }
}

/// What applying one entry gave: one result per transaction, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub results: Vec<Result<(), TxnError>>,
}

openraft::declare_raft_types!(
    /// Shoal's raft types.
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = crate::runtime::SeededRuntime,
);
