//! Abuse resistance on the real pipeline: send limits, verify lockout, geo
//! permissions, the SMS-pumping guard, and their survival across restarts.

mod common;

use common::{API_KEY, PHONE, TestEnv};
use otp_pipeline::domain::{RawRequest, RejectReason, ReplyStatus};
use serde_json::json;

const ADMIN_KEY: &str = "operator-key-0123456789abcdef";

fn to(phone: &str, id: &str) -> RawRequest {
    RawRequest { request_id: id.into(), phone: phone.into(), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_within_the_cooldown_is_refused_until_it_passes_even_across_a_restart() {
    let mut env = TestEnv::start().await;
    let mut events = env.event_tap().await;
    assert_eq!(env.publish(&to(PHONE, "c-1")).await.status, ReplyStatus::Accepted);
    let refused = env.publish(&to(PHONE, "c-2")).await;
    assert_eq!(refused.status, ReplyStatus::Rejected);
    assert_eq!(refused.reason, Some(RejectReason::RateLimited));
    let wait = refused.retry_after_secs.expect("when to retry");
    assert!((29..=30).contains(&wait), "{wait}");
    let event = events.expect("rejected", "c-2").await;
    assert_eq!(event.reason, Some(RejectReason::RateLimited));
    assert_eq!(event.retry_after_secs, Some(wait));

    // The state lives in sled: a restarted generator still refuses.
    env.stop_generator().await;
    env.start_generator().await;
    assert_eq!(env.publish(&to(PHONE, "c-3")).await.reason, Some(RejectReason::RateLimited));
    // Over HTTP: 429 with Retry-After.
    let r = env
        .http
        .post(env.url("/v1/otp"))
        .bearer_auth(API_KEY)
        .json(&json!({"request_id": "c-4", "phone": PHONE}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["reason"], "rate_limited");

    env.clock.advance(time::Duration::seconds(31));
    assert_eq!(env.publish(&to(PHONE, "c-5")).await.status, ReplyStatus::Accepted);
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_send_window_caps_codes_per_number() {
    let env = TestEnv::start_with(|c, _| {
        c.limits.send.resend_cooldown_secs = 0;
        c.limits.send.max_per_window = 3;
    })
    .await;
    for i in 0..3 {
        assert_eq!(env.publish(&to(PHONE, &format!("w-{i}"))).await.status, ReplyStatus::Accepted);
    }
    let refused = env.publish(&to(PHONE, "w-3")).await;
    assert_eq!(refused.reason, Some(RejectReason::RateLimited));
    assert!(refused.error.unwrap().starts_with("send_window"));
    // The refusal is visible, with its reason.
    let (status, body) = env.get("/v1/otp/w-3").await;
    assert_eq!(
        (status, body["status"].as_str(), body["reason"].as_str()),
        (200, Some("rejected"), Some("rate_limited"))
    );
    assert!(body["error"].as_str().is_some_and(|e| e.starts_with("send_window")), "{body}");
    // Another number is not affected; nor is a re-published request.
    assert_eq!(env.publish(&to("+14155550142", "w-other")).await.status, ReplyStatus::Accepted);
    assert_eq!(env.publish(&to(PHONE, "w-0")).await.status, ReplyStatus::Accepted, "duplicates are not new sends");
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_failed_verifications_lock_the_number_until_the_lock_expires() {
    let mut env = TestEnv::start_with(|c, _| {
        c.limits.verify.max_consecutive_failures = 3;
        c.limits.verify.lock_secs = 60;
    })
    .await;
    let mut events = env.event_tap().await;
    env.publish(&to(PHONE, "l-1")).await;
    let code = env.code_for("l-1").await;
    let wrong = if code == "000000" { "000001" } else { "000000" };
    for _ in 0..3 {
        assert_eq!(env.verify(PHONE, wrong).await.0, 422);
    }
    let (status, body) = env.verify(PHONE, &code).await;
    assert_eq!((status, body["status"].as_str()), (429, Some("locked")), "even the right code waits");
    let lockout = events
        .expect_matching("the lockout event", |e| e.error.as_deref().is_some_and(|m| m.starts_with("verify_lockout")))
        .await;
    assert_eq!(lockout.reason, Some(RejectReason::RateLimited));
    assert!(lockout.retry_after_secs.is_some_and(|s| (59..=60).contains(&s)));
    // A locked number gets no new code (it would reset the guessing budget),
    // over AMQP nor over HTTP.
    let refused = env.publish(&to(PHONE, "l-2")).await;
    assert_eq!(refused.reason, Some(RejectReason::RateLimited));
    assert!(refused.error.as_deref().is_some_and(|e| e.starts_with("verify_lockout")), "{refused:?}");
    assert!(refused.retry_after_secs.is_some_and(|s| (59..=60).contains(&s)));
    let (status, body) = env.post("/v1/otp", serde_json::json!({"request_id": "l-3", "phone": PHONE})).await;
    assert_eq!((status, body["reason"].as_str()), (429, Some("rate_limited")), "{body}");
    // The lock survives a restart.
    env.stop_generator().await;
    env.start_generator().await;
    assert_eq!(env.verify(PHONE, &code).await.0, 429);
    env.clock.advance(time::Duration::seconds(61));
    assert_eq!(env.verify(PHONE, &code).await.0, 200, "open again after the lock");
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_countries_are_refused() {
    let env = TestEnv::start_with(|c, _| c.limits.geo.blocked = vec!["44".into()]).await;
    let mut events = env.event_tap().await;
    let refused = env.publish(&to("+447911123456", "uk-1")).await;
    assert_eq!(refused.reason, Some(RejectReason::CountryBlocked));
    assert_eq!(events.expect("rejected", "uk-1").await.reason, Some(RejectReason::CountryBlocked));
    let (status, body) = env.get("/v1/otp/uk-1").await;
    assert_eq!(
        (status, body["status"].as_str(), body["reason"].as_str()),
        (200, Some("rejected"), Some("country_blocked"))
    );
    let (status, body) = env.post("/v1/otp", json!({"request_id": "uk-2", "phone": "+447911123456"})).await;
    assert_eq!((status, body["reason"].as_str()), (400, Some("country_blocked")));
    assert_eq!(env.publish(&to(PHONE, "us-1")).await.status, ReplyStatus::Accepted);
    assert!(env.carrier_posts().await.iter().all(|p| p["to"] != "+447911123456"));
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_to_one_prefix_is_quarantined_and_an_operator_can_lift_it() {
    let env = TestEnv::start_with(|c, _| {
        c.limits.pumping.prefix_digits = 7;
        c.limits.pumping.max_sends_per_window = 2;
        c.http.admin_api_keys = vec![ADMIN_KEY.into()];
    })
    .await;
    let mut events = env.event_tap().await;
    // +1 415 555 01xx: the same 7-digit prefix "1415555".
    assert_eq!(env.publish(&to("+14155550101", "p-1")).await.status, ReplyStatus::Accepted);
    assert_eq!(env.publish(&to("+14155550102", "p-2")).await.status, ReplyStatus::Accepted);
    let refused = env.publish(&to("+14155550103", "p-3")).await;
    assert_eq!(refused.reason, Some(RejectReason::SuspectedPumping));
    let event = events.expect("rejected", "p-3").await;
    assert!(event.error.unwrap().contains("prefix_velocity"), "the rule and figures are explained");
    assert_eq!(env.publish(&to("+14155550104", "p-4")).await.reason, Some(RejectReason::SuspectedPumping));
    assert_eq!(env.publish(&to("+14255550101", "other-prefix")).await.status, ReplyStatus::Accepted);

    let admin = |route: &str| env.http.get(env.url(route)).bearer_auth(ADMIN_KEY);
    assert_eq!(env.get("/v1/admin/quarantines").await.0, 401, "an application's key is not an operator's");
    let r = admin("/v1/admin/quarantines").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["quarantines"][0]["prefix"], "1415555");
    assert_eq!(body["quarantines"][0]["rule"], "prefix_velocity");
    let lift = env.http.delete(env.url("/v1/admin/quarantines/1415555")).bearer_auth(ADMIN_KEY).send().await.unwrap();
    assert_eq!(lift.status(), 200);
    let after: serde_json::Value = admin("/v1/admin/quarantines").send().await.unwrap().json().await.unwrap();
    assert_eq!(after["quarantines"], json!([]));
    assert_eq!(env.publish(&to("+14155550105", "p-5")).await.status, ReplyStatus::Accepted);
    // Without admin keys configured, nobody reaches the operator routes.
    let closed = TestEnv::start().await;
    assert_eq!(closed.get("/v1/admin/quarantines").await.0, 401);
    closed.teardown().await;
    let metrics = env.http.get(env.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("otp_quarantines_total{rule=\"prefix_velocity\"}"));
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_whose_codes_are_never_verified_is_quarantined() {
    let env = TestEnv::start_with(|c, _| {
        c.limits.pumping.prefix_digits = 7;
        c.limits.pumping.min_volume = 3;
        c.limits.pumping.min_conversion = 0.5;
    })
    .await;
    let mut events = env.event_tap().await;
    for i in 0..3 {
        let id = format!("conv-{i}");
        assert_eq!(env.publish(&to(&format!("+1415555020{i}"), &id)).await.status, ReplyStatus::Accepted);
    }
    // One of three is verified: 33 % conversion.
    let code = env.code_for("conv-0").await;
    assert_eq!(env.verify("+14155550200", &code).await.0, 200);
    // Past the grace period users get to type their codes, the prefix is judged.
    env.clock.advance(time::Duration::seconds(301));
    let refused = env.publish(&to("+14155550209", "conv-9")).await;
    assert_eq!(refused.reason, Some(RejectReason::SuspectedPumping));
    let event = events.expect("rejected", "conv-9").await;
    let detail = event.error.unwrap();
    assert!(detail.contains("low_conversion") && detail.contains("1/3"), "{detail}");
    env.teardown().await;
}
