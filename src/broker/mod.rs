//! RabbitMQ: the contract's topology, a supervised connection with publisher
//! confirms, and consumers with manual acks and dead-lettering.
//!
//! This layer knows message bytes and routing, nothing of sled or carriers.

mod consumer;
mod session;
mod topology;

pub use consumer::{BoxFuture, Disposition, Handler, Inbound};
pub use session::{Broker, Subscription, json_properties, redact_url};
pub use topology::Topology;

/// A broker failure.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No connection right now (the supervisor is reconnecting).
    #[error("not connected to RabbitMQ")]
    NotConnected,
    /// The AMQP client failed.
    #[error("AMQP: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker refused the message (nack) or could not route it.
    #[error("the broker did not accept the message: {0}")]
    NotConfirmed(&'static str),
    /// One failure shared by every message of a coalesced publish.
    #[error(transparent)]
    Shared(std::sync::Arc<BrokerError>),
}
