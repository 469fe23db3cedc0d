//! Several carriers behind one queue: failover, circuit breakers, Retry-After,
//! expiry during retries, rate limits, and signed delivery receipts — against
//! the real RabbitMQ, with the fake carrier (or wiremock) on loopback.

mod common;

use common::{API_KEY, PHONE, TestEnv, code_in, eventually, route, twilio, vonage};
use otp_fake_carrier::{FakeCarrier, FakeCarrierConfig, Outage};
use otp_pipeline::config::{CarrierLimits, Config, Msg91Config};
use otp_pipeline::domain::RawRequest;
use serde_json::json;
use std::time::{Duration, Instant};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use common::TWILIO_TOKEN;

fn msg91(base_url: &str, receipt_token: Option<&str>) -> Msg91Config {
    Msg91Config {
        base_url: base_url.into(),
        authkey: "msg91-key".into(),
        template_id: "tmpl-1".into(),
        code_variable: "otp".into(),
        receipt_token: receipt_token.map(Into::into),
        timeout_ms: 5_000,
    }
}

/// Twilio first, Vonage as failover, both on `base_url`.
fn two_carriers(config: &mut Config, base_url: &str, sender_url: &str) {
    config.carriers.twilio = Some(twilio(base_url, sender_url));
    config.carriers.vonage = Some(vonage(base_url, sender_url));
    config.routing.default = route(&[("twilio", 1), ("vonage", 0)]);
}

async fn fake(config: FakeCarrierConfig) -> FakeCarrier {
    FakeCarrier::start("127.0.0.1:0".parse().unwrap(), config).await.unwrap()
}

fn accepted_by(fake: &FakeCarrier, carrier: &str) -> Vec<otp_fake_carrier::ReceivedSms> {
    fake.messages().into_iter().filter(|m| m.carrier == carrier && m.accepted).collect()
}

fn attempts_on(fake: &FakeCarrier, carrier: &str) -> usize {
    fake.messages().iter().filter(|m| m.carrier == carrier).count()
}

