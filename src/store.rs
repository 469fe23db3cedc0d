//! The generator's state in sled: the live code per phone number (as a keyed
//! digest) and the lifecycle of every request, updated in transactions.
//!
//! Only the generator process opens the store (sled is single-process).

use crate::domain::digest::CodeSeed;
use crate::domain::limits::{Limited, Policies, PrefixStats, Quarantine, SendHistory, VerifyFailures, prefix_of};
use crate::domain::{
    Code, CodeRecord, EventKind, KeyRing, Phone, RequestStatus, Transition, ValidRequest, VerifyOutcome, decide,
};
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{Transactional, Tree};
use std::path::Path;
use time::OffsetDateTime;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled itself failed (I/O, corruption, lock held by another process).
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A stored value did not decode.
    #[error("corrupt record under {0}")]
    Corrupt(String),
    /// A flush (fsync) failed, or the flusher is gone.
    #[error("flush: {0}")]
    Flush(String),
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
}

/// What [`Store::issue`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssueOutcome {
    /// A new code is stored (replacing any older code for the number).
    Issued,
    /// This request id was already handled and its delivery queued: do nothing.
    Duplicate(Box<RequestRecord>),
    /// This request id was used before with another phone or other parameters.
    Conflict,
    /// Another consumer is issuing this request id right now: try again shortly.
    InProgress,
    /// Too many sends to this number: refused until `retry_at`.
    RateLimited(Limited),
    /// The number's prefix is quarantined as suspected SMS pumping
    /// (`new`: this request tripped it).
    Quarantined {
        /// The quarantine in force.
        quarantine: Box<Quarantine>,
        /// Whether this request started it.
        new: bool,
    },
}

/// What one [`Store::sweep`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Expired codes removed; their requests (if still open) are now `expired`.
    pub expired: Vec<(String, String)>,
    /// Request records past retention removed.
    pub requests: usize,
    /// Carrier message ids of removed requests.
    pub message_ids: usize,
}

/// What [`Store::cancel`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The request's code is dead; the record now says `canceled`.
    Canceled(Box<RequestRecord>),
    /// Nothing to cancel: the request is already verified, expired or canceled.
    AlreadyFinal(RequestStatus),
    /// No such request.
    NotFound,
}

/// The sled database: live codes by phone, requests by id, and request ids
/// by carrier message id (to resolve delivery receipts).
#[derive(Clone)]
pub struct Store {
    codes: Tree,
    requests: Tree,
    by_message: Tree,
    limits: Tree,
    flusher: GroupCommit,
}

/// One waiter of a group commit: told when a flush that began after its
/// writes has finished.
type FlushWaiter = tokio::sync::oneshot::Sender<Result<(), String>>;

/// Group commit: a thread that flushes sled once for every caller that
/// asked while the previous flush ran, so concurrent writers share fsyncs.
#[derive(Debug, Clone)]
struct GroupCommit {
    waiters: std::sync::mpsc::Sender<FlushWaiter>,
}

impl GroupCommit {
    fn start(db: sled::Db) -> std::io::Result<Self> {
        let (waiters, queue) = std::sync::mpsc::channel::<FlushWaiter>();
        std::thread::Builder::new().name("sled-group-commit".into()).spawn(move || {
            // Ends when the last clone of the store is dropped.
            while let Ok(first) = queue.recv() {
                let mut batch = vec![first];
                batch.extend(queue.try_iter());
                let result = db.flush().map(|_| ()).map_err(|e| e.to_string());
                for waiter in batch {
                    let _ = waiter.send(result.clone());
                }
            }
        })?;
        Ok(Self { waiters })
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.waiters.send(done).map_err(|_| StoreError::Flush("the flusher stopped".into()))?;
        wait.await.map_err(|_| StoreError::Flush("the flusher stopped".into()))?.map_err(StoreError::Flush)
    }
}

/// sled page cache when none is configured: 64 MiB.
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Keys of the `limits` tree: one record per rule and subject.
mod limit_key {
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

fn message_key(carrier: &str, carrier_message_id: &str) -> Vec<u8> {
    format!("{carrier}\0{carrier_message_id}").into_bytes()
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|_| StoreError::Corrupt(String::from_utf8_lossy(key).into_owned()))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records always serialize")
}

fn tx_get<T: for<'de> Deserialize<'de>>(tree: &TransactionalTree, key: &[u8]) -> TxResult<Option<T>> {
    match tree.get(key)? {
        None => Ok(None),
        Some(bytes) => decode(key, &bytes).map(Some).map_err(ConflictableTransactionError::Abort),
    }
}

