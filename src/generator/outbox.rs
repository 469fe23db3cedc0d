//! The generator's port to the outside: deliveries, events, replies, forwards
//! and submitted requests go out through an [`Outbox`]. [`BrokerOutbox`] puts
//! them on RabbitMQ; [`MemoryOutbox`] keeps them in memory, so the
//! generator's decisions are tested without a broker.
//!
//! Deliveries (an internal hop) are coalesced: while earlier publishes wait
//! for their confirms, the deliveries queued meanwhile share one message (a
//! JSON array), so under load one publish, one confirm and one ack carry many
//! codes; alone, a delivery goes out at once as a single object.

use crate::broker::{BoxFuture, Broker, BrokerError, Inbound, Topology, json_properties};
use crate::domain::{Delivery, Event, Reply};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Where the generator's messages go. Each call resolves once the message is
/// confirmed (durable in the broker), or fails.
pub trait Outbox: Send + Sync + 'static {
    /// Queues a delivery for the senders.
    fn deliver(&self, delivery: Delivery) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Publishes an event (routing key from its status).
    fn announce(&self, event: Event) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Answers a producer at its `reply_to` queue.
    fn reply(&self, to: String, correlation_id: Option<String>, reply: Reply)
    -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Hands a request message on under `routing_key` (to its owning shard).
    fn forward(&self, routing_key: String, message: Inbound) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Publishes a request made over HTTP (`POST /v1/otp`).
    fn submit(&self, submitted: Submitted) -> BoxFuture<'_, Result<(), BrokerError>>;
}

/// A request made over HTTP, as it is published.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// `request`, or the owning shard's `request.<k>`.
    pub routing_key: String,
    /// The application of the scoped API key it was made with.
    pub owner: Option<String>,
    /// The request body.
    pub body: Vec<u8>,
    /// When it was made, Unix seconds (AMQP `timestamp`).
    pub timestamp: u64,
}

/// Deliveries one message carries at the most.
const MAX_DELIVERIES_PER_MESSAGE: usize = 64;

/// Delivery publishes waiting for their confirms at once; more deliveries
/// wait and then share a message.
const DELIVERY_PUBLISHES_IN_FLIGHT: usize = 4;

type Waiting = (Delivery, oneshot::Sender<Result<(), Arc<BrokerError>>>);

/// The outbox on RabbitMQ: confirmed, persistent publishes to the contract's
/// exchange (deliveries coalesced).
pub struct BrokerOutbox {
    broker: Arc<Broker>,
    deliveries: mpsc::UnboundedSender<Waiting>,
}

impl BrokerOutbox {
    /// An outbox over `broker`; starts the delivery coalescer (on the current runtime).
    pub fn new(broker: Arc<Broker>) -> Arc<Self> {
        let (deliveries, waiting) = mpsc::unbounded_channel();
        tokio::spawn(coalesce(broker.clone(), waiting));
        Arc::new(Self { broker, deliveries })
    }
}

/// The body of a message of the deliveries queue: one delivery as a JSON
/// object, several as a JSON array (what senders decode).
pub fn encode_deliveries(deliveries: &[&Delivery]) -> Vec<u8> {
    match deliveries {
        [one] => serde_json::to_vec(one),
        many => serde_json::to_vec(many),
    }
    .expect("deliveries serialize")
}

