//! End-to-end tests against the real RabbitMQ, a real sled in a temp dir and
//! a loopback fake carrier. Each test runs under its own queue prefix.

mod common;

use common::{API_KEY, PHONE, TestEnv, code_in};
use otp_pipeline::broker::Topology;
use otp_pipeline::domain::{RawRequest, RejectReason, ReplyStatus};
use serde_json::json;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, ResponseTemplate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_request_is_delivered_verified_once_then_not_found() {
    let env = TestEnv::start().await;
    let mut events = env.event_tap().await;

    let reply = env.publish(&env.request("login-1")).await;
    assert_eq!(reply.status, ReplyStatus::Accepted);
    assert!(reply.expires_at.is_some());

    let code = env.code_for("login-1").await;
    assert_eq!(code.len(), 6);
    let posts = env.wait_posts(1).await;
    assert_eq!(posts[0]["to"], PHONE);
    assert!(posts[0]["delivery_id"].as_str().is_some_and(|d| !d.is_empty()));
    let sent = events.expect("sent", "login-1").await;
    assert_eq!(sent.phone, "+1415*****23");
    assert_eq!(sent.carrier.as_deref(), Some("webhook"));
    assert_eq!(sent.carrier_message_id.as_deref(), Some("carrier-msg-1"));
    events.expect("accepted", "login-1").await;

    assert_eq!(env.verify(PHONE, &code).await, (200, json!({"status": "approved"})));
    assert_eq!(env.verify(PHONE, &code).await, (404, json!({"status": "not_found"})));
    events.expect("verified", "login-1").await;

    // The generator learns of `sent` on its own queue: it may land after the verify.
    let body = common::eventually(|| async {
        let (status, body) = env.get("/v1/otp/login-1").await;
        (status == 200 && body["carrier"] == "webhook").then_some(body)
    })
    .await
    .expect("the status names the carrier");
    assert_eq!(body["status"], "verified");
    assert_eq!(body["phone"], "+1415*****23");
    assert_eq!(body["carrier_message_id"], "carrier-msg-1");
    assert_eq!(env.get("/v1/otp/nope").await.0, 404);
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_request_twice_gives_one_code_and_one_sms() {
    let env = TestEnv::start().await;
    let first = env.publish(&env.request("dup-1")).await;
    let code = env.code_for("dup-1").await;
    let second = env.publish(&env.request("dup-1")).await;
    assert_eq!(second.status, ReplyStatus::Accepted);
    assert_eq!(second.expires_at, first.expires_at, "the duplicate reports the original code");

    // A later request proves the queue moved past the duplicate.
    env.publish(&RawRequest { phone: "+14155550199".into(), ..env.request("other-1") }).await;
    env.code_for("other-1").await;
    let posts = env.carrier_posts().await;
    assert_eq!(posts.iter().filter(|p| p["request_id"] == "dup-1").count(), 1, "exactly one SMS");
    assert_eq!(env.verify(PHONE, &code).await.0, 200, "the one code is the valid one");
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_wrong_codes_lock_the_code() {
    let env = TestEnv::start().await;
    env.publish(&env.request("brute-1")).await;
    let code = env.code_for("brute-1").await;
    let wrong = if code == "000000" { "000001" } else { "000000" };
    for left in (1..=4).rev() {
        assert_eq!(env.verify(PHONE, wrong).await, (422, json!({"status": "invalid_code", "attempts_left": left})));
    }
    assert_eq!(env.verify(PHONE, wrong).await, (429, json!({"status": "max_attempts_reached"})));
    assert_eq!(
        env.verify(PHONE, &code).await,
        (429, json!({"status": "max_attempts_reached"})),
        "the right code is dead too"
    );
    let (_, body) = env.get("/v1/otp/brute-1").await;
    assert_eq!(body["status"], "expired");
    assert_eq!(body["error"], "max_attempts_reached");
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_code_answers_410_then_404() {
    let env = TestEnv::start().await;
    let mut events = env.event_tap().await;
    env.publish(&RawRequest { ttl_secs: Some(60), ..env.request("exp-1") }).await;
    let code = env.code_for("exp-1").await;
    env.clock.advance(time::Duration::seconds(61));
    assert_eq!(env.verify(PHONE, &code).await, (410, json!({"status": "expired"})));
    assert_eq!(env.verify(PHONE, &code).await.0, 404);
    events.expect("expired", "exp-1").await;
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dead_lettered_not_requeued() {
    let env = TestEnv::start().await;
    env.publish_bytes(b"{not json").await;
    env.publish_bytes(b"\x00\x01 binary garbage").await;
    env.publish_bytes(b"[\"an array\"]").await;
    let mut huge = br#"{"request_id":"huge","phone":"+14155550123","template":""#.to_vec();
    huge.extend(std::iter::repeat_n(b'x', 20_000));
    huge.extend(br#""}"#);
    env.publish_bytes(&huge).await;
    // A valid request after them proves the consumer kept going.
    env.publish(&env.request("after-garbage")).await;
    env.code_for("after-garbage").await;

    let dead_queue = env.topology.dead.clone();
    let arrived = common::eventually(|| async { (env.queue_depth(&dead_queue).await >= 4).then_some(()) }).await;
    assert!(arrived.is_some(), "four messages reach the dead-letter queue");
    let dead = env.dead_letters().await;
    assert_eq!(dead.len(), 4);
    for (body, error, reason) in &dead[..3] {
        assert_eq!(reason, "malformed_json", "{body:?}");
        assert!(!error.is_empty(), "x-otp-error says why");
    }
    assert_eq!(dead[3].2, "oversized", "too large to read: dead-lettered unread");
    assert_eq!(dead[0].0, b"{not json");
    assert_eq!(env.queue_depth(&env.topology.requests).await, 0, "nothing requeued");
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_rejected_with_a_reply_and_an_event() {
    let env = TestEnv::start().await;
    let mut events = env.event_tap().await;
    let reply = env.publish(&RawRequest { phone: "+1415555".into(), ..env.request("bad-phone") }).await;
    assert_eq!(reply.status, ReplyStatus::Rejected);
    assert_eq!(reply.reason, Some(RejectReason::InvalidPhone));
    let event = events.expect("rejected", "bad-phone").await;
    assert_eq!(event.reason, Some(RejectReason::InvalidPhone));

    let reply = env.publish(&RawRequest { code_length: Some(12), ..env.request("bad-length") }).await;
    assert_eq!(reply.reason, Some(RejectReason::InvalidRequest));
    assert!(reply.error.unwrap().contains("code_length"));
    assert!(env.carrier_posts().await.is_empty(), "nothing was sent");
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_routes_need_a_valid_key() {
    let env = TestEnv::start().await;
    let routes = [("POST", "/v1/verify"), ("POST", "/v1/otp"), ("GET", "/v1/otp/x")];
    for (verb, route) in routes {
        for key in [None, Some("wrong-key-0123456789"), Some("")] {
            let mut req = env.http.request(verb.parse().unwrap(), env.url(route)).json(&json!({}));
            if let Some(k) = key {
                req = req.bearer_auth(k);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401, "{verb} {route} with {key:?}");
            assert_eq!(r.headers()["www-authenticate"], "Bearer");
        }
    }
    for route in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(env.http.get(env.url(route)).send().await.unwrap().status(), 200, "{route}");
    }
    let ok =
        env.http.get(env.url("/v1/otp/x")).header("authorization", format!("bearer {API_KEY}")).send().await.unwrap();
    assert_eq!(ok.status(), 404, "scheme is case-insensitive and the key works");
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carrier_503_twice_then_200_delivers_one_sms() {
    let env = TestEnv::start_bare().await;
    env.mount(
        Mock::given(method("POST"))
            .and(path("/sms"))
            .and(header("authorization", "Bearer carrier-token"))
            .and(header("content-type", "application/json"))
            .respond_with(ResponseTemplate::new(503))
            .up_to_n_times(2)
            .with_priority(1),
    )
    .await;
    env.accept_sms().await;
    let mut events = env.event_tap().await;
    env.publish(&env.request("flaky-1")).await;
    events.expect("sent", "flaky-1").await;
    let posts = env.wait_posts(3).await;
    assert_eq!(posts.len(), 3, "two failures and one success");
    assert!(posts.iter().all(|p| p == &posts[0]), "every retry sends the same SMS");
    let code = code_in(posts[0]["text"].as_str().unwrap());
    assert_eq!(env.verify(PHONE, &code).await.0, 200);
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_carrier_error_fails_and_dead_letters_the_delivery() {
    let env = TestEnv::start_bare().await;
    env.mount(Mock::given(method("POST")).respond_with(ResponseTemplate::new(400))).await;
    let mut events = env.event_tap().await;
    env.publish(&env.request("perm-1")).await;
    let failed = events.expect("failed", "perm-1").await;
    assert!(failed.error.unwrap().contains("400"));
    assert_eq!(env.wait_posts(1).await.len(), 1, "no retry of a permanent error");
    let dead = common::eventually(|| async {
        let d = env.dead_letters().await;
        (!d.is_empty()).then_some(d)
    })
    .await
    .unwrap();
    assert_eq!(dead[0].2, "carrier_failed");
    let (_, body) = env.get("/v1/otp/perm-1").await;
    assert_eq!(body["status"], "failed");
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_that_expired_before_sending_is_dropped() {
    let env = TestEnv::start().await;
    env.sender_clock.advance(time::Duration::minutes(10));
    let mut events = env.event_tap().await;
    env.publish(&env.request("late-1")).await;
    let failed = events.expect("failed", "late-1").await;
    assert_eq!(failed.error.as_deref(), Some("expired"));
    assert!(env.carrier_posts().await.is_empty(), "an expired code is never delivered");
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_generator_loses_nothing() {
    let mut env = TestEnv::start().await;
    env.publish(&env.request("before-restart")).await;
    let first = env.code_for("before-restart").await;

    env.stop_generator().await;
    // Published while no generator runs: RabbitMQ keeps it.
    env.publish_bytes(
        &serde_json::to_vec(&RawRequest { phone: "+14155550177".into(), ..env.request("during-restart") }).unwrap(),
    )
    .await;
    env.start_generator().await;

    let second = env.code_for("during-restart").await;
    assert_eq!(env.verify(PHONE, &first).await.0, 200, "the code issued before the restart survived");
    assert_eq!(env.verify("+14155550177", &second).await.0, 200);
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_verifies_approve_exactly_once() {
    let env = TestEnv::start().await;
    env.publish(&env.request("race-1")).await;
    let code = env.code_for("race-1").await;
    // 32 requests in flight at once, each on its own connection.
    let mut tasks = tokio::task::JoinSet::new();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(32));
    for _ in 0..32 {
        let (url, code, barrier) = (env.url("/v1/verify"), code.clone(), barrier.clone());
        tasks.spawn(async move {
            let client = reqwest::Client::new();
            barrier.wait().await;
            let r = client
                .post(url)
                .bearer_auth(API_KEY)
                .json(&json!({"phone": PHONE, "code": code}))
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        });
    }
    let statuses = tasks.join_all().await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 404), "{statuses:?}");
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_otp_publishes_and_validates() {
    let env = TestEnv::start().await;
    let (status, body) = env.post("/v1/otp", json!({"request_id": "http-1", "phone": PHONE, "code_length": 8})).await;
    assert_eq!((status, body), (202, json!({"request_id": "http-1"})));
    let code = env.code_for("http-1").await;
    assert_eq!(code.len(), 8);
    let status = common::eventually(|| async {
        let (_, body) = env.get("/v1/otp/http-1").await;
        (body["status"] == "sent").then_some(())
    })
    .await;
    assert!(status.is_some(), "status becomes sent");

    let (status, body) = env.post("/v1/otp", json!({"request_id": "http-2", "phone": "12345"})).await;
    assert_eq!(status, 400);
    assert_eq!(body["reason"], "invalid_phone");
    let (status, _) = env.post("/v1/otp", json!({"request_id": "http-3", "phone": PHONE, "extra": 1})).await;
    assert_eq!(status, 400, "unknown fields are refused");
    let r = env
        .http
        .post(env.url("/v1/otp"))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.json::<serde_json::Value>().await.unwrap()["error"].is_string());
    let huge = "x".repeat(20 * 1024); // over the 16 KiB limit, small enough to be sent whole before the 413
    let (status, _) = env.post("/v1/verify", json!({"phone": PHONE, "code": huge})).await;
    assert_eq!(status, 413);
    let (status, body) = env.verify("not-a-phone", "123456").await;
    assert_eq!(status, 400);
    assert!(body["error"].is_string());
    assert_eq!(env.verify(PHONE, "12ab56").await.0, 400);
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_recover_when_the_broker_drops_their_connections() {
    let env = TestEnv::start().await;
    env.publish(&env.request("before-cut")).await;
    let first = env.code_for("before-cut").await;

    assert!(common::kill_connections(&env.prefix) >= 2, "the generator's and the sender's connections were found");
    let ready = common::eventually(|| async {
        let metrics = env.http.get(env.url("/metrics")).send().await.ok()?.text().await.ok()?;
        let ready = env.http.get(env.url("/readyz")).send().await.ok()?.status() == 200;
        (ready && metrics.contains("otp_broker_reconnects_total")).then_some(())
    })
    .await;
    assert!(ready.is_some(), "ready again, with the reconnect counted");

    let reply = common::eventually(|| async {
        client_publish(&env, &RawRequest { phone: "+14155550166".into(), ..env.request("after-cut") }).await
    })
    .await
    .expect("requests flow again");
    assert_eq!(reply.status, ReplyStatus::Accepted);
    let second = env.code_for("after-cut").await;
    assert_eq!(env.verify(PHONE, &first).await.0, 200);
    assert_eq!(env.verify("+14155550166", &second).await.0, 200);
    env.teardown().await;
}

async fn client_publish(env: &TestEnv, request: &RawRequest) -> Option<otp_pipeline::domain::Reply> {
    otp_pipeline::client::publish(
        &env.config.broker.url,
        &env.topology,
        request,
        Some(std::time::Duration::from_secs(3)),
    )
    .await
    .ok()
    .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canceled_code_answers_404() {
    let env = TestEnv::start().await;
    let mut events = env.event_tap().await;
    env.publish(&env.request("cancel-1")).await;
    let code = env.code_for("cancel-1").await;
    let delete = |id: &'static str| {
        let request = env.http.delete(env.url(&format!("/v1/otp/{id}"))).bearer_auth(API_KEY);
        async move {
            let r = request.send().await.unwrap();
            (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
        }
    };
    assert_eq!(delete("cancel-1").await, (200, json!({"status": "canceled"})));
    assert_eq!(env.verify(PHONE, &code).await.0, 404);
    assert_eq!(delete("cancel-1").await, (409, json!({"status": "canceled"})));
    assert_eq!(delete("unknown").await.0, 404);
    events.expect("canceled", "cancel-1").await;
    assert_eq!(env.get("/v1/otp/cancel-1").await.1["status"], "canceled");
    let unauthenticated = env.http.delete(env.url("/v1/otp/cancel-1")).send().await.unwrap();
    assert_eq!(unauthenticated.status(), 401);
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_api_key_has_a_request_rate() {
    let env = TestEnv::start_with(|c, _| {
        c.http.rate_per_key_per_sec = 1;
        c.http.burst_per_key = 3;
    })
    .await;
    for _ in 0..3 {
        assert_eq!(env.get("/v1/otp/none").await.0, 404);
    }
    let r = env.http.get(env.url("/v1/otp/none")).bearer_auth(API_KEY).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(env.http.get(env.url("/healthz")).send().await.unwrap().status(), 200, "ops routes are not limited");
    env.teardown().await;
}

/// Under load the generator coalesces deliveries into one message (a JSON
/// array): a sender sends each, announces each, dead-letters alone the one a
/// carrier refused for good, and acks the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_deliveries_is_sent_and_only_its_refused_delivery_is_dead_lettered() {
    use otp_pipeline::domain::Delivery;
    let env = TestEnv::start_bare().await;
    let refused = "+14155550177";
    let refuse = Mock::given(method("POST")).and(wiremock::matchers::body_partial_json(json!({ "to": refused })));
    env.mount(refuse.respond_with(ResponseTemplate::new(400))).await;
    env.accept_sms().await;
    let mut events = env.event_tap().await;
    let now = time::OffsetDateTime::now_utc();
    let delivery = |id: &str, phone: &str| Delivery {
        delivery_id: uuid::Uuid::new_v4().to_string(),
        request_id: id.into(),
        phone: phone.into(),
        text: "Your code is 123456".into(),
        code: "123456".into(),
        expires_at: now + time::Duration::minutes(5),
        requested_at: now,
    };
    let batch = [delivery("b-1", "+14155550171"), delivery("b-2", refused), delivery("b-3", "+14155550173")];
    let body = otp_pipeline::generator::outbox::encode_deliveries(&batch.iter().collect::<Vec<_>>());
    env.publish_internal(Topology::DELIVERY_KEY, &body, true).await;
    events.expect("sent", "b-1").await;
    events.expect("sent", "b-3").await;
    assert!(events.expect("failed", "b-2").await.error.unwrap().contains("400"));
    let dead = common::eventually(|| async { Some(env.dead_letters().await).filter(|d| !d.is_empty()) }).await.unwrap();
    assert_eq!(dead.len(), 1, "only the refused delivery is dead-lettered");
    let alone: Delivery = serde_json::from_slice(&dead[0].0).unwrap();
    assert_eq!((alone.request_id.as_str(), dead[0].2.as_str()), ("b-2", "carrier_failed"));
    assert_eq!(env.queue_depth(&env.topology.deliveries).await, 0, "the batch is acked");
    env.teardown().await;
}

/// One decoder policy for both ways in: a JSON array is not a request, and a
/// repeated key is refused (not "last wins"), over HTTP and over AMQP alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrays_and_repeated_keys_are_refused_over_http_and_amqp() {
    let env = TestEnv::start().await;
    let repeated = r#"{"request_id": "dup-key", "phone": "+14155550123", "phone": "+447911123456"}"#;
    for body in [r#"["arr-1", "+14155550123"]"#, repeated] {
        let response = env
            .http
            .post(env.url("/v1/otp"))
            .bearer_auth(API_KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        assert!(response.json::<serde_json::Value>().await.unwrap()["error"].is_string());
    }
    let mut events = env.event_tap().await;
    env.publish_bytes(repeated.as_bytes()).await;
    let rejected = events.expect("rejected", "dup-key").await;
    assert_eq!(rejected.reason, Some(RejectReason::InvalidRequest));
    assert!(rejected.error.unwrap().contains("duplicate field"));
    env.publish_bytes(br#"["arr-2", "+14155550123"]"#).await;
    let dead = common::eventually(|| async { Some(env.dead_letters().await).filter(|d| !d.is_empty()) }).await;
    assert_eq!(dead.unwrap()[0].2, "malformed_json", "an array is dead-lettered");
    assert!(env.carrier_posts().await.is_empty(), "no SMS for either");
    env.teardown().await;
}
