//! Shoal's manager: the components that run on manager nodes.
//!
//! Today this is the control API ([`ControlApi`]), the only writer of every
//! object's `spec` (DESIGN.md §2). It validates what users declare, turns it
//! into store transactions carrying the versions it read, and proposes them
//! through raft; it never changes state itself. The reconcilers of DESIGN.md
//! §3 (orchestrators, allocator, scheduler, dispatcher) join this crate, each
//! in its own module, talking to the others only through the store.

pub mod allocator;
mod constraint;
pub mod controlapi;
mod dispatcher;
mod identity;
pub mod leader;
mod limits;
pub mod orchestrator;
pub mod reconciler;
pub mod scheduler;

/// Actions proposed in one transaction at most by a reconciler pass.
pub const MAX_ACTIONS_PER_PASS: usize = 1_000;

pub use constraint::{Constraint, ConstraintError, Operator};
pub use controlapi::ApiError;
pub use controlapi::{
    validate_cluster_spec, validate_network_spec, validate_node_spec, validate_service_spec,
    InvalidSpec,
};
pub use controlapi::{ControlApi, ControlConfig};
pub use dispatcher::{Dispatcher, HEARTBEAT_TTL_PERIODS};
pub use identity::new_object_id;
pub use limits::{
    Limits, DEFAULT_MAX_NEW_TASKS_PER_PASS, DEFAULT_MAX_REPLICAS_PER_SERVICE,
    DEFAULT_MAX_REPLICAS_TOTAL,
};
