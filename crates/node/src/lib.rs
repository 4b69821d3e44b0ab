//! The Shoal daemon: one node of a cluster.
//!
//! `shoal daemon` opens (or creates) a state dir, starts the node's raft
//! replica of the store, makes sure the cluster and this node are recorded,
//! and serves the control API on a unix socket inside the state dir. The
//! agent and the reconcilers join it in later issues.

mod daemon;
mod host;
mod state_dir;

pub use daemon::{run, DaemonConfig, DaemonError};
pub use host::describe_host;
pub use state_dir::{StateDir, StateDirError, SOCKET_FILE};
