//! Verification and cancel: both go through the store's writer, and each
//! answer comes after the change it stands for is durable.

use super::{Generator, GeneratorError, seconds_until};
use crate::domain::phone::Redacted;
use crate::domain::{Code, Event, EventKind, Phone, RejectReason, Rejection, VerifyOutcome};
use crate::store::CancelOutcome;
use crate::telemetry::names;
use time::OffsetDateTime;

impl Generator {
    /// Verifies `code` for `phone`: approved at most once, attempts counted,
    /// expiry enforced. Publishes `event.verified` / `event.expired` (off the
    /// request path: the answer does not wait for the event).
    pub async fn verify(&self, phone: &Phone, code: &Code) -> Result<VerifyOutcome, GeneratorError> {
        self.verify_as(phone, code, None).await
    }

    /// Like [`Generator::verify`], for a caller limited to application `app`
    /// (a scoped API key): another application's code is `not_found`.
    pub async fn verify_as(
        &self,
        phone: &Phone,
        code: &Code,
        app: Option<&str>,
    ) -> Result<VerifyOutcome, GeneratorError> {
        let now = self.clock.now();
        let verified = self.track(self.writer.verify_as(phone, code, app, now).await)?;
        let outcome = verified.outcome;
        metrics::counter!(names::VERIFICATIONS, "outcome" => outcome.label()).increment(1);
        if let VerifyOutcome::Approved { .. } = &outcome {
            // Conversion (approved / sent) per carrier, for dashboards.
            let carrier = verified.carrier.unwrap_or_else(|| "unknown".to_owned());
            metrics::counter!(names::CONVERSIONS, "carrier" => carrier).increment(1);
        }
        tracing::info!(phone = %phone, outcome = outcome.label(), "verification");
        if let Some(until) = verified.locked_until {
            self.announce_lockout(phone, &outcome, until, now);
        }
        let event = match &outcome {
            VerifyOutcome::Approved { request_id } => Some((EventKind::Verified, request_id, None)),
            VerifyOutcome::Expired { request_id } => Some((EventKind::Expired, request_id, None)),
            VerifyOutcome::MaxAttemptsReached { request_id } if verified.changed => {
                Some((EventKind::Expired, request_id, Some("max_attempts_reached".to_owned())))
            }
            _ => None,
        };
        if let Some((kind, request_id, error)) = event {
            let mut event = Event::new(kind, Some(request_id.clone()), phone.e164(), now);
            event.error = error;
            self.announce_later(event, "a verification event");
        }
        Ok(outcome)
    }

    /// Publishes `event` in the background; a failure is logged.
    fn announce_later(&self, event: Event, what: &'static str) {
        let outbox = self.outbox.clone();
        tokio::spawn(async move {
            if let Err(e) = outbox.announce(event).await {
                tracing::warn!(error = %e, "could not publish {what}");
            }
        });
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
        self.announce_later(
            Event::rejected(request_id, phone.e164(), &rejection, Some(wait), now),
            "the lockout event",
        );
    }

    /// Cancels a request's code and publishes `event.canceled`.
    pub async fn cancel(&self, request_id: &str) -> Result<CancelOutcome, GeneratorError> {
        let now = self.clock.now();
        let outcome = self.track(self.writer.cancel(request_id, now).await)?;
        if let CancelOutcome::Canceled(record) = &outcome {
            tracing::info!(request_id = %Redacted(request_id), phone = %crate::domain::phone::mask(&record.phone), "code canceled");
            let event = Event::new(EventKind::Canceled, Some(request_id.to_owned()), &record.phone, now);
            if let Err(e) = self.outbox.announce(event).await {
                // The cancel itself is durable; only the announcement is lost.
                tracing::warn!(request_id = %Redacted(request_id), error = %e, "could not publish event.canceled");
            }
        }
        Ok(outcome)
    }
}
