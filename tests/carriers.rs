//! The Twilio, MSG91 and Vonage adapters against a loopback wiremock server:
//! the exact request each one makes, the id it reads back, and how it
//! classifies the carriers' own documented error answers.

use base64::Engine;
use otp_pipeline::carriers::{Accepted, Carrier, CarrierError, Msg91, Sms, Twilio, Vonage, vonage};
use otp_pipeline::config::{Msg91Config, TwilioConfig, VonageConfig};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
const TWILIO_PATH: &str = "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json";
const MSG91_PATH: &str = "/api/v5/flow/";
const VONAGE_PATH: &str = "/sms/json";

fn sms() -> Sms {
    Sms {
        to: "+14155550123".into(),
        text: "otp-pipeline: your verification code is 123456. It expires in 5 min. Never share it.".into(),
        code: "123456".into(),
        request_id: "order-42-login-1".into(),
        delivery_id: "delivery-1".into(),
    }
}

/// Serves `answer` on `POST route`, builds the carrier against the server's
/// URL, sends [`sms`] once; returns the outcome and the one request made.
async fn exchange<C: Carrier>(
    build: impl FnOnce(String) -> C,
    route: &str,
    answer: ResponseTemplate,
) -> (Result<Accepted, CarrierError>, Request) {
    let server = MockServer::start().await;
    Mock::given(method("POST")).and(path(route)).respond_with(answer).expect(1).mount(&server).await;
    let outcome = build(server.uri()).send(&sms()).await;
    let mut requests = server.received_requests().await.expect("requests are recorded");
    assert_eq!(requests.len(), 1, "exactly one request");
    (outcome, requests.remove(0))
}

/// The error a carrier reports for one answer (status, body, optional `Retry-After`).
async fn failure<C: Carrier>(
    build: impl FnOnce(String) -> C,
    route: &str,
    status: u16,
    body: &str,
    retry_after: Option<&str>,
) -> CarrierError {
    let mut answer = ResponseTemplate::new(status).set_body_raw(body.to_owned(), "application/json");
    if let Some(seconds) = retry_after {
        answer = answer.insert_header("retry-after", seconds);
    }
    let (outcome, _) = exchange(build, route, answer).await;
    let error = outcome.expect_err(body);
    let reason = error.to_string();
    assert!(!reason.contains("4155550123") && !reason.contains("123456"), "{reason}");
    error
}

fn header<'a>(request: &'a Request, name: &str) -> &'a str {
    request.headers.get(name).unwrap_or_else(|| panic!("header {name}")).to_str().expect("ASCII header")
}

/// The form body as a map; a repeated field fails the test.
fn form(request: &Request) -> BTreeMap<String, String> {
    assert_eq!(header(request, "content-type"), "application/x-www-form-urlencoded");
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&request.body).expect("form body");
    let map: BTreeMap<String, String> = pairs.iter().cloned().collect();
    assert_eq!(map.len(), pairs.len(), "no field twice");
    map
}

fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn basic(user: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

fn retryable(error: &CarrierError) -> Option<Duration> {
    match error {
        CarrierError::Retryable { retry_after, .. } => *retry_after,
        CarrierError::Permanent { reason } => panic!("expected retryable, got permanent: {reason}"),
    }
}

// ---------------------------------------------------------------- Twilio

fn twilio_config(base_url: String) -> TwilioConfig {
    TwilioConfig {
        account_sid: ACCOUNT_SID.into(),
        status_callback: Some("https://otp.example.com/receipts/twilio".into()),
        ..TwilioConfig::sandbox(&base_url, "auth-token-1")
    }
}

fn twilio(base_url: String) -> Twilio {
    Twilio::new(&twilio_config(base_url)).expect("twilio config")
}

/// The create-message answer as in Twilio's Messages resource reference.
fn twilio_created() -> ResponseTemplate {
    ResponseTemplate::new(201).set_body_json(json!({
        "account_sid": ACCOUNT_SID,
        "api_version": "2010-04-01",
        "body": "otp-pipeline: your verification code is 123456.",
        "date_created": "Thu, 24 Aug 2023 05:01:45 +0000",
        "date_sent": null,
        "date_updated": "Thu, 24 Aug 2023 05:01:45 +0000",
        "direction": "outbound-api",
        "error_code": null,
        "error_message": null,
        "from": "+15005550006",
        "messaging_service_sid": null,
        "num_media": "0",
        "num_segments": "1",
        "price": null,
        "price_unit": null,
        "sid": "SM1f0e8ae6ade43cb3c0ce4525424e404f",
        "status": "queued",
        "subresource_uris": {"media": "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages/SM1f0e8ae6ade43cb3c0ce4525424e404f/Media.json"},
        "to": "+14155550123",
        "uri": "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages/SM1f0e8ae6ade43cb3c0ce4525424e404f.json"
    }))
}

#[tokio::test]
async fn twilio_posts_the_message_form_with_account_credentials() {
    let (outcome, request) = exchange(twilio, TWILIO_PATH, twilio_created()).await;
    assert_eq!(outcome, Ok(Accepted { carrier_message_id: Some("SM1f0e8ae6ade43cb3c0ce4525424e404f".into()) }));
    assert_eq!(request.method.as_str(), "POST");
    assert_eq!(request.url.path(), TWILIO_PATH);
    assert_eq!(request.url.query(), None);
    assert_eq!(header(&request, "authorization"), basic(ACCOUNT_SID, "auth-token-1"));
    assert_eq!(
        form(&request),
        fields(&[
            ("To", "+14155550123"),
            ("From", "+15005550006"),
            ("Body", &sms().text),
            ("StatusCallback", "https://otp.example.com/receipts/twilio"),
        ])
    );
}

#[tokio::test]
async fn twilio_uses_the_api_key_and_the_messaging_service() {
    let build = |base_url| {
        Twilio::new(&TwilioConfig {
            api_key_sid: Some("SK0123456789abcdef0123456789abcdef".into()),
            api_key_secret: Some("key-secret-1".into()),
            from: None,
            messaging_service_sid: Some("MG0123456789abcdef0123456789abcdef".into()),
            status_callback: None,
            ..twilio_config(base_url)
        })
        .expect("twilio config")
    };
    let (outcome, request) = exchange(build, TWILIO_PATH, twilio_created()).await;
    assert!(outcome.is_ok());
    assert_eq!(header(&request, "authorization"), basic("SK0123456789abcdef0123456789abcdef", "key-secret-1"));
    assert_eq!(
        form(&request),
        fields(&[
            ("To", "+14155550123"),
            ("MessagingServiceSid", "MG0123456789abcdef0123456789abcdef"),
            ("Body", &sms().text),
        ])
    );
}

#[tokio::test]
async fn twilio_invalid_to_is_permanent_and_its_number_redacted() {
    // The documented 21211 answer quotes the number back.
    let body = r#"{"code": 21211, "message": "The 'To' number +14155550123 is not a valid phone number.", "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}"#;
    let error = failure(twilio, TWILIO_PATH, 400, body, None).await;
    assert_eq!(
        error,
        CarrierError::Permanent {
            reason: "twilio 21211: The 'To' number +*********** is not a valid phone number.".into()
        }
    );
}

#[tokio::test]
async fn twilio_unsubscribed_and_bad_credentials_are_permanent() {
    for (status, body) in [
        (
            400,
            r#"{"code": 21610, "message": "Attempt to send to unsubscribed recipient", "more_info": "https://www.twilio.com/docs/errors/21610", "status": 400}"#,
        ),
        (
            401,
            r#"{"code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401}"#,
        ),
    ] {
        let error = failure(twilio, TWILIO_PATH, status, body, None).await;
        assert!(!error.is_retryable(), "{body}");
    }
}

#[tokio::test]
async fn twilio_too_many_requests_is_retried_after_retry_after() {
    let body = r#"{"code": 20429, "message": "Too Many Requests", "more_info": "https://www.twilio.com/docs/errors/20429", "status": 429}"#;
    let error = failure(twilio, TWILIO_PATH, 429, body, Some("7")).await;
    assert_eq!(retryable(&error), Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn twilio_server_errors_are_retryable() {
    let body = r#"{"code": 20500, "message": "Internal Server Error", "more_info": "https://www.twilio.com/docs/errors/20500", "status": 500}"#;
    let error = failure(twilio, TWILIO_PATH, 500, body, None).await;
    assert_eq!(retryable(&error), None);
}

// ---------------------------------------------------------------- MSG91

fn msg91_config(base_url: String) -> Msg91Config {
    Msg91Config {
        base_url,
        authkey: "msg91-authkey-1".into(),
        template_id: "64f0c0ffee0123456789abcd".into(),
        code_variable: "otp".into(),
        receipt_token: Some("dlr-token".into()),
        timeout_ms: 5_000,
    }
}

fn msg91(base_url: String) -> Msg91 {
    Msg91::new(&msg91_config(base_url)).expect("msg91 config")
}

#[tokio::test]
async fn msg91_posts_the_flow_json_with_the_authkey() {
    let answer =
        ResponseTemplate::new(200).set_body_json(json!({"message": "5762846b4f8d285d378b4567", "type": "success"}));
    let (outcome, request) = exchange(msg91, MSG91_PATH, answer).await;
    assert_eq!(outcome, Ok(Accepted { carrier_message_id: Some("5762846b4f8d285d378b4567".into()) }));
    assert_eq!(request.method.as_str(), "POST");
    assert_eq!(request.url.path(), MSG91_PATH);
    assert_eq!(request.url.query(), None);
    assert_eq!(header(&request, "authkey"), "msg91-authkey-1");
    assert_eq!(header(&request, "content-type"), "application/json");
    assert_eq!(header(&request, "accept"), "application/json");
    let body: Value = serde_json::from_slice(&request.body).expect("JSON body");
    assert_eq!(
        body,
        json!({
            "template_id": "64f0c0ffee0123456789abcd",
            "short_url": "0",
            "recipients": [{"mobiles": "14155550123", "otp": "123456"}]
        })
    );
}

#[tokio::test]
async fn msg91_error_answers_are_permanent() {
    // MSG91's documented error answer, with HTTP 200 as it sends it.
    let body = r#"{"type":"error","message":"Missing Authentication Key","code":"106"}"#;
    let error = failure(msg91, MSG91_PATH, 200, body, None).await;
    assert_eq!(error, CarrierError::Permanent { reason: "msg91 106: Missing Authentication Key".into() });
    let body = r#"{"type":"error","message":"IP not whitelisted","code":"418"}"#;
    assert!(!failure(msg91, MSG91_PATH, 401, body, None).await.is_retryable());
}

#[tokio::test]
async fn msg91_throttling_is_retried_after_retry_after() {
    let body = r#"{"type":"error","message":"Too many requests"}"#;
    let error = failure(msg91, MSG91_PATH, 429, body, Some("4")).await;
    assert_eq!(retryable(&error), Some(Duration::from_secs(4)));
}

#[tokio::test]
async fn msg91_server_errors_are_retryable() {
    let error = failure(msg91, MSG91_PATH, 502, "<html>Bad Gateway</html>", None).await;
    assert_eq!(retryable(&error), None);
}

// ---------------------------------------------------------------- Vonage

fn vonage_config(base_url: String) -> VonageConfig {
    VonageConfig {
        base_url,
        api_key: "abcd1234".into(),
        api_secret: Some("api-secret-1".into()),
        signature_secret: None,
        from: "AcmeInc".into(),
        callback: Some("https://otp.example.com/receipts/vonage?token=dlr-token".into()),
        receipt_token: Some("dlr-token".into()),
        timeout_ms: 5_000,
    }
}

fn vonage_carrier(base_url: String) -> Vonage {
    Vonage::new(&vonage_config(base_url)).expect("vonage config")
}

/// The success answer from Vonage's "Troubleshooting SMS" guide.
fn vonage_sent() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "message-count": "1",
        "messages": [{
            "to": "14155550123",
            "message-id": "0C000000217B7F02",
            "status": "0",
            "remaining-balance": "15.53590000",
            "message-price": "0.03330000",
            "network": "23410",
            "client-ref": "order-42-login-1"
        }]
    }))
}

