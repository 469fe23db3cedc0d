//! Abuse-resistance rules: send limits per number, a verification lockout per
//! number, geo permissions and the SMS-pumping guard per number prefix.
//!
//! Each rule is a policy (plain config, embedded in the config file) and a
//! small serializable state that the generator keeps in sled. The functions
//! are pure: `now` is an argument. A clock that goes backwards never panics:
//! a negative elapsed time counts as zero.

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

/// The latest instant a computed deadline is allowed to reach, so that a huge
/// configured duration saturates instead of overflowing and still serializes
/// as RFC 3339 (four-digit years).
const LATEST: OffsetDateTime = time::macros::datetime!(9999-12-31 23:59:59 UTC);

/// Most per-minute buckets a [`PrefixStats`] keeps for its grace period.
pub const MAX_RECENT_BUCKETS: usize = 64;

/// `n` whole seconds, saturating at `i64::MAX`.
fn secs(n: u64) -> Duration {
    Duration::seconds(i64::try_from(n).unwrap_or(i64::MAX))
}

/// Time elapsed from `since` to `now`; zero if the clock went backwards.
fn elapsed(since: OffsetDateTime, now: OffsetDateTime) -> Duration {
    (now - since).max(Duration::ZERO)
}

/// `t` plus `n` seconds, saturating at [`LATEST`].
fn after(t: OffsetDateTime, n: u64) -> OffsetDateTime {
    t.checked_add(secs(n)).map_or(LATEST, |d| d.min(LATEST))
}

// ---------------------------------------------------------------------------
// 1. Send limits per phone number
// ---------------------------------------------------------------------------

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
    #[serde(with = "rfc3339_list")]
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

// ---------------------------------------------------------------------------
// 2. Verification lockout per phone number
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// 3. Geo permissions
// ---------------------------------------------------------------------------

/// Which calling-code prefixes may be sent to. Prefixes are 1–6 digits
/// without `+` (`"1"`, `"44"`, `"1242"`).
///
/// The longest matching prefix decides; on a tie `blocked` wins. An empty
/// `allowed` allows every number not blocked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct GeoPolicy {
    /// Prefixes sent to; empty means all.
    pub allowed: Vec<String>,
    /// Prefixes never sent to.
    pub blocked: Vec<String>,
}

/// A number refused by [`GeoPolicy::check`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("destination not allowed (prefix '{prefix}')")]
pub struct GeoBlocked {
    /// The blocked prefix that matched; empty when the number matched no
    /// allowed prefix or is not `+` followed by digits.
    pub prefix: String,
}

/// Whether `p` is a well-formed prefix: 1–6 ASCII digits, not starting with 0.
fn valid_prefix(p: &str) -> bool {
    (1..=6).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) && !p.starts_with('0')
}

