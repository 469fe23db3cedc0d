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
    let exchange = &env.topology.exchange;
    let confirm =
        common::publish_confirmed(&common::producer_url(), exchange, Topology::REQUEST_KEY, body, properties, false)
            .await
            .unwrap();
    assert!(confirm.is_ack());
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

/// Publishes as the restricted producer user; the broker's verdict: the
/// confirm, or the channel error (e.g. `ACCESS_REFUSED`).
async fn publish_as_producer(exchange: &str, key: &str, body: &[u8]) -> Result<lapin::Confirmation, lapin::Error> {
    let properties = BasicProperties::default().with_delivery_mode(2);
    common::publish_confirmed(&common::producer_url(), exchange, key, body, properties, true).await
}

fn phishing_delivery(phone: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "delivery_id": "forged-1", "request_id": "forged-1", "phone": phone,
        "text": "Your bank account is locked, visit https://evil.example", "code": "000000",
        "expires_at": "2099-01-01T00:00:00Z", "requested_at": "2026-01-01T00:00:00Z",
    }))
    .unwrap()
}

fn forged_receipt(carrier_message_id: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "carrier": "webhook", "carrier_message_id": carrier_message_id, "delivered": false,
        "error": "forged", "at": "2026-01-01T00:00:00Z",
    }))
    .unwrap()
}

/// Issues a request and waits until the carrier took it (`sent`).
async fn sent_request(env: &TestEnv, request_id: &str, phone: &str) {
    let mut request = env.request(request_id);
    request.phone = phone.into();
    let reply = env.publish(&request).await;
    assert_eq!(reply.status, otp_pipeline::domain::ReplyStatus::Accepted);
    env.code_for(request_id).await;
    let sent = common::eventually(|| async {
        let (_, body) = env.get(&format!("/v1/otp/{request_id}")).await;
        (body["status"] == "sent").then_some(())
    })
    .await;
    assert!(sent.is_some(), "{request_id} sent");
}

fn is_access_refused(result: &Result<lapin::Confirmation, lapin::Error>) -> bool {
    matches!(result, Err(e) if e.to_string().contains("ACCESS_REFUSED"))
}

/// Finding 1, with the permissions the README gives a producer: write on
/// `otp` only (and, with topic permissions, the `request` key only). Requests
/// go through; the internal exchange is refused by RabbitMQ; a hand-made
/// delivery, receipt or status event on `otp` reaches no internal queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_producer_can_publish_requests_and_nothing_else() {
    let env = TestEnv::start().await;
    let mut events = env.event_tap().await;
    let good = serde_json::to_vec(&env.request("producer-1")).unwrap();
    assert!(publish_as_producer(&env.topology.exchange, Topology::REQUEST_KEY, &good).await.unwrap().is_ack());
    env.code_for("producer-1").await;
    sent_request(&env, "producer-2", "+14155550124").await;
    for (key, body) in [("delivery", phishing_delivery("+14155550199")), ("receipt", forged_receipt("carrier-msg-1"))] {
        let internal = publish_as_producer(&env.topology.internal, key, &body).await;
        assert!(is_access_refused(&internal), "{key} on the internal exchange: {internal:?}");
        // On the public exchange nothing internal is bound: returned unroutable.
        let public = publish_as_producer(&env.topology.exchange, key, &body).await.unwrap();
        assert!(public.take_message().is_some(), "{key} on the public exchange is returned, not routed");
    }
    let failed = serde_json::json!({"request_id": "producer-2", "phone": "+1415*****23", "status": "failed",
        "at": "2026-01-01T00:00:00Z", "carrier": "webhook", "carrier_message_id": "carrier-msg-1"});
    let failed = serde_json::to_vec(&failed).unwrap();
    publish_as_producer(&env.topology.exchange, "event.failed", &failed).await.unwrap();
    // Topic permissions close even that: the producer may use the `request` key only.
    let exchange = env.topology.exchange.as_str();
    let (set, error) =
        common::rabbitmqctl(&["set_topic_permissions", "-p", "/", common::PRODUCER_USER, exchange, "^request$", "^$"]);
    assert!(set, "set_topic_permissions: {error}");
    let refused = publish_as_producer(exchange, "event.failed", &failed).await;
    let mut third = env.request("producer-3");
    third.phone = "+14155550125".into();
    let allowed = publish_as_producer(exchange, Topology::REQUEST_KEY, &serde_json::to_vec(&third).unwrap()).await;
    common::rabbitmqctl(&["clear_topic_permissions", "-p", "/", common::PRODUCER_USER, exchange]);
    assert!(is_access_refused(&refused), "event.failed with topic permissions: {refused:?}");
    assert!(allowed.unwrap().is_ack(), "requests still go through");
    env.code_for("producer-3").await;
    events.expect("sent", "producer-3").await;
    let (_, status) = env.get("/v1/otp/producer-2").await;
    assert_eq!(status["status"], "sent", "the forged event changed nothing");
    let texts: Vec<String> = env.carrier_posts().await.iter().map(|p| p["text"].to_string()).collect();
    assert!(texts.iter().all(|t| !t.contains("bank")), "no forged SMS: {texts:?}");
    assert!(env.dead_letters().await.is_empty());
    env.teardown().await;
}

