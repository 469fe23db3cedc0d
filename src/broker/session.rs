//! The supervised broker connection: connects (and reconnects) with backoff,
//! declares the topology, runs the consumers and offers confirmed publishing.
//! It seals what the service publishes on its internal exchange and refuses
//! (dead-letters) what arrives on an internal queue without a valid seal.

use crate::broker::{BrokerError, Disposition, Handler, Inbound, Topology};
use crate::config::BrokerConfig;
use crate::domain::{SealError, SealRing};
use crate::telemetry::names;
use backon::BackoffBuilder;
use futures_lite::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A queue and the handler of its messages.
#[derive(Clone)]
pub struct Subscription {
    /// Queue name.
    pub queue: String,
    /// What to do with each message.
    pub handler: Arc<dyn Handler>,
}

/// A process's link to RabbitMQ: shared by its workers and its HTTP routes.
pub struct Broker {
    url: String,
    name: String,
    prefetch: u16,
    topology: Topology,
    seal: SealRing,
    publisher: RwLock<Option<Channel>>,
    /// The connection the publisher channel belongs to (to reopen it).
    connection: RwLock<Option<Arc<Connection>>>,
    /// Held while a closed publisher channel is being replaced.
    reopening: tokio::sync::Mutex<()>,
    connected: AtomicBool,
    connected_notify: tokio::sync::Notify,
}

/// Properties of every message we publish: JSON, persistent.
pub fn json_properties() -> BasicProperties {
    BasicProperties::default().with_content_type("application/json".into()).with_delivery_mode(2)
}

/// How long a publish waits for a channel that lapin is still recovering.
const RECOVERY_GRACE: Duration = Duration::from_secs(5);

