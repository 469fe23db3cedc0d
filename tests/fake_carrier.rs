//! The fake carrier on loopback: every API's send, read-back, faults, control
//! and delivery receipts (caught by wiremock). No broker needed.

use otp_fake_carrier::{FakeCarrier, FakeCarrierConfig, Msg91DlrFormat, Outage, ReceivedSms};
use otp_pipeline::carriers::twilio::signature;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const TO: &str = "+14155550123";
/// A complete, valid Vonage send.
const VONAGE_SEND: [(&str, &str); 5] =
    [("api_key", "key"), ("api_secret", "secret"), ("from", "OTP"), ("to", "14155550123"), ("text", TEXT)];

const TEXT: &str = "otp-pipeline: your verification code is 482913. It expires in 5 min. Never share it.";
const WAIT: Duration = Duration::from_secs(10);

async fn start(config: FakeCarrierConfig) -> FakeCarrier {
    FakeCarrier::start(([127, 0, 0, 1], 0).into(), config).await.expect("the fake carrier starts")
}

/// Receipts right away (tests wait for them, never time them).
fn quick() -> FakeCarrierConfig {
    FakeCarrierConfig { receipt_delay_ms: 0, ..Default::default() }
}

async fn receiver() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).mount(&server).await;
    server
}

/// Waits until `server` has received at least `n` requests.
async fn received(server: &MockServer, n: usize) -> Vec<wiremock::Request> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let requests = server.received_requests().await.unwrap_or_default();
        if requests.len() >= n {
            return requests;
        }
        assert!(tokio::time::Instant::now() < deadline, "expected {n} receipts, got {}", requests.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    serde_urlencoded::from_bytes(body).expect("a form body")
}

fn form_map(body: &[u8]) -> HashMap<String, String> {
    form(body).into_iter().collect()
}

async fn twilio(fc: &FakeCarrier, params: &[(&str, &str)]) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/2010-04-01/Accounts/{ACCOUNT}/Messages.json", fc.base_url()))
        .basic_auth(ACCOUNT, Some("auth-token"))
        .form(params)
        .send()
        .await
        .expect("twilio send")
}

async fn msg91(fc: &FakeCarrier, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/api/v5/flow", fc.base_url()))
        .header("authkey", "msg91-key")
        .json(&body)
        .send()
        .await
        .expect("msg91 send")
}

fn msg91_body(mobile: &str, otp: &str) -> Value {
    json!({"template_id": "tpl-1", "short_url": "0", "recipients": [{"mobiles": mobile, "otp": otp}]})
}

async fn vonage(fc: &FakeCarrier, params: &[(&str, &str)]) -> reqwest::Response {
    reqwest::Client::new().post(format!("{}/sms/json", fc.base_url())).form(params).send().await.expect("vonage send")
}

async fn webhook(fc: &FakeCarrier, to: &str, request_id: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/sms", fc.base_url()))
        .json(&json!({"to": to, "text": TEXT, "request_id": request_id, "delivery_id": "d-1"}))
        .send()
        .await
        .expect("webhook send")
}

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.expect("a JSON body")
}

fn retry_after(response: &reqwest::Response) -> Option<&str> {
    response.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok())
}

async fn put_control(fc: &FakeCarrier, config: &Value) -> reqwest::Response {
    reqwest::Client::new().put(format!("{}/control", fc.base_url())).json(config).send().await.expect("PUT /control")
}

