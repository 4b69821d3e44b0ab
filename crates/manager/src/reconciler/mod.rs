//! The thin loop around each pure decision (STYLE.md habit 1): read a view,
//! decide, propose, wait for the next change.
//!
//! Level-triggered, with a memory: a reconciler is told each committed
//! change (`observe`) and then decides from the store view (`decide`), so a
//! pass looks again only at what changed instead of every task. The changes
//! it is told are those up to the view it decides from that have reached
//! its watch: the view is taken first, then the watch is drained up to the
//! view's version. A change whose event is still on its way is told in the
//! next pass, which its arrival starts. A pass
//! decides from everything (`full`) on start, after the watch lagged, after
//! any proposal failed (what the reconciler expected to see did not
//! happen), and at least every [`FULL_PASS_MS`] as a safety net. A proposal
//! that fails (a conflict with another writer, raft unavailable) is retried
//! by that full pass, after a backoff when every proposal of a pass failed:
//! never dropped with a log line.

pub(crate) mod backoff;

use shoal_api::clock::now_ms;
use std::time::Duration;

use shoal_api::clock::Instant;

use shoal_api::{StoreAction, Transaction};
use shoal_raft::LeaderTerm;
use shoal_store::{Event, Tables};
use tokio::sync::watch;

use backoff::Backoff;

/// Backoff after a pass whose every proposal failed.
const RETRY_MIN_MS: u64 = 50;
const RETRY_MAX_MS: u64 = 2_000;
/// Without any change, a pass still runs this often (a missed wake-up costs
/// at most this much).
const IDLE_PASS_MS: u64 = 10_000;
/// A pass decides from everything at least this often, whatever happened.
pub const FULL_PASS_MS: u64 = 30_000;

/// A pass's outcome: transactions to propose and when to look again.
#[derive(Debug, Default)]
pub struct Pass {
    pub transactions: Vec<Vec<StoreAction>>,
    pub wake_at_ms: Option<i64>,
}

impl Pass {
    /// A flat list of actions, proposed in bounded transactions.
    pub fn chunked(actions: Vec<StoreAction>) -> Pass {
        Pass {
            transactions: pack(actions.into_iter().map(|a| vec![a])),
            wake_at_ms: None,
        }
    }
}

/// A transaction a reconciler proposes holds at most this many bytes: well
/// under a raft entry's limit, so one never fails for its size.
pub const MAX_TRANSACTION_BYTES: usize = shoal_raft::MAX_ENTRY_BYTES / 4;

/// Packs groups of actions (each group must commit together) into as few
/// transactions as the bounds allow: at most
/// [`crate::MAX_ACTIONS_PER_PASS`] actions and [`MAX_TRANSACTION_BYTES`]
/// bytes each, unless one group alone is larger.
pub fn pack(groups: impl IntoIterator<Item = Vec<StoreAction>>) -> Vec<Vec<StoreAction>> {
    use prost::Message;
    let mut out: Vec<Vec<StoreAction>> = Vec::new();
    let mut current: Vec<StoreAction> = Vec::new();
    let mut bytes = 0;
    for group in groups {
        let size: usize = group.iter().map(Message::encoded_len).sum();
        let full = current.len() + group.len() > crate::MAX_ACTIONS_PER_PASS
            || bytes + size > MAX_TRANSACTION_BYTES;
        if full && !current.is_empty() {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.extend(group);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// A decision over the store that is told what changed since its last pass.
pub trait Reconciler: Send + 'static {
    /// Notes one committed change. `view` is the view the next pass decides
    /// from (it may already hold later changes of the same object).
    fn observe(&mut self, view: &Tables, event: &Event);

    /// Decides from `view`: from every object when `full` (forgetting what
    /// `observe` noted), else from what `observe` noted since the last pass.
    fn decide(&mut self, view: &Tables, now_ms: i64, full: bool) -> Pass;
}

/// Runs `reconciler` until `shutdown` turns true.
pub async fn run(
    name: &'static str,
    replica: LeaderTerm,
    mut shutdown: watch::Receiver<bool>,
    mut reconciler: impl Reconciler,
) {
    let mut changes = replica.store().watch();
    let mut backoff = Backoff::new(RETRY_MIN_MS, RETRY_MAX_MS);
    let mut full = true;
    let mut last_full = Instant::now();
    loop {
        if *shutdown.borrow() {
            return;
        }
        if last_full.elapsed() >= Duration::from_millis(FULL_PASS_MS) {
            tracing::debug!(reconciler = name, "a full pass is due");
            full = true;
        }
        let pass = shoal_raft::long_work(|| {
            let mut view = replica.store().view();
            let held = Instant::now();
            let mut observed = 0usize;
            let in_step = changes.drain_with(view.version(), |e| {
                observed += 1;
                if !full {
                    reconciler.observe(&view, e);
                }
            });
            if !in_step {
                // Changes were lost (or the store was reset): a new watch,
                // then a new view, so every commit after that view reaches
                // the new watch; the pass decides from everything.
                tracing::debug!(reconciler = name, "the watch lagged; a full pass");
                changes = replica.store().watch();
                view = replica.store().view();
                full = true;
            }
            if full {
                last_full = Instant::now();
            }
            let started = Instant::now();
            let observe_ms = held.elapsed().as_millis() as u64;
            let pass = reconciler.decide(&view, now_ms(), full);
            tracing::debug!(
                reconciler = name,
                full,
                observed,
                observe_ms,
                took_ms = started.elapsed().as_millis() as u64,
                transactions = pass.transactions.len(),
                "pass"
            );
            full = false;
            pass
        });
        let mut failed = 0;
        let total = pass.transactions.len();
        let proposals = pass.transactions.into_iter().map(|actions| {
            let replica = replica.clone();
            async move {
                replica
                    .propose(Transaction {
                        leader_term: 0,
                        actions,
                        timestamp_ms: 0,
                    })
                    .await
            }
        });
        let proposed = Instant::now();
        for result in join_all(proposals).await {
            if let Err(e) = result {
                failed += 1;
                tracing::debug!(reconciler = name, error = %e, "proposal failed; a full pass retries");
            }
        }
        if total > 0 {
            tracing::debug!(
                reconciler = name,
                took_ms = proposed.elapsed().as_millis() as u64,
                failed,
                "committed"
            );
        }
        if failed > 0 {
            full = true;
        }
        if total > 0 && failed == total {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(backoff.next_pause()) => {}
            }
            continue;
        }
        backoff.reset();
        if total > 0 {
            // Our own writes changed the store: look again at once.
            continue;
        }
        let wait_ms = pass.wake_at_ms.map_or(IDLE_PASS_MS, |at| {
            (at - now_ms()).clamp(0, IDLE_PASS_MS as i64) as u64
        });
        tokio::select! {
            _ = shutdown.changed() => return,
            next = changes.changed() => {
                if next.is_err() {
                    changes = replica.store().watch();
                    full = true;
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
        }
    }
}

/// Runs every proposal at once, so the proposer packs them into few raft
/// entries, and collects the results.
async fn join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(result) = h.await {
            out.push(result);
        }
    }
    out
}
