//! The store handle shared by every component of a manager.
//!
//! The tables are published as an immutable [`View`]: a reader takes the
//! current one (a pointer copy under a lock held for that copy alone) and
//! keeps it as long as it likes, and the writer changes its own copy of the
//! tables beside it (the tables' maps are persistent, so that copies only the
//! paths a write changes while a view shares them). No reader ever delays a
//! commit, and no commit ever changes what a reader sees (DESIGN.md §3).
//!
//! The writer changes its tables in place: it withdraws the published view
//! before it writes, so when no reader holds that view the tables' nodes
//! are its alone and nothing is copied. Where someone watches (a leader:
//! its reconcilers and dispatcher), the new view is published at every
//! commit, before its changes are sent; where nobody does (a follower), only
//! when a reader asks. A reader that asks while an apply is under way waits
//! for it: one run of at most 16 entries (`apply while listing` in
//! BENCHMARKS.md measures an apply: p99 26 µs for a small entry, a few ms
//! for a full one of 256 creates).
//!
//! # Guarantees
//! - A view is a consistent snapshot at one raft index ([`Tables::version`]),
//!   and holds every entry applied before it was taken: a reader sees every
//!   write that was answered before it asked.
//! - Watchers receive an entry's changes after the view that holds them is
//!   published, in commit order: whoever a change wakes sees it in the view
//!   it takes. A reader that drains its watch up to its view's version
//!   ([`WatchStream::drain_with`]) is handed no change the view lacks; one
//!   still on its way is handed by a later drain (and wakes the reader).

use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use shoal_api::{Batch, Object, StoreSnapshot};
use tokio::sync::broadcast;

use crate::error::TxnError;
use crate::tables::Tables;
use crate::watch::{Event, WatchStream, WATCH_QUEUE_ENTRIES};

/// A consistent, immutable snapshot of every table. Cheap to take and to
/// keep: holding one never blocks a writer.
pub type View = Arc<Tables>;

/// The tables plus the watch channel.
///
/// Locks are taken in this order: `writer`, `working`, `current`.
pub struct Store {
    /// The latest published view, or none when the latest commit is not
    /// published yet. Held only to copy or replace the pointer, never while
    /// tables are read or built.
    current: RwLock<Option<View>>,
    /// The tables with every entry applied so far; changed in place by
    /// the writer, cloned (O(1)) to publish.
    working: Mutex<Tables>,
    /// Serializes writers (raft's apply, snapshot installs), so each builds
    /// on the version the one before it applied.
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
        let tables = Tables::default();
        Store {
            current: RwLock::new(Some(Arc::new(tables.clone()))),
            working: Mutex::new(tables),
            writer: Mutex::new(()),
            events,
        }
    }

    /// A consistent snapshot of every table holding every entry applied so
    /// far: O(1) when the last commit is published, else after the apply
    /// under way (if any) ends.
    pub fn view(&self) -> View {
        if let Some(view) = &*self.current.read().unwrap_or_else(|e| e.into_inner()) {
            return Arc::clone(view);
        }
        let working = self.working();
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        Arc::clone(current.get_or_insert_with(|| Arc::new(working.clone())))
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

    /// The writer's tables. A panic while they were being changed leaves
    /// them half-changed (an object without its name in the index), and
    /// every later entry would be applied on top: nothing may read them
    /// again, so the process ends, saying why, and restarts from its log.
    fn working(&self) -> MutexGuard<'_, Tables> {
        match self.working.lock() {
            Ok(tables) => tables,
            Err(_) => {
                let reason = "the store's tables were left half-changed by a panic \
                              during an apply; ending the process (the log restores them)";
                eprintln!("shoal: {reason}");
                std::process::abort();
            }
        }
    }

    /// Changes the tables with `change`, then sends watchers what it
    /// returned, one message per entry.
    ///
    /// The published view is withdrawn first: when no reader holds it, the
    /// tables' nodes are the writer's alone and `change` copies none of
    /// them (copying them, then freeing the old ones, was most of an apply
    /// on every manager; the leader alone lost a third of its writes/s
    /// keeping its view published through the apply). A reader asking
    /// meanwhile waits for `change` (one run of entries) and gets its
    /// result. Watched, the result is published before the events are
    /// sent: whoever is woken by a change and takes a view sees it. Sent
    /// under the writer's lock, so events keep commit order.
    fn write<R>(&self, change: impl FnOnce(&mut Tables, bool) -> (R, Vec<Vec<Event>>)) -> R {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut working = self.working();
        let withdrawn = self
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        drop(withdrawn);
        // Subscribing takes the writer's lock: nobody starts watching now.
        let watched = self.events.receiver_count() > 0;
        let (result, messages) = change(&mut working, watched);
        if watched {
            *self.current.write().unwrap_or_else(|e| e.into_inner()) =
                Some(Arc::new(working.clone()));
            drop(working);
            for events in messages.into_iter().filter(|e| !e.is_empty()) {
                // An error only means nobody listens any more.
                let _ = self.events.send(Arc::new(events));
            }
        }
        result
    }

    /// Applies one committed entry; called by the raft state machine only.
    pub fn apply(&self, version: u64, batch: Batch) -> Vec<Result<(), TxnError>> {
        self.apply_all(vec![(version, batch)])
            .pop()
            .unwrap_or_default()
    }

    /// Applies consecutive committed entries, `(raft index, batch)` in log
    /// order, in one change of the tables: a write copies the path to each
    /// node it changes once per published view, so entries that arrive
    /// together are cheaper applied together. Watchers still get each
    /// entry's changes closed by its own commit marker, one message each.
    pub fn apply_all(&self, entries: Vec<(u64, Batch)>) -> Vec<Vec<Result<(), TxnError>>> {
        self.write(|tables, watched| {
            let mut messages = Vec::new();
            let results = entries
                .into_iter()
                .map(|(version, batch)| {
                    if !watched {
                        return tables.apply_batch(version, batch, None);
                    }
                    let mut events = Vec::new();
                    let results = tables.apply_batch(version, batch, Some(&mut events));
                    messages.push(events);
                    results
                })
                .collect();
            (results, messages)
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
            ((), vec![vec![Event::Reset { version }]])
        });
        Ok(())
    }
}