#[tokio::test]
async fn twilio_send_is_recorded_and_its_signed_status_callbacks_arrive() {
    let callbacks = receiver().await;
    let fc = start(FakeCarrierConfig { twilio_auth_token: Some("twilio-secret".into()), ..quick() }).await;
    let callback = format!("{}/receipts/twilio?tenant=a", callbacks.uri());

    let response =
        twilio(&fc, &[("To", TO), ("From", "+15005550006"), ("Body", TEXT), ("StatusCallback", &callback)]).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let message = json_of(response).await;
    let sid = message["sid"].as_str().expect("a sid").to_owned();
    assert!(sid.starts_with("SM") && sid.len() == 34, "{sid}");
    assert!(sid[2..].bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(message["status"], "queued");
    assert_eq!(message["to"], TO);
    assert_eq!(message["from"], "+15005550006");
    assert_eq!(message["body"], TEXT);
    assert_eq!(message["account_sid"], ACCOUNT);
    assert!(message["date_created"].is_string());

    let recorded = fc.messages();
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        recorded[0],
        ReceivedSms {
            carrier: "twilio".into(),
            to: TO.into(),
            text: Some(TEXT.into()),
            code: Some("482913".into()),
            message_id: sid.clone(),
            request_id: None,
            at_ms: recorded[0].at_ms,
            at_us: recorded[0].at_us,
            accepted: true,
        }
    );

    let requests = received(&callbacks, 2).await;
    let mut statuses = Vec::new();
    for request in &requests {
        assert_eq!(request.url.path(), "/receipts/twilio");
        assert_eq!(request.url.query(), Some("tenant=a"), "the URL as given");
        let params = form(&request.body);
        let header = request.headers.get("x-twilio-signature").expect("a signed callback").to_str().unwrap();
        assert_eq!(header, signature("twilio-secret", &callback, &params));
        let params: HashMap<_, _> = params.into_iter().collect();
        assert_eq!(params["MessageSid"], sid);
        assert_eq!(params["SmsSid"], sid);
        assert_eq!(params["AccountSid"], ACCOUNT);
        assert_eq!(params["From"], "+15005550006");
        assert_eq!(params["To"], TO);
        assert_eq!(params["ApiVersion"], "2010-04-01");
        assert_eq!(params["SmsStatus"], params["MessageStatus"]);
        statuses.push(params["MessageStatus"].clone());
    }
    assert_eq!(statuses, ["sent", "delivered"]);
    fc.shutdown().await;
}

