//! The bodies that cross the broker: deliveries (internal), replies and events.

use crate::domain::RejectReason;
use serde::{Deserialize, Serialize};
use std::fmt;
use time::OffsetDateTime;

/// An SMS to send: generator → sender over `otp.deliveries` (internal).
///
/// This is the only place the plaintext code exists outside memory, on its
/// way to a carrier. `Debug` hides the text and the number.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Unique per delivery; carriers receive it for deduplication.
    pub delivery_id: String,
    /// The producer's request.
    pub request_id: String,
    /// Recipient, E.164.
    pub phone: String,
    /// The rendered SMS text (contains the code).
    pub text: String,
    /// The code alone, for carriers with registered templates (MSG91).
    pub code: String,
    /// When the code stops working: a sender never delivers after this.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// When the generator received the request (start of delivery latency).
    #[serde(with = "time::serde::rfc3339")]
    pub requested_at: OffsetDateTime,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("delivery_id", &self.delivery_id)
            .field("request_id", &self.request_id)
            .field("phone", &crate::domain::phone::mask(&self.phone))
            .field("text", &"<redacted>")
            .field("code", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The lifecycle of a request, as `GET /v1/otp/{request_id}` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    /// Code issued, delivery queued.
    Pending,
    /// A carrier accepted the SMS.
    Sent,
    /// The carrier reported the SMS delivered.
    Delivered,
    /// No carrier could deliver it.
    Failed,
    /// The code was verified.
    Verified,
    /// The code expired, was locked by wrong guesses, or was replaced by a newer one.
    Expired,
    /// The code was canceled (`DELETE /v1/otp/{request_id}`).
    Canceled,
    /// The request was refused (`reason` says why): no code was issued. A
    /// request re-published under its id is decided afresh.
    Rejected,
}

impl RequestStatus {
    /// Whether nothing can change any more (verified, expired or canceled).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Verified | Self::Expired | Self::Canceled | Self::Rejected)
    }

    /// Whether `next` may follow `self`. Delivery news never overrides a
    /// verification or expiry, and arrives in any order.
    pub fn can_become(self, next: RequestStatus) -> bool {
        use RequestStatus::*;
        match (self, next) {
            (Verified | Expired | Canceled | Rejected, _) => false,
            (_, Verified | Expired | Canceled) => true,
            (Pending, _) => true,
            (Sent, Delivered | Failed) => true,
            (Failed, Sent | Delivered) => true,
            _ => false,
        }
    }
}

/// Event kinds; each is published with routing key `event.<kind>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Request validated, code issued, delivery queued.
    Accepted,
    /// Request refused (see `reason`).
    Rejected,
    /// A carrier accepted the SMS.
    Sent,
    /// No carrier accepted the SMS, or the code expired first.
    Failed,
    /// The carrier confirmed delivery.
    Delivered,
    /// The carrier reported non-delivery.
    Undelivered,
    /// The code was verified.
    Verified,
    /// The code expired or was locked.
    Expired,
    /// The code was canceled.
    Canceled,
}

impl EventKind {
    /// `accepted`, `sent`, …
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Rejected => "rejected",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Delivered => "delivered",
            Self::Undelivered => "undelivered",
            Self::Verified => "verified",
            Self::Expired => "expired",
            Self::Canceled => "canceled",
        }
    }

    /// The routing key on the exchange: `event.accepted`, …
    pub fn routing_key(self) -> String {
        format!("event.{}", self.as_str())
    }

    /// The request status this event implies, if any.
    pub fn request_status(self) -> Option<RequestStatus> {
        match self {
            Self::Sent => Some(RequestStatus::Sent),
            Self::Failed | Self::Undelivered => Some(RequestStatus::Failed),
            Self::Delivered => Some(RequestStatus::Delivered),
            Self::Verified => Some(RequestStatus::Verified),
            Self::Expired => Some(RequestStatus::Expired),
            Self::Canceled => Some(RequestStatus::Canceled),
            Self::Accepted | Self::Rejected => None,
        }
    }
}

