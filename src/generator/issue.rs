//! Requests in, deliveries out: decode and validate a request, forward it to
//! its shard, refuse it, or issue its code (through the store's writer) and
//! queue its delivery; answer the producer and announce the outcome.

use super::{Generator, RETRY_PAUSE, limit_rejection, seconds_until};
use crate::broker::{BrokerError, Disposition, Inbound, Topology};
use crate::domain::phone::Phone;
use crate::domain::phone::Redacted;
use crate::domain::{
    DecodeError, Delivery, Event, EventKind, RawRequest, RejectReason, Rejection, Reply, ReplyStatus, ValidRequest,
};
use crate::store::{IssueOutcome, Issued, RequestRecord, Writer};
use crate::telemetry::names;
use time::OffsetDateTime;

/// An issued request whose delivery is not yet confirmed. Dropped without
/// [`InFlight::queued`] (the publish failed, or the task was cancelled), it
/// tells the writer, so copies waiting for it try again instead of waiting.
struct InFlight<'a> {
    writer: &'a Writer,
    request_id: &'a str,
    settled: bool,
}

impl<'a> InFlight<'a> {
    fn new(writer: &'a Writer, request_id: &'a str) -> Self {
        Self { writer, request_id, settled: false }
    }

    fn queued(mut self) {
        self.settled = true;
        self.writer.queued(self.request_id);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.writer.release(self.request_id);
        }
    }
}