#[tokio::test]
async fn twilio_needs_basic_auth_to_from_and_body() {
    let fc = start(quick()).await;
    let url = format!("{}/2010-04-01/Accounts/{ACCOUNT}/Messages.json", fc.base_url());
    let response = reqwest::Client::new()
        .post(&url)
        .form(&[("To", TO), ("From", "+15005550006"), ("Body", TEXT)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        json_of(response).await,
        json!({"code": 20003, "message": "Authenticate",
               "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401})
    );

    for (params, code) in [
        (vec![("From", "+15005550006"), ("Body", TEXT)], 21604),
        (vec![("To", TO), ("Body", TEXT)], 21603),
        (vec![("To", TO), ("From", "+15005550006")], 21602),
    ] {
        let response = twilio(&fc, &params).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body = json_of(response).await;
        assert_eq!(body["code"], code);
        assert_eq!(body["status"], 400);
    }

    // A Messaging Service instead of From is enough.
    let response = twilio(&fc, &[("To", TO), ("MessagingServiceSid", "MG0123"), ("Body", TEXT)]).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(json_of(response).await["messaging_service_sid"], "MG0123");
    assert_eq!(fc.messages().len(), 1, "only well-formed sends are recorded");
    fc.shutdown().await;
}

#[tokio::test]
async fn msg91_send_records_the_otp_variable_and_posts_a_dlr() {
    let dlr = receiver().await;
    let fc =
        start(FakeCarrierConfig { msg91_dlr_url: Some(format!("{}/receipts/msg91?token=t0k", dlr.uri())), ..quick() })
            .await;

    let response = msg91(&fc, msg91_body("919876543210", "5521")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = json_of(response).await;
    assert_eq!(body["type"], "success");
    let request_id = body["message"].as_str().unwrap().to_owned();
    assert!(request_id.len() == 24 && request_id.bytes().all(|b| b.is_ascii_hexdigit()), "{request_id}");

    // The only variable counts as the code when there is no `otp`; a trailing slash works too.
    let response = reqwest::Client::new()
        .post(format!("{}/api/v5/flow/", fc.base_url()))
        .header("authkey", "msg91-key")
        .json(&json!({"template_id": "tpl-1", "recipients": [{"mobiles": "919876543211", "code": "778899"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let recorded = fc.messages();
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[0].carrier, "msg91");
    assert_eq!(recorded[0].to, "+919876543210");
    assert_eq!(recorded[0].code.as_deref(), Some("5521"));
    assert_eq!(recorded[0].text, None);
    assert_eq!(recorded[0].message_id, request_id);
    assert_eq!(recorded[1].code.as_deref(), Some("778899"));

    let reports = received(&dlr, 2).await;
    let report = reports
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).expect("a JSON DLR"))
        .find(|r| r["data"][0]["requestId"] == request_id.as_str())
        .expect("a DLR for the first send");
    assert_eq!(report["data"][0]["report"][0]["number"], "919876543210");
    assert_eq!(report["data"][0]["report"][0]["status"], "1");
    assert_eq!(report["data"][0]["report"][0]["desc"], "DELIVERED");
    assert!(reports[0].url.as_str().ends_with("/receipts/msg91?token=t0k"));
    fc.shutdown().await;
}

#[tokio::test]
async fn msg91_v2_dlr_is_a_form_whose_data_is_a_json_string() {
    let dlr = receiver().await;
    let fc = start(FakeCarrierConfig {
        msg91_dlr_url: Some(format!("{}/dlr", dlr.uri())),
        msg91_dlr_format: Msg91DlrFormat::V2,
        ..quick()
    })
    .await;
    let body = json_of(msg91(&fc, msg91_body("919876543210", "5521")).await).await;
    let request = &received(&dlr, 1).await[0];
    let data: Value = serde_json::from_str(&form_map(&request.body)["data"]).unwrap();
    assert_eq!(data[0]["requestId"], body["message"]);
    assert_eq!(data[0]["report"][0]["desc"], "DELIVERED");
    fc.shutdown().await;
}

#[tokio::test]
async fn msg91_without_authkey_is_401() {
    let fc = start(quick()).await;
    let response = reqwest::Client::new()
        .post(format!("{}/api/v5/flow", fc.base_url()))
        .json(&msg91_body("919876543210", "5521"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json_of(response).await, json!({"type": "error", "message": "Authentication failure"}));
    assert!(fc.messages().is_empty());
    fc.shutdown().await;
}

#[tokio::test]
async fn vonage_form_and_json_sends_are_recorded_and_the_dlr_keeps_the_callback_query() {
    let dlr = receiver().await;
    let fc = start(quick()).await;
    let callback = format!("{}/receipts/vonage?token=s3cret", dlr.uri());

    let response = vonage(
        &fc,
        &[
            ("api_key", "key"),
            ("api_secret", "secret"),
            ("from", "OTP"),
            ("to", "14155550123"),
            ("text", TEXT),
            ("callback", &callback),
            ("client-ref", "req-7"),
        ],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = json_of(response).await;
    assert_eq!(body["message-count"], "1");
    let message = &body["messages"][0];
    assert_eq!(message["status"], "0");
    assert_eq!(message["to"], "14155550123");
    assert_eq!(message["network"], "23410");
    let id = message["message-id"].as_str().unwrap().to_owned();
    assert!(!id.is_empty());

    // JSON bodies (with a signature instead of the secret) work too.
    let response = reqwest::Client::new()
        .post(format!("{}/sms/json", fc.base_url()))
        .json(&json!({"api_key": "key", "sig": "abc", "from": "OTP", "to": "447700900000", "text": "Your code: 9911"}))
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(response).await["messages"][0]["status"], "0");

    let recorded = fc.messages();
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[0].carrier, "vonage");
    assert_eq!(recorded[0].to, TO);
    assert_eq!(recorded[0].text.as_deref(), Some(TEXT));
    assert_eq!(recorded[0].code.as_deref(), Some("482913"));
    assert_eq!(recorded[0].message_id, id);
    assert_eq!(recorded[0].request_id.as_deref(), Some("req-7"));
    assert_eq!(recorded[1].to, "+447700900000");
    assert_eq!(recorded[1].code.as_deref(), Some("9911"));

    let request = &received(&dlr, 1).await[0];
    assert_eq!(request.url.path(), "/receipts/vonage");
    assert_eq!(request.url.query(), Some("token=s3cret"), "the query is kept");
    let receipt = form_map(&request.body);
    assert_eq!(receipt["messageId"], id);
    assert_eq!(receipt["msisdn"], "14155550123");
    assert_eq!(receipt["to"], "OTP");
    assert_eq!(receipt["status"], "delivered");
    assert_eq!(receipt["err-code"], "0");
    assert_eq!(receipt["client-ref"], "req-7");
    for field in ["network-code", "price", "message-timestamp"] {
        assert!(receipt.contains_key(field), "{field}");
    }
    fc.shutdown().await;
}

#[tokio::test]
async fn vonage_without_credentials_answers_status_2() {
    let fc = start(quick()).await;
    let response = vonage(&fc, &[("from", "OTP"), ("to", "14155550123"), ("text", TEXT)]).await;
    assert_eq!(response.status(), StatusCode::OK, "Vonage answers 200");
    assert_eq!(
        json_of(response).await,
        json!({"message-count": "1", "messages": [{"status": "2", "error-text": "Missing api_key"}]})
    );
    let response = vonage(&fc, &[("api_key", "key"), ("from", "OTP"), ("to", "14155550123"), ("text", TEXT)]).await;
    assert_eq!(json_of(response).await["messages"][0]["status"], "2");
    assert!(fc.messages().is_empty());
    fc.shutdown().await;
}

#[tokio::test]
async fn webhook_sends_are_recorded_and_messages_filter_by_number_and_carrier() {
    let fc = start(quick()).await;
    let response = webhook(&fc, TO, "req-1").await;
    assert_eq!(response.status(), StatusCode::OK);
    let id = json_of(response).await["id"].as_str().unwrap().to_owned();
    assert!(!id.is_empty());
    assert_eq!(webhook(&fc, "+447700900000", "req-2").await.status(), StatusCode::OK);
    assert_eq!(
        twilio(&fc, &[("To", TO), ("From", "+15005550006"), ("Body", TEXT)]).await.status(),
        StatusCode::CREATED
    );

    let client = reqwest::Client::new();
    let list = |query: &'static str| {
        let (client, url) = (client.clone(), format!("{}/messages{query}", fc.base_url()));
        async move {
            let response = client.get(url).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.json::<Vec<ReceivedSms>>().await.unwrap()
        }
    };
    assert_eq!(list("").await.len(), 3);
    let mine = list("?to=%2B14155550123").await;
    assert_eq!(mine.len(), 2);
    assert!(mine.iter().all(|m| m.to == TO));
    // An unescaped `+` (decoded as a space) still matches.
    assert_eq!(list("?to=+14155550123").await.len(), 2);
    let hooks = list("?to=%2B14155550123&carrier=webhook").await;
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].message_id, id);
    assert_eq!(hooks[0].request_id.as_deref(), Some("req-1"));
    assert_eq!(hooks[0].code.as_deref(), Some("482913"));
    assert_eq!(list("?carrier=msg91").await.len(), 0);

    let response = client.delete(format!("{}/messages", fc.base_url())).send().await.unwrap();
    assert!(response.status().is_success());
    assert!(list("").await.is_empty());
    assert!(fc.messages().is_empty());
    fc.shutdown().await;
}

#[tokio::test]
async fn error_rate_one_gives_each_apis_error_shape() {
    let fc = start(FakeCarrierConfig { error_rate: 1.0, ..quick() }).await;

    let response = twilio(&fc, &[("To", TO), ("From", "+15005550006"), ("Body", TEXT)]).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = json_of(response).await;
    assert_eq!(body["code"], 20500);
    assert_eq!(body["status"], 500);
    assert!(body["more_info"].is_string());

    let response = msg91(&fc, msg91_body("919876543210", "5521")).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(json_of(response).await["type"], "error");

    let response = vonage(&fc, &VONAGE_SEND).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = json_of(response).await;
    assert_eq!(body["messages"][0]["status"], "5");
    assert_eq!(body["messages"][0]["error-text"], "Internal Error");

    let response = webhook(&fc, TO, "req-1").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);

    let recorded = fc.messages();
    assert_eq!(recorded.len(), 4);
    assert!(recorded.iter().all(|m| !m.accepted && m.message_id.is_empty()));
    assert_eq!(
        recorded.iter().map(|m| m.carrier.as_str()).collect::<Vec<_>>(),
        ["twilio", "msg91", "vonage", "webhook"]
    );
    fc.shutdown().await;
}

#[tokio::test]
async fn throttle_rate_one_gives_429_with_retry_after() {
    let fc = start(FakeCarrierConfig { throttle_rate: 1.0, retry_after_secs: 7, ..quick() }).await;

    let response = twilio(&fc, &[("To", TO), ("From", "+15005550006"), ("Body", TEXT)]).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&response), Some("7"));
    assert_eq!(json_of(response).await["code"], 20429);

    let response = msg91(&fc, msg91_body("919876543210", "5521")).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&response), Some("7"));
    assert_eq!(json_of(response).await["type"], "error");

    let response = webhook(&fc, TO, "req-1").await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&response), Some("7"));

    // Vonage answers 200 with status "1" (Throttled).
    let response = vonage(&fc, &VONAGE_SEND).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json_of(response).await["messages"][0]["status"], "1");

    assert_eq!(fc.messages().len(), 4);
    assert!(fc.messages().iter().all(|m| !m.accepted));
    fc.shutdown().await;
}

