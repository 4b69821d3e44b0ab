//! Why a transaction or a lookup failed: typed, with what the caller needs to
//! say so in one line.

use serde::{Deserialize, Serialize};

/// Why a committed transaction was not applied. It travels back from the raft
/// state machine to the writer, so it is serializable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum TxnError {
    #[error("{kind} {id} not found")]
    NotFound { kind: String, id: String },
    #[error("{kind} {id} was changed by someone else (you read version {expected}, it is now at {actual}): read it again and retry")]
    Conflict {
        kind: String,
        id: String,
        expected: u64,
        actual: u64,
    },
    #[error("{kind} {id} already exists")]
    AlreadyExists { kind: String, id: String },
    #[error("{kind} name {name:?} is already in use by {kind} {id}")]
    NameInUse {
        kind: String,
        name: String,
        id: String,
    },
    #[error("{kind} {id} refers to {target_kind} {target}, which does not exist")]
    MissingReference {
        kind: String,
        id: String,
        target_kind: String,
        target: String,
    },
    #[error("{kind} {id} is in use by {by_kind} {by}")]
    InUse {
        kind: String,
        id: String,
        by_kind: String,
        by: String,
    },
    #[error("{field}: {rule}")]
    OverLimit { field: String, rule: String },
    #[error("invalid store action: {0}")]
    Invalid(String),
    /// A leader's component decided in `decided_in`, but the entry holding
    /// its transaction was appended in `appended_in`: that leader no longer
    /// leads, and its view may be stale.
    #[error("decided by the leader of term {decided_in}, but written in term {appended_in}: that leader was deposed")]
    StaleTerm { decided_in: u64, appended_in: u64 },
}

/// Why a reference (name, id or id prefix) did not name exactly one object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("{kind} {reference:?} not found")]
    NotFound { kind: String, reference: String },
    #[error("{kind} reference {reference:?} is ambiguous: it matches {matches}")]
    Ambiguous {
        kind: String,
        reference: String,
        matches: String,
    },
}
