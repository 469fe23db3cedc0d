//! The generator: turns requests into stored digests and queued deliveries,
//! keeps each request's status, and answers verifications.
//!
//! It wires the domain, the store and the broker; it alone touches codes.

use crate::broker::{BoxFuture, Broker, BrokerError, Disposition, Handler, Inbound, Topology};
use crate::domain::digest::CodeSeed;
use crate::domain::limits::{Policies, Quarantine};
use crate::domain::phone::redact_numbers;
use crate::domain::{
    Clock, Code, CodeRecord, DecodeError, Delivery, Event, EventKind, KeyRing, Limits, Phone, RawRequest,
    ReceiptMessage, RejectReason, Rejection, Reply, ReplyStatus, RequestStatus, Templates, ValidRequest, VerifyOutcome,
};
use crate::store::{CancelOutcome, IssueOutcome, RequestRecord, Store, StoreError, SweepReport};
use crate::telemetry::names;
use lapin::BasicProperties;
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
    store: Store,
    keys: KeyRing,
    policy: Policy,
    broker: Arc<Broker>,
    clock: Arc<dyn Clock>,
    store_ok: AtomicBool,
}

impl Generator {
    /// A generator over an open store.
    pub fn new(store: Store, keys: KeyRing, policy: Policy, broker: Arc<Broker>, clock: Arc<dyn Clock>) -> Self {
        Self { store, keys, policy, broker, clock, store_ok: AtomicBool::new(true) }
    }

    /// The broker this generator publishes to.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// The store (for flushing at shutdown).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether the last store operation succeeded (readiness).
    pub fn store_ok(&self) -> bool {
        self.store_ok.load(Ordering::SeqCst)
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

    /// Counts and announces (`event.rejected`) a request refused over HTTP.
    pub async fn announce_refusal(
        &self,
        request: &ValidRequest,
        rejection: &Rejection,
        retry_at: Option<OffsetDateTime>,
    ) {
        metrics::counter!(names::REQUESTS, "outcome" => rejection.reason.as_str()).increment(1);
        let now = self.clock.now();
        let wait = retry_at.map(|at| seconds_until(at, now));
        let event = Event::rejected(Some(request.request_id.clone()), request.phone.e164(), rejection, wait, now);
        if let Err(e) = self.publish_event(&event).await {
            tracing::warn!(error = %e, "could not publish event.rejected");
        }
    }

    fn geo_check(&self, request: &ValidRequest) -> Option<Rejection> {
        let blocked = self.policy.guards.geo.check(request.phone.e164()).err()?;
        let detail = if blocked.prefix.is_empty() {
            "the number's country is not allowed".to_owned()
        } else {
            format!("calling code +{} is not allowed", blocked.prefix)
        };
        Some(Rejection { reason: RejectReason::CountryBlocked, detail })
    }

    /// Checks a request the way the queue consumer will (for `POST /v1/otp`).
    pub fn validate(&self, raw: RawRequest) -> Result<ValidRequest, Rejection> {
        raw.validate(&self.policy.limits, &self.policy.templates)
    }

    fn track<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        self.store_ok.store(result.is_ok(), Ordering::SeqCst);
        result
    }

    /// Handles one message from the requests queue.
    pub async fn process_request(&self, message: Inbound) -> Disposition {
        if message.body.len() > MAX_REQUEST_BYTES {
            metrics::counter!(names::REQUESTS, "outcome" => "oversized").increment(1);
            let error = format!("request body of {} bytes exceeds {MAX_REQUEST_BYTES}", message.body.len());
            return Disposition::DeadLetter { reason: "oversized", error };
        }
        let raw = match RawRequest::decode(&message.body) {
            Ok(raw) => raw,
            Err(DecodeError::Malformed(error)) => {
                metrics::counter!(names::REQUESTS, "outcome" => "malformed").increment(1);
                return Disposition::DeadLetter { reason: "malformed_json", error };
            }
            Err(DecodeError::Invalid { request_id, detail }) => {
                let rejection = Rejection { reason: RejectReason::InvalidRequest, detail };
                return self.reject(request_id, "", rejection, &message).await;
            }
        };
        let (request_id, phone) = (raw.request_id.clone(), raw.phone.clone());
        match self.validate(raw) {
            Ok(request) => match self.foreign_owner(&request, &message) {
                Some(owner) => self.forward(owner, &message).await,
                None => self.issue(request, &message).await,
            },
            Err(rejection) => {
                let id = Some(request_id).filter(|id| crate::domain::request::valid_request_id(id));
                self.reject(id, &phone, rejection, &message).await
            }
        }
    }