#[tokio::test]
async fn an_outage_window_covering_now_takes_down_only_the_named_carrier() {
    let fc = start(FakeCarrierConfig {
        outages: vec![Outage { carrier: Some("twilio".into()), start_ms: 0, end_ms: u64::MAX }],
        ..quick()
    })
    .await;
    let response = twilio(&fc, &[("To", TO), ("From", "+15005550006"), ("Body", TEXT)]).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json_of(response).await["code"], 20503);
    assert_eq!(msg91(&fc, msg91_body("919876543210", "5521")).await.status(), StatusCode::OK);
    assert_eq!(webhook(&fc, TO, "req-1").await.status(), StatusCode::OK);

    // An outage of every carrier: Vonage answers its status "5".
    fc.set_config(FakeCarrierConfig {
        outages: vec![Outage { carrier: None, start_ms: 0, end_ms: u64::MAX }],
        ..quick()
    });
    let response = vonage(&fc, &VONAGE_SEND).await;
    assert_eq!(json_of(response).await["messages"][0]["status"], "5");
    assert_eq!(webhook(&fc, TO, "req-2").await.status(), StatusCode::SERVICE_UNAVAILABLE);
    let accepted: Vec<bool> = fc.messages().iter().map(|m| m.accepted).collect();
    assert_eq!(accepted, [false, true, true, false, false]);
    fc.shutdown().await;
}

