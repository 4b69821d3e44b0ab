//! The cluster's replica limits are checked again when an entry is applied:
//! two services that each fit when the control API checked them cannot
//! together pass `max_replicas_total`; a cluster over a lowered limit can
//! still scale down.

use shoal_api::{
    store_action, Annotations, Batch, Cluster, ClusterSpec, Object, OrchestrationConfig, Service,
    ServiceSpec, StoreAction, Transaction,
};
use shoal_store::{Store, TxnError};

fn service(id: &str, replicas: i64, version: u64) -> Service {
    Service {
        id: id.into(),
        meta: Some(shoal_api::Meta {
            version,
            ..Default::default()
        }),
        spec: Some(ServiceSpec {
            annotations: Some(Annotations {
                name: id.into(),
                labels: Default::default(),
            }),
            replicas: Some(replicas),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn cluster(total: u64, version: u64) -> Cluster {
    Cluster {
        id: "c".into(),
        meta: Some(shoal_api::Meta {
            version,
            ..Default::default()
        }),
        spec: Some(ClusterSpec {
            orchestration: Some(OrchestrationConfig {
                max_replicas_total: total,
                max_replicas_per_service: 8,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn apply(
    store: &Store,
    version: u64,
    kind: store_action::Kind,
    object: Object,
) -> Result<(), TxnError> {
    let mut results = store.apply(
        version,
        Batch {
            transactions: vec![Transaction {
                leader_term: 0,
                actions: vec![StoreAction {
                    kind: kind as i32,
                    target: Some(object),
                }],
                timestamp_ms: 0,
            }],
        },
    );
    results.remove(0)
}

#[test]
fn two_services_that_each_fit_cannot_together_pass_the_clusters_total() {
    use store_action::Kind::*;
    let store = Store::new();
    apply(&store, 1, Create, cluster(10, 0).into()).unwrap();
    apply(&store, 2, Create, service("a", 6, 0).into()).unwrap();
    // Checked before proposing against a store without "a", it fit.
    let refused = apply(&store, 3, Create, service("b", 6, 0).into()).unwrap_err();
    assert!(matches!(refused, TxnError::OverLimit { .. }), "{refused:?}");
    assert!(
        refused.to_string().contains("max_replicas_total of 10"),
        "{refused}"
    );
    assert!(
        store.view().service("b").is_none(),
        "nothing of it is written"
    );
    // Per service too.
    let refused = apply(&store, 4, Create, service("c", 9, 0).into()).unwrap_err();
    assert!(
        refused.to_string().contains("max_replicas_per_service"),
        "{refused}"
    );
    apply(&store, 5, Create, service("b", 4, 0).into()).unwrap();

    // The limit lowered below what runs: scaling down still goes through,
    // scaling up does not.
    apply(&store, 6, Update, cluster(5, 1).into()).unwrap();
    apply(&store, 7, Update, service("a", 5, 2).into()).unwrap();
    let refused = apply(&store, 8, Update, service("b", 5, 5).into()).unwrap_err();
    assert!(matches!(refused, TxnError::OverLimit { .. }), "{refused:?}");
    apply(&store, 9, Remove, service("b", 4, 5).into()).unwrap();
}
