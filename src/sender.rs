//! The sender: takes deliveries off the queue and pushes them to carriers.
//!
//! For each delivery it plans a carrier order from the routes (weighted first
//! choice, then failover), retries each carrier with exponential backoff and
//! jitter (honouring `Retry-After`), skips carriers whose circuit is open,
//! respects each carrier's concurrency cap and send rate, and never sends
//! after the code has expired. It wires carriers and the broker; it never
//! sees the store.

use crate::broker::{BoxFuture, Broker, Disposition, Handler, Inbound};
use crate::carriers::{self, Accepted, Carrier, CarrierConfigError, CarrierError, Sms};
use crate::config::{BreakerConfig, CarrierLimits, Config, RetryConfig};
use crate::domain::phone::Redacted;
use crate::domain::{Breaker, Clock, Delivery, Event, EventKind, Routes, RoutingError};
use crate::telemetry::names;
use backon::Retryable;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::Semaphore;

/// Pause before a delivery whose outcome could not be announced is requeued.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Why a sender could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    /// A carrier's configuration is wrong or missing.
    #[error(transparent)]
    Carrier(#[from] CarrierConfigError),
    /// The routes are wrong.
    #[error("routing: {0}")]
    Routing(#[from] RoutingError),
}

/// Every carrier the routes name, by name.
pub type CarriersByName = BTreeMap<String, Arc<dyn Carrier>>;

/// The routes and every carrier they name, built from `config` (no I/O):
/// what `--check` and a sender's start-up verify first.
pub fn routed_carriers(config: &Config) -> Result<(Routes, CarriersByName), SenderError> {
    let route =
        |entries: &[crate::config::RouteEntry]| entries.iter().map(|e| (e.carrier().to_owned(), e.weight())).collect();
    let routes = Routes::new(
        route(&config.routing.default),
        config.routing.countries.iter().map(|(code, entries)| (code.clone(), route(entries))).collect(),
    )?;
    let mut carriers = BTreeMap::new();
    for name in routes.carriers() {
        carriers.insert(name.to_owned(), carriers::build(name, config)?);
    }
    Ok((routes, carriers))
}

/// One carrier with its breaker, concurrency cap and rate limit.
struct Slot {
    carrier: Arc<dyn Carrier>,
    breaker: Mutex<Breaker>,
    in_flight: Semaphore,
    rate: Option<DefaultDirectRateLimiter>,
}

impl Slot {
    fn new(carrier: Arc<dyn Carrier>, limits: CarrierLimits, breaker: BreakerConfig) -> Self {
        let rate = NonZeroU32::new(limits.rate_per_sec).map(|per_sec| {
            let burst = NonZeroU32::new(limits.burst).unwrap_or(NonZeroU32::MIN);
            RateLimiter::direct(Quota::per_second(per_sec).allow_burst(burst))
        });
        metrics::gauge!(names::CIRCUIT_OPEN, "carrier" => carrier.name()).set(0.0);
        Self {
            carrier,
            breaker: Mutex::new(Breaker::new(breaker.failure_threshold, Duration::from_millis(breaker.open_ms))),
            in_flight: Semaphore::new(limits.concurrency.max(1) as usize),
            rate,
        }
    }

    fn name(&self) -> &'static str {
        self.carrier.name()
    }

    fn allow(&self) -> bool {
        self.breaker.lock().expect("breaker lock").allow(Instant::now())
    }

    fn is_open(&self) -> bool {
        self.breaker.lock().expect("breaker lock").is_open()
    }

    /// Feeds an attempt's result to the breaker. Only the carrier's own
    /// failures count (timeouts, 5xx, throttling), not a refused number.
    fn record(&self, result: &Result<Accepted, CarrierError>) {
        let open = {
            let mut breaker = self.breaker.lock().expect("breaker lock");
            match result {
                Ok(_) => breaker.on_success(),
                Err(CarrierError::Retryable { .. }) => breaker.on_failure(Instant::now()),
                Err(CarrierError::Permanent { .. }) => {}
            }
            breaker.is_open()
        };
        metrics::gauge!(names::CIRCUIT_OPEN, "carrier" => self.name()).set(if open { 1.0 } else { 0.0 });
    }

    /// One call to the carrier, within its concurrency cap and send rate.
    async fn attempt(&self, sms: &Sms) -> Result<Accepted, CarrierError> {
        let _permit = self.in_flight.acquire().await.expect("the semaphore is never closed");
        if let Some(rate) = &self.rate {
            rate.until_ready().await;
        }
        let started = Instant::now();
        let result = self.carrier.send(sms).await;
        metrics::histogram!(names::CARRIER_DURATION, "carrier" => self.name()).record(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(_) => "accepted",
            Err(e) => e.label(),
        };
        metrics::counter!(names::CARRIER_ATTEMPTS, "carrier" => self.name(), "outcome" => outcome).increment(1);
        self.record(&result);
        result
    }
}

