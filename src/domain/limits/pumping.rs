//! The SMS-pumping (toll fraud) guard per number prefix: velocity and
//! conversion rules, prefix statistics and quarantines.

use super::{after, elapsed, secs};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Most per-minute buckets a [`PrefixStats`] keeps for its grace period.
pub const MAX_RECENT_BUCKETS: usize = 64;

/// The SMS-pumping (toll fraud) guard: quarantines a number prefix whose send
/// volume is abnormal or whose codes are rarely verified.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PumpingPolicy {
    /// Digits after `+` that make a prefix; 0 disables the guard.
    pub prefix_digits: u32,
    /// Length of the fixed counting window; 0 disables the guard.
    pub window_secs: u64,
    /// Most sends to a prefix per window; 0 disables the velocity rule.
    pub max_sends_per_window: u32,
    /// Least settled sends before conversion is judged; 0 disables the
    /// conversion rule.
    pub min_volume: u32,
    /// Least share (0–1) of settled sends that must be verified; 0 disables
    /// the conversion rule.
    pub min_conversion: f64,
    /// Sends this recent are not yet counted for conversion (users are still
    /// typing their code). Rounded to whole minutes, conservatively.
    pub conversion_grace_secs: u64,
    /// How long a prefix stays quarantined; 0 disables quarantining.
    pub quarantine_secs: u64,
}

impl Default for PumpingPolicy {
    fn default() -> Self {
        Self {
            prefix_digits: 6,
            window_secs: 3600,
            max_sends_per_window: 200,
            min_volume: 50,
            min_conversion: 0.1,
            conversion_grace_secs: 300,
            quarantine_secs: 3600,
        }
    }
}

impl PumpingPolicy {
    /// Refuses a `min_conversion` that is not a number in 0–1.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.min_conversion) {
            return Err(format!("pumping min_conversion = {}: must be between 0 and 1", self.min_conversion));
        }
        Ok(())
    }

    /// Whether `stats` call for a quarantine at `now`. The velocity rule is
    /// judged first: more than `max_sends_per_window` sends in the window.
    /// Then conversion: at least `min_volume` settled sends (older than the
    /// grace period) of which fewer than `min_conversion` were verified.
    ///
    /// Verifications are counted whenever they happen, so codes verified
    /// quickly raise the rate: the error is on the side of not quarantining.
    pub fn evaluate(&self, stats: &PrefixStats, now: OffsetDateTime) -> Option<Quarantine> {
        if self.prefix_digits == 0 || self.quarantine_secs == 0 || !stats.window_open(self, now) {
            return None;
        }
        let quarantine = |rule: &str, detail: String| Quarantine {
            prefix: stats.prefix.clone(),
            rule: rule.to_owned(),
            detail,
            since: now,
            until: after(now, self.quarantine_secs),
        };
        if self.max_sends_per_window > 0 && stats.sends > self.max_sends_per_window {
            return Some(quarantine(
                Quarantine::PREFIX_VELOCITY,
                format!("{} sends in {} s (max {})", stats.sends, self.window_secs, self.max_sends_per_window),
            ));
        }
        if self.min_volume > 0 && self.min_conversion > 0.0 {
            let settled = stats.settled_sends(self, now);
            if settled >= self.min_volume {
                let rate = f64::from(stats.verified) / f64::from(settled);
                if rate < self.min_conversion {
                    return Some(quarantine(
                        Quarantine::LOW_CONVERSION,
                        format!(
                            "conversion {:.1} % ({}/{}) below {:.1} % with at least {} sends",
                            rate * 100.0,
                            stats.verified,
                            settled,
                            self.min_conversion * 100.0,
                            self.min_volume
                        ),
                    ));
                }
            }
        }
        None
    }
}

/// The prefix `policy` groups `e164` under: its first `prefix_digits` digits
/// after `+` (fewer if the number is shorter). Never panics: a malformed
/// string yields the digits it starts with, possibly none.
pub fn prefix_of(policy: &PumpingPolicy, e164: &str) -> String {
    let n = usize::try_from(policy.prefix_digits).unwrap_or(usize::MAX);
    e164.strip_prefix('+').unwrap_or(e164).chars().take_while(char::is_ascii_digit).take(n).collect()
}

/// Sends within one clock minute, stamped with the latest of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Bucket {
    #[serde(with = "time::serde::rfc3339")]
    last: OffsetDateTime,
    sends: u32,
}