    /// With shards: the owning shard of a request that came in through the
    /// shared ingress queue (routing key `request`) and is not this shard's.
    fn foreign_owner(&self, request: &ValidRequest, message: &Inbound) -> Option<u16> {
        let topology = self.broker.topology();
        let mine = topology.shard?;
        if message.routing_key != Topology::REQUEST_KEY {
            return None; // Sent to this shard's key: ours.
        }
        let owner = crate::domain::sharding::shard_of(request.phone.e164(), topology.shards);
        (owner != mine).then_some(owner)
    }

    /// Hands a request to its owning shard (`request.<owner>`), confirmed
    /// before the ack; `reply_to` and `correlation_id` go with it.
    async fn forward(&self, owner: u16, message: &Inbound) -> Disposition {
        let mut properties = crate::broker::json_properties();
        if let Some(reply_to) = &message.reply_to {
            properties = properties.with_reply_to(reply_to.as_str().into());
        }
        if let Some(id) = &message.correlation_id {
            properties = properties.with_correlation_id(id.as_str().into());
        }
        let exchange = self.broker.topology().exchange.clone();
        let key = crate::domain::sharding::request_key(owner);
        match self.broker.publish(&exchange, &key, &message.body, properties, true).await {
            Ok(()) => {
                metrics::counter!(names::REQUESTS, "outcome" => "forwarded").increment(1);
                Disposition::Ack
            }
            Err(e) => {
                tracing::warn!(error = %e, owner, "could not forward a request to its shard; will retry");
                Disposition::Retry { after: RETRY_PAUSE }
            }
        }
    }

    async fn reject(
        &self,
        request_id: Option<String>,
        phone: &str,
        rejection: Rejection,
        message: &Inbound,
    ) -> Disposition {
        self.refuse(request_id, phone, rejection, None, message).await
    }

    /// Refuses a request: counted, announced (`event.rejected`), answered.
    /// `retry_at` says when a limited request may be tried again.
    async fn refuse(
        &self,
        request_id: Option<String>,
        phone: &str,
        rejection: Rejection,
        retry_at: Option<OffsetDateTime>,
        message: &Inbound,
    ) -> Disposition {
        let retry_after_secs = retry_at.map(|at| seconds_until(at, self.clock.now()));
        metrics::counter!(names::REQUESTS, "outcome" => rejection.reason.as_str()).increment(1);
        tracing::info!(request_id = request_id.as_deref().unwrap_or("-"), reason = rejection.reason.as_str(), detail = %rejection.detail, "request rejected");
        let event = Event::rejected(request_id.clone(), phone, &rejection, retry_after_secs, self.clock.now());
        if let Err(e) = self.publish_event(&event).await {
            tracing::warn!(error = %e, "could not publish event.rejected; will retry");
            return Disposition::Retry { after: RETRY_PAUSE };
        }
        let reply = Reply {
            request_id,
            status: ReplyStatus::Rejected,
            reason: Some(rejection.reason),
            error: Some(rejection.detail),
            retry_after_secs,
            expires_at: None,
        };
        self.reply(message, &reply).await;
        Disposition::Ack
    }

