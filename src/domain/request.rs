//! OTP requests: decoding the queue's bytes and validating every field
//! against the public contract.

use crate::domain::{CodeLength, Phone, PhoneError, Templates};
use serde::{Deserialize, Serialize};
use time::Duration;

/// Longest `request_id` accepted.
pub const MAX_REQUEST_ID_LEN: usize = 128;
/// Shortest and longest code lifetime the contract allows, in seconds.
pub const TTL_RANGE_SECS: std::ops::RangeInclusive<u32> = 30..=3600;

/// A request as producers send it (contract v1), before validation.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRequest {
    /// The producer's idempotency key: 1–128 printable ASCII characters.
    #[schema(min_length = 1, max_length = 128, pattern = "^[\\x20-\\x7E]+$", example = "order-42-login-1")]
    pub request_id: String,
    /// The recipient, E.164.
    #[schema(pattern = "^\\+[1-9][0-9]{7,14}$", example = "+14155550123")]
    pub phone: String,
    /// Template name (default `login`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Template locale (default `en`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// Digits in the code, 4–10 (default 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 4, maximum = 10)]
    pub code_length: Option<u8>,
    /// Code lifetime in seconds, 30–3600 (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 30, maximum = 3600)]
    pub ttl_secs: Option<u32>,
    /// Only `sms` in v1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^sms$")]
    pub channel: Option<String>,
}

/// Why a message could not be decoded at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not UTF-8 JSON, or JSON that is not an object: nothing to answer; dead-letter it.
    #[error("body is not a JSON object: {0}")]
    Malformed(String),
    /// A JSON object that is not a valid request; answered with `invalid_request`.
    #[error("{detail}")]
    Invalid {
        /// The `request_id` if the object had a string one, for the reply.
        request_id: Option<String>,
        /// What was wrong.
        detail: String,
    },
}

impl RawRequest {
    /// Decodes a request body, from the queue or from `POST /v1/otp` (one
    /// policy for both): a JSON object only (an array is not a request), with
    /// no unknown and no repeated keys.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        let serde_json::Value::Object(map) = value else {
            return Err(DecodeError::Malformed("expected a JSON object".into()));
        };
        // Straight from the bytes: serde's derive refuses a repeated field
        // (a `Value` would keep the last one silently).
        serde_json::from_slice(body).map_err(|e| DecodeError::Invalid {
            request_id: map
                .get("request_id")
                .and_then(|v| v.as_str())
                .filter(|id| valid_request_id(id))
                .map(str::to_owned),
            detail: crate::domain::phone::redact_numbers(&e.to_string()),
        })
    }
}

/// Why a request is refused (the contract's `reason` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// A field is missing, malformed or out of range.
    InvalidRequest,
    /// The phone number is not valid E.164.
    InvalidPhone,
    /// Too many requests for this number (issued by the limits).
    RateLimited,
    /// The destination country is not allowed.
    CountryBlocked,
    /// The number's prefix is quarantined as suspected SMS pumping.
    SuspectedPumping,
}

impl RejectReason {
    /// The contract's string for this reason (also a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidPhone => "invalid_phone",
            Self::RateLimited => "rate_limited",
            Self::CountryBlocked => "country_blocked",
            Self::SuspectedPumping => "suspected_pumping",
        }
    }
}

/// A refused request: the reason code and a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct Rejection {
    /// The contract's reason code.
    pub reason: RejectReason,
    /// What exactly was wrong (never contains the full phone number).
    pub detail: String,
}

impl Rejection {
    fn invalid(detail: impl Into<String>) -> Self {
        Self { reason: RejectReason::InvalidRequest, detail: detail.into() }
    }
}

/// Defaults applied to optional fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Digits when the request names none.
    pub default_code_length: CodeLength,
    /// Lifetime when the request names none, in seconds.
    pub default_ttl_secs: u32,
    /// Fewest digits a request may ask for: the operator's floor within the
    /// contract's 4–10 (the domain's default is the contract's, 4).
    pub min_code_length: CodeLength,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            default_code_length: CodeLength::default(),
            default_ttl_secs: 300,
            min_code_length: CodeLength::new(4).expect("4 is a contract length"),
        }
    }
}