/// Waits (up to `limit`) while `channel` is reopening after a recovery.
async fn wait_until_open(channel: &Channel, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while channel.status().initializing() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Broker {
    /// A broker handle for the process `name` (shown in RabbitMQ's UI) that
    /// seals internal messages with `seal`. Nothing connects until [`Broker::run`].
    pub fn new(config: &BrokerConfig, name: &str, seal: SealRing) -> Arc<Self> {
        Self::for_shard(config, name, None, seal)
    }

    /// Like [`Broker::new`], for generator shard `shard` of `config.shards`.
    pub fn for_shard(config: &BrokerConfig, name: &str, shard: Option<u16>, seal: SealRing) -> Arc<Self> {
        Arc::new(Self {
            seal,
            url: config.url.clone(),
            // The prefix in the name tells tenants' connections apart in RabbitMQ's UI.
            name: if config.prefix.is_empty() { name.to_owned() } else { format!("{name} ({})", config.prefix) },
            prefetch: config.prefetch.max(1),
            topology: Topology::new(&config.prefix, config.queue_expires_ms)
                .quorum(config.queue_type == crate::config::QueueType::Quorum)
                .sharded(shard, config.shards),
            publisher: RwLock::new(None),
            connection: RwLock::new(None),
            reopening: tokio::sync::Mutex::new(()),
            connected: AtomicBool::new(false),
            connected_notify: tokio::sync::Notify::new(),
        })
    }

    /// The names this broker uses.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Whether a connection is up, the topology declared and the publisher
    /// channel open (the broker closes a channel on a channel-level error:
    /// until it is reopened this process cannot publish, so it is not ready).
    pub fn is_connected(&self) -> bool {
        let publishing = self.publisher.read().expect("publisher lock").as_ref().is_some_and(|c| {
            let status = c.status();
            status.connected() || status.initializing()
        });
        self.connected.load(Ordering::SeqCst) && publishing
    }

    /// The publisher channel, reopened on the same connection if the broker
    /// closed it (e.g. `PRECONDITION_FAILED` for one bad publish).
    async fn publisher(&self) -> Result<Channel, BrokerError> {
        let current = || self.publisher.read().expect("publisher lock").clone().ok_or(BrokerError::NotConnected);
        let channel = current()?;
        let usable = |c: &Channel| c.status().connected() || c.status().initializing();
        if usable(&channel) {
            return Ok(channel);
        }
        let _one_at_a_time = self.reopening.lock().await;
        let channel = current()?;
        if usable(&channel) {
            return Ok(channel); // Another task reopened it meanwhile.
        }
        let connection = self.connection.read().expect("connection lock").clone().ok_or(BrokerError::NotConnected)?;
        let fresh = connection.create_channel().await?;
        fresh.confirm_select(ConfirmSelectOptions::default()).await?;
        tracing::warn!("the broker closed the publishing channel; reopened it");
        metrics::counter!(names::BROKER_RECONNECTS).increment(1);
        *self.publisher.write().expect("publisher lock") = Some(fresh.clone());
        // A channel opened on it: the connection is up (lapin may have
        // reported the channel's error as the connection's).
        self.set_connected(true);
        Ok(fresh)
    }

    /// Waits until connected, at most `timeout`. Returns whether it is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.connected_notify.notified();
                if self.is_connected() {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    fn set_publisher(&self, channel: Option<Channel>) {
        let up = channel.is_some();
        if !up {
            *self.connection.write().expect("connection lock") = None;
        }
        *self.publisher.write().expect("publisher lock") = channel;
        self.set_connected(up);
    }

    fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::SeqCst);
        metrics::gauge!(names::BROKER_CONNECTED).set(if up { 1.0 } else { 0.0 });
        self.connected_notify.notify_waiters();
    }

    /// Publishes `body` and waits for the broker's confirm. With `mandatory`,
    /// a message no queue is bound for is an error instead of silently lost.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), BrokerError> {
        let channel = self.publisher().await?;
        // Just after lapin recovered the connection, the channel may still be reopening.
        wait_until_open(&channel, RECOVERY_GRACE).await;
        let options = BasicPublishOptions { mandatory, ..Default::default() };
        let published = async {
            let confirm =
                channel.basic_publish(exchange.into(), routing_key.into(), options, body, properties).await?.await?;
            match confirm {
                Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
                Confirmation::Ack(Some(_)) => Err(BrokerError::NotConfirmed("no queue is bound for it")),
                Confirmation::Nack(_) => Err(BrokerError::NotConfirmed("nack")),
            }
        }
        .await;
        if published.is_err() && !channel.status().connected() && !channel.status().initializing() {
            // The broker closed the channel over this publish: reopen it now,
            // not at the next publish (readiness depends on it).
            if let Err(e) = self.publisher().await {
                tracing::warn!(error = %e, "could not reopen the publishing channel");
            }
        }
        published
    }

    /// Serializes `value` as JSON and publishes it persistently with a confirm.
    pub async fn publish_json<T: Serialize>(
        &self,
        exchange: &str,
        routing_key: &str,
        value: &T,
        mandatory: bool,
    ) -> Result<(), BrokerError> {
        let body = serde_json::to_vec(value).expect("message types always serialize");
        self.publish(exchange, routing_key, &body, json_properties(), mandatory).await
    }

    /// Publishes `body` with `routing_key` where the service publishes it
    /// ([`Topology::exchange_for`]): requests to the public exchange, all else
    /// to the internal one, sealed (header `x-otp-seal`). A request made with
    /// a scoped API key carries its application in `x-otp-owner`, sealed too.
    pub async fn publish_routed(
        &self,
        routing_key: &str,
        owner: Option<&str>,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), BrokerError> {
        let exchange = self.topology.exchange_for(routing_key);
        let properties = if exchange == self.topology.internal || owner.is_some() {
            let mut headers = properties.headers().clone().unwrap_or_default();
            let seal = self.seal.seal(routing_key, owner, body);
            headers.insert(ShortString::from(Topology::SEAL_HEADER), AMQPValue::LongString(seal.into()));
            if let Some(owner) = owner {
                headers.insert(ShortString::from(Topology::OWNER_HEADER), AMQPValue::LongString(owner.into()));
            }
            properties.with_headers(headers)
        } else {
            properties
        };
        self.publish(exchange, routing_key, body, properties, mandatory).await
    }

    /// Serializes `value` as JSON and publishes it like [`Broker::publish_routed`].
    pub async fn publish_routed_json<T: Serialize>(
        &self,
        routing_key: &str,
        value: &T,
        mandatory: bool,
    ) -> Result<(), BrokerError> {
        let body = serde_json::to_vec(value).expect("message types always serialize");
        self.publish_routed(routing_key, None, &body, json_properties(), mandatory).await
    }

    /// Whether a message taken from `queue` may be handled, and the owner it
    /// vouches for: on an internal queue it must carry a valid seal; on the
    /// public one, only a message that names an owner must.
    fn check_seal(&self, queue: &str, delivery: &lapin::message::Delivery) -> Result<Option<String>, SealError> {
        let header = |name: &str| {
            delivery.properties.headers().as_ref().and_then(|h| match h.inner().get(name) {
                Some(AMQPValue::LongString(s)) => std::str::from_utf8(s.as_bytes()).ok().map(str::to_owned),
                Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_owned()),
                _ => None,
            })
        };
        let owner = header(Topology::OWNER_HEADER);
        if !self.topology.is_internal(queue) && owner.is_none() {
            return Ok(None);
        }
        let seal = header(Topology::SEAL_HEADER);
        self.seal.open(delivery.routing_key.as_str(), owner.as_deref(), &delivery.data, seal.as_deref())?;
        Ok(owner)
    }

    async fn open(&self) -> Result<Arc<Connection>, BrokerError> {
        let properties =
            ConnectionProperties::default().with_connection_name(self.name.as_str().into()).enable_auto_recover();
        let connection = Arc::new(Connection::connect(&self.url, properties).await?);
        let publisher = connection.create_channel().await?;
        publisher.confirm_select(ConfirmSelectOptions::default()).await?;
        self.topology.declare(&publisher).await?;
        *self.connection.write().expect("connection lock") = Some(connection.clone());
        self.set_publisher(Some(publisher));
        Ok(connection)
    }

    /// Connects, runs `subscriptions` until `shutdown`, and rebuilds the
    /// connection whenever it is lost. On shutdown: stops consuming, lets
    /// in-flight messages finish and settle, then closes the connection.
    /// Returns an error only for what no retry can cure: the broker refused
    /// the topology (`PRECONDITION_FAILED`, e.g. a queue declared with other
    /// arguments) or this user's rights (`ACCESS_REFUSED`).
    pub async fn run(
        self: Arc<Self>,
        subscriptions: Vec<Subscription>,
        shutdown: CancellationToken,
    ) -> Result<(), BrokerError> {
        let backoff = || {
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(5))
                .with_jitter()
                .without_max_times()
                .build()
        };
        let mut delays = backoff();
        let mut connected_before = false;
        metrics::gauge!(names::BROKER_CONNECTED).set(0.0);
        while !shutdown.is_cancelled() {
            let opened = tokio::select! {
                _ = shutdown.cancelled() => break,
                opened = self.open() => opened,
            };
            let connection = match opened {
                Ok(c) => c,
                Err(e) if is_permanent(&e) => {
                    tracing::error!(error = %e, "RabbitMQ refused this process's topology or rights; stopping");
                    self.set_publisher(None);
                    return Err(e);
                }
                Err(e) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(error = %e, retry_in = ?delay, url = %redact_url(&self.url), "cannot reach RabbitMQ");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            if connected_before {
                metrics::counter!(names::BROKER_RECONNECTS).increment(1);
                tracing::info!("reconnected to RabbitMQ");
            } else {
                tracing::info!(url = %redact_url(&self.url), "connected to RabbitMQ");
            }
            connected_before = true;
            delays = backoff();
            let watcher = tokio::spawn(self.clone().watch(connection.events_listener()));
            let tracker = TaskTracker::new();
            let result = self.clone().consume_all(&connection, &subscriptions, &tracker, &shutdown).await;
            // In-flight messages settle on this connection before it goes.
            tracker.close();
            tracker.wait().await;
            watcher.abort();
            self.set_publisher(None);
            let _ = connection.close(200, "bye".into()).await;
            match result {
                Ok(()) => break,
                Err(e) => tracing::warn!(error = %e, "lost the RabbitMQ connection; reconnecting"),
            }
        }
        self.set_publisher(None);
        Ok(())
    }

    /// Follows lapin's own recovery: readiness drops while the connection is
    /// down and each recovery counts as a reconnect.
    async fn watch(self: Arc<Self>, mut events: impl futures_lite::Stream<Item = lapin::Event> + Unpin) {
        while let Some(event) = events.next().await {
            match event {
                lapin::Event::Connected => {
                    metrics::counter!(names::BROKER_RECONNECTS).increment(1);
                    // Ready again once publishing works, not merely the connection.
                    let publisher = self.publisher.read().expect("publisher lock").clone();
                    if let Some(channel) = publisher {
                        wait_until_open(&channel, RECOVERY_GRACE).await;
                    }
                    tracing::info!("RabbitMQ connection recovered");
                    self.set_connected(true);
                }
                lapin::Event::Error(e) => {
                    tracing::warn!(error = %e, "RabbitMQ connection error; recovering");
                    self.set_connected(false);
                }
                lapin::Event::ConnectionBlocked(reason) => {
                    tracing::warn!(%reason, "RabbitMQ blocked this connection")
                }
                _ => {}
            }
        }
    }

    async fn consume_all(
        self: Arc<Self>,
        connection: &Connection,
        subscriptions: &[Subscription],
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Result<(), BrokerError> {
        let mut loops = JoinSet::new();
        for sub in subscriptions {
            let channel = connection.create_channel().await?;
            channel.basic_qos(self.prefetch, BasicQosOptions::default()).await?;
            let tag = format!("{}-{}", self.name, uuid::Uuid::new_v4());
            let consumer = channel
                .basic_consume(
                    sub.queue.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            loops.spawn(self.clone().consume(channel, consumer, sub.clone(), tag, tracker.clone(), shutdown.clone()));
        }
        // The first loop to end decides: shutdown (Ok) or a lost connection (Err).
        let first = loops.join_next().await.map(|r| r.unwrap_or(Err(BrokerError::NotConnected)));
        if first.as_ref().is_some_and(|r| r.is_err()) {
            loops.abort_all();
        }
        while loops.join_next().await.is_some() {}
        first.unwrap_or(Ok(()))
    }

    async fn consume(
        self: Arc<Self>,
        channel: Channel,
        mut consumer: lapin::Consumer,
        subscription: Subscription,
        tag: String,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<(), BrokerError> {
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                    return Ok(());
                }
                next = consumer.next() => next,
            };
            match next {
                None => return Err(BrokerError::NotConnected),
                Some(Err(e)) => {
                    // lapin's own recovery first; if it cannot, the supervisor reconnects.
                    channel.wait_for_recovery(e).await?;
                    tracing::info!("RabbitMQ channel recovered");
                }
                Some(Ok(delivery)) => {
                    let broker = self.clone();
                    let handler = subscription.handler.clone();
                    let sealed = self.check_seal(&subscription.queue, &delivery);
                    tracker.spawn(async move {
                        let disposition = match sealed {
                            Ok(owner) => {
                                let handled = handler.handle(Inbound { owner, ..Inbound::from(&delivery) });
                                // A bug in a handler must not leave its message unsettled.
                                std::panic::AssertUnwindSafe(handled).catch_unwind().await.unwrap_or_else(|panic| {
                                    let error = crate::supervisor::panic_text(panic.as_ref());
                                    tracing::error!(error, "a message handler panicked");
                                    Disposition::DeadLetter { reason: "handler_panicked", error }
                                })
                            }
                            // Forged or from another deployment: never handled.
                            Err(e) => Disposition::DeadLetter { reason: "unsealed", error: e.to_string() },
                        };
                        broker.settle(delivery, disposition).await;
                    });
                }
            }
        }
    }

    /// Publishes `body` to the dead-letter exchange with the reason in
    /// `x-otp-error` / `x-otp-reason` (counted and logged), confirmed.
    pub async fn dead_letter(
        &self,
        routing_key: &str,
        body: &[u8],
        reason: &'static str,
        error: &str,
    ) -> Result<(), BrokerError> {
        self.dead_letter_with(routing_key, body, json_properties(), reason, error).await
    }

    async fn dead_letter_with(
        &self,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        reason: &'static str,
        error: &str,
    ) -> Result<(), BrokerError> {
        metrics::counter!(names::DEAD_LETTERS, "reason" => reason).increment(1);
        let error = bounded(error, MAX_ERROR_BYTES);
        tracing::warn!(reason, error = %error, routing_key, "dead-lettering a message");
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(ShortString::from(Topology::ERROR_HEADER), AMQPValue::LongString(LongString::from(error)));
        headers.insert(ShortString::from(Topology::REASON_HEADER), AMQPValue::LongString(LongString::from(reason)));
        let properties = properties.with_headers(headers).with_delivery_mode(2);
        let dlx = self.topology.dlx.clone();
        self.publish(&dlx, routing_key, body, properties, true).await
    }

    async fn settle(&self, delivery: lapin::message::Delivery, disposition: Disposition) {
        let result = match disposition {
            Disposition::Ack => delivery.ack(BasicAckOptions::default()).await,
            Disposition::Retry { after } => {
                tokio::time::sleep(after).await;
                delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await
            }
            Disposition::DeadLetter { reason, error } => {
                let properties = dead_letter_properties(&delivery.properties);
                match self
                    .dead_letter_with(delivery.routing_key.as_str(), &delivery.data, properties, reason, &error)
                    .await
                {
                    Ok(()) => delivery.ack(BasicAckOptions::default()).await,
                    Err(e) => {
                        // The queue's own dead-letter route still keeps it.
                        tracing::warn!(error = %e, "could not publish to the dead-letter exchange; rejecting instead");
                        delivery.reject(BasicRejectOptions { requeue: false }).await
                    }
                }
            }
        };
        if let Err(e) = result {
            // The channel is gone; the broker redelivers the message, and
            // every handler is idempotent.
            tracing::warn!(error = %e, "could not settle a message; it will be redelivered");
        }
    }
}

