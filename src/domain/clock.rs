//! Time as a dependency, so expiry is tested without sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use time::{Duration, OffsetDateTime};

/// Whole seconds from `now` until `at`, rounded up, at least 1 (what a
/// `Retry-After` says).
pub fn seconds_until(at: OffsetDateTime, now: OffsetDateTime) -> u64 {
    let secs = (at - now).as_seconds_f64().ceil();
    if secs.is_finite() && secs >= 1.0 { secs as u64 } else { 1 }
}

/// A source of "now". Production uses [`SystemClock`]; tests use [`ManualClock`].
pub trait Clock: Send + Sync + 'static {
    /// The current UTC time.
    fn now(&self) -> OffsetDateTime;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// The wall clock shifted by an offset that tests move forward.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    offset_ms: Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock that starts at the wall clock's time.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves this clock (and every clone of it) forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.offset_ms.fetch_add(by.whole_milliseconds() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc() + Duration::milliseconds(self.offset_ms.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_all_clones() {
        let clock = ManualClock::new();
        let other = clock.clone();
        let before = other.now();
        clock.advance(Duration::minutes(10));
        assert!(other.now() - before >= Duration::minutes(10));
    }

    #[test]
    fn seconds_until_rounds_up_and_is_never_zero() {
        let now = OffsetDateTime::UNIX_EPOCH;
        assert_eq!(seconds_until(now + Duration::milliseconds(1500), now), 2);
        assert_eq!(seconds_until(now + Duration::seconds(30), now), 30);
        assert_eq!(seconds_until(now - Duration::seconds(5), now), 1, "past: retry at once, but say 1");
    }
}
