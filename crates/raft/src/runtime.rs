//! openraft's runtime: tokio's, except that the randomness openraft draws
//! (its election timeouts) comes from a generator seeded by the daemon or
//! the simulator ([`seed_elections`]), so a simulated run replays from its
//! seed (DESIGN.md §4). The generator is the process's (openraft asks for
//! it without saying which replica asks): the draws replay when one
//! cluster runs in the process, not when several share it and interleave.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use openraft::{AsyncRuntime, OptionalSend, TokioRuntime};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

/// The generator behind every election timeout of this process; seeded
/// from the OS only if nobody seeded it first.
static ELECTIONS: Mutex<Option<StdRng>> = Mutex::new(None);

/// Seeds the election timeouts of every replica in this process. Replicas
/// of one cluster in different processes must get different seeds (the
/// daemon's own seed differs per daemon), or they would time out together.
pub fn seed_elections(seed: u64) {
    *ELECTIONS.lock().unwrap_or_else(|e| e.into_inner()) = Some(StdRng::seed_from_u64(seed));
}

/// A handle on the seeded generator, as openraft's `thread_rng`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ElectionRng;

impl ElectionRng {
    fn with<T>(f: impl FnOnce(&mut StdRng) -> T) -> T {
        let mut rng = ELECTIONS.lock().unwrap_or_else(|e| e.into_inner());
        f(rng.get_or_insert_with(StdRng::from_entropy))
    }
}

impl RngCore for ElectionRng {
    fn next_u32(&mut self) -> u32 {
        ElectionRng::with(|r| r.next_u32())
    }

    fn next_u64(&mut self) -> u64 {
        ElectionRng::with(|r| r.next_u64())
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        ElectionRng::with(|r| r.fill_bytes(dest))
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        ElectionRng::with(|r| r.try_fill_bytes(dest))
    }
}

/// Tokio, with [`ElectionRng`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SeededRuntime;

impl AsyncRuntime for SeededRuntime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = <TokioRuntime as AsyncRuntime>::Instant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> =
        <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = ElectionRng;
    type OneshotSender<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotSender<T>;
    type OneshotReceiverError = <TokioRuntime as AsyncRuntime>::OneshotReceiverError;
    type OneshotReceiver<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotReceiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        ElectionRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        TokioRuntime::oneshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_election_timeouts() {
        let config = openraft::Config {
            election_timeout_min: 150,
            election_timeout_max: 300,
            ..Default::default()
        };
        let draw = |seed| {
            seed_elections(seed);
            (0..32)
                .map(|_| config.new_rand_election_timeout::<SeededRuntime>())
                .collect::<Vec<_>>()
        };
        let first = draw(42);
        assert_eq!(first, draw(42));
        assert_ne!(first, draw(43));
        assert!(first.iter().all(|t| (150..300).contains(t)), "{first:?}");
    }
}