    async fn issue(&self, request: ValidRequest, message: &Inbound) -> Disposition {
        if let Some(rejection) = self.geo_check(&request) {
            return self.reject(Some(request.request_id), request.phone.e164(), rejection, message).await;
        }
        let now = self.clock.now();
        // A request issued before but never queued (a crash in between) keeps its seed, so its code.
        let prior = match self.track(self.store.request(&request.request_id)) {
            Ok(prior) => prior.filter(|r| !r.delivery_queued && r.status == RequestStatus::Pending),
            Err(e) => return self.store_failed(&e),
        };
        let (seed, key) = match prior.and_then(|r| Some((r.code_seed?, r.code_key_id?))) {
            Some((seed, key_id)) => match self.keys.get(&key_id) {
                Some(key) => (seed, key),
                None => (CodeSeed::random(&mut rand::rng()), self.keys.current()),
            },
            None => (CodeSeed::random(&mut rand::rng()), self.keys.current()),
        };
        let code = key.derive_code(&seed, request.code_length);
        let record = CodeRecord {
            request_id: request.request_id.clone(),
            digest: key.digest(&request.phone, &request.request_id, &code),
            key_id: key.id().to_owned(),
            expires_at: now + request.ttl,
            attempts_left: self.policy.max_attempts,
            seed: Some(seed),
        };
        let outcome = match self.track(self.store.issue(&request, &record, now, &self.policy.guards)) {
            Ok(o) => o,
            Err(e) => return self.store_failed(&e),
        };
        match outcome {
            IssueOutcome::Issued => {}
            IssueOutcome::Conflict => {
                let rejection = Rejection {
                    reason: RejectReason::InvalidRequest,
                    detail: "request_id was already used with another phone or other parameters".into(),
                };
                return self.reject(Some(request.request_id), request.phone.e164(), rejection, message).await;
            }
            IssueOutcome::Duplicate(existing) => {
                return self.duplicate(&request, &existing, message).await;
            }
            IssueOutcome::InProgress => return Disposition::Retry { after: RETRY_PAUSE },
            refused @ (IssueOutcome::RateLimited(_) | IssueOutcome::Quarantined { .. }) => {
                let (rejection, retry_at) = limit_rejection(&refused, now).expect("a limit outcome");
                return self
                    .refuse(Some(request.request_id), request.phone.e164(), rejection, Some(retry_at), message)
                    .await;
            }
        }
        // The digest is durable before the code leaves the process.
        if let Err(e) = self.track(self.store.flush().await) {
            return self.store_failed(&e);
        }
        let text = self
            .policy
            .templates
            .render(&request.template, &request.locale, &code, request.ttl, &self.policy.app_name)
            .expect("validated requests name existing templates");
        let delivery = Delivery {
            delivery_id: uuid::Uuid::new_v4().to_string(),
            request_id: request.request_id.clone(),
            phone: request.phone.e164().to_owned(),
            text,
            code: code.expose().to_owned(),
            expires_at: record.expires_at,
            requested_at: now,
        };
        drop(code);
        if let Err(e) = self.broker.publish_to_exchange(Topology::DELIVERY_KEY, &delivery, true).await {
            tracing::warn!(request_id = %request.request_id, error = %e, "could not queue the delivery; will retry");
            return Disposition::Retry { after: RETRY_PAUSE };
        }
        // Not flushed on its own (the next group commit or sled's periodic
        // flush carries it): if it is lost in a crash, a re-published request
        // is issued again from its seed — the same code, one extra SMS.
        if let Err(e) = self.track(self.store.mark_queued(&request.request_id)) {
            return self.store_failed(&e);
        }
        metrics::counter!(names::CODES_ISSUED).increment(1);
        metrics::counter!(names::REQUESTS, "outcome" => "accepted").increment(1);
        tracing::info!(request_id = %request.request_id, phone = %request.phone, expires_at = %record.expires_at, "code issued");
        self.accepted(&request.request_id, request.phone.e164(), record.expires_at, message).await
    }

    async fn duplicate(&self, request: &ValidRequest, existing: &RequestRecord, message: &Inbound) -> Disposition {
        metrics::counter!(names::REQUESTS, "outcome" => "duplicate").increment(1);
        tracing::info!(request_id = %request.request_id, redelivered = message.redelivered, "duplicate request: no new code");
        if message.redelivered {
            // We may have died before announcing it: announce again (events are at-least-once).
            return self.accepted(&existing.request_id, &existing.phone, existing.expires_at, message).await;
        }
        let reply = Reply::accepted(&existing.request_id, existing.expires_at);
        self.reply(message, &reply).await;
        Disposition::Ack
    }

