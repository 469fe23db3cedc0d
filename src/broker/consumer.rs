//! What a consumer hands to the application, and what the application tells
//! the consumer to do with the message afterwards.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A boxed, sendable future (what [`Handler::handle`] returns).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A message taken from a queue.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The body.
    pub body: Vec<u8>,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Where the producer wants a reply (AMQP `reply_to`).
    pub reply_to: Option<String>,
    /// The producer's correlation id, echoed in the reply.
    pub correlation_id: Option<String>,
    /// Whether the broker delivered it before (after a crash or a requeue).
    pub redelivered: bool,
    /// The application (scoped API key) a request was made for, from a
    /// sealed `x-otp-owner` header; `None` for producers' own requests.
    pub owner: Option<String>,
}

impl From<&lapin::message::Delivery> for Inbound {
    fn from(d: &lapin::message::Delivery) -> Self {
        Self {
            body: d.data.clone(),
            routing_key: d.routing_key.to_string(),
            reply_to: d.properties.reply_to().as_ref().map(|s| s.to_string()),
            correlation_id: d.properties.correlation_id().as_ref().map(|s| s.to_string()),
            redelivered: d.redelivered,
            owner: None,
        }
    }
}

/// How a handled message is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Done (its work is durable and its follow-up messages confirmed): ack.
    Ack,
    /// It can never be processed: publish it to the dead-letter exchange with
    /// the reason in `x-otp-error`, then ack. It never loops.
    DeadLetter {
        /// A short, fixed reason code (metric label), e.g. `malformed_json`.
        reason: &'static str,
        /// Human-readable detail (never a code or a full phone number).
        error: String,
    },
    /// A passing infrastructure failure (store or broker): requeue after a pause.
    Retry {
        /// Pause before the message is requeued.
        after: Duration,
    },
}

/// Application logic for one queue.
pub trait Handler: Send + Sync + 'static {
    /// Processes one message and says how to settle it.
    fn handle(&self, message: Inbound) -> BoxFuture<'_, Disposition>;
}
