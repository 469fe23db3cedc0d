//! The generator's state in sled: the live code per phone number (as a keyed
//! digest), the lifecycle of every request, carrier message ids and limits.
//!
//! This module owns the read side (plain reads that decide nothing) and the
//! record types; every change goes through the [`Writer`], one thread that
//! owns sled's write side. It knows the domain, nothing of the broker or HTTP.
//! Only the generator process opens the store (sled is single-process).

mod apply;
mod batch;
mod sweep;
#[cfg(test)]
mod tests;
mod writer;

pub use apply::{CancelOutcome, IssueOutcome, Issued, StatusApplied, StatusUpdate, SweepReport, Verified, geo_detail};
pub use batch::{Change, TreeId};
pub use writer::{Writer, WriterSettings};

use crate::domain::RequestStatus;
use crate::domain::digest::CodeSeed;
use crate::domain::limits::{Limited, Policies, Quarantine, SendHistory, VerifyFailures, prefix_of};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::Tree;
use std::path::Path;
use std::sync::Arc;
use time::OffsetDateTime;

/// A store failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// sled itself failed (I/O, corruption, lock held by another process).
    #[error("sled: {0}")]
    Sled(Arc<sled::Error>),
    /// A stored value did not decode.
    #[error("corrupt record under {0}")]
    Corrupt(String),
    /// A flush (fsync) failed, or the writer is gone.
    #[error("flush: {0}")]
    Flush(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        Self::Sled(Arc::new(e))
    }
}

/// Everything known about one request, for `GET /v1/otp/{request_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// The producer's request id.
    pub request_id: String,
    /// Recipient, E.164 (returned masked).
    pub phone: String,
    /// Where the request is in its lifecycle.
    pub status: RequestStatus,
    /// Template used.
    pub template: String,
    /// Locale used.
    pub locale: String,
    /// Digits in the code.
    pub code_length: u8,
    /// Lifetime asked for, seconds.
    pub ttl_secs: i64,
    /// True once the delivery is confirmed by the broker.
    pub delivery_queued: bool,
    /// When the code was issued.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the code expires.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// When anything last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Carrier that took the SMS.
    pub carrier: Option<String>,
    /// The carrier's message id.
    pub carrier_message_id: Option<String>,
    /// Last error (failed delivery, replaced code, locked code).
    pub error: Option<String>,
    /// The code's seed and the id of the key it was derived under: a request
    /// re-issued after a crash gets the same code back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_seed: Option<CodeSeed>,
    /// Key id for `code_seed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_key_id: Option<String>,
    /// The application (scoped API key) it was made for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Why it was refused, for a `rejected` request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<crate::domain::RejectReason>,
}

/// The four trees of the database.
#[derive(Clone)]
pub(crate) struct Trees {
    db: sled::Db,
    codes: Tree,
    requests: Tree,
    by_message: Tree,
    limits: Tree,
}

impl Trees {
    fn get(&self, tree: TreeId) -> &Tree {
        match tree {
            TreeId::Codes => &self.codes,
            TreeId::Requests => &self.requests,
            TreeId::ByMessage => &self.by_message,
            TreeId::Limits => &self.limits,
        }
    }
}

/// sled page cache when none is configured: 64 MiB.
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Keys of the `limits` tree: one record per rule and subject.
pub(crate) mod limit_key {
    pub fn sends(phone: &str) -> Vec<u8> {
        format!("send\0{phone}").into_bytes()
    }
    pub fn failures(phone: &str) -> Vec<u8> {
        format!("fail\0{phone}").into_bytes()
    }
    pub fn prefix(prefix: &str) -> Vec<u8> {
        format!("prefix\0{prefix}").into_bytes()
    }
    pub fn quarantine(prefix: &str) -> Vec<u8> {
        format!("quarantine\0{prefix}").into_bytes()
    }
    pub const SENDS: &[u8] = b"send\0";
    pub const FAILURES: &[u8] = b"fail\0";
    pub const PREFIX: &[u8] = b"prefix\0";
    pub const QUARANTINE: &[u8] = b"quarantine\0";
}