/// Sends and verifications of one prefix in the current window.
///
/// The window is fixed: it opens at the first event and restarts (counts
/// back to zero) at the first event after it ends. A burst straddling two
/// windows can therefore reach twice the maximum before the velocity rule
/// fires. Sends still in the grace period are also kept in per-minute
/// buckets (at most [`MAX_RECENT_BUCKETS`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct PrefixStats {
    prefix: String,
    #[serde(with = "time::serde::rfc3339::option")]
    window_start: Option<OffsetDateTime>,
    sends: u32,
    verified: u32,
    recent: Vec<Bucket>,
}

impl PrefixStats {
    /// How many per-minute buckets it keeps (tests bound it).
    #[cfg(test)]
    pub(super) fn buckets(&self) -> usize {
        self.recent.len()
    }

    /// Empty stats for `prefix` (see [`prefix_of`]).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into(), ..Self::default() }
    }

    /// The prefix counted.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// When the current window opened, if one did.
    pub fn window_start(&self) -> Option<OffsetDateTime> {
        self.window_start
    }

    /// Sends in the current window.
    pub fn sends(&self) -> u32 {
        self.sends
    }

    /// Verified codes in the current window.
    pub fn verified(&self) -> u32 {
        self.verified
    }

    /// Sends in the window older than the grace period at `now` (a whole
    /// minute is counted as recent if its latest send is).
    pub fn settled_sends(&self, policy: &PumpingPolicy, now: OffsetDateTime) -> u32 {
        let grace = secs(policy.conversion_grace_secs);
        let recent = self
            .recent
            .iter()
            .filter(|b| elapsed(b.last, now) < grace)
            .fold(0u32, |sum, b| sum.saturating_add(b.sends));
        self.sends.saturating_sub(recent)
    }

    /// Whether the window is still open at `now`.
    fn window_open(&self, policy: &PumpingPolicy, now: OffsetDateTime) -> bool {
        self.window_start.is_some_and(|start| elapsed(start, now) < secs(policy.window_secs))
    }

    /// Opens a fresh window at `now` if none is open.
    fn roll(&mut self, policy: &PumpingPolicy, now: OffsetDateTime) {
        if !self.window_open(policy, now) {
            *self = Self { window_start: Some(now), ..Self::new(std::mem::take(&mut self.prefix)) };
        }
    }

    /// Counts an SMS sent to the prefix at `now`.
    pub fn on_send(&mut self, policy: &PumpingPolicy, now: OffsetDateTime) {
        self.roll(policy, now);
        self.sends = self.sends.saturating_add(1);
        let grace = secs(policy.conversion_grace_secs);
        self.recent.retain(|b| elapsed(b.last, now) < grace);
        if policy.conversion_grace_secs == 0 {
            return;
        }
        let minute = |t: OffsetDateTime| t.unix_timestamp().div_euclid(60);
        match self.recent.last_mut() {
            // Same minute, or the clock went backwards: join the last bucket.
            Some(b) if minute(b.last) == minute(now) || now < b.last => {
                b.sends = b.sends.saturating_add(1);
                b.last = b.last.max(now);
            }
            _ => self.recent.push(Bucket { last: now, sends: 1 }),
        }
        // Over the cap: fold the oldest buckets into the next one, which is
        // newer, so they count as recent a little longer (conservative).
        let excess = self.recent.len().saturating_sub(MAX_RECENT_BUCKETS);
        if excess > 0 {
            let folded = self.recent.drain(..excess).fold(0u32, |sum, b| sum.saturating_add(b.sends));
            if let Some(first) = self.recent.first_mut() {
                first.sends = first.sends.saturating_add(folded);
            }
        }
    }

    /// Counts a code for the prefix verified at `now`.
    pub fn on_verified(&mut self, policy: &PumpingPolicy, now: OffsetDateTime) {
        self.roll(policy, now);
        self.verified = self.verified.saturating_add(1);
    }

    /// Whether the window has ended at `now` (the sweeper may delete the
    /// record; the next event would start from zero anyway).
    pub fn is_stale(&self, policy: &PumpingPolicy, now: OffsetDateTime) -> bool {
        !self.window_open(policy, now)
    }
}

/// A prefix no code is sent to until `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Quarantine {
    /// The prefix (digits, no `+`).
    pub prefix: String,
    /// [`Quarantine::PREFIX_VELOCITY`] or [`Quarantine::LOW_CONVERSION`].
    pub rule: String,
    /// The figures that fired the rule, for logs and operators.
    pub detail: String,
    /// When the quarantine began.
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// When it ends.
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}

impl Quarantine {
    /// Too many sends to the prefix in the window.
    pub const PREFIX_VELOCITY: &'static str = "prefix_velocity";
    /// Too few of the prefix's codes verified.
    pub const LOW_CONVERSION: &'static str = "low_conversion";

    /// Whether sends to the prefix are refused at `now`.
    pub fn is_active(&self, now: OffsetDateTime) -> bool {
        now < self.until
    }
}