/// A status event (contract: `request_id`, masked `phone`, `status`, `at`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The producer's request (`null` only for a rejected request that had none).
    pub request_id: Option<String>,
    /// Masked phone number, e.g. `+1415*****23`.
    pub phone: String,
    /// The event kind.
    pub status: EventKind,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Rejection reason (`event.rejected`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RejectReason>,
    /// The carrier involved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier: Option<String>,
    /// The carrier's id for the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier_message_id: Option<String>,
    /// What went wrong, for `failed` / `rejected` / `undelivered`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Seconds until a refused request may be tried again (`rate_limited`, `suspected_pumping`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
    /// When the code expires (`event.accepted`).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

impl Event {
    /// An `event.rejected` for `rejection`, with the time to retry if limited.
    pub fn rejected(
        request_id: Option<String>,
        phone: &str,
        rejection: &crate::domain::Rejection,
        retry_after_secs: Option<u64>,
        at: OffsetDateTime,
    ) -> Self {
        let mut event = Self::new(EventKind::Rejected, request_id, phone, at);
        event.reason = Some(rejection.reason);
        event.error = Some(rejection.detail.clone());
        event.retry_after_secs = retry_after_secs;
        event
    }

    /// An event with only the required fields set; `phone` is masked here.
    pub fn new(status: EventKind, request_id: Option<String>, phone: &str, at: OffsetDateTime) -> Self {
        Self {
            request_id,
            phone: crate::domain::phone::mask(phone),
            status,
            at,
            reason: None,
            carrier: None,
            carrier_message_id: None,
            error: None,
            retry_after_secs: None,
            expires_at: None,
        }
    }
}

/// A carrier's delivery receipt: sender → generator over the status queue
/// (internal, routing key `receipt`). The generator maps the carrier's
/// message id to the request and publishes `event.delivered` / `event.undelivered`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptMessage {
    /// Carrier name.
    pub carrier: String,
    /// The carrier's id for the message.
    pub carrier_message_id: String,
    /// True if delivered, false if the carrier gave up.
    pub delivered: bool,
    /// The carrier's error code or text, if undelivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the receipt arrived.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// The answer sent to a request's `reply_to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The request answered (`null` if it had no usable one).
    pub request_id: Option<String>,
    /// `accepted` or `rejected`.
    pub status: ReplyStatus,
    /// Why it was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RejectReason>,
    /// Human-readable detail of a rejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Seconds until a refused request may be tried again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
    /// When the issued code expires.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

impl Reply {
    /// The answer for an issued (or already issued) code.
    pub fn accepted(request_id: &str, expires_at: OffsetDateTime) -> Self {
        Self {
            request_id: Some(request_id.to_owned()),
            status: ReplyStatus::Accepted,
            reason: None,
            error: None,
            retry_after_secs: None,
            expires_at: Some(expires_at),
        }
    }
}

/// A reply's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyStatus {
    /// Code issued.
    Accepted,
    /// Request refused.
    Rejected,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_serializes_to_the_contract_shape() {
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let mut e = Event::new(EventKind::Sent, Some("r1".into()), "+14155550123", at);
        e.carrier = Some("webhook".into());
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["request_id"], "r1");
        assert_eq!(v["phone"], "+1415*****23");
        assert_eq!(v["status"], "sent");
        assert_eq!(v["at"], "2023-11-14T22:13:20Z");
        assert_eq!(v["carrier"], "webhook");
        assert!(v.get("error").is_none());
        assert_eq!(EventKind::Sent.routing_key(), "event.sent");
    }

    #[test]
    fn reply_serializes_reason_in_snake_case() {
        let r = Reply {
            request_id: Some("r1".into()),
            status: ReplyStatus::Rejected,
            reason: Some(RejectReason::InvalidPhone),
            error: Some("bad".into()),
            retry_after_secs: None,
            expires_at: None,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["status"], "rejected");
        assert_eq!(v["reason"], "invalid_phone");
    }

    #[test]
    fn delivery_debug_hides_code_and_number() {
        let now = OffsetDateTime::now_utc();
        let d = Delivery {
            delivery_id: "d1".into(),
            request_id: "r1".into(),
            phone: "+14155550123".into(),
            text: "your code is 123456".into(),
            code: "123456".into(),
            expires_at: now,
            requested_at: now,
        };
        let s = format!("{d:?}");
        assert!(!s.contains("123456") && !s.contains("5550123"), "{s}");
    }

    #[test]
    fn status_never_leaves_a_final_state() {
        use RequestStatus::*;
        assert!(Pending.can_become(Sent));
        assert!(Sent.can_become(Delivered));
        assert!(!Delivered.can_become(Sent));
        assert!(Delivered.can_become(Verified));
        assert!(!Verified.can_become(Delivered));
        assert!(!Expired.can_become(Verified));
    }
}