/// A sender worker's state.
pub struct Sender {
    slots: BTreeMap<String, Slot>,
    routes: Routes,
    broker: Arc<Broker>,
    clock: Arc<dyn Clock>,
    retry: RetryConfig,
}

impl Sender {
    /// Builds every carrier the routes name, with its limits and breaker.
    pub fn from_config(config: &Config, broker: Arc<Broker>, clock: Arc<dyn Clock>) -> Result<Self, SenderError> {
        let (routes, carriers) = routed_carriers(config)?;
        let slots = carriers
            .into_iter()
            .map(|(name, carrier)| {
                let limits = config.sender.limits.get(&name).copied().unwrap_or_default();
                (name, Slot::new(carrier, limits, config.sender.breaker))
            })
            .collect();
        Ok(Self { slots, routes, broker, clock, retry: config.sender.retry.clone() })
    }

    /// The carriers this sender uses, by name.
    pub fn carrier_names(&self) -> Vec<&str> {
        self.slots.keys().map(String::as_str).collect()
    }

    /// Handles one message of the deliveries queue: one delivery (a JSON
    /// object) or several that the generator coalesced (a JSON array), sent
    /// concurrently. A batch is acked once every delivery in it is settled;
    /// one that failed for good is dead-lettered alone; if any outcome could
    /// not be announced the whole batch comes back (its other codes may then
    /// be sent twice: duplicates stay bounded by the batch).
    pub async fn process_message(self: &Arc<Self>, message: Inbound) -> Disposition {
        let batch = match decode_deliveries(&message.body) {
            Ok(Deliveries::One(delivery)) => return self.process_delivery(*delivery).await,
            Ok(Deliveries::Many(batch)) => batch,
            Err(e) => {
                let error = crate::domain::phone::redact_numbers(&e.to_string());
                return Disposition::DeadLetter { reason: "malformed_delivery", error };
            }
        };
        let mut sending = tokio::task::JoinSet::new();
        for delivery in batch {
            let sender = self.clone();
            sending.spawn(async move {
                let disposition = sender.process_delivery(delivery.clone()).await;
                (delivery, disposition)
            });
        }
        let mut dead = Vec::new();
        let mut settled = Disposition::Ack;
        while let Some(joined) = sending.join_next().await {
            match joined {
                Ok((_, Disposition::Ack)) => {}
                Ok((delivery, Disposition::DeadLetter { reason, error })) => dead.push((delivery, reason, error)),
                Ok((_, retry @ Disposition::Retry { .. })) => settled = retry,
                Err(e) => {
                    tracing::error!(error = %e, "a delivery task failed; the batch will be retried");
                    settled = Disposition::Retry { after: RETRY_PAUSE };
                }
            }
        }
        if settled != Disposition::Ack {
            return settled;
        }
        for (delivery, reason, error) in dead {
            let body = serde_json::to_vec(&delivery).expect("deliveries serialize");
            if let Err(e) = self.broker.dead_letter(&message.routing_key, &body, reason, &error).await {
                tracing::warn!(error = %e, "could not dead-letter a delivery of a batch; the batch will be retried");
                return Disposition::Retry { after: RETRY_PAUSE };
            }
        }
        Disposition::Ack
    }

    /// Handles one delivery.
    pub async fn process_delivery(&self, delivery: Delivery) -> Disposition {
        let sms = Sms {
            to: delivery.phone.clone(),
            text: delivery.text.clone(),
            code: delivery.code.clone(),
            request_id: delivery.request_id.clone(),
            delivery_id: delivery.delivery_id.clone(),
        };
        let plan = self.routes.plan(&delivery.phone, &mut rand::rng());
        let mut last: Option<(&str, CarrierError)> = None;
        for (index, name) in plan.iter().enumerate() {
            if self.clock.now() >= delivery.expires_at {
                break;
            }
            let slot = &self.slots[*name];
            if !slot.allow() {
                tracing::info!(request_id = %Redacted(&delivery.request_id), carrier = name, "circuit open; skipping the carrier");
                last.get_or_insert((
                    name,
                    CarrierError::Retryable { reason: "circuit open".into(), retry_after: None },
                ));
                continue;
            }
            if index > 0 {
                metrics::counter!(names::FAILOVERS).increment(1);
                tracing::info!(request_id = %Redacted(&delivery.request_id), carrier = name, "failing over");
            }
            match self.send_with_retries(slot, &sms, delivery.expires_at).await {
                Ok(accepted) => return self.sent(&delivery, slot.name(), accepted).await,
                Err(e) => last = Some((name, e)),
            }
        }
        let carrier = last.as_ref().map_or(plan[0], |(name, _)| name);
        match last {
            _ if self.clock.now() >= delivery.expires_at => self.expired(&delivery, carrier).await,
            Some((_, e)) => self.failed(&delivery, carrier, e).await,
            None => self.expired(&delivery, carrier).await,
        }
    }