    async fn accepted(
        &self,
        request_id: &str,
        phone: &str,
        expires_at: OffsetDateTime,
        message: &Inbound,
    ) -> Disposition {
        let mut event = Event::new(EventKind::Accepted, Some(request_id.to_owned()), phone, self.clock.now());
        event.expires_at = Some(expires_at);
        if let Err(e) = self.publish_event(&event).await {
            tracing::warn!(request_id, error = %e, "could not publish event.accepted; will retry");
            return Disposition::Retry { after: RETRY_PAUSE };
        }
        let reply = Reply::accepted(request_id, expires_at);
        self.reply(message, &reply).await;
        Disposition::Ack
    }

    fn store_failed(&self, error: &StoreError) -> Disposition {
        tracing::error!(error = %error, "store failure; the request will be retried");
        Disposition::Retry { after: RETRY_PAUSE }
    }

    async fn publish_event(&self, event: &Event) -> Result<(), BrokerError> {
        self.broker.publish_to_exchange(&event.status.routing_key(), event, false).await
    }

    async fn reply(&self, message: &Inbound, reply: &Reply) {
        let Some(reply_to) = message.reply_to.as_deref() else {
            return;
        };
        let mut properties = crate::broker::json_properties();
        if let Some(id) = &message.correlation_id {
            properties = properties.with_correlation_id(id.as_str().into());
        }
        let body = serde_json::to_vec(reply).expect("replies serialize");
        // A reply is a courtesy to a waiting producer; the event is the record.
        if let Err(e) = self.broker.publish("", reply_to, &body, properties, false).await {
            tracing::warn!(error = %e, "could not send the reply");
        }
    }

    /// Handles one message of the status queue: a sender's outcome event or a
    /// carrier's delivery receipt.
    pub async fn process_status(&self, message: Inbound) -> Disposition {
        if message.routing_key == Topology::RECEIPT_KEY {
            return self.process_receipt(message).await;
        }
        let event: Event = match serde_json::from_slice(&message.body) {
            Ok(e) => e,
            Err(e) => {
                return Disposition::DeadLetter { reason: "malformed_event", error: redact_numbers(&e.to_string()) };
            }
        };
        let Some(request_id) = event.request_id.as_deref() else {
            return Disposition::Ack;
        };
        let applied = self.store.apply_event(
            request_id,
            event.status,
            event.carrier.as_deref(),
            event.carrier_message_id.as_deref(),
            event.error.as_deref(),
            event.at,
        );
        if let Err(e) = self.track(applied) {
            return self.store_failed(&e);
        }
        // Acked means kept: the new status is on disk before the ack.
        match self.track(self.store.flush().await) {
            Ok(()) => Disposition::Ack,
            Err(e) => self.store_failed(&e),
        }
    }

    /// Resolves a receipt to its request, records it and publishes
    /// `event.delivered` / `event.undelivered`.
    async fn process_receipt(&self, message: Inbound) -> Disposition {
        let receipt: ReceiptMessage = match serde_json::from_slice(&message.body) {
            Ok(r) => r,
            Err(e) => {
                return Disposition::DeadLetter { reason: "malformed_receipt", error: redact_numbers(&e.to_string()) };
            }
        };
        let request_id = match self.track(self.store.request_for_message(&receipt.carrier, &receipt.carrier_message_id))
        {
            Ok(Some(id)) => id,
            Ok(None) if !message.redelivered => {
                // The receipt may overtake the `event.sent` that records the id: try once more.
                return Disposition::Retry { after: RETRY_PAUSE };
            }
            Ok(None) => {
                tracing::warn!(carrier = %receipt.carrier, "receipt for an unknown message; dropped");
                return Disposition::Ack;
            }
            Err(e) => return self.store_failed(&e),
        };
        let kind = if receipt.delivered { EventKind::Delivered } else { EventKind::Undelivered };
        let applied = self.store.apply_event(
            &request_id,
            kind,
            Some(&receipt.carrier),
            Some(&receipt.carrier_message_id),
            receipt.error.as_deref(),
            receipt.at,
        );
        if let Err(e) = self.track(applied) {
            return self.store_failed(&e);
        }
        if let Err(e) = self.track(self.store.flush().await) {
            return self.store_failed(&e);
        }
        let phone = match self.track(self.store.request(&request_id)) {
            Ok(record) => record.map(|r| r.phone).unwrap_or_default(),
            Err(e) => return self.store_failed(&e),
        };
        let mut event = Event::new(kind, Some(request_id), &phone, receipt.at);
        event.carrier = Some(receipt.carrier);
        event.carrier_message_id = Some(receipt.carrier_message_id);
        event.error = receipt.error;
        match self.publish_event(&event).await {
            Ok(()) => Disposition::Ack,
            Err(e) => {
                tracing::warn!(error = %e, "could not publish a receipt event; will retry");
                Disposition::Retry { after: RETRY_PAUSE }
            }
        }
    }

