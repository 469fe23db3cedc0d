//! Twilio Programmable Messaging: the Messages resource
//! (`POST /2010-04-01/Accounts/{AccountSid}/Messages.json`) and its status
//! callbacks (signed with `X-Twilio-Signature`).
//!
//! 429, error 20429 (too many requests), 21611 (sender queue full) and 5xx
//! are retryable, honouring `Retry-After`; every other error (21211 invalid
//! `To`, 21610 unsubscribed, 21408 region not enabled, 20003 authentication…)
//! is permanent. Network errors and timeouts are retryable.

use crate::broker::BoxFuture;
use crate::carriers::Reply;
use crate::carriers::util::{http_url, non_empty, non_empty_secret, short};
use crate::carriers::{
    Accepted, Callback, Carrier, CarrierConfigError, CarrierError, CarrierKind, Receipt, ReceiptError, ReceiptStatus,
    Receipts, Sms, exchange, token_matches,
};
use crate::config::TwilioConfig;
use crate::domain::phone::{mask, redact_numbers};
use base64::Engine;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde::Deserialize;
use sha1::Sha1;
use std::time::Duration;

const KIND: CarrierKind = CarrierKind::Twilio;
/// This carrier's name, as routes, metrics and receipts say it.
const NAME: &str = KIND.as_str();

/// Twilio error codes worth retrying: 20429 too many requests, 21611 the
/// sender's queue is full.
const RETRYABLE_CODES: [u64; 2] = [20429, 21611];

/// `X-Twilio-Signature` of a callback: Base64(HMAC-SHA1(auth token, URL
/// followed by every POST parameter's name and value, sorted by name)).
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("HMAC takes keys of any size");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Sends through Twilio's Messages resource.
pub struct Twilio {
    client: reqwest::Client,
    url: reqwest::Url,
    user: String,
    password: String,
    sender: Sender,
    status_callback: Option<String>,
    /// Its section, to check status callbacks with (auth token, callback URL).
    config: TwilioConfig,
}

/// Who the message comes from: exactly one of `From` or `MessagingServiceSid`.
enum Sender {
    From(String),
    Service(String),
}

/// The parts of Twilio's answers this adapter reads (success and error),
/// leniently: `code` is a number, tolerated as a string.
#[derive(Deserialize, Default)]
struct Answer {
    sid: Option<String>,
    code: Option<serde_json::Value>,
    message: Option<String>,
}

impl Answer {
    fn parse(body: &[u8]) -> Self {
        serde_json::from_slice(body).unwrap_or_default()
    }

