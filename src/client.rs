//! A minimal producer, as other systems would write one: publishes a request
//! to the exchange and waits for the generator's reply on a private queue.
//! Used by the `publish` command and by the tests.

use crate::broker::{BrokerError, Topology, json_properties};
use crate::domain::{RawRequest, Reply};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Confirmation, Connection, ConnectionProperties};
use std::time::Duration;

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The broker failed or refused the message.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// No reply came in time (is a generator running?).
    #[error("no reply within {0:?}: is a generator running?")]
    Timeout(Duration),
    /// The reply was not valid JSON.
    #[error("unreadable reply: {0}")]
    BadReply(String),
}

impl From<lapin::Error> for ClientError {
    fn from(e: lapin::Error) -> Self {
        Self::Broker(BrokerError::Amqp(e))
    }
}

/// Publishes raw bytes as a request (confirmed, persistent) and, if `wait`
/// is given, waits that long for the reply.
pub async fn publish_bytes(
    url: &str,
    topology: &Topology,
    body: &[u8],
    wait: Option<Duration>,
) -> Result<Option<Reply>, ClientError> {
    publish_with_key(url, topology, Topology::REQUEST_KEY, body, wait).await
}

async fn publish_with_key(
    url: &str,
    topology: &Topology,
    routing_key: &str,
    body: &[u8],
    wait: Option<Duration>,
) -> Result<Option<Reply>, ClientError> {
    let connection =
        Connection::connect(url, ConnectionProperties::default().with_connection_name("otp-publish".into())).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut properties = json_properties();
    let mut replies = None;
    if wait.is_some() {
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
                FieldTable::default(),
            )
            .await?;
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "otp-publish".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        properties = properties.with_reply_to(queue.name().clone()).with_correlation_id("otp-publish".into());
        replies = Some(consumer);
    }
    let confirm = channel
        .basic_publish(
            topology.exchange.as_str().into(),
            routing_key.into(),
            BasicPublishOptions { mandatory: true, ..Default::default() },
            body,
            properties,
        )
        .await?
        .await?;
    match confirm {
        Confirmation::Ack(Some(_)) => {
            return Err(BrokerError::NotConfirmed("no queue is bound for it: is the generator set up?").into());
        }
        Confirmation::Nack(_) => return Err(BrokerError::NotConfirmed("nack").into()),
        _ => {}
    }
    let reply = match (replies, wait) {
        (Some(mut consumer), Some(wait)) => {
            let delivery = tokio::time::timeout(wait, consumer.next()).await.map_err(|_| ClientError::Timeout(wait))?;
            let delivery = delivery.ok_or(ClientError::Timeout(wait))??;
            delivery.ack(BasicAckOptions::default()).await?;
            Some(serde_json::from_slice(&delivery.data).map_err(|e| ClientError::BadReply(e.to_string()))?)
        }
        _ => None,
    };
    let _ = connection.close(200, "bye".into()).await;
    Ok(reply)
}

/// Publishes `request` and waits up to `wait` for the reply. With a sharded
/// `topology`, a valid number goes straight to its owner (`request.<shard>`).
pub async fn publish(
    url: &str,
    topology: &Topology,
    request: &RawRequest,
    wait: Option<Duration>,
) -> Result<Option<Reply>, ClientError> {
    let body = serde_json::to_vec(request).expect("requests serialize");
    let key = match crate::domain::Phone::parse(&request.phone) {
        Ok(phone) => topology.request_key_for(phone.e164()),
        // The generator will reject it; any shard can.
        Err(_) => Topology::REQUEST_KEY.to_owned(),
    };
    publish_with_key(url, topology, &key, &body, wait).await
}