    /// Counts an approved code against the carrier that delivered it, so
    /// dashboards can show conversion (approved / sent) per carrier.
    fn count_conversion(&self, request_id: &str) {
        let carrier = match self.store.request(request_id) {
            Ok(Some(record)) => record.carrier.unwrap_or_else(|| "unknown".to_owned()),
            _ => "unknown".to_owned(),
        };
        metrics::counter!(names::CONVERSIONS, "carrier" => carrier).increment(1);
    }

    /// Verifies `code` for `phone`: approved at most once, attempts counted,
    /// expiry enforced. Publishes `event.verified` / `event.expired`.
    pub async fn verify(&self, phone: &Phone, code: &Code) -> Result<VerifyOutcome, GeneratorError> {
        let now = self.clock.now();
        let (outcome, changed, locked_until) =
            self.track(self.store.verify(phone, code, &self.keys, now, &self.policy.guards))?;
        if changed {
            // "Approved" must not come back after a crash: used means used.
            self.track(self.store.flush().await)?;
        }
        metrics::counter!(names::VERIFICATIONS, "outcome" => outcome.label()).increment(1);
        if let VerifyOutcome::Approved { request_id } = &outcome {
            self.count_conversion(request_id);
        }
        tracing::info!(phone = %phone, outcome = outcome.label(), "verification");
        if let Some(until) = locked_until {
            self.announce_lockout(phone, &outcome, until, now);
        }
        let event = match &outcome {
            VerifyOutcome::Approved { request_id } => Some((EventKind::Verified, request_id, None)),
            VerifyOutcome::Expired { request_id } => Some((EventKind::Expired, request_id, None)),
            VerifyOutcome::MaxAttemptsReached { request_id } if changed => {
                Some((EventKind::Expired, request_id, Some("max_attempts_reached".to_owned())))
            }
            _ => None,
        };
        if let Some((kind, request_id, error)) = event {
            let mut event = Event::new(kind, Some(request_id.clone()), phone.e164(), now);
            event.error = error;
            let broker = self.broker.clone();
            // Off the request path: the answer does not wait for the event.
            tokio::spawn(async move {
                if let Err(e) = broker.publish_to_exchange(&event.status.routing_key(), &event, false).await {
                    tracing::warn!(error = %e, "could not publish a verification event");
                }
            });
        }
        Ok(outcome)
    }

    /// This attempt locked the number: say so in an `event.rejected`
    /// (reason `rate_limited`, rule `verify_lockout`) with the time to retry.
    fn announce_lockout(&self, phone: &Phone, outcome: &VerifyOutcome, until: OffsetDateTime, now: OffsetDateTime) {
        metrics::counter!(names::VERIFY_LOCKOUTS).increment(1);
        tracing::warn!(phone = %phone, until = %until, "too many failed verifications: number locked");
        let request_id = match outcome {
            VerifyOutcome::Invalid { .. } | VerifyOutcome::NotFound | VerifyOutcome::Locked { .. } => None,
            VerifyOutcome::Approved { request_id }
            | VerifyOutcome::Expired { request_id }
            | VerifyOutcome::MaxAttemptsReached { request_id } => Some(request_id.clone()),
        };
        let wait = seconds_until(until, now);
        let rejection = Rejection {
            reason: RejectReason::RateLimited,
            detail: format!("verify_lockout: too many failed verifications for this number; retry in {wait} s"),
        };
        let event = Event::rejected(request_id, phone.e164(), &rejection, Some(wait), now);
        let broker = self.broker.clone();
        tokio::spawn(async move {
            if let Err(e) = broker.publish_to_exchange(&event.status.routing_key(), &event, false).await {
                tracing::warn!(error = %e, "could not publish the lockout event");
            }
        });
    }

