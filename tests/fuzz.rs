//! Property-based fuzzing of every input decoder: whatever bytes, strings or
//! parameters reach the service from outside must never panic, must be
//! refused when malformed, and must never echo a phone number back.
//!
//! ```sh
//! cargo test --test fuzz                                      # 100,000 cases per property
//! OTP_FUZZ_CASES=1000000 cargo test --release --test fuzz     # a long run
//! OTP_FUZZ_CASES=1000 cargo test --test fuzz                  # a quick look
//! ```
//!
//! The default run takes about 45–55 s on two cores in the debug profile
//! (most of it `Phone::parse`, see [`arb`]); the long run builds the release
//! profile, the `otp-pipeline` binary included.
//!
//! `OTP_FUZZ_CASES` sets the number of cases of every property (default
//! 100,000). proptest's own variables still apply, e.g. `PROPTEST_RNG_SEED=7`
//! replays one run deterministically. Failures are not written to disk: copy
//! the "minimal failing input" proptest prints into a unit test.
//!
//! Sections, one `mod` per decoder:
//! - [`request_decode`]: `RawRequest::decode` on bytes, JSON values and request-shaped objects;
//! - [`request_validate`]: `RawRequest::validate` on arbitrary requests;
//! - [`phone`]: `Phone::parse`, `phone::mask`, `phone::redact_numbers`;
//! - [`code`]: `Code::parse`, `Code::generate`;
//! - [`verify_body`]: what `POST /v1/verify` does with its body, without a broker;
//! - [`templates`]: `Templates::new` and `Templates::render`;
//! - [`receipts`]: the Twilio, Vonage and MSG91 delivery-receipt decoders.
//!
//! Shared strategies and oracles are in [`arb`] and [`oracle`].

use proptest::test_runner::Config as ProptestConfig;

/// Cases per property: `OTP_FUZZ_CASES`, or 100,000.
fn cases() -> u32 {
    match std::env::var("OTP_FUZZ_CASES") {
        Ok(raw) => raw
            .trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("OTP_FUZZ_CASES must be a number of cases, got {raw:?}")),
        Err(_) => 100_000,
    }
}

/// The configuration of every property: `cases()` cases, nothing persisted.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        // No `proptest-regressions/` files next to the tests: failures are
        // reported, then turned into unit tests by hand.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Shared strategies.
mod arb {
    use proptest::prelude::*;
    use proptest::sample::select;
    use serde_json::Value;

    /// Characters decoders trip over: signs, separators, quotes, braces,
    /// escapes, controls, non-ASCII digits and spaces, a BOM; and ASCII digits.
    const AWKWARD: &[char] = &[
        '+', '-', ' ', '\t', '\n', '\r', '\0', '\u{7}', '\u{1b}', '\u{7f}', '{', '}', '[', ']', '"', '\'', '\\', '&',
        '=', '%', ':', ',', '.', '\u{a0}', '\u{2028}', '\u{feff}', '０', '٣', '۹', 'é', '€', '😀', '0', '1', '2', '3',
        '4', '5', '6', '7', '8', '9', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9',
    ];

    /// One character: half the time an awkward one or a digit, else printable
    /// ASCII or any Unicode scalar. (One `CharStrategy` rather than a union:
    /// strings are built a character at a time, so this is the hot path.)
    pub fn char_any() -> BoxedStrategy<char> {
        const PREFERRED: &[std::ops::RangeInclusive<char>] = &['0'..='9', ' '..='~', ' '..='~'];
        const ANY: &[std::ops::RangeInclusive<char>] = &['\0'..=char::MAX];
        proptest::char::CharStrategy::new_borrowed(AWKWARD, PREFERRED, ANY).boxed()
    }

    /// Any text of up to `max` characters, control characters included.
    pub fn text(max: usize) -> BoxedStrategy<String> {
        prop::collection::vec(char_any(), 0..=max).prop_map(String::from_iter).boxed()
    }

    /// `min..=max` ASCII digits.
    pub fn digits(min: usize, max: usize) -> BoxedStrategy<String> {
        prop::collection::vec(proptest::char::range('0', '9'), min..=max).prop_map(String::from_iter).boxed()
    }

    // Phone numbers and their cost.
    //
    // `Phone::parse` validates with the `phonenumber` crate, whose compiled
    // regexes live in one process-wide, mutex-guarded LRU cache of 100
    // entries. Numbers of 1–3 calling codes stay in that cache (tens of µs a
    // parse in the debug profile); numbers spread over many calling codes
    // recompile regexes on almost every call (0.3–1.2 ms), and every test
    // thread waits on that one mutex. So the phone strategies draw mostly
    // "warm" numbers (+1, +44, +49) and inputs refused before any regex runs,
    // and a fixed share of "cold" ones (any calling code, any digits): the
    // 100,000 cases stay within the time budget and a long run
    // (`OTP_FUZZ_CASES`) scales the cold share with it.

    /// Valid numbers of the warm calling codes 1, 44 and 49 (North America,
    /// and two countries with a trunk prefix and numbers of many lengths).
    pub const WARM_PHONES: &[&str] =
        &["+14155550123", "+12025550173", "+447911123456", "+442071838750", "+4915123456789", "+493012345678"];

    /// Valid numbers of other calling codes.
    pub const COLD_PHONES: &[&str] = &[
        "+919876543210",
        "+33612345678",
        "+61412345678",
        "+5511987654321",
        "+8613800138000",
        "+819012345678",
        "+27821234567",
        "+2348031234567",
        "+79161234567",
        "+34612345678",
        "+390612345678",
        "+971501234567",
        "+6591234567",
    ];

    const WARM_CODES: &[&str] = &["1", "44", "49"];

    /// Country calling codes, geographic and non-geographic (800, 808, 870,
    /// 878, 881–883, 888, 979), and some with very short numbers (290, 683).
    const CALLING_CODES: &[&str] = &[
        "1", "7", "20", "27", "30", "31", "33", "34", "39", "41", "43", "44", "49", "52", "55", "61", "62", "64", "81",
        "82", "86", "90", "91", "234", "290", "376", "500", "672", "683", "690", "800", "808", "870", "878", "881",
        "882", "883", "888", "979", "999",
    ];

    /// `+` followed by `min..=max` digits.
    pub fn plus_digits(min: usize, max: usize) -> BoxedStrategy<String> {
        digits(min, max).prop_map(|d| format!("+{d}")).boxed()
    }

