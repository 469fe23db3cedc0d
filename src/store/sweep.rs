//! The sweeper's rules: what has run its course and leaves the store, so it
//! stays bounded. Runs on the writer thread, inside a batch, like any change.
//!
//! It owns retention; it knows nothing of threads, flushing or the broker.

use super::apply::SweepReport;
use super::batch::{Batch, TreeId};
use super::{RequestRecord, StoreError, decode, limit_key};
use crate::domain::CodeRecord;
use crate::domain::RequestStatus;
use crate::domain::limits::{Policies, PrefixStats, Quarantine, SendHistory, VerifyFailures};
use time::OffsetDateTime;

/// Removes expired codes (their open requests become `expired`), request
/// records whose last change is older than `retention` once they are final or
/// expired, carrier message ids of removed requests, and limit records that
/// no longer limit anything. A request id re-published after its record was
/// removed is treated as new (its old code died long before: `ttl_secs` is
/// bounded far below any sensible retention).
pub(super) fn sweep(
    b: &mut Batch<'_>,
    now: OffsetDateTime,
    retention: time::Duration,
    policies: &Policies,
) -> Result<SweepReport, StoreError> {
    let mut report = SweepReport::default();
    for key in b.sled_keys(TreeId::Codes) {
        let key = key?;
        let Some(record) = b.get::<CodeRecord>(TreeId::Codes, &key)? else { continue };
        if record.expires_at > now {
            continue;
        }
        b.remove(TreeId::Codes, &key);
        let request_key = record.request_id.as_bytes();
        if let Some(mut r) = b.get::<RequestRecord>(TreeId::Requests, request_key)?
            && r.status.can_become(RequestStatus::Expired)
        {
            r.status = RequestStatus::Expired;
            r.updated_at = now;
            b.put(TreeId::Requests, request_key, &r);
            report.expired.push((record.request_id, String::from_utf8_lossy(&key).into_owned()));
        }
    }
    for key in b.sled_keys(TreeId::Requests) {
        let key = key?;
        let Some(record) = b.get::<RequestRecord>(TreeId::Requests, &key)? else { continue };
        let done = record.status.is_final() || record.expires_at <= now;
        if done && record.updated_at + retention <= now {
            b.remove(TreeId::Requests, &key);
            report.requests += 1;
        }
    }
    for key in b.sled_keys(TreeId::ByMessage) {
        let key = key?;
        let Some(request_id) = b.get_raw(TreeId::ByMessage, &key)? else { continue };
        if b.get_raw(TreeId::Requests, &request_id)?.is_none() {
            b.remove(TreeId::ByMessage, &key);
            report.message_ids += 1;
        }
    }
    report.limits = sweep_limits(b, now, policies)?;
    Ok(report)
}

/// Removes limit records that no longer limit anything (empty send windows,
/// unlocked zero counts, finished prefix windows, lifted quarantines).
fn sweep_limits(b: &mut Batch<'_>, now: OffsetDateTime, policies: &Policies) -> Result<usize, StoreError> {
    let mut removed = 0;
    for key in b.sled_keys(TreeId::Limits) {
        let key = key?;
        let Some(bytes) = b.get_raw(TreeId::Limits, &key)? else { continue };
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
        if stale {
            b.remove(TreeId::Limits, &key);
            removed += 1;
        }
    }
    Ok(removed)
}
