//! What watchers receive: each change of a committed entry, then a commit
//! marker, in log order; and a reset when the store is replaced whole by a
//! raft snapshot, after which a watcher must read everything again.

use std::sync::Arc;

use shoal_api::{watch_event, Object, WatchEvent};
use tokio::sync::broadcast;

/// How many committed entries a watcher may fall behind before it is cut off. A watcher
/// that lags this far must re-list (`view_and_watch` again); buffering without
/// bound would let one slow client exhaust the manager's memory.
pub const WATCH_QUEUE_ENTRIES: usize = 4_096;

/// One change, or the end of one entry's changes.
// Nearly every event is a Change; boxing it would add an allocation per
// event to save space only on the one Commit per entry.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Change {
        action: watch_event::Action,
        object: Object,
        /// Raft index of the entry that made the change.
        version: u64,
        /// When the change was proposed (milliseconds since the epoch).
        timestamp_ms: i64,
    },
    /// Every change of the entry at raft index `version` has been sent.
    Commit { version: u64 },
    /// The tables were replaced whole (a raft snapshot installed) at
    /// `version`: what a watcher built from earlier events is stale.
    Reset { version: u64 },
}

impl Event {
    /// The raft index the event belongs to.
    pub fn version(&self) -> u64 {
        match self {
            Event::Change { version, .. }
            | Event::Commit { version }
            | Event::Reset { version } => *version,
        }
    }

    /// The API form of the event.
    pub fn to_proto(&self) -> WatchEvent {
        match self {
            Event::Change {
                action,
                object,
                version,
                timestamp_ms,
            } => WatchEvent {
                action: *action as i32,
                version: *version,
                object: Some(object.clone()),
                timestamp_ms: *timestamp_ms,
            },
            Event::Commit { version } => WatchEvent {
                action: watch_event::Action::Commit as i32,
                object: None,
                version: *version,
                timestamp_ms: 0,
            },
            Event::Reset { version } => WatchEvent {
                action: watch_event::Action::Reset as i32,
                object: None,
                version: *version,
                timestamp_ms: 0,
            },
        }
    }
}

/// The receiving end of a watch.
///
/// # Cancel safety
/// [`WatchStream::next`] is cancel safe: an event is only taken from the queue
/// when it is returned.
pub struct WatchStream {
    rx: broadcast::Receiver<Arc<Vec<Event>>>,
    /// Events received and not handed over yet (beyond what a drain asked
    /// for), in order.
    pending: std::collections::VecDeque<Event>,
    /// An entry [`WatchStream::changed`] received and nobody took yet.
    held: Option<Arc<Vec<Event>>>,
    /// Events at or below this version are skipped: the view the watch was
    /// started with already holds them (none for a plain watch).
    after: Option<u64>,
}

/// Why a watch ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    #[error("the watcher fell more than {WATCH_QUEUE_ENTRIES} commits behind; watch again")]
    Lagged,
    #[error("the store is shutting down")]
    Closed,
}

impl WatchStream {
    pub(crate) fn new(rx: broadcast::Receiver<Arc<Vec<Event>>>, after: Option<u64>) -> WatchStream {
        WatchStream {
            rx,
            pending: Default::default(),
            held: None,
            after,
        }
    }

    /// Drops every event already queued, without waiting. Returns false when
    /// the watcher lagged (some were lost) or the store closed: a caller that
    /// reconciles from a fresh view loses nothing either way.
    pub fn drain(&mut self) -> bool {
        self.pending.clear();
        self.held = None;
        loop {
            match self.rx.try_recv() {
                Ok(_) => continue,
                Err(broadcast::error::TryRecvError::Empty) => return true,
                Err(_) => return false,
            }
        }
    }

    /// Hands every event already queued up to `version` (a view's) to `f`,
    /// in commit order, without waiting; later ones stay queued for the next
    /// drain. Returns false when the watcher lagged (some were lost), the
    /// store was reset (a snapshot installed: nothing after the reset is
    /// handed over) or the store closed: the caller must then start from a
    /// fresh view.
    ///
    /// Called with the version of a view just taken, it hands over the
    /// changes that view holds and earlier drains did not, except those
    /// whose events are still on their way (the store publishes a view
    /// before it sends its changes): those come with a later drain, and
    /// their arrival wakes [`WatchStream::changed`].
    pub fn drain_with(&mut self, version: u64, mut f: impl FnMut(&Event)) -> bool {
        let after = self.after;
        let mut in_step = true;
        let mut beyond = false;
        let mut later = std::collections::VecDeque::new();
        let mut hand = |e: &Event| {
            let v = e.version();
            if after.is_some_and(|a| v <= a) {
                return;
            }
            if beyond || v > version {
                beyond = true;
                later.push_back(e.clone());
                return;
            }
            match e {
                Event::Reset { .. } => in_step = false,
                _ if in_step => f(e),
                _ => {}
            }
        };
        for e in std::mem::take(&mut self.pending) {
            hand(&e);
        }
        if let Some(entry) = self.held.take() {
            entry.iter().for_each(&mut hand);
        }
        let open = loop {
            match self.rx.try_recv() {
                Ok(entry) => entry.iter().for_each(&mut hand),
                Err(broadcast::error::TryRecvError::Empty) => break true,
                Err(_) => break false,
            }
        };
        self.pending = later;
        in_step && open
    }

    /// Waits until a change is queued, without taking it from the queue.
    ///
    /// # Cancel safety
    /// Cancel safe: a change it received stays queued.
    pub async fn changed(&mut self) -> Result<(), WatchError> {
        if !self.pending.is_empty() || self.held.is_some() {
            return Ok(());
        }
        match self.rx.recv().await {
            Ok(entry) => {
                self.held = Some(entry);
                Ok(())
            }
            Err(broadcast::error::RecvError::Lagged(_)) => Err(WatchError::Lagged),
            Err(broadcast::error::RecvError::Closed) => Err(WatchError::Closed),
        }
    }

    /// The next event, in commit order.
    pub async fn next(&mut self) -> Result<Event, WatchError> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                if self.after.is_some_and(|a| e.version() <= a) {
                    continue;
                }
                return Ok(e);
            }
            if let Some(entry) = self.held.take() {
                self.pending.extend(entry.iter().cloned());
                continue;
            }
            match self.rx.recv().await {
                Ok(entry) => self.pending.extend(entry.iter().cloned()),
                Err(broadcast::error::RecvError::Lagged(_)) => return Err(WatchError::Lagged),
                Err(broadcast::error::RecvError::Closed) => return Err(WatchError::Closed),
            }
        }
    }
}
