//! The one clock every component reads (DESIGN.md §4: time through
//! `tokio::time`), so a runtime with paused or simulated time controls all
//! of it and a simulation replays exactly.
//!
//! Wall time is the wall clock read once, at the first call, plus the
//! monotonic time `tokio::time` has counted since: under a paused runtime it
//! moves only when the runtime's clock does. Store timestamps, task status
//! times and every timer go through here.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// A point in time on the runtime's clock (tokio's, paused in tests).
pub use tokio::time::Instant;

/// The wall time at the first reading, and the runtime's instant then.
static ORIGIN: OnceLock<(i64, Instant)> = OnceLock::new();

/// The wall time at the first reading, in nanoseconds since the epoch.
fn origin() -> (i64, Instant) {
    *ORIGIN.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        (wall, Instant::now())
    })
}

/// Nanoseconds since the Unix epoch, on the runtime's clock.
pub fn now_ns() -> i64 {
    let (wall, at) = origin();
    let since = Instant::now().saturating_duration_since(at).as_nanos();
    wall.saturating_add(i64::try_from(since).unwrap_or(i64::MAX))
}

/// Milliseconds since the Unix epoch, on the runtime's clock.
pub fn now_ms() -> i64 {
    now_ns() / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn wall_time_moves_with_the_runtimes_clock_and_only_with_it() {
        let before = now_ms();
        tokio::time::sleep(std::time::Duration::from_secs(3_600)).await;
        let after = now_ms();
        // An hour of paused time passes at once, and counts as an hour.
        assert!(
            (3_600_000..3_600_050).contains(&(after - before)),
            "{}",
            after - before
        );
    }
}
