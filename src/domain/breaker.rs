//! A circuit breaker per carrier: it opens after consecutive failed attempts,
//! lets one probe through after a cool-down, and closes on a success.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_since: Instant },
}

/// The breaker's state machine. Time is passed in, so it is tested without sleeping.
#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    open_for: Duration,
    state: State,
}

impl Breaker {
    /// Opens after `threshold` consecutive failures, for `open_for`.
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self { threshold: threshold.max(1), open_for, state: State::Closed { failures: 0 } }
    }

    /// Whether an attempt may go to the carrier now. After the cool-down one
    /// probe is allowed (and another only if that probe never reported back
    /// within a further cool-down).
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen { probe_since: now };
                true
            }
            State::Open { .. } => false,
            State::HalfOpen { probe_since } if now >= probe_since + self.open_for => {
                self.state = State::HalfOpen { probe_since: now };
                true
            }
            State::HalfOpen { .. } => false,
        }
    }

    /// The carrier took a message: close.
    pub fn on_success(&mut self) {
        self.state = State::Closed { failures: 0 };
    }

    /// The carrier failed (timeout, 5xx, throttling): count it, maybe open.
    pub fn on_failure(&mut self, now: Instant) {
        self.state = match self.state {
            State::Closed { failures } if failures + 1 < self.threshold => State::Closed { failures: failures + 1 },
            _ => State::Open { until: now + self.open_for },
        };
    }

    /// Whether the circuit is open (or probing): the carrier is being avoided.
    pub fn is_open(&self) -> bool {
        !matches!(self.state, State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_probes_then_closes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(10));
        for _ in 0..2 {
            b.on_failure(t0);
        }
        assert!(b.allow(t0) && !b.is_open());
        b.on_failure(t0);
        assert!(b.is_open());
        assert!(!b.allow(t0 + Duration::from_secs(9)));
        assert!(b.allow(t0 + Duration::from_secs(10)), "one probe after the cool-down");
        assert!(!b.allow(t0 + Duration::from_secs(11)), "only one probe at a time");
        b.on_success();
        assert!(!b.is_open() && b.allow(t0 + Duration::from_secs(11)));
    }

    #[test]
    fn a_failed_probe_reopens() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, Duration::from_secs(5));
        b.on_failure(t0);
        assert!(b.allow(t0 + Duration::from_secs(5)));
        b.on_failure(t0 + Duration::from_secs(5));
        assert!(!b.allow(t0 + Duration::from_secs(9)));
        assert!(b.allow(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, Duration::from_secs(5));
        b.on_failure(t0);
        b.on_success();
        b.on_failure(t0);
        assert!(!b.is_open());
    }

    #[test]
    fn a_lost_probe_does_not_wedge_the_breaker() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, Duration::from_secs(5));
        b.on_failure(t0);
        assert!(b.allow(t0 + Duration::from_secs(5)));
        // The probe never reports back; after another cool-down, try again.
        assert!(b.allow(t0 + Duration::from_secs(10)));
    }
}