    /// One of `samples` with one digit changed: often still valid, sometimes not.
    fn one_digit_changed(samples: &'static [&'static str]) -> BoxedStrategy<String> {
        (select(samples), any::<prop::sample::Index>(), proptest::char::range('0', '9'))
            .prop_map(|(p, at, d)| {
                let mut chars: Vec<char> = p.chars().collect();
                let i = 1 + at.index(chars.len() - 1);
                chars[i] = d;
                chars.into_iter().collect()
            })
            .boxed()
    }

    /// `+`, one of `codes`, then digits: `+` and up to 20 digits in all.
    fn calling_code_and_digits(codes: &'static [&'static str]) -> BoxedStrategy<String> {
        (select(codes), digits(0, 17))
            .prop_map(|(cc, rest)| format!("+{cc}{}", &rest[..rest.len().min(20 - cc.len())]))
            .boxed()
    }

    /// Phone inputs of the warm calling codes, or refused before any regex runs.
    fn warm_phone_input() -> BoxedStrategy<String> {
        prop_oneof![
            3 => select(WARM_PHONES).prop_map(str::to_owned),
            2 => one_digit_changed(WARM_PHONES),
            3 => calling_code_and_digits(WARM_CODES),
            2 => trunk_prefixed(WARM_CODES),
            1 => (select(WARM_PHONES), char_any(), any::<prop::sample::Index>()).prop_map(
                |(p, c, at)| {
                    // One character inserted anywhere.
                    let mut chars: Vec<char> = p.chars().collect();
                    chars.insert(at.index(chars.len() + 1), c);
                    chars.into_iter().collect()
                }
            ),
            1 => digits(0, 16),
            1 => prop_oneof![plus_digits(0, 7), plus_digits(16, 20)],
            2 => text(24),
        ]
        .boxed()
    }

    /// Phone inputs of any calling code: valid numbers and `+` with any digits.
    fn cold_phone_input() -> BoxedStrategy<String> {
        prop_oneof![
            1 => select(COLD_PHONES).prop_map(str::to_owned),
            1 => one_digit_changed(COLD_PHONES),
            2 => calling_code_and_digits(CALLING_CODES),
            1 => trunk_prefixed(CALLING_CODES),
            2 => plus_digits(0, 20),
        ]
        .boxed()
    }

    /// `+`, a calling code, then a national (trunk) prefix as dialled at home
    /// (`+44 0…`): not E.164, a classic mistake; short numbers included.
    fn trunk_prefixed(codes: &'static [&'static str]) -> BoxedStrategy<String> {
        (select(codes), select(&["0", "0", "00", "1", "8"][..]), digits(3, 12))
            .prop_map(|(cc, trunk, rest)| format!("+{cc}{trunk}{rest}"))
            .boxed()
    }

    /// What a producer or a user might send as a phone number: valid numbers,
    /// near misses, `+` and digits, and anything at all; one case in
    /// `1 + warm_per_cold` is cold (see above).
    pub fn phone_input_mix(warm_per_cold: u32) -> BoxedStrategy<String> {
        prop_oneof![
            warm_per_cold => warm_phone_input(),
            1 => cold_phone_input(),
        ]
        .boxed()
    }

    /// `+`, a warm calling code, digits: up to 20 digits in all.
    pub fn warm_plus_digits() -> BoxedStrategy<String> {
        calling_code_and_digits(WARM_CODES)
    }

    /// `+`, a warm calling code, a trunk prefix, digits.
    pub fn warm_trunk_prefixed() -> BoxedStrategy<String> {
        trunk_prefixed(WARM_CODES)
    }

    /// Phone inputs for decoders that do more than parse the phone: mostly
    /// valid samples (the cheapest to parse), 1% cold.
    pub fn phone_input() -> BoxedStrategy<String> {
        prop_oneof![
            1 => select(WARM_PHONES).prop_map(str::to_owned),
            1 => phone_input_mix(49),
        ]
        .boxed()
    }

    /// A request id: printable ASCII of every length around the limit, or anything.
    pub fn request_id() -> BoxedStrategy<String> {
        prop_oneof![
            4 => "[ -~]{1,32}",
            1 => "[ -~]{120,136}",
            1 => Just(String::new()),
            2 => text(16),
        ]
        .boxed()
    }

    /// JSON object keys: the contract's, near misses, and anything.
    pub fn key() -> BoxedStrategy<String> {
        prop_oneof![
            3 => select(&[
                "request_id", "phone", "template", "locale", "code_length", "ttl_secs", "channel",
                "code", "ttl", "Phone", "requestId", "report", "status", "data", "",
            ][..]).prop_map(str::to_owned),
            1 => text(8),
        ]
        .boxed()
    }

    /// A JSON number as text: small, at the edges of every integer type,
    /// beyond them, negative, fractional, exponents out of range.
    pub fn number_token() -> BoxedStrategy<String> {
        prop_oneof![
            3 => (0u32..5000).prop_map(|n| n.to_string()),
            1 => any::<i64>().prop_map(|n| n.to_string()),
            1 => any::<u64>().prop_map(|n| n.to_string()),
            1 => select(&[
                "255", "256", "-1", "-0", "0", "4294967295", "4294967296", "18446744073709551616",
                "-9223372036854775809", "6.0", "6e0", "1e400", "-1e400", "1e-400", "0.5", "300.0",
            ][..]).prop_map(str::to_owned),
            1 => "-?[1-9][0-9]{0,40}",
            1 => "-?[0-9]\\.[0-9]{1,12}([eE][+-]?[0-9]{1,3})?",
            // Debug-formatted: `1e300`, `-0.0`, `5e-324`; never NaN or infinity.
            1 => any::<f64>().prop_map(|f| if f.is_finite() { format!("{f:?}") } else { "1e308".to_owned() }),
        ]
        .boxed()
    }

    /// A JSON string literal holding `s`.
    pub fn quoted(s: &str) -> String {
        serde_json::to_string(s).expect("strings serialise")
    }

    /// Arbitrary JSON values, nested up to four levels.
    pub fn json_value() -> BoxedStrategy<Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            text(12).prop_map(Value::String),
            phone_input().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 24, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec((key(), inner), 0..5)
                    .prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        })
        .boxed()
    }

    /// Any JSON value as text (with a valid number or string most of the time).
    pub fn json_token() -> BoxedStrategy<String> {
        prop_oneof![
            3 => text(12).prop_map(|s| quoted(&s)),
            2 => phone_input().prop_map(|s| quoted(&s)),
            3 => number_token(),
            1 => select(&["true", "false", "null", "[]", "{}"][..]).prop_map(str::to_owned),
            1 => json_value().prop_map(|v| v.to_string()),
        ]
        .boxed()
    }

    /// Edits that turn a well-formed body into a malformed one.
    #[derive(Debug, Clone)]
    pub enum Edit {
        Truncate(prop::sample::Index),
        Flip(prop::sample::Index, u8),
        Insert(prop::sample::Index, u8),
        Remove(prop::sample::Index),
    }

    pub fn edits(max: usize) -> BoxedStrategy<Vec<Edit>> {
        let edit = prop_oneof![
            any::<prop::sample::Index>().prop_map(Edit::Truncate),
            (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
            (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
            any::<prop::sample::Index>().prop_map(Edit::Remove),
        ];
        prop::collection::vec(edit, 0..=max).boxed()
    }

    /// Shuffles `items` in the order `seed` picks (cheaper than `prop_shuffle`,
    /// which would need a `prop_flat_map`).
    pub fn shuffle<T>(items: &mut [T], mut seed: u64) {
        for i in (1..items.len()).rev() {
            // xorshift64*
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            let r = seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
            items.swap(i, (r % (i as u64 + 1)) as usize);
        }
    }

    /// Applies `edits` to `bytes`.
    pub fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
        for edit in edits {
            match *edit {
                Edit::Truncate(at) => bytes.truncate(at.index(bytes.len() + 1)),
                Edit::Insert(at, b) => bytes.insert(at.index(bytes.len() + 1), b),
                Edit::Flip(at, b) if !bytes.is_empty() => {
                    let i = at.index(bytes.len());
                    bytes[i] ^= b | 1;
                }
                Edit::Remove(at) if !bytes.is_empty() => {
                    bytes.remove(at.index(bytes.len()));
                }
                Edit::Flip(..) | Edit::Remove(_) => {}
            }
        }
        bytes
    }

    /// Arbitrary bytes: short random ones, and mostly-ASCII ones that look like JSON.
    pub fn bytes() -> BoxedStrategy<Vec<u8>> {
        prop_oneof![
            8 => prop::collection::vec(any::<u8>(), 0..64),
            8 => prop::collection::vec(
                prop_oneof![select(&b"{}[]\":,0123456789 \\untrfalse-+.eE"[..]), any::<u8>(),],
                0..64,
            ),
            // Deep nesting: recursion limits, not stack overflows.
            1 => (1usize..5000, select(&["[", "{\"a\":", "{\"data\":["][..]), any::<bool>()).prop_map(
                |(depth, open, close)| {
                    let mut body = open.repeat(depth);
                    if close {
                        body.push_str(&"]".repeat(depth));
                    }
                    body.into_bytes()
                }
            ),
        ]
        .boxed()
    }
}

