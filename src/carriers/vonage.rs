//! Vonage SMS API (`POST /sms/json`, form-encoded), authenticated with
//! `api_secret` or, when a signature secret is configured, signed
//! (`timestamp` + `sig`, HMAC-SHA-256). Delivery receipts arrive on
//! `callback` as query string or body parameters, authenticated by a `token`
//! parameter we append to the callback URL.
//!
//! Per-message status 1 (throttled), 5 (internal error), 10 (too many binds),
//! 13 (communication failed), HTTP 429 and 5xx are retryable (honouring
//! `Retry-After`); every other non-zero status is permanent.

use crate::broker::BoxFuture;
use crate::carriers::Reply;
use crate::carriers::util::{http_url, non_empty, non_empty_secret};
use crate::carriers::{
    Accepted, Callback, Carrier, CarrierConfigError, CarrierError, CarrierKind, Receipt, ReceiptError, ReceiptStatus,
    Receipts, Sms, check_receipt_token, exchange,
};
use crate::config::VonageConfig;
use crate::domain::phone::{mask, redact_numbers};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde::Deserialize;
use sha2::Sha256;
use std::time::{SystemTime, UNIX_EPOCH};

const KIND: CarrierKind = CarrierKind::Vonage;
/// This carrier's name, as routes, metrics and receipts say it.
const NAME: &str = KIND.as_str();

/// Message statuses Vonage documents as temporary: throttled, internal error,
/// too many binds, communication failed.
const RETRYABLE_STATUSES: [&str; 4] = ["1", "5", "10", "13"];

/// Longest `callback` and `client-ref` Vonage accepts.
const MAX_REF: usize = 100;

/// GSM 03.38 default alphabet (what `type=text` can carry)…
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// …and its extension table.
const GSM7_EXTENSION: &str = "\u{c}^{}\\[~]|€";

/// Sends through Vonage's SMS API.
pub struct Vonage {
    client: reqwest::Client,
    url: reqwest::Url,
    api_key: String,
    auth: Auth,
    from: String,
    callback: Option<String>,
    /// Its section, to check delivery receipts with (`receipt_token`).
    config: VonageConfig,
}

/// How requests are authenticated.
enum Auth {
    Secret(String),
    Signed(String),
}

#[derive(Deserialize, Default)]
struct Answer {
    #[serde(default)]
    messages: Vec<Message>,
}

#[derive(Deserialize)]
struct Message {
    status: Option<serde_json::Value>,
    #[serde(rename = "message-id")]
    message_id: Option<String>,
    #[serde(rename = "error-text")]
    error_text: Option<String>,
}

impl Vonage {
    /// Checks the configuration and builds the client.
    ///
    /// Refused: a base URL that is not http(s), an empty `api_key` or `from`,
    /// neither `api_secret` nor `signature_secret`, a `callback` that is not an
    /// http(s) URL of at most 100 characters. With both secrets, requests are signed.
    pub fn new(config: &VonageConfig) -> Result<Self, CarrierConfigError> {
        let invalid = |what: &str| CarrierConfigError::Invalid(NAME, what.to_owned());
        let mut url = http_url(&config.base_url).ok_or_else(|| invalid("base_url must be an http(s) URL"))?;
        url.path_segments_mut()
            .map_err(|()| invalid("base_url cannot be a base"))?
            .pop_if_empty()
            .extend(["sms", "json"]);
        let api_key = config.api_key.trim();
        if api_key.is_empty() {
            return Err(invalid("api_key is required"));
        }
        let auth = match (non_empty_secret(&config.signature_secret), non_empty_secret(&config.api_secret)) {
            (Some(secret), _) => Auth::Signed(secret.to_owned()),
            (None, Some(secret)) => Auth::Secret(secret.to_owned()),
            (None, None) => return Err(invalid("set api_secret or signature_secret")),
        };
        let from = config.from.trim();
        if from.is_empty() {
            return Err(invalid("from is required"));
        }
        let callback = match non_empty(&config.callback) {
            Some(callback) if http_url(callback).is_none() => {
                return Err(invalid("callback must be an http(s) URL"));
            }
            Some(callback) if callback.chars().count() > MAX_REF => {
                return Err(invalid("callback must be at most 100 characters"));
            }
            other => other.map(str::to_owned),
        };
        if config.timeout_ms == 0 {
            return Err(invalid("timeout_ms must be positive"));
        }
        Ok(Self {
            client: crate::carriers::http_client(NAME, config.timeout_ms)?,
            url,
            api_key: api_key.to_owned(),
            auth,
            from: from.to_owned(),
            callback,
            config: config.clone(),
        })
    }