fn vonage_error(status: &str, text: &str) -> String {
    json!({"message-count": "1", "messages": [{"status": status, "error-text": text}]}).to_string()
}

#[tokio::test]
async fn vonage_posts_the_sms_form_with_the_api_secret() {
    let (outcome, request) = exchange(vonage_carrier, VONAGE_PATH, vonage_sent()).await;
    assert_eq!(outcome, Ok(Accepted { carrier_message_id: Some("0C000000217B7F02".into()) }));
    assert_eq!(request.method.as_str(), "POST");
    assert_eq!(request.url.path(), VONAGE_PATH);
    assert_eq!(request.url.query(), None);
    assert!(request.headers.get("authorization").is_none());
    assert_eq!(
        form(&request),
        fields(&[
            ("api_key", "abcd1234"),
            ("api_secret", "api-secret-1"),
            ("from", "AcmeInc"),
            ("to", "14155550123"),
            ("text", &sms().text),
            ("client-ref", "order-42-login-1"),
            ("callback", "https://otp.example.com/receipts/vonage?token=dlr-token"),
        ])
    );
}

#[tokio::test]
async fn vonage_signs_unicode_messages_without_the_secret() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).and(path(VONAGE_PATH)).respond_with(vonage_sent()).expect(1).mount(&server).await;
    let carrier = Vonage::new(&VonageConfig {
        api_secret: None,
        signature_secret: Some("signature-secret-1".into()),
        callback: None,
        ..vonage_config(server.uri())
    })
    .expect("vonage config");
    let message = Sms { text: "आपका कोड 123456 है".into(), ..sms() };
    assert!(carrier.send(&message).await.is_ok());
    let requests = server.received_requests().await.expect("requests are recorded");
    let mut sent = form(&requests[0]);
    let sig = sent.remove("sig").expect("sig");
    let timestamp: u64 = sent.remove("timestamp").expect("timestamp").parse().expect("seconds");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    assert!(now.abs_diff(timestamp) < 60, "timestamp {timestamp} vs now {now}");
    assert_eq!(
        sent,
        fields(&[
            ("api_key", "abcd1234"),
            ("from", "AcmeInc"),
            ("to", "14155550123"),
            ("text", "आपका कोड 123456 है"),
            ("type", "unicode"),
            ("client-ref", "order-42-login-1"),
        ])
    );
    sent.insert("timestamp".into(), timestamp.to_string());
    let signed: Vec<(String, String)> = sent.into_iter().collect();
    assert_eq!(sig, vonage::sign("signature-secret-1", &signed));
}