/// Whether `e` is one no reconnect can cure: the broker refused a declare
/// or a permission (channel-level 406 or 403).
fn is_permanent(e: &BrokerError) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    let BrokerError::Amqp(e) = e else { return false };
    let lapin::ErrorKind::ProtocolError(amqp) = e.kind() else { return false };
    matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED | AMQPSoftError::ACCESSREFUSED))
}

/// Headers of a message larger than this (as encoded, about) are not copied
/// into its dead-lettered copy: the copy must fit one frame with our own
/// headers added, whatever the sender put in.
pub const MAX_COPIED_HEADER_BYTES: usize = 8 * 1024;

/// The properties a dead-lettered copy keeps of the original: its content
/// type and encoding, ids, timestamp and type, and its headers if small.
/// Never `user_id` (RabbitMQ checks it against the user who publishes the
/// copy), `expiration` (the copy must not vanish), `priority` or `reply_to`.
pub fn dead_letter_properties(original: &BasicProperties) -> BasicProperties {
    let mut copy = json_properties();
    if let Some(v) = original.content_type() {
        copy = copy.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        copy = copy.with_content_encoding(v.clone());
    }
    if let Some(v) = original.correlation_id() {
        copy = copy.with_correlation_id(v.clone());
    }
    if let Some(v) = original.message_id() {
        copy = copy.with_message_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        copy = copy.with_timestamp(*v);
    }
    if let Some(v) = original.kind() {
        copy = copy.with_type(v.clone());
    }
    let mut headers = FieldTable::default();
    if let Some(original) = original.headers() {
        if table_bytes(original) <= MAX_COPIED_HEADER_BYTES {
            headers = original.clone();
        } else {
            headers.insert(ShortString::from(Topology::HEADERS_DROPPED_HEADER), AMQPValue::Boolean(true));
        }
    }
    copy.with_headers(headers)
}

/// Longest `x-otp-error` text.
const MAX_ERROR_BYTES: usize = 1024;

/// `text` cut to at most `max` bytes, on a character boundary.
fn bounded(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// About how many bytes `table` takes on the wire.
fn table_bytes(table: &FieldTable) -> usize {
    table.inner().iter().map(|(k, v)| 1 + k.as_str().len() + value_bytes(v)).sum::<usize>() + 4
}

fn value_bytes(value: &AMQPValue) -> usize {
    1 + match value {
        AMQPValue::ShortString(s) => 1 + s.as_str().len(),
        AMQPValue::LongString(s) => 4 + s.as_bytes().len(),
        AMQPValue::ByteArray(b) => 4 + b.as_slice().len(),
        AMQPValue::FieldTable(t) => table_bytes(t),
        AMQPValue::FieldArray(a) => 4 + a.as_slice().iter().map(value_bytes).sum::<usize>(),
        _ => 8,
    }
}

/// The URL with any password replaced, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(super::redact_url("amqp://guest:secret@127.0.0.1:5672/%2f"), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(super::redact_url("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }
}