/// Oracles: small independent statements of what the decoders must do.
mod oracle {
    /// Every maximal run of at least `min` ASCII digits in `text`.
    pub fn digit_runs(text: &str, min: usize) -> Vec<&str> {
        text.split(|c: char| !c.is_ascii_digit()).filter(|run| run.len() >= min).collect()
    }

    /// Whether `text` quotes a run of 7+ digits of `phone` (what
    /// `redact_numbers` exists to prevent).
    pub fn quotes_digits_of(text: &str, phone: &str) -> bool {
        digit_runs(phone, 7).iter().any(|run| text.contains(run))
    }

    /// Whether `text` quotes `phone` whole (when it holds 7+ digits) or a run
    /// of 7+ of its digits.
    pub fn quotes_phone(text: &str, phone: &str) -> bool {
        let digits = phone.chars().filter(char::is_ascii_digit).count();
        (digits >= 7 && text.contains(phone)) || quotes_digits_of(text, phone)
    }

    /// The contract's request id: 1–128 printable ASCII characters.
    pub fn valid_request_id(id: &str) -> bool {
        (1..=128).contains(&id.len()) && id.bytes().all(|b| (b' '..=b'~').contains(&b))
    }

    /// How a template text is judged at load time.
    #[derive(Debug, PartialEq, Eq)]
    pub enum TemplateVerdict {
        Ok,
        BadPlaceholder,
        MissingCode,
    }

    const PLACEHOLDERS: [&str; 3] = ["code}", "ttl_minutes}", "app}"];

    /// Every `{` must open `{code}`, `{ttl_minutes}` or `{app}`; `{code}` must occur.
    pub fn template(text: &str) -> TemplateVerdict {
        let mut has_code = false;
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            let Some(p) = PLACEHOLDERS.iter().find(|p| after.starts_with(*p)) else {
                return TemplateVerdict::BadPlaceholder;
            };
            has_code |= *p == "code}";
            rest = &after[p.len()..];
        }
        if has_code { TemplateVerdict::Ok } else { TemplateVerdict::MissingCode }
    }

    /// Renders a valid template text. Minutes round up (towards +∞ for
    /// positive lifetimes, truncating division otherwise, as the crate does);
    /// within 59 s of `i64::MAX` they saturate at `i64::MAX / 60`.
    pub fn render(text: &str, code: &str, ttl_secs: i64, app: &str) -> String {
        let minutes = if ttl_secs > i64::MAX - 59 { i64::MAX / 60 } else { (ttl_secs + 59) / 60 };
        let minutes = minutes.to_string();
        let mut out = String::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let (placeholder, value) = [("code}", code), ("ttl_minutes}", &minutes), ("app}", app)]
                .into_iter()
                .find(|(p, _)| after.starts_with(p))
                .expect("a valid template");
            out.push_str(value);
            rest = &after[placeholder.len()..];
        }
        out.push_str(rest);
        out
    }
}

/// Decoder 1: `RawRequest::decode`: the AMQP consumer's and `POST /v1/otp`'s decoder.
mod request_decode {
    use super::arb::{self, quoted};
    use super::{config, oracle};
    use otp_pipeline::domain::{DecodeError, RawRequest};
    use proptest::prelude::*;
    use proptest::sample::select;
    use serde_json::Value;

    /// Decodes `body` and checks everything the contract says of the result.
    /// `phones` are the phone inputs whose digits must never be quoted back.
    fn check(body: &[u8], phones: &[String]) -> Result<(), TestCaseError> {
        let result = RawRequest::decode(body);
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let object = match &parsed {
            Some(Value::Object(map)) => Some(map),
            _ => None,
        };
        match (&result, object) {
            (Err(DecodeError::Malformed(_)), None) => {}
            (Err(DecodeError::Malformed(e)), Some(_)) => {
                prop_assert!(false, "a JSON object was called malformed: {e}")
            }
            (_, None) => prop_assert!(false, "not a JSON object, yet {result:?}"),
            (Ok(raw), Some(_)) => {
                // What was decoded encodes and decodes to itself.
                let again = serde_json::to_vec(raw).expect("requests serialise");
                let decoded = RawRequest::decode(&again);
                prop_assert_eq!(decoded.as_ref(), Ok(raw));
            }
            (Err(DecodeError::Invalid { request_id, .. }), Some(map)) => {
                if let Some(id) = request_id {
                    prop_assert!(oracle::valid_request_id(id), "invalid request_id {id:?} reported");
                }
                let sent = map.get("request_id").and_then(Value::as_str).filter(|id| oracle::valid_request_id(id));
                prop_assert_eq!(request_id.as_deref(), sent);
            }
        }
        if let Err(e) = &result {
            let text = e.to_string();
            let decoded_phone = object.and_then(|map| map.get("phone")).map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
            for phone in phones.iter().chain(decoded_phone.as_ref()) {
                prop_assert!(!oracle::quotes_digits_of(&text, phone), "error text {text:?} quotes phone {phone:?}");
            }
        }
        Ok(())
    }

    /// A field's value: well-typed, any JSON at all, or the phone again.
    #[derive(Debug, Clone)]
    enum Field {
        Token(String),
        /// The phone's digits in another guise (see `leak`).
        Phone(u8),
    }

    fn field(typed: BoxedStrategy<String>) -> BoxedStrategy<Option<Field>> {
        prop::option::of(prop_oneof![
            3 => typed.prop_map(Field::Token),
            1 => arb::json_token().prop_map(Field::Token),
            1 => any::<u8>().prop_map(Field::Phone),
        ])
        .boxed()
    }

    /// The phone (or its digits) as some other field's value.
    fn leak(phone: &str, digits: &str, kind: u8) -> String {
        match kind % 5 {
            0 => quoted(phone),
            1 => quoted(digits),
            2 => format!("1{digits}"),
            3 => format!("[{}]", quoted(phone)),
            _ => format!("{{{}: 1}}", quoted(digits)),
        }
    }

    /// A body shaped like a request: each contract field present or not,
    /// well-typed or any JSON at all, plus extra and duplicate fields, in any
    /// order. The phone's digits also show up elsewhere (as another field's
    /// value, as a key) to catch error texts quoting them. Returns the body
    /// and the phone input.
    fn request_object() -> impl Strategy<Value = (Vec<u8>, String)> {
        let words = |w: &'static [&'static str]| select(w).prop_map(str::to_owned).boxed();
        (
            prop_oneof![2 => arb::phone_input(), 1 => arb::digits(7, 20)],
            any::<u8>(),
            prop::option::weighted(
                0.85,
                prop_oneof![4 => arb::request_id().prop_map(|s| quoted(&s)), 1 => arb::json_token()],
            ),
            field((0u32..=12).prop_map(|n| n.to_string()).boxed()),
            field(prop_oneof![3 => (0u32..=4000).prop_map(|n| n.to_string()), 1 => arb::number_token()].boxed()),
            field(words(&["\"login\"", "\"reset\"", "null"])),
            field(words(&["\"en\"", "\"de\"", "null"])),
            field(words(&["\"sms\"", "\"voice\"", "null"])),
            prop::collection::vec((arb::key(), arb::json_token()), 0..3),
            any::<(u64, bool)>(),
        )
            .prop_map(
                |(
                    phone,
                    phone_form,
                    request_id,
                    code_length,
                    ttl,
                    template,
                    locale,
                    channel,
                    extra,
                    (order, spaced),
                )| {
                    let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
                    let mut fields: Vec<(String, String)> = Vec::new();
                    if let Some(id) = request_id {
                        fields.push((quoted("request_id"), id));
                    }
                    match phone_form % 8 {
                        0 => {}
                        // A producer forgetting the quotes: the phone as a JSON number.
                        1 | 2 if !digits.is_empty() && digits.len() < 40 => {
                            let number = digits.trim_start_matches('0');
                            let number = if number.is_empty() { "0" } else { number };
                            fields.push((quoted("phone"), number.to_owned()));
                        }
                        _ => fields.push((quoted("phone"), quoted(&phone))),
                    }
                    for (key, value) in [
                        ("code_length", code_length),
                        ("ttl_secs", ttl),
                        ("template", template),
                        ("locale", locale),
                        ("channel", channel),
                    ] {
                        match value {
                            None => {}
                            Some(Field::Token(token)) => fields.push((quoted(key), token)),
                            Some(Field::Phone(kind)) => fields.push((quoted(key), leak(&phone, &digits, kind))),
                        }
                    }
                    fields.extend(extra.into_iter().map(|(k, v)| (quoted(&k), v)));
                    if phone_form & 0x80 != 0 && !digits.is_empty() {
                        // The number as an unknown field's name.
                        fields.push((quoted(&digits), "1".into()));
                    }
                    arb::shuffle(&mut fields, order);
                    let body = fields.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(if spaced {
                        " ,\n "
                    } else {
                        ","
                    });
                    (format!("{{{body}}}").into_bytes(), phone)
                },
            )
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn arbitrary_bytes(body in arb::bytes()) {
            check(&body, &[])?;
        }

