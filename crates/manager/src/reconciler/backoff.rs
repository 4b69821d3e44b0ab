//! Retrying with a growing pause: what every write a component must not drop
//! does when it fails (STYLE.md: never a fixed number of tries and then
//! silence).

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

/// A pause that doubles after each failure, from `min_ms` up to `max_ms`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next_ms: u64,
    min_ms: u64,
    max_ms: u64,
}

impl Backoff {
    pub fn new(min_ms: u64, max_ms: u64) -> Backoff {
        debug_assert!(0 < min_ms && min_ms <= max_ms);
        Backoff {
            next_ms: min_ms,
            min_ms,
            max_ms,
        }
    }

    /// The pause to take now; the next one is twice as long (up to the max).
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next_ms;
        self.next_ms = (self.next_ms * 2).min(self.max_ms);
        Duration::from_millis(pause)
    }

    /// Back to the shortest pause, after a success.
    pub fn reset(&mut self) {
        self.next_ms = self.min_ms;
    }
}

/// How a retried write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retried {
    /// It succeeded, after this many tries.
    Done { tries: u32 },
    /// The reason to write it went away (`moot` turned true) first.
    Moot,
    /// Shutdown came first.
    Stopped,
}

/// Runs `attempt` until it returns true, pausing as `backoff` says between
/// tries, unless `moot()` says the write is no longer needed or `shutdown`
/// turns true; both are checked before every try.
pub async fn retry_until_done<F, Fut>(
    mut backoff: Backoff,
    shutdown: &mut watch::Receiver<bool>,
    mut moot: impl FnMut() -> bool,
    mut attempt: F,
) -> Retried
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let mut tries = 0;
    loop {
        if *shutdown.borrow() {
            return Retried::Stopped;
        }
        if moot() {
            return Retried::Moot;
        }
        tries += 1;
        if attempt().await {
            return Retried::Done { tries };
        }
        tokio::select! {
            _ = shutdown.changed() => return Retried::Stopped,
            _ = tokio::time::sleep(backoff.next_pause()) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn the_pause_doubles_up_to_its_maximum_and_resets() {
        let mut b = Backoff::new(50, 300);
        let pauses: Vec<u64> = (0..5).map(|_| b.next_pause().as_millis() as u64).collect();
        assert_eq!(pauses, vec![50, 100, 200, 300, 300]);
        b.reset();
        assert_eq!(b.next_pause(), Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_is_retried_past_any_number_of_failures_until_it_succeeds() {
        let (_stop, mut shutdown) = watch::channel(false);
        let calls = Cell::new(0);
        let outcome = retry_until_done(
            Backoff::new(50, 2_000),
            &mut shutdown,
            || false,
            || {
                calls.set(calls.get() + 1);
                let ok = calls.get() > 40;
                async move { ok }
            },
        )
        .await;
        assert_eq!(outcome, Retried::Done { tries: 41 });
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_when_the_write_is_moot_or_at_shutdown() {
        let (stop, mut shutdown) = watch::channel(false);
        let calls = Cell::new(0);
        let outcome = retry_until_done(
            Backoff::new(50, 2_000),
            &mut shutdown,
            || calls.get() == 3,
            || {
                calls.set(calls.get() + 1);
                async { false }
            },
        )
        .await;
        assert_eq!(outcome, Retried::Moot);
        assert_eq!(calls.get(), 3);
        stop.send(true).unwrap();
        let outcome = retry_until_done(
            Backoff::new(50, 2_000),
            &mut shutdown,
            || false,
            || async { false },
        )
        .await;
        assert_eq!(outcome, Retried::Stopped);
    }
}
