//! Applies committed entries to the in-memory store and keeps the latest
//! snapshot of it on disk.
//!
//! The store is rebuilt on start from the snapshot file, then openraft replays
//! the log tail after it, so the state machine itself needs no durable writes
//! beyond the snapshot.
//!
//! Snapshot file layout: `u32 meta length | meta (JSON) | StoreSnapshot
//! (protobuf)`, written to a temporary file, fsynced, then renamed over the old
//! one, so a crash leaves either the old snapshot or the new one.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use prost::Message;
use shoal_api::{Batch, StoreSnapshot};
use shoal_store::{Store, TxnError};

use crate::types::{Applied, TypeConfig};

const SNAPSHOT_FILE: &str = "snapshot";
/// Entries applied as one view at most: a log replayed at start, or a
/// follower catching up, hands thousands at once, and their watch events
/// are held until the view is published.
const MAX_RUN_ENTRIES: usize = 16;
type Meta = SnapshotMeta<u64, BasicNode>;
type StoreResult<T> = Result<T, StorageError<u64>>;

fn any(e: impl std::fmt::Display) -> AnyError {
    AnyError::error(e.to_string())
}

/// Why a snapshot file could not be loaded at start.
#[derive(Debug, thiserror::Error)]
#[error("snapshot {path} is damaged: {message}")]
pub struct SnapshotLoadError {
    pub path: String,
    pub message: String,
}

/// The raft state machine over a shared [`Store`].
pub struct StateMachine {
    store: Arc<Store>,
    dir: PathBuf,
    last_applied: Option<LogId<u64>>,
    last_membership: StoredMembership<u64, BasicNode>,
    snapshot_seq: u64,
}

impl StateMachine {
    /// Applies a run of normal entries as one view, and answers each
    /// transaction: the store's result, or its fence refusal in its place.
    fn apply_run(
        &self,
        run: &mut Vec<(u64, Batch)>,
        run_fenced: &mut Vec<Vec<(usize, TxnError)>>,
        out: &mut Vec<Applied>,
    ) {
        if run.is_empty() {
            return;
        }
        let entries = run.len();
        let first = run.first().map_or(0, |(index, _)| *index);
        let txns: usize = run.iter().map(|(_, b)| b.transactions.len()).sum();
        let started = shoal_api::clock::Instant::now();
        let applied = self.store.apply_all(std::mem::take(run));
        tracing::debug!(
            first,
            entries,
            txns,
            took_us = started.elapsed().as_micros() as u64,
            "applied"
        );
        for (mut results, fenced) in applied.into_iter().zip(run_fenced.drain(..)) {
            for (at, refusal) in fenced {
                results.insert(at, Err(refusal));
            }
            out.push(Applied { results });
        }
    }

