//! MSG91 v5 flow API (`POST /api/v5/flow/`): India requires a DLT-registered
//! template, so MSG91 receives the template id and the code as a template
//! variable, never the text. Delivery reports arrive on the webhook configured
//! in MSG91's panel, authenticated by a `?token=` we append to its URL.
//!
//! HTTP 429, 5xx, throttling and duplicate-request answers are retryable
//! (honouring `Retry-After`); `{"type":"error"}` answers (authentication,
//! IP whitelist, template, number, balance…) and other 4xx are permanent.

use crate::broker::BoxFuture;
use crate::carriers::Reply;
use crate::carriers::util::short;
use crate::carriers::{
    Accepted, Callback, Carrier, CarrierConfigError, CarrierError, CarrierKind, Receipt, ReceiptError, ReceiptStatus,
    Receipts, Sms, check_receipt_token, exchange,
};
use crate::config::Msg91Config;
use crate::domain::phone::{mask, redact_numbers};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use serde_json::{Map, Value, json};
use std::time::Duration;

const KIND: CarrierKind = CarrierKind::Msg91;
/// This carrier's name, as routes, metrics and receipts say it.
const NAME: &str = KIND.as_str();

/// MSG91's answer to a request it took as a duplicate of one made within 10 s
/// (the earlier one may well have been sent): retried once that window passed.
const DUPLICATE_CODE: &str = "311";
const DUPLICATE_WINDOW: Duration = Duration::from_secs(10);

/// Words of MSG91 error messages that mean "slow down" rather than "never".
const THROTTLING: [&str; 5] = ["too many", "rate limit", "throttl", "try again", "temporarily"];

/// Sends through MSG91's flow API.
pub struct Msg91 {
    client: reqwest::Client,
    url: reqwest::Url,
    authkey: HeaderValue,
    template_id: String,
    code_variable: String,
    /// Its section, to check delivery reports with (`receipt_token`).
    config: Msg91Config,
}

impl Msg91 {
    /// Checks the configuration and builds the client.
    ///
    /// Refused: a base URL that is not http(s), an empty or non-header-safe
    /// `authkey`, an empty `template_id`, an empty `code_variable` or one named
    /// `mobiles` (reserved by MSG91 for the recipient).
    pub fn new(config: &Msg91Config) -> Result<Self, CarrierConfigError> {
        let invalid = |what: &str| CarrierConfigError::Invalid(NAME, what.to_owned());
        let mut url = reqwest::Url::parse(config.base_url.trim())
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https"))
            .ok_or_else(|| invalid("base_url must be an http(s) URL"))?;
        url.path_segments_mut()
            .map_err(|()| invalid("base_url cannot be a base"))?
            .pop_if_empty()
            .extend(["api", "v5", "flow", ""]);
        let mut authkey = HeaderValue::from_str(config.authkey.expose().trim())
            .ok()
            .filter(|value| !value.is_empty())
            .ok_or_else(|| invalid("authkey is required (printable ASCII)"))?;
        authkey.set_sensitive(true);
        if config.template_id.trim().is_empty() {
            return Err(invalid("template_id is required"));
        }
        let code_variable = config.code_variable.trim();
        if code_variable.is_empty() || code_variable == "mobiles" {
            return Err(invalid("code_variable must name the template's code variable (not `mobiles`)"));
        }
        if config.timeout_ms == 0 {
            return Err(invalid("timeout_ms must be positive"));
        }
        Ok(Self {
            client: crate::carriers::http_client(NAME, config.timeout_ms)?,
            url,
            authkey,
            template_id: config.template_id.trim().to_owned(),
            code_variable: code_variable.to_owned(),
            config: config.clone(),
        })
    }
}

impl Carrier for Msg91 {
    fn kind(&self) -> CarrierKind {
        KIND
    }

    /// A DLR webhook call (one or many reports), with the secret `?token=`.
    fn receipts(&self, callback: &Callback<'_>) -> Result<Receipts, ReceiptError> {
        Ok(Receipts {
            receipts: receipts(&self.config, callback.query_param("token"), callback.body)?,
            replay_key: None,
        })
    }

    fn send<'a>(&'a self, sms: &'a Sms) -> BoxFuture<'a, Result<Accepted, CarrierError>> {
        Box::pin(async move {
            let mut recipient = Map::new();
            recipient.insert("mobiles".into(), json!(sms.to.trim_start_matches('+')));
            recipient.insert(self.code_variable.clone(), json!(sms.code));
            let body = json!({
                "template_id": self.template_id,
                "short_url": "0",
                "recipients": [recipient],
            });
            let reply = exchange(
                self.client
                    .post(self.url.clone())
                    .header("authkey", self.authkey.clone())
                    .header(ACCEPT, "application/json")
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.to_string()),
            )
            .await?;
            let accepted = classify(&reply).map_err(|e| e.scrub(&sms.code))?;
            tracing::debug!(
                to = %mask(&sms.to),
                request_id = accepted.carrier_message_id.as_deref().unwrap_or("-"),
                "msg91 accepted the message"
            );
            Ok(accepted)
        })
    }
}

