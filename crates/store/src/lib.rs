//! Shoal's store: the in-memory tables every manager component reads and
//! writes, and the only channel between them (DESIGN.md §1, §3).
//!
//! The store itself never decides anything. It holds one table per object kind
//! with its indexes, applies committed raft entries ([`shoal_api::Batch`]) in
//! log order, and tells watchers what changed. Writers do not call
//! [`Store::apply`] themselves: they propose a [`shoal_api::Transaction`] to raft,
//! and every manager applies it once it is committed, so every manager reaches
//! the same tables.
//!
//! # Guarantees
//! - A transaction is applied all or nothing. Each action carries the version
//!   its writer read; a stale version fails that transaction alone with
//!   [`TxnError::Conflict`], never the rest of its batch.
//! - `meta.version` of a changed object is the raft index of the entry that
//!   changed it, so versions are the same on every manager.
//! - Watchers see changes in commit order, each entry closed by a commit marker;
//!   [`Store::view_and_watch`] gives a consistent view plus every later change,
//!   with no gap and no duplicate.
//! - Tasks made from the same spec share one copy of it in memory.

mod error;
mod key;
mod store;
mod tables;
mod watch;

pub use error::{LookupError, TxnError};
pub use key::Key;
pub use store::{Store, View};
pub use tables::Tables;
pub use watch::{Event, WatchError, WatchStream, WATCH_QUEUE_ENTRIES};
