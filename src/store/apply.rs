//! What each state change does to a writer batch: issue, delivery queued,
//! status and receipt updates, verify, cancel, sweep, quarantine lifts.
//!
//! Every function here runs on the writer thread alone, so it reads and
//! writes without transactions or compare-and-swap: nothing else writes.
//! It owns the rules of the store's records; it knows nothing of threads,
//! channels, flushing or the broker.

use super::batch::{Batch, TreeId};
use super::{RequestRecord, StoreError, limit_key, message_key};
use crate::domain::digest::CodeSeed;
use crate::domain::limits::{Limited, Policies, PrefixStats, Quarantine, SendHistory, VerifyFailures, prefix_of};
use crate::domain::{
    Code, CodeDigest, CodeRecord, EventKind, KeyRing, Phone, RejectReason, RequestStatus, Transition, ValidRequest,
    VerifyOutcome, decide,
};
use time::OffsetDateTime;

/// A new code, as issued (the plaintext exists only here and in the delivery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The code.
    pub code: Code,
    /// When it expires.
    pub expires_at: OffsetDateTime,
    /// Whether this re-issues a request a previous run stored but never
    /// queued (same seed, so the same code).
    pub reissued: bool,
}

/// What an issue command found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssueOutcome {
    /// A code is stored (replacing any older code for the number): queue it.
    Issued(Issued),
    /// This request id was already handled: do nothing (the record says how far it got).
    Duplicate(Box<RequestRecord>),
    /// This request id was used before with another phone or other parameters.
    Conflict,
    /// A copy of this request was being issued and gave up (its delivery
    /// could not be queued): try again shortly.
    InProgress,
    /// Too many sends to this number: refused until `retry_at`.
    RateLimited(Limited),
    /// The number's country or calling code is not allowed.
    CountryBlocked(crate::domain::limits::GeoBlocked),
    /// The number's prefix is quarantined as suspected SMS pumping
    /// (`new`: this request tripped it).
    Quarantined {
        /// The quarantine in force.
        quarantine: Box<Quarantine>,
        /// Whether this request started it.
        new: bool,
    },
}

/// How the writer answers an issue: now, or once the twin in flight settles.
pub(super) enum IssueStep {
    /// The answer.
    Now(IssueOutcome),
    /// A copy of this request id is in flight in this process: wait for it.
    Wait,
}

/// A sender's (or a receipt's) news about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    /// The request.
    pub request_id: String,
    /// What happened.
    pub kind: EventKind,
    /// The carrier concerned.
    pub carrier: Option<String>,
    /// The carrier's message id.
    pub carrier_message_id: Option<String>,
    /// The error, for failures.
    pub error: Option<String>,
    /// When it happened.
    pub at: OffsetDateTime,
}

/// What a status update did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusApplied {
    /// The request's phone (E.164), if this store holds the request.
    pub phone: Option<String>,
    /// Whether the status moved (false: unknown request, or already later).
    pub applied: bool,
}

/// What a verification concluded, with what the caller reports about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The outcome.
    pub outcome: VerifyOutcome,
    /// Whether the stored code changed (used, expired, an attempt counted).
    pub changed: bool,
    /// Set when this attempt locked the number.
    pub locked_until: Option<OffsetDateTime>,
    /// For an approval, the carrier that delivered the code, if known.
    pub carrier: Option<String>,
}

/// What a cancel did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The request's code is dead; the record now says `canceled`.
    Canceled(Box<RequestRecord>),
    /// Nothing to cancel: the request is already verified, expired or canceled.
    AlreadyFinal(RequestStatus),
    /// No such request.
    NotFound,
}

/// What one sweep removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Expired codes removed, as (request id, phone); their open requests are now `expired`.
    pub expired: Vec<(String, String)>,
    /// Request records past retention removed.
    pub requests: usize,
    /// Carrier message ids of removed requests.
    pub message_ids: usize,
    /// Limit records that no longer limit anything.
    pub limits: usize,
}

