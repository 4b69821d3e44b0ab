//! Everything a control API call can fail with. The message is what the CLI
//! prints after `Error: `, so it must stand on its own; the gRPC adapter maps
//! each kind to a status code in one place ([`super::grpc`]).

use shoal_raft::ProposeError;
use shoal_store::LookupError;

use crate::controlapi::InvalidSpec;

/// Everything a control API call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Invalid(#[from] InvalidSpec),
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error(transparent)]
    Propose(#[from] ProposeError),
    /// The request is well-formed but the cluster's state forbids it.
    #[error("{0}")]
    Refused(String),
    /// The manager cannot answer now (the cluster is still being created).
    #[error("{0}")]
    Unavailable(String),
    /// A watch fell behind or the store closed.
    #[error(transparent)]
    Watch(#[from] shoal_store::WatchError),
    #[error("{0}")]
    Internal(String),
}
