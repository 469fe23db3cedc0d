//! The verification rules: expiry, attempt limits and single use, as a pure
//! decision over the stored record.

use crate::domain::CodeDigest;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The live code for one phone number, as stored (no plaintext).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRecord {
    /// The request that issued the code.
    pub request_id: String,
    /// HMAC of the code, bound to phone and request.
    pub digest: CodeDigest,
    /// Id of the key that made `digest`.
    pub key_id: String,
    /// When the code stops working.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// The application (scoped API key) whose request issued it: only it,
    /// and unscoped keys, may verify it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Wrong guesses still allowed; 0 means locked until it expires.
    pub attempts_left: u8,
    /// The seed the code was derived from; kept with the request record (so a
    /// re-issue derives the same code), never with the digest.
    #[serde(skip)]
    pub seed: Option<crate::domain::digest::CodeSeed>,
}

/// What a verification attempt concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyOutcome {
    /// The code was right; it is now used up.
    Approved {
        /// The request whose code it was.
        request_id: String,
    },
    /// Wrong code; `attempts_left` more tries.
    Invalid {
        /// Tries left before the code is locked.
        attempts_left: u8,
    },
    /// The code's time is up.
    Expired {
        /// The request whose code it was.
        request_id: String,
    },
    /// Too many wrong codes: this code is dead.
    MaxAttemptsReached {
        /// The request whose code it was.
        request_id: String,
    },
    /// No live code for this number (never issued, already used, or replaced).
    NotFound,
    /// Too many consecutive failed verifications for this number (across
    /// codes): nothing is checked until `until`.
    Locked {
        /// When verification opens again.
        until: OffsetDateTime,
    },
}

impl VerifyOutcome {
    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Approved { .. } => "approved",
            Self::Invalid { .. } => "invalid_code",
            Self::Expired { .. } => "expired",
            Self::MaxAttemptsReached { .. } => "max_attempts_reached",
            Self::NotFound => "not_found",
            Self::Locked { .. } => "locked",
        }
    }
}

/// What to do with the stored record after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Leave it as it is.
    Keep,
    /// Store this updated record.
    Replace(CodeRecord),
    /// Delete it.
    Remove,
}

/// Decides an attempt. `matched` must be computed (in constant time) by the
/// caller whether or not a record exists, so the decision leaks nothing.
///
/// A locked record is kept until it expires, so a right code after too many
/// wrong ones still answers "max attempts", not "not found".
pub fn decide(record: Option<&CodeRecord>, matched: bool, now: OffsetDateTime) -> (VerifyOutcome, Transition) {
    let Some(record) = record else {
        return (VerifyOutcome::NotFound, Transition::Keep);
    };
    let request_id = record.request_id.clone();
    if now >= record.expires_at {
        return (VerifyOutcome::Expired { request_id }, Transition::Remove);
    }
    if record.attempts_left == 0 {
        return (VerifyOutcome::MaxAttemptsReached { request_id }, Transition::Keep);
    }
    if matched {
        return (VerifyOutcome::Approved { request_id }, Transition::Remove);
    }
    let attempts_left = record.attempts_left - 1;
    let next = CodeRecord { attempts_left, ..record.clone() };
    if attempts_left == 0 {
        (VerifyOutcome::MaxAttemptsReached { request_id }, Transition::Replace(next))
    } else {
        (VerifyOutcome::Invalid { attempts_left }, Transition::Replace(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Code, DigestKey, Phone};
    use time::Duration;

    fn record(now: OffsetDateTime, attempts: u8) -> CodeRecord {
        let key = DigestKey::new(vec![3; 32]).unwrap();
        let phone = Phone::parse("+14155550123").unwrap();
        CodeRecord {
            request_id: "r1".into(),
            digest: key.digest(&phone, "r1", &Code::parse("123456").unwrap()),
            key_id: key.id().into(),
            expires_at: now + Duration::minutes(5),
            attempts_left: attempts,
            owner: None,
            seed: None,
        }
    }

    #[test]
    fn right_code_is_approved_and_removed() {
        let now = OffsetDateTime::now_utc();
        let (o, t) = decide(Some(&record(now, 5)), true, now);
        assert_eq!(o, VerifyOutcome::Approved { request_id: "r1".into() });
        assert_eq!(t, Transition::Remove);
    }

    #[test]
    fn five_wrong_codes_lock_the_code() {
        let now = OffsetDateTime::now_utc();
        let mut r = record(now, 5);
        for left in (1..=4).rev() {
            let (o, t) = decide(Some(&r), false, now);
            assert_eq!(o, VerifyOutcome::Invalid { attempts_left: left });
            let Transition::Replace(next) = t else { panic!("expected replace") };
            r = next;
        }
        let (o, t) = decide(Some(&r), false, now);
        assert_eq!(o.label(), "max_attempts_reached");
        let Transition::Replace(locked) = t else { panic!("expected replace") };
        // Even the right code is refused now.
        let (o, t) = decide(Some(&locked), true, now);
        assert_eq!(o.label(), "max_attempts_reached");
        assert_eq!(t, Transition::Keep);
    }

    #[test]
    fn expiry_wins_over_everything() {
        let now = OffsetDateTime::now_utc();
        let r = record(now, 5);
        let later = now + Duration::minutes(5);
        let (o, t) = decide(Some(&r), true, later);
        assert_eq!(o, VerifyOutcome::Expired { request_id: "r1".into() });
        assert_eq!(t, Transition::Remove);
        let (o, _) = decide(Some(&record(now, 0)), true, later);
        assert_eq!(o.label(), "expired");
    }

    #[test]
    fn no_record_is_not_found() {
        let (o, t) = decide(None, true, OffsetDateTime::now_utc());
        assert_eq!((o, t), (VerifyOutcome::NotFound, Transition::Keep));
    }
}
