//! The one place where the manager's errors become gRPC statuses. The message
//! is what the CLI prints after `Error: `, so it must stand on its own.

use shoal_raft::ProposeError;
use shoal_store::{LookupError, TxnError};
use tonic::{Code, Status};

use crate::validate::InvalidSpec;

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
    #[error("{0}")]
    Internal(String),
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let code = match &e {
            ApiError::Invalid(_) => Code::InvalidArgument,
            ApiError::Lookup(LookupError::NotFound { .. }) => Code::NotFound,
            ApiError::Lookup(LookupError::Ambiguous { .. }) => Code::InvalidArgument,
            ApiError::Propose(ProposeError::Txn(t)) => match t {
                TxnError::NotFound { .. } => Code::NotFound,
                TxnError::Conflict { .. } => Code::Aborted,
                TxnError::AlreadyExists { .. } | TxnError::NameInUse { .. } => Code::AlreadyExists,
                TxnError::Invalid(_) => Code::InvalidArgument,
                TxnError::MissingReference { .. } | TxnError::InUse { .. } => {
                    Code::FailedPrecondition
                }
            },
            ApiError::Propose(ProposeError::TooLarge { .. }) => Code::InvalidArgument,
            ApiError::Propose(_) => Code::Unavailable,
            ApiError::Refused(_) => Code::FailedPrecondition,
            ApiError::Internal(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}
