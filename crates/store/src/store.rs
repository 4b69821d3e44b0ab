//! The store handle shared by every component of a manager.
//!
//! The tables are published as an immutable [`View`] per commit: a reader
//! takes the current one in O(1) (a pointer copy under a lock held for that
//! copy alone) and keeps it as long as it likes, and the writer builds the
//! next version beside it (the tables' maps are persistent, so that copies
//! only the paths a write changes) and swaps it in. No reader ever delays a
//! commit, and no commit ever changes what a reader sees (DESIGN.md §3).
//!
//! # Guarantees
//! - A view is a consistent snapshot at one raft index ([`Tables::version`]).
//! - Watchers receive an entry's changes after the view that holds them is
//!   published, in commit order: whoever a change wakes sees it in the view
//!   it takes. A reader that drains its watch up to its view's version
//!   ([`WatchStream::drain_with`]) is handed no change the view lacks; one
//!   still on its way is handed by a later drain (and wakes the reader).

use std::sync::{Arc, Mutex, RwLock};

use shoal_api::{Batch, Object, StoreSnapshot};
use tokio::sync::broadcast;

use crate::error::TxnError;
use crate::tables::Tables;
use crate::watch::{Event, WatchStream, WATCH_QUEUE_ENTRIES};

/// A consistent, immutable snapshot of every table. Cheap to take and to
/// keep: holding one never blocks a writer.
pub type View = Arc<Tables>;

/// The tables plus the watch channel.
pub struct Store {
    /// The latest published version. The lock is held only to copy or
    /// replace the pointer, never while tables are read or built.
    current: RwLock<View>,
    /// Serializes writers (raft's apply, snapshot installs), so each builds
    /// on the version the one before it published.
    writer: Mutex<()>,
    events: broadcast::Sender<Arc<Vec<Event>>>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub fn new() -> Store {
        let (events, _) = broadcast::channel(WATCH_QUEUE_ENTRIES);
        Store {
            current: RwLock::new(Arc::new(Tables::default())),
            writer: Mutex::new(()),
            events,
        }
    }

    /// A consistent snapshot of every table, in O(1).
    pub fn view(&self) -> View {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Holds every commit back until the guard is dropped: the next apply
    /// waits for it. For tests and fault injection that need entries to
    /// stay in flight (readers cannot do that: a view never delays a
    /// commit). New watches wait for it too.
    pub fn hold_commits(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The raft index of the last entry applied.
    pub fn version(&self) -> u64 {
        self.view().version()
    }

    /// Builds the next version from the current one with `change`,
    /// publishes it, then sends the watchers what `change` returned.
    ///
    /// Published first: whoever is woken by a change (the dispatcher's
    /// fan-out, then a node's stream) and takes a view sees the change.
    /// Sent under the writer's lock, so events keep commit order.
    fn write<R>(&self, change: impl FnOnce(&mut Tables, bool) -> (R, Vec<Event>)) -> R {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = Tables::clone(&self.view());
        let watched = self.events.receiver_count() > 0;
        let (result, events) = change(&mut next, watched);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        if watched && !events.is_empty() {
            // An error only means nobody listens any more.
            let _ = self.events.send(Arc::new(events));
        }
        result
    }

    /// Applies one committed entry; called by the raft state machine only.
    pub fn apply(&self, version: u64, batch: Batch) -> Vec<Result<(), TxnError>> {
        self.write(|tables, watched| {
            if !watched {
                return (tables.apply_batch(version, batch, None), Vec::new());
            }
            let mut events = Vec::new();
            let results = tables.apply_batch(version, batch, Some(&mut events));
            (results, events)
        })
    }

    /// Records an entry without transactions (raft blank or membership entry).
    pub fn advance_to(&self, version: u64) {
        self.write(|tables, _| {
            tables.advance_to(version);
            ((), Vec::new())
        })
    }

    /// Every change from now on.
    ///
    /// Subscribed under the writer's lock: a commit under way decides
    /// whether to build events before it publishes, and a watcher that
    /// joined in between would miss that commit's changes.
    pub fn watch(&self) -> WatchStream {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        WatchStream::new(self.events.subscribe(), None)
    }

    /// Every object as it is now, the version they are at, and every change
    /// after that version: nothing missed, nothing repeated.
    pub fn view_and_watch(&self) -> (Vec<Object>, u64, WatchStream) {
        // Subscribed, and the view taken, between two commits: every change
        // the view lacks is then in the stream (and none it holds).
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let rx = self.events.subscribe();
        let view = self.view();
        let version = view.version();
        (view.objects(), version, WatchStream::new(rx, Some(version)))
    }

    /// The whole store, for a raft snapshot.
    pub fn snapshot(&self) -> StoreSnapshot {
        self.view().to_snapshot()
    }

    /// Replaces every table with a snapshot's content. Watchers get
    /// [`Event::Reset`]: whatever they built from earlier changes is stale.
    pub fn restore(&self, snapshot: StoreSnapshot) -> Result<(), TxnError> {
        let tables = Tables::from_snapshot(snapshot)?;
        let version = tables.version();
        self.write(|current, _| {
            *current = tables;
            ((), vec![Event::Reset { version }])
        });
        Ok(())
    }
}
