//! Send limits per phone number: a resend cooldown and codes per window.

use super::{after, elapsed, secs};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

/// How often one phone number may be sent a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SendPolicy {
    /// Least time between two sends to a number; 0 disables the rule.
    pub resend_cooldown_secs: u64,
    /// Length of the sliding window for `max_per_window`.
    pub window_secs: u64,
    /// Most sends to a number within any window; 0 disables the rule.
    pub max_per_window: u32,
}

impl Default for SendPolicy {
    fn default() -> Self {
        Self { resend_cooldown_secs: 30, window_secs: 600, max_per_window: 5 }
    }
}

/// A send refused by [`SendPolicy::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{rule}: retry at {retry_at}")]
pub struct Limited {
    /// The rule that refused: [`Limited::RESEND_COOLDOWN`] or [`Limited::SEND_WINDOW`].
    pub rule: &'static str,
    /// When a send would be allowed again.
    pub retry_at: OffsetDateTime,
}

impl Limited {
    /// The number is locked after too many failed verifications: no new code
    /// until the lock ends (else a new code would reset the guessing budget).
    pub const VERIFY_LOCKOUT: &'static str = "verify_lockout";

    /// Too soon after the previous send.
    pub const RESEND_COOLDOWN: &'static str = "resend_cooldown";
    /// Too many sends within the window.
    pub const SEND_WINDOW: &'static str = "send_window";
}

/// Recent send times to one number: pruned to what the policy still needs,
/// at most `max_per_window` (at least one) entries, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct SendHistory {
    #[serde(with = "super::rfc3339_list")]
    sends: Vec<OffsetDateTime>,
}

impl SendHistory {
    /// The send times kept, oldest first.
    pub fn sends(&self) -> &[OffsetDateTime] {
        &self.sends
    }

    /// Whether no send still matters to `policy` at `now` (the sweeper may
    /// delete the record).
    pub fn is_stale(&self, policy: &SendPolicy, now: OffsetDateTime) -> bool {
        let keep = policy.retention();
        !self.sends.iter().any(|t| elapsed(*t, now) < keep)
    }
}

impl SendPolicy {
    /// How long a send time matters: the window (if that rule is on) or the
    /// cooldown, whichever is longer.
    fn retention(&self) -> Duration {
        let window = if self.max_per_window > 0 { self.window_secs } else { 0 };
        secs(window.max(self.resend_cooldown_secs))
    }

    /// Whether a send to the number with `history` is allowed at `now`.
    ///
    /// When both rules refuse, the one that lifts last is reported (the
    /// cooldown on a tie), so `retry_at` is when a send really is allowed.
    pub fn check(&self, history: &SendHistory, now: OffsetDateTime) -> Result<(), Limited> {
        let mut refusal: Option<Limited> = None;
        if self.resend_cooldown_secs > 0
            && let Some(last) = history.sends.iter().max()
            && elapsed(*last, now) < secs(self.resend_cooldown_secs)
        {
            refusal =
                Some(Limited { rule: Limited::RESEND_COOLDOWN, retry_at: after(*last, self.resend_cooldown_secs) });
        }
        if self.max_per_window > 0 {
            let window = secs(self.window_secs);
            let mut in_window: Vec<OffsetDateTime> =
                history.sends.iter().copied().filter(|t| elapsed(*t, now) < window).collect();
            let max = usize::try_from(self.max_per_window).unwrap_or(usize::MAX);
            if in_window.len() >= max {
                in_window.sort();
                // The send whose expiry brings the count below the max.
                if let Some(oldest) = in_window.get(in_window.len() - max) {
                    let retry_at = after(*oldest, self.window_secs);
                    if refusal.is_none_or(|r| retry_at > r.retry_at) {
                        refusal = Some(Limited { rule: Limited::SEND_WINDOW, retry_at });
                    }
                }
            }
        }
        refusal.map_or(Ok(()), Err)
    }

    /// Records a send at `now`, pruning what no longer matters and keeping
    /// at most `max_per_window` (at least one) of the newest entries.
    pub fn record(&self, history: &mut SendHistory, now: OffsetDateTime) {
        let keep = self.retention();
        history.sends.push(now);
        history.sends.sort();
        history.sends.retain(|t| elapsed(*t, now) < keep);
        let cap = usize::try_from(self.max_per_window.max(1)).unwrap_or(usize::MAX);
        let excess = history.sends.len().saturating_sub(cap);
        history.sends.drain(..excess);
    }
}
