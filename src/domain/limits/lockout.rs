//! The verification lockout per phone number, across codes (NIST SP
//! 800-63B 5.2.2).

use super::after;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Lockout after consecutive wrong codes for one number, across codes
/// (NIST SP 800-63B 5.2.2: at most 100 consecutive failed attempts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerifyLockPolicy {
    /// Wrong codes in a row that lock the number; 0 disables the rule.
    pub max_consecutive_failures: u32,
    /// How long the number stays locked.
    pub lock_secs: u64,
}

impl Default for VerifyLockPolicy {
    fn default() -> Self {
        Self { max_consecutive_failures: 100, lock_secs: 900 }
    }
}

/// Consecutive wrong codes for one number, and its lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct VerifyFailures {
    /// Wrong codes since the last success or lock.
    pub consecutive: u32,
    /// Verification is refused until then.
    #[serde(with = "time::serde::rfc3339::option")]
    pub locked_until: Option<OffsetDateTime>,
}

impl VerifyFailures {
    /// Whether a verification may be attempted at `now`; `Err` carries the
    /// end of the lock.
    pub fn check(&self, now: OffsetDateTime) -> Result<(), OffsetDateTime> {
        match self.locked_until {
            Some(until) if now < until => Err(until),
            _ => Ok(()),
        }
    }

    /// Counts a wrong code at `now`. Reaching the maximum locks the number
    /// for `lock_secs` and resets the count. While locked this does nothing
    /// (the attempt should have been refused; the lock is not extended).
    pub fn on_failure(&mut self, policy: &VerifyLockPolicy, now: OffsetDateTime) {
        if self.check(now).is_err() {
            return;
        }
        self.locked_until = None;
        if policy.max_consecutive_failures == 0 {
            self.consecutive = 0;
            return;
        }
        self.consecutive = self.consecutive.saturating_add(1);
        if self.consecutive >= policy.max_consecutive_failures {
            self.consecutive = 0;
            self.locked_until = Some(after(now, policy.lock_secs));
        }
    }

    /// A right code: forget the failures.
    pub fn on_success(&mut self) {
        *self = Self::default();
    }

    /// Whether there is nothing left to remember at `now` (the sweeper may
    /// delete the record). A count below the maximum is kept until a success.
    pub fn is_stale(&self, now: OffsetDateTime) -> bool {
        self.consecutive == 0 && self.check(now).is_ok()
    }
}