    /// Twilio's error code (a number; tolerated as a string).
    fn code(&self) -> Option<u64> {
        match self.code.as_ref()? {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

impl Twilio {
    /// Checks the configuration and builds the client.
    ///
    /// Refused: a base URL that is not http(s), an empty account SID or auth
    /// token, not exactly one of `from`/`messaging_service_sid`, an API key SID
    /// without its secret (or the reverse), a `status_callback` that is not an
    /// http(s) URL.
    pub fn new(config: &TwilioConfig) -> Result<Self, CarrierConfigError> {
        let invalid = |what: &str| CarrierConfigError::Invalid(NAME, what.to_owned());
        let mut url = http_url(&config.base_url).ok_or_else(|| invalid("base_url must be an http(s) URL"))?;
        let account_sid = config.account_sid.trim();
        if account_sid.is_empty() || !account_sid.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(invalid("account_sid must be the account's SID (AC…)"));
        }
        if config.auth_token.is_blank() {
            return Err(invalid("auth_token is required"));
        }
        url.path_segments_mut().map_err(|()| invalid("base_url cannot be a base"))?.pop_if_empty().extend([
            "2010-04-01",
            "Accounts",
            account_sid,
            "Messages.json",
        ]);
        let sender = match (non_empty(&config.from), non_empty(&config.messaging_service_sid)) {
            (Some(from), None) => Sender::From(from.to_owned()),
            (None, Some(service)) => Sender::Service(service.to_owned()),
            _ => return Err(invalid("set exactly one of from and messaging_service_sid")),
        };
        let (user, password) = match (non_empty(&config.api_key_sid), non_empty_secret(&config.api_key_secret)) {
            (Some(key), Some(secret)) => (key.to_owned(), secret.to_owned()),
            (None, None) => (account_sid.to_owned(), config.auth_token.expose().to_owned()),
            _ => return Err(invalid("api_key_sid and api_key_secret go together")),
        };
        let status_callback = match non_empty(&config.status_callback) {
            Some(callback) => {
                http_url(callback).ok_or_else(|| invalid("status_callback must be an http(s) URL"))?;
                Some(callback.to_owned())
            }
            None => None,
        };
        if config.timeout_ms == 0 {
            return Err(invalid("timeout_ms must be positive"));
        }
        Ok(Self {
            client: crate::carriers::http_client(NAME, config.timeout_ms)?,
            url,
            user,
            password,
            sender,
            status_callback,
            config: config.clone(),
        })
    }
}

impl Carrier for Twilio {
    fn kind(&self) -> CarrierKind {
        KIND
    }

    /// A status callback, signed (`X-Twilio-Signature`) over the configured
    /// `status_callback` URL; the signature identifies it against replays.
    fn receipts(&self, callback: &Callback<'_>) -> Result<Receipts, ReceiptError> {
        let url = self.config.status_callback.as_deref().ok_or(ReceiptError::NotConfigured(NAME))?;
        let signature = callback.headers.get("x-twilio-signature").and_then(|v| v.to_str().ok()).map(str::trim);
        let receipt = receipt(&self.config, url, signature, callback.body)?;
        Ok(Receipts { receipts: vec![receipt], replay_key: signature.map(str::to_owned) })
    }

    fn send<'a>(&'a self, sms: &'a Sms) -> BoxFuture<'a, Result<Accepted, CarrierError>> {
        Box::pin(async move {
            let mut form: Vec<(&str, &str)> = vec![("To", &sms.to), ("Body", &sms.text)];
            match &self.sender {
                Sender::From(from) => form.push(("From", from)),
                Sender::Service(sid) => form.push(("MessagingServiceSid", sid)),
            }
            if let Some(callback) = &self.status_callback {
                form.push(("StatusCallback", callback));
            }
            let reply = exchange(
                self.client
                    .post(self.url.clone())
                    .basic_auth(&self.user, Some(&self.password))
                    .header(reqwest::header::ACCEPT, "application/json")
                    .form(&form),
            )
            .await?;
            let accepted = classify(&reply).map_err(|e| e.scrub(&sms.code))?;
            let sid = accepted.carrier_message_id.as_deref().unwrap_or("-");
            tracing::debug!(to = %mask(&sms.to), sid, "twilio accepted the message");
            Ok(accepted)
        })
    }
}

/// Classifies an answer of the Messages resource: a 2xx is accepted with its
/// `sid`; otherwise the error comes from the HTTP status and Twilio's error
/// JSON (`{"code","message","more_info","status"}`).
///
/// The reason reads `twilio <code>: <message>` with numbers in the message
/// masked (Twilio quotes the `To` number back).
pub fn classify(reply: &Reply) -> Result<Accepted, CarrierError> {
    if reply.status.is_success() {
        let sid = Answer::parse(&reply.body).sid.filter(|s| !s.is_empty());
        return Ok(Accepted { carrier_message_id: sid });
    }
    Err(classify_error(reply.status, &reply.body, reply.retry_after))
}

fn classify_error(status: StatusCode, body: &[u8], retry_after: Option<Duration>) -> CarrierError {
    let answer = Answer::parse(body);
    let code = answer.code();
    let reason = match (code, answer.message.as_deref()) {
        (Some(code), Some(message)) => {
            format!("twilio {code}: {}", short(&redact_numbers(message)))
        }
        (Some(code), None) => format!("twilio {code} (HTTP {})", status.as_u16()),
        (None, _) => format!("twilio HTTP {status}"),
    };
    let retryable = status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
        || code.is_some_and(|code| RETRYABLE_CODES.contains(&code));
    if retryable { CarrierError::Retryable { reason, retry_after } } else { CarrierError::Permanent { reason } }
}

/// Authenticates and parses a status callback.
///
/// `url` is the full public URL Twilio called (the configured
/// `status_callback`), `signature_header` the `X-Twilio-Signature` header and
/// `form_body` the raw `application/x-www-form-urlencoded` body. Maps
/// `delivered` and `read` to delivered; `undelivered`, `failed` and `canceled`
/// to undelivered (error: `ErrorCode`); anything else (`queued`, `sending`,
/// `sent`, `accepted`, `scheduled`…) to pending.
pub fn receipt(
    config: &TwilioConfig,
    url: &str,
    signature_header: Option<&str>,
    form_body: &[u8],
) -> Result<Receipt, ReceiptError> {
    let params: Vec<(String, String)> =
        serde_urlencoded::from_bytes(form_body).map_err(|_| ReceiptError::Forbidden("unreadable body".into()))?;
    let expected = signature(config.auth_token.expose(), url, &params);
    if signature_header.is_none() {
        return Err(ReceiptError::Forbidden("missing X-Twilio-Signature".into()));
    }
    if !token_matches(signature_header.map(str::trim), &expected) {
        return Err(ReceiptError::Forbidden("wrong X-Twilio-Signature".into()));
    }
    let param = |name: &str| {
        params.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str()).filter(|v| !v.is_empty())
    };
    let sid = param("MessageSid").or_else(|| param("SmsSid")).ok_or_else(|| malformed("no MessageSid"))?;
    let state = param("MessageStatus").or_else(|| param("SmsStatus")).ok_or_else(|| malformed("no MessageStatus"))?;
    let status = match state {
        "delivered" | "read" => ReceiptStatus::Delivered,
        "undelivered" | "failed" | "canceled" => ReceiptStatus::Undelivered,
        _ => ReceiptStatus::Pending,
    };
    let error = match status {
        ReceiptStatus::Undelivered => Some(param("ErrorCode").unwrap_or(state).to_owned()),
        _ => None,
    };
    Ok(Receipt { carrier: NAME, carrier_message_id: sid.to_owned(), status, error })
}

fn malformed(what: &str) -> ReceiptError {
    ReceiptError::Malformed(format!("twilio: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TwilioConfig {
        // Twilio's own signature example: auth token 12345, this callback URL.
        TwilioConfig {
            account_sid: "AC00000000000000000000000000000000".into(),
            status_callback: Some("https://mycompany.com/myapp.php?foo=1&bar=2".into()),
            ..TwilioConfig::sandbox("https://api.twilio.com", "12345")
        }
    }

    fn code(status: u16, body: &str) -> CarrierError {
        classify_error(StatusCode::from_u16(status).expect("status"), body.as_bytes(), None)
    }

    /// The signature example from Twilio's helper-library test suite
    /// (twilio-python `tests/unit/test_request_validator.py`).
    #[test]
    fn signature_matches_twilios_documented_example() {
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
            ("Caller", "+14158675309"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(signature("12345", url, &params), "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
    }

    #[test]
    fn documented_error_examples_are_classified() {
        // https://www.twilio.com/docs/usage/troubleshooting/debugging-your-application
        let invalid_to = code(
            400,
            r#"{"code": 21211, "message": "The 'To' number 5551234567 is not a valid phone number.", "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}"#,
        );
        assert_eq!(
            invalid_to,
            CarrierError::Permanent {
                reason: "twilio 21211: The 'To' number ********** is not a valid phone number.".into()
            }
        );
        for (status, body) in [
            (400, r#"{"code": 21610, "message": "Attempt to send to unsubscribed recipient", "status": 400}"#),
            (
                400,
                r#"{"code": 21408, "message": "Permission to send an SMS has not been enabled for the region indicated by the 'To' number: +9198765XXXXX.", "status": 400}"#,
            ),
            (400, r#"{"code": 21614, "message": "'To' number is not a valid mobile number", "status": 400}"#),
            (
                400,
                r#"{"code": 21612, "message": "The 'To' phone number is not currently reachable via SMS", "status": 400}"#,
            ),
            (
                401,
                r#"{"code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401}"#,
            ),
            (
                404,
                r#"{"code": 20404, "message": "The requested resource /2010-04-01/Accounts/AC123/Messages.json was not found", "status": 404}"#,
            ),
            (401, ""),
        ] {
            assert!(!code(status, body).is_retryable(), "{status} {body}");
        }
        for (status, body) in [
            (429, r#"{"code": 20429, "message": "Too Many Requests", "status": 429}"#),
            (
                400,
                r#"{"code": 21611, "message": "This 'From' number has exceeded the maximum number of queued messages", "status": 400}"#,
            ),
            (500, r#"{"code": 20500, "message": "Internal Server Error", "status": 500}"#),
            (503, "<html>Service Unavailable</html>"),
        ] {
            assert!(code(status, body).is_retryable(), "{status} {body}");
        }
    }

    #[test]
    fn retry_after_is_kept_and_reasons_never_hold_the_number() {
        let wait = Some(Duration::from_secs(7));
        let body = br#"{"code": 20429, "message": "Too Many Requests", "status": 429}"#;
        assert_eq!(
            classify_error(StatusCode::TOO_MANY_REQUESTS, body, wait),
            CarrierError::Retryable { reason: "twilio 20429: Too Many Requests".into(), retry_after: wait }
        );
        let body = br#"{"code": 21211, "message": "The 'To' number +14155550123 is not a valid phone number.", "status": 400}"#;
        let reason = classify_error(StatusCode::BAD_REQUEST, body, None).to_string();
        assert!(!reason.contains("4155550123"), "{reason}");
        assert_eq!(
            classify_error(StatusCode::BAD_GATEWAY, b"", None).to_string(),
            "retryable: twilio HTTP 502 Bad Gateway"
        );
    }

    fn callback(params: &[(&str, &str)]) -> (Vec<u8>, String) {
        let owned: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let body = serde_urlencoded::to_string(&owned).expect("form");
        let config = config();
        let url = config.status_callback.as_deref().expect("callback");
        (body.into_bytes(), signature(config.auth_token.expose(), url, &owned))
    }

    #[test]
    fn signed_callbacks_are_parsed() {
        let config = config();
        let url = config.status_callback.clone().expect("callback");
        for (state, error, expected) in [
            ("delivered", None, ReceiptStatus::Delivered),
            ("read", None, ReceiptStatus::Delivered),
            ("undelivered", Some("30003"), ReceiptStatus::Undelivered),
            ("failed", Some("30008"), ReceiptStatus::Undelivered),
            ("sent", None, ReceiptStatus::Pending),
            ("queued", None, ReceiptStatus::Pending),
            ("accepted", None, ReceiptStatus::Pending),
        ] {
            let mut params = vec![
                ("AccountSid", "AC00000000000000000000000000000000"),
                ("From", "+15005550006"),
                ("MessageSid", "SM1f0e8ae6ade43cb3c0ce4525424e404f"),
                ("MessageStatus", state),
                ("SmsSid", "SM1f0e8ae6ade43cb3c0ce4525424e404f"),
                ("SmsStatus", state),
                ("To", "+14155550123"),
                ("ApiVersion", "2010-04-01"),
            ];
            if let Some(code) = error {
                params.push(("ErrorCode", code));
            }
            let (body, sig) = callback(&params);
            let receipt = receipt(&config, &url, Some(&sig), &body).expect(state);
            assert_eq!(
                receipt,
                Receipt {
                    carrier: "twilio",
                    carrier_message_id: "SM1f0e8ae6ade43cb3c0ce4525424e404f".into(),
                    status: expected,
                    error: error.map(str::to_owned),
                },
                "{state}"
            );
        }
    }

    #[test]
    fn forged_or_unsigned_callbacks_are_forbidden() {
        let config = config();
        let url = config.status_callback.clone().expect("callback");
        let (body, sig) = callback(&[("MessageSid", "SM1"), ("MessageStatus", "delivered")]);
        assert!(matches!(receipt(&config, &url, None, &body), Err(ReceiptError::Forbidden(_))));
        assert!(matches!(receipt(&config, &url, Some("bm90IGl0"), &body), Err(ReceiptError::Forbidden(_))));
        // Signed for another body, or for another URL.
        let (tampered, _) = callback(&[("MessageSid", "SM1"), ("MessageStatus", "failed")]);
        assert!(matches!(receipt(&config, &url, Some(&sig), &tampered), Err(ReceiptError::Forbidden(_))));
        assert!(matches!(
            receipt(&config, "https://evil.example/", Some(&sig), &body),
            Err(ReceiptError::Forbidden(_))
        ));
        // Authentic but without a status: malformed.
        let (body, sig) = callback(&[("MessageSid", "SM1")]);
        assert!(matches!(receipt(&config, &url, Some(&sig), &body), Err(ReceiptError::Malformed(_))));
    }

    #[test]
    fn configuration_is_checked() {
        assert!(Twilio::new(&config()).is_ok());
        let both = TwilioConfig { messaging_service_sid: Some("MG0".into()), ..config() };
        let neither = TwilioConfig { from: None, ..config() };
        let half_key = TwilioConfig { api_key_sid: Some("SK0".into()), ..config() };
        let bad_url = TwilioConfig { base_url: "ftp://api.twilio.com".into(), ..config() };
        let bad_callback = TwilioConfig { status_callback: Some("not a url".into()), ..config() };
        for (name, bad) in [
            ("both senders", both),
            ("no sender", neither),
            ("half an API key", half_key),
            ("base_url", bad_url),
            ("status_callback", bad_callback),
        ] {
            assert!(matches!(Twilio::new(&bad), Err(CarrierConfigError::Invalid("twilio", _))), "{name}");
        }
    }
}
