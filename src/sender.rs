//! The sender: takes deliveries off the queue and pushes them to a carrier,
//! retrying with exponential backoff and jitter, never past the code's expiry.
//!
//! It wires a carrier and the broker; it never sees the store.

use crate::broker::{BoxFuture, Broker, Disposition, Handler, Inbound};
use crate::carriers::{Accepted, Carrier, CarrierError, Sms};
use crate::config::RetryConfig;
use crate::domain::{Clock, Delivery, Event, EventKind};
use crate::telemetry::names;
use backon::Retryable;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pause before a delivery whose outcome could not be announced is requeued.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// A sender worker's state.
pub struct Sender {
    carrier: Arc<dyn Carrier>,
    broker: Arc<Broker>,
    clock: Arc<dyn Clock>,
    retry: RetryConfig,
}

impl Sender {
    /// A sender pushing to `carrier`.
    pub fn new(
        carrier: Arc<dyn Carrier>,
        broker: Arc<Broker>,
        clock: Arc<dyn Clock>,
        retry: RetryConfig,
    ) -> Self {
        Self {
            carrier,
            broker,
            clock,
            retry,
        }
    }

    /// Handles one delivery.
    pub async fn process_delivery(&self, message: Inbound) -> Disposition {
        let delivery: Delivery = match serde_json::from_slice(&message.body) {
            Ok(d) => d,
            Err(e) => {
                return Disposition::DeadLetter {
                    reason: "malformed_delivery",
                    error: crate::domain::phone::redact_numbers(&e.to_string()),
                };
            }
        };
        let carrier = self.carrier.name();
        if self.clock.now() >= delivery.expires_at {
            return self.expired(&delivery).await;
        }
        let sms = Sms {
            to: delivery.phone.clone(),
            text: delivery.text.clone(),
            code: delivery.code.clone(),
            request_id: delivery.request_id.clone(),
            delivery_id: delivery.delivery_id.clone(),
        };
        let expires_at = delivery.expires_at;
        let clock = &self.clock;
        let attempt = || self.attempt(&sms);
        let result = attempt
            .retry(self.retry.backoff())
            .sleep(tokio::time::sleep)
            .when(|e: &CarrierError| e.is_retryable() && clock.now() < expires_at)
            .adjust(|e, planned| {
                // Honour the carrier's Retry-After, but never retry past expiry
                // nor beyond the configured number of retries.
                let delay = match (e, planned) {
                    (CarrierError::Retryable { retry_after: Some(after), .. }, Some(_)) => *after,
                    (_, planned) => planned?,
                };
                let remaining = expires_at - clock.now();
                (remaining > delay).then_some(delay)
            })
            .notify(|e, delay| {
                tracing::info!(request_id = %delivery.request_id, carrier, error = %e, retry_in = ?delay, "carrier attempt failed; retrying");
            })
            .await;
        match result {
            Ok(accepted) => self.sent(&delivery, accepted).await,
            Err(_) if self.clock.now() >= delivery.expires_at => self.expired(&delivery).await,
            Err(e) => self.failed(&delivery, e).await,
        }
    }

    async fn attempt(&self, sms: &Sms) -> Result<Accepted, CarrierError> {
        let carrier = self.carrier.name();
        let started = Instant::now();
        let result = self.carrier.send(sms).await;
        metrics::histogram!(names::CARRIER_DURATION, "carrier" => carrier)
            .record(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(_) => "accepted",
            Err(e) => e.label(),
        };
        metrics::counter!(names::CARRIER_ATTEMPTS, "carrier" => carrier, "outcome" => outcome)
            .increment(1);
        result
    }

    async fn sent(&self, delivery: &Delivery, accepted: Accepted) -> Disposition {
        let carrier = self.carrier.name();
        let now = self.clock.now();
        let latency = (now - delivery.requested_at).as_seconds_f64().max(0.0);
        metrics::histogram!(names::DELIVERY_LATENCY).record(latency);
        metrics::counter!(names::DELIVERIES, "carrier" => carrier, "outcome" => "sent")
            .increment(1);
        tracing::info!(request_id = %delivery.request_id, carrier, "SMS accepted by the carrier");
        let mut event = Event::new(
            EventKind::Sent,
            Some(delivery.request_id.clone()),
            &delivery.phone,
            now,
        );
        event.carrier = Some(carrier.to_owned());
        event.carrier_message_id = accepted.carrier_message_id;
        self.announce(&event, Disposition::Ack).await
    }

    async fn expired(&self, delivery: &Delivery) -> Disposition {
        metrics::counter!(names::DELIVERIES, "carrier" => self.carrier.name(), "outcome" => "expired").increment(1);
        tracing::warn!(request_id = %delivery.request_id, "code expired before any carrier took it; dropped");
        let mut event = Event::new(
            EventKind::Failed,
            Some(delivery.request_id.clone()),
            &delivery.phone,
            self.clock.now(),
        );
        event.error = Some("expired".into());
        self.announce(&event, Disposition::Ack).await
    }

    async fn failed(&self, delivery: &Delivery, error: CarrierError) -> Disposition {
        let carrier = self.carrier.name();
        metrics::counter!(names::DELIVERIES, "carrier" => carrier, "outcome" => "failed")
            .increment(1);
        tracing::warn!(request_id = %delivery.request_id, carrier, error = %error, "no carrier accepted the SMS");
        let mut event = Event::new(
            EventKind::Failed,
            Some(delivery.request_id.clone()),
            &delivery.phone,
            self.clock.now(),
        );
        event.carrier = Some(carrier.to_owned());
        event.error = Some(error.to_string());
        let dead = Disposition::DeadLetter {
            reason: "carrier_failed",
            error: format!("{carrier}: {error}"),
        };
        self.announce(&event, dead).await
    }

    /// Publishes the outcome, then settles with `then`. If the outcome cannot
    /// be announced the delivery is requeued (at-least-once: the carrier may
    /// see it twice, with the same code).
    async fn announce(&self, event: &Event, then: Disposition) -> Disposition {
        let publish = || async {
            self.broker
                .publish_to_exchange(&event.status.routing_key(), event, false)
                .await
        };
        let policy = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_times(3);
        match publish.retry(policy).sleep(tokio::time::sleep).await {
            Ok(()) => then,
            Err(e) => {
                tracing::warn!(error = %e, "could not publish the delivery outcome; requeueing");
                Disposition::Retry { after: RETRY_PAUSE }
            }
        }
    }
}

/// The deliveries queue's handler.
pub struct DeliveryHandler(pub Arc<Sender>);

impl Handler for DeliveryHandler {
    fn handle(&self, message: Inbound) -> BoxFuture<'_, Disposition> {
        Box::pin(self.0.process_delivery(message))
    }
}