    /// The form parameters of one SMS, authenticated.
    fn params(&self, sms: &Sms, now: SystemTime) -> Vec<(String, String)> {
        let mut params = vec![
            ("api_key".to_owned(), self.api_key.clone()),
            ("from".to_owned(), self.from.clone()),
            ("to".to_owned(), sms.to.trim_start_matches('+').to_owned()),
            ("text".to_owned(), sms.text.clone()),
            ("client-ref".to_owned(), sms.request_id.chars().take(MAX_REF).collect()),
        ];
        if !is_gsm7(&sms.text) {
            params.push(("type".to_owned(), "unicode".to_owned()));
        }
        if let Some(callback) = &self.callback {
            params.push(("callback".to_owned(), callback.clone()));
        }
        match &self.auth {
            Auth::Secret(secret) => params.push(("api_secret".to_owned(), secret.clone())),
            Auth::Signed(secret) => {
                let timestamp = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
                params.push(("timestamp".to_owned(), timestamp.to_string()));
                let sig = sign(secret, &params);
                params.push(("sig".to_owned(), sig));
            }
        }
        params
    }
}

impl Carrier for Vonage {
    fn kind(&self) -> CarrierKind {
        KIND
    }

    /// A DLR: its fields in the query (GET), a form or a JSON body (POST).
    fn receipts(&self, callback: &Callback<'_>) -> Result<Receipts, ReceiptError> {
        let params = callback_params(callback)?;
        Ok(Receipts { receipts: vec![receipt(&self.config, &params)?], replay_key: None })
    }

    fn send<'a>(&'a self, sms: &'a Sms) -> BoxFuture<'a, Result<Accepted, CarrierError>> {
        Box::pin(async move {
            let params = self.params(sms, SystemTime::now());
            let reply = exchange(
                self.client.post(self.url.clone()).header(reqwest::header::ACCEPT, "application/json").form(&params),
            )
            .await?;
            let accepted = classify(&reply).map_err(|e| e.scrub(&sms.code))?;
            tracing::debug!(
                to = %mask(&sms.to),
                message_id = accepted.carrier_message_id.as_deref().unwrap_or("-"),
                "vonage accepted the message"
            );
            Ok(accepted)
        })
    }
}

