//! A new raft group of one around a store that already exists: the way out
//! when a quorum of managers is lost for good (`--force-new-cluster`: the
//! store this manager has) and the way back from a backup (`--restore`:
//! the store the backup holds).
//!
//! The replica's directory gets a snapshot of the store, whose membership
//! is this replica alone, and an empty log; openraft starts from that
//! snapshot as from any other, and the replica elects itself. Every object
//! keeps its version: the snapshot is at the index of the store, and the
//! group's next entries come after it. The changes `edit` asks for (the
//! managers that are gone, the node that restores) are applied at the next
//! index, so they are versioned like any write.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{RaftLogReader, RaftLogStorage, RaftStateMachine};
use openraft::{
    BasicNode, CommittedLeaderId, LogId, Membership, SnapshotMeta, StoredMembership, Vote,
};
use prost::Message;
use shoal_api::{Batch, StoreAction, StoreSnapshot, Transaction};
use shoal_store::{Store, Tables};

use crate::log_store::LogStore;
use crate::replica::ReplicaError;
use crate::state_machine::{write_snapshot_file, StateMachine};

const LOG_FILE: &str = "raft.redb";

/// Where the store comes from.
pub enum Origin {
    /// The replica in the directory: its snapshot, then every entry of its
    /// log (committed or not: with the quorum gone, nobody can say).
    Replica,
    /// A backup: the store's content, at the version it was taken at.
    Backup(StoreSnapshot),
}

fn failed(e: impl std::fmt::Display) -> ReplicaError {
    ReplicaError::Raft(e.to_string())
}

/// Makes the replica in `dir` the only voter (`me`, at `addr`) of a new
/// group whose store is `origin`'s, with `edit`'s changes applied; returns
/// the store's index.
pub async fn refound(
    dir: &Path,
    me: u64,
    addr: &str,
    origin: Origin,
    edit: impl FnOnce(&Tables) -> Vec<StoreAction>,
) -> Result<u64, ReplicaError> {
    std::fs::create_dir_all(dir).map_err(|source| ReplicaError::Dir {
        path: dir.display().to_string(),
        source,
    })?;
    let store = Arc::new(Store::new());
    let (mut term, mut index) = (0, 0);
    match origin {
        Origin::Replica => {
            let mut sm = StateMachine::open(dir, Arc::clone(&store))?;
            let mut log = LogStore::open(&dir.join(LOG_FILE), false)?;
            let (applied, _) = sm.applied_state().await.map_err(failed)?;
            if let Some(applied) = applied {
                (term, index) = (applied.leader_id.term, applied.index);
            }
            let state = log.get_log_state().await.map_err(failed)?;
            let last = state.last_log_id.map_or(0, |l| l.index);
            if last > index {
                let entries = log
                    .try_get_log_entries(index + 1..=last)
                    .await
                    .map_err(failed)?;
                if let Some(e) = entries.last() {
                    (term, index) = (e.log_id.leader_id.term, e.log_id.index);
                }
                sm.apply(entries).await.map_err(failed)?;
            }
            if let Some(vote) = log.read_vote().await.map_err(failed)? {
                term = term.max(vote.leader_id().term);
            }
        }
        Origin::Backup(snapshot) => {
            store.restore(snapshot).map_err(failed)?;
            index = store.version();
        }
    }
    let actions = edit(&store.view());
    if !actions.is_empty() {
        index += 1;
        let results = store.apply(
            index,
            Batch {
                transactions: vec![Transaction {
                    leader_term: 0,
                    actions,
                    timestamp_ms: shoal_api::clock::now_ms(),
                }],
            },
        );
        if let Some(Err(e)) = results.into_iter().next() {
            return Err(failed(format!("the new group's first change: {e}")));
        }
    }
    let log_id = LogId::new(CommittedLeaderId::new(term, me), index);
    let membership = Membership::new(
        vec![BTreeSet::from([me])],
        BTreeMap::from([(me, BasicNode::new(addr))]),
    );
    let meta = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: StoredMembership::new(Some(log_id), membership),
        snapshot_id: format!("refound-{index}"),
    };
    // The new log first, beside the old one: empty, its vote keeping the
    // term, so the new group's terms only grow past every entry it holds.
    // Then the snapshot; then the new log replaces the old (its entries
    // are in the snapshot, its membership is the old group's). A crash
    // at any point leaves a log in place: at worst the old one beside
    // the new snapshot, which openraft purges up to the snapshot.
    let log_path = dir.join(LOG_FILE);
    let new_log_path = dir.join(format!("{LOG_FILE}.new"));
    match std::fs::remove_file(&new_log_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed(format!("{}: {e}", new_log_path.display()))),
    }
    {
        let mut log = LogStore::open(&new_log_path, true)?;
        log.save_vote(&Vote::new(term, me)).await.map_err(failed)?;
    }
    let data = store.snapshot().encode_to_vec();
    write_snapshot_file(dir, &meta, &data).map_err(failed)?;
    std::fs::rename(&new_log_path, &log_path)
        .and_then(|()| std::fs::File::open(dir)?.sync_all())
        .map_err(|e| failed(format!("{}: {e}", log_path.display())))?;
    Ok(index)
}