#[tokio::test]
async fn vonage_throttled_status_is_retryable() {
    let body = vonage_error("1", "Throughput Rate Exceeded - please wait [ 1000 ] and retry");
    let error = failure(vonage_carrier, VONAGE_PATH, 200, &body, None).await;
    assert_eq!(retryable(&error), None);
}

#[tokio::test]
async fn vonage_bad_credentials_and_invalid_numbers_are_permanent() {
    let body = vonage_error("4", "Bad Credentials");
    let error = failure(vonage_carrier, VONAGE_PATH, 200, &body, None).await;
    assert_eq!(error, CarrierError::Permanent { reason: "vonage 4: Bad Credentials".into() });
    let body = vonage_error("3", "Invalid to address 14155550123");
    assert!(!failure(vonage_carrier, VONAGE_PATH, 200, &body, None).await.is_retryable());
}

#[tokio::test]
async fn vonage_http_429_is_retried_after_retry_after() {
    let error = failure(vonage_carrier, VONAGE_PATH, 429, "", Some("3")).await;
    assert_eq!(retryable(&error), Some(Duration::from_secs(3)));
    let error = failure(vonage_carrier, VONAGE_PATH, 503, "", None).await;
    assert_eq!(retryable(&error), None);
}

// ---------------------------------------------------------------- all

#[tokio::test]
async fn unreachable_carriers_are_retryable() {
    // A loopback port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let base_url = format!("http://{}", listener.local_addr().expect("address"));
    drop(listener);
    let carriers: [Box<dyn Carrier>; 3] =
        [Box::new(twilio(base_url.clone())), Box::new(msg91(base_url.clone())), Box::new(vonage_carrier(base_url))];
    for carrier in carriers {
        let error = carrier.send(&sms()).await.expect_err(carrier.name());
        assert!(error.is_retryable(), "{}: {error}", carrier.name());
        assert!(!error.to_string().contains("127.0.0.1"), "{error}");
    }
}
