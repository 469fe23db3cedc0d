//! Scoped API keys: a key given to one application sees only the requests
//! made with that application's keys. Another application's request, or a
//! producer's, is 404 on GET, DELETE and verify (no attempt counted), as if
//! it did not exist; unscoped keys see everything. The application travels
//! with the request as a sealed header, so a producer cannot claim one.

mod common;

use common::{API_KEY, PHONE, TestEnv};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use otp_pipeline::broker::Topology;
use serde_json::{Value, json};

const BILLING: &str = "billing-key-0123456789";
const SHOP: &str = "shop-key-0123456789abc";

async fn call(env: &TestEnv, method: reqwest::Method, route: &str, key: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = env.http.request(method, env.url(route)).bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

async fn wait_status(env: &TestEnv, request_id: &str, key: &str) -> Value {
    let route = format!("/v1/otp/{request_id}");
    let found = common::eventually(|| async {
        let (status, body) = call(env, reqwest::Method::GET, &route, key, None).await;
        (status == 200 && body["status"] != "pending").then_some(body)
    })
    .await;
    found.unwrap_or_else(|| panic!("{request_id} never left pending"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_key_sees_only_its_applications_requests() {
    let env = TestEnv::start_with(|config, _| {
        config.http.scoped_api_keys =
            [("billing".to_owned(), vec![BILLING.into()]), ("shop".to_owned(), vec![SHOP.into()])].into();
    })
    .await;
    env.accept_sms().await;
    let post = json!({"request_id": "billing-1", "phone": PHONE});
    assert_eq!(call(&env, reqwest::Method::POST, "/v1/otp", BILLING, Some(post)).await.0, 202);
    let code = env.code_for("billing-1").await;
    assert_eq!(wait_status(&env, "billing-1", BILLING).await["status"], "sent");
    assert_eq!(wait_status(&env, "billing-1", API_KEY).await["status"], "sent", "unscoped keys see it");

    // The other application: 404 everywhere, and its verify counts no attempt.
    let verify = json!({"phone": PHONE, "code": code});
    assert_eq!(call(&env, reqwest::Method::GET, "/v1/otp/billing-1", SHOP, None).await.0, 404);
    assert_eq!(call(&env, reqwest::Method::DELETE, "/v1/otp/billing-1", SHOP, None).await.0, 404);
    let (status, body) = call(&env, reqwest::Method::POST, "/v1/verify", SHOP, Some(verify.clone())).await;
    assert_eq!((status, body["status"].as_str()), (404, Some("not_found")));
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let (status, body) =
        call(&env, reqwest::Method::POST, "/v1/verify", BILLING, Some(json!({"phone": PHONE, "code": wrong}))).await;
    assert_eq!((status, body["attempts_left"].as_u64()), (422, Some(4)), "only billing's own attempt counted");
    let (status, body) = call(&env, reqwest::Method::POST, "/v1/verify", BILLING, Some(verify)).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("approved")));

    // A producer's request (no application) is not a scoped key's either.
    let mut request = env.request("producer-1");
    request.phone = "+14155550124".into();
    env.publish(&request).await;
    assert_eq!(wait_status(&env, "producer-1", API_KEY).await["status"], "sent");
    assert_eq!(call(&env, reqwest::Method::GET, "/v1/otp/producer-1", BILLING, None).await.0, 404);
    env.teardown().await;
}

/// A producer cannot claim an application: `x-otp-owner` without the
/// service's seal is dead-lettered `unsealed`, and nothing is issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_cannot_claim_an_application() {
    let env = TestEnv::start().await;
    let body = serde_json::to_vec(&env.request("claimed-1")).unwrap();
    let mut headers = FieldTable::default();
    headers.insert(ShortString::from(Topology::OWNER_HEADER), AMQPValue::LongString("billing".into()));
    let properties = BasicProperties::default().with_headers(headers).with_delivery_mode(2);
    let exchange = &env.topology.exchange;
    let confirm =
        common::publish_confirmed(&common::amqp_url(), exchange, Topology::REQUEST_KEY, &body, properties, false)
            .await
            .unwrap();
    assert!(confirm.is_ack());
    let dead = common::eventually(|| async { Some(env.dead_letters().await).filter(|d| !d.is_empty()) }).await;
    let dead = dead.expect("dead-lettered");
    assert_eq!((dead.len(), dead[0].2.as_str()), (1, "unsealed"));
    assert_eq!(env.get("/v1/otp/claimed-1").await.0, 404, "never issued");
    assert!(env.carrier_posts().await.is_empty());
    env.teardown().await;
}