fn request(id: &str, i: usize) -> RawRequest {
    RawRequest { request_id: id.into(), phone: format!("+1415555{:04}", 1000 + i), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_down_every_code_is_delivered_by_the_second_and_the_breaker_skips_it() {
    let carrier = fake(FakeCarrierConfig {
        outages: vec![Outage { carrier: Some("twilio".into()), start_ms: 0, end_ms: 3_600_000 }],
        receipts: false,
        ..Default::default()
    })
    .await;
    let base = carrier.base_url();
    let env = TestEnv::start_with(|c, sender| {
        two_carriers(c, &base, sender);
        c.sender.breaker.failure_threshold = 3;
        c.sender.breaker.open_ms = 3_600_000;
    })
    .await;

    env.publish(&request("down-0", 0)).await;
    eventually(|| async { (accepted_by(&carrier, "vonage").len() == 1).then_some(()) })
        .await
        .expect("first SMS via vonage");
    let twilio_tries = attempts_on(&carrier, "twilio");
    assert_eq!(twilio_tries, 3, "three failures open the circuit, then failover");

    for i in 1..20 {
        env.publish(&request(&format!("down-{i}"), i)).await;
    }
    let delivered = eventually(|| async {
        let v = accepted_by(&carrier, "vonage");
        (v.len() == 20).then_some(v)
    })
    .await
    .expect("all 20 delivered by vonage");
    assert_eq!(attempts_on(&carrier, "twilio"), twilio_tries, "the open circuit keeps twilio out");
    for sms in delivered.iter().take(3) {
        let code = code_in(sms.text.as_deref().unwrap());
        assert_eq!(env.verify(&sms.to, &code).await.0, 200);
    }
    let metrics = env.http.get(env.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("otp_failovers_total"), "failovers are counted");
    env.teardown().await;
    carrier.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_and_later_closes() {
    let outage = FakeCarrierConfig {
        outages: vec![Outage { carrier: Some("twilio".into()), start_ms: 0, end_ms: 3_600_000 }],
        receipts: false,
        ..Default::default()
    };
    let carrier = fake(outage).await;
    let base = carrier.base_url();
    let env = TestEnv::start_with(|c, sender| {
        two_carriers(c, &base, sender);
        c.sender.breaker.failure_threshold = 1;
        c.sender.breaker.open_ms = 300;
        c.sender.retry.max_retries = 0;
    })
    .await;
    env.publish(&request("b-1", 1)).await;
    eventually(|| async { (accepted_by(&carrier, "vonage").len() == 1).then_some(()) }).await.expect("failover");
    carrier.set_config(FakeCarrierConfig { receipts: false, ..Default::default() });
    tokio::time::sleep(Duration::from_millis(400)).await; // past the cool-down
    env.publish(&request("b-2", 2)).await;
    eventually(|| async { (accepted_by(&carrier, "twilio").len() == 1).then_some(()) })
        .await
        .expect("the probe goes to twilio and succeeds");
    env.publish(&request("b-3", 3)).await;
    eventually(|| async { (accepted_by(&carrier, "twilio").len() == 2).then_some(()) })
        .await
        .expect("closed again: twilio takes traffic");
    assert_eq!(accepted_by(&carrier, "vonage").len(), 1);
    env.teardown().await;
    carrier.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_is_honoured() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "1")
                .set_body_json(json!({"code": 20429, "message": "Too Many Requests", "more_info": "https://www.twilio.com/docs/errors/20429", "status": 429})),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(json!({"sid": "SM0123456789abcdef0123456789abcdef", "status": "queued"})),
        )
        .mount(&server)
        .await;
    let base = server.uri();
    let env = TestEnv::start_with(|c, sender| {
        c.carriers.twilio = Some(twilio(&base, sender));
        c.routing.default = route(&[("twilio", 1)]);
    })
    .await;
    let mut events = env.event_tap().await;
    env.publish(&env.request("throttled-1")).await;
    let first =
        eventually(|| async { server.received_requests().await.filter(|r| !r.is_empty()).map(|_| Instant::now()) })
            .await
            .unwrap();
    events.expect("sent", "throttled-1").await;
    let waited = first.elapsed();
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
    assert!(waited >= Duration::from_millis(900), "the retry waited for Retry-After (waited {waited:?})");
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_whose_ttl_runs_out_during_retries_is_not_delivered() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(503)).mount(&server).await;
    let base = server.uri();
    let env = TestEnv::start_with(|c, sender| {
        c.carriers.twilio = Some(twilio(&base, sender));
        c.routing.default = route(&[("twilio", 1)]);
        c.sender.retry.min_delay_ms = 300;
        c.sender.retry.max_delay_ms = 600;
        c.sender.breaker.failure_threshold = 100;
    })
    .await;
    let mut events = env.event_tap().await;
    env.publish(&env.request("ttl-1")).await;
    eventually(|| async { server.received_requests().await.filter(|r| !r.is_empty()) }).await.expect("a first attempt");
    env.sender_clock.advance(time::Duration::minutes(10));
    let seen = server.received_requests().await.unwrap().len();
    let failed = events.expect("failed", "ttl-1").await;
    assert_eq!(failed.error.as_deref(), Some("expired"));
    assert!(server.received_requests().await.unwrap().len() <= seen, "no attempt after expiry");
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_carrier_accepting_fails_and_dead_letters() {
    let carrier = fake(FakeCarrierConfig { error_rate: 1.0, receipts: false, ..Default::default() }).await;
    let base = carrier.base_url();
    let env = TestEnv::start_with(|c, sender| {
        two_carriers(c, &base, sender);
        c.sender.retry.max_retries = 1;
    })
    .await;
    let mut events = env.event_tap().await;
    env.publish(&env.request("nobody-1")).await;
    let failed = events.expect("failed", "nobody-1").await;
    assert_eq!(failed.carrier.as_deref(), Some("vonage"), "the last carrier tried");
    let dead = eventually(|| async {
        let d = env.dead_letters().await;
        (!d.is_empty()).then_some(d)
    })
    .await
    .unwrap();
    assert_eq!(dead[0].2, "carrier_failed");
    assert_eq!(attempts_on(&carrier, "twilio"), 2);
    assert_eq!(attempts_on(&carrier, "vonage"), 2);
    env.teardown().await;
    carrier.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn country_routes_pick_the_carrier() {
    let carrier = fake(FakeCarrierConfig { receipts: false, ..Default::default() }).await;
    let base = carrier.base_url();
    let env = TestEnv::start_with(|c, sender| {
        two_carriers(c, &base, sender);
        c.carriers.msg91 = Some(msg91(&base, None));
        c.routing.countries.insert("91".into(), route(&[("msg91", 1), ("twilio", 0)]));
    })
    .await;
    env.publish(&RawRequest { phone: "+919876543210".into(), ..env.request("in-1") }).await;
    env.publish(&env.request("us-1")).await;
    let (india, us) = eventually(|| async {
        let (m, t) = (accepted_by(&carrier, "msg91"), accepted_by(&carrier, "twilio"));
        (m.len() == 1 && t.len() == 1).then_some((m, t))
    })
    .await
    .expect("one SMS each");
    assert_eq!(india[0].to, "+919876543210");
    let code = india[0].code.clone().expect("msg91 carries the code as a template variable");
    assert_eq!(env.verify("+919876543210", &code).await.0, 200);
    assert_eq!(us[0].to, PHONE);
    env.teardown().await;
    carrier.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_spaces_the_sends() {
    let carrier = fake(FakeCarrierConfig { receipts: false, ..Default::default() }).await;
    let base = carrier.base_url();
    let env = TestEnv::start_with(|c, sender| {
        c.carriers.twilio = Some(twilio(&base, sender));
        c.routing.default = route(&[("twilio", 1)]);
        c.sender.limits.insert("twilio".into(), CarrierLimits { concurrency: 4, rate_per_sec: 5, burst: 1 });
    })
    .await;
    let started = Instant::now();
    for i in 0..6 {
        env.publish(&request(&format!("rate-{i}"), i)).await;
    }
    eventually(|| async { (accepted_by(&carrier, "twilio").len() == 6).then_some(()) }).await.expect("all sent");
    assert!(started.elapsed() >= Duration::from_millis(950), "6 sends at 5/s need at least a second");
    env.teardown().await;
    carrier.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_twilio_receipts_mark_delivered_and_forged_ones_are_refused() {
    let carrier = fake(FakeCarrierConfig { twilio_auth_token: Some(TWILIO_TOKEN.into()), ..Default::default() }).await;
    let base = carrier.base_url();
    let env = TestEnv::start_with(|c, sender| {
        c.carriers.twilio = Some(twilio(&base, sender));
        c.routing.default = route(&[("twilio", 1)]);
    })
    .await;
    let mut events = env.event_tap().await;
    env.publish(&env.request("dlr-1")).await;
    let delivered = events.expect("delivered", "dlr-1").await;
    assert_eq!(delivered.carrier.as_deref(), Some("twilio"));
    assert_eq!(delivered.phone, "+1415*****23");
    let (_, body) = env.get("/v1/otp/dlr-1").await;
    assert_eq!(body["status"], "delivered");

    let url = format!("{}/receipts/twilio", env.sender_url);
    let form = [("MessageSid", "SM00000000000000000000000000000000"), ("MessageStatus", "delivered")];
    for signature in [None, Some("bm90IGEgc2lnbmF0dXJl")] {
        let mut post = env.http.post(&url).form(&form);
        if let Some(s) = signature {
            post = post.header("X-Twilio-Signature", s);
        }
        assert_eq!(post.send().await.unwrap().status(), 403, "forged: {signature:?}");
    }
    // A signed callback sent again (a replay): 200, counted, dropped.
    let signed =
        [("MessageSid".to_owned(), "SM0replayed".to_owned()), ("MessageStatus".to_owned(), "delivered".to_owned())];
    let signature = otp_pipeline::carriers::twilio::signature(TWILIO_TOKEN, &url, &signed);
    for _ in 0..2 {
        let post = env.http.post(&url).form(&signed).header("X-Twilio-Signature", &signature);
        assert_eq!(post.send().await.unwrap().status(), 200);
    }
    let metrics = env.http.get(format!("{}/metrics", env.sender_url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("otp_delivery_receipts_total{carrier=\"twilio\",status=\"replayed\"} 1"), "{metrics}");
    assert!(metrics.contains("otp_delivery_receipts_total{carrier=\"twilio\",status=\"forbidden\"}"), "{metrics}");
    assert!(metrics.contains("otp_delivery_receipts_total{carrier=\"twilio\",status=\"delivered\"}"));
    let _ = API_KEY;
    env.teardown().await;
    carrier.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vonage_and_msg91_receipts_need_their_token() {
    let carrier = fake(FakeCarrierConfig::default()).await;
    let base = carrier.base_url();
    let env = TestEnv::start_with(|c, sender| {
        two_carriers(c, &base, sender);
        c.routing.default = route(&[("vonage", 1)]);
        c.carriers.msg91 = Some(msg91(&base, Some("msg91-token")));
        c.routing.countries.insert("91".into(), route(&[("msg91", 1)]));
    })
    .await;
    carrier.set_config(FakeCarrierConfig {
        msg91_dlr_url: Some(format!("{}/receipts/msg91?token=msg91-token", env.sender_url)),
        ..Default::default()
    });
    let mut events = env.event_tap().await;
    env.publish(&env.request("v-1")).await;
    env.publish(&RawRequest { phone: "+919876543210".into(), ..env.request("m-1") }).await;
    assert_eq!(events.expect("delivered", "v-1").await.carrier.as_deref(), Some("vonage"));
    assert_eq!(events.expect("delivered", "m-1").await.carrier.as_deref(), Some("msg91"));

    for url in [
        format!("{}/receipts/vonage?messageId=x&status=delivered", env.sender_url),
        format!("{}/receipts/vonage?messageId=x&status=delivered&token=wrong", env.sender_url),
    ] {
        assert_eq!(env.http.get(&url).send().await.unwrap().status(), 403, "{url}");
    }
    let forged = env
        .http
        .post(format!("{}/receipts/msg91?token=nope", env.sender_url))
        .json(&json!({"data": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    // An authentic callback carrying thousands of reports is refused whole.
    let reports: Vec<_> = (0..otp_pipeline::http::MAX_REPORTS_PER_CALLBACK + 1)
        .map(|i| json!({"requestId": format!("r{i}"), "report": [{"status": "1", "number": "919876543210"}]}))
        .collect();
    let flood = env
        .http
        .post(format!("{}/receipts/msg91?token=msg91-token", env.sender_url))
        .json(&reports)
        .send()
        .await
        .unwrap();
    assert_eq!(flood.status(), 400);
    env.teardown().await;
    carrier.shutdown().await;
}
