//! The raw broker baseline of the load harness: a plain two-hop relay on the
//! same RabbitMQ, with none of the pipeline's work in it.
//!
//! ```text
//! producer ──publish + confirm──▶ queue A ──▶ relay ──publish + confirm──▶ queue B ──▶ sink
//!          (window of unconfirmed)        (acks A after B's confirm)        (manual acks)
//! ```
//!
//! Every message is persistent (delivery mode 2) on durable queues, as in the
//! pipeline; the relay and the sink consume with the same prefetch as the
//! pipeline's consumers (`broker.prefetch`), and the relay handles each
//! message in its own task, acking A only once B confirmed, as the generator
//! does. The queues have a private, unique prefix and `x-expires`, and are
//! deleted at the end. What it measures is what a good producer/consumer pair
//! gets from this broker on this machine: the denominator of the pipeline's
//! throughput target.

use futures_lite::StreamExt;
use hdrhistogram::Histogram;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Why the relay run failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// RabbitMQ failed.
    #[error("AMQP: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker refused a message.
    #[error("the broker did not accept a message (nack)")]
    Nacked,
    /// Messages stopped arriving.
    #[error("relay stalled: {received} of {expected} messages arrived, nothing for {idle:?}")]
    Stalled {
        /// Arrived at B.
        received: usize,
        /// Published to A.
        expected: usize,
        /// How long nothing arrived.
        idle: Duration,
    },
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Messages to push through both hops.
    pub messages: usize,
    /// Size of each message body, bytes (at least 8: a timestamp leads it).
    pub message_bytes: usize,
    /// Unacknowledged messages each consumer holds (the pipeline's `broker.prefetch`).
    pub prefetch: u16,
    /// Publishes awaiting their confirm at once (producer side).
    pub publish_window: usize,
    /// Offered load, messages per second; `None`: as fast as confirms allow.
    pub rate: Option<u32>,
}

/// The figures of one relay run.
#[derive(Debug, Clone)]
pub struct RelayReport {
    /// The options of the run.
    pub options: RelayOptions,
    /// Messages consumed at B.
    pub received: usize,
    /// First publish → last message consumed at B.
    pub elapsed: Duration,
    /// `received / elapsed`.
    pub messages_per_sec: f64,
    /// Publish (at the producer) → consumed at B, microseconds.
    pub latency_us: Histogram<u64>,
}

impl RelayReport {
    /// p50 / p90 / p99 / max of the end-to-end latency, milliseconds.
    pub fn latency_ms(&self) -> [f64; 4] {
        let h = &self.latency_us;
        let ms = |us: u64| us as f64 / 1000.0;
        [ms(h.value_at_quantile(0.5)), ms(h.value_at_quantile(0.9)), ms(h.value_at_quantile(0.99)), ms(h.max())]
    }
}

impl std::fmt::Display for RelayReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = &self.options;
        let offered = o.rate.map_or("as fast as confirms allow".to_owned(), |r| format!("{r}/s"));
        let [p50, p90, p99, max] = self.latency_ms();
        write!(
            f,
            "relay baseline: {} × {} B persistent, 2 confirmed hops, prefetch {} ({offered}): {:.0} msg/s over {:.2} s; \
             publish → consumed at B p50 / p90 / p99 / max {p50:.2} / {p90:.2} / {p99:.2} / {max:.2} ms",
            self.received,
            o.message_bytes,
            o.prefetch,
            self.messages_per_sec,
            self.elapsed.as_secs_f64()
        )
    }
}

/// Microseconds from 1 µs to 10 minutes, 3 significant figures.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_content_type("application/octet-stream".into()).with_delivery_mode(2)
}

async fn confirmed(confirm: impl Future<Output = lapin::Result<Confirmation>>) -> Result<(), RelayError> {
    match confirm.await? {
        Confirmation::Nack(_) => Err(RelayError::Nacked),
        _ => Ok(()),
    }
}

/// How long the sink waits without a message before it gives up.
const STALL: Duration = Duration::from_secs(30);