/// Reads MSG91's answer: `{"type":"success","message":"<request id>"}` is
/// accepted (the request id becomes `carrier_message_id`);
/// `{"type":"error","message":…,"code"?:…}`, HTTP 4xx/5xx and unreadable
/// answers are classified as retryable or permanent.
pub fn classify(reply: &Reply) -> Result<Accepted, CarrierError> {
    let (status, body, retry_after) = (reply.status, reply.body.as_slice(), reply.retry_after);
    let answer: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let kind = text(&answer, "type").map(|t| t.to_ascii_lowercase());
    let message = text(&answer, "message");
    let code = text(&answer, "code");
    if status.is_success() && kind.as_deref() == Some("success") {
        return Ok(Accepted { carrier_message_id: message.filter(|m| !m.is_empty()) });
    }
    let reason = match (&code, &message) {
        (Some(code), Some(message)) => format!("msg91 {code}: {}", short(&redact_numbers(message))),
        (None, Some(message)) => format!("msg91: {}", short(&redact_numbers(message))),
        _ if status.is_success() => "msg91: unexpected answer".to_owned(),
        _ => format!("msg91 HTTP {status}"),
    };
    let throttled = message.as_deref().is_some_and(|m| {
        let m = m.to_ascii_lowercase();
        THROTTLING.iter().any(|word| m.contains(word))
    });
    if code.as_deref() == Some(DUPLICATE_CODE) {
        return Err(CarrierError::Retryable { reason, retry_after: retry_after.or(Some(DUPLICATE_WINDOW)) });
    }
    let retryable = status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
        || throttled
        // A 2xx we cannot read: the outcome is unknown, a retry at worst repeats the SMS.
        || (status.is_success() && kind.as_deref() != Some("error"));
    if retryable {
        Err(CarrierError::Retryable { reason, retry_after })
    } else {
        Err(CarrierError::Permanent { reason })
    }
}

/// Authenticates and parses a delivery-report webhook call.
///
/// `token` is the `?token=` query parameter (compared with
/// `receipt_token`). Supported shapes, as MSG91 documents them: the classic
/// webhook (form field or JSON key `data` holding the JSON array
/// `[{"requestId","report":[{"number","status","desc",…}]}]`, as a string or
/// inline), its flat JSON version (`{"requestId","status","desc",…}`), and
/// the new webhook's JSON (`{"requestId","status","failureReason",…}`), alone
/// or in an array. Status `1` is delivered; `2` failed, `9` NDNC, `16`/`25`
/// rejected and `17` blocked are undelivered; anything else is pending.
pub fn receipts(config: &Msg91Config, token: Option<&str>, body: &[u8]) -> Result<Vec<Receipt>, ReceiptError> {
    check_receipt_token(&config.receipt_token, token, NAME)?;
    let trimmed = body.trim_ascii();
    let value = if trimmed.starts_with(b"{") || trimmed.starts_with(b"[") {
        serde_json::from_slice(trimmed).map_err(|_| malformed("unreadable JSON"))?
    } else {
        let form: Vec<(String, String)> =
            serde_urlencoded::from_bytes(trimmed).map_err(|_| malformed("unreadable form"))?;
        let data = form.into_iter().find(|(key, _)| key == "data").ok_or_else(|| malformed("no data field"))?.1;
        serde_json::from_str(&data).map_err(|_| malformed("unreadable data field"))?
    };
    let mut out = Vec::new();
    collect(&value, 0, &mut out)?;
    if out.is_empty() {
        return Err(malformed("no report"));
    }
    Ok(out)
}

/// Walks the documented shapes, collecting one receipt per report.
fn collect(value: &Value, depth: u8, out: &mut Vec<Receipt>) -> Result<(), ReceiptError> {
    if depth > 4 {
        return Err(malformed("nested too deep"));
    }
    match value {
        Value::Array(items) => items.iter().try_for_each(|item| collect(item, depth + 1, out)),
        Value::Object(object) if !object.contains_key("requestId") => match object.get("data") {
            Some(Value::String(data)) => {
                let inner: Value = serde_json::from_str(data).map_err(|_| malformed("unreadable data field"))?;
                collect(&inner, depth + 1, out)
            }
            Some(data) => collect(data, depth + 1, out),
            None => Err(malformed("no requestId")),
        },
        Value::Object(_) => {
            let request_id =
                text(value, "requestId").filter(|id| !id.is_empty()).ok_or_else(|| malformed("empty requestId"))?;
            match value.get("report") {
                Some(Value::Array(reports)) => {
                    for report in reports {
                        out.push(one(&request_id, report)?);
                    }
                    Ok(())
                }
                _ => {
                    out.push(one(&request_id, value)?);
                    Ok(())
                }
            }
        }
        _ => Err(malformed("not a report")),
    }
}