/// What the rules need that does not change while the writer runs.
pub struct Rules {
    /// Digest keys (the current one and those still verifying).
    pub keys: KeyRing,
    /// Send, verify, geo and pumping policies.
    pub policies: Policies,
    /// Wrong codes allowed before a code is locked.
    pub max_attempts: u8,
}

/// A digest no code matches: verifying against it when a number has no code
/// costs the same HMAC as a real check (no timing oracle).
fn dummy_record() -> CodeRecord {
    CodeRecord {
        request_id: String::new(),
        digest: CodeDigest::ZERO,
        key_id: String::new(),
        expires_at: OffsetDateTime::UNIX_EPOCH,
        attempts_left: 0,
        owner: None,
        seed: None,
    }
}

fn same_parameters(a: &RequestRecord, b: &ValidRequest) -> bool {
    a.phone == b.phone.e164()
        && a.template == b.template
        && a.locale == b.locale
        && a.code_length == b.code_length.get()
        && a.ttl_secs == b.ttl.whole_seconds()
        && a.owner == b.owner
}

impl Rules {
    /// Issues a code for `request`, idempotently on its request id.
    /// `in_flight` says whether a copy is being issued by this process now.
    ///
    /// A record stored but never queued, with no copy in flight, is left over
    /// from a run that died in between: it is issued again from its stored
    /// seed, so with the same code, without counting against the limits again.
    pub(super) fn issue(
        &self,
        b: &mut Batch<'_>,
        request: &ValidRequest,
        in_flight: bool,
        now: OffsetDateTime,
    ) -> Result<IssueStep, StoreError> {
        let id = request.request_id.as_bytes();
        let mut seed = None;
        // A request refused before is decided afresh.
        let existing = b.get::<RequestRecord>(TreeId::Requests, id)?.filter(|e| e.status != RequestStatus::Rejected);
        if let Some(existing) = &existing {
            if !same_parameters(existing, request) {
                return Ok(IssueStep::Now(IssueOutcome::Conflict));
            }
            if existing.delivery_queued || existing.status != RequestStatus::Pending {
                return Ok(IssueStep::Now(IssueOutcome::Duplicate(Box::new(existing.clone()))));
            }
            if in_flight {
                return Ok(IssueStep::Wait);
            }
            seed = existing.code_seed.clone().zip(existing.code_key_id.clone());
        } else if let Some(refused) = self.admit(b, request.phone.e164(), now)? {
            record_refusal(b, request, &refused, now);
            return Ok(IssueStep::Now(refused));
        }
        let (seed, key) = match seed.and_then(|(seed, id)| Some((seed, self.keys.get(&id)?))) {
            Some(stored) => stored,
            None => (CodeSeed::random(&mut rand::rng()), self.keys.current()),
        };
        let code = key.derive_code(&seed, request.code_length);
        let expires_at = now + request.ttl;
        let record = CodeRecord {
            request_id: request.request_id.clone(),
            digest: key.digest(&request.phone, &request.request_id, &code),
            key_id: key.id().to_owned(),
            expires_at,
            attempts_left: self.max_attempts,
            owner: request.owner.clone(),
            seed: None,
        };
        let fresh = RequestRecord {
            code_seed: Some(seed),
            code_key_id: Some(key.id().to_owned()),
            created_at: existing.as_ref().map_or(now, |e| e.created_at),
            ..new_record(request, RequestStatus::Pending, expires_at, now)
        };
        supersede(b, request.phone.e164(), &fresh.request_id, now)?;
        b.put(TreeId::Codes, request.phone.e164().as_bytes(), &record);
        b.put(TreeId::Requests, id, &fresh);
        Ok(IssueStep::Now(IssueOutcome::Issued(Issued { code, expires_at, reissued: existing.is_some() })))
    }

