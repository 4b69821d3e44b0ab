//! The Shoal daemon: one node of a cluster.
//!
//! `shoal daemon` opens (or creates) a state dir and runs the node in it.
//! A manager starts its raft replica of the store, makes sure the cluster
//! and this node are recorded, serves the control API on a unix socket
//! inside the state dir and every node-to-node service on its one TLS port
//! ([`node_listener`]), and runs the leader's components
//! (`shoal_manager::leader`) beside its own agent. A worker ([`worker_node`])
//! joined with a token ([`join`]) and runs only its agent, which reaches the
//! managers over mutual TLS exactly as a manager's own agent does. A manager
//! exits non-zero when raft can no longer write (a full disk), naming why.

mod certificates;
mod daemon;
mod host;
mod join;
mod local_node;
mod manager_renewal;
mod node_listener;
mod renewal;
mod role_change;
mod state_dir;
mod worker_node;

pub use certificates::{CertificatesError, NodeCertificates, CERTIFICATES_DIR};
pub use daemon::{run, DaemonConfig, DaemonError, JoinConfig, DEFAULT_PORT};
pub use host::describe_host;
pub use join::JoinError;
pub use state_dir::{Marker, NodeKind, StateDir, StateDirError, SOCKET_FILE};
