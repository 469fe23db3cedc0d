//! SMS carriers behind one trait. A carrier knows an SMS and an HTTP client,
//! nothing of the store or the broker.

mod console;
mod webhook;

pub use console::Console;
pub use webhook::Webhook;

use crate::broker::BoxFuture;
use crate::config::Config;
use std::sync::Arc;
use std::time::Duration;

/// One SMS to send.
#[derive(Clone)]
pub struct Sms {
    /// Recipient, E.164.
    pub to: String,
    /// Text (contains the code: never log it).
    pub text: String,
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

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Retryable { .. } => "retryable_error",
            Self::Permanent { .. } => "permanent_error",
        }
    }
}

/// A way to send an SMS.
pub trait Carrier: Send + Sync + 'static {
    /// The name used in metrics, events and config (`console`, `webhook`…).
    fn name(&self) -> &'static str;
    /// Sends one SMS (one attempt; retries are the sender's job).
    fn send<'a>(&'a self, sms: &'a Sms) -> BoxFuture<'a, Result<Accepted, CarrierError>>;
}

/// Why a carrier could not be built from configuration.
#[derive(Debug, thiserror::Error)]
pub enum CarrierConfigError {
    /// `sender.carrier` names no known carrier.
    #[error("unknown carrier {0:?} (known: console, webhook)")]
    Unknown(String),
    /// A carrier's settings are wrong.
    #[error("carrier {0}: {1}")]
    Invalid(&'static str, String),
}

/// Builds the carrier named by `sender.carrier`.
pub fn from_config(config: &Config) -> Result<Arc<dyn Carrier>, CarrierConfigError> {
    match config.sender.carrier.as_str() {
        "console" => Ok(Arc::new(Console)),
        "webhook" => Ok(Arc::new(Webhook::new(&config.carriers.webhook)?)),
        other => Err(CarrierConfigError::Unknown(other.to_owned())),
    }
}

/// Parses a `Retry-After` header given in seconds (the form carriers use).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}