/// A request that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidRequest {
    /// The producer's idempotency key.
    pub request_id: String,
    /// The recipient.
    pub phone: Phone,
    /// Template name.
    pub template: String,
    /// Template locale.
    pub locale: String,
    /// Digits in the code.
    pub code_length: CodeLength,
    /// How long the code lives.
    pub ttl: Duration,
    /// The application whose scoped API key made the request (`POST /v1/otp`);
    /// `None` for producers' requests and unscoped keys.
    pub owner: Option<String>,
}

/// Whether a caller limited to application `app` (`None`: not limited) may
/// see a request or code owned by `owner`.
pub fn visible_to(app: Option<&str>, owner: Option<&str>) -> bool {
    app.is_none() || app == owner
}

pub(crate) fn valid_request_id(id: &str) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len()) && id.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

impl RawRequest {
    /// Checks every field and applies defaults.
    /// Details never quote a long digit run (a phone number put in the wrong field).
    pub fn validate(self, limits: &Limits, templates: &Templates) -> Result<ValidRequest, Rejection> {
        self.check(limits, templates)
            .map_err(|r| Rejection { detail: crate::domain::phone::redact_numbers(&r.detail), ..r })
    }

    fn check(self, limits: &Limits, templates: &Templates) -> Result<ValidRequest, Rejection> {
        if !valid_request_id(&self.request_id) {
            return Err(Rejection::invalid(format!(
                "request_id must be 1-{MAX_REQUEST_ID_LEN} printable ASCII characters"
            )));
        }
        let phone = Phone::parse(&self.phone)
            .map_err(|e| Rejection { reason: RejectReason::InvalidPhone, detail: e.to_string() })?;
        let code_length = match self.code_length {
            None => limits.default_code_length,
            Some(n) => CodeLength::try_from(n).map_err(Rejection::invalid)?,
        };
        if code_length < limits.min_code_length {
            return Err(Rejection::invalid(format!(
                "code_length must be at least {} on this service (codes of fewer digits are too easy to guess)",
                limits.min_code_length.get()
            )));
        }
        let ttl_secs = self.ttl_secs.unwrap_or(limits.default_ttl_secs);
        if !TTL_RANGE_SECS.contains(&ttl_secs) {
            return Err(Rejection::invalid(format!(
                "ttl_secs must be {}-{}, got {ttl_secs}",
                TTL_RANGE_SECS.start(),
                TTL_RANGE_SECS.end()
            )));
        }
        match self.channel.as_deref() {
            None | Some("sms") => {}
            Some(other) => {
                return Err(Rejection::invalid(format!(
                    "channel must be \"sms\" (the only channel in v1), got {other:?}"
                )));
            }
        }
        let template = self.template.unwrap_or_else(|| Templates::DEFAULT_NAME.to_owned());
        let locale = self.locale.unwrap_or_else(|| Templates::DEFAULT_LOCALE.to_owned());
        if !templates.contains(&template, &locale) {
            return Err(Rejection::invalid(format!("unknown template {template:?} for locale {locale:?}")));
        }
        Ok(ValidRequest {
            request_id: self.request_id,
            phone,
            template,
            locale,
            code_length,
            ttl: Duration::seconds(i64::from(ttl_secs)),
            owner: None,
        })
    }
}