    /// The send limits and the pumping guard for a new code to `phone`:
    /// `Some` refuses it; `None` admits it and counts the send.
    fn admit(&self, b: &mut Batch<'_>, phone: &str, now: OffsetDateTime) -> Result<Option<IssueOutcome>, StoreError> {
        let policies = &self.policies;
        if let Err(blocked) = policies.geo.check(phone) {
            return Ok(Some(IssueOutcome::CountryBlocked(blocked)));
        }
        let prefix = prefix_of(&policies.pumping, phone);
        let (prefix_key, quarantine_key) = (limit_key::prefix(&prefix), limit_key::quarantine(&prefix));
        if let Some(q) = b.get::<Quarantine>(TreeId::Limits, &quarantine_key)?
            && q.is_active(now)
        {
            return Ok(Some(IssueOutcome::Quarantined { quarantine: Box::new(q), new: false }));
        }
        if let Some(failures) = b.get::<VerifyFailures>(TreeId::Limits, &limit_key::failures(phone))?
            && let Err(until) = failures.check(now)
        {
            return Ok(Some(IssueOutcome::RateLimited(Limited { rule: Limited::VERIFY_LOCKOUT, retry_at: until })));
        }
        let sends_key = limit_key::sends(phone);
        let mut sends = b.get::<SendHistory>(TreeId::Limits, &sends_key)?.unwrap_or_default();
        if let Err(limited) = policies.send.check(&sends, now) {
            return Ok(Some(IssueOutcome::RateLimited(limited)));
        }
        let mut stats = b.get::<PrefixStats>(TreeId::Limits, &prefix_key)?.unwrap_or_else(|| PrefixStats::new(prefix));
        stats.on_send(&policies.pumping, now);
        if let Some(q) = policies.pumping.evaluate(&stats, now) {
            b.put(TreeId::Limits, &quarantine_key, &q);
            return Ok(Some(IssueOutcome::Quarantined { quarantine: Box::new(q), new: true }));
        }
        policies.send.record(&mut sends, now);
        b.put(TreeId::Limits, &sends_key, &sends);
        b.put(TreeId::Limits, &prefix_key, &stats);
        Ok(None)
    }

