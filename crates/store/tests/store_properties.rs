//! Property tests of the store's transaction rules and of view-and-watch.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use shoal_api::{
    store_action, watch_event, Annotations, Batch, Object, Service, ServiceSpec, StoreAction, Task,
    TaskSpec, Transaction,
};
use shoal_store::{Event, Store, TxnError};

const IDS: [&str; 6] = ["s0", "s1", "s2", "s3", "s4", "s5"];
const NAMES: [&str; 4] = ["web", "api", "db", "WEB"];

/// One action, described relative to the store at apply time.
#[derive(Debug, Clone)]
struct Op {
    kind: store_action::Kind,
    id: usize,
    name: usize,
    /// Use the version the store has now (else a stale one).
    fresh: bool,
    /// Also create a task of this service (exercises the task indexes).
    with_task: bool,
}

fn op() -> impl Strategy<Value = Op> {
    (
        prop_oneof![
            Just(store_action::Kind::Create),
            Just(store_action::Kind::Update),
            Just(store_action::Kind::Remove),
            Just(store_action::Kind::Check),
        ],
        0..IDS.len(),
        0..NAMES.len(),
        prop::bool::weighted(0.8),
        any::<bool>(),
    )
        .prop_map(|(kind, id, name, fresh, with_task)| Op {
            kind,
            id,
            name,
            fresh,
            with_task,
        })
}