    /// Loads the snapshot in `dir`, if any, into `store`.
    pub fn open(dir: &Path, store: Arc<Store>) -> Result<StateMachine, SnapshotLoadError> {
        let path = dir.join(SNAPSHOT_FILE);
        let mut sm = StateMachine {
            store,
            dir: dir.to_path_buf(),
            last_applied: None,
            last_membership: StoredMembership::default(),
            snapshot_seq: 0,
        };
        let fail = |message: String| SnapshotLoadError {
            path: path.display().to_string(),
            message,
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let (meta, data) = split_file(&bytes).map_err(fail)?;
                let snapshot = StoreSnapshot::decode(data).map_err(|e| fail(e.to_string()))?;
                sm.store
                    .restore(snapshot)
                    .map_err(|e| fail(e.to_string()))?;
                sm.last_applied = meta.last_log_id;
                sm.last_membership = meta.last_membership;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(e.to_string())),
        }
        Ok(sm)
    }

    fn read_current(&self) -> Result<Option<(Meta, Vec<u8>)>, AnyError> {
        match std::fs::read(self.dir.join(SNAPSHOT_FILE)) {
            Ok(bytes) => {
                let (meta, data) = split_file(&bytes).map_err(any)?;
                Ok(Some((meta, data.to_vec())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(any(e)),
        }
    }
}

fn split_file(bytes: &[u8]) -> Result<(Meta, &[u8]), String> {
    if bytes.len() < 4 {
        return Err("shorter than its header".into());
    }
    let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let meta_bytes = bytes
        .get(4..4 + len)
        .ok_or_else(|| "meta runs past the end".to_string())?;
    let meta: Meta = serde_json::from_slice(meta_bytes).map_err(|e| e.to_string())?;
    Ok((meta, &bytes[4 + len..]))
}

/// Writes the snapshot file atomically (temp file, fsync, rename, fsync dir).
pub(crate) fn write_snapshot_file(dir: &Path, meta: &Meta, data: &[u8]) -> std::io::Result<()> {
    let meta_bytes = serde_json::to_vec(meta).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&(meta_bytes.len() as u32).to_be_bytes())?;
        f.write_all(&meta_bytes)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Takes out of `batch` the transactions a leader's component decided in
/// another term than `term`, the one the entry was appended in; each with
/// its place in the batch and its refusal, in order. Every replica applies
/// the same entry with the same term, so all refuse alike.
fn fence(mut batch: Batch, term: u64) -> (Batch, Vec<(usize, TxnError)>) {
    let stale = |t: &shoal_api::Transaction| t.leader_term != 0 && t.leader_term != term;
    if !batch.transactions.iter().any(stale) {
        return (batch, Vec::new());
    }
    let mut fenced = Vec::new();
    let mut kept = Vec::with_capacity(batch.transactions.len());
    for (at, txn) in batch.transactions.into_iter().enumerate() {
        if stale(&txn) {
            fenced.push((
                at,
                TxnError::StaleTerm {
                    decided_in: txn.leader_term,
                    appended_in: term,
                },
            ));
        } else {
            kept.push(txn);
        }
    }
    batch.transactions = kept;
    (batch, fenced)
}

/// Builds a snapshot from the store's view taken when openraft asked for
/// the builder, so it matches `last_applied` exactly while later entries
/// keep being applied: the view is immutable, and encoding it (seconds at a
/// million tasks) runs off the state machine, which goes on applying.
pub struct SnapshotBuilder {
    dir: PathBuf,
    view: shoal_store::View,
    last_applied: Option<LogId<u64>>,
    last_membership: StoredMembership<u64, BasicNode>,
    snapshot_id: String,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<TypeConfig>> {
        let meta = Meta {
            last_log_id: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_id: self.snapshot_id.clone(),
        };
        let view = std::sync::Arc::clone(&self.view);
        let dir = self.dir.clone();
        let meta2 = meta.clone();
        let data = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let data = view.to_snapshot().encode_to_vec();
            write_snapshot_file(&dir, &meta2, &data)?;
            Ok(data)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, any(e)))?
        .map_err(|e| StorageIOError::write_snapshot(None, any(e)))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StoreResult<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>)> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<Applied>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Consecutive normal entries are applied together, as one view
        // (`Store::apply_all`); a blank or membership entry closes the run.
        let mut out = Vec::new();
        let mut run: Vec<(u64, Batch)> = Vec::new();
        let mut run_fenced = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            match entry.payload {
                EntryPayload::Normal(proposal) => {
                    let batch = match Batch::decode(proposal.batch.as_slice()) {
                        Ok(batch) => batch,
                        Err(e) => {
                            // The entries before it are applied, as
                            // `last_applied` says.
                            self.apply_run(&mut run, &mut run_fenced, &mut out);
                            return Err(StorageIOError::apply(entry.log_id, any(e)).into());
                        }
                    };
                    let (batch, fenced) = fence(batch, entry.log_id.leader_id.term);
                    run.push((index, batch));
                    run_fenced.push(fenced);
                    if run.len() >= MAX_RUN_ENTRIES {
                        self.apply_run(&mut run, &mut run_fenced, &mut out);
                    }
                }
                EntryPayload::Blank => {
                    self.apply_run(&mut run, &mut run_fenced, &mut out);
                    self.store.advance_to(index);
                    out.push(Applied::default());
                }
                EntryPayload::Membership(m) => {
                    self.apply_run(&mut run, &mut run_fenced, &mut out);
                    self.last_membership = StoredMembership::new(Some(entry.log_id), m);
                    self.store.advance_to(index);
                    out.push(Applied::default());
                }
            }
            self.last_applied = Some(entry.log_id);
        }
        self.apply_run(&mut run, &mut run_fenced, &mut out);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        let index = self.last_applied.map_or(0, |l| l.index);
        SnapshotBuilder {
            dir: self.dir.clone(),
            view: self.store.view(),
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_id: format!("{index}-{}", self.snapshot_seq),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StoreResult<()> {
        let data = snapshot.into_inner();
        let content = StoreSnapshot::decode(data.as_slice())
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), any(e)))?;
        write_snapshot_file(&self.dir, meta, &data)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), any(e)))?;
        self.store
            .restore(content)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), any(e)))?;
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<TypeConfig>>> {
        let current = self
            .read_current()
            .map_err(|e| StorageIOError::read_snapshot(None, e))?;
        Ok(current.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::Transaction;

    fn txn(leader_term: u64, tag: i64) -> Transaction {
        Transaction {
            actions: Vec::new(),
            timestamp_ms: tag,
            leader_term,
        }
    }

    #[test]
    fn a_transaction_decided_in_another_term_is_taken_out_with_its_place_and_the_rest_kept_in_order(
    ) {
        let batch = Batch {
            transactions: vec![txn(0, 1), txn(4, 2), txn(5, 3), txn(7, 4), txn(0, 5)],
        };
        let (kept, fenced) = fence(batch, 5);
        let tags: Vec<i64> = kept.transactions.iter().map(|t| t.timestamp_ms).collect();
        assert_eq!(tags, vec![1, 3, 5]);
        assert_eq!(
            fenced,
            vec![
                (
                    1,
                    TxnError::StaleTerm {
                        decided_in: 4,
                        appended_in: 5
                    }
                ),
                (
                    3,
                    TxnError::StaleTerm {
                        decided_in: 7,
                        appended_in: 5
                    }
                ),
            ]
        );
    }

    #[test]
    fn a_batch_of_the_entrys_own_term_or_of_users_is_untouched() {
        let batch = Batch {
            transactions: vec![txn(0, 1), txn(9, 2)],
        };
        let (kept, fenced) = fence(batch.clone(), 9);
        assert_eq!(kept, batch);
        assert!(fenced.is_empty());
    }
}
