//! The limits that protect the manager from what one request can ask for
//! (DESIGN.md §4), as the cluster spec sets them (`OrchestrationConfig`, 0
//! meaning the default here). The control API refuses a request beyond one
//! before it is proposed, naming it; the store refuses again when the
//! transaction is applied, so two requests that each fit cannot together
//! pass a limit.

use crate::{Cluster, ServiceSpec};

/// Replicas one replicated service may ask for, by default.
pub const DEFAULT_MAX_REPLICAS_PER_SERVICE: u64 = 100_000;
/// Replicas of all replicated services together, by default.
pub const DEFAULT_MAX_REPLICAS_TOTAL: u64 = 1_000_000;
/// Tasks the orchestrator creates in one pass, by default.
pub const DEFAULT_MAX_NEW_TASKS_PER_PASS: u64 = 100_000;

/// The limits in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_replicas_per_service: u64,
    pub max_replicas_total: u64,
    pub max_new_tasks_per_pass: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_replicas_per_service: DEFAULT_MAX_REPLICAS_PER_SERVICE,
            max_replicas_total: DEFAULT_MAX_REPLICAS_TOTAL,
            max_new_tasks_per_pass: DEFAULT_MAX_NEW_TASKS_PER_PASS,
        }
    }
}

fn or_default(value: u64, default: u64) -> u64 {
    if value == 0 {
        default
    } else {
        value
    }
}

/// The replicas a spec asks for (a global service's tasks are bounded by
/// the nodes, not by these limits).
pub fn replicas_of(spec: &ServiceSpec) -> u64 {
    spec.replicas_wanted().unwrap_or(0)
}

impl Limits {
    /// The limits a cluster object sets (defaults where it sets none).
    pub fn of(cluster: Option<&Cluster>) -> Limits {
        let d = Limits::default();
        let Some(o) = cluster
            .and_then(|c| c.spec.as_ref())
            .and_then(|s| s.orchestration.as_ref())
        else {
            return d;
        };
        Limits {
            max_replicas_per_service: or_default(
                o.max_replicas_per_service,
                d.max_replicas_per_service,
            ),
            max_replicas_total: or_default(o.max_replicas_total, d.max_replicas_total),
            max_new_tasks_per_pass: or_default(o.max_new_tasks_per_pass, d.max_new_tasks_per_pass),
        }
    }
}
