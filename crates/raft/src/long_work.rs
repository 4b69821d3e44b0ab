//! Long synchronous work (a reconciler's pass over 100,000 tasks) run from
//! a task without stalling the tasks queued behind it on the same worker
//! thread.
//!
//! Why: a tokio worker busy for half a second runs nothing else, and on a
//! 2-core machine two such sections at once leave no worker free:
//! heartbeats went unanswered for seconds and live nodes were marked
//! down. On a multi-threaded runtime the work runs in place and tokio
//! moves the worker's other tasks to another thread; a current-thread
//! runtime has no other thread to protect, so there it simply runs.

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `work` to completion, letting the runtime's other tasks go on.
pub fn long_work<T>(work: impl FnOnce() -> T) -> T {
    let threaded =
        Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    if threaded {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::long_work;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn long_work_on_the_only_worker_lets_the_other_tasks_run() {
        let worker = tokio::spawn(async {
            let (tx, rx) = std::sync::mpsc::channel();
            // Queued behind this task on the same (only) worker: it runs
            // only if long_work hands the worker's queue to another thread.
            tokio::spawn(async move {
                let _ = tx.send(());
            });
            long_work(|| rx.recv_timeout(Duration::from_secs(60)))
        });
        assert!(
            worker.await.unwrap().is_ok(),
            "the queued task never ran while the long work waited for it"
        );
    }

    #[tokio::test]
    async fn long_work_runs_in_place_on_a_current_thread_runtime() {
        let here = std::thread::current().id();
        assert_eq!(long_work(|| std::thread::current().id()), here);
    }
}