        #[test]
        fn arbitrary_json_values(value in arb::json_value(), edits in arb::edits(2)) {
            let phones: Vec<String> = match &value {
                Value::Object(map) => map.get("phone").and_then(Value::as_str).map(str::to_owned).into_iter().collect(),
                _ => Vec::new(),
            };
            let body = arb::apply(value.to_string().into_bytes(), &edits);
            check(&body, &phones)?;
        }

        #[test]
        fn request_shaped_objects((body, phone) in request_object(), edits in arb::edits(2)) {
            let body = arb::apply(body, &edits);
            check(&body, &[phone])?;
        }
    }
}

/// Decoder 2: `RawRequest::validate`: every field against the contract.
mod request_validate {
    use super::arb;
    use super::{config, oracle};
    use otp_pipeline::domain::{Limits, Phone, RawRequest, RejectReason, Templates};
    use proptest::prelude::*;
    use proptest::sample::select;
    use std::sync::LazyLock;

    static TEMPLATES: LazyLock<Templates> = LazyLock::new(Templates::default);

    fn raw_request() -> impl Strategy<Value = RawRequest> {
        (
            arb::request_id(),
            arb::phone_input(),
            prop::option::of(prop_oneof![
                3 => Just("login".to_owned()),
                1 => select(&["Login", "reset", "", "login "][..]).prop_map(str::to_owned),
                1 => arb::text(8),
            ]),
            prop::option::of(prop_oneof![
                3 => Just("en".to_owned()),
                1 => select(&["EN", "de", "", "en\0"][..]).prop_map(str::to_owned),
                1 => arb::text(8),
            ]),
            prop::option::of(prop_oneof![3 => 0u8..=12, 1 => any::<u8>()]),
            prop::option::of(prop_oneof![
                3 => 0u32..=4000,
                1 => select(&[29, 30, 3600, 3601, u32::MAX][..]),
                1 => any::<u32>(),
            ]),
            prop::option::of(prop_oneof![
                3 => Just("sms".to_owned()),
                1 => select(&["SMS", "voice", "", "sms "][..]).prop_map(str::to_owned),
                1 => arb::text(8),
            ]),
        )
            .prop_map(|(request_id, phone, template, locale, code_length, ttl_secs, channel)| RawRequest {
                request_id,
                phone,
                template,
                locale,
                code_length,
                ttl_secs,
                channel,
            })
    }

    /// A request whose text fields may carry the phone number (a producer
    /// that mixed up its fields), to check rejections never quote it.
    fn mixed_up_request() -> impl Strategy<Value = RawRequest> {
        (raw_request(), select(arb::WARM_PHONES), any::<[u8; 4]>()).prop_map(|(mut r, valid, spots)| {
            if spots[0] % 2 == 0 {
                // A valid number, so that validation goes past the phone.
                r.phone = valid.to_owned();
            }
            let phone = r.phone.clone();
            let put = |spot: u8, field: &mut Option<String>| match spot % 4 {
                0 => *field = Some(phone.clone()),
                1 => *field = Some(format!("x{phone}")),
                _ => {}
            };
            put(spots[1], &mut r.channel);
            put(spots[2], &mut r.template);
            put(spots[3], &mut r.locale);
            r
        })
    }

    proptest! {
        #![proptest_config(config())]

        /// Ok exactly when every rule holds, and then the contract's guarantees;
        /// otherwise the first broken rule's reason.
        #[test]
        fn outcome_follows_the_contract(raw in raw_request()) {
            let templates = &*TEMPLATES;
            let parsed_phone = Phone::parse(&raw.phone);
            let expected_reason = if !oracle::valid_request_id(&raw.request_id) {
                Some(RejectReason::InvalidRequest)
            } else if parsed_phone.is_err() {
                Some(RejectReason::InvalidPhone)
            } else if raw.code_length.is_some_and(|n| !(4..=10).contains(&n))
                || raw.ttl_secs.is_some_and(|t| !(30..=3600).contains(&t))
                || raw.channel.as_deref().is_some_and(|c| c != "sms")
                || raw.template.as_deref().is_some_and(|t| t != "login")
                || raw.locale.as_deref().is_some_and(|l| l != "en")
            {
                Some(RejectReason::InvalidRequest)
            } else {
                None
            };
            match raw.clone().validate(&Limits::default(), templates) {
                Ok(valid) => {
                    prop_assert_eq!(expected_reason, None);
                    prop_assert!(oracle::valid_request_id(&valid.request_id));
                    prop_assert_eq!(&valid.request_id, &raw.request_id);
                    let e164 = valid.phone.e164();
                    prop_assert!(e164.starts_with('+'), "{}", e164);
                    prop_assert!((8..=15).contains(&(e164.len() - 1)), "{}", e164);
                    prop_assert!(e164[1..].bytes().all(|b| b.is_ascii_digit()), "{}", e164);
                    // Kept in the spelling it was sent in, and that spelling parses
                    // to this very phone: so the E.164 form re-parses to itself
                    // (without paying for a third parse).
                    prop_assert_eq!(e164, &raw.phone);
                    prop_assert_eq!(Ok(&valid.phone), parsed_phone.as_ref());
                    prop_assert!((4..=10).contains(&valid.code_length.get()));
                    prop_assert_eq!(valid.code_length.get(), raw.code_length.unwrap_or(6));
                    prop_assert!((30..=3600).contains(&valid.ttl.whole_seconds()));
                    prop_assert_eq!(valid.ttl.whole_seconds(), i64::from(raw.ttl_secs.unwrap_or(300)));
                    prop_assert!(templates.contains(&valid.template, &valid.locale));
                }
                Err(rejection) => {
                    prop_assert_eq!(Some(rejection.reason), expected_reason, "{}", rejection);
                    prop_assert!(!rejection.detail.is_empty());
                }
            }
        }

        /// A rejection's detail never quotes the phone number.
        #[test]
        fn rejections_never_quote_the_phone(raw in mixed_up_request()) {
            if let Err(rejection) = raw.clone().validate(&Limits::default(), &TEMPLATES) {
                prop_assert!(
                    !oracle::quotes_phone(&rejection.detail, &raw.phone),
                    "detail {:?} quotes phone {:?}", rejection.detail, raw.phone
                );
                prop_assert!(!oracle::quotes_phone(&rejection.to_string(), &raw.phone));
            }
        }
    }
}

