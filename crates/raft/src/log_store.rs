//! The raft log, the vote and the committed index, in one redb file.
//!
//! # Guarantees
//! `append` reports an entry written only after redb's commit returned with
//! `Durability::Immediate`, which fsyncs; openraft acknowledges nothing before
//! that. The vote is saved the same way. The committed index is saved without
//! its own fsync: it becomes durable with the next log write, and after a crash
//! raft re-derives it, so an older value costs a re-apply, never a lost write.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError,
    Vote,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::codec::{decode_entry, decode_log_id, encode_entry, encode_log_id};
use crate::types::TypeConfig;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEY_VOTE: &str = "vote";
const KEY_PURGED: &str = "last_purged";
/// Written once at creation; a file without it is not Shoal's.
const KEY_FORMAT: &str = "format";
const FORMAT: &[u8] = b"shoal-raft-log-v1";

type StoreResult<T> = Result<T, StorageError<u64>>;

/// Why the log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open raft log {path}: {source}")]
    Database {
        path: String,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("raft log {path} is not a Shoal raft log (format marker {found:?})")]
    Foreign { path: String, found: String },
    #[error("raft log {path}: {message}")]
    Io { path: String, message: String },
}

/// The log store; cheap to clone (all clones share one database).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

/// redb's page cache for the log, at most. Its default (1 GiB) kept the
/// pages of every entry written until it was full: at 100,000 tasks that
/// was most of the manager's resident memory. The log is appended and read
/// back once, right after, for applying; the cache needs to hold a few
/// entries in flight, not the log.
const LOG_CACHE_BYTES: usize = 64 << 20;

fn io_err(e: impl std::error::Error + 'static) -> AnyError {
    AnyError::new(&e)
}

impl LogStore {
    /// Opens the log at `path`, creating it when `create` is set. An existing
    /// file that is not a Shoal log, or is damaged beyond redb's repair, is an
    /// error: a state dir is never silently reset.
    pub fn open(path: &Path, create: bool) -> Result<LogStore, OpenError> {
        let shown = path.display().to_string();
        let mut builder = Database::builder();
        builder.set_cache_size(LOG_CACHE_BYTES);
        let db = if create {
            builder.create(path)
        } else {
            builder.open(path)
        }
        .map_err(|source| OpenError::Database {
            path: shown.clone(),
            source,
        })?;
        let io = |e: &dyn std::fmt::Display| OpenError::Io {
            path: shown.clone(),
            message: e.to_string(),
        };
        let txn = db.begin_write().map_err(|e| io(&e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| io(&e))?;
            let found = meta
                .get(KEY_FORMAT)
                .map_err(|e| io(&e))?
                .map(|v| v.value().to_vec());
            match found {
                Some(f) if f == FORMAT => {}
                Some(f) => {
                    return Err(OpenError::Foreign {
                        path: shown,
                        found: String::from_utf8_lossy(&f).into_owned(),
                    })
                }
                None if create => {
                    meta.insert(KEY_FORMAT, FORMAT).map_err(|e| io(&e))?;
                }
                None => {
                    return Err(OpenError::Foreign {
                        path: shown,
                        found: String::new(),
                    })
                }
            }
            txn.open_table(LOG).map_err(|e| io(&e))?;
        }
        txn.commit().map_err(|e| io(&e))?;
        Ok(LogStore { db: Arc::new(db) })
    }

