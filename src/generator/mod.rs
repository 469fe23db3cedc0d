//! The generator: turns requests into stored digests and queued deliveries,
//! keeps each request's status, and answers verifications.
//!
//! It wires the domain, the store's writer and the [`Outbox`]; it alone
//! touches codes. Its rooms: `issue` (requests in, deliveries out), `status`
//! (sender events and receipts), `verify` (verification and cancel), `sweep`
//! (retention and quarantines), `outbox` (the port to the broker).

mod issue;
pub mod outbox;
mod status;
mod sweep;
#[cfg(test)]
mod tests;
mod verify;

pub use outbox::{BrokerOutbox, MemoryOutbox, Outbox, Sent};

use crate::broker::{BoxFuture, BrokerError, Disposition, Handler, Inbound, Topology};
use crate::domain::limits::Policies;
use crate::domain::{Clock, Limits, RawRequest, RejectReason, Rejection, Templates, ValidRequest};
use crate::store::{IssueOutcome, Store, StoreError, Writer};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use time::OffsetDateTime;

/// Largest request body taken off the queue; larger ones are dead-lettered
/// unread (a valid request is a few hundred bytes).
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// Pause before a message whose processing hit an infrastructure failure is requeued.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// A generator failure seen by the HTTP layer.
#[derive(Debug, thiserror::Error)]
pub enum GeneratorError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A rule refused the request (and, for limits, when to retry).
    #[error("{0}")]
    Refused(Box<Rejection>, Option<OffsetDateTime>),
}

/// Code policy and text settings of a generator.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Defaults for optional request fields.
    pub limits: Limits,
    /// SMS templates.
    pub templates: Templates,
    /// Wrong codes allowed before a code is locked.
    pub max_attempts: u8,
    /// `{app}` in templates.
    pub app_name: String,
    /// Abuse resistance: send/verify limits, geo permissions, pumping guard.
    pub guards: Policies,
}

/// The generator's state and operations.
pub struct Generator {
    writer: Writer,
    store: Store,
    policy: Policy,
    outbox: Arc<dyn Outbox>,
    topology: Topology,
    clock: Arc<dyn Clock>,
    store_ok: AtomicBool,
}

impl Generator {
    /// A generator over a running store writer, sending through `outbox`
    /// under the names of `topology`.
    pub fn new(
        writer: Writer,
        policy: Policy,
        outbox: Arc<dyn Outbox>,
        topology: Topology,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let store = writer.store().clone();
        Self { writer, store, policy, outbox, topology, clock, store_ok: AtomicBool::new(true) }
    }

    /// The store's writer (for flushing at shutdown).
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Whether the last store operation succeeded (readiness).
    pub fn store_ok(&self) -> bool {
        self.store_ok.load(Ordering::SeqCst)
    }

    /// The current time on this generator's clock.
    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    fn track<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        self.store_ok.store(result.is_ok(), Ordering::SeqCst);
        result
    }

    fn store_failed(&self, error: &StoreError) -> Disposition {
        tracing::error!(error = %error, "store failure; the message will be retried");
        Disposition::Retry { after: RETRY_PAUSE }
    }

    /// Checks a request the way the queue consumer will (for `POST /v1/otp`).
    pub fn validate(&self, raw: RawRequest) -> Result<ValidRequest, Rejection> {
        raw.validate(&self.policy.limits, &self.policy.templates)
    }

    fn geo_check(&self, request: &ValidRequest) -> Option<Rejection> {
        let blocked = self.policy.guards.geo.check(request.phone.e164()).err()?;
        Some(Rejection { reason: RejectReason::CountryBlocked, detail: crate::store::geo_detail(&blocked) })
    }

    /// The geo and limit rules a new code must pass, checked read-only (for
    /// `POST /v1/otp`, which answers at once; the consumer decides for real).
    /// `Err` carries the rejection and, for limits, when to retry.
    pub fn precheck(&self, request: &ValidRequest) -> Result<(), GeneratorError> {
        if let Some(rejection) = self.geo_check(request) {
            return Err(GeneratorError::Refused(Box::new(rejection), None));
        }
        let now = self.clock.now();
        match self.track(self.store.precheck(request.phone.e164(), now, &self.policy.guards))? {
            Ok(()) => Ok(()),
            Err(outcome) => {
                let (rejection, retry_at) = limit_rejection(&outcome, now).expect("a limit outcome");
                Err(GeneratorError::Refused(Box::new(rejection), Some(retry_at)))
            }
        }
    }
}

/// The rejection (and when to retry) for a limit outcome of an issue; counts
/// a quarantine that this request started.
fn limit_rejection(outcome: &IssueOutcome, now: OffsetDateTime) -> Option<(Rejection, OffsetDateTime)> {
    use crate::telemetry::names;
    match outcome {
        IssueOutcome::RateLimited(limited) => {
            let wait = seconds_until(limited.retry_at, now);
            let why = if limited.rule == crate::domain::limits::Limited::VERIFY_LOCKOUT {
                "the number is locked after too many failed verifications"
            } else {
                "too many codes for this number"
            };
            let detail = format!("{}: {why}; retry in {wait} s", limited.rule);
            Some((Rejection { reason: RejectReason::RateLimited, detail }, limited.retry_at))
        }
        IssueOutcome::Quarantined { quarantine: q, new } => {
            if *new {
                metrics::counter!(names::QUARANTINES, "rule" => q.rule.clone()).increment(1);
                tracing::warn!(prefix = %q.prefix, rule = %q.rule, detail = %q.detail, until = %q.until, "number prefix quarantined: suspected SMS pumping");
            }
            let detail = format!("prefix +{} quarantined ({}: {})", q.prefix, q.rule, q.detail);
            Some((Rejection { reason: RejectReason::SuspectedPumping, detail }, q.until))
        }
        _ => None,
    }
}

pub use crate::domain::clock::seconds_until;

/// The requests queue's handler.
pub struct RequestHandler(pub Arc<Generator>);

impl Handler for RequestHandler {
    fn handle(&self, message: Inbound) -> BoxFuture<'_, Disposition> {
        Box::pin(self.0.process_request(message))
    }
}

/// The status queue's handler.
pub struct StatusHandler(pub Arc<Generator>);

impl Handler for StatusHandler {
    fn handle(&self, message: Inbound) -> BoxFuture<'_, Disposition> {
        Box::pin(self.0.process_status(message))
    }
}
