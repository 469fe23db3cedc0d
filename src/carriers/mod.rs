//! SMS carriers behind one trait: a carrier owns sending through its API
//! *and* its delivery receipts (authenticating and parsing a callback). A
//! carrier knows an SMS and an HTTP client, nothing of the store or the broker.

mod console;
pub mod msg91;
pub mod twilio;
mod util;
pub mod vonage;
mod webhook;

pub use console::Console;
pub use msg91::Msg91;
pub use twilio::Twilio;
pub use vonage::Vonage;
pub use webhook::Webhook;

use crate::broker::BoxFuture;
use crate::config::Config;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// One SMS to send.
#[derive(Clone)]
pub struct Sms {
    /// Recipient, E.164.
    pub to: String,
    /// Text (contains the code: never log it).
    pub text: String,
    /// The code alone, for carriers that fill it into a registered template (MSG91).
    pub code: String,
    /// The producer's request id.
    pub request_id: String,
    /// Unique id of this delivery (carriers may deduplicate on it).
    pub delivery_id: String,
}

impl std::fmt::Debug for Sms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sms")
            .field("to", &crate::domain::phone::mask(&self.to))
            .field("text", &"<redacted>")
            .field("code", &"<redacted>")
            .field("request_id", &self.request_id)
            .field("delivery_id", &self.delivery_id)
            .finish()
    }
}

/// The carrier took the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The carrier's id for the message, if it gives one.
    pub carrier_message_id: Option<String>,
}

/// Why a carrier did not take the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CarrierError {
    /// Worth trying again (timeouts, 429, 5xx), after `retry_after` if the carrier said.
    #[error("retryable: {reason}")]
    Retryable {
        /// What happened.
        reason: String,
        /// The carrier's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// Trying again cannot help (bad number, bad credentials, 4xx).
    #[error("permanent: {reason}")]
    Permanent {
        /// What happened.
        reason: String,
    },
}

impl CarrierError {
    /// Whether a retry may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable { .. })
    }

    /// Defence in depth: the same error with `code` masked in its reason,
    /// should a carrier echo the SMS text back.
    pub fn scrub(self, code: &str) -> Self {
        let clean = |reason: String| {
            if code.is_empty() { reason } else { reason.replace(code, "<code>") }
        };
        match self {
            Self::Retryable { reason, retry_after } => Self::Retryable { reason: clean(reason), retry_after },
            Self::Permanent { reason } => Self::Permanent { reason: clean(reason) },
        }
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Retryable { .. } => "retryable_error",
            Self::Permanent { .. } => "permanent_error",
        }
    }
}

/// Every carrier this build knows, as routes, metrics, events and receipt
/// URLs (`/receipts/{carrier}`) name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CarrierKind {
    /// Prints the SMS to stdout (development).
    Console,
    /// POSTs JSON to a configured URL.
    Webhook,
    /// Twilio Programmable Messaging.
    Twilio,
    /// MSG91 flow API.
    Msg91,
    /// Vonage SMS API.
    Vonage,
}

impl CarrierKind {
    /// Every kind.
    pub const ALL: [Self; 5] = [Self::Console, Self::Webhook, Self::Twilio, Self::Msg91, Self::Vonage];

    /// The name: `console`, `webhook`, `twilio`, `msg91`, `vonage`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Console => "console",
            Self::Webhook => "webhook",
            Self::Twilio => "twilio",
            Self::Msg91 => "msg91",
            Self::Vonage => "vonage",
        }
    }
}

impl std::str::FromStr for CarrierKind {
    type Err = CarrierConfigError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|k| k.as_str() == name).ok_or_else(|| CarrierConfigError::Unknown(name.to_owned()))
    }
}

/// A delivery-receipt callback as it arrived on `/receipts/{carrier}`.
pub struct Callback<'a> {
    /// The query string's pairs.
    pub query: Vec<(String, String)>,
    /// The request's headers.
    pub headers: &'a reqwest::header::HeaderMap,
    /// The raw body.
    pub body: &'a [u8],
}

impl Callback<'_> {
    /// The first query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// What an authentic callback said, and, for a signed one, what identifies
/// it (the same callback seen again is a replay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipts {
    /// Its reports, in order.
    pub receipts: Vec<Receipt>,
    /// The signature, for carriers that sign their callbacks.
    pub replay_key: Option<String>,
}

/// A way to send an SMS, and to read its delivery receipts.
pub trait Carrier: Send + Sync + 'static {
    /// Which carrier this is.
    fn kind(&self) -> CarrierKind;
    /// The name used in metrics, events and config (`console`, `webhook`…).
    fn name(&self) -> &'static str {
        self.kind().as_str()
    }
    /// Sends one SMS (one attempt; retries are the sender's job).
    fn send<'a>(&'a self, sms: &'a Sms) -> BoxFuture<'a, Result<Accepted, CarrierError>>;
    /// Authenticates and parses a delivery-receipt callback. A carrier that
    /// sends none (or is not set up for them) refuses it as not configured.
    fn receipts(&self, callback: &Callback<'_>) -> Result<Receipts, ReceiptError> {
        let _ = callback;
        Err(ReceiptError::NotConfigured(self.name()))
    }
}