fn unwrap_tx<T>(result: Result<T, TransactionError<StoreError>>) -> Result<T, StoreError> {
    result.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
    })
}

/// A digest no code matches: verifying against it when a number has no code
/// costs the same HMAC as a real check (no timing oracle).
fn dummy_record() -> CodeRecord {
    CodeRecord {
        request_id: String::new(),
        digest: crate::domain::CodeDigest::ZERO,
        key_id: String::new(),
        expires_at: OffsetDateTime::UNIX_EPOCH,
        attempts_left: 0,
        seed: None,
    }
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
        let codes = db.open_tree("codes")?;
        let requests = db.open_tree("requests")?;
        let by_message = db.open_tree("by_carrier_message")?;
        let limits = db.open_tree("limits")?;
        let flusher = GroupCommit::start(db).map_err(|e| StoreError::Flush(e.to_string()))?;
        Ok(Self { codes, requests, by_message, limits, flusher })
    }

    /// Makes every change so far durable. Callers that ask while a flush runs
    /// share the next one (group commit): one fsync for a whole batch.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.flusher.flush().await
    }

    /// Stores `record` as the live code for `request.phone`, idempotently on
    /// the request id. A code of another request for the same number dies.
    ///
    /// A request seen before whose delivery was never confirmed (the process
    /// died in between) is issued again from the same `code_seed`, so with the
    /// same code; a different seed for it means another consumer is issuing it
    /// now ([`IssueOutcome::InProgress`]). Records without a seed (older
    /// versions) get the new code, which replaces the unconfirmed one.
    pub fn issue(
        &self,
        request: &ValidRequest,
        record: &CodeRecord,
        now: OffsetDateTime,
        policies: &Policies,
    ) -> Result<IssueOutcome, StoreError> {
        let sends_key = limit_key::sends(request.phone.e164());
        let prefix = prefix_of(&policies.pumping, request.phone.e164());
        let (prefix_key, quarantine_key) = (limit_key::prefix(&prefix), limit_key::quarantine(&prefix));
        let phone = request.phone.e164().as_bytes();
        let id = request.request_id.as_bytes();
        let fresh = RequestRecord {
            request_id: request.request_id.clone(),
            phone: request.phone.e164().to_owned(),
            status: RequestStatus::Pending,
            template: request.template.clone(),
            locale: request.locale.clone(),
            code_length: request.code_length.get(),
            ttl_secs: request.ttl.whole_seconds(),
            delivery_queued: false,
            created_at: now,
            expires_at: record.expires_at,
            updated_at: now,
            carrier: None,
            carrier_message_id: None,
            error: None,
            code_seed: record.seed.clone(),
            code_key_id: record.seed.as_ref().map(|_| record.key_id.clone()),
        };
        unwrap_tx((&self.codes, &self.requests, &self.limits).transaction(|(codes, requests, limits)| {
            let mut retry_of_unqueued = false;
            if let Some(existing) = tx_get::<RequestRecord>(requests, id)? {
                let same = existing.phone == fresh.phone
                    && existing.template == fresh.template
                    && existing.locale == fresh.locale
                    && existing.code_length == fresh.code_length
                    && existing.ttl_secs == fresh.ttl_secs;
                if !same {
                    return Ok(IssueOutcome::Conflict);
                }
                if existing.delivery_queued || existing.status != RequestStatus::Pending {
                    return Ok(IssueOutcome::Duplicate(Box::new(existing)));
                }
                // Issued before but never queued (the process died): already counted.
                // Another consumer issuing it right now (another seed): let it finish.
                if existing.code_seed.is_some() && existing.code_seed != fresh.code_seed {
                    return Ok(IssueOutcome::InProgress);
                }
                retry_of_unqueued = true;
            }
            if !retry_of_unqueued {
                if let Some(q) = tx_get::<Quarantine>(limits, &quarantine_key)?
                    && q.is_active(now)
                {
                    return Ok(IssueOutcome::Quarantined { quarantine: Box::new(q), new: false });
                }
                let mut sends = tx_get::<SendHistory>(limits, &sends_key)?.unwrap_or_default();
                if let Err(limited) = policies.send.check(&sends, now) {
                    return Ok(IssueOutcome::RateLimited(limited));
                }
                let mut stats =
                    tx_get::<PrefixStats>(limits, &prefix_key)?.unwrap_or_else(|| PrefixStats::new(prefix.clone()));
                stats.on_send(&policies.pumping, now);
                if let Some(q) = policies.pumping.evaluate(&stats, now) {
                    limits.insert(quarantine_key.as_slice(), encode(&q))?;
                    return Ok(IssueOutcome::Quarantined { quarantine: Box::new(q), new: true });
                }
                policies.send.record(&mut sends, now);
                limits.insert(sends_key.as_slice(), encode(&sends))?;
                limits.insert(prefix_key.as_slice(), encode(&stats))?;
            }
            if let Some(old) = tx_get::<CodeRecord>(codes, phone)?
                && old.request_id != fresh.request_id
            {
                let old_id = old.request_id.as_bytes();
                if let Some(mut old_req) = tx_get::<RequestRecord>(requests, old_id)?
                    && old_req.status.can_become(RequestStatus::Expired)
                {
                    old_req.status = RequestStatus::Expired;
                    old_req.error = Some(format!("superseded by {}", fresh.request_id));
                    old_req.updated_at = now;
                    requests.insert(old_id, encode(&old_req))?;
                }
            }
            codes.insert(phone, encode(record))?;
            requests.insert(id, encode(&fresh))?;
            Ok(IssueOutcome::Issued)
        }))
    }

    /// Records that the delivery of `request_id` is confirmed by the broker.
    pub fn mark_queued(&self, request_id: &str) -> Result<(), StoreError> {
        self.update_request(request_id, |r| r.delivery_queued = true).map(|_| ())
    }

    fn update_request(
        &self,
        request_id: &str,
        mut change: impl FnMut(&mut RequestRecord),
    ) -> Result<Option<RequestRecord>, StoreError> {
        let key = request_id.as_bytes();
        let mut failure = None;
        let updated = self.requests.update_and_fetch(key, |old| {
            let bytes = old?;
            match decode::<RequestRecord>(key, bytes) {
                Ok(mut r) => {
                    change(&mut r);
                    Some(encode(&r))
                }
                Err(e) => {
                    failure = Some(e);
                    Some(bytes.to_vec())
                }
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        updated.map(|b| decode(key, &b)).transpose()
    }

    /// Cancels a request's code: verification for it then answers "not found".
    pub fn cancel(&self, request_id: &str, now: OffsetDateTime) -> Result<CancelOutcome, StoreError> {
        let id = request_id.as_bytes();
        unwrap_tx((&self.codes, &self.requests).transaction(|(codes, requests)| {
            let Some(mut record) = tx_get::<RequestRecord>(requests, id)? else {
                return Ok(CancelOutcome::NotFound);
            };
            if record.status.is_final() {
                return Ok(CancelOutcome::AlreadyFinal(record.status));
            }
            let phone = record.phone.as_bytes();
            if tx_get::<CodeRecord>(codes, phone)?.is_some_and(|c| c.request_id == record.request_id) {
                codes.remove(phone)?;
            }
            record.status = RequestStatus::Canceled;
            record.updated_at = now;
            requests.insert(id, encode(&record))?;
            Ok(CancelOutcome::Canceled(Box::new(record)))
        }))
    }

    /// Checks `code` for `phone`, applying expiry, attempt limits and single
    /// use atomically: of many concurrent right guesses exactly one is approved.
    pub fn verify(
        &self,
        phone: &Phone,
        code: &Code,
        keys: &KeyRing,
        now: OffsetDateTime,
        policies: &Policies,
    ) -> Result<(VerifyOutcome, bool, Option<OffsetDateTime>), StoreError> {
        let phone_key = phone.e164().as_bytes();
        let fail_key = limit_key::failures(phone.e164());
        let prefix_key = limit_key::prefix(&prefix_of(&policies.pumping, phone.e164()));
        let dummy = dummy_record();
        unwrap_tx((&self.codes, &self.requests, &self.limits).transaction(|(codes, requests, limits)| {
            let record = tx_get::<CodeRecord>(codes, phone_key)?;
            let against = record.as_ref().unwrap_or(&dummy);
            // The key that made this digest (rotated keys stay usable);
            // an unknown id cannot match, but costs the same HMAC.
            let key = keys.get(&against.key_id).unwrap_or(keys.current());
            let matched = key.matches(phone, &against.request_id, code, &against.digest) && record.is_some();
            let mut failures = tx_get::<VerifyFailures>(limits, &fail_key)?.unwrap_or_default();
            if let Err(until) = failures.check(now) {
                return Ok((VerifyOutcome::Locked { until }, false, None));
            }
            let mut locked_now = None;
            let (outcome, transition) = decide(record.as_ref(), matched, now);
            let changed = transition != Transition::Keep;
            match &outcome {
                VerifyOutcome::Invalid { .. } | VerifyOutcome::MaxAttemptsReached { .. } if changed => {
                    failures.on_failure(&policies.verify, now);
                    locked_now = failures.locked_until;
                    limits.insert(fail_key.as_slice(), encode(&failures))?;
                }
                VerifyOutcome::Approved { .. } => {
                    limits.remove(fail_key.as_slice())?;
                    if let Some(mut stats) = tx_get::<PrefixStats>(limits, &prefix_key)? {
                        stats.on_verified(&policies.pumping, now);
                        limits.insert(prefix_key.as_slice(), encode(&stats))?;
                    }
                }
                _ => {}
            }
            match transition {
                Transition::Keep => {}
                Transition::Remove => {
                    codes.remove(phone_key)?;
                }
                Transition::Replace(next) => {
                    codes.insert(phone_key, encode(&next))?;
                }
            }
            let status = match &outcome {
                VerifyOutcome::Approved { request_id } => Some((request_id, RequestStatus::Verified, None)),
                VerifyOutcome::Expired { request_id } => Some((request_id, RequestStatus::Expired, None)),
                VerifyOutcome::MaxAttemptsReached { request_id } if changed => {
                    Some((request_id, RequestStatus::Expired, Some("max_attempts_reached".to_owned())))
                }
                _ => None,
            };
            if let Some((request_id, status, error)) = status
                && let Some(mut r) = tx_get::<RequestRecord>(requests, request_id.as_bytes())?
                && r.status.can_become(status)
            {
                r.status = status;
                r.error = error.or(r.error);
                r.updated_at = now;
                requests.insert(request_id.as_bytes(), encode(&r))?;
            }
            Ok((outcome, changed, locked_now))
        }))
    }

    /// Applies a sender's status event to the request's record. Returns false
    /// if the request is unknown or already in a later state. The carrier's
    /// message id is indexed only for a request this store holds (with
    /// shards, every shard sees every event).
    pub fn apply_event(
        &self,
        request_id: &str,
        kind: EventKind,
        carrier: Option<&str>,
        carrier_message_id: Option<&str>,
        error: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let Some(next) = kind.request_status() else {
            return Ok(false);
        };
        let mut applied = false;
        let known = self.update_request(request_id, |r| {
            applied = r.status.can_become(next);
            // Which carrier took the SMS is kept even when the news arrives
            // after a later state (a fast user can verify before `sent` lands).
            if r.carrier.is_none() || applied {
                r.carrier = carrier.map(str::to_owned).or(r.carrier.take());
                r.carrier_message_id = carrier_message_id.map(str::to_owned).or(r.carrier_message_id.take());
            }
            if applied {
                r.status = next;
                r.error = error.map(str::to_owned).or(r.error.take());
                r.updated_at = at;
            }
        })?;
        if known.is_some()
            && let (Some(carrier), Some(id)) = (carrier, carrier_message_id)
        {
            self.by_message.insert(message_key(carrier, id), request_id.as_bytes())?;
        }
        Ok(applied)
    }

    /// The request a carrier's message id belongs to (recorded from `event.sent`).
    pub fn request_for_message(&self, carrier: &str, carrier_message_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .by_message
            .get(message_key(carrier, carrier_message_id))?
            .map(|id| String::from_utf8_lossy(&id).into_owned()))
    }

    /// The record of `request_id`, if any.
    pub fn request(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        let key = request_id.as_bytes();
        self.requests.get(key)?.map(|b| decode(key, &b)).transpose()
    }

    /// Removes what has run its course, so the store stays bounded: expired
    /// codes (their open requests become `expired`), request records whose
    /// last change is older than `retention` once they are final or expired,
    /// and carrier message ids of removed requests. A request id re-published
    /// after its record was removed is treated as new.
    pub fn sweep(&self, now: OffsetDateTime, retention: time::Duration) -> Result<SweepReport, StoreError> {
        let mut report = SweepReport::default();
        for entry in self.codes.iter() {
            let (key, bytes) = entry?;
            let record: CodeRecord = decode(&key, &bytes)?;
            if record.expires_at > now {
                continue;
            }
            // Only if unchanged meanwhile (a new code may have replaced it).
            if self.codes.compare_and_swap(&key, Some(&bytes), None as Option<&[u8]>)?.is_ok() {
                let phone = String::from_utf8_lossy(&key).into_owned();
                let expired = self.update_request(&record.request_id, |r| {
                    if r.status.can_become(RequestStatus::Expired) {
                        r.status = RequestStatus::Expired;
                        r.updated_at = now;
                    }
                })?;
                if expired.is_some_and(|r| r.status == RequestStatus::Expired && r.updated_at == now) {
                    report.expired.push((record.request_id, phone));
                }
            }
        }
        for entry in self.requests.iter() {
            let (key, bytes) = entry?;
            let record: RequestRecord = decode(&key, &bytes)?;
            let done = record.status.is_final() || record.expires_at <= now;
            if done
                && record.updated_at + retention <= now
                && self.requests.compare_and_swap(&key, Some(&bytes), None as Option<&[u8]>)?.is_ok()
            {
                report.requests += 1;
            }
        }
        for entry in self.by_message.iter() {
            let (key, request_id) = entry?;
            if !self.requests.contains_key(&request_id)? {
                self.by_message.remove(&key)?;
                report.message_ids += 1;
            }
        }
        Ok(report)
    }

    /// Removes limit records that no longer limit anything (empty send
    /// windows, unlocked zero counts, finished prefix windows, lifted
    /// quarantines). Returns how many went.
    pub fn sweep_limits(&self, now: OffsetDateTime, policies: &Policies) -> Result<usize, StoreError> {
        let mut removed = 0;
        for entry in self.limits.iter() {
            let (key, bytes) = entry?;
            let stale = if key.starts_with(limit_key::SENDS) {
                decode::<SendHistory>(&key, &bytes)?.is_stale(&policies.send, now)
            } else if key.starts_with(limit_key::FAILURES) {
                decode::<VerifyFailures>(&key, &bytes)?.is_stale(now)
            } else if key.starts_with(limit_key::PREFIX) {
                decode::<PrefixStats>(&key, &bytes)?.is_stale(&policies.pumping, now)
            } else if key.starts_with(limit_key::QUARANTINE) {
                !decode::<Quarantine>(&key, &bytes)?.is_active(now)
            } else {
                true
            };
            if stale && self.limits.compare_and_swap(&key, Some(&bytes), None as Option<&[u8]>)?.is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Whether a new code for `phone` would pass the send limits and the
    /// pumping quarantine now (read-only; `issue` decides for real).
    pub fn precheck(
        &self,
        phone: &str,
        now: OffsetDateTime,
        policies: &Policies,
    ) -> Result<Result<(), IssueOutcome>, StoreError> {
        let prefix = prefix_of(&policies.pumping, phone);
        let quarantine_key = limit_key::quarantine(&prefix);
        if let Some(bytes) = self.limits.get(&quarantine_key)? {
            let q: Quarantine = decode(&quarantine_key, &bytes)?;
            if q.is_active(now) {
                return Ok(Err(IssueOutcome::Quarantined { quarantine: Box::new(q), new: false }));
            }
        }
        let sends_key = limit_key::sends(phone);
        let sends = match self.limits.get(&sends_key)? {
            Some(bytes) => decode::<SendHistory>(&sends_key, &bytes)?,
            None => SendHistory::default(),
        };
        Ok(policies.send.check(&sends, now).map_err(IssueOutcome::RateLimited))
    }

    /// The quarantines in force.
    pub fn quarantines(&self, now: OffsetDateTime) -> Result<Vec<Quarantine>, StoreError> {
        let mut out = Vec::new();
        for entry in self.limits.scan_prefix(limit_key::QUARANTINE) {
            let (key, bytes) = entry?;
            let q: Quarantine = decode(&key, &bytes)?;
            if q.is_active(now) {
                out.push(q);
            }
        }
        Ok(out)
    }

    /// Lifts the quarantine of `prefix` (and restarts its counts). Returns
    /// whether one was in force.
    pub fn lift_quarantine(&self, prefix: &str, now: OffsetDateTime) -> Result<bool, StoreError> {
        let was = self
            .limits
            .remove(limit_key::quarantine(prefix))?
            .map(|b| decode::<Quarantine>(prefix.as_bytes(), &b))
            .transpose()?
            .is_some_and(|q| q.is_active(now));
        self.limits.remove(limit_key::prefix(prefix))?;
        Ok(was)
    }

    /// Keys in every tree (for tests and capacity checks).
    pub fn len(&self) -> usize {
        self.codes.len() + self.requests.len() + self.by_message.len() + self.limits.len()
    }

    /// Whether both trees are empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DigestKey;
    use crate::domain::{Limits, RawRequest, Templates};
    use time::Duration;

    /// Policies with the send limits off, for tests of other rules.
    fn open() -> Policies {
        let mut p = Policies::default();
        p.send.resend_cooldown_secs = 0;
        p.send.max_per_window = 0;
        p
    }

    fn setup() -> (tempfile::TempDir, Store, KeyRing) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store, KeyRing::new(DigestKey::new(vec![9; 32]).unwrap(), vec![]))
    }

    fn request(id: &str) -> ValidRequest {
        RawRequest { request_id: id.into(), phone: "+14155550123".into(), ..Default::default() }
            .validate(&Limits::default(), &Templates::default())
            .unwrap()
    }

    fn record(key: &KeyRing, req: &ValidRequest, code: &str, now: OffsetDateTime) -> CodeRecord {
        let key = key.current();
        CodeRecord {
            request_id: req.request_id.clone(),
            digest: key.digest(&req.phone, &req.request_id, &Code::parse(code).unwrap()),
            key_id: key.id().into(),
            expires_at: now + req.ttl,
            attempts_left: 5,
            seed: None,
        }
    }

    #[test]
    fn issue_is_idempotent_once_queued() {
        let (_d, store, key) = setup();
        let now = OffsetDateTime::now_utc();
        let req = request("r1");
        assert_eq!(store.issue(&req, &record(&key, &req, "111111", now), now, &open()).unwrap(), IssueOutcome::Issued);
        // Not yet queued (as after a crash): issued again, replacing the code.
        assert_eq!(store.issue(&req, &record(&key, &req, "222222", now), now, &open()).unwrap(), IssueOutcome::Issued);
        store.mark_queued("r1").unwrap();
        assert!(matches!(
            store.issue(&req, &record(&key, &req, "333333", now), now, &open()).unwrap(),
            IssueOutcome::Duplicate(_)
        ));
        let code = Code::parse("222222").unwrap();
        let (outcome, _, _) = store.verify(&req.phone, &code, &key, now, &open()).unwrap();
        assert_eq!(outcome.label(), "approved");
        assert_eq!(store.request("r1").unwrap().unwrap().status, RequestStatus::Verified);
    }

    #[test]
    fn an_unqueued_request_keeps_its_seed_and_a_second_seed_waits() {
        let (_d, store, keys) = setup();
        let now = OffsetDateTime::now_utc();
        let req = request("r1");
        let seeded = |seed: &CodeSeed| {
            let code = keys.current().derive_code(seed, req.code_length);
            CodeRecord { seed: Some(seed.clone()), ..record(&keys, &req, code.expose(), now) }
        };
        let seed = CodeSeed::random(&mut rand::rng());
        assert_eq!(store.issue(&req, &seeded(&seed), now, &open()).unwrap(), IssueOutcome::Issued);
        let stored = store.request("r1").unwrap().unwrap();
        assert_eq!(
            (stored.code_seed.as_ref(), stored.code_key_id.as_deref()),
            (Some(&seed), Some(keys.current().id()))
        );
        // After a crash before the delivery was confirmed: the same seed issues again (same code)…
        assert_eq!(store.issue(&req, &seeded(&seed), now, &open()).unwrap(), IssueOutcome::Issued);
        // …while another seed means a concurrent consumer: it must wait, not replace the code.
        let other = CodeSeed::random(&mut rand::rng());
        assert_eq!(store.issue(&req, &seeded(&other), now, &open()).unwrap(), IssueOutcome::InProgress);
        let code = keys.current().derive_code(&seed, req.code_length);
        let (outcome, _, _) = store.verify(&req.phone, &code, &keys, now, &open()).unwrap();
        assert_eq!(outcome.label(), "approved");
    }

    #[test]
    fn events_of_unknown_requests_index_nothing() {
        let (_d, store, _keys) = setup();
        let now = OffsetDateTime::now_utc();
        let applied = store.apply_event("elsewhere", EventKind::Sent, Some("twilio"), Some("SM1"), None, now).unwrap();
        assert!(!applied);
        assert_eq!(store.request_for_message("twilio", "SM1").unwrap(), None);
        assert!(store.is_empty());
    }

    #[test]
    fn a_reused_id_with_other_parameters_conflicts() {
        let (_d, store, key) = setup();
        let now = OffsetDateTime::now_utc();
        let req = request("r1");
        store.issue(&req, &record(&key, &req, "111111", now), now, &open()).unwrap();
        let mut other = req.clone();
        other.phone = Phone::parse("+447911123456").unwrap();
        assert_eq!(
            store.issue(&other, &record(&key, &other, "111111", now), now, &open()).unwrap(),
            IssueOutcome::Conflict
        );
    }

    #[test]
    fn a_newer_code_replaces_the_older_one() {
        let (_d, store, key) = setup();
        let now = OffsetDateTime::now_utc();
        let (a, b) = (request("a"), request("b"));
        store.issue(&a, &record(&key, &a, "111111", now), now, &open()).unwrap();
        store.issue(&b, &record(&key, &b, "222222", now), now, &open()).unwrap();
        let old = Code::parse("111111").unwrap();
        assert_eq!(store.verify(&a.phone, &old, &key, now, &open()).unwrap().0.label(), "invalid_code");
        assert_eq!(store.request("a").unwrap().unwrap().status, RequestStatus::Expired);
        let new = Code::parse("222222").unwrap();
        assert_eq!(store.verify(&b.phone, &new, &key, now, &open()).unwrap().0.label(), "approved");
        assert_eq!(store.verify(&b.phone, &new, &key, now, &open()).unwrap().0.label(), "not_found");
    }

    #[test]
    fn expired_codes_answer_expired_once_then_not_found() {
        let (_d, store, key) = setup();
        let now = OffsetDateTime::now_utc();
        let req = request("r1");
        store.issue(&req, &record(&key, &req, "111111", now), now, &open()).unwrap();
        let later = now + Duration::minutes(6);
        let code = Code::parse("111111").unwrap();
        assert_eq!(store.verify(&req.phone, &code, &key, later, &open()).unwrap().0.label(), "expired");
        assert_eq!(store.request("r1").unwrap().unwrap().status, RequestStatus::Expired);
        assert_eq!(store.verify(&req.phone, &code, &key, later, &open()).unwrap().0.label(), "not_found");
    }

    #[test]
    fn sender_events_move_the_status_forward_only() {
        let (_d, store, key) = setup();
        let now = OffsetDateTime::now_utc();
        let req = request("r1");
        store.issue(&req, &record(&key, &req, "111111", now), now, &open()).unwrap();
        assert!(store.apply_event("r1", EventKind::Sent, Some("webhook"), Some("m1"), None, now).unwrap());
        assert!(store.apply_event("r1", EventKind::Delivered, None, None, None, now).unwrap());
        assert!(!store.apply_event("r1", EventKind::Sent, Some("webhook"), None, None, now).unwrap());
        let r = store.request("r1").unwrap().unwrap();
        assert_eq!(
            (r.status, r.carrier.as_deref(), r.carrier_message_id.as_deref()),
            (RequestStatus::Delivered, Some("webhook"), Some("m1"))
        );
        assert!(!store.apply_event("nope", EventKind::Sent, None, None, None, now).unwrap());
        assert_eq!(store.request_for_message("webhook", "m1").unwrap().as_deref(), Some("r1"));
        assert_eq!(store.request_for_message("twilio", "m1").unwrap(), None);
    }

    #[test]
    fn the_carrier_is_kept_when_sent_arrives_after_verification() {
        let (_d, store, key) = setup();
        let now = OffsetDateTime::now_utc();
        let req = request("r1");
        store.issue(&req, &record(&key, &req, "111111", now), now, &open()).unwrap();
        let code = Code::parse("111111").unwrap();
        assert_eq!(store.verify(&req.phone, &code, &key, now, &open()).unwrap().0.label(), "approved");
        let applied = store.apply_event("r1", EventKind::Sent, Some("twilio"), Some("SM1"), None, now).unwrap();
        assert!(!applied, "verified stays verified");
        let r = store.request("r1").unwrap().unwrap();
        assert_eq!(
            (r.status, r.carrier.as_deref(), r.carrier_message_id.as_deref()),
            (RequestStatus::Verified, Some("twilio"), Some("SM1"))
        );
    }

    #[test]
    fn codes_issued_before_a_key_rotation_still_verify() {
        let (_d, store, old) = setup();
        let now = OffsetDateTime::now_utc();
        let req = request("r1");
        store.issue(&req, &record(&old, &req, "111111", now), now, &open()).unwrap();
        let rotated = KeyRing::new(DigestKey::new(vec![7; 32]).unwrap(), vec![old.current().clone()]);
        let code = Code::parse("111111").unwrap();
        assert_eq!(store.verify(&req.phone, &code, &rotated, now, &open()).unwrap().0.label(), "approved");
        // Once the old key is dropped, its codes no longer verify.
        let req2 = request("r2");
        store.issue(&req2, &record(&old, &req2, "222222", now), now, &open()).unwrap();
        let dropped = KeyRing::new(DigestKey::new(vec![7; 32]).unwrap(), vec![]);
        let code = Code::parse("222222").unwrap();
        assert_eq!(store.verify(&req2.phone, &code, &dropped, now, &open()).unwrap().0.label(), "invalid_code");
    }

    #[test]
    fn a_canceled_code_no_longer_verifies() {
        let (_d, store, key) = setup();
        let now = OffsetDateTime::now_utc();
        let req = request("r1");
        store.issue(&req, &record(&key, &req, "111111", now), now, &open()).unwrap();
        assert!(matches!(store.cancel("r1", now).unwrap(), CancelOutcome::Canceled(_)));
        let code = Code::parse("111111").unwrap();
        assert_eq!(store.verify(&req.phone, &code, &key, now, &open()).unwrap().0.label(), "not_found");
        assert_eq!(store.cancel("r1", now).unwrap(), CancelOutcome::AlreadyFinal(RequestStatus::Canceled));
        assert_eq!(store.cancel("nope", now).unwrap(), CancelOutcome::NotFound);
        // A newer code for the number is not touched by canceling an older request.
        let (a, b) = (request("a"), request("b"));
        store.issue(&a, &record(&key, &a, "333333", now), now, &open()).unwrap();
        store.issue(&b, &record(&key, &b, "444444", now), now, &open()).unwrap();
        assert!(matches!(store.cancel("a", now).unwrap(), CancelOutcome::AlreadyFinal(RequestStatus::Expired)));
        let code = Code::parse("444444").unwrap();
        assert_eq!(store.verify(&b.phone, &code, &key, now, &open()).unwrap().0.label(), "approved");
    }

    #[test]
    fn the_sweeper_returns_the_store_to_its_baseline() {
        let (_d, store, key) = setup();
        let now = OffsetDateTime::now_utc();
        assert!(store.is_empty());
        for i in 0..20 {
            let mut req = request(&format!("r{i}"));
            req.phone = Phone::parse(&format!("+1415555{:04}", 1000 + i)).unwrap();
            store.issue(&req, &record(&key, &req, "111111", now), now, &open()).unwrap();
            store
                .apply_event(&req.request_id, EventKind::Sent, Some("twilio"), Some(&format!("SM{i}")), None, now)
                .unwrap();
        }
        assert_eq!(store.len(), 60 + 21, "codes, requests, message ids; 20 send histories and 1 prefix");
        // Before expiry nothing goes.
        assert_eq!(store.sweep(now, time::Duration::hours(24)).unwrap(), SweepReport::default());
        let later = now + time::Duration::minutes(6);
        let report = store.sweep(later, time::Duration::hours(24)).unwrap();
        assert_eq!(report.expired.len(), 20, "expired codes are removed and their requests expire");
        assert_eq!(store.request("r0").unwrap().unwrap().status, RequestStatus::Expired);
        assert_eq!(store.len(), 40 + 21, "request records stay for the retention period");
        let day_later = later + time::Duration::hours(24);
        assert_eq!(store.sweep_limits(day_later, &open()).unwrap(), 21);
        let report = store.sweep(day_later, time::Duration::hours(24)).unwrap();
        assert_eq!((report.requests, report.message_ids), (20, 20));
        assert!(store.is_empty(), "back to the baseline");
    }

    #[test]
    fn nothing_plaintext_is_stored() {
        let (dir, store, key) = setup();
        let now = OffsetDateTime::now_utc();
        let req = request("r1");
        store.issue(&req, &record(&key, &req, "864209", now), now, &open()).unwrap();
        drop(store);
        let mut found = false;
        for entry in walk(dir.path()) {
            let bytes = std::fs::read(&entry).unwrap();
            found |= bytes.windows(6).any(|w| w == b"864209");
        }
        assert!(!found, "the plaintext code is in the sled files");
    }

    fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
        }
        out
    }
}