/// Runs the relay against the broker at `url`; the queues are private to
/// the run and gone afterwards (also if it dies: `x-expires`).
pub async fn run(url: &str, options: RelayOptions) -> Result<RelayReport, RelayError> {
    let prefix = format!("relay-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (queue_a, queue_b) = (format!("{prefix}.a"), format!("{prefix}.b"));
    let props = |name: &str| ConnectionProperties::default().with_connection_name(name.into());
    // Three connections, as three processes would have: producer, relay, sink.
    let producer = Connection::connect(url, props("otp-bench relay producer")).await?;
    let relay = Connection::connect(url, props("otp-bench relay")).await?;
    let sink = Connection::connect(url, props("otp-bench relay sink")).await?;

    let setup = producer.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(ShortString::from("x-expires"), AMQPValue::LongUInt(120_000));
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    for q in [&queue_a, &queue_b] {
        setup.queue_declare(q.as_str().into(), durable, args.clone()).await?;
    }

    let started = Instant::now();
    let result = relay_run(&producer, &relay, &sink, &queue_a, &queue_b, &options, started).await;

    for q in [&queue_a, &queue_b] {
        let _ = setup.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await;
    }
    for c in [&producer, &relay, &sink] {
        let _ = c.close(200, "bye".into()).await;
    }
    let (received, last, latency_us) = result?;
    let elapsed = last.saturating_duration_since(started);
    Ok(RelayReport {
        received,
        elapsed,
        messages_per_sec: received as f64 / elapsed.as_secs_f64().max(1e-9),
        latency_us,
        options,
    })
}

async fn relay_run(
    producer: &Connection,
    relay: &Connection,
    sink: &Connection,
    queue_a: &str,
    queue_b: &str,
    options: &RelayOptions,
    started: Instant,
) -> Result<(usize, Instant, Histogram<u64>), RelayError> {
    let prefetch = options.prefetch.max(1);
    let relaying = spawn_relay(relay, queue_a, queue_b, prefetch).await?;
    let sinking = spawn_sink(sink, queue_b, prefetch, options.messages, started).await?;
    // The producer: paced or not, confirms pipelined within a window.
    let channel = producer.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let published = publish(&channel, queue_a, options, started).await;
    let sunk = match published {
        Ok(()) => sinking.await.unwrap_or(Err(RelayError::Nacked)),
        Err(e) => {
            sinking.abort();
            Err(e)
        }
    };
    relaying.abort();
    sunk
}

/// The relay: consumes A, publishes each message to B, acks A once B confirmed.
async fn spawn_relay(
    relay: &Connection,
    queue_a: &str,
    queue_b: &str,
    prefetch: u16,
) -> Result<tokio::task::JoinHandle<()>, RelayError> {
    let relay_in = relay.create_channel().await?;
    relay_in.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let relay_out = relay.create_channel().await?;
    relay_out.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut from_a = relay_in
        .basic_consume(queue_a.into(), "relay".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let queue_b_name = queue_b.to_owned();
    Ok(tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        while let Some(delivery) = from_a.next().await {
            let Ok(delivery) = delivery else { break };
            let (out, queue) = (relay_out.clone(), queue_b_name.clone());
            tasks.spawn(async move {
                let confirm = out
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &delivery.data,
                        persistent(),
                    )
                    .await?;
                confirmed(confirm).await?;
                delivery.ack(BasicAckOptions::default()).await?;
                Ok::<(), RelayError>(())
            });
            // Reap finished tasks so the set does not grow with the run.
            while let Some(done) = tasks.try_join_next() {
                if let Ok(Err(e)) = done {
                    tracing::warn!(error = %e, "relay hop failed");
                }
            }
        }
    }))
}

/// The sink: consumes B with manual acks, timestamping each message, until
/// `expected` came (or it stalls).
async fn spawn_sink(
    sink: &Connection,
    queue_b: &str,
    prefetch: u16,
    expected: usize,
    started: Instant,
) -> Result<tokio::task::JoinHandle<Result<(usize, Instant, Histogram<u64>), RelayError>>, RelayError> {
    let sink_in = sink.create_channel().await?;
    sink_in.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut from_b = sink_in
        .basic_consume(queue_b.into(), "sink".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    Ok(tokio::spawn(async move {
        let mut latency = histogram();
        let mut received = 0usize;
        let mut last = started;
        while received < expected {
            let next = match tokio::time::timeout(STALL, from_b.next()).await {
                Ok(Some(Ok(delivery))) => delivery,
                Ok(_) => break,
                Err(_) => return Err(RelayError::Stalled { received, expected, idle: STALL }),
            };
            let now = Instant::now();
            let sent_us = next.data.get(..8).map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
            let now_us = u64::try_from(now.duration_since(started).as_micros()).unwrap_or(u64::MAX);
            latency.saturating_record(now_us.saturating_sub(sent_us).max(1));
            received += 1;
            last = now;
            next.ack(BasicAckOptions::default()).await?;
        }
        Ok((received, last, latency))
    }))
}

async fn publish(channel: &Channel, queue: &str, options: &RelayOptions, started: Instant) -> Result<(), RelayError> {
    let mut body = vec![b'x'; options.message_bytes.max(8)];
    let mut pending = VecDeque::with_capacity(options.publish_window.max(1));
    for i in 0..options.messages {
        if let Some(rate) = options.rate {
            let due = started + Duration::from_secs_f64(i as f64 / f64::from(rate.max(1)));
            tokio::time::sleep_until(due.into()).await;
        }
        let now_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        body[..8].copy_from_slice(&now_us.to_le_bytes());
        let confirm =
            channel.basic_publish("".into(), queue.into(), BasicPublishOptions::default(), &body, persistent()).await?;
        pending.push_back(confirm);
        while pending.len() >= options.publish_window.max(1) {
            if let Some(c) = pending.pop_front() {
                confirmed(c).await?;
            }
        }
    }
    for c in pending {
        confirmed(c).await?;
    }
    Ok(())
}