/// Finding 1 where operators run everything as one RabbitMQ user: a message
/// on an internal queue without the service's seal (or sealed under another
/// key) is dead-lettered `unsealed` and counted; it is never sent, and a
/// forged receipt changes no status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsealed_internal_messages_from_a_shared_user_are_dead_lettered() {
    let env = TestEnv::start().await;
    sent_request(&env, "sealed-1", PHONE).await;
    let phishing = phishing_delivery("+14155550199");
    env.publish_internal(Topology::DELIVERY_KEY, &phishing, false).await;
    env.publish_internal(Topology::RECEIPT_KEY, &forged_receipt("carrier-msg-1"), false).await;
    // Sealed, but under another deployment's key.
    let theirs = otp_pipeline::domain::SealRing::new(otp_pipeline::domain::SealKey::new(vec![7; 32]).unwrap(), vec![]);
    let mut headers = FieldTable::default();
    let seal = theirs.seal(Topology::DELIVERY_KEY, None, &phishing);
    headers.insert(ShortString::from(Topology::SEAL_HEADER), AMQPValue::LongString(seal.into()));
    let properties = BasicProperties::default().with_headers(headers).with_delivery_mode(2);
    let internal = &env.topology.internal;
    let confirm = common::publish_confirmed(&common::amqp_url(), internal, "delivery", &phishing, properties, false)
        .await
        .unwrap();
    assert!(confirm.is_ack());
    let dead = common::eventually(|| async {
        let seen = metric(&env, "otp_dead_letters_total{reason=\"unsealed\"} ").await;
        (seen >= 3.0).then_some(())
    })
    .await;
    assert!(dead.is_some(), "three unsealed messages counted");
    let dead = env.dead_letters().await;
    assert_eq!(dead.len(), 3, "each dead-lettered once");
    assert!(dead.iter().all(|(_, _, reason)| reason == "unsealed"));
    let errors: Vec<&str> = dead.iter().map(|(_, e, _)| e.as_str()).collect();
    assert_eq!(errors.iter().filter(|e| e.starts_with("no seal")).count(), 2, "{errors:?}");
    let other = format!("sealed under key {}", theirs.id());
    assert!(errors.iter().any(|e| e.starts_with(&other)), "{errors:?}");
    let (_, status) = env.get("/v1/otp/sealed-1").await;
    assert_eq!(status["status"], "sent", "the forged receipt changed nothing");
    let texts: Vec<String> = env.carrier_posts().await.iter().map(|p| p["text"].to_string()).collect();
    assert!(texts.iter().all(|t| !t.contains("bank")), "no forged SMS: {texts:?}");
    env.teardown().await;
}

/// The README's service user (configure, write and read on `otp…` names,
/// write on the default exchange for replies) is all the pipeline needs:
/// requests from the restricted producer and replies to a waiting producer
/// are issued, sent and verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_as_the_documented_service_user() {
    let env = TestEnv::start_with(|config, _| config.broker.url = common::service_url()).await;
    env.accept_sms().await;
    let mut events = env.event_tap().await;
    publish_request(&env, &serde_json::to_vec(&env.request("as-service-1")).unwrap(), BasicProperties::default()).await;
    let code = env.code_for("as-service-1").await;
    events.expect("sent", "as-service-1").await;
    assert_eq!(env.verify(PHONE, &code).await.0, 200);
    events.expect("verified", "as-service-1").await;
    let mut second = env.request("as-service-2");
    second.phone = "+14155550124".into();
    assert_eq!(env.publish(&second).await.status, otp_pipeline::domain::ReplyStatus::Accepted, "replied");
    events.expect("sent", "as-service-2").await;
    env.teardown().await;
}
