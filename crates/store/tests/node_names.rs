//! Node names: a name the user gives is unique; hostnames repeat (two
//! daemons on one host, cloned machines) and find a node only when one
//! node alone has it, before an id prefix does (docker's order).

use shoal_api::{
    store_action, Annotations, Batch, Node, NodeDescription, NodeSpec, ObjectKind, StoreAction,
    Transaction,
};
use shoal_store::{LookupError, Store, TxnError};

fn node(id: &str, hostname: &str, name: &str) -> Node {
    Node {
        id: id.into(),
        spec: Some(NodeSpec {
            annotations: Some(Annotations {
                name: name.into(),
                labels: Default::default(),
            }),
            ..Default::default()
        }),
        description: Some(NodeDescription {
            hostname: hostname.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn create(store: &Store, version: u64, n: Node) -> Result<(), TxnError> {
    let batch = Batch {
        transactions: vec![Transaction {
            leader_term: 0,
            actions: vec![StoreAction {
                kind: store_action::Kind::Create as i32,
                target: Some(n.into()),
            }],
            timestamp_ms: 0,
        }],
    };
    store.apply(version, batch).remove(0)
}

#[test]
fn two_nodes_may_share_a_hostname_and_a_shared_one_finds_neither() {
    let store = Store::new();
    create(&store, 1, node("aaa111", "host", "")).unwrap();
    create(&store, 2, node("bbb222", "host", "")).unwrap();
    create(&store, 3, node("ccc333", "Other", "")).unwrap();
    let view = store.view();
    assert!(matches!(
        view.lookup(ObjectKind::Node, "host"),
        Err(LookupError::Ambiguous { .. })
    ));
    // A hostname one node alone has finds it, whatever its case.
    assert_eq!(
        view.lookup(ObjectKind::Node, "other").unwrap().id(),
        "ccc333"
    );
    view.check_invariants().unwrap();
}

#[test]
fn a_unique_hostname_wins_over_an_id_prefix_and_a_given_name_stays_unique() {
    let store = Store::new();
    create(&store, 1, node("w1xyz", "a", "")).unwrap();
    create(&store, 2, node("qqq", "w1", "")).unwrap();
    assert_eq!(
        store.view().lookup(ObjectKind::Node, "w1").unwrap().id(),
        "qqq"
    );
    create(&store, 3, node("n1", "h1", "edge")).unwrap();
    let taken = create(&store, 4, node("n2", "h2", "edge")).unwrap_err();
    assert!(matches!(taken, TxnError::NameInUse { .. }), "{taken}");
    assert_eq!(
        store.view().lookup(ObjectKind::Node, "edge").unwrap().id(),
        "n1"
    );
}
