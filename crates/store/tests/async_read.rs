//! An async reader never blocks its thread on the store's lock: it steps
//! aside while a writer waits, lets the writer go first, then reads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_api::{store_action, Batch, Network, StoreAction, Transaction};
use shoal_store::Store;

const WITHIN: Duration = Duration::from_secs(60);

fn create_network(id: &str) -> Batch {
    Batch {
        transactions: vec![Transaction {
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

// A current-thread runtime: a reader blocking its thread would stop the
// ticker below, and everything else on the runtime, until the lock frees.
#[tokio::test]
async fn an_async_reader_lets_the_runtime_run_and_the_waiting_writer_go_first() {
    let store = Arc::new(Store::new());
    // A long reader (a reconciler's pass) holds the lock until told.
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (holding_tx, holding) = std::sync::mpsc::channel::<()>();
    let long_reader = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || {
            let _view = store.view();
            holding_tx.send(()).unwrap();
            // Bounded, so a broken reader fails the test instead of hanging it.
            let _ = released.recv_timeout(WITHIN);
        })
    };
    holding.recv_timeout(WITHIN).unwrap();
    // A writer (the raft apply) waits for it.
    let writer = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || store.apply(7, create_network("n1")))
    };
    let deadline = Instant::now() + WITHIN;
    while store.try_view().is_some() {
        assert!(Instant::now() < deadline, "the writer never waited");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let reader = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.read().await.version() })
    };
    // The runtime's only thread goes on while the reader waits.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !reader.is_finished(),
        "the reader read while a writer waited for the lock"
    );

    release.send(()).unwrap();
    long_reader.join().unwrap();
    let results = writer.join().unwrap();
    assert_eq!(results, vec![Ok(())]);
    let version = tokio::time::timeout(WITHIN, reader)
        .await
        .expect("the reader reads once the lock frees")
        .unwrap();
    assert_eq!(version, 7, "the reader saw the store before the writer");
}