impl From<PhoneError> for Rejection {
    fn from(e: PhoneError) -> Self {
        Self { reason: RejectReason::InvalidPhone, detail: e.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawRequest {
        RawRequest { request_id: "order-42-login-1".into(), phone: "+14155550123".into(), ..Default::default() }
    }

    fn check(r: RawRequest) -> Result<ValidRequest, Rejection> {
        r.validate(&Limits::default(), &Templates::default())
    }

    #[test]
    fn minimal_request_gets_the_contract_defaults() {
        let v = check(raw()).unwrap();
        assert_eq!(v.template, "login");
        assert_eq!(v.locale, "en");
        assert_eq!(v.code_length.get(), 6);
        assert_eq!(v.ttl, Duration::seconds(300));
    }

    #[test]
    fn a_code_shorter_than_the_operators_floor_is_refused() {
        let floor = Limits { min_code_length: CodeLength::new(6).unwrap(), ..Limits::default() };
        let short = RawRequest { code_length: Some(4), ..raw() };
        let refused = short.clone().validate(&floor, &Templates::default()).unwrap_err();
        assert_eq!(refused.reason, RejectReason::InvalidRequest);
        assert!(refused.detail.contains("at least 6"), "{}", refused.detail);
        assert_eq!(check(short).unwrap().code_length.get(), 4, "the contract's own floor is 4");
        let six = RawRequest { code_length: Some(6), ..raw() };
        assert!(six.validate(&floor, &Templates::default()).is_ok());
    }

    #[test]
    fn repeated_keys_are_refused_not_last_wins() {
        let body = br#"{"request_id": "r1", "phone": "+14155550123", "phone": "+447911123456"}"#;
        match RawRequest::decode(body) {
            Err(DecodeError::Invalid { request_id, detail }) => {
                assert_eq!(request_id.as_deref(), Some("r1"));
                assert!(detail.contains("duplicate field"), "{detail}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn full_contract_example_decodes() {
        let body = br#"{ "request_id": "order-42-login-1", "phone": "+14155550123",
            "template": "login", "locale": "en", "code_length": 6, "ttl_secs": 300, "channel": "sms" }"#;
        let v = check(RawRequest::decode(body).unwrap()).unwrap();
        assert_eq!(v.request_id, "order-42-login-1");
    }

    #[test]
    fn non_json_and_non_objects_are_malformed() {
        for body in [&b"not json"[..], b"[1,2]", b"\"x\"", b"\xff\xfe", b""] {
            assert!(matches!(RawRequest::decode(body), Err(DecodeError::Malformed(_))), "{body:?}");
        }
    }

    #[test]
    fn objects_of_the_wrong_shape_are_invalid_with_their_id() {
        let err = RawRequest::decode(br#"{"request_id":"r1","phone":"+14155550123","ttl":5}"#).unwrap_err();
        assert!(matches!(err, DecodeError::Invalid { request_id: Some(ref id), .. } if id == "r1"), "{err:?}");
        let err = RawRequest::decode(br#"{"phone":"+14155550123"}"#).unwrap_err();
        assert!(matches!(err, DecodeError::Invalid { request_id: None, .. }));
        let err = RawRequest::decode(br#"{"request_id":"r1","phone":"+14155550123","code_length":"six"}"#).unwrap_err();
        assert!(matches!(err, DecodeError::Invalid { .. }));
        let err = RawRequest::decode(br#"{"request_id":"r1","phone":14155550123}"#).unwrap_err();
        assert!(!err.to_string().contains("4155550123"), "{err}");
    }

    #[test]
    fn request_id_must_be_printable_ascii_up_to_128() {
        for id in ["", "é", "a\nb", &"x".repeat(129)] {
            let r = RawRequest { request_id: id.into(), ..raw() };
            assert_eq!(check(r).unwrap_err().reason, RejectReason::InvalidRequest, "{id:?}");
        }
        let r = RawRequest { request_id: "x".repeat(128), ..raw() };
        assert!(check(r).is_ok());
    }

    #[test]
    fn bad_phone_is_invalid_phone() {
        let r = RawRequest { phone: "0044 7700".into(), ..raw() };
        assert_eq!(check(r).unwrap_err().reason, RejectReason::InvalidPhone);
    }

    #[test]
    fn ranges_are_enforced() {
        for (len, ttl) in [(Some(3), None), (Some(11), None), (None, Some(29)), (None, Some(3601))] {
            let r = RawRequest { code_length: len, ttl_secs: ttl, ..raw() };
            assert_eq!(check(r).unwrap_err().reason, RejectReason::InvalidRequest);
        }
        let r = RawRequest { code_length: Some(10), ttl_secs: Some(30), ..raw() };
        assert!(check(r).is_ok());
    }

    #[test]
    fn only_sms_and_known_templates() {
        let r = RawRequest { channel: Some("voice".into()), ..raw() };
        assert!(check(r).unwrap_err().detail.contains("sms"));
        let r = RawRequest { template: Some("nope".into()), ..raw() };
        assert!(check(r).unwrap_err().detail.contains("unknown template"));
        let r = RawRequest { locale: Some("xx".into()), ..raw() };
        assert_eq!(check(r).unwrap_err().reason, RejectReason::InvalidRequest);
    }

    #[test]
    fn rejection_detail_never_contains_the_number() {
        let r = RawRequest { phone: "+10005550123".into(), ..raw() };
        let e = check(r).unwrap_err();
        assert!(!e.to_string().contains("0005550123"));
    }
}