fn service(id: &str, name: &str, version: u64, replicas: i64) -> Service {
    Service {
        id: id.into(),
        meta: Some(shoal_api::Meta {
            version,
            ..Default::default()
        }),
        spec: Some(ServiceSpec {
            annotations: Some(Annotations {
                name: name.into(),
                labels: Default::default(),
            }),
            replicas: Some(replicas),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn actions_for(store: &Store, ops: &[Op], seq: u64) -> Vec<StoreAction> {
    let view = store.view();
    let mut out = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let id = IDS[op.id];
        let current = view
            .service(id)
            .and_then(|s| s.meta.as_ref())
            .map_or(0, |m| m.version);
        let version = if op.fresh { current } else { current + 1 };
        let target: Object = service(id, NAMES[op.name], version, seq as i64 + i as i64).into();
        out.push(StoreAction {
            kind: op.kind as i32,
            target: Some(target),
        });
        if op.with_task && op.kind == store_action::Kind::Create {
            out.push(StoreAction {
                kind: store_action::Kind::Create as i32,
                target: Some(
                    Task {
                        id: format!("t{seq}-{i}"),
                        service_id: id.into(),
                        node_id: format!("n{}", seq % 3),
                        spec: Some(TaskSpec::default()),
                        ..Default::default()
                    }
                    .into(),
                ),
            });
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// A transaction is all or nothing; an object's version is the index of
    /// the entry that last changed it; indexes always agree with tables.
    #[test]
    fn transactions_are_atomic_and_versions_are_entry_indexes(
        txns in prop::collection::vec(prop::collection::vec(op(), 1..4), 1..40)
    ) {
        let store = Store::new();
        let mut last_change: BTreeMap<String, u64> = BTreeMap::new();
        for (n, ops) in txns.iter().enumerate() {
            let version = n as u64 + 1;
            let actions = actions_for(&store, ops, version);
            let before = store.snapshot();
            let txn = Transaction { leader_term: 0, actions: actions.clone(), timestamp_ms: 1_000 + n as i64 };
            let results = store.apply(version, Batch { transactions: vec![txn] });
            prop_assert_eq!(results.len(), 1);
            let view = store.view();
            prop_assert_eq!(view.version(), version);
            view.check_invariants().map_err(TestCaseError::fail)?;
            match &results[0] {
                Err(_) => {
                    let mut after = store.snapshot();
                    after.version = before.version;
                    prop_assert_eq!(&after, &before, "a failed transaction changed the store");
                }
                Ok(()) => {
                    for a in &actions {
                        let t = a.target.as_ref().unwrap();
                        if a.kind != store_action::Kind::Check as i32 && t.kind() == Some(shoal_api::ObjectKind::Service) {
                            last_change.insert(t.id().to_string(), version);
                        }
                    }
                }
            }
            // A stale version can never pass.
            for (a, op) in actions.iter().zip(ops) {
                if !op.fresh && op.kind != store_action::Kind::Create {
                    prop_assert!(results[0].is_err(), "stale {:?} of {} was accepted", op.kind, a.target.as_ref().unwrap().id());
                }
            }
            for s in view.services() {
                prop_assert_eq!(Some(&s.meta.as_ref().unwrap().version), last_change.get(&s.id));
            }
        }
    }

    /// A snapshot restores to identical tables, and tasks keep sharing specs.
    #[test]
    fn snapshot_restores_identical_tables(
        txns in prop::collection::vec(prop::collection::vec(op(), 1..4), 1..30)
    ) {
        let store = Store::new();
        for (n, ops) in txns.iter().enumerate() {
            let version = n as u64 + 1;
            let actions = actions_for(&store, ops, version);
            store.apply(version, Batch { transactions: vec![Transaction { leader_term: 0, actions, timestamp_ms: 0 }] });
        }
        let snapshot = store.snapshot();
        let restored = Store::new();
        restored.restore(snapshot.clone()).unwrap();
        restored.view().check_invariants().map_err(TestCaseError::fail)?;
        prop_assert_eq!(restored.snapshot(), snapshot);
        prop_assert_eq!(restored.view().objects(), store.view().objects());
    }
}

#[test]
fn a_conflict_fails_only_its_own_transaction_in_a_batch() {
    let store = Store::new();
    let create = |id: &str, name: &str| StoreAction {
        kind: store_action::Kind::Create as i32,
        target: Some(service(id, name, 0, 1).into()),
    };
    store.apply(
        1,
        Batch {
            transactions: vec![Transaction {
                leader_term: 0,
                actions: vec![create("a", "a")],
                timestamp_ms: 0,
            }],
        },
    );
    let stale = StoreAction {
        kind: store_action::Kind::Update as i32,
        target: Some(service("a", "a", 0, 9).into()),
    };
    let results = store.apply(
        2,
        Batch {
            transactions: vec![
                Transaction {
                    leader_term: 0,
                    actions: vec![create("b", "b")],
                    timestamp_ms: 0,
                },
                Transaction {
                    leader_term: 0,
                    actions: vec![stale, create("c", "c")],
                    timestamp_ms: 0,
                },
                Transaction {
                    leader_term: 0,
                    actions: vec![create("d", "b")],
                    timestamp_ms: 0,
                },
            ],
        },
    );
    assert_eq!(results[0], Ok(()));
    assert!(
        matches!(
            results[1],
            Err(TxnError::Conflict {
                expected: 0,
                actual: 1,
                ..
            })
        ),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(results[2], Err(TxnError::NameInUse { .. })),
        "{:?}",
        results[2]
    );
    let view = store.view();
    assert!(view.service("b").is_some());
    assert!(
        view.service("c").is_none(),
        "half of a failed transaction was applied"
    );
    assert!(view.service("d").is_none());
    assert_eq!(
        view.service("a").unwrap().spec.as_ref().unwrap().replicas,
        Some(1)
    );
}

#[test]
fn tasks_of_one_spec_share_one_copy() {
    let store = Store::new();
    let spec = TaskSpec {
        runtime: Some(shoal_api::Runtime {
            command: vec!["sleep".into(), "1".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let actions = (0..100)
        .map(|i| StoreAction {
            kind: store_action::Kind::Create as i32,
            target: Some(
                Task {
                    id: format!("t{i}"),
                    service_id: "s".into(),
                    spec: Some(spec.clone()),
                    ..Default::default()
                }
                .into(),
            ),
        })
        .collect();
    store.apply(
        1,
        Batch {
            transactions: vec![Transaction {
                leader_term: 0,
                actions,
                timestamp_ms: 0,
            }],
        },
    );
    let snapshot = store.snapshot();
    assert_eq!(snapshot.task_specs.len(), 1);
    assert_eq!(store.view().tasks_of_service("s").count(), 100);
    assert_eq!(store.view().task("t7").unwrap().spec, Some(spec));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// View-and-watch while a writer keeps applying: the view plus the events
    /// after it rebuild exactly the final store, with no gap and no repeat.
    #[test]
    fn view_and_watch_has_no_gap_under_a_concurrent_writer(
        txns in prop::collection::vec(prop::collection::vec(op(), 1..3), 50..300),
        start_after in 0usize..50,
    ) {
        let store = Arc::new(Store::new());
        // Keep one receiver so apply builds events from the start.
        let _keepalive = store.watch();
        let total = txns.len() as u64;
        let writer = {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for (n, ops) in txns.iter().enumerate() {
                    let version = n as u64 + 1;
                    let actions = actions_for(&store, ops, version);
                    store.apply(version, Batch { transactions: vec![Transaction { leader_term: 0, actions, timestamp_ms: 0 }] });
                    if n % 7 == 0 {
                        std::thread::yield_now();
                    }
                }
            })
        };
        while store.version() < start_after as u64 {
            std::thread::yield_now();
        }
        let (objects, mut version, mut stream) = store.view_and_watch();
        let mut rebuilt: BTreeMap<String, Object> = objects.into_iter().map(|o| (o.id().to_string(), o)).collect();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            while version < total {
                let event = tokio::time::timeout(std::time::Duration::from_secs(60), stream.next())
                    .await
                    .expect("the writer finished, so every commit must arrive")
                    .expect("no lag at this size");
                match event {
                    Event::Commit { version: v } => {
                        assert_eq!(v, version + 1, "a commit was skipped or repeated");
                        version = v;
                    }
                    Event::Change { action, object, version: v, .. } => {
                        assert_eq!(v, version + 1, "a change arrived outside its commit");
                        if action == watch_event::Action::Remove {
                            assert!(rebuilt.remove(object.id()).is_some(), "removed an object never seen");
                        } else {
                            rebuilt.insert(object.id().to_string(), object);
                        }
                    }
                    Event::Reset { .. } => panic!("no snapshot was installed"),
                }
            }
        });
        writer.join().unwrap();
        let expected: BTreeMap<String, Object> = store.view().objects().into_iter().map(|o| (o.id().to_string(), o)).collect();
        prop_assert_eq!(rebuilt, expected);
    }
}

/// Applies one task write, committed at `version` at `at_ms`, and checks
/// that it was accepted.
fn write_task(store: &Store, version: u64, kind: store_action::Kind, task: Task, at_ms: i64) {
    let results = store.apply(
        version,
        Batch {
            transactions: vec![Transaction {
                leader_term: 0,
                actions: vec![StoreAction {
                    kind: kind as i32,
                    target: Some(task.into()),
                }],
                timestamp_ms: at_ms,
            }],
        },
    );
    assert_eq!(results, vec![Ok(())]);
}

#[test]
fn an_update_without_a_spec_keeps_the_tasks_spec() {
    use shoal_api::Runtime;
    let store = Store::new();
    let spec = TaskSpec {
        runtime: Some(Runtime {
            command: vec!["sleep".into(), "1".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let write = |version, kind, task| write_task(&store, version, kind, task, 0);
    write(
        1,
        store_action::Kind::Create,
        Task {
            id: "t1".into(),
            service_id: "s1".into(),
            spec: Some(spec.clone()),
            ..Default::default()
        },
    );
    let mut bare = store.view().task_without_spec("t1").unwrap();
    assert_eq!(bare.spec, None);
    bare.node_id = "n1".into();
    write(2, store_action::Kind::Update, bare);
    let stored = store.view().task("t1").unwrap();
    assert_eq!(stored.node_id, "n1");
    assert_eq!(stored.spec, Some(spec));
    store.view().check_invariants().unwrap();
}

#[test]
fn a_tasks_meta_keeps_its_creation_time_and_its_watch_event_carries_the_stored_meta() {
    use shoal_api::Meta;
    let store = Store::new();
    let mut changes = store.watch();
    let write = |version, kind, task, at_ms| write_task(&store, version, kind, task, at_ms);
    let task = Task {
        id: "t1".into(),
        service_id: "s1".into(),
        spec: Some(TaskSpec::default()),
        ..Default::default()
    };
    write(3, store_action::Kind::Create, task, 1_000);
    let mut stored = store.view().task_without_spec("t1").unwrap();
    let created = Meta {
        version: 3,
        created_at_ms: 1_000,
        updated_at_ms: 1_000,
    };
    assert_eq!(stored.meta, Some(created));
    stored.node_id = "n1".into();
    write(5, store_action::Kind::Update, stored, 2_500);
    let updated = Meta {
        version: 5,
        created_at_ms: 1_000,
        updated_at_ms: 2_500,
    };
    assert_eq!(store.view().task("t1").unwrap().meta, Some(updated));
    let mut seen = Vec::new();
    changes.drain_with(u64::MAX, |event| {
        if let Event::Change {
            action, object: o, ..
        } = event
        {
            if let Some(shoal_api::object::Kind::Task(t)) = &o.kind {
                seen.push((*action, t.meta, t.node_id.clone()));
            }
        }
    });
    assert_eq!(
        seen,
        vec![
            (watch_event::Action::Create, Some(created), String::new()),
            (watch_event::Action::Update, Some(updated), "n1".to_string()),
        ]
    );
    store.view().check_invariants().unwrap();
}

/// One write of a task: which, how, and what it holds afterwards.
#[derive(Debug, Clone)]
struct TaskOp {
    kind: store_action::Kind,
    task: usize,
    service: usize,
    slot: u64,
    state: shoal_api::TaskState,
}

fn task_op() -> impl Strategy<Value = TaskOp> {
    use shoal_api::TaskState;
    (
        prop_oneof![
            Just(store_action::Kind::Create),
            Just(store_action::Kind::Update),
            Just(store_action::Kind::Update),
            Just(store_action::Kind::Remove),
        ],
        0..6usize,
        0..3usize,
        0..4u64,
        prop_oneof![
            Just(TaskState::New),
            Just(TaskState::Pending),
            Just(TaskState::Assigned),
            Just(TaskState::Running),
        ],
    )
        .prop_map(|(kind, task, service, slot, state)| TaskOp {
            kind,
            task,
            service,
            slot,
            state,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// The slot and pending indexes name exactly the tasks a scan over
    /// every task finds, whatever was created, moved or removed.
    #[test]
    fn the_slot_and_pending_indexes_agree_with_a_scan_of_every_task(
        ops in prop::collection::vec(task_op(), 1..60)
    ) {
        let store = Store::new();
        for (i, op) in ops.iter().enumerate() {
            let id = format!("t{}", op.task);
            let version = store
                .view()
                .task(&id)
                .and_then(|t| t.meta)
                .map_or(0, |m| m.version);
            let task = Task {
                id,
                service_id: IDS[op.service].into(),
                slot: op.slot,
                meta: Some(shoal_api::Meta { version, ..Default::default() }),
                status: Some(shoal_api::TaskStatus {
                    state: op.state as i32,
                    ..Default::default()
                }),
                spec: Some(TaskSpec::default()),
                ..Default::default()
            };
            // Some writes are refused (a create of a task that exists): the
            // indexes must hold either way.
            let _ = store.apply(
                i as u64 + 1,
                Batch {
                    transactions: vec![Transaction { leader_term: 0,
                        actions: vec![StoreAction {
                            kind: op.kind as i32,
                            target: Some(task.into()),
                        }],
                        timestamp_ms: 0,
                    }],
                },
            );
            let view = store.view();
            view.check_invariants().map_err(TestCaseError::fail)?;
            let all: Vec<Task> = view.tasks().collect();
            for service in IDS.iter().take(3) {
                for slot in 0..4u64 {
                    let indexed: Vec<&str> = view.task_ids_in_slot(service, slot).collect();
                    let scanned: Vec<&str> = all
                        .iter()
                        .filter(|t| slot > 0 && t.service_id == *service && t.slot == slot)
                        .map(|t| t.id.as_str())
                        .collect();
                    prop_assert_eq!(indexed, scanned, "{} slot {}", service, slot);
                }
            }
            let pending: Vec<&str> = view.pending_task_ids().collect();
            let scanned: Vec<&str> = all
                .iter()
                .filter(|t| t.observed() == shoal_api::TaskState::Pending)
                .map(|t| t.id.as_str())
                .collect();
            prop_assert_eq!(pending, scanned);
        }
    }
}
