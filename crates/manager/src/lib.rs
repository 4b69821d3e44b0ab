//! Shoal's manager: the components that run on manager nodes (DESIGN.md §3).
//!
//! Every component is a reconciler over the store, and they talk to each
//! other only through it. Each folder is one component; its module doc says
//! what it reconciles or serves and which fields it owns (DESIGN.md §2):
//!
//! | module | what it is | owns |
//! |---|---|---|
//! | [`controlapi`] | the control API: a transport-free core, one file per kind of object, and the gRPC adapter ([`controlapi::grpc`]) | every `spec` |
//! | [`orchestrator`] | replicated and global services and jobs, the restart supervisor, the constraint enforcer, the task reaper | task creation, `desired_state` |
//! | [`allocator`] | host-published ports; NEW → PENDING | task `endpoint` |
//! | [`scheduler`] | filters, search, batching; PENDING → ASSIGNED | task `node_id` |
//! | `dispatcher` | agents' sessions, heartbeats, assignments, status reports | node `status`, task `status` |
//! | [`certificate_authority`] | joining with a token, renewing node certificates | `root_ca`, `join_tokens`, a joining node's creation |
//! | [`authorization`] | who may call which method on the node listener, from the peer's certificate | — |
//! | [`reconciler`] | the loop every reconciler runs in: observe, decide, propose, with backoff | — |
//! | [`leader`] | starts the leader-only components together (daemon and simulator alike) | — |
//! | [`leadership`] | runs them while this manager leads, and the gate agents reach the dispatcher through | — |
//! | [`membership`] | raft membership from the store's managers, one change at a time; managers' status | the raft group, `manager_status` (leader, reachability) |
//!
//! [`Limits`] are the cluster's bounds on what one request may ask for.

pub mod allocator;
pub mod authorization;
pub mod certificate_authority;
mod constraint;
pub mod controlapi;
mod dispatcher;
mod identity;
pub mod leader;
pub mod leadership;
mod limits;
pub mod managers;
pub mod membership;
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
pub use dispatcher::log_broker::{LogSubscriber, Published, SubscribeError};
pub use dispatcher::{Dispatcher, LogBroker, LogPublishing, HEARTBEAT_TTL_PERIODS};
pub use identity::new_object_id;
pub use limits::{
    Limits, DEFAULT_MAX_NEW_TASKS_PER_PASS, DEFAULT_MAX_REPLICAS_PER_SERVICE,
    DEFAULT_MAX_REPLICAS_TOTAL,
};
