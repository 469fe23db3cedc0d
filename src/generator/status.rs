//! Delivery news in: a sender's outcome events and carriers' receipts move a
//! request's status (through the store's writer); a receipt is announced as
//! `event.delivered` / `event.undelivered`.

use super::{Generator, RETRY_PAUSE};
use crate::broker::{Disposition, Inbound, Topology};
use crate::domain::phone::redact_numbers;
use crate::domain::{Event, EventKind, ReceiptMessage};
use crate::store::StatusUpdate;

impl Generator {
    /// Handles one message of the status queue: a sender's outcome event or a
    /// carrier's delivery receipt. Acked means kept: the new status is
    /// durable before the ack.
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
        let Some(request_id) = event.request_id else {
            return Disposition::Ack;
        };
        let update = StatusUpdate {
            request_id,
            kind: event.status,
            carrier: event.carrier,
            carrier_message_id: event.carrier_message_id,
            error: event.error,
            at: event.at,
        };
        match self.track(self.writer.apply_status(update).await) {
            Ok(_) => Disposition::Ack,
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
        let update = StatusUpdate {
            request_id: request_id.clone(),
            kind,
            carrier: Some(receipt.carrier.clone()),
            carrier_message_id: Some(receipt.carrier_message_id.clone()),
            error: receipt.error.clone(),
            at: receipt.at,
        };
        let applied = match self.track(self.writer.apply_status(update).await) {
            Ok(applied) => applied,
            Err(e) => return self.store_failed(&e),
        };
        let mut event = Event::new(kind, Some(request_id), &applied.phone.unwrap_or_default(), receipt.at);
        event.carrier = Some(receipt.carrier);
        event.carrier_message_id = Some(receipt.carrier_message_id);
        event.error = receipt.error;
        match self.outbox.announce(event).await {
            Ok(()) => Disposition::Ack,
            Err(e) => {
                tracing::warn!(error = %e, "could not publish a receipt event; will retry");
                Disposition::Retry { after: RETRY_PAUSE }
            }
        }
    }
}