pub(crate) fn message_key(carrier: &str, carrier_message_id: &str) -> Vec<u8> {
    format!("{carrier}\0{carrier_message_id}").into_bytes()
}

pub(crate) fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|_| StoreError::Corrupt(String::from_utf8_lossy(key).into_owned()))
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records always serialize")
}

/// The read side of the database: reads that decide nothing (a request's
/// status, a carrier message id, the quarantines, a read-only limit check).
/// Cheap to clone; what it reads may be at most one writer batch behind.
#[derive(Clone)]
pub struct Store {
    trees: Trees,
}

impl Store {
    /// Opens (or creates) the database under `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// Opens the store with a page cache of at most `cache_bytes` (sled's own
    /// default, 1 GiB, lets a busy generator's memory grow for a long time).
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(dir.join("sled")).cache_capacity(cache_bytes).open()?;
        let trees = Trees {
            codes: db.open_tree("codes")?,
            requests: db.open_tree("requests")?,
            by_message: db.open_tree("by_carrier_message")?,
            limits: db.open_tree("limits")?,
            db,
        };
        Ok(Self { trees })
    }

    /// The request a carrier's message id belongs to (recorded from `event.sent`).
    pub fn request_for_message(&self, carrier: &str, carrier_message_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .trees
            .by_message
            .get(message_key(carrier, carrier_message_id))?
            .map(|id| String::from_utf8_lossy(&id).into_owned()))
    }

    /// The record of `request_id`, if any.
    pub fn request(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        let key = request_id.as_bytes();
        self.trees.requests.get(key)?.map(|b| decode(key, &b)).transpose()
    }

    /// Whether a new code for `phone` would pass the send limits and the
    /// pumping quarantine now (read-only; the writer decides for real).
    pub fn precheck(
        &self,
        phone: &str,
        now: OffsetDateTime,
        policies: &Policies,
    ) -> Result<Result<(), IssueOutcome>, StoreError> {
        let prefix = prefix_of(&policies.pumping, phone);
        let quarantine_key = limit_key::quarantine(&prefix);
        if let Some(bytes) = self.trees.limits.get(&quarantine_key)? {
            let q: Quarantine = decode(&quarantine_key, &bytes)?;
            if q.is_active(now) {
                return Ok(Err(IssueOutcome::Quarantined { quarantine: Box::new(q), new: false }));
            }
        }
        let failures_key = limit_key::failures(phone);
        if let Some(bytes) = self.trees.limits.get(&failures_key)?
            && let Err(until) = decode::<VerifyFailures>(&failures_key, &bytes)?.check(now)
        {
            let limited = Limited { rule: Limited::VERIFY_LOCKOUT, retry_at: until };
            return Ok(Err(IssueOutcome::RateLimited(limited)));
        }
        let sends_key = limit_key::sends(phone);
        let sends = match self.trees.limits.get(&sends_key)? {
            Some(bytes) => decode::<SendHistory>(&sends_key, &bytes)?,
            None => SendHistory::default(),
        };
        Ok(policies.send.check(&sends, now).map_err(IssueOutcome::RateLimited))
    }

    /// The quarantines in force.
    pub fn quarantines(&self, now: OffsetDateTime) -> Result<Vec<Quarantine>, StoreError> {
        let mut out = Vec::new();
        for entry in self.trees.limits.scan_prefix(limit_key::QUARANTINE) {
            let (key, bytes) = entry?;
            let q: Quarantine = decode(&key, &bytes)?;
            if q.is_active(now) {
                out.push(q);
            }
        }
        Ok(out)
    }

    /// Keys in every tree (for tests and capacity checks).
    pub fn len(&self) -> usize {
        let t = &self.trees;
        t.codes.len() + t.requests.len() + t.by_message.len() + t.limits.len()
    }

    /// Whether every tree is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
