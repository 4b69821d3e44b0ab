//! The thin loop around each pure decision (STYLE.md habit 1): read a view,
//! decide, propose, wait for the next change.
//!
//! Level-triggered: every pass decides from a fresh view, never from an
//! event's payload, so coalescing or losing events loses nothing. A pass runs
//! on start, after every commit, and when a decision asked to be woken (a
//! delayed restart). A proposal that fails (a conflict with another writer,
//! raft unavailable) is retried by the next pass, after a backoff when every
//! proposal of a pass failed: never dropped with a log line.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoal_api::{StoreAction, Transaction};
use shoal_raft::Replica;
use shoal_store::Tables;
use tokio::sync::watch;

/// Backoff after a pass whose every proposal failed.
const RETRY_MIN_MS: u64 = 50;
const RETRY_MAX_MS: u64 = 2_000;
/// Without any change, a pass still runs this often (a missed wake-up costs
/// at most this much).
const IDLE_PASS_MS: u64 = 10_000;

/// A pass's outcome: transactions to propose and when to look again.
pub struct Pass {
    pub transactions: Vec<Vec<StoreAction>>,
    pub wake_at_ms: Option<i64>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Runs `decide` until `shutdown` turns true.
pub async fn run(
    name: &'static str,
    replica: Arc<Replica>,
    mut shutdown: watch::Receiver<bool>,
    mut decide: impl FnMut(&Tables, i64) -> Pass + Send,
) {
    let mut changes = replica.store().watch();
    let mut backoff_ms = RETRY_MIN_MS;
    loop {
        if *shutdown.borrow() {
            return;
        }
        changes.drain();
        let pass = {
            let view = replica.store().view();
            decide(&view, now_ms())
        };
        let mut failed = 0;
        let total = pass.transactions.len();
        let proposals = pass.transactions.into_iter().map(|actions| {
            let replica = Arc::clone(&replica);
            async move {
                replica
                    .propose(Transaction {
                        actions,
                        timestamp_ms: 0,
                    })
                    .await
            }
        });
        for result in join_all(proposals).await {
            if let Err(e) = result {
                failed += 1;
                tracing::debug!(reconciler = name, error = %e, "proposal failed; the next pass retries");
            }
        }
        if total > 0 && failed == total {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
            }
            backoff_ms = (backoff_ms * 2).min(RETRY_MAX_MS);
            continue;
        }
        backoff_ms = RETRY_MIN_MS;
        if total > 0 {
            // Our own writes changed the store: look again at once.
            continue;
        }
        let wait_ms = pass.wake_at_ms.map_or(IDLE_PASS_MS, |at| {
            (at - now_ms()).clamp(0, IDLE_PASS_MS as i64) as u64
        });
        tokio::select! {
            _ = shutdown.changed() => return,
            next = changes.next() => {
                if next.is_err() {
                    // Lagged or closed: a fresh subscription, and a full pass.
                    changes = replica.store().watch();
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
