//! Installing a raft snapshot replaces the store whole: every watcher is told.

use shoal_store::Store;

#[test]
fn installing_a_snapshot_tells_every_watcher_to_read_again() {
    use shoal_store::Event;
    let store = Store::new();
    let mut watcher = store.watch();
    let replacement = Store::new().snapshot();
    let mut with_version = replacement.clone();
    with_version.version = 42;
    store.restore(with_version).unwrap();
    // A reconciler draining its changes learns they are no longer in step
    // with the store, so its next pass is a full one.
    let mut handed = 0;
    assert!(
        !watcher.drain_with(store.version(), |_| handed += 1),
        "a watcher drained past a reset as if nothing happened"
    );
    assert_eq!(handed, 0);
    // A stream watcher (the control API's watch) receives the reset itself.
    let mut stream = store.watch();
    store.restore(replacement).unwrap();
    let event = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(60), stream.next()).await
        })
        .expect("the reset never reached the watcher")
        .unwrap();
    assert_eq!(event, Event::Reset { version: 0 });
}
