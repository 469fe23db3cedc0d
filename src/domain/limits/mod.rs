//! Abuse-resistance rules: send limits per number, a verification lockout per
//! number, geo permissions and the SMS-pumping guard per number prefix, one
//! module per policy.
//!
//! Each rule is a policy (plain config, embedded in the config file) and a
//! small serializable state that the generator keeps in sled. The functions
//! are pure: `now` is an argument. A clock that goes backwards never panics:
//! a negative elapsed time counts as zero.

mod geo;
mod lockout;
mod pumping;
mod send;

pub use geo::{GeoBlocked, GeoPolicy};
pub use lockout::{VerifyFailures, VerifyLockPolicy};
pub use pumping::*;
pub use send::{Limited, SendHistory, SendPolicy};

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

/// The latest instant a computed deadline is allowed to reach, so that a huge
/// configured duration saturates instead of overflowing and still serializes
/// as RFC 3339 (four-digit years).
pub(crate) const LATEST: OffsetDateTime = time::macros::datetime!(9999-12-31 23:59:59 UTC);

/// `n` whole seconds, saturating at `i64::MAX`.
pub(crate) fn secs(n: u64) -> Duration {
    Duration::seconds(i64::try_from(n).unwrap_or(i64::MAX))
}

/// Time elapsed from `since` to `now`; zero if the clock went backwards.
pub(crate) fn elapsed(since: OffsetDateTime, now: OffsetDateTime) -> Duration {
    (now - since).max(Duration::ZERO)
}

/// `t` plus `n` seconds, saturating at [`LATEST`].
pub(crate) fn after(t: OffsetDateTime, n: u64) -> OffsetDateTime {
    t.checked_add(secs(n)).map_or(LATEST, |d| d.min(LATEST))
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

/// Serde for a list of timestamps as RFC 3339 strings.
pub(crate) mod rfc3339_list {
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
mod tests;