    /// Tries one carrier until it accepts, fails for good, opens its circuit,
    /// runs out of retries, or the code expires.
    async fn send_with_retries(
        &self,
        slot: &Slot,
        sms: &Sms,
        expires_at: OffsetDateTime,
    ) -> Result<Accepted, CarrierError> {
        let clock = &self.clock;
        let attempt = || async {
            // Checked before every attempt: a retry never sends an expired code.
            if clock.now() >= expires_at {
                return Err(CarrierError::Permanent { reason: "expired".into() });
            }
            slot.attempt(sms).await
        };
        attempt
            .retry(self.retry.backoff())
            .sleep(tokio::time::sleep)
            .when(|e: &CarrierError| e.is_retryable() && clock.now() < expires_at && !slot.is_open())
            .adjust(|e, planned| {
                // Honour the carrier's Retry-After, but never beyond the
                // configured retries nor past the code's expiry.
                let delay = match (e, planned) {
                    (CarrierError::Retryable { retry_after: Some(after), .. }, Some(_)) => *after,
                    (_, planned) => planned?,
                };
                (expires_at - clock.now() > delay).then_some(delay)
            })
            .notify(|e, delay| {
                tracing::info!(request_id = %Redacted(&sms.request_id), carrier = slot.name(), error = %e, retry_in = ?delay, "carrier attempt failed; retrying");
            })
            .await
    }

    async fn sent(&self, delivery: &Delivery, carrier: &'static str, accepted: Accepted) -> Disposition {
        let now = self.clock.now();
        let latency = (now - delivery.requested_at).as_seconds_f64().max(0.0);
        metrics::histogram!(names::DELIVERY_LATENCY).record(latency);
        metrics::counter!(names::DELIVERIES, "carrier" => carrier, "outcome" => "sent").increment(1);
        tracing::info!(request_id = %Redacted(&delivery.request_id), carrier, "SMS accepted by the carrier");
        let mut event = Event::new(EventKind::Sent, Some(delivery.request_id.clone()), &delivery.phone, now);
        event.carrier = Some(carrier.to_owned());
        event.carrier_message_id = accepted.carrier_message_id;
        self.announce(&event, Disposition::Ack).await
    }

    async fn expired(&self, delivery: &Delivery, carrier: &str) -> Disposition {
        metrics::counter!(names::DELIVERIES, "carrier" => carrier.to_owned(), "outcome" => "expired").increment(1);
        tracing::warn!(request_id = %Redacted(&delivery.request_id), "code expired before any carrier took it; dropped");
        let mut event =
            Event::new(EventKind::Failed, Some(delivery.request_id.clone()), &delivery.phone, self.clock.now());
        event.error = Some("expired".into());
        self.announce(&event, Disposition::Ack).await
    }

    async fn failed(&self, delivery: &Delivery, carrier: &str, error: CarrierError) -> Disposition {
        metrics::counter!(names::DELIVERIES, "carrier" => carrier.to_owned(), "outcome" => "failed").increment(1);
        tracing::warn!(request_id = %Redacted(&delivery.request_id), carrier, error = %error, "no carrier accepted the SMS");
        let mut event =
            Event::new(EventKind::Failed, Some(delivery.request_id.clone()), &delivery.phone, self.clock.now());
        event.carrier = Some(carrier.to_owned());
        event.error = Some(error.to_string());
        let dead = Disposition::DeadLetter { reason: "carrier_failed", error: format!("{carrier}: {error}") };
        self.announce(&event, dead).await
    }

    /// Publishes the outcome, then settles with `then`. If the outcome cannot
    /// be announced the delivery is requeued (at-least-once: the carrier may
    /// see it twice, with the same code).
    async fn announce(&self, event: &Event, then: Disposition) -> Disposition {
        let publish = || async { self.broker.publish_routed_json(&event.status.routing_key(), event, false).await };
        let policy = backon::ExponentialBuilder::default().with_min_delay(Duration::from_millis(50)).with_max_times(3);
        match publish.retry(policy).sleep(tokio::time::sleep).await {
            Ok(()) => then,
            Err(e) => {
                tracing::warn!(error = %e, "could not publish the delivery outcome; requeueing");
                Disposition::Retry { after: RETRY_PAUSE }
            }
        }
    }
}

/// What one message of the deliveries queue holds.
enum Deliveries {
    One(Box<Delivery>),
    Many(Vec<Delivery>),
}

fn decode_deliveries(body: &[u8]) -> Result<Deliveries, serde_json::Error> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        serde_json::from_slice(body).map(Deliveries::Many)
    } else {
        serde_json::from_slice(body).map(|d| Deliveries::One(Box::new(d)))
    }
}

/// The deliveries queue's handler.
pub struct DeliveryHandler(pub Arc<Sender>);

impl Handler for DeliveryHandler {
    fn handle(&self, message: Inbound) -> BoxFuture<'_, Disposition> {
        Box::pin(self.0.process_message(message))
    }
}