impl GeoPolicy {
    /// Whether `e164` may be sent to. Anything that is not `+` followed by
    /// ASCII digits is refused (with an empty prefix). Malformed prefixes in
    /// the lists never match (see [`GeoPolicy::validate`]).
    pub fn check(&self, e164: &str) -> Result<(), GeoBlocked> {
        let refused = |prefix: &str| Err(GeoBlocked { prefix: prefix.to_owned() });
        let digits = match e164.strip_prefix('+') {
            Some(d) if !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()) => d,
            _ => return refused(""),
        };
        fn longest<'a>(list: &'a [String], digits: &str) -> Option<&'a str> {
            list.iter().map(String::as_str).filter(|p| valid_prefix(p) && digits.starts_with(p)).max_by_key(|p| p.len())
        }
        match (longest(&self.blocked, digits), longest(&self.allowed, digits)) {
            (Some(b), Some(a)) if a.len() > b.len() => Ok(()),
            (Some(b), _) => refused(b),
            (None, Some(_)) => Ok(()),
            (None, None) if self.allowed.is_empty() => Ok(()),
            (None, None) => refused(""),
        }
    }

    /// Refuses malformed prefixes: each must be 1–6 digits without `+` and
    /// not start with 0 (no calling code does).
    pub fn validate(&self) -> Result<(), String> {
        for (name, list) in [("allowed", &self.allowed), ("blocked", &self.blocked)] {
            for (i, p) in list.iter().enumerate() {
                if !valid_prefix(p) {
                    return Err(format!(
                        "geo {name}[{i}] = {p:?}: a prefix is 1 to 6 digits without '+', not starting with 0"
                    ));
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// 4. SMS-pumping guard per number prefix
// ---------------------------------------------------------------------------

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

/// Serde for a list of timestamps as RFC 3339 strings.
mod rfc3339_list {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use time::OffsetDateTime;

    #[derive(Serialize, Deserialize)]
    #[serde(transparent)]
    struct Stamp(#[serde(with = "time::serde::rfc3339")] OffsetDateTime);

    pub fn serialize<S: Serializer>(v: &[OffsetDateTime], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|t| Stamp(*t)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<OffsetDateTime>, D::Error> {
        Ok(Vec::<Stamp>::deserialize(d)?.into_iter().map(|s| s.0).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2025-03-01 12:00:00 UTC);

    fn at(s: i64) -> OffsetDateTime {
        T0 + Duration::seconds(s)
    }

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T) {
        let json = serde_json::to_string(v).expect("serializes");
        let back: T = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(&back, v, "{json}");
    }

    // --- send limits ---

    fn sent(policy: &SendPolicy, times: &[i64]) -> SendHistory {
        let mut h = SendHistory::default();
        for t in times {
            policy.record(&mut h, at(*t));
        }
        h
    }

    #[test]
    fn send_policy_defaults() {
        let p = SendPolicy::default();
        assert_eq!((p.resend_cooldown_secs, p.window_secs, p.max_per_window), (30, 600, 5));
        let empty = SendHistory::default();
        assert_eq!(p.check(&empty, T0), Ok(()));
        assert!(empty.is_stale(&p, T0));
    }

    #[test]
    fn cooldown_lifts_exactly_after_cooldown() {
        let p = SendPolicy::default();
        let h = sent(&p, &[0]);
        let limited = Limited { rule: Limited::RESEND_COOLDOWN, retry_at: at(30) };
        assert_eq!(p.check(&h, at(0)), Err(limited));
        assert_eq!(p.check(&h, at(30) - Duration::nanoseconds(1)), Err(limited));
        assert_eq!(p.check(&h, at(30)), Ok(()));
    }

    #[test]
    fn window_allows_exactly_max_then_refuses_until_oldest_expires() {
        let p = SendPolicy::default();
        let mut h = SendHistory::default();
        for i in 0..5 {
            assert_eq!(p.check(&h, at(i * 60)), Ok(()), "send {i}");
            p.record(&mut h, at(i * 60));
        }
        assert_eq!(p.check(&h, at(300)), Err(Limited { rule: Limited::SEND_WINDOW, retry_at: at(600) }));
        assert!(p.check(&h, at(599)).is_err());
        assert_eq!(p.check(&h, at(600)), Ok(()));
        p.record(&mut h, at(600));
        assert_eq!(h.sends().len(), 5, "the first send was pruned");
        assert_eq!(h.sends()[0], at(60));
    }

    #[test]
    fn window_retry_at_accounts_for_a_lowered_max() {
        let wide = SendPolicy { resend_cooldown_secs: 0, max_per_window: 10, ..SendPolicy::default() };
        let h = sent(&wide, &[0, 10, 20, 30, 40]);
        let narrow = SendPolicy { max_per_window: 3, ..wide };
        // Five in the window, three allowed: the third oldest must expire.
        assert_eq!(narrow.check(&h, at(50)), Err(Limited { rule: Limited::SEND_WINDOW, retry_at: at(620) }));
    }

    #[test]
    fn the_rule_that_lifts_last_is_reported() {
        let window_binds = SendPolicy { resend_cooldown_secs: 300, window_secs: 600, max_per_window: 1 };
        let h = sent(&window_binds, &[0]);
        assert_eq!(window_binds.check(&h, at(1)).map_err(|l| l.rule), Err(Limited::SEND_WINDOW));
        let cooldown_binds = SendPolicy { resend_cooldown_secs: 900, ..window_binds };
        let h = sent(&cooldown_binds, &[0]);
        assert_eq!(cooldown_binds.check(&h, at(1)), Err(Limited { rule: Limited::RESEND_COOLDOWN, retry_at: at(900) }));
        // A cooldown longer than the window keeps the history alive.
        assert!(!h.is_stale(&cooldown_binds, at(899)));
        assert!(h.is_stale(&cooldown_binds, at(900)));
    }

    #[test]
    fn disabled_send_rules() {
        let no_cooldown = SendPolicy { resend_cooldown_secs: 0, ..SendPolicy::default() };
        let h = sent(&no_cooldown, &[0]);
        assert_eq!(no_cooldown.check(&h, at(0)), Ok(()));

        let no_window = SendPolicy { max_per_window: 0, ..SendPolicy::default() };
        let times: Vec<i64> = (0..50).map(|i| i * 30).collect();
        let h = sent(&no_window, &times);
        assert_eq!(no_window.check(&h, at(1500)), Ok(()));
        assert_eq!(h.sends().len(), 1, "only the last send matters");

        let off = SendPolicy { resend_cooldown_secs: 0, max_per_window: 0, ..SendPolicy::default() };
        let h = sent(&off, &[0, 0, 0]);
        assert_eq!(off.check(&h, at(0)), Ok(()));
        assert!(h.sends().is_empty() && h.is_stale(&off, at(0)));
    }

    #[test]
    fn send_history_is_bounded_and_goes_stale_with_the_window() {
        let p = SendPolicy { resend_cooldown_secs: 0, ..SendPolicy::default() };
        let h = sent(&p, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(h.sends(), &[at(5), at(6), at(7), at(8), at(9)]);
        assert!(!h.is_stale(&p, at(608)));
        assert!(h.is_stale(&p, at(609)));
    }

    #[test]
    fn send_limits_survive_a_clock_going_backwards_and_huge_durations() {
        let p = SendPolicy::default();
        let mut h = sent(&p, &[0]);
        // Now is before the last send: elapsed counts as zero.
        assert_eq!(p.check(&h, at(-100)), Err(Limited { rule: Limited::RESEND_COOLDOWN, retry_at: at(30) }));
        p.record(&mut h, at(-100));
        assert_eq!(h.sends(), &[at(-100), at(0)]);
        assert!(!h.is_stale(&p, at(-1000)));

        let huge = SendPolicy { resend_cooldown_secs: u64::MAX, window_secs: u64::MAX, max_per_window: 1 };
        let h = sent(&huge, &[0]);
        let refused = huge.check(&h, at(10)).expect_err("limited");
        assert_eq!(refused.retry_at, LATEST);
        round_trip(&h);
    }

    #[test]
    fn send_history_round_trips() {
        let h = sent(&SendPolicy::default(), &[0, 45, 90]);
        round_trip(&h);
        let json = serde_json::to_string(&h).expect("serializes");
        assert!(json.contains("2025-03-01T12:00:45Z"), "{json}");
        round_trip(&SendHistory::default());
    }

    // --- verification lockout ---

    #[test]
    fn lock_policy_defaults() {
        let p = VerifyLockPolicy::default();
        assert_eq!((p.max_consecutive_failures, p.lock_secs), (100, 900));
    }

    #[test]
    fn locks_exactly_at_the_max_and_resets_the_count() {
        let p = VerifyLockPolicy::default();
        let mut f = VerifyFailures::default();
        for _ in 0..99 {
            f.on_failure(&p, T0);
        }
        assert_eq!((f.consecutive, f.check(T0)), (99, Ok(())));
        f.on_failure(&p, T0);
        assert_eq!(f.consecutive, 0);
        assert_eq!(f.check(T0), Err(at(900)));
        assert!(!f.is_stale(at(899)));
    }

    #[test]
    fn lock_expires_at_locked_until() {
        let p = VerifyLockPolicy { max_consecutive_failures: 2, lock_secs: 60 };
        let mut f = VerifyFailures::default();
        f.on_failure(&p, T0);
        f.on_failure(&p, T0);
        assert_eq!(f.check(at(59)), Err(at(60)));
        assert_eq!(f.check(at(60)), Ok(()));
        assert!(f.is_stale(at(60)));
        // A fresh count starts after the lock.
        f.on_failure(&p, at(60));
        assert_eq!((f.consecutive, f.locked_until, f.check(at(60))), (1, None, Ok(())));
    }

    #[test]
    fn failures_while_locked_do_not_extend_the_lock() {
        let p = VerifyLockPolicy { max_consecutive_failures: 1, lock_secs: 60 };
        let mut f = VerifyFailures::default();
        f.on_failure(&p, T0);
        f.on_failure(&p, at(30));
        assert_eq!(f.check(at(30)), Err(at(60)));
        assert_eq!(f.consecutive, 0);
    }

    #[test]
    fn success_resets_failures() {
        let p = VerifyLockPolicy::default();
        let mut f = VerifyFailures::default();
        for _ in 0..99 {
            f.on_failure(&p, T0);
        }
        assert!(!f.is_stale(T0));
        f.on_success();
        assert_eq!(f, VerifyFailures::default());
        assert!(f.is_stale(T0));
        f.on_failure(&p, T0);
        assert_eq!(f.check(T0), Ok(()));
    }

    #[test]
    fn disabled_lockout_never_locks() {
        let p = VerifyLockPolicy { max_consecutive_failures: 0, lock_secs: 900 };
        let mut f = VerifyFailures::default();
        for _ in 0..1000 {
            f.on_failure(&p, T0);
        }
        assert_eq!(f.check(T0), Ok(()));
        assert!(f.is_stale(T0));
        // A zero-length lock is no lock.
        let p = VerifyLockPolicy { max_consecutive_failures: 1, lock_secs: 0 };
        f.on_failure(&p, T0);
        assert_eq!(f.check(T0), Ok(()));
    }

    #[test]
    fn verify_failures_round_trip() {
        let p = VerifyLockPolicy { max_consecutive_failures: 1, lock_secs: u64::MAX };
        let mut f = VerifyFailures::default();
        round_trip(&f);
        f.consecutive = 7;
        round_trip(&f);
        f.on_failure(&p, T0);
        assert_eq!(f.locked_until, Some(LATEST));
        round_trip(&f);
        let old: VerifyFailures = serde_json::from_str("{}").expect("defaults");
        assert_eq!(old, VerifyFailures::default());
    }

    // --- geo ---

    fn geo(allowed: &[&str], blocked: &[&str]) -> GeoPolicy {
        let owned = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        GeoPolicy { allowed: owned(allowed), blocked: owned(blocked) }
    }

    fn blocked(prefix: &str) -> Result<(), GeoBlocked> {
        Err(GeoBlocked { prefix: prefix.into() })
    }

    #[test]
    fn empty_geo_policy_allows_everything() {
        let p = GeoPolicy::default();
        assert_eq!(p.check("+14155550123"), Ok(()));
        assert_eq!(p.check("+882"), Ok(()));
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn allow_list_restricts() {
        let p = geo(&["1", "44"], &[]);
        assert_eq!(p.check("+14155550123"), Ok(()));
        assert_eq!(p.check("+447911123456"), Ok(()));
        assert_eq!(p.check("+33612345678"), blocked(""));
    }

    #[test]
    fn longest_prefix_decides_and_blocked_wins_ties() {
        let p = geo(&["1"], &["1242"]);
        assert_eq!(p.check("+14155550123"), Ok(()));
        assert_eq!(p.check("+12425550123"), blocked("1242"));
        let p = geo(&["1242"], &["1"]);
        assert_eq!(p.check("+12425550123"), Ok(()));
        assert_eq!(p.check("+14155550123"), blocked("1"));
        let p = geo(&["44"], &["44"]);
        assert_eq!(p.check("+447911123456"), blocked("44"));
        let p = geo(&[], &["44", "4479"]);
        assert_eq!(p.check("+447911123456"), blocked("4479"));
        assert_eq!(p.check("+14155550123"), Ok(()));
    }

    #[test]
    fn weird_numbers_are_refused_without_panicking() {
        let p = geo(&[], &["44"]);
        for weird in ["", "+", "++1", "14155550123", "+1 415", "+1415x", "+\u{661}\u{662}", "é", "+-1"] {
            assert_eq!(p.check(weird), blocked(""), "{weird:?}");
        }
        // Malformed prefixes never match (an empty one would match everything).
        let p = geo(&[], &["", "+1", "1a"]);
        assert_eq!(p.check("+14155550123"), Ok(()));
    }

    #[test]
    fn validate_refuses_malformed_prefixes() {
        assert_eq!(geo(&["1", "44", "1242", "123456"], &["9"]).validate(), Ok(()));
        for bad in ["", "+44", "1234567", "4a", "0", "07", " 1", "\u{661}"] {
            assert!(geo(&[bad], &[]).validate().is_err(), "allowed {bad:?}");
            let err = geo(&["1"], &["44", bad]).validate().expect_err("refused");
            assert!(err.contains("blocked[1]"), "{err}");
        }
    }

    // --- pumping ---

    fn pumping() -> PumpingPolicy {
        PumpingPolicy::default()
    }

    /// `n` sends at `t` seconds.
    fn send_n(stats: &mut PrefixStats, p: &PumpingPolicy, n: u32, t: i64) {
        for _ in 0..n {
            stats.on_send(p, at(t));
        }
    }

    #[test]
    fn pumping_policy_defaults() {
        let p = pumping();
        assert_eq!(p.prefix_digits, 6);
        assert_eq!(p.window_secs, 3600);
        assert_eq!(p.max_sends_per_window, 200);
        assert_eq!(p.min_volume, 50);
        assert_eq!(p.min_conversion, 0.1);
        assert_eq!(p.conversion_grace_secs, 300);
        assert_eq!(p.quarantine_secs, 3600);
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn prefix_of_takes_leading_digits_and_never_panics() {
        let p = pumping();
        assert_eq!(prefix_of(&p, "+14155550123"), "141555");
        assert_eq!(prefix_of(&p, "+1234"), "1234");
        assert_eq!(prefix_of(&p, "+12ab34"), "12");
        assert_eq!(prefix_of(&p, "14155550123"), "141555");
        for weird in ["", "+", "abc", "+\u{661}\u{662}", "++1", "é+1"] {
            assert_eq!(prefix_of(&p, weird), "", "{weird:?}");
        }
        let p = PumpingPolicy { prefix_digits: 0, ..pumping() };
        assert_eq!(prefix_of(&p, "+14155550123"), "");
        let p = PumpingPolicy { prefix_digits: u32::MAX, ..pumping() };
        assert_eq!(prefix_of(&p, "+14155550123"), "14155550123");
    }

    #[test]
    fn velocity_fires_one_over_the_max() {
        let p = PumpingPolicy { min_volume: 0, ..pumping() };
        let mut s = PrefixStats::new("141555");
        send_n(&mut s, &p, 200, 0);
        assert_eq!(p.evaluate(&s, at(0)), None);
        s.on_send(&p, at(10));
        let q = p.evaluate(&s, at(10)).expect("quarantined");
        assert_eq!(
            q,
            Quarantine {
                prefix: "141555".into(),
                rule: Quarantine::PREFIX_VELOCITY.into(),
                detail: "201 sends in 3600 s (max 200)".into(),
                since: at(10),
                until: at(3610),
            }
        );
    }

    #[test]
    fn the_window_restarts_when_it_ends() {
        let p = pumping();
        let mut s = PrefixStats::new("141555");
        send_n(&mut s, &p, 150, 0);
        s.on_verified(&p, at(10));
        assert_eq!((s.sends(), s.verified(), s.window_start()), (150, 1, Some(at(0))));
        assert!(!s.is_stale(&p, at(3599)));
        assert!(s.is_stale(&p, at(3600)));
        assert_eq!(p.evaluate(&s, at(3600)), None, "an ended window counts nothing");
        send_n(&mut s, &p, 100, 3600);
        assert_eq!((s.sends(), s.verified(), s.window_start()), (100, 0, Some(at(3600))));
        assert_eq!(s.prefix(), "141555");
        assert_eq!(p.evaluate(&s, at(3600)), None);
    }

    #[test]
    fn conversion_fires_just_below_the_minimum() {
        let p = pumping();
        let mut s = PrefixStats::new("234803");
        send_n(&mut s, &p, 50, 0);
        for _ in 0..5 {
            s.on_verified(&p, at(60));
        }
        assert_eq!(p.evaluate(&s, at(300)), None, "exactly 10 %");
        let mut s = PrefixStats::new("234803");
        send_n(&mut s, &p, 50, 0);
        for _ in 0..4 {
            s.on_verified(&p, at(60));
        }
        let q = p.evaluate(&s, at(300)).expect("quarantined");
        assert_eq!(q.rule, Quarantine::LOW_CONVERSION);
        assert_eq!(q.detail, "conversion 8.0 % (4/50) below 10.0 % with at least 50 sends");
        assert_eq!((q.since, q.until), (at(300), at(3900)));
        // One settled send fewer than min_volume: not judged.
        let mut s = PrefixStats::new("234803");
        send_n(&mut s, &p, 49, 0);
        assert_eq!(p.evaluate(&s, at(300)), None);
    }

    #[test]
    fn conversion_detail_shows_the_figures() {
        let p = pumping();
        let mut s = PrefixStats::new("234803");
        send_n(&mut s, &p, 129, 0);
        for _ in 0..4 {
            s.on_verified(&p, at(100));
        }
        let q = p.evaluate(&s, at(400)).expect("quarantined");
        assert_eq!(q.detail, "conversion 3.1 % (4/129) below 10.0 % with at least 50 sends");
    }

    #[test]
    fn sends_in_the_grace_period_are_not_judged() {
        let p = pumping();
        let mut s = PrefixStats::new("234803");
        send_n(&mut s, &p, 60, 0);
        assert_eq!(s.settled_sends(&p, at(0)), 0);
        assert_eq!(p.evaluate(&s, at(0)), None);
        assert_eq!(p.evaluate(&s, at(299)), None);
        assert_eq!(s.settled_sends(&p, at(300)), 60);
        assert!(p.evaluate(&s, at(300)).is_some());

        // 40 settled + 40 recent: below min_volume until the second batch settles.
        let mut s = PrefixStats::new("234803");
        send_n(&mut s, &p, 40, 0);
        send_n(&mut s, &p, 40, 280);
        assert_eq!(s.settled_sends(&p, at(300)), 40);
        assert_eq!(p.evaluate(&s, at(300)), None);
        assert_eq!(s.settled_sends(&p, at(580)), 80);
        let q = p.evaluate(&s, at(580)).expect("quarantined");
        assert!(q.detail.contains("(0/80)"), "{}", q.detail);

        // No grace: everything counts at once.
        let p = PumpingPolicy { conversion_grace_secs: 0, ..pumping() };
        let mut s = PrefixStats::new("234803");
        send_n(&mut s, &p, 50, 0);
        assert_eq!(s.settled_sends(&p, at(0)), 50);
        assert!(p.evaluate(&s, at(0)).is_some());
    }

    #[test]
    fn disabled_pumping_rules() {
        let mut s = PrefixStats::new("234803");
        let base = pumping();
        send_n(&mut s, &base, 500, 0);
        assert!(base.evaluate(&s, at(300)).is_some());
        let off = |p: PumpingPolicy| p.evaluate(&s, at(300));
        assert_eq!(off(PumpingPolicy { prefix_digits: 0, ..base }), None);
        assert_eq!(off(PumpingPolicy { window_secs: 0, ..base }), None);
        assert_eq!(off(PumpingPolicy { quarantine_secs: 0, ..base }), None);
        let no_velocity = PumpingPolicy { max_sends_per_window: 0, ..base };
        assert_eq!(off(no_velocity).map(|q| q.rule), Some(Quarantine::LOW_CONVERSION.to_owned()));
        assert_eq!(off(PumpingPolicy { min_volume: 0, ..no_velocity }), None);
        assert_eq!(off(PumpingPolicy { min_conversion: 0.0, ..no_velocity }), None);
        assert_eq!(off(PumpingPolicy { min_conversion: f64::NAN, ..no_velocity }), None);
        // A zero window keeps nothing.
        let p = PumpingPolicy { window_secs: 0, ..base };
        let mut s = PrefixStats::new("234803");
        send_n(&mut s, &p, 3, 0);
        assert_eq!(s.sends(), 1);
        assert!(s.is_stale(&p, at(0)));
    }

    #[test]
    fn quarantine_expires_at_until() {
        let p = PumpingPolicy { max_sends_per_window: 1, ..pumping() };
        let mut s = PrefixStats::new("141555");
        send_n(&mut s, &p, 2, 0);
        let q = p.evaluate(&s, at(0)).expect("quarantined");
        assert!(q.is_active(at(-10)), "a clock going backwards stays quarantined");
        assert!(q.is_active(at(3600) - Duration::nanoseconds(1)));
        assert!(!q.is_active(at(3600)));
        let forever = PumpingPolicy { quarantine_secs: u64::MAX, ..p };
        let q = forever.evaluate(&s, at(0)).expect("quarantined");
        assert_eq!(q.until, LATEST);
        round_trip(&q);
    }

    #[test]
    fn stale_prefix_stats() {
        let p = pumping();
        assert!(PrefixStats::default().is_stale(&p, T0));
        let mut s = PrefixStats::new("141555");
        s.on_verified(&p, at(0));
        assert!(!s.is_stale(&p, at(3599)));
        assert!(s.is_stale(&p, at(3600)));
    }

    #[test]
    fn recent_buckets_stay_bounded() {
        let p = PumpingPolicy { window_secs: 86_400 * 7, conversion_grace_secs: 86_400, ..pumping() };
        let mut s = PrefixStats::new("141555");
        for minute in 0..1000 {
            s.on_send(&p, at(minute * 60));
            s.on_send(&p, at(minute * 60 + 30));
        }
        assert_eq!(s.recent.len(), MAX_RECENT_BUCKETS);
        assert_eq!(s.sends(), 2000);
        // Folding errs towards "recent": nothing settles early.
        assert_eq!(s.settled_sends(&p, at(59_999)), 0);
        assert_eq!(s.settled_sends(&p, at(999 * 60 + 30 + 86_400)), 2000);
        // Old buckets are dropped as they leave the grace period.
        let p = pumping();
        let mut s = PrefixStats::new("141555");
        for minute in 0..50 {
            s.on_send(&p, at(minute * 60));
        }
        assert_eq!(s.recent.len(), 5);
    }

    #[test]
    fn prefix_stats_survive_a_clock_going_backwards() {
        let p = pumping();
        let mut s = PrefixStats::new("141555");
        s.on_send(&p, at(600));
        s.on_send(&p, at(0));
        s.on_send(&p, at(-86_400));
        s.on_verified(&p, at(-86_400));
        assert_eq!((s.sends(), s.verified()), (3, 1));
        assert_eq!(s.recent.len(), 1, "folded into the newest bucket");
        assert_eq!(s.settled_sends(&p, at(0)), 0);
        assert!(!s.is_stale(&p, at(-86_400)));
        assert_eq!(p.evaluate(&s, at(-86_400)), None);
    }

    #[test]
    fn prefix_stats_and_quarantine_round_trip() {
        let p = pumping();
        round_trip(&PrefixStats::default());
        let mut s = PrefixStats::new("141555");
        send_n(&mut s, &p, 3, 0);
        send_n(&mut s, &p, 2, 90);
        s.on_verified(&p, at(100));
        round_trip(&s);
        let q = Quarantine {
            prefix: "141555".into(),
            rule: Quarantine::LOW_CONVERSION.into(),
            detail: "x".into(),
            since: at(0),
            until: at(3600),
        };
        round_trip(&q);
        let json = serde_json::to_string(&q).expect("serializes");
        assert!(json.contains("\"until\":\"2025-03-01T13:00:00Z\""), "{json}");
    }

    #[test]
    fn pumping_validate_refuses_bad_conversion() {
        for bad in [f64::NAN, -0.1, 1.5, f64::INFINITY] {
            let p = PumpingPolicy { min_conversion: bad, ..pumping() };
            assert!(p.validate().is_err(), "{bad}");
        }
        for good in [0.0, 0.5, 1.0] {
            let p = PumpingPolicy { min_conversion: good, ..pumping() };
            assert_eq!(p.validate(), Ok(()));
        }
    }

    // --- any input ---

    proptest::proptest! {
        #[test]
        fn no_input_panics_and_state_stays_bounded(
            number in ".{0,20}",
            prefixes in proptest::collection::vec("[0-9+a ]{0,8}", 0..4),
            steps in proptest::collection::vec((-100_000i64..100_000, 0u8..4), 1..60),
            secs in proptest::collection::vec(proptest::prop_oneof![0u64..1000, proptest::strategy::Just(u64::MAX)], 5),
            small in proptest::collection::vec(0u32..8, 3),
            conversion in proptest::prop_oneof![0.0f64..1.0, proptest::strategy::Just(f64::NAN)],
        ) {
            let geo = GeoPolicy { allowed: prefixes.clone(), blocked: prefixes };
            let _ = geo.check(&number);
            let _ = geo.validate();
            let send = SendPolicy {
                resend_cooldown_secs: secs[0],
                window_secs: secs[1],
                max_per_window: small[0],
            };
            let lock = VerifyLockPolicy { max_consecutive_failures: small[1], lock_secs: secs[2] };
            let pump = PumpingPolicy {
                prefix_digits: small[2],
                window_secs: secs[3],
                max_sends_per_window: small[0],
                min_volume: small[1],
                min_conversion: conversion,
                conversion_grace_secs: secs[4],
                quarantine_secs: secs[2],
            };
            let mut history = SendHistory::default();
            let mut failures = VerifyFailures::default();
            let mut stats = PrefixStats::new(prefix_of(&pump, &number));
            for (offset, event) in steps {
                let now = at(offset);
                let _ = send.check(&history, now);
                match event {
                    0 => send.record(&mut history, now),
                    1 => failures.on_failure(&lock, now),
                    2 => stats.on_send(&pump, now),
                    _ => stats.on_verified(&pump, now),
                }
                let _ = (failures.check(now), failures.is_stale(now));
                let _ = (history.is_stale(&send, now), stats.is_stale(&pump, now));
                if let Some(q) = pump.evaluate(&stats, now) {
                    let _ = q.is_active(now);
                    round_trip(&q);
                }
                proptest::prop_assert!(history.sends().len() <= small[0].max(1) as usize);
                proptest::prop_assert!(stats.recent.len() <= MAX_RECENT_BUCKETS);
                proptest::prop_assert!(stats.settled_sends(&pump, now) <= stats.sends());
            }
            round_trip(&history);
            round_trip(&failures);
            round_trip(&stats);
        }
    }

    // --- policies as config ---

    fn config_round_trip<T>(default: T, partial: &str, unknown: &str)
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let empty: T = serde_json::from_str("{}").expect("empty config");
        assert_eq!(empty, default);
        round_trip(&default);
        let partial: Result<T, _> = serde_json::from_str(partial);
        assert!(partial.is_ok(), "{partial:?}");
        let err = serde_json::from_str::<T>(unknown).expect_err("unknown field refused");
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn policies_deserialize_with_defaults_and_refuse_unknown_fields() {
        config_round_trip(SendPolicy::default(), r#"{"max_per_window": 3}"#, r#"{"max_per_windw": 3}"#);
        config_round_trip(VerifyLockPolicy::default(), r#"{"lock_secs": 60}"#, r#"{"lock": 60}"#);
        config_round_trip(GeoPolicy::default(), r#"{"blocked": ["1242"]}"#, r#"{"deny": ["1242"]}"#);
        config_round_trip(PumpingPolicy::default(), r#"{"min_conversion": 0.2}"#, r#"{"min_convertion": 0.2}"#);
        let p: SendPolicy = serde_json::from_str(r#"{"max_per_window": 3}"#).expect("partial");
        assert_eq!(p, SendPolicy { max_per_window: 3, ..SendPolicy::default() });
    }
}

/// Every abuse rule's policy, as configured in `[limits]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Policies {
    /// Sends per phone number.
    pub send: SendPolicy,
    /// Failed verifications per phone number, across codes.
    pub verify: VerifyLockPolicy,
    /// Allowed and blocked calling codes.
    pub geo: GeoPolicy,
    /// The SMS-pumping guard per number prefix.
    pub pumping: PumpingPolicy,
}

impl Policies {
    /// Refuses malformed prefixes and out-of-range rates.
    pub fn validate(&self) -> Result<(), String> {
        self.geo.validate().map_err(|e| format!("limits.geo: {e}"))?;
        self.pumping.validate().map_err(|e| format!("limits.pumping: {e}"))
    }
}