    /// Cancels a request's code and publishes `event.canceled`.
    pub async fn cancel(&self, request_id: &str) -> Result<CancelOutcome, GeneratorError> {
        let now = self.clock.now();
        let outcome = self.track(self.store.cancel(request_id, now))?;
        if let CancelOutcome::Canceled(record) = &outcome {
            self.track(self.store.flush().await)?;
            tracing::info!(request_id, phone = %crate::domain::phone::mask(&record.phone), "code canceled");
            let event = Event::new(EventKind::Canceled, Some(request_id.to_owned()), &record.phone, now);
            if let Err(e) = self.publish_event(&event).await {
                // The cancel itself is durable; only the announcement is lost.
                tracing::warn!(request_id, error = %e, "could not publish event.canceled");
            }
        }
        Ok(outcome)
    }

    /// Runs the store's sweeper once and announces codes that expired unused.
    pub async fn sweep(&self, retention: time::Duration) -> Result<SweepReport, GeneratorError> {
        let now = self.clock.now();
        let report = self.track(self.store.sweep(now, retention))?;
        let limits = self.track(self.store.sweep_limits(now, &self.policy.guards))?;
        if limits > 0 {
            tracing::debug!(limits, "sweeper removed stale limit records");
        }
        for (request_id, phone) in &report.expired {
            let mut event = Event::new(EventKind::Expired, Some(request_id.clone()), phone, now);
            event.error = Some("not verified in time".into());
            if let Err(e) = self.publish_event(&event).await {
                tracing::warn!(error = %e, "could not publish event.expired");
            }
        }
        if report != SweepReport::default() {
            tracing::info!(expired = report.expired.len(), requests = report.requests, "sweeper removed stale records");
        }
        Ok(report)
    }

    /// The current time on this generator's clock.
    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// The quarantines in force.
    pub fn quarantines(&self) -> Result<Vec<Quarantine>, GeneratorError> {
        Ok(self.track(self.store.quarantines(self.clock.now()))?)
    }

    /// Lifts a quarantine by an operator's decision.
    pub fn lift_quarantine(&self, prefix: &str) -> Result<bool, GeneratorError> {
        let lifted = self.track(self.store.lift_quarantine(prefix, self.clock.now()))?;
        tracing::warn!(prefix, lifted, "quarantine lifted by an operator");
        Ok(lifted)
    }

    /// The status record of a request.
    pub fn request(&self, request_id: &str) -> Result<Option<RequestRecord>, GeneratorError> {
        Ok(self.track(self.store.request(request_id))?)
    }

    /// Publishes a validated request to the requests queue (for `POST /v1/otp`).
    pub async fn submit(&self, raw: &RawRequest, phone: &Phone) -> Result<(), BrokerError> {
        let properties: BasicProperties =
            crate::broker::json_properties().with_timestamp(self.clock.now().unix_timestamp() as u64);
        let body = serde_json::to_vec(raw).expect("requests serialize");
        let topology = self.broker.topology();
        // Straight to the owning shard (no forwarding hop) when sharded.
        let key = topology.request_key_for(phone.e164());
        self.broker.publish(&topology.exchange, &key, &body, properties, true).await
    }
}

/// The rejection (and when to retry) for a limit outcome of `issue`; counts
/// a quarantine that this request started.
fn limit_rejection(outcome: &IssueOutcome, now: OffsetDateTime) -> Option<(Rejection, OffsetDateTime)> {
    match outcome {
        IssueOutcome::RateLimited(limited) => {
            let wait = seconds_until(limited.retry_at, now);
            let detail = format!("{}: too many codes for this number; retry in {wait} s", limited.rule);
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

/// Whole seconds from `now` until `at`, rounded up, at least 1.
pub fn seconds_until(at: OffsetDateTime, now: OffsetDateTime) -> u64 {
    let secs = (at - now).as_seconds_f64().ceil();
    if secs.is_finite() && secs >= 1.0 { secs as u64 } else { 1 }
}

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
