//! A message handler that panics does not take its message with it: the
//! consumer dead-letters it (`handler_panicked`) and keeps consuming.

mod common;

use otp_pipeline::broker::{BoxFuture, Broker, Disposition, Handler, Inbound, Subscription, Topology};
use otp_pipeline::config::BrokerConfig;
use otp_pipeline::domain::{SealKey, SealRing};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio_util::sync::CancellationToken;

/// Panics on a body of `panic`, acks anything else.
struct Fragile(AtomicUsize);

impl Handler for Fragile {
    fn handle(&self, message: Inbound) -> BoxFuture<'_, Disposition> {
        Box::pin(async move {
            if message.body == b"panic" {
                panic!("a bug in the handler");
            }
            self.0.fetch_add(1, Ordering::SeqCst);
            Disposition::Ack
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_dead_letters_its_message_and_consuming_goes_on() {
    common::require_rabbitmq().await;
    let prefix = format!("t-{}.", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let config = BrokerConfig {
        url: common::amqp_url(),
        prefix: prefix.clone(),
        queue_expires_ms: Some(300_000),
        ..Default::default()
    };
    let seal = SealRing::new(SealKey::new(vec![9; 32]).unwrap(), vec![]);
    let broker = Broker::new(&config, "supervision-test", seal);
    let topology = broker.topology().clone();
    let handler = Arc::new(Fragile(AtomicUsize::new(0)));
    let subscriptions = vec![Subscription { queue: topology.requests.clone(), handler: handler.clone() }];
    let stop = CancellationToken::new();
    let running = tokio::spawn(broker.clone().run(subscriptions, stop.clone()));
    assert!(broker.wait_connected(std::time::Duration::from_secs(15)).await);
    let (connection, channel) = common::open_channel().await;
    for body in [b"panic".as_slice(), b"fine"] {
        let exchange = topology.exchange.as_str();
        let properties = lapin::BasicProperties::default();
        channel
            .basic_publish(exchange.into(), Topology::REQUEST_KEY.into(), Default::default(), body, properties)
            .await
            .unwrap();
    }
    let _ = connection.close(200, "bye".into()).await;
    let handled = common::eventually(|| async { (handler.0.load(Ordering::SeqCst) == 1).then_some(()) }).await;
    assert!(handled.is_some(), "the next message is handled");
    let dead = common::eventually(|| async { Some(dead_letters(&topology).await).filter(|d| !d.is_empty()) })
        .await
        .expect("the panicking message is dead-lettered");
    assert_eq!(dead, [(b"panic".to_vec(), "handler_panicked".to_owned())]);
    stop.cancel();
    running.await.unwrap().unwrap();
    common::delete_topology(&topology).await;
}

async fn dead_letters(topology: &Topology) -> Vec<(Vec<u8>, String)> {
    let (connection, channel) = common::open_channel().await;
    let mut out = Vec::new();
    let options = lapin::options::BasicGetOptions { no_ack: true };
    while let Some(m) = channel.basic_get(topology.dead.as_str().into(), options).await.unwrap() {
        let reason =
            m.delivery.properties.headers().as_ref().and_then(|h| h.inner().get(Topology::REASON_HEADER).cloned());
        let reason = match reason {
            Some(lapin::types::AMQPValue::LongString(s)) => s.to_string(),
            other => format!("{other:?}"),
        };
        out.push((m.delivery.data.clone(), reason));
    }
    let _ = connection.close(200, "bye".into()).await;
    out
}
