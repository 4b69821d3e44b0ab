//! References between objects are checked when an entry is applied, in log
//! order, so two writers that each read the other's old world cannot both
//! commit (a service left attached to a network that is gone).

use shoal_api::{
    store_action, Annotations, Batch, Network, NetworkAttachmentConfig, NetworkSpec, Object,
    Service, ServiceSpec, StoreAction, TaskSpec, Transaction,
};
use shoal_store::{Store, TxnError};

fn network(id: &str, version: u64) -> Network {
    Network {
        id: id.into(),
        meta: Some(shoal_api::Meta {
            version,
            ..Default::default()
        }),
        spec: Some(NetworkSpec {
            annotations: Some(Annotations {
                name: id.into(),
                labels: Default::default(),
            }),
            ..Default::default()
        }),
    }
}

fn service_on(id: &str, networks: &[&str], version: u64) -> Service {
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
            task: Some(TaskSpec {
                networks: networks
                    .iter()
                    .map(|n| NetworkAttachmentConfig {
                        target: n.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            replicas: Some(1),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn act(kind: store_action::Kind, target: impl Into<Object>) -> StoreAction {
    StoreAction {
        kind: kind as i32,
        target: Some(target.into()),
    }
}

fn txn(actions: Vec<StoreAction>) -> Transaction {
    Transaction {
        leader_term: 0,
        actions,
        timestamp_ms: 0,
    }
}

/// A store holding network `n` at version 1.
fn store_with_network() -> Store {
    let store = Store::new();
    let results = store.apply(
        1,
        Batch {
            transactions: vec![txn(vec![act(store_action::Kind::Create, network("n", 0))])],
        },
    );
    assert_eq!(results, vec![Ok(())]);
    store
}

#[test]
fn a_network_removal_applied_after_a_service_that_uses_it_fails() {
    let store = store_with_network();
    let results = store.apply(
        2,
        Batch {
            transactions: vec![
                txn(vec![act(
                    store_action::Kind::Create,
                    service_on("s", &["n"], 0),
                )]),
                txn(vec![act(store_action::Kind::Remove, network("n", 1))]),
            ],
        },
    );
    assert_eq!(results[0], Ok(()));
    assert!(
        matches!(&results[1], Err(TxnError::InUse { by, .. }) if by == "s"),
        "{:?}",
        results[1]
    );
    let view = store.view();
    assert!(view.network("n").is_some());
    assert!(view.service("s").is_some());
}

#[test]
fn a_service_applied_after_its_network_was_removed_fails() {
    let store = store_with_network();
    let results = store.apply(
        2,
        Batch {
            transactions: vec![
                txn(vec![act(store_action::Kind::Remove, network("n", 1))]),
                txn(vec![act(
                    store_action::Kind::Create,
                    service_on("s", &["n"], 0),
                )]),
            ],
        },
    );
    assert_eq!(results[0], Ok(()));
    assert!(
        matches!(&results[1], Err(TxnError::MissingReference { target, .. }) if target == "n"),
        "{:?}",
        results[1]
    );
    let view = store.view();
    assert!(view.network("n").is_none());
    assert!(view.service("s").is_none(), "the service was half-written");
}

#[test]
fn a_service_updated_onto_a_missing_network_fails_and_keeps_its_old_spec() {
    let store = store_with_network();
    let created = store.apply(
        2,
        Batch {
            transactions: vec![txn(vec![act(
                store_action::Kind::Create,
                service_on("s", &["n"], 0),
            )])],
        },
    );
    assert_eq!(created, vec![Ok(())]);
    let results = store.apply(
        3,
        Batch {
            transactions: vec![txn(vec![act(
                store_action::Kind::Update,
                service_on("s", &["n", "gone"], 2),
            )])],
        },
    );
    assert!(
        matches!(&results[0], Err(TxnError::MissingReference { target, .. }) if target == "gone"),
        "{:?}",
        results[0]
    );
    let view = store.view();
    let networks = &view.service("s").unwrap().spec.as_ref().unwrap().task;
    assert_eq!(networks.as_ref().unwrap().networks.len(), 1);
}

#[test]
fn a_network_and_the_service_using_it_may_go_in_one_transaction() {
    let store = store_with_network();
    store.apply(
        2,
        Batch {
            transactions: vec![txn(vec![act(
                store_action::Kind::Create,
                service_on("s", &["n"], 0),
            )])],
        },
    );
    let results = store.apply(
        3,
        Batch {
            transactions: vec![txn(vec![
                act(store_action::Kind::Remove, service_on("s", &["n"], 2)),
                act(store_action::Kind::Remove, network("n", 1)),
            ])],
        },
    );
    assert_eq!(results, vec![Ok(())]);
    assert!(store.view().network("n").is_none());
}
