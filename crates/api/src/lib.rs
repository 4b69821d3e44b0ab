//! Shoal's object model and gRPC API.
//!
//! Everything a user declares or the cluster observes is one of the objects in
//! `proto/shoal.proto` (DESIGN.md §2): `Cluster`, `Node`, `Service`, `Task`,
//! `Network`. The same messages are the wire format of the control API, the
//! payload of raft entries (`Batch` of `Transaction`s of `StoreAction`s) and the
//! content of snapshots, so there is one definition of each object.

#[allow(clippy::all, missing_docs)]
mod pb {
    tonic::include_proto!("shoal.v1");
}
pub use pb::*;

pub mod backup_file;
pub mod clock;
pub mod enum_name;
pub mod limits;
pub mod log_time;
pub mod mtls;
mod node_removed;
mod node_state;
mod not_leader;
mod object_kind;
mod service_mode;
pub mod signal;
pub mod task_ports;
mod task_state;
mod update_defaults;
pub use task_state::MAX_STATUS_HISTORY;
pub mod transport;

pub use node_removed::{is_node_removed, node_removed};
pub use not_leader::{leader_hint, not_leader};

pub use object_kind::ObjectKind;

/// The version of this build, shown by `shoal version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Shows the certificate's digest, never the key.
impl std::fmt::Debug for RootCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootCa")
            .field("digest", &self.digest)
            .field(
                "key_pem",
                &if self.key_pem.is_empty() {
                    ""
                } else {
                    "(hidden)"
                },
            )
            .finish_non_exhaustive()
    }
}