#[tokio::test]
async fn put_control_changes_behaviour_at_run_time() {
    let fc = start(quick()).await;
    let url = format!("{}/control", fc.base_url());
    let current: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(current["error_rate"], 0.0);
    assert_eq!(current["receipts"], true);
    assert_eq!(webhook(&fc, TO, "req-1").await.status(), StatusCode::OK);

    // Fields left out take their defaults.
    let response = put_control(&fc, &json!({"error_rate": 1.0})).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json_of(response).await["error_rate"], 1.0);
    assert_eq!(fc.config().error_rate, 1.0);
    assert_eq!(webhook(&fc, TO, "req-2").await.status(), StatusCode::SERVICE_UNAVAILABLE);

    let response =
        put_control(&fc, &json!({"outages": [{"carrier": "webhook", "start_ms": 0, "end_ms": 3_600_000}]})).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(webhook(&fc, TO, "req-3").await.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(msg91(&fc, msg91_body("919876543210", "5521")).await.status(), StatusCode::OK);

    // Invalid configurations are refused and change nothing.
    for bad in [
        json!({"error_rate": 2.0}),
        json!({"eror_rate": 0.5}),
        json!({"outages": [{"carrier": "sinch", "start_ms": 0, "end_ms": 1}]}),
        json!({"outages": [{"start_ms": 5, "end_ms": 5}]}),
    ] {
        let response = put_control(&fc, &bad).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert!(json_of(response).await["error"].is_string());
    }
    assert_eq!(fc.config().outages.len(), 1);

    assert_eq!(put_control(&fc, &json!({})).await.status(), StatusCode::OK);
    assert_eq!(webhook(&fc, TO, "req-4").await.status(), StatusCode::OK);
    fc.shutdown().await;
}

#[tokio::test]
async fn latency_still_answers() {
    let fc = start(FakeCarrierConfig { latency_ms: 30, ..quick() }).await;
    assert_eq!(webhook(&fc, TO, "req-1").await.status(), StatusCode::OK);
    assert_eq!(fc.messages().len(), 1);
    fc.shutdown().await;
}

#[tokio::test]
async fn seeded_runs_are_reproducible() {
    let config = FakeCarrierConfig { error_rate: 0.3, throttle_rate: 0.3, seed: Some(42), ..quick() };
    let mut runs = Vec::new();
    for _ in 0..2 {
        let fc = start(config.clone()).await;
        let mut statuses = Vec::new();
        for i in 0..20 {
            statuses.push(webhook(&fc, TO, &format!("req-{i}")).await.status());
        }
        fc.shutdown().await;
        runs.push(statuses);
    }
    assert_eq!(runs[0], runs[1]);
    assert!(runs[0].iter().any(|s| *s != StatusCode::OK), "{:?}", runs[0]);
    assert!(runs[0].contains(&StatusCode::OK), "{:?}", runs[0]);
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let fc = start(quick()).await;
    let url = format!("{}/messages", fc.base_url());
    assert!(reqwest::get(&url).await.unwrap().status().is_success());
    fc.shutdown().await;
    assert!(reqwest::get(&url).await.is_err());
}