/// Decoder 3: `Phone::parse` and the masking helpers.
mod phone {
    use super::arb;
    use super::{config, oracle};
    use otp_pipeline::domain::Phone;
    use otp_pipeline::domain::phone::{mask, redact_numbers};
    use proptest::prelude::*;

    /// What every accepted number guarantees.
    fn check_accepted(input: &str) -> Result<(), TestCaseError> {
        let Ok(phone) = Phone::parse(input) else {
            return Ok(());
        };
        let e164 = phone.e164();
        prop_assert!(e164.starts_with('+'), "{input:?} → {e164:?}");
        let digits = &e164[1..];
        prop_assert!(digits.bytes().all(|b| b.is_ascii_digit()), "{input:?} → {e164:?}");
        prop_assert!((8..=15).contains(&digits.len()), "{input:?} → {e164:?}");
        prop_assert!(
            digits.starts_with(&phone.country_code().to_string()),
            "{input:?} → {e164:?}, country code {}",
            phone.country_code()
        );
        // One number, one spelling: what was accepted is exactly what is kept,
        // so the E.164 form re-parses to itself (`Phone::parse(e164)` is the
        // call just made; a second parse would only double the cost).
        prop_assert_eq!(e164, input, "accepted in another spelling");
        // The masked form: `+`, the first four and last two digits, stars between.
        let masked = phone.masked();
        prop_assert_eq!(masked.len(), e164.len());
        prop_assert_eq!(masked.chars().filter(char::is_ascii_digit).count(), 6, "{}", masked);
        prop_assert_eq!(&masked[..5], &e164[..5]);
        prop_assert_eq!(&masked[masked.len() - 2..], &e164[e164.len() - 2..]);
        prop_assert!(masked[5..masked.len() - 2].bytes().all(|b| b == b'*'), "{}", masked);
        prop_assert_eq!(phone.to_string(), masked);
        let debug = format!("{phone:?}");
        prop_assert!(!debug.contains(digits), "{}", debug);
        Ok(())
    }

    #[test]
    fn samples_are_valid() {
        for sample in arb::WARM_PHONES.iter().chain(arb::COLD_PHONES) {
            let phone = Phone::parse(sample).unwrap_or_else(|e| panic!("{sample}: {e}"));
            assert_eq!(phone.e164(), *sample);
        }
    }

    proptest! {
        #![proptest_config(config())]

        /// Phone inputs of every kind, 1% of them cold (see `arb` on the cost).
        #[test]
        fn parse_arbitrary_strings(input in arb::phone_input_mix(99)) {
            check_accepted(&input)?;
        }

        /// `+` and 0–20 arbitrary digits, or a calling code then a trunk
        /// prefix (`+49 0…`); the calling code is 1, 44 or 49 in 19 cases out
        /// of 20 (see `arb` on the cost of others).
        #[test]
        fn parse_plus_and_digits(input in prop_oneof![
            1 => arb::plus_digits(0, 20),
            14 => arb::warm_plus_digits(),
            5 => arb::warm_trunk_prefixed(),
        ]) {
            check_accepted(&input)?;
        }

        /// `mask` never panics and never shows more than six digits;
        /// `redact_numbers` never leaves a run of seven digits and changes nothing else.
        #[test]
        fn mask_and_redact_any_string(input in arb::text(40)) {
            let masked = mask(&input);
            prop_assert!(masked.starts_with('+'));
            let digits: Vec<char> = input.chars().filter(char::is_ascii_digit).collect();
            if digits.len() < 8 {
                prop_assert_eq!(masked, "+*******");
            } else {
                prop_assert_eq!(masked.chars().count(), digits.len() + 1);
                prop_assert_eq!(masked.chars().filter(char::is_ascii_digit).count(), 6);
            }
            let redacted = redact_numbers(&input);
            prop_assert!(oracle::digit_runs(&redacted, 7).is_empty(), "{:?}", redacted);
            prop_assert_eq!(redacted.chars().count(), input.chars().count());
            for (a, b) in input.chars().zip(redacted.chars()) {
                prop_assert!(a == b || (a.is_ascii_digit() && b == '*'));
            }
        }
    }
}

/// Decoder 4: `Code::parse` (what users type) and `Code::generate`.
mod code {
    use super::arb;
    use super::config;
    use otp_pipeline::domain::{Code, CodeLength};
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn code_input() -> impl Strategy<Value = String> {
        prop_oneof![
            2 => arb::digits(0, 12),
            1 => (arb::text(3), arb::digits(3, 11), arb::text(3)).prop_map(|(a, d, b)| format!("{a}{d}{b}")),
            2 => arb::text(14),
        ]
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn parse_arbitrary_strings(input in code_input()) {
            let trimmed = input.trim();
            let expected = (4..=10).contains(&trimmed.len()) && trimmed.bytes().all(|b| b.is_ascii_digit());
            match Code::parse(&input) {
                Some(code) => {
                    prop_assert!(expected, "{:?} accepted", input);
                    let digits = code.expose();
                    prop_assert!((4..=10).contains(&digits.len()));
                    prop_assert!(digits.bytes().all(|b| b.is_ascii_digit()));
                    prop_assert_eq!(digits, trimmed);
                    let shown = format!("{code:?}{code}");
                    prop_assert!(!shown.contains(digits), "{}", shown);
                }
                None => prop_assert!(!expected, "{:?} refused", input),
            }
        }

        /// Every length, from a seeded generator: exactly that many digits.
        #[test]
        fn generate_every_length(seed in any::<u64>()) {
            let mut rng = StdRng::seed_from_u64(seed);
            for digits in 4..=10u8 {
                let length = CodeLength::new(digits).expect("4-10 is the contract's range");
                let code = Code::generate(length, &mut rng);
                prop_assert_eq!(code.expose().len(), usize::from(digits));
                prop_assert!(code.expose().bytes().all(|b| b.is_ascii_digit()));
                prop_assert!(Code::parse(code.expose()).is_some());
            }
        }
    }
}

/// Decoder 5: `POST /v1/verify`'s input path, without a broker: the body as the
/// handler's `ApiJson<VerifyBody>` reads it (mirrored here: `VerifyBody` is
/// private), then `Phone::parse` and `Code::parse`.
mod verify_body {
    use super::arb::{self, quoted};
    use super::{config, oracle};
    use otp_pipeline::domain::phone::redact_numbers;
    use otp_pipeline::domain::{Code, Phone};
    use proptest::prelude::*;
    use serde_json::Value;

    /// Mirrors `src/http/verify.rs`.
    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct VerifyBody {
        phone: String,
        code: String,
    }

    /// `{"phone","code"}` with either missing, mistyped, doubled or joined by others.
    fn verify_object() -> impl Strategy<Value = (Vec<u8>, String, bool)> {
        (
            arb::phone_input(),
            prop_oneof![2 => arb::digits(0, 12), 1 => arb::text(12)],
            any::<[u8; 4]>(),
            prop::collection::vec((arb::key(), arb::json_token()), 0..2),
            arb::json_token(),
        )
            .prop_map(|(phone, code, switches, extra, junk)| {
                let mut fields = Vec::new();
                let mut well_formed = extra.is_empty();
                match switches[0] % 6 {
                    0 => well_formed = false,
                    1 => {
                        fields.push(("phone".to_owned(), junk.clone()));
                        well_formed = false;
                    }
                    _ => fields.push(("phone".to_owned(), quoted(&phone))),
                }
                match switches[1] % 6 {
                    0 => well_formed = false,
                    1 => {
                        fields.push(("code".to_owned(), junk));
                        well_formed = false;
                    }
                    _ => fields.push(("code".to_owned(), quoted(&code))),
                }
                if switches[2] % 8 == 0 {
                    fields.push(("phone".to_owned(), quoted(&phone)));
                    well_formed = false;
                }
                fields.extend(extra);
                if switches[3] % 2 == 0 {
                    fields.reverse();
                }
                let body = fields.iter().map(|(k, v)| format!("{}:{v}", quoted(k))).collect::<Vec<_>>().join(",");
                (format!("{{{body}}}").into_bytes(), phone, well_formed)
            })
    }