    /// Checks `code` for `phone`, applying expiry, attempt limits, the
    /// number's lockout and single use: of many right guesses one is approved.
    /// A caller limited to application `app` sees no code of another's.
    pub(super) fn verify(
        &self,
        b: &mut Batch<'_>,
        phone: &Phone,
        code: &Code,
        app: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Verified, StoreError> {
        let policies = &self.policies;
        let phone_key = phone.e164().as_bytes();
        let fail_key = limit_key::failures(phone.e164());
        let prefix_key = limit_key::prefix(&prefix_of(&policies.pumping, phone.e164()));
        let record = b
            .get::<CodeRecord>(TreeId::Codes, phone_key)?
            .filter(|r| crate::domain::request::visible_to(app, r.owner.as_deref()));
        let dummy = dummy_record();
        let against = record.as_ref().unwrap_or(&dummy);
        // The key that made this digest (rotated keys stay usable);
        // an unknown id cannot match, but costs the same HMAC.
        let key = self.keys.get(&against.key_id).unwrap_or(self.keys.current());
        let matched = key.matches(phone, &against.request_id, code, &against.digest) && record.is_some();
        let mut failures = b.get::<VerifyFailures>(TreeId::Limits, &fail_key)?.unwrap_or_default();
        if let Err(until) = failures.check(now) {
            let outcome = VerifyOutcome::Locked { until };
            return Ok(Verified { outcome, changed: false, locked_until: None, carrier: None });
        }
        let (outcome, transition) = decide(record.as_ref(), matched, now);
        let changed = transition != Transition::Keep;
        let mut locked_until = None;
        match &outcome {
            VerifyOutcome::Invalid { .. } | VerifyOutcome::MaxAttemptsReached { .. } if changed => {
                failures.on_failure(&policies.verify, now);
                locked_until = failures.locked_until;
                b.put(TreeId::Limits, &fail_key, &failures);
            }
            VerifyOutcome::Approved { .. } => {
                b.remove(TreeId::Limits, &fail_key);
                if let Some(mut stats) = b.get::<PrefixStats>(TreeId::Limits, &prefix_key)? {
                    stats.on_verified(&policies.pumping, now);
                    b.put(TreeId::Limits, &prefix_key, &stats);
                }
            }
            _ => {}
        }
        match transition {
            Transition::Keep => {}
            Transition::Remove => b.remove(TreeId::Codes, phone_key),
            Transition::Replace(next) => b.put(TreeId::Codes, phone_key, &next),
        }
        let carrier = settle_request(b, &outcome, changed, now)?;
        Ok(Verified { outcome, changed, locked_until, carrier })
    }
}

/// Why a geo rule refused a number, for producers and `GET`.
pub fn geo_detail(blocked: &crate::domain::limits::GeoBlocked) -> String {
    if blocked.prefix.is_empty() {
        "the number's country is not allowed".to_owned()
    } else {
        format!("calling code +{} is not allowed", blocked.prefix)
    }
}

/// A request's record, with nothing delivered yet.
fn new_record(
    request: &ValidRequest,
    status: RequestStatus,
    expires_at: OffsetDateTime,
    now: OffsetDateTime,
) -> RequestRecord {
    RequestRecord {
        request_id: request.request_id.clone(),
        phone: request.phone.e164().to_owned(),
        status,
        template: request.template.clone(),
        locale: request.locale.clone(),
        code_length: request.code_length.get(),
        ttl_secs: request.ttl.whole_seconds(),
        delivery_queued: false,
        created_at: now,
        expires_at,
        updated_at: now,
        carrier: None,
        carrier_message_id: None,
        error: None,
        code_seed: None,
        code_key_id: None,
        owner: request.owner.clone(),
        reason: None,
    }
}

/// Keeps a limit refusal as the request's record (`rejected`, with its
/// reason), so `GET /v1/otp/{request_id}` can tell why no code came.
fn record_refusal(b: &mut Batch<'_>, request: &ValidRequest, refused: &IssueOutcome, now: OffsetDateTime) {
    let (reason, error) = match refused {
        IssueOutcome::RateLimited(limited) => {
            (RejectReason::RateLimited, format!("{}: retry after {}", limited.rule, limited.retry_at))
        }
        IssueOutcome::Quarantined { quarantine: q, .. } => {
            (RejectReason::SuspectedPumping, format!("prefix +{} quarantined ({})", q.prefix, q.rule))
        }
        IssueOutcome::CountryBlocked(blocked) => (RejectReason::CountryBlocked, geo_detail(blocked)),
        _ => return,
    };
    let record = RequestRecord {
        reason: Some(reason),
        error: Some(error),
        ..new_record(request, RequestStatus::Rejected, now, now)
    };
    b.put(TreeId::Requests, request.request_id.as_bytes(), &record);
}

/// A new code for `phone` kills any older request's code: that request expires.
fn supersede(b: &mut Batch<'_>, phone: &str, new_id: &str, now: OffsetDateTime) -> Result<(), StoreError> {
    if let Some(old) = b.get::<CodeRecord>(TreeId::Codes, phone.as_bytes())?
        && old.request_id != new_id
    {
        update_request(b, &old.request_id, |r| {
            if r.status.can_become(RequestStatus::Expired) {
                r.status = RequestStatus::Expired;
                r.error = Some(format!("superseded by {new_id}"));
                r.updated_at = now;
            }
        })?;
    }
    Ok(())
}

/// Moves the request of a verification outcome to its final status; returns
/// the carrier of an approved request.
fn settle_request(
    b: &mut Batch<'_>,
    outcome: &VerifyOutcome,
    changed: bool,
    now: OffsetDateTime,
) -> Result<Option<String>, StoreError> {
    let (request_id, status, error) = match outcome {
        VerifyOutcome::Approved { request_id } => (request_id, RequestStatus::Verified, None),
        VerifyOutcome::Expired { request_id } => (request_id, RequestStatus::Expired, None),
        VerifyOutcome::MaxAttemptsReached { request_id } if changed => {
            (request_id, RequestStatus::Expired, Some("max_attempts_reached".to_owned()))
        }
        _ => return Ok(None),
    };
    let record = update_request(b, request_id, |r| {
        if r.status.can_become(status) {
            r.status = status;
            r.error = error.clone().or(r.error.take());
            r.updated_at = now;
        }
    })?;
    Ok(record.and_then(|r| r.carrier))
}

/// Changes the record of `request_id` in place; `None` if there is none.
fn update_request(
    b: &mut Batch<'_>,
    request_id: &str,
    change: impl FnOnce(&mut RequestRecord),
) -> Result<Option<RequestRecord>, StoreError> {
    let key = request_id.as_bytes();
    let Some(mut record) = b.get::<RequestRecord>(TreeId::Requests, key)? else {
        return Ok(None);
    };
    change(&mut record);
    b.put(TreeId::Requests, key, &record);
    Ok(Some(record))
}

/// Records that the delivery of `request_id` is confirmed by the broker.
pub(super) fn mark_queued(b: &mut Batch<'_>, request_id: &str) -> Result<Option<RequestRecord>, StoreError> {
    update_request(b, request_id, |r| r.delivery_queued = true)
}

/// Applies a sender's status event or a receipt to the request's record. The
/// carrier's message id is indexed only for a request this store holds (with
/// shards, every shard sees every event).
pub(super) fn apply_status(b: &mut Batch<'_>, u: &StatusUpdate) -> Result<StatusApplied, StoreError> {
    let Some(next) = u.kind.request_status() else {
        return Ok(StatusApplied::default());
    };
    let mut applied = false;
    let record = update_request(b, &u.request_id, |r| {
        applied = r.status.can_become(next);
        // Which carrier took the SMS is kept even when the news arrives
        // after a later state (a fast user can verify before `sent` lands).
        if r.carrier.is_none() || applied {
            r.carrier = u.carrier.clone().or(r.carrier.take());
            r.carrier_message_id = u.carrier_message_id.clone().or(r.carrier_message_id.take());
        }
        if applied {
            r.status = next;
            r.error = u.error.clone().or(r.error.take());
            r.updated_at = u.at;
        }
    })?;
    let Some(record) = record else {
        return Ok(StatusApplied::default());
    };
    if let (Some(carrier), Some(id)) = (&u.carrier, &u.carrier_message_id) {
        b.put_raw(TreeId::ByMessage, &message_key(carrier, id), u.request_id.as_bytes());
    }
    Ok(StatusApplied { phone: Some(record.phone), applied })
}

/// Cancels a request's code: verification for it then answers "not found".
pub(super) fn cancel(b: &mut Batch<'_>, request_id: &str, now: OffsetDateTime) -> Result<CancelOutcome, StoreError> {
    let Some(mut record) = b.get::<RequestRecord>(TreeId::Requests, request_id.as_bytes())? else {
        return Ok(CancelOutcome::NotFound);
    };
    if record.status.is_final() {
        return Ok(CancelOutcome::AlreadyFinal(record.status));
    }
    let phone = record.phone.as_bytes();
    if b.get::<CodeRecord>(TreeId::Codes, phone)?.is_some_and(|c| c.request_id == record.request_id) {
        b.remove(TreeId::Codes, phone);
    }
    record.status = RequestStatus::Canceled;
    record.updated_at = now;
    b.put(TreeId::Requests, request_id.as_bytes(), &record);
    Ok(CancelOutcome::Canceled(Box::new(record)))
}

/// Lifts the quarantine of `prefix` (and restarts its counts). Returns
/// whether one was in force.
pub(super) fn lift_quarantine(b: &mut Batch<'_>, prefix: &str, now: OffsetDateTime) -> Result<bool, StoreError> {
    let key = limit_key::quarantine(prefix);
    let was = b.get::<Quarantine>(TreeId::Limits, &key)?.is_some_and(|q| q.is_active(now));
    b.remove(TreeId::Limits, &key);
    b.remove(TreeId::Limits, &limit_key::prefix(prefix));
    Ok(was)
}