impl Generator {
    /// Handles one message from the requests queue.
    pub async fn process_request(&self, message: Inbound) -> Disposition {
        if message.body.len() > super::MAX_REQUEST_BYTES {
            metrics::counter!(names::REQUESTS, "outcome" => "oversized").increment(1);
            let error = format!("request body of {} bytes exceeds {}", message.body.len(), super::MAX_REQUEST_BYTES);
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
                return self.refuse(request_id, "", rejection, None, &message).await;
            }
        };
        let (request_id, phone) = (raw.request_id.clone(), raw.phone.clone());
        match self.validate(raw) {
            Ok(request) => {
                // The application of a scoped API key, vouched for by the seal.
                let request = ValidRequest { owner: message.owner.clone(), ..request };
                match self.foreign_owner(&request, &message) {
                    Some(shard) => self.forward(shard, message).await,
                    None => self.issue(request, &message).await,
                }
            }
            Err(rejection) => {
                let id = Some(request_id).filter(|id| crate::domain::request::valid_request_id(id));
                self.refuse(id, &phone, rejection, None, &message).await
            }
        }
    }

    /// With shards: the owning shard of a request that came in through the
    /// shared ingress queue (routing key `request`) and is not this shard's.
    fn foreign_owner(&self, request: &ValidRequest, message: &Inbound) -> Option<u16> {
        let mine = self.topology.shard?;
        if message.routing_key != Topology::REQUEST_KEY {
            return None; // Sent to this shard's key: ours.
        }
        let owner = crate::domain::sharding::shard_of(request.phone.e164(), self.topology.shards);
        (owner != mine).then_some(owner)
    }

    /// Hands a request to its owning shard (`request.<owner>`), confirmed
    /// before the ack; `reply_to` and `correlation_id` go with it.
    async fn forward(&self, owner: u16, message: Inbound) -> Disposition {
        let key = crate::domain::sharding::request_key(owner);
        match self.outbox.forward(key, message).await {
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
        tracing::info!(request_id = %Redacted(request_id.as_deref().unwrap_or("-")), reason = rejection.reason.as_str(), detail = %rejection.detail, "request rejected");
        let event = Event::rejected(request_id.clone(), phone, &rejection, retry_after_secs, self.clock.now());
        if let Err(e) = self.outbox.announce(event).await {
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
        self.reply(message, reply).await;
        Disposition::Ack
    }

    async fn issue(&self, request: ValidRequest, message: &Inbound) -> Disposition {
        let phone = request.phone.e164().to_owned();
        let id = Some(request.request_id.clone());
        let now = self.clock.now();
        let outcome = match self.track(self.writer.issue(request.clone(), now).await) {
            Ok(outcome) => outcome,
            Err(e) => return self.store_failed(&e),
        };
        let issued = match outcome {
            IssueOutcome::Issued(issued) => issued,
            IssueOutcome::Conflict => {
                let rejection = Rejection {
                    reason: RejectReason::InvalidRequest,
                    detail: "request_id was already used with another phone or other parameters".into(),
                };
                return self.refuse(id, &phone, rejection, None, message).await;
            }
            IssueOutcome::Duplicate(existing) => return self.duplicate(&existing, message).await,
            IssueOutcome::InProgress => return Disposition::Retry { after: RETRY_PAUSE },
            IssueOutcome::CountryBlocked(blocked) => {
                let rejection =
                    Rejection { reason: RejectReason::CountryBlocked, detail: crate::store::geo_detail(&blocked) };
                return self.refuse(id, &phone, rejection, None, message).await;
            }
            refused @ (IssueOutcome::RateLimited(_) | IssueOutcome::Quarantined { .. }) => {
                let (rejection, retry_at) = limit_rejection(&refused, now).expect("a limit outcome");
                return self.refuse(id, &phone, rejection, Some(retry_at), message).await;
            }
        };
        self.queue_delivery(&request, issued, now, message).await
    }

    /// Queues the delivery of a code that is durable in the store, and
    /// announces `event.accepted` in the same round trip; acked once both are
    /// confirmed.
    async fn queue_delivery(
        &self,
        request: &ValidRequest,
        issued: Issued,
        now: OffsetDateTime,
        message: &Inbound,
    ) -> Disposition {
        let in_flight = InFlight::new(&self.writer, &request.request_id);
        let delivery = self.delivery(request, &issued, now);
        drop(issued.code);
        let mut event = Event::new(EventKind::Accepted, Some(request.request_id.clone()), request.phone.e164(), now);
        event.expires_at = Some(issued.expires_at);
        let (delivered, announced) = tokio::join!(self.outbox.deliver(delivery), self.outbox.announce(event));
        if let Err(e) = delivered {
            tracing::warn!(request_id = %Redacted(&request.request_id), error = %e, "could not queue the delivery; will retry");
            return Disposition::Retry { after: RETRY_PAUSE };
        }
        // Not flushed on its own: if it is lost in a crash, a re-published
        // request is issued again from its seed — the same code, one more SMS.
        in_flight.queued();
        metrics::counter!(names::CODES_ISSUED).increment(1);
        metrics::counter!(names::REQUESTS, "outcome" => "accepted").increment(1);
        tracing::info!(request_id = %Redacted(&request.request_id), phone = %request.phone, expires_at = %issued.expires_at, reissued = issued.reissued, "code issued");
        if let Err(e) = announced {
            tracing::warn!(request_id = %Redacted(&request.request_id), error = %e, "could not publish event.accepted; will retry");
            return Disposition::Retry { after: RETRY_PAUSE };
        }
        self.reply(message, Reply::accepted(&request.request_id, issued.expires_at)).await;
        Disposition::Ack
    }

    fn delivery(&self, request: &ValidRequest, issued: &Issued, now: OffsetDateTime) -> Delivery {
        let text = self
            .policy
            .templates
            .render(&request.template, &request.locale, &issued.code, request.ttl, &self.policy.app_name)
            .expect("validated requests name existing templates");
        Delivery {
            delivery_id: uuid::Uuid::new_v4().to_string(),
            request_id: request.request_id.clone(),
            phone: request.phone.e164().to_owned(),
            text,
            code: issued.code.expose().to_owned(),
            expires_at: issued.expires_at,
            requested_at: now,
        }
    }

    async fn duplicate(&self, existing: &RequestRecord, message: &Inbound) -> Disposition {
        metrics::counter!(names::REQUESTS, "outcome" => "duplicate").increment(1);
        tracing::info!(request_id = %Redacted(&existing.request_id), redelivered = message.redelivered, "duplicate request: no new code");
        if message.redelivered {
            // We may have died before announcing it: announce again (events are at-least-once).
            let mut event =
                Event::new(EventKind::Accepted, Some(existing.request_id.clone()), &existing.phone, self.now());
            event.expires_at = Some(existing.expires_at);
            if let Err(e) = self.outbox.announce(event).await {
                tracing::warn!(request_id = %Redacted(&existing.request_id), error = %e, "could not publish event.accepted; will retry");
                return Disposition::Retry { after: RETRY_PAUSE };
            }
        }
        self.reply(message, Reply::accepted(&existing.request_id, existing.expires_at)).await;
        Disposition::Ack
    }

    /// A reply is a courtesy to a waiting producer; the event is the record.
    async fn reply(&self, message: &Inbound, reply: Reply) {
        let Some(reply_to) = message.reply_to.clone() else {
            return;
        };
        if let Err(e) = self.outbox.reply(reply_to, message.correlation_id.clone(), reply).await {
            tracing::warn!(error = %e, "could not send the reply");
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
        if let Err(e) = self.outbox.announce(event).await {
            tracing::warn!(error = %e, "could not publish event.rejected");
        }
    }

    /// Publishes a validated request to the requests queue (for `POST /v1/otp`):
    /// straight to the owning shard (no forwarding hop) when sharded.
    pub async fn submit(&self, raw: &RawRequest, phone: &Phone, owner: Option<&str>) -> Result<(), BrokerError> {
        let submitted = super::outbox::Submitted {
            routing_key: self.topology.request_key_for(phone.e164()),
            owner: owner.map(str::to_owned),
            body: serde_json::to_vec(raw).expect("requests serialize"),
            timestamp: self.clock.now().unix_timestamp() as u64,
        };
        self.outbox.submit(submitted).await
    }
}
