//! Group commit (DESIGN.md §3): the transactions that wait while one raft
//! write is in flight go together into the next log entry.
//!
//! openraft 0.9 appends and fsyncs each `client_write` on its own, so one
//! writer per entry caps throughput at the disk's fsync rate. The proposer
//! owns the only path to `client_write`: one task takes the first waiting
//! transaction, drains whatever else waits (up to the entry limits), proposes
//! them as one [`Batch`], and answers each writer with its own result. Under
//! load, batches grow by themselves; a lone writer pays one fsync, no timer.
//!
//! Two lanes: agents' status reports ([`Proposer::propose_report`]) wait in
//! their own queue, and each entry takes every other transaction first. A
//! decision (a reconciler's pass, a node marked down, a user's change)
//! moves thousands of tasks on; behind the reports of thousands of agents it
//! waited several entries, at every step of a chain of them. Order holds
//! within a lane; across lanes the writers are concurrent anyway, and each
//! transaction's preconditions are checked when it is applied.

use shoal_api::clock::now_ms;

use openraft::error::{ClientWriteError, RaftError};
use prost::Message;
use shoal_api::{Batch, StoreAction, Transaction};
use shoal_store::TxnError;
use tokio::sync::{mpsc, oneshot};

use crate::types::Proposal;
use crate::Raft;

/// Largest raft entry, in bytes of encoded batch.
pub const MAX_ENTRY_BYTES: usize = 4 << 20;

/// Limits of the proposer.
#[derive(Debug, Clone)]
pub struct ProposerConfig {
    /// Transactions packed into one entry at most.
    pub max_txns_per_entry: usize,
    /// Encoded bytes of one entry at most; one transaction larger than this is
    /// refused.
    pub max_entry_bytes: usize,
    /// Transactions waiting for an entry at most; writers beyond it wait.
    pub queue_txns: usize,
    /// Actions per transaction when a large change is split.
    pub max_actions_per_txn: usize,
    /// Raft entries proposed and not yet applied, at most. Two lets the next
    /// batch form and reach openraft while the previous one is being fsynced.
    pub max_entries_in_flight: usize,
}

impl Default for ProposerConfig {
    fn default() -> Self {
        ProposerConfig {
            // Small enough that a decision arriving behind a flood of
            // reports waits for short entries; a 64-writer load forms
            // entries of 64.
            max_txns_per_entry: 256,
            max_entry_bytes: MAX_ENTRY_BYTES,
            queue_txns: 16_384,
            max_actions_per_txn: 1_000,
            max_entries_in_flight: 2,
        }
    }
}

/// Why a proposed transaction was not applied. It travels from a leader
/// to the follower that forwarded the transaction, so it is serializable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ProposeError {
    /// Committed, but refused when applied (stale version, name taken …).
    #[error(transparent)]
    Txn(#[from] TxnError),
    #[error("this manager is not the raft leader (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    /// No manager leads the cluster now (an election, or no quorum).
    #[error("no manager leads the cluster after {waited_ms} ms (an election is under way, or fewer than a quorum of managers are reachable); try again")]
    NoLeader { waited_ms: u64 },
    /// The leader refused this manager: it was removed from the cluster.
    #[error("{message}")]
    Removed { message: String },
    /// The write was not sent: the leader cannot be reached.
    #[error("the leader at {leader} cannot be reached: {message}")]
    Unreachable { leader: String, message: String },
    /// The write was sent to the leader and its fate is not known: it may
    /// have been applied. Read before writing again.
    #[error("the leader at {leader} was lost while it had the write ({message}): it may or may not have been applied")]
    Unknown { leader: String, message: String },
    #[error("transaction is {bytes} bytes, over the {limit}-byte limit of one raft entry")]
    TooLarge { bytes: usize, limit: usize },
    #[error("raft failed: {0}")]
    Raft(String),
    #[error("the manager is shutting down")]
    ShuttingDown,
}

struct Waiting {
    txn: Transaction,
    bytes: usize,
    done: oneshot::Sender<Result<u64, ProposeError>>,
}

/// The handle writers propose through; cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Waiting>,
    reports: mpsc::Sender<Waiting>,
    config: ProposerConfig,
}

impl Proposer {
    /// Starts the proposing task. It ends when every handle is dropped.
    pub fn start(raft: Raft, config: ProposerConfig) -> Proposer {
        let (tx, rx) = mpsc::channel(config.queue_txns);
        let (reports, reports_rx) = mpsc::channel(config.queue_txns);
        tokio::spawn(run(raft, Lanes { rx, reports_rx }, config.clone()));
        Proposer {
            tx,
            reports,
            config,
        }
    }

    /// Proposes one transaction and waits until it is committed and applied.
    /// Returns the raft index it was applied at: the new `meta.version` of
    /// every object it changed.
    ///
    /// # Cancel safety
    /// Dropping the future does not withdraw the transaction: it may still be
    /// committed. Callers that must know re-read the store.
    pub async fn propose(&self, txn: Transaction) -> Result<u64, ProposeError> {
        self.submit(&self.tx, txn).await
    }

