//! The sweeper's rules: what has run its course and leaves the store, so it
//! stays bounded. Runs on the writer thread, inside a batch, like any change,
//! a bounded slice of keys at a time, so a large store never holds up the
//! writer for long: each slice ends with a [`SweepCursor`] to go on from.
//!
//! It owns retention; it knows nothing of threads, flushing or the broker.

use super::apply::SweepReport;
use super::batch::{Batch, TreeId};
use super::{RequestRecord, StoreError, decode, limit_key};
use crate::domain::CodeRecord;
use crate::domain::RequestStatus;
use crate::domain::limits::{Policies, PrefixStats, Quarantine, SendHistory, VerifyFailures};
use time::OffsetDateTime;

/// Keys one sweep command looks at, at the most.
pub const SWEEP_SLICE: usize = 2_000;

/// Where a sweep goes on: the tree it is in and the last key it looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepCursor {
    tree: Option<TreeId>,
    after: Option<Vec<u8>>,
}

/// The trees in the order a sweep passes through them.
const ORDER: [TreeId; 4] = [TreeId::Codes, TreeId::Requests, TreeId::ByMessage, TreeId::Limits];

/// The settings of one sweep.
pub(super) struct SweepRules<'a> {
    pub now: OffsetDateTime,
    pub retention: time::Duration,
    pub policies: &'a Policies,
}

/// Sweeps up to `limit` keys from `cursor` on: removes expired codes (their
/// open requests become `expired`), request records whose last change is
/// older than `retention` once they are final or expired, carrier message ids
/// of removed requests, and limit records that no longer limit anything.
/// Returns what it removed and, if the sweep is not finished, where to go on.
///
/// A request id re-published after its record was removed is treated as new
/// (its old code died long before: `ttl_secs` is bounded far below any
/// sensible retention).
pub(super) fn sweep(
    b: &mut Batch<'_>,
    rules: &SweepRules<'_>,
    cursor: SweepCursor,
    limit: usize,
) -> Result<(SweepReport, Option<SweepCursor>), StoreError> {
    let mut report = SweepReport::default();
    let start = cursor.tree.map_or(0, |t| ORDER.iter().position(|o| *o == t).unwrap_or(0));
    let mut after = cursor.after;
    let mut budget = limit.max(1);
    for tree in &ORDER[start..] {
        for key in b.sled_keys(*tree, after.as_deref()) {
            let key = key?;
            sweep_key(b, *tree, &key, rules, &mut report)?;
            budget -= 1;
            if budget == 0 {
                return Ok((report, Some(SweepCursor { tree: Some(*tree), after: Some(key.to_vec()) })));
            }
        }
        after = None;
    }
    Ok((report, None))
}

fn sweep_key(
    b: &mut Batch<'_>,
    tree: TreeId,
    key: &[u8],
    rules: &SweepRules<'_>,
    report: &mut SweepReport,
) -> Result<(), StoreError> {
    let now = rules.now;
    match tree {
        TreeId::Codes => {
            let Some(record) = b.get::<CodeRecord>(TreeId::Codes, key)? else { return Ok(()) };
            if record.expires_at > now {
                return Ok(());
            }
            b.remove(TreeId::Codes, key);
            let request_key = record.request_id.as_bytes();
            if let Some(mut r) = b.get::<RequestRecord>(TreeId::Requests, request_key)?
                && r.status.can_become(RequestStatus::Expired)
            {
                r.status = RequestStatus::Expired;
                r.updated_at = now;
                b.put(TreeId::Requests, request_key, &r);
                report.expired.push((record.request_id, String::from_utf8_lossy(key).into_owned()));
            }
        }
        TreeId::Requests => {
            let Some(record) = b.get::<RequestRecord>(TreeId::Requests, key)? else { return Ok(()) };
            let done = record.status.is_final() || record.expires_at <= now;
            if done && record.updated_at + rules.retention <= now {
                b.remove(TreeId::Requests, key);
                report.requests += 1;
            }
        }
        TreeId::ByMessage => {
            let Some(request_id) = b.get_raw(TreeId::ByMessage, key)? else { return Ok(()) };
            if b.get_raw(TreeId::Requests, &request_id)?.is_none() {
                b.remove(TreeId::ByMessage, key);
                report.message_ids += 1;
            }
        }
        TreeId::Limits => {
            let Some(bytes) = b.get_raw(TreeId::Limits, key)? else { return Ok(()) };
            if stale_limit(key, &bytes, rules.policies, now)? {
                b.remove(TreeId::Limits, key);
                report.limits += 1;
            }
        }
    }
    Ok(())
}

/// Whether a limit record no longer limits anything (an empty send window,
/// an unlocked zero count, a finished prefix window, a lifted quarantine).
fn stale_limit(key: &[u8], bytes: &[u8], policies: &Policies, now: OffsetDateTime) -> Result<bool, StoreError> {
    Ok(if key.starts_with(limit_key::SENDS) {
        decode::<SendHistory>(key, bytes)?.is_stale(&policies.send, now)
    } else if key.starts_with(limit_key::FAILURES) {
        decode::<VerifyFailures>(key, bytes)?.is_stale(now)
    } else if key.starts_with(limit_key::PREFIX) {
        decode::<PrefixStats>(key, bytes)?.is_stale(&policies.pumping, now)
    } else if key.starts_with(limit_key::QUARANTINE) {
        !decode::<Quarantine>(key, bytes)?.is_active(now)
    } else {
        true
    })
}

impl SweepReport {
    /// Adds what another slice of the same sweep removed.
    pub fn add(&mut self, other: SweepReport) {
        self.expired.extend(other.expired);
        self.requests += other.requests;
        self.message_ids += other.message_ids;
        self.limits += other.limits;
    }
}