    /// Runs a blocking write (one redb commit, one fsync) without stalling
    /// other tasks. On a multi-threaded runtime it runs in place, telling tokio
    /// to move this worker's other tasks elsewhere: that saves the thread
    /// handoff of `spawn_blocking` on every write (measured: a lone writer's
    /// latency is mostly this path). A current-thread runtime cannot do that,
    /// so there it goes to the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&LogStore) -> T + Send + 'static,
    ) -> Result<T, StorageError<u64>> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
            return Ok(tokio::task::block_in_place(|| work(self)));
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || work(&this))
            .await
            .map_err(|e| StorageIOError::write_logs(io_err(e)).into())
    }

    fn read_meta(&self, key: &str) -> Result<Option<Vec<u8>>, AnyError> {
        let txn = self.db.begin_read().map_err(io_err)?;
        let meta = txn.open_table(META).map_err(io_err)?;
        Ok(meta.get(key).map_err(io_err)?.map(|v| v.value().to_vec()))
    }

    fn write_meta(&self, key: &str, value: &[u8], durability: Durability) -> Result<(), AnyError> {
        let mut txn = self.db.begin_write().map_err(io_err)?;
        txn.set_durability(durability).map_err(io_err)?;
        {
            let mut meta = txn.open_table(META).map_err(io_err)?;
            meta.insert(key, value).map_err(io_err)?;
        }
        txn.commit().map_err(io_err)
    }

    fn read_log_id(&self, key: &str) -> Result<Option<LogId<u64>>, AnyError> {
        Ok(self
            .read_meta(key)?
            .filter(|b| b.len() == 24)
            .map(|b| decode_log_id(&b)))
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId<u64>>, AnyError> {
        let txn = self.db.begin_read().map_err(io_err)?;
        let log = txn.open_table(LOG).map_err(io_err)?;
        let last = log.last().map_err(io_err)?;
        Ok(last.map(|(_, v)| decode_log_id(&v.value()[..24.min(v.value().len())])))
    }

    fn write_entries(&self, entries: Vec<(u64, Vec<u8>)>) -> Result<(), AnyError> {
        let txn = self.db.begin_write().map_err(io_err)?;
        {
            let mut log = txn.open_table(LOG).map_err(io_err)?;
            for (index, bytes) in &entries {
                log.insert(*index, bytes.as_slice()).map_err(io_err)?;
            }
        }
        // Durability::Immediate is the default: commit returns after fsync.
        txn.commit().map_err(io_err)
    }

    fn remove_range(&self, from: Bound<u64>, to: Bound<u64>) -> Result<(), AnyError> {
        let txn = self.db.begin_write().map_err(io_err)?;
        {
            let mut log = txn.open_table(LOG).map_err(io_err)?;
            log.retain_in::<u64, _>((from, to), |_, _| false)
                .map_err(io_err)?;
        }
        txn.commit().map_err(io_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<TypeConfig>>> {
        let read = || -> Result<Vec<Entry<TypeConfig>>, AnyError> {
            let txn = self.db.begin_read().map_err(io_err)?;
            let log = txn.open_table(LOG).map_err(io_err)?;
            let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
            let mut out = Vec::new();
            for item in log.range::<u64>(bounds).map_err(io_err)? {
                let (_, v) = item.map_err(io_err)?;
                out.push(decode_entry(v.value()).map_err(io_err)?);
            }
            Ok(out)
        };
        read().map_err(|e| StorageIOError::read_logs(e).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StoreResult<LogState<TypeConfig>> {
        let state = || -> Result<LogState<TypeConfig>, AnyError> {
            let last_purged_log_id = self.read_log_id(KEY_PURGED)?;
            let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
            Ok(LogState {
                last_purged_log_id,
                last_log_id,
            })
        };
        state().map_err(|e| StorageIOError::read_logs(e).into())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StoreResult<()> {
        let bytes = serde_json::to_vec(vote).map_err(|e| StorageIOError::write_vote(io_err(e)))?;
        self.blocking(move |this| this.write_meta(KEY_VOTE, &bytes, Durability::Immediate))
            .await?
            .map_err(|e| StorageIOError::write_vote(e).into())
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<u64>>> {
        let bytes = self
            .read_meta(KEY_VOTE)
            .map_err(StorageIOError::read_vote)?;
        match bytes {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| StorageIOError::read_vote(io_err(e)).into()),
        }
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| (e.log_id.index, encode_entry(&e)))
            .collect();
        let (count, bytes) = (
            encoded.len(),
            encoded.iter().map(|(_, e)| e.len()).sum::<usize>(),
        );
        let started = shoal_api::clock::Instant::now();
        let written = self
            .blocking(move |this| this.write_entries(encoded))
            .await?;
        tracing::debug!(
            entries = count,
            bytes,
            took_us = started.elapsed().as_micros() as u64,
            "log written"
        );
        match written {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StoreResult<()> {
        self.remove_range(Bound::Included(log_id.index), Bound::Unbounded)
            .map_err(|e| StorageIOError::write_logs(e).into())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StoreResult<()> {
        let mut bytes = Vec::with_capacity(24);
        encode_log_id(&log_id, &mut bytes);
        // Record the purge point first: a crash between the two steps leaves
        // extra entries below it, which are ignored, never a gap.
        self.write_meta(KEY_PURGED, &bytes, Durability::Immediate)
            .map_err(StorageIOError::write_logs)?;
        self.remove_range(Bound::Unbounded, Bound::Included(log_id.index))
            .map_err(|e| StorageIOError::write_logs(e).into())
    }
}
