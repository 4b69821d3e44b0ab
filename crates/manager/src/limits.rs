//! The limits that protect the manager from what one request can ask for
//! (DESIGN.md §4: work is bounded whatever users ask for). They are settings
//! of the cluster spec (`OrchestrationConfig`), 0 meaning the default here,
//! and `shoal cluster update` changes them.
//!
//! A request beyond a limit is refused, naming it; a service within the
//! limits but too large for one pass converges in bounded passes of at most
//! `max_new_tasks_per_pass` new tasks.

use shoal_api::ServiceSpec;
use shoal_store::Tables;

use crate::controlapi::InvalidSpec;

pub use shoal_api::limits::{
    replicas_of, Limits, DEFAULT_MAX_NEW_TASKS_PER_PASS, DEFAULT_MAX_REPLICAS_PER_SERVICE,
    DEFAULT_MAX_REPLICAS_TOTAL,
};

/// Refuses a service spec that asks for more replicas than `limits` allow,
/// given the other services in `view`. `replacing` is the id of the service
/// the spec updates (its old replicas do not count).
pub fn check_service(
    limits: &Limits,
    view: &Tables,
    spec: &ServiceSpec,
    replacing: Option<&str>,
) -> Result<(), InvalidSpec> {
    let asked = replicas_of(spec);
    if asked > limits.max_replicas_per_service {
        return Err(InvalidSpec {
                field: "replicas".into(),
                rule: format!(
                    "must be at most {} (the cluster's max_replicas_per_service; `shoal cluster update --max-replicas-per-service N` raises it), got {asked}",
                    limits.max_replicas_per_service
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
    if total > limits.max_replicas_total {
        return Err(InvalidSpec {
                field: "replicas".into(),
                rule: format!(
                    "{asked} would bring the cluster to {total} replicas, over its max_replicas_total of {} (`shoal cluster update --max-replicas-total N` raises it)",
                    limits.max_replicas_total
                ),
            });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::{Cluster, ClusterSpec, OrchestrationConfig, ServiceMode};

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
        assert!(check_service(&limits, &tables, &spec(10), None).is_ok());
        let e = check_service(&limits, &tables, &spec(11), None).unwrap_err();
        assert_eq!(e.field, "replicas");
        assert!(e.rule.contains("max_replicas_per_service"), "{}", e.rule);
        // A global service asks for no replicas.
        let global = ServiceSpec {
            mode: ServiceMode::Global as i32,
            replicas: Some(1_000),
            ..Default::default()
        };
        assert!(check_service(&limits, &tables, &global, None).is_ok());
    }
}
