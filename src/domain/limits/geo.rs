//! Geo permissions: allowed and blocked calling codes.

use serde::{Deserialize, Serialize};

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