    /// As [`Proposer::propose`], in the lane of agents' status reports:
    /// every other transaction waiting goes into the next entry first.
    ///
    /// # Cancel safety
    /// As [`Proposer::propose`].
    pub async fn propose_report(&self, txn: Transaction) -> Result<u64, ProposeError> {
        self.submit(&self.reports, txn).await
    }

    async fn submit(
        &self,
        lane: &mpsc::Sender<Waiting>,
        mut txn: Transaction,
    ) -> Result<u64, ProposeError> {
        txn.timestamp_ms = now_ms();
        let bytes = txn.encoded_len();
        if bytes > self.config.max_entry_bytes {
            return Err(ProposeError::TooLarge {
                bytes,
                limit: self.config.max_entry_bytes,
            });
        }
        let (done, answer) = oneshot::channel();
        lane.send(Waiting { txn, bytes, done })
            .await
            .map_err(|_| ProposeError::ShuttingDown)?;
        answer.await.map_err(|_| ProposeError::ShuttingDown)?
    }

    /// Proposes a large change as several transactions of at most
    /// `max_actions_per_txn` actions each, in order. Not atomic as a whole:
    /// each part is. Returns the index of the last part.
    pub async fn propose_in_parts(&self, actions: Vec<StoreAction>) -> Result<u64, ProposeError> {
        let mut last = 0;
        let mut actions = actions.into_iter().peekable();
        while actions.peek().is_some() {
            let part: Vec<StoreAction> = actions
                .by_ref()
                .take(self.config.max_actions_per_txn)
                .collect();
            last = self
                .propose(Transaction {
                    leader_term: 0,
                    actions: part,
                    timestamp_ms: 0,
                })
                .await?;
        }
        Ok(last)
    }
}

/// The two queues, read in order of precedence.
struct Lanes {
    rx: mpsc::Receiver<Waiting>,
    reports_rx: mpsc::Receiver<Waiting>,
}

impl Lanes {
    /// The next transaction to wait for; `None` once every handle is gone.
    async fn recv(&mut self) -> Option<Waiting> {
        tokio::select! {
            biased;
            first = self.rx.recv() => first,
            Some(report) = self.reports_rx.recv() => Some(report),
        }
    }

    /// The next transaction already waiting, if any.
    fn try_recv(&mut self) -> Option<Waiting> {
        self.rx
            .try_recv()
            .or_else(|_| self.reports_rx.try_recv())
            .ok()
    }
}

async fn run(raft: Raft, mut rx: Lanes, config: ProposerConfig) {
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(
        config.max_entries_in_flight.max(1),
    ));
    // Shutdown: the loop ends when every Proposer handle is gone (both
    // lanes' senders live in each handle, so they close together).
    while let Some(first) = rx.recv().await {
        // Wait for a free slot before draining, so the entry takes every
        // transaction that arrived while the others were in flight.
        let Ok(mut permit) = std::sync::Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        let mut bytes = first.bytes;
        let mut waiting = vec![first];
        while waiting.len() < config.max_txns_per_entry {
            let Some(next) = rx.try_recv() else { break };
            if bytes + next.bytes > config.max_entry_bytes {
                // The entry is full: send it, and start the next with `next`.
                spawn_entry(&raft, std::mem::take(&mut waiting), permit);
                let Ok(p) = std::sync::Arc::clone(&in_flight).acquire_owned().await else {
                    return;
                };
                permit = p;
                bytes = 0;
            }
            bytes += next.bytes;
            waiting.push(next);
        }
        spawn_entry(&raft, waiting, permit);
    }
}

fn spawn_entry(raft: &Raft, waiting: Vec<Waiting>, permit: tokio::sync::OwnedSemaphorePermit) {
    let raft = raft.clone();
    tokio::spawn(async move {
        propose_entry(&raft, waiting).await;
        drop(permit);
    });
}

async fn propose_entry(raft: &Raft, waiting: Vec<Waiting>) {
    if waiting.is_empty() {
        return;
    }
    let mut transactions = Vec::with_capacity(waiting.len());
    let mut answers = Vec::with_capacity(waiting.len());
    for w in waiting {
        transactions.push(w.txn);
        answers.push(w.done);
    }
    let txns = transactions.len();
    let batch = Batch { transactions }.encode_to_vec();
    let bytes = batch.len();
    let started = shoal_api::clock::Instant::now();
    let written = raft.client_write(Proposal { batch }).await;
    tracing::debug!(
        txns,
        bytes,
        took_ms = started.elapsed().as_millis() as u64,
        "entry written"
    );
    match written {
        Ok(written) => {
            let index = written.log_id.index;
            let mut results = written.data.results.into_iter();
            for answer in answers {
                let result = match results.next() {
                    Some(Ok(())) => Ok(index),
                    Some(Err(e)) => Err(ProposeError::Txn(e)),
                    None => Err(ProposeError::Raft(
                        "applied entry returned fewer results than transactions".into(),
                    )),
                };
                let _ = answer.send(result);
            }
        }
        Err(e) => {
            let error = match e {
                RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                    ProposeError::NotLeader {
                        leader: f.leader_id,
                    }
                }
                other => ProposeError::Raft(other.to_string()),
            };
            for answer in answers {
                let _ = answer.send(Err(error.clone()));
            }
        }
    }
}