    fn check(body: &[u8], phone: Option<&str>, well_formed: bool) -> Result<(), TestCaseError> {
        match serde_json::from_slice::<VerifyBody>(body) {
            Ok(parsed) => {
                // Never a default: exactly the two strings that were sent.
                let value: Value = serde_json::from_slice(body).expect("it parsed once");
                let Value::Object(map) = value else {
                    return Err(TestCaseError::fail(format!("{value} is not an object")));
                };
                prop_assert_eq!(map.len(), 2);
                prop_assert_eq!(map.get("phone").and_then(Value::as_str), Some(parsed.phone.as_str()));
                prop_assert_eq!(map.get("code").and_then(Value::as_str), Some(parsed.code.as_str()));
                // What the handler does next: both fail cleanly or succeed.
                match Phone::parse(&parsed.phone) {
                    Ok(p) => prop_assert!(!p.e164().is_empty()),
                    Err(e) => prop_assert!(!oracle::quotes_digits_of(&e.to_string(), &parsed.phone)),
                }
                if let Some(code) = Code::parse(&parsed.code) {
                    prop_assert_eq!(code.expose(), parsed.code.trim());
                }
            }
            Err(e) => {
                prop_assert!(!well_formed, "well-formed body refused: {e}");
                // The handler answers the redacted error text.
                let text = redact_numbers(&e.to_string());
                if let Some(phone) = phone {
                    prop_assert!(!oracle::quotes_digits_of(&text, phone), "{text:?}");
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn arbitrary_bodies(body in arb::bytes()) {
            check(&body, None, false)?;
        }

        #[test]
        fn verify_shaped_bodies((body, phone, well_formed) in verify_object(), edits in arb::edits(2)) {
            let well_formed = well_formed && edits.is_empty();
            let body = arb::apply(body, &edits);
            check(&body, Some(&phone), well_formed)?;
        }
    }
}

/// Decoder 6: `Templates::new` (configuration) and `Templates::render`.
mod templates {
    use super::oracle::{self, TemplateVerdict};
    use super::{arb, config};
    use otp_pipeline::domain::{Code, TemplateError, Templates};
    use proptest::prelude::*;
    use proptest::sample::select;
    use std::collections::BTreeMap;
    use std::sync::LazyLock;
    use time::Duration;

    static TEMPLATES: LazyLock<Templates> = LazyLock::new(Templates::default);

    type Configured = BTreeMap<String, BTreeMap<String, String>>;

    /// Template texts: text, placeholders and broken placeholders, concatenated.
    fn template_text() -> impl Strategy<Value = String> {
        // No filter (proptest counts local rejects over the whole run): braces become parentheses.
        let literal = prop::collection::vec(arb::char_any(), 0..8).prop_map(|chars| {
            chars
                .into_iter()
                .map(|c| match c {
                    '{' => '(',
                    '}' => ')',
                    c => c,
                })
                .collect::<String>()
        });
        let piece = prop_oneof![
            4 => literal,
            4 => select(&["{code}", "{ttl_minutes}", "{app}"][..]).prop_map(str::to_owned),
            1 => select(&[
                "{", "}", "{}", "{name}", "{code", "{{code}}", "{ code}", "{CODE}", "{app}{",
                "{ttl_minutes", "}{code}", "{code}}", "{co{de}", "{c\u{0}ode}",
            ][..]).prop_map(str::to_owned),
            1 => arb::text(6),
        ];
        prop::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
    }

    fn configured() -> impl Strategy<Value = Configured> {
        let name = prop_oneof![
            2 => select(&["login", "reset", ""][..]).prop_map(str::to_owned),
            1 => arb::text(6),
        ];
        let locale = prop_oneof![
            2 => select(&["en", "de", ""][..]).prop_map(str::to_owned),
            1 => arb::text(4),
        ];
        prop::collection::btree_map(name, prop::collection::btree_map(locale, template_text(), 0..3), 0..3)
    }

    /// Arbitrary codes: every length, leading zeros included.
    fn code() -> impl Strategy<Value = Code> {
        arb::digits(4, 10).prop_map(|d| Code::parse(&d).expect("4-10 digits"))
    }

    proptest! {
        #![proptest_config(config())]

        /// Loading refuses exactly the texts without `{code}` or with an
        /// unknown/unclosed placeholder; every loaded text renders with the code.
        #[test]
        fn load_and_render(
            configured in configured(),
            code in code(),
            ttl_secs in any::<i64>(),
            app in arb::text(12),
        ) {
            let mut effective = configured.clone();
            effective
                .entry(Templates::DEFAULT_NAME.to_owned())
                .or_default()
                .entry(Templates::DEFAULT_LOCALE.to_owned())
                .or_insert_with(|| Templates::DEFAULT_TEXT.to_owned());
            // The crate checks in map order and stops at the first bad text.
            let first_bad = effective.iter().flat_map(|(name, locales)| {
                locales.iter().map(move |(locale, text)| (name, locale, oracle::template(text)))
            }).find(|(_, _, verdict)| *verdict != TemplateVerdict::Ok);
            match (Templates::new(configured), first_bad) {
                (Ok(templates), None) => {
                    let ttl = Duration::seconds(ttl_secs);
                    for (name, locales) in &effective {
                        for (locale, text) in locales {
                            prop_assert!(templates.contains(name, locale));
                            let rendered = templates.render(name, locale, &code, ttl, &app);
                            let expected = oracle::render(text, code.expose(), ttl_secs, &app);
                            prop_assert_eq!(rendered.as_deref(), Some(expected.as_str()));
                            prop_assert!(rendered.is_some_and(|r| r.contains(code.expose())));
                        }
                        let missing = format!("{name}\u{0}missing");
                        if !effective.contains_key(&missing) {
                            prop_assert!(templates.render(&missing, "en", &code, ttl, &app).is_none());
                        }
                    }
                }
                (Err(TemplateError::BadPlaceholder(name, locale, _)), Some((n, l, TemplateVerdict::BadPlaceholder)))
                | (Err(TemplateError::MissingCode(name, locale)), Some((n, l, TemplateVerdict::MissingCode))) => {
                    prop_assert_eq!((&name, &locale), (n, l));
                }
                (result, expected) => {
                    prop_assert!(false, "loading gave {:?}, expected {:?}", result.map(|_| ()), expected);
                }
            }
        }

        /// Any lifetime at all, the extremes included.
        #[test]
        fn render_any_ttl(
            code in code(),
            ttl_secs in prop_oneof![
                any::<i64>(),
                (i64::MAX - 100)..=i64::MAX,
                i64::MIN..=(i64::MIN + 100),
                -100i64..=100,
            ],
            app in arb::text(8),
        ) {
            let rendered = TEMPLATES.render("login", "en", &code, Duration::seconds(ttl_secs), &app);
            let expected = oracle::render(Templates::DEFAULT_TEXT, code.expose(), ttl_secs, &app);
            prop_assert!(expected.contains(code.expose()));
            prop_assert_eq!(rendered, Some(expected));
        }
    }
}

/// Decoder 7: Delivery receipts: Twilio's signed form posts, Vonage's token-authenticated
/// parameters, MSG91's token-authenticated JSON or form webhooks.
mod receipts {
    use super::arb;
    use super::{config, oracle};
    use otp_pipeline::carriers::{ReceiptError, ReceiptStatus, msg91, twilio, vonage};
    use otp_pipeline::config::{Msg91Config, TwilioConfig, VonageConfig};
    use proptest::prelude::*;
    use proptest::sample::select;
    use serde_json::json;

    const TWILIO_NAMES: &[&str] =
        &["MessageSid", "SmsSid", "MessageStatus", "SmsStatus", "ErrorCode", "AccountSid", "To", "From"];
    const TWILIO_VALUES: &[&str] = &[
        "delivered",
        "read",
        "undelivered",
        "failed",
        "canceled",
        "sent",
        "queued",
        "",
        "SM0123456789abcdef0123456789abcdef",
        "30003",
    ];
    const VONAGE_NAMES: &[&str] = &["token", "messageId", "status", "err-code", "msisdn", "to", "network-code", "scts"];
    const VONAGE_VALUES: &[&str] = &[
        "delivered",
        "DELIVERED",
        "expired",
        "failed",
        "rejected",
        "accepted",
        "buffered",
        "unknown",
        "",
        "0C000000217B7F02",
        "1",
    ];
    const MSG91_NAMES: &[&str] =
        &["requestId", "status", "desc", "description", "number", "failedReason", "failureReason", "report", "data"];
    const MSG91_VALUES: &[&str] = &["1", "2", "9", "16", "17", "25", "8", "delivered", "failed", "Rejected", " 1 ", ""];

    /// A secret as configured: realistic, empty, padded or anything.
    fn secret() -> impl Strategy<Value = String> + Clone {
        prop_oneof![
            4 => prop::collection::vec(select(&b"ABCDEFabcdef0123456789xyz"[..]), 8..=32)
                .prop_map(|b| String::from_utf8(b).expect("ASCII")),
            1 => Just(String::new()),
            1 => select(&[" ", "tok ", " tok"][..]).prop_map(str::to_owned),
            1 => arb::text(10),
        ]
    }

    /// How a caller presents the secret (a signature or a token).
    #[derive(Debug, Clone)]
    enum Presented {
        Missing,
        Correct,
        Padded(String),
        /// The correct one with one character replaced.
        Mutated(prop::sample::Index, char),
        /// The correct one, truncated.
        Truncated(prop::sample::Index),
        /// One computed with another secret.
        OtherSecret(String),
        Anything(String),
    }

    fn presented() -> impl Strategy<Value = Presented> {
        prop_oneof![
            1 => Just(Presented::Missing),
            3 => Just(Presented::Correct),
            1 => select(&[" ", "\t", "\n", " \r\n"][..]).prop_map(|s| Presented::Padded(s.to_owned())),
            2 => (any::<prop::sample::Index>(), arb::char_any()).prop_map(|(i, c)| Presented::Mutated(i, c)),
            1 => any::<prop::sample::Index>().prop_map(Presented::Truncated),
            1 => secret().prop_map(Presented::OtherSecret),
            1 => arb::text(30).prop_map(Presented::Anything),
        ]
    }

    impl Presented {
        /// The presented value, given the correct one and how to compute one
        /// with another secret.
        fn value(&self, correct: &str, with: impl Fn(&str) -> String) -> Option<String> {
            Some(match self {
                Self::Missing => return None,
                Self::Correct => correct.to_owned(),
                Self::Padded(pad) => format!("{pad}{correct}{pad}"),
                Self::Mutated(at, c) => {
                    let mut chars: Vec<char> = correct.chars().collect();
                    if chars.is_empty() {
                        c.to_string()
                    } else {
                        let i = at.index(chars.len());
                        chars[i] = *c;
                        chars.into_iter().collect()
                    }
                }
                Self::Truncated(at) => correct.chars().take(at.index(correct.chars().count() + 1)).collect(),
                Self::OtherSecret(other) => with(other),
                Self::Anything(text) => text.clone(),
            })
        }
    }

    /// Receipt parameters: the documented names and values, and anything.
    fn params(
        names: &'static [&'static str],
        values: &'static [&'static str],
    ) -> impl Strategy<Value = Vec<(String, String)>> {
        let name = prop_oneof![4 => select(names).prop_map(str::to_owned), 1 => arb::text(8)];
        let value = prop_oneof![
            3 => select(values).prop_map(str::to_owned),
            2 => prop::collection::vec(select(&b"ABCDEFSMabcdef0123456789"[..]), 1..=34)
                .prop_map(|b| String::from_utf8(b).expect("ASCII")),
            1 => arb::phone_input(),
            1 => arb::text(12),
        ];
        prop::collection::vec((name, value), 0..7)
    }

    fn twilio_config(auth_token: &str) -> TwilioConfig {
        serde_json::from_value(json!({
            "account_sid": "AC00000000000000000000000000000000",
            "auth_token": auth_token,
        }))
        .expect("a minimal Twilio configuration")
    }

    fn vonage_config(receipt_token: Option<&str>) -> VonageConfig {
        serde_json::from_value(json!({
            "api_key": "abcd1234",
            "api_secret": "s3cr3t",
            "from": "Acme",
            "receipt_token": receipt_token,
        }))
        .expect("a minimal Vonage configuration")
    }

    fn msg91_config(receipt_token: Option<&str>) -> Msg91Config {
        serde_json::from_value(json!({
            "authkey": "auth-key-1",
            "template_id": "6123abcd",
            "receipt_token": receipt_token,
        }))
        .expect("a minimal MSG91 configuration")
    }

    /// A refused receipt callback: forbidden only if it was not authentic,
    /// malformed only if it was (its content is judged only after the token),
    /// and never "not configured" when a token is.
    fn refusal_fits(error: &ReceiptError, authentic: bool, what: &str) -> Result<(), TestCaseError> {
        match error {
            ReceiptError::Forbidden(_) => prop_assert!(!authentic, "authentic {} refused: {:?}", what, error),
            ReceiptError::Malformed(_) => prop_assert!(authentic, "unauthenticated {} parsed: {:?}", what, error),
            ReceiptError::NotConfigured(_) => prop_assert!(false, "{:?}", error),
        }
        Ok(())
    }

    /// The first value of `name`.
    fn first<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
        params.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// Twilio form bodies: encoded parameters, edited or not, or any bytes.
    fn twilio_body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            4 => params(
                TWILIO_NAMES,
                TWILIO_VALUES,
            )
            .prop_map(|p| serde_urlencoded::to_string(p).expect("pairs encode").into_bytes()),
            1 => (arb::bytes(), arb::edits(2)).prop_map(|(b, e)| arb::apply(b, &e)),
            1 => (arb::text(40), arb::edits(2)).prop_map(|(t, e)| arb::apply(t.into_bytes(), &e)),
        ]
    }

    fn msg91_report() -> BoxedStrategy<serde_json::Value> {
        let field = prop_oneof![
            3 => select(MSG91_VALUES).prop_map(|s| json!(s)),
            1 => (0u32..30).prop_map(|n| json!(n)),
            1 => arb::digits(7, 15).prop_map(|d| json!(format!("+{d}"))),
            1 => arb::text(8).prop_map(|s| json!(s)),
            1 => arb::json_value(),
        ];
        let name = prop_oneof![
            4 => select(MSG91_NAMES).prop_map(str::to_owned),
            1 => arb::text(6),
        ];
        prop::collection::vec((name, field), 0..=4)
            .prop_map(|fields| serde_json::Value::Object(fields.into_iter().collect()))
            .boxed()
    }

    /// MSG91 webhook bodies in every documented shape, nested junk, and any bytes.
    fn msg91_body() -> impl Strategy<Value = Vec<u8>> {
        let request = (
            arb::text(6),
            any::<u128>().prop_map(|n| format!("{:024x}", n >> 32)),
            prop::collection::vec(msg91_report(), 0..3),
            msg91_report(),
        )
            .prop_map(|(junk, id, reports, flat)| {
                let id = if junk.len() % 3 == 0 { junk } else { id };
                (json!({"requestId": id, "report": reports}), {
                    let mut flat = flat;
                    if let Some(object) = flat.as_object_mut() {
                        object.entry("requestId").or_insert(json!(id));
                    }
                    flat
                })
            });
        let body = prop_oneof![
            // Classic: {"data": [...]}, with the array inline or as a string.
            2 => (prop::collection::vec(request.clone(), 0..3), any::<bool>()).prop_map(|(requests, as_string)| {
                let data = serde_json::Value::Array(requests.into_iter().map(|(r, _)| r).collect());
                let data = if as_string { json!(data.to_string()) } else { data };
                json!({ "data": data }).to_string().into_bytes()
            }),
            // Classic as a form: data=<urlencoded JSON>.
            2 => prop::collection::vec(request.clone(), 0..3).prop_map(|requests| {
                let data = serde_json::Value::Array(requests.into_iter().map(|(r, _)| r).collect());
                serde_urlencoded::to_string([("data", data.to_string())]).expect("encodes").into_bytes()
            }),
            // Flat or new-webhook JSON, alone or in an array.
            2 => (prop::collection::vec(request, 1..3), any::<bool>()).prop_map(|(requests, alone)| {
                let mut flats: Vec<serde_json::Value> = requests.into_iter().map(|(_, f)| f).collect();
                let json = if alone { flats.swap_remove(0) } else { serde_json::Value::Array(flats) };
                json.to_string().into_bytes()
            }),
            1 => arb::json_value().prop_map(|v| v.to_string().into_bytes()),
            1 => (arb::text(40), any::<bool>())
                .prop_map(|(t, form)| if form { format!("data={t}") } else { t }.into_bytes()),
            1 => arb::bytes(),
        ];
        (body, arb::edits(1)).prop_map(|(body, edits)| arb::apply(body, &edits))
    }

    proptest! {
        #![proptest_config(config())]

        /// Only a body signed with the auth token is ever accepted.
        #[test]
        fn twilio_receipt(
            auth_token in secret(),
            url in prop_oneof![3 => Just("https://sender.example.com/receipts/twilio".to_owned()), 1 => arb::text(20)],
            body in twilio_body(),
            presented in presented(),
        ) {
            let config = twilio_config(&auth_token);
            let params: Option<Vec<(String, String)>> = serde_urlencoded::from_bytes(&body).ok();
            let correct = params.as_ref().map(|p| twilio::signature(&auth_token, &url, p)).unwrap_or_default();
            let header = presented.value(&correct, |other| {
                params.as_ref().map(|p| twilio::signature(other, &url, p)).unwrap_or_default()
            });
            let result = twilio::receipt(&config, &url, header.as_deref(), &body);
            let authentic = params.is_some() && header.as_deref().map(str::trim) == Some(correct.as_str());
            match &result {
                Ok(receipt) => {
                    prop_assert!(authentic, "accepted signature {:?}, expected {:?}", header, correct);
                    let params = params.as_deref().unwrap_or_default();
                    let param = |name| first(params, name).filter(|v| !v.is_empty());
                    let sid = param("MessageSid").or_else(|| param("SmsSid"));
                    prop_assert_eq!(Some(receipt.carrier_message_id.as_str()), sid);
                    prop_assert_eq!(receipt.carrier, "twilio");
                    // The documented mapping of `MessageStatus`.
                    let state = param("MessageStatus").or_else(|| param("SmsStatus")).unwrap_or_default();
                    let (status, error) = match state {
                        "delivered" | "read" => (ReceiptStatus::Delivered, None),
                        "undelivered" | "failed" | "canceled" => {
                            (ReceiptStatus::Undelivered, Some(param("ErrorCode").unwrap_or(state)))
                        }
                        _ => (ReceiptStatus::Pending, None),
                    };
                    prop_assert_eq!(receipt.status, status);
                    prop_assert_eq!(receipt.error.as_deref(), error);
                }
                Err(error) => refusal_fits(error, authentic, "receipt")?,
            }
        }

        /// Only parameters carrying the configured token are ever accepted.
        #[test]
        fn vonage_receipt(
            receipt_token in prop::option::weighted(0.9, secret()),
            mut params in params(
                VONAGE_NAMES,
                VONAGE_VALUES,
            ),
            presented in presented(),
            at in any::<prop::sample::Index>(),
        ) {
            let expected = receipt_token.as_deref().unwrap_or_default();
            let token = presented.value(expected, str::to_owned);
            if let Some(token) = token {
                let i = at.index(params.len() + 1);
                params.insert(i, ("token".to_owned(), token));
            }
            let result = vonage::receipt(&vonage_config(receipt_token.as_deref()), &params);
            if expected.is_empty() {
                prop_assert!(matches!(result, Err(ReceiptError::NotConfigured("vonage"))), "{:?}", result);
                return Ok(());
            }
            let authentic = first(&params, "token").map(str::trim) == Some(expected);
            match &result {
                Ok(receipt) => {
                    prop_assert!(authentic, "accepted token {:?}, expected {:?}", first(&params, "token"), expected);
                    let param = |name| first(&params, name).map(str::trim).filter(|v| !v.is_empty());
                    prop_assert_eq!(Some(receipt.carrier_message_id.as_str()), param("messageId"));
                    prop_assert_eq!(receipt.carrier, "vonage");
                    // The documented mapping of `status`.
                    let state = param("status").unwrap_or_default();
                    let (status, error) = match state.to_ascii_lowercase().as_str() {
                        "delivered" => (ReceiptStatus::Delivered, None),
                        "expired" | "failed" | "rejected" => {
                            (ReceiptStatus::Undelivered, Some(param("err-code").unwrap_or(state)))
                        }
                        _ => (ReceiptStatus::Pending, None),
                    };
                    prop_assert_eq!(receipt.status, status);
                    prop_assert_eq!(receipt.error.as_deref(), error);
                }
                Err(error) => refusal_fits(error, authentic, "receipt")?,
            }
        }

        /// Only calls carrying the configured token are ever accepted; error
        /// texts never quote a number.
        #[test]
        fn msg91_receipts(
            receipt_token in prop::option::weighted(0.9, secret()),
            body in msg91_body(),
            presented in presented(),
        ) {
            let expected = receipt_token.as_deref().unwrap_or_default();
            let token = presented.value(expected, str::to_owned);
            let result = msg91::receipts(&msg91_config(receipt_token.as_deref()), token.as_deref(), &body);
            if expected.is_empty() {
                prop_assert!(matches!(result, Err(ReceiptError::NotConfigured("msg91"))), "{:?}", result);
                return Ok(());
            }
            let authentic = token.as_deref() == Some(expected);
            match &result {
                Ok(receipts) => {
                    prop_assert!(authentic, "accepted token {:?}, expected {:?}", token, expected);
                    prop_assert!(!receipts.is_empty());
                    for receipt in receipts {
                        prop_assert_eq!(receipt.carrier, "msg91");
                        prop_assert!(!receipt.carrier_message_id.is_empty());
                        prop_assert_eq!(receipt.error.is_some(), receipt.status == ReceiptStatus::Undelivered);
                        if let Some(error) = &receipt.error {
                            prop_assert!(oracle::digit_runs(error, 7).is_empty(), "{:?}", error);
                        }
                    }
                }
                Err(error) => refusal_fits(error, authentic, "call")?,
            }
        }
    }
}
