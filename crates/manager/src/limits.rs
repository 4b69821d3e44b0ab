//! The limits that protect the manager from what one request can ask for
//! (DESIGN.md §4: work is bounded whatever users ask for). They are settings
//! of the cluster spec (`OrchestrationConfig`), 0 meaning the default here,
//! and `shoal cluster update` changes them.
//!
//! A request beyond a limit is refused, naming it; a service within the
//! limits but too large for one pass converges in bounded passes of at most
//! `max_new_tasks_per_pass` new tasks.

use shoal_api::{Cluster, ServiceSpec};
use shoal_store::Tables;

use crate::controlapi::InvalidSpec;

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
fn replicas_of(spec: &ServiceSpec) -> u64 {
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

    /// Refuses a service spec that asks for more replicas than the limits
    /// allow, given the other services in `view`. `replacing` is the id of
    /// the service the spec updates (its old replicas do not count).
    pub fn check_service(
        &self,
        view: &Tables,
        spec: &ServiceSpec,
        replacing: Option<&str>,
    ) -> Result<(), InvalidSpec> {
        let asked = replicas_of(spec);
        if asked > self.max_replicas_per_service {
            return Err(InvalidSpec {
                field: "replicas".into(),
                rule: format!(
                    "must be at most {} (the cluster's max_replicas_per_service; `shoal cluster update --max-replicas-per-service N` raises it), got {asked}",
                    self.max_replicas_per_service
                ),
            });
        }
        let others: u64 = view
            .services()
            .filter(|s| Some(s.id.as_str()) != replacing)
            .filter_map(|s| s.spec.as_ref())
            .map(replicas_of)
            .sum();
        let total = others.saturating_add(asked);
        if total > self.max_replicas_total {
            return Err(InvalidSpec {
                field: "replicas".into(),
                rule: format!(
                    "{asked} would bring the cluster to {total} replicas, over its max_replicas_total of {} (`shoal cluster update --max-replicas-total N` raises it)",
                    self.max_replicas_total
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::{ClusterSpec, OrchestrationConfig, ServiceMode};

    #[test]
    fn unset_limits_are_the_documented_defaults_and_set_ones_win() {
        assert_eq!(Limits::of(None), Limits::default());
        let cluster = Cluster {
            spec: Some(ClusterSpec {
                orchestration: Some(OrchestrationConfig {
                    max_replicas_per_service: 7,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let limits = Limits::of(Some(&cluster));
        assert_eq!(limits.max_replicas_per_service, 7);
        assert_eq!(limits.max_replicas_total, DEFAULT_MAX_REPLICAS_TOTAL);
        assert_eq!(
            limits.max_new_tasks_per_pass,
            DEFAULT_MAX_NEW_TASKS_PER_PASS
        );
    }

    #[test]
    fn a_service_over_a_limit_is_refused_naming_the_limit() {
        let tables = Tables::default();
        let spec = |replicas: i64| ServiceSpec {
            replicas: Some(replicas),
            ..Default::default()
        };
        let limits = Limits {
            max_replicas_per_service: 10,
            max_replicas_total: 15,
            max_new_tasks_per_pass: 1,
        };
        assert!(limits.check_service(&tables, &spec(10), None).is_ok());
        let e = limits.check_service(&tables, &spec(11), None).unwrap_err();
        assert_eq!(e.field, "replicas");
        assert!(e.rule.contains("max_replicas_per_service"), "{}", e.rule);
        // A global service asks for no replicas.
        let global = ServiceSpec {
            mode: ServiceMode::Global as i32,
            replicas: Some(1_000),
            ..Default::default()
        };
        assert!(limits.check_service(&tables, &global, None).is_ok());
    }
}