/// Why a carrier could not be built from configuration.
#[derive(Debug, thiserror::Error)]
pub enum CarrierConfigError {
    /// A route names no known carrier.
    #[error("unknown carrier {0:?} (known: console, webhook, twilio, msg91, vonage)")]
    Unknown(String),
    /// A route names a carrier whose `[carriers.<name>]` section is missing.
    #[error("carrier {0} is routed to but [carriers.{0}] is not configured")]
    NotConfigured(&'static str),
    /// A carrier's settings are wrong.
    #[error("carrier {0}: {1}")]
    Invalid(&'static str, String),
}

/// Builds one carrier by name, each from its own configuration section.
pub fn build(name: &str, config: &Config) -> Result<Arc<dyn Carrier>, CarrierConfigError> {
    let c = &config.carriers;
    let missing = |kind: CarrierKind| CarrierConfigError::NotConfigured(kind.as_str());
    Ok(match name.parse::<CarrierKind>()? {
        CarrierKind::Console => Arc::new(Console),
        CarrierKind::Webhook => Arc::new(Webhook::new(&c.webhook)?),
        CarrierKind::Twilio => Arc::new(Twilio::new(c.twilio.as_ref().ok_or(missing(CarrierKind::Twilio))?)?),
        CarrierKind::Msg91 => Arc::new(Msg91::new(c.msg91.as_ref().ok_or(missing(CarrierKind::Msg91))?)?),
        CarrierKind::Vonage => Arc::new(Vonage::new(c.vonage.as_ref().ok_or(missing(CarrierKind::Vonage))?)?),
    })
}

/// The carriers whose receipts a sender takes: every one with a
/// configuration section (routed or not: a receipt may come after a route
/// changed).
pub fn receivers(config: &Config) -> Result<BTreeMap<CarrierKind, Arc<dyn Carrier>>, CarrierConfigError> {
    let c = &config.carriers;
    let configured = [
        (CarrierKind::Twilio, c.twilio.is_some()),
        (CarrierKind::Msg91, c.msg91.is_some()),
        (CarrierKind::Vonage, c.vonage.is_some()),
    ];
    configured.into_iter().filter(|(_, on)| *on).map(|(kind, _)| Ok((kind, build(kind.as_str(), config)?))).collect()
}

/// A delivery receipt's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptStatus {
    /// The handset has the SMS.
    Delivered,
    /// The carrier gave up (failed, undelivered, expired, rejected).
    Undelivered,
    /// An intermediate state (queued, sent, accepted, buffered): nothing to report yet.
    Pending,
}

impl ReceiptStatus {
    /// `delivered`, `undelivered`, `pending` (metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Undelivered => "undelivered",
            Self::Pending => "pending",
        }
    }
}

/// A delivery receipt from a carrier, authenticated and parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The carrier's name.
    pub carrier: &'static str,
    /// The carrier's id for the message (as returned when it was accepted).
    pub carrier_message_id: String,
    /// What happened.
    pub status: ReceiptStatus,
    /// The carrier's error code or text, for undelivered messages.
    pub error: Option<String>,
}

/// Why a receipt callback was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// Missing or wrong signature/token: answered 403.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Authentic but unreadable: answered 400.
    #[error("malformed receipt: {0}")]
    Malformed(String),
    /// Receipts for this carrier are not configured: answered 404.
    #[error("receipts for {0} are not configured")]
    NotConfigured(&'static str),
}

/// Checks a callback's `presented` token against the carrier's configured
/// `receipt_token` (constant time): not configured (unset or empty) is
/// `NotConfigured`, a wrong or missing token `Forbidden`.
pub fn check_receipt_token(
    configured: &Option<crate::config::Secret>,
    presented: Option<&str>,
    carrier: &'static str,
) -> Result<(), ReceiptError> {
    let expected = configured
        .as_ref()
        .map(crate::config::Secret::expose)
        .filter(|t| !t.is_empty())
        .ok_or(ReceiptError::NotConfigured(carrier))?;
    if !token_matches(presented, expected) {
        return Err(ReceiptError::Forbidden("wrong or missing token".into()));
    }
    Ok(())
}

/// Compares a presented secret token with the expected one in constant time.
pub fn token_matches(presented: Option<&str>, expected: &str) -> bool {
    use sha2::Digest;
    use subtle::ConstantTimeEq;
    let Some(presented) = presented else {
        return false;
    };
    let a = sha2::Sha256::digest(presented.as_bytes());
    let b = sha2::Sha256::digest(expected.as_bytes());
    a.ct_eq(&b).into()
}

/// The HTTP client every carrier uses: timeout, user agent, rustls.
pub fn http_client(name: &'static str, timeout_ms: u64) -> Result<reqwest::Client, CarrierConfigError> {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(timeout_ms))
        .user_agent(concat!("otp-pipeline/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| CarrierConfigError::Invalid(name, e.to_string()))
}

/// A carrier's whole answer to one request: what every carrier's
/// `classify(&Reply) -> Result<Accepted, CarrierError>` reads.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: reqwest::StatusCode,
    /// `Retry-After`, in seconds form.
    pub retry_after: Option<Duration>,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// An answer with `status` and `body` (no `Retry-After`).
    pub fn new(status: reqwest::StatusCode, body: &[u8]) -> Self {
        Self { status, retry_after: None, body: body.to_vec() }
    }

    /// The same answer with a `Retry-After`.
    pub fn retry_after(self, retry_after: Option<Duration>) -> Self {
        Self { retry_after, ..self }
    }
}

/// Sends `request` and reads the whole answer. Network failures (connect,
/// timeout, reset) are retryable.
pub async fn exchange(request: reqwest::RequestBuilder) -> Result<Reply, CarrierError> {
    let response = request.send().await.map_err(network_error)?;
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let body = response.bytes().await.map_err(network_error)?.to_vec();
    Ok(Reply { status, retry_after, body })
}

/// A network failure (connect, timeout, reset): retryable, without the URL
/// (it may carry credentials).
pub fn network_error(e: reqwest::Error) -> CarrierError {
    CarrierError::Retryable { reason: format!("request failed: {}", e.without_url()), retry_after: None }
}

/// Parses a `Retry-After` header given in seconds (the form carriers use).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse::<u64>().ok().map(Duration::from_secs)
}
