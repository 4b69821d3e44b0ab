//! The Shoal daemon: one node of a cluster.
//!
//! `shoal daemon` opens (or creates) a state dir, starts the node's raft
//! replica of the store, makes sure the cluster and this node are recorded,
//! serves the control API on a unix socket inside the state dir, and runs
//! the leader's components (`shoal_manager::leader`: the reconcilers and the
//! dispatcher) beside this node's agent (`shoal_agent::run` with the process
//! driver), which reaches the dispatcher on a unix socket of its own. It
//! exits non-zero when raft can no longer write (a full disk), naming why.

mod certificates;
mod daemon;
mod host;
mod state_dir;

pub use certificates::{CertificatesError, NodeCertificates, CERTIFICATES_DIR};
pub use daemon::{run, DaemonConfig, DaemonError};
pub use host::describe_host;
pub use state_dir::{StateDir, StateDirError, SOCKET_FILE};