/// Publishes waiting deliveries, as many per message as have queued up.
async fn coalesce(broker: Arc<Broker>, mut waiting: mpsc::UnboundedReceiver<Waiting>) {
    let slots = Arc::new(Semaphore::new(DELIVERY_PUBLISHES_IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let Some(first) = waiting.recv().await else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_DELIVERIES_PER_MESSAGE
            && let Ok(more) = waiting.try_recv()
        {
            batch.push(more);
        }
        let broker = broker.clone();
        tokio::spawn(async move {
            let body = encode_deliveries(&batch.iter().map(|(d, _)| d).collect::<Vec<_>>());
            let result = broker.publish_routed(Topology::DELIVERY_KEY, None, &body, json_properties(), true).await;
            let result = result.map_err(Arc::new);
            drop(slot);
            for (_, answer) in batch {
                let _ = answer.send(result.clone());
            }
        });
    }
}

impl Outbox for BrokerOutbox {
    fn deliver(&self, delivery: Delivery) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let (answer, answered) = oneshot::channel();
            self.deliveries.send((delivery, answer)).map_err(|_| BrokerError::NotConnected)?;
            match answered.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(BrokerError::Shared(e)),
                Err(_) => Err(BrokerError::NotConnected),
            }
        })
    }

    fn announce(&self, event: Event) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move { self.broker.publish_routed_json(&event.status.routing_key(), &event, false).await })
    }

    fn reply(
        &self,
        to: String,
        correlation_id: Option<String>,
        reply: Reply,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let mut properties = json_properties();
            if let Some(id) = correlation_id {
                properties = properties.with_correlation_id(id.into());
            }
            let body = serde_json::to_vec(&reply).expect("replies serialize");
            self.broker.publish("", &to, &body, properties, false).await
        })
    }

    fn forward(&self, routing_key: String, message: Inbound) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let mut properties = json_properties();
            if let Some(reply_to) = message.reply_to {
                properties = properties.with_reply_to(reply_to.into());
            }
            if let Some(id) = message.correlation_id {
                properties = properties.with_correlation_id(id.into());
            }
            self.broker.publish_routed(&routing_key, message.owner.as_deref(), &message.body, properties, true).await
        })
    }

    fn submit(&self, submitted: Submitted) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let Submitted { routing_key, owner, body, timestamp } = submitted;
            let properties = json_properties().with_timestamp(timestamp);
            self.broker.publish_routed(&routing_key, owner.as_deref(), &body, properties, true).await
        })
    }
}

/// Everything an outbox was given, in order, as [`MemoryOutbox`] keeps it.
#[derive(Debug, Clone, PartialEq)]
pub enum Sent {
    /// A delivery.
    Delivery(Delivery),
    /// An event.
    Event(Event),
    /// A reply, to a queue.
    Reply(String, Reply),
    /// A forwarded request, with its routing key.
    Forward(String),
    /// A submitted request, with its routing key.
    Submit(String),
}

/// An outbox in memory: it keeps what it is given and can be told to fail.
#[derive(Default)]
pub struct MemoryOutbox {
    sent: Mutex<Vec<Sent>>,
    failing: AtomicBool,
}

impl MemoryOutbox {
    /// An empty outbox that accepts everything.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// From now on every call fails (`true`) or succeeds (`false`).
    pub fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// What was accepted so far.
    pub fn sent(&self) -> Vec<Sent> {
        self.sent.lock().expect("outbox lock").clone()
    }

    /// The deliveries accepted so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        let sent = self.sent();
        sent.into_iter().filter_map(|s| if let Sent::Delivery(d) = s { Some(d) } else { None }).collect()
    }

    /// The events accepted so far.
    pub fn events(&self) -> Vec<Event> {
        let sent = self.sent();
        sent.into_iter().filter_map(|s| if let Sent::Event(e) = s { Some(e) } else { None }).collect()
    }

    fn keep(&self, sent: Sent) -> BoxFuture<'_, Result<(), BrokerError>> {
        let result = if self.failing.load(Ordering::SeqCst) {
            Err(BrokerError::NotConnected)
        } else {
            self.sent.lock().expect("outbox lock").push(sent);
            Ok(())
        };
        Box::pin(std::future::ready(result))
    }
}

impl Outbox for MemoryOutbox {
    fn deliver(&self, delivery: Delivery) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.keep(Sent::Delivery(delivery))
    }

    fn announce(&self, event: Event) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.keep(Sent::Event(event))
    }

    fn reply(&self, to: String, _: Option<String>, reply: Reply) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.keep(Sent::Reply(to, reply))
    }

    fn forward(&self, routing_key: String, _: Inbound) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.keep(Sent::Forward(routing_key))
    }

    fn submit(&self, submitted: Submitted) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.keep(Sent::Submit(submitted.routing_key))
    }
}
