//! The store handle shared by every component of a manager.

use std::sync::{Arc, RwLock, RwLockReadGuard, TryLockError};

use shoal_api::{Batch, Object, StoreSnapshot};
use tokio::sync::broadcast;

use crate::error::TxnError;
use crate::tables::Tables;
use crate::watch::{Event, WatchStream, WATCH_QUEUE_ENTRIES};

/// A consistent read-only view of every table. Writes wait while a view is
/// held, so take it in a synchronous block and drop it before any `.await`.
pub type View<'a> = RwLockReadGuard<'a, Tables>;

/// Pauses of an async reader while the lock is taken: short first (most
/// writes take well under a millisecond), never long enough to matter.
const READ_PAUSE_MIN_US: u64 = 100;
const READ_PAUSE_MAX_US: u64 = 5_000;

/// The tables plus the watch channel.
pub struct Store {
    tables: RwLock<Tables>,
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
            tables: RwLock::new(Tables::default()),
            events,
        }
    }

    /// A consistent snapshot of every table.
    pub fn view(&self) -> View<'_> {
        self.tables.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The view, for a task on an async runtime: it never blocks the worker
    /// thread. A blocking read waits while a writer waits, and a writer
    /// waits for the longest reader (a reconciler's pass over every task):
    /// a handler blocked there holds its whole worker, and the heartbeats
    /// queued behind it. This one steps aside until the lock is free.
    pub async fn read(&self) -> View<'_> {
        let mut pause_us = READ_PAUSE_MIN_US;
        loop {
            if let Some(view) = self.try_view() {
                return view;
            }
            tokio::time::sleep(std::time::Duration::from_micros(pause_us)).await;
            pause_us = (pause_us * 2).min(READ_PAUSE_MAX_US);
        }
    }

    /// The view if no writer holds or waits for the lock, else `None`.
    pub fn try_view(&self) -> Option<View<'_>> {
        match self.tables.try_read() {
            Ok(view) => Some(view),
            Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// The raft index of the last entry applied.
    pub fn version(&self) -> u64 {
        self.view().version()
    }

    /// Applies one committed entry; called by the raft state machine only.
    /// Watchers get the entry's changes before the write lock is released, so
    /// a watch started under a view never misses nor repeats a change.
    pub fn apply(&self, version: u64, batch: Batch) -> Vec<Result<(), TxnError>> {
        let mut tables = self.tables.write().unwrap_or_else(|e| e.into_inner());
        if self.events.receiver_count() == 0 {
            return tables.apply_batch(version, batch, None);
        }
        let mut events = Vec::new();
        let results = tables.apply_batch(version, batch, Some(&mut events));
        // An error only means nobody listens any more.
        let _ = self.events.send(Arc::new(events));
        results
    }

    /// Records an entry without transactions (raft blank or membership entry).
    pub fn advance_to(&self, version: u64) {
        let mut tables = self.tables.write().unwrap_or_else(|e| e.into_inner());
        tables.advance_to(version);
    }

    /// Every change from now on.
    pub fn watch(&self) -> WatchStream {
        WatchStream {
            rx: self.events.subscribe(),
            pending: Default::default(),
            held: None,
        }
    }

    /// Every object as it is now, the version they are at, and every change
    /// after that version: nothing missed, nothing repeated.
    pub fn view_and_watch(&self) -> (Vec<Object>, u64, WatchStream) {
        let view = self.view();
        let stream = self.watch();
        (view.objects(), view.version(), stream)
    }

    /// The whole store, for a raft snapshot.
    pub fn snapshot(&self) -> StoreSnapshot {
        self.view().to_snapshot()
    }

    /// Replaces every table with a snapshot's content. Watchers get
    /// [`Event::Reset`] before the write lock is released, so one that takes
    /// a view after it sees the new tables, and one that decided from the
    /// old ones learns that they are gone.
    pub fn restore(&self, snapshot: StoreSnapshot) -> Result<(), TxnError> {
        let tables = Tables::from_snapshot(snapshot)?;
        let mut current = self.tables.write().unwrap_or_else(|e| e.into_inner());
        let version = tables.version();
        *current = tables;
        // An error only means nobody listens.
        let _ = self.events.send(Arc::new(vec![Event::Reset { version }]));
        Ok(())
    }
}