/// `sig` of a signed request: lowercase hex HMAC-SHA-256 (signature secret)
/// of `&name=value` for every parameter but `sig`, sorted by name, with `&`
/// and `=` in values replaced by `_` (Vonage's "Signing Requests").
pub fn sign(signature_secret: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().filter(|(name, _)| name != "sig").collect();
    sorted.sort();
    let mut mac = Hmac::<Sha256>::new_from_slice(signature_secret.as_bytes()).expect("HMAC takes keys of any size");
    for (name, value) in sorted {
        mac.update(b"&");
        mac.update(name.as_bytes());
        mac.update(b"=");
        mac.update(value.replace(['&', '='], "_").as_bytes());
    }
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `text` fits the GSM 03.38 alphabet (with its extension table), so
/// it can go as `type=text`; anything else is sent as `type=unicode`.
pub fn is_gsm7(text: &str) -> bool {
    text.chars().all(|c| GSM7_BASIC.contains(c) || GSM7_EXTENSION.contains(c))
}

/// Reads the SMS API's answer
/// (`{"message-count","messages":[{"status","message-id","error-text",…}]}`):
/// accepted when every part has status `0` (the first part's `message-id`
/// becomes `carrier_message_id`); otherwise the first failed part decides.
pub fn classify(reply: &Reply) -> Result<Accepted, CarrierError> {
    let (status, body, retry_after) = (reply.status, reply.body.as_slice(), reply.retry_after);
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return Err(CarrierError::Retryable { reason: format!("vonage HTTP {status}"), retry_after });
    }
    if !status.is_success() {
        return Err(CarrierError::Permanent { reason: format!("vonage HTTP {status}") });
    }
    let answer: Answer = serde_json::from_slice(body).unwrap_or_default();
    if answer.messages.is_empty() {
        // The outcome is unknown: a retry at worst repeats the SMS.
        return Err(CarrierError::Retryable { reason: "vonage: unexpected answer".into(), retry_after });
    }
    let code = |m: &Message| match &m.status {
        Some(serde_json::Value::String(s)) => s.trim().to_owned(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    if let Some(failed) = answer.messages.iter().find(|m| code(m) != "0") {
        let status = code(failed);
        let text = failed.error_text.as_deref().map(redact_numbers).unwrap_or_default();
        let reason = format!("vonage {status}: {}", text.chars().take(200).collect::<String>());
        return Err(if RETRYABLE_STATUSES.contains(&status.as_str()) {
            CarrierError::Retryable { reason, retry_after }
        } else {
            CarrierError::Permanent { reason }
        });
    }
    let id = answer.messages.into_iter().next().and_then(|m| m.message_id).filter(|id| !id.is_empty());
    Ok(Accepted { carrier_message_id: id })
}

/// A DLR's fields: the query's, then a JSON object's or a form's.
fn callback_params(callback: &Callback<'_>) -> Result<Vec<(String, String)>, ReceiptError> {
    let mut params = callback.query.clone();
    let is_json = callback
        .headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if is_json {
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(callback.body).map_err(|e| ReceiptError::Malformed(e.to_string()))?;
        params.extend(map.into_iter().map(|(k, v)| match v {
            serde_json::Value::String(s) => (k, s),
            other => (k, other.to_string()),
        }));
    } else if !callback.body.is_empty() {
        let form: Vec<(String, String)> = std::str::from_utf8(callback.body)
            .ok()
            .and_then(|b| serde_urlencoded::from_str(b).ok())
            .unwrap_or_default();
        params.extend(form);
    }
    Ok(params)
}

/// Authenticates and parses a delivery receipt.
///
/// `params` are the query string and body parameters merged; the `token`
/// parameter must equal `receipt_token`. `delivered` is delivered;
/// `expired`, `failed` and `rejected` are undelivered (error: `err-code`);
/// `accepted`, `buffered`, `unknown` and anything else are pending.
pub fn receipt(config: &VonageConfig, params: &[(String, String)]) -> Result<Receipt, ReceiptError> {
    let param = |name: &str| {
        params.iter().find(|(key, _)| key == name).map(|(_, value)| value.trim()).filter(|v| !v.is_empty())
    };
    check_receipt_token(&config.receipt_token, param("token"), NAME)?;
    let id = param("messageId").ok_or_else(|| ReceiptError::Malformed("vonage: no messageId".into()))?;
    let state = param("status").ok_or_else(|| ReceiptError::Malformed("vonage: no status".into()))?;
    let status = match state.to_ascii_lowercase().as_str() {
        "delivered" => ReceiptStatus::Delivered,
        "expired" | "failed" | "rejected" => ReceiptStatus::Undelivered,
        _ => ReceiptStatus::Pending,
    };
    let error = (status == ReceiptStatus::Undelivered).then(|| param("err-code").unwrap_or(state).to_owned());
    Ok(Receipt { carrier: NAME, carrier_message_id: id.to_owned(), status, error })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config() -> VonageConfig {
        VonageConfig {
            api_key: "abcd1234".into(),
            api_secret: Some("s3cr3t".into()),
            from: "AcmeInc".into(),
            callback: Some("https://example.com/receipts/vonage?token=dlr-secret".into()),
            receipt_token: Some("dlr-secret".into()),
            ..VonageConfig::sandbox("https://rest.nexmo.com")
        }
    }

    fn answer(status: u16, body: &str) -> Result<Accepted, CarrierError> {
        classify(&Reply::new(StatusCode::from_u16(status).expect("status"), body.as_bytes()))
    }

    fn one(status: &str, error_text: &str) -> String {
        format!(r#"{{"message-count":"1","messages":[{{"status":"{status}","error-text":"{error_text}"}}]}}"#)
    }

    /// Examples from https://developer.vonage.com/messaging/sms/guides/troubleshooting-sms
    /// and the SMS API reference (error `{"status":"2","error-text":"Missing to param"}`).
    #[test]
    fn documented_answers_are_classified() {
        let ok = r#"{"message-count": "1", "messages": [{"to": "447700900000", "message-id": "0C000000217B7F02", "status": "0", "remaining-balance": "15.53590000", "message-price": "0.03330000", "network": "23410"}]}"#;
        assert_eq!(answer(200, ok), Ok(Accepted { carrier_message_id: Some("0C000000217B7F02".into()) }));
        assert_eq!(
            answer(200, &one("2", "Missing to param")),
            Err(CarrierError::Permanent { reason: "vonage 2: Missing to param".into() })
        );
        for (status, text) in [
            ("1", "Throughput Rate Exceeded - please wait [ 1000 ] and retry"),
            ("5", "Internal Error"),
            ("10", "Too Many Existing Binds"),
        ] {
            assert!(answer(200, &one(status, text)).expect_err(status).is_retryable(), "{status}");
        }
        for (status, text) in [
            ("3", "Invalid to address"),
            ("4", "Bad Credentials"),
            ("6", "Invalid Message"),
            ("7", "Number barred."),
            ("8", "Partner Account Barred"),
            ("9", "Partner quota exceeded"),
            ("11", "Account Not Enabled For HTTP"),
            ("12", "Message Too Long"),
            ("14", "Invalid Signature"),
            ("15", "Illegal Sender Address - rejected"),
            ("22", "Invalid Network Code"),
            ("23", "Invalid Callback Url"),
            ("29", "Non White-listed Destination - rejected"),
            ("32", "Signature And API Secret Disallowed"),
            ("33", "Number De-activated"),
        ] {
            assert!(!answer(200, &one(status, text)).expect_err(status).is_retryable(), "{status}");
        }
    }

    #[test]
    fn http_errors_and_multipart_answers() {
        let wait = Some(Duration::from_secs(2));
        assert_eq!(
            classify(&Reply::new(StatusCode::TOO_MANY_REQUESTS, b"").retry_after(wait)),
            Err(CarrierError::Retryable { reason: "vonage HTTP 429 Too Many Requests".into(), retry_after: wait })
        );
        assert!(answer(502, "").expect_err("502").is_retryable());
        assert!(!answer(401, "").expect_err("401").is_retryable());
        assert!(answer(200, "{}").expect_err("empty").is_retryable());
        let partial = r#"{"message-count":"2","messages":[{"status":"0","message-id":"A1"},{"status":"9","error-text":"Partner quota exceeded"}]}"#;
        assert!(!answer(200, partial).expect_err("partial").is_retryable());
        let both =
            r#"{"message-count":"2","messages":[{"status":"0","message-id":"A1"},{"status":"0","message-id":"A2"}]}"#;
        assert_eq!(answer(200, both), Ok(Accepted { carrier_message_id: Some("A1".into()) }));
        let reason = answer(200, &one("6", "Invalid number 447700900000")).expect_err("6").to_string();
        assert!(!reason.contains("7700900000"), "{reason}");
    }

    /// Reference value computed independently (Python `hmac`, SHA-256) by the
    /// procedure of https://developer.vonage.com/getting-started/concepts/signing-messages.
    #[test]
    fn signatures_follow_vonages_procedure() {
        let params: Vec<(String, String)> =
            [("b", "2"), ("a", "1&x=y"), ("timestamp", "1461605396"), ("sig", "ignored")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        assert_eq!(sign("secret", &params), "f88e98165ed55d49977db05ce87e9fe7562bef34b91061d9510fe5c3903e0917");
    }

    #[test]
    fn gsm7_texts_go_as_text_others_as_unicode() {
        assert!(is_gsm7("otp-pipeline: your verification code is 123456. It expires in 5 min."));
        assert!(!is_gsm7("Código: 1234 — no"));
        assert!(is_gsm7("Ihr Code: 1234 {ÄÖÜ} €5 [ok] ~ | ^ \\"));
        assert!(!is_gsm7("आपका कोड 1234 है"));
        assert!(!is_gsm7("code 1234 `x`"));
        assert!(!is_gsm7("🙂 1234"));
    }

    fn receipt_params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Parameters as in https://developer.vonage.com/messaging/sms/guides/delivery-receipts.
    #[test]
    fn receipts_are_parsed() {
        for (state, err, expected) in [
            ("delivered", "0", ReceiptStatus::Delivered),
            ("expired", "1", ReceiptStatus::Undelivered),
            ("failed", "6", ReceiptStatus::Undelivered),
            ("rejected", "29", ReceiptStatus::Undelivered),
            ("accepted", "0", ReceiptStatus::Pending),
            ("buffered", "0", ReceiptStatus::Pending),
            ("unknown", "1", ReceiptStatus::Pending),
        ] {
            let params = receipt_params(&[
                ("msisdn", "447700900000"),
                ("to", "AcmeInc"),
                ("network-code", "23410"),
                ("messageId", "0A0000001234567B"),
                ("price", "0.03330000"),
                ("status", state),
                ("scts", "2001011400"),
                ("err-code", err),
                ("api-key", "abcd1234"),
                ("message-timestamp", "2020-01-01 12:00:00"),
                ("client-ref", "order-42-login-1"),
                ("token", "dlr-secret"),
            ]);
            let got = receipt(&config(), &params).expect(state);
            let error = (expected == ReceiptStatus::Undelivered).then(|| err.to_owned());
            assert_eq!(
                got,
                Receipt { carrier: "vonage", carrier_message_id: "0A0000001234567B".into(), status: expected, error },
                "{state}"
            );
        }
    }

    #[test]
    fn receipts_need_the_token() {
        let base = [("messageId", "0A0000001234567B"), ("status", "delivered")];
        let unconfigured = VonageConfig { receipt_token: None, ..config() };
        assert_eq!(receipt(&unconfigured, &receipt_params(&base)), Err(ReceiptError::NotConfigured("vonage")));
        assert!(matches!(receipt(&config(), &receipt_params(&base)), Err(ReceiptError::Forbidden(_))));
        let wrong = [base[0], base[1], ("token", "guess")];
        assert!(matches!(receipt(&config(), &receipt_params(&wrong)), Err(ReceiptError::Forbidden(_))));
        let no_id = [("status", "delivered"), ("token", "dlr-secret")];
        assert!(matches!(receipt(&config(), &receipt_params(&no_id)), Err(ReceiptError::Malformed(_))));
    }

    #[test]
    fn configuration_is_checked() {
        assert!(Vonage::new(&config()).is_ok());
        assert!(
            Vonage::new(&VonageConfig { api_secret: None, signature_secret: Some("sig".into()), ..config() }).is_ok()
        );
        let long = format!("https://example.com/{}", "x".repeat(90));
        for bad in [
            VonageConfig { api_secret: None, ..config() },
            VonageConfig { base_url: "rest.nexmo.com".into(), ..config() },
            VonageConfig { from: " ".into(), ..config() },
            VonageConfig { callback: Some("nope".into()), ..config() },
            VonageConfig { callback: Some(long), ..config() },
        ] {
            assert!(matches!(Vonage::new(&bad), Err(CarrierConfigError::Invalid("vonage", _))));
        }
    }

    #[test]
    fn signed_requests_carry_no_secret() {
        let carrier =
            Vonage::new(&VonageConfig { signature_secret: Some("sig-secret".into()), ..config() }).expect("config");
        let sms = Sms {
            to: "+447700900000".into(),
            text: "code 123456".into(),
            code: "123456".into(),
            request_id: "r".repeat(128),
            delivery_id: "d1".into(),
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_461_605_396);
        let params = carrier.params(&sms, now);
        assert!(params.iter().all(|(k, _)| k != "api_secret"));
        assert!(params.contains(&("timestamp".into(), "1461605396".into())));
        assert!(params.contains(&("client-ref".into(), "r".repeat(100))));
        let sig = params.iter().find(|(k, _)| k == "sig").map(|(_, v)| v.clone()).expect("sig");
        assert_eq!(sig, sign("sig-secret", &params));
    }
}
