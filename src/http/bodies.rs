//! The JSON bodies the HTTP API answers with: one type per shape, shared by
//! the handlers and the OpenAPI document, so the two cannot drift.

use crate::domain::{RejectReason, RequestStatus};
use serde::Serialize;
use utoipa::ToSchema;

/// Any refusal: `{"error": …}`, with the contract's `reason` when a request
/// was refused by validation or a limit, and `retry_after_secs` when waiting helps.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What was wrong, for humans (never a code or a full phone number).
    pub error: String,
    /// The contract's reason code, for `POST /v1/otp` refusals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<RejectReason>,
    /// Seconds until a retry can succeed (also sent as `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

impl ErrorBody {
    /// `{"error": message}`.
    pub fn new(error: impl Into<String>) -> Self {
        Self { error: error.into(), reason: None, retry_after_secs: None }
    }
}

/// The refusals every `/v1` route shares, for the OpenAPI document: a
/// missing or wrong key, a key over its rate, the store unavailable.
pub mod refusals {
    use super::ErrorBody;
    use utoipa::ToResponse;

    /// 401.
    #[derive(ToResponse)]
    #[response(description = "Missing or wrong API key.")]
    pub struct Unauthorized(#[allow(dead_code)] ErrorBody);

    /// 429 for the per-key rate.
    #[derive(ToResponse)]
    #[response(
        description = "The API key is over its rate.",
        headers(("Retry-After" = u64, description = "Seconds to wait"))
    )]
    pub struct KeyRateLimited(#[allow(dead_code)] ErrorBody);

    /// 503.
    #[derive(ToResponse)]
    #[response(description = "The store is unavailable; retry.")]
    pub struct Unavailable(#[allow(dead_code)] ErrorBody);
}

/// `POST /v1/otp` accepted the request: the broker has it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// The request's idempotency key, as sent.
    pub request_id: String,
}

/// The outcome of `POST /v1/verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerifyStatus {
    /// The code was right; it is now used up (200).
    Approved,
    /// Wrong code; `attempts_left` tries remain (422).
    InvalidCode,
    /// The code expired (410).
    Expired,
    /// Too many wrong codes; this code is dead (429).
    MaxAttemptsReached,
    /// No pending code for this number (404).
    NotFound,
    /// The number is locked after repeated failures (429, `Retry-After`).
    Locked,
}

/// `POST /v1/verify`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyResult {
    /// What happened.
    pub status: VerifyStatus,
    /// Tries left, with `invalid_code`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts_left: Option<u8>,
    /// Seconds until the lock ends, with `locked`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

impl VerifyResult {
    /// Just a status.
    pub fn of(status: VerifyStatus) -> Self {
        Self { status, attempts_left: None, retry_after_secs: None }
    }
}

/// A 429 from `POST /v1/verify`: the code's own limit ([`VerifyResult`]) or the
/// API key's request rate ([`ErrorBody`]).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum VerifyTooMany {
    /// `max_attempts_reached` or `locked`.
    Verify(VerifyResult),
    /// The API key is over its rate.
    Key(ErrorBody),
}

/// `GET /v1/otp/{request_id}`: a request's lifecycle. The phone is masked.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequestView {
    /// The producer's idempotency key.
    pub request_id: String,
    /// Where the request is in its lifecycle.
    pub status: RequestStatus,
    /// The number, masked (`+1415*****23`).
    pub phone: String,
    /// The carrier that took the SMS, once one did.
    pub carrier: Option<String>,
    /// That carrier's message id.
    pub carrier_message_id: Option<String>,
    /// Why delivery failed, if it did; for a `rejected` request, the rule
    /// that refused it.
    pub error: Option<String>,
    /// For a `rejected` request: the contract's reason (`rate_limited`, `suspected_pumping`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<crate::domain::RejectReason>,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// When the code stops being accepted, RFC 3339.
    #[schema(format = DateTime)]
    pub expires_at: String,
}

/// A request's status alone (`DELETE /v1/otp/{request_id}`).
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusOnly {
    /// `canceled` when the cancel took effect; the final status otherwise.
    pub status: RequestStatus,
}

/// `{"status": "not_found"}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotFound {
    /// Always `not_found`.
    pub status: NotFoundStatus,
}

impl NotFound {
    /// The only value.
    pub const fn new() -> Self {
        Self { status: NotFoundStatus::NotFound }
    }
}

impl Default for NotFound {
    fn default() -> Self {
        Self::new()
    }
}

/// The single value of [`NotFound::status`].
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotFoundStatus {
    /// Nothing by that name.
    NotFound,
}

/// `GET /v1/admin/quarantines`.
#[derive(Debug, Serialize, ToSchema)]
pub struct QuarantineList {
    /// Quarantines in force.
    pub quarantines: Vec<crate::domain::limits::Quarantine>,
}

/// `DELETE /v1/admin/quarantines/{prefix}` lifted one.
#[derive(Debug, Serialize, ToSchema)]
pub struct Lifted {
    /// The prefix, digits without `+`.
    pub lifted: String,
}

/// `GET /healthz`: the process is up.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: HealthStatus,
}

/// The single value of [`Health::status`].
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Alive.
    Ok,
}

/// `GET /readyz`: can this process do its work now?
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` (200) or `not_ready` (503).
    pub status: ReadyStatus,
    /// Connected to RabbitMQ.
    pub broker: bool,
    /// The sled store answers (always true on senders, which have none).
    pub store: bool,
}

/// [`Readiness::status`].
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadyStatus {
    /// Broker connected and store open.
    Ready,
    /// Something it needs is down.
    NotReady,
}
