//! Readers never block the writer: a view is an immutable snapshot taken
//! in O(1) (after the apply under way, when nobody watches and the last
//! commit is not published yet), kept as long as its reader likes, while
//! commits go on; and a watcher drained up to a view's version is handed
//! exactly that view's changes.

use std::sync::Arc;
use std::time::Duration;

use shoal_api::{store_action, Batch, Network, StoreAction, Transaction};
use shoal_store::{Event, Store};

const WITHIN: Duration = Duration::from_secs(60);

fn create_network(id: &str) -> Batch {
    Batch {
        transactions: vec![Transaction {
            leader_term: 0,
            actions: vec![StoreAction {
                kind: store_action::Kind::Create as i32,
                target: Some(
                    Network {
                        id: id.into(),
                        ..Default::default()
                    }
                    .into(),
                ),
            }],
            timestamp_ms: 0,
        }],
    }
}

#[test]
fn a_reader_holding_a_view_never_delays_a_commit_and_keeps_its_snapshot() {
    let store = Arc::new(Store::new());
    let held = store.view();
    // The commit runs on another thread and must finish while the view is
    // still held (with the old lock it waited for the reader).
    let (done_tx, done) = std::sync::mpsc::channel();
    let writer = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || {
            let results = store.apply(7, create_network("n1"));
            let _ = done_tx.send(results);
        })
    };
    let results = done
        .recv_timeout(WITHIN)
        .expect("the commit waited for a reader");
    writer.join().unwrap();
    assert_eq!(results, vec![Ok(())]);
    // The held view is the store as it was; a new one has the commit.
    assert_eq!(held.version(), 0);
    assert!(held.network("n1").is_none());
    let now = store.view();
    assert_eq!(now.version(), 7);
    assert!(now.network("n1").is_some());
}

#[test]
fn a_watch_drained_up_to_a_views_version_hands_exactly_that_views_changes() {
    let store = Store::new();
    let mut changes = store.watch();
    store.apply(1, create_network("a"));
    let view = store.view();
    store.apply(2, create_network("b"));
    let ids = |changes: &mut shoal_store::WatchStream, version: u64| {
        let mut ids = Vec::new();
        assert!(changes.drain_with(version, |e| {
            if let Event::Change { object, .. } = e {
                ids.push(object.id().to_string());
            }
        }));
        ids
    };
    assert_eq!(ids(&mut changes, view.version()), ["a"]);
    assert_eq!(
        ids(&mut changes, store.version()),
        ["b"],
        "a later change was lost"
    );
    assert!(
        ids(&mut changes, store.version()).is_empty(),
        "a change was repeated"
    );
}

#[test]
fn view_and_watch_neither_misses_nor_repeats_a_change() {
    let store = Store::new();
    store.apply(1, create_network("a"));
    let (objects, version, mut stream) = store.view_and_watch();
    assert_eq!((objects.len(), version), (1, 1));
    store.apply(2, create_network("b"));
    let mut ids = Vec::new();
    assert!(stream.drain_with(u64::MAX, |e| {
        if let Event::Change { object, .. } = e {
            ids.push(object.id().to_string());
        }
    }));
    assert_eq!(ids, ["b"]);
}

/// A store nobody watches publishes no view at its commits; a reader
/// asking afterwards must still see every one of them, each view a
/// snapshot that later commits leave alone, even while commits are held.
#[test]
fn a_view_taken_after_unwatched_commits_holds_every_one_of_them() {
    let store = Store::new();
    for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
        assert_eq!(store.apply(i as u64 + 1, create_network(id)), vec![Ok(())]);
    }
    let first = store.view();
    assert_eq!(first.version(), 3);
    assert!(["a", "b", "c"].iter().all(|id| first.network(id).is_some()));
    let results = store.apply_all(vec![(4, create_network("d")), (5, create_network("e"))]);
    assert_eq!(results, vec![vec![Ok(())], vec![Ok(())]]);
    assert_eq!(first.version(), 3, "a held view changed under its reader");
    assert!(first.network("d").is_none());
    // Taking a view must not wait for the writer's lock: a test holding
    // commits back still reads.
    let _held = store.hold_commits();
    let second = store.view();
    assert_eq!(second.version(), 5);
    assert!(second.network("d").is_some() && second.network("e").is_some());
}

/// Entries applied together are told to a watcher as they were applied
/// one by one: each entry's changes, closed by its own commit marker.
#[test]
fn entries_applied_together_reach_watchers_entry_by_entry() {
    let store = Store::new();
    let mut watch = store.watch();
    store.apply_all(vec![(1, create_network("a")), (2, create_network("b"))]);
    let mut seen = Vec::new();
    assert!(watch.drain_with(2, |e| seen.push(match e {
        Event::Change {
            object, version, ..
        } => format!("{}@{version}", object.id()),
        Event::Commit { version } => format!("commit {version}"),
        Event::Reset { .. } => "reset".into(),
    })));
    assert_eq!(seen, ["a@1", "commit 1", "b@2", "commit 2"]);
    assert!(store.view().network("b").is_some());
}