/// One report of one request.
fn one(request_id: &str, report: &Value) -> Result<Receipt, ReceiptError> {
    let code = text(report, "status");
    let desc = text(report, "desc").or_else(|| text(report, "description"));
    let verdict = code.as_deref().or(desc.as_deref()).ok_or_else(|| malformed("no status"))?;
    let status = match verdict.trim().to_ascii_lowercase().as_str() {
        "1" | "delivered" => ReceiptStatus::Delivered,
        "2" | "9" | "16" | "17" | "25" | "failed" | "rejected" | "ndnc" | "blocked" | "undelivered" | "expired" => {
            ReceiptStatus::Undelivered
        }
        _ => ReceiptStatus::Pending,
    };
    let error = (status == ReceiptStatus::Undelivered).then(|| {
        let reason = text(report, "failedReason").or_else(|| text(report, "failureReason")).filter(|r| !r.is_empty());
        let parts: Vec<String> = [code, desc, reason].into_iter().flatten().collect();
        short(&redact_numbers(&parts.join(" ")))
    });
    Ok(Receipt { carrier: NAME, carrier_message_id: request_id.to_owned(), status, error })
}

/// A field as text, whether MSG91 sent a string or a number.
fn text(value: &Value, key: &str) -> Option<String> {
    match value.get(key)? {
        Value::String(s) => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn malformed(what: &str) -> ReceiptError {
    ReceiptError::Malformed(format!("msg91: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Msg91Config {
        Msg91Config { receipt_token: Some("dlr-secret".into()), ..Msg91Config::sandbox("https://control.msg91.com") }
    }

    fn answer(status: u16, body: &str) -> Result<Accepted, CarrierError> {
        classify(&Reply::new(StatusCode::from_u16(status).expect("status"), body.as_bytes()))
    }

    /// Examples from MSG91's API documentation (send SMS via flow, send SMS
    /// v2) and its help pages (error codes, API security).
    #[test]
    fn documented_answers_are_classified() {
        assert_eq!(
            answer(200, r#"{"message": "5762846b4f8d285d378b4567", "type": "success"}"#),
            Ok(Accepted { carrier_message_id: Some("5762846b4f8d285d378b4567".into()) })
        );
        assert_eq!(
            answer(200, r#"{"type":"error","message":"Missing Authentication Key","code":"106"}"#),
            Err(CarrierError::Permanent { reason: "msg91 106: Missing Authentication Key".into() })
        );
        for (status, body) in [
            (200, r#"{"type":"error","message":"Invalid authentication key","code":"207"}"#),
            (401, r#"{"type":"error","message":"Unauthorized","code":"401"}"#),
            (200, r#"{"type":"error","message":"IP not whitelisted","code":"418"}"#),
            (400, r#"{"type":"error","message":"Invalid template id"}"#),
            (200, r#"{"type":"error","message":"Invalid mobile number 919876543210","code":"202"}"#),
            (200, r#"{"type":"error","message":"Insufficient balance to send SMS","code":"301"}"#),
            (404, ""),
        ] {
            let error = answer(status, body).expect_err(body);
            assert!(!error.is_retryable(), "{status} {body}");
            assert!(!error.to_string().contains("9876543210"), "{error}");
        }
        for (status, body) in [
            (429, r#"{"type":"error","message":"Too many requests"}"#),
            (200, r#"{"type":"error","message":"Too Many Requests, please try again later","code":"429"}"#),
            (500, "<html>Internal Server Error</html>"),
            (503, ""),
            (200, "OK"),
        ] {
            assert!(answer(status, body).expect_err(body).is_retryable(), "{status} {body}");
        }
    }

    #[test]
    fn retry_after_is_honoured_and_duplicates_wait_out_their_window() {
        let wait = Some(Duration::from_secs(3));
        assert_eq!(
            classify(&Reply::new(StatusCode::TOO_MANY_REQUESTS, b"").retry_after(wait)),
            Err(CarrierError::Retryable { reason: "msg91 HTTP 429 Too Many Requests".into(), retry_after: wait })
        );
        let duplicate = br#"{"type":"error","message":"Request discarded because same request was generated twice within 10 seconds","code":"311"}"#;
        assert!(matches!(
            classify(&Reply::new(StatusCode::OK, duplicate)),
            Err(CarrierError::Retryable { retry_after: Some(d), .. }) if d == DUPLICATE_WINDOW
        ));
    }

    fn delivered(id: &str) -> Receipt {
        Receipt { carrier: "msg91", carrier_message_id: id.into(), status: ReceiptStatus::Delivered, error: None }
    }

    /// Samples from https://msg91.com/help/how-can-i-get-the-delivery-reports-on-my-webhook-url
    #[test]
    fn documented_webhook_shapes_are_parsed() {
        let v2 = r#"[{"senderId":"uXXXXm","requestId":"346XXXXXXXXXXXX130","report":[{"date":"2024-05-22 10:06:20","amount":"0.01","clientid":"","INMSID":"0","CRQID":"0","ctCode":"900","number":"9195XXXX6558","credit":"1","status":"1","desc":"DELIVERED","failedReason":""}],"userId":"27XXXX","campaignName":"Sendhttp"}]"#;
        let form = serde_urlencoded::to_string([("data", v2)]).expect("form");
        let json_string = json!({ "data": v2 }).to_string();
        let json_inline = format!(r#"{{"data":{v2}}}"#);
        let v3 = r#"{"date":"2024-05-22 09:58:16","number":"9195XXXX6558","senderId":"uXXXXm","amount":"0.01","requestId":"346XXXXXXXXXXXX130","INMSID":"0","CRQID":"0","credit":"1","userId":"27XXXX","campaignName":"Sendhttp","status":"1","desc":"DELIVERED"}"#;
        for body in [form.as_str(), json_string.as_str(), json_inline.as_str(), v2, v3] {
            assert_eq!(
                receipts(&config(), Some("dlr-secret"), body.as_bytes()),
                Ok(vec![delivered("346XXXXXXXXXXXX130")]),
                "{body}"
            );
        }
        let new_webhook = r#"{"requestId":"3365646f1","status":"Failed","telNum":"919876543210","failureReason":"Absent subscriber 919876543210"}"#;
        assert_eq!(
            receipts(&config(), Some("dlr-secret"), new_webhook.as_bytes()),
            Ok(vec![Receipt {
                carrier: "msg91",
                carrier_message_id: "3365646f1".into(),
                status: ReceiptStatus::Undelivered,
                error: Some("Failed Absent subscriber ************".into()),
            }])
        );
    }

    #[test]
    fn report_statuses_are_mapped() {
        for (code, desc, expected) in [
            ("1", "DELIVERED", ReceiptStatus::Delivered),
            ("2", "FAILED", ReceiptStatus::Undelivered),
            ("9", "NDNC", ReceiptStatus::Undelivered),
            ("16", "REJECTED", ReceiptStatus::Undelivered),
            ("17", "BLOCKED", ReceiptStatus::Undelivered),
            ("25", "REJECTED", ReceiptStatus::Undelivered),
            ("8", "SUBMITTED", ReceiptStatus::Pending),
        ] {
            let body =
                json!([{"requestId": "r1", "report": [{"number": "919876543210", "status": code, "desc": desc}]}]);
            let got = receipts(&config(), Some("dlr-secret"), body.to_string().as_bytes()).expect(code);
            assert_eq!(got[0].status, expected, "{code}");
            if expected == ReceiptStatus::Undelivered {
                assert_eq!(got[0].error.as_deref(), Some(format!("{code} {desc}").as_str()));
            }
        }
    }

    #[test]
    fn tokens_are_checked_and_junk_is_malformed() {
        let body = br#"{"requestId":"r1","status":"1"}"#;
        let unconfigured = Msg91Config { receipt_token: None, ..config() };
        assert_eq!(receipts(&unconfigured, Some("x"), body), Err(ReceiptError::NotConfigured("msg91")));
        assert!(matches!(receipts(&config(), None, body), Err(ReceiptError::Forbidden(_))));
        assert!(matches!(receipts(&config(), Some("dlr-secreT"), body), Err(ReceiptError::Forbidden(_))));
        for junk in [
            &b"{"[..],
            b"[]",
            b"data=nope",
            b"x=1",
            br#"[{"data":[{"meta":"0","description":"DELIVERED"}],"event":"delivered"}]"#,
        ] {
            assert!(
                matches!(receipts(&config(), Some("dlr-secret"), junk), Err(ReceiptError::Malformed(_))),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn configuration_is_checked() {
        assert!(Msg91::new(&config()).is_ok());
        for bad in [
            Msg91Config { base_url: "control.msg91.com".into(), ..config() },
            Msg91Config { authkey: String::new().into(), ..config() },
            Msg91Config { authkey: "bad\nkey".into(), ..config() },
            Msg91Config { template_id: " ".into(), ..config() },
            Msg91Config { code_variable: "mobiles".into(), ..config() },
        ] {
            assert!(matches!(Msg91::new(&bad), Err(CarrierConfigError::Invalid("msg91", _))));
        }
    }
}
