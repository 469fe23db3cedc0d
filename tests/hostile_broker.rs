//! The broker is a trust boundary: what a producer can put in a message's
//! properties must not stop the generator. A malformed request whose AMQP
//! properties would break a naive dead-letter copy (a `user_id`, headers
//! near the frame size) is dead-lettered once, and issuance goes on.

mod common;

use common::{PHONE, TestEnv};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use otp_pipeline::broker::Topology;

/// Publishes `body` on the request key with `properties`, confirmed, as the
/// restricted producer user (not the service's).
async fn publish_request(env: &TestEnv, body: &[u8], properties: BasicProperties) {
    let connection = lapin::Connection::connect(&common::producer_url(), Default::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    let confirm = channel
        .basic_publish(
            env.topology.exchange.as_str().into(),
            Topology::REQUEST_KEY.into(),
            Default::default(),
            body,
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    let _ = connection.close(200, "bye".into()).await;
}

/// The generator's value of a metric series, from its `/metrics`.
async fn metric(env: &TestEnv, series: &str) -> f64 {
    let text = reqwest::get(env.url("/metrics")).await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(series)).map_or(0.0, |v| v.trim().parse().unwrap())
}

/// After the poison message: the generator is ready, and a good request is
/// issued and delivered.
async fn issuance_goes_on(env: &TestEnv, request_id: &str) {
    assert_eq!(reqwest::get(env.url("/readyz")).await.unwrap().status(), 200, "ready");
    let reply = env.publish(&env.request(request_id)).await;
    assert_eq!(reply.status, otp_pipeline::domain::ReplyStatus::Accepted);
    let code = env.code_for(request_id).await;
    assert_eq!(env.verify(PHONE, &code).await.0, 200);
}

async fn dead_letter(env: &TestEnv) -> (Vec<u8>, String, String) {
    let dead = common::eventually(|| async { Some(env.dead_letters().await).filter(|d| !d.is_empty()) }).await;
    let mut dead = dead.expect("a dead letter");
    assert_eq!(dead.len(), 1, "dead-lettered once");
    dead.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_carrying_user_id_is_dead_lettered_and_issuance_goes_on() {
    let env = TestEnv::start().await;
    // A normal, broker-validated property: the user who published it (not the
    // user the generator publishes a dead-letter copy as).
    let user = ShortString::from(common::PRODUCER_USER);
    let properties = BasicProperties::default().with_user_id(user).with_delivery_mode(2);
    publish_request(&env, b"{not json", properties).await;
    let (body, _, reason) = dead_letter(&env).await;
    assert_eq!((body.as_slice(), reason.as_str()), (b"{not json".as_slice(), "malformed_json"));
    issuance_goes_on(&env, "after-user-id").await;
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_with_headers_near_the_frame_size_is_dead_lettered_once() {
    let env = TestEnv::start().await;
    let reconnects = metric(&env, "otp_broker_reconnects_total ").await;
    let mut headers = FieldTable::default();
    let filler = LongString::from("x".repeat(126 * 1024));
    headers.insert(ShortString::from("x-filler"), AMQPValue::LongString(filler));
    let properties = BasicProperties::default().with_headers(headers).with_delivery_mode(2);
    publish_request(&env, b"[1, 2, 3]", properties).await;
    let (connection, channel) = common::open_channel().await;
    let message = common::eventually(|| async {
        channel
            .basic_get(env.topology.dead.as_str().into(), lapin::options::BasicGetOptions { no_ack: true })
            .await
            .unwrap()
    })
    .await
    .expect("a dead letter");
    let headers = message.delivery.properties.headers().clone().unwrap_or_default();
    assert!(!headers.contains_key("x-filler"), "the oversized headers are not copied");
    assert_eq!(headers.inner().get(Topology::HEADERS_DROPPED_HEADER), Some(&AMQPValue::Boolean(true)));
    assert_eq!(message.delivery.data, b"[1, 2, 3]");
    let _ = connection.close(200, "bye".into()).await;
    issuance_goes_on(&env, "after-big-headers").await;
    assert_eq!(metric(&env, "otp_broker_reconnects_total ").await, reconnects, "no reconnect loop");
    assert!(env.dead_letters().await.is_empty(), "it came back no more");
    env.teardown().await;
}

/// Someone deleted the dead-letter exchange: the copy's publish is refused
/// (404, which closes the publishing channel). The message goes to the
/// queue's own dead-letter route, the channel is reopened, and issuance and
/// readiness come back by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_dead_letter_exchange_does_not_stop_issuance() {
    let env = TestEnv::start().await;
    let (connection, channel) = common::open_channel().await;
    channel.exchange_delete(env.topology.dlx.as_str().into(), Default::default()).await.unwrap();
    let _ = connection.close(200, "bye".into()).await;
    publish_request(&env, b"{not json", BasicProperties::default().with_delivery_mode(2)).await;
    let ready = common::eventually(|| async {
        let status = reqwest::get(env.url("/readyz")).await.unwrap().status();
        let reopened = metric(&env, "otp_broker_reconnects_total ").await >= 1.0;
        (status == 200 && reopened).then_some(())
    })
    .await;
    assert!(ready.is_some(), "the publishing channel was reopened and the generator is ready");
    issuance_goes_on(&env, "after-missing-dlx").await;
    env.teardown().await;
}
