//! The AsyncAPI document (`docs/asyncapi.yaml`) against the code.
//!
//! - The document is AsyncAPI 3.0.0, names the contract's channels,
//!   operations and messages with the names the code uses (topology, routing
//!   keys, headers, event kinds, reasons, carriers), and every `$ref` in it
//!   resolves inside it.
//! - Real messages, built with the library as the generator and the senders
//!   build them and serialized with serde, validate against the payload
//!   schemas in `components` (JSON Schema draft-07, formats checked).
//! - The request schema agrees with the library's own request decoder and
//!   validator on a set of bodies, good and bad; where JSON Schema cannot
//!   follow the code (libphonenumber, configured templates) the difference is
//!   listed and checked too.
//!
//! No broker needed.

use jsonschema::Validator;
use otp_pipeline::broker::Topology;
use otp_pipeline::carriers::{self, CarrierConfigError, CarrierError};
use otp_pipeline::config::Config;
use otp_pipeline::domain::{
    Code, CodeLength, Delivery, Event, EventKind, Limits, Phone, RawRequest, ReceiptMessage, RejectReason, Rejection,
    Reply, ReplyStatus, Templates,
};
use otp_pipeline::generator::outbox::encode_deliveries;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::OnceLock;
use time::{Duration, OffsetDateTime};

const DOC_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/asyncapi.yaml");

/// The document, parsed once.
fn doc() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let text = std::fs::read_to_string(DOC_PATH).unwrap_or_else(|e| panic!("{DOC_PATH}: {e}"));
        serde_norway::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{DOC_PATH} is not valid YAML: {e}"))
    })
}

/// The value at a JSON pointer of the document.
fn at(pointer: &str) -> &'static Value {
    doc().pointer(pointer).unwrap_or_else(|| panic!("docs/asyncapi.yaml has nothing at {pointer}"))
}

fn keys(value: &Value) -> BTreeSet<String> {
    value.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

fn strings(value: &Value) -> BTreeSet<String> {
    value.as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

fn set<const N: usize>(items: [&str; N]) -> BTreeSet<String> {
    items.into_iter().map(str::to_owned).collect()
}

/// A draft-07 validator (formats checked) for `schema`, whose `$ref`s point
/// into `#/components/...`: the document's components are carried in the
/// root, so references resolve locally, with no remote fetching.
fn validator(schema: &Value) -> Validator {
    let root = json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "components": doc()["components"],
        "allOf": [schema],
    });
    jsonschema::draft7::options()
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("schema {schema} does not compile: {e}"))
}

/// The validator of `components.schemas.<name>`.
fn schema(name: &str) -> Validator {
    at(&format!("/components/schemas/{name}"));
    validator(&json!({"$ref": format!("#/components/schemas/{name}")}))
}

/// The validator of the payload of `components.messages.<name>`.
fn payload(name: &str) -> Validator {
    validator(at(&format!("/components/messages/{name}/payload")))
}

/// Every validation error of `instance`, one line each.
fn errors(validator: &Validator, instance: &Value) -> Vec<String> {
    validator.iter_errors(instance).map(|e| format!("{}: {e}", e.instance_path())).collect()
}

/// Validates every `(label, value)` and fails with all the errors at once.
fn assert_all_valid(what: &str, validator: &Validator, values: &[(String, Value)]) {
    let failures: Vec<String> = values
        .iter()
        .filter_map(|(label, value)| {
            let errs = errors(validator, value);
            (!errs.is_empty()).then(|| format!("{label}: {value}\n    {}", errs.join("\n    ")))
        })
        .collect();
    let (failed, total, report) = (failures.len(), values.len(), failures.join("\n"));
    assert!(failures.is_empty(), "{what}: {failed} of {total} do not match the schema:\n{report}");
}

fn to_value<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("message types serialize")
}

// ---- everything the code can emit, listed exhaustively ----------------------

const ALL_KINDS: [EventKind; 9] = [
    EventKind::Accepted,
    EventKind::Rejected,
    EventKind::Sent,
    EventKind::Failed,
    EventKind::Delivered,
    EventKind::Undelivered,
    EventKind::Verified,
    EventKind::Expired,
    EventKind::Canceled,
];

const ALL_REASONS: [RejectReason; 5] = [
    RejectReason::InvalidRequest,
    RejectReason::InvalidPhone,
    RejectReason::RateLimited,
    RejectReason::CountryBlocked,
    RejectReason::SuspectedPumping,
];

/// Does not compile when a variant is added: add it to the lists above too.
#[allow(dead_code)]
fn lists_are_exhaustive(kind: EventKind, reason: RejectReason) {
    match kind {
        EventKind::Accepted
        | EventKind::Rejected
        | EventKind::Sent
        | EventKind::Failed
        | EventKind::Delivered
        | EventKind::Undelivered
        | EventKind::Verified
        | EventKind::Expired
        | EventKind::Canceled => {}
    }
    match reason {
        RejectReason::InvalidRequest
        | RejectReason::InvalidPhone
        | RejectReason::RateLimited
        | RejectReason::CountryBlocked
        | RejectReason::SuspectedPumping => {}
    }
}

/// Whether the generator gives a time to retry with this reason.
fn has_retry(reason: RejectReason) -> bool {
    matches!(reason, RejectReason::RateLimited | RejectReason::SuspectedPumping)
}

const PHONES: [&str; 4] = ["+14155550123", "+447911123456", "+919876543210", "+4915123456789"];

fn times() -> [OffsetDateTime; 2] {
    [OffsetDateTime::now_utc(), OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("a valid time")]
}

/// A rejection as the library's validator makes it.
fn validation_rejection(raw: RawRequest) -> Rejection {
    raw.validate(&Limits::default(), &Templates::default()).expect_err("an invalid request")
}

fn raw(request_id: &str, phone: &str) -> RawRequest {
    RawRequest { request_id: request_id.into(), phone: phone.into(), ..Default::default() }
}

/// Every rejection the generator can announce: the validator's own, and the
/// ones made by the generator's limits, geo rules and pumping guard.
fn rejections() -> Vec<Rejection> {
    let mut out = vec![
        validation_rejection(raw("", PHONES[0])),
        validation_rejection(raw("a\nb", PHONES[0])),
        validation_rejection(RawRequest { ttl_secs: Some(29), ..raw("r1", PHONES[0]) }),
        validation_rejection(RawRequest { channel: Some("voice".into()), ..raw("r1", PHONES[0]) }),
        validation_rejection(RawRequest { template: Some("nope".into()), ..raw("r1", PHONES[0]) }),
        validation_rejection(raw("r1", "+10005550123")),
        validation_rejection(raw("r1", "0044 7700 900123")),
    ];
    for reason in ALL_REASONS {
        let detail = match reason {
            RejectReason::InvalidRequest => "request_id was already used with another phone or other parameters",
            RejectReason::InvalidPhone => "phone must be in E.164 form: '+' then 8 to 15 digits, no spaces",
            RejectReason::RateLimited => "resend_cooldown: too many codes for this number; retry in 23 s",
            RejectReason::CountryBlocked => "calling code +91 is not allowed",
            RejectReason::SuspectedPumping => {
                "prefix +255712 quarantined (prefix_velocity: 201 sends in 3600 s (max 200))"
            }
        };
        out.push(Rejection { reason, detail: detail.into() });
    }
    let reasons: BTreeSet<&str> = out.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(reasons.len(), ALL_REASONS.len(), "every reason is covered");
    out
}

/// Events of `kind`, built the way the generator and the senders build them.
fn events_of(kind: EventKind) -> Vec<(String, Event)> {
    let mut out = Vec::new();
    for now in times() {
        for phone in PHONES {
            let id = Some("order-42-login-1".to_owned());
            let base = || Event::new(kind, id.clone(), phone, now);
            let mut push = |label: &str, e: Event| out.push((format!("{kind:?} {label} ({phone}, {now})"), e));
            match kind {
                EventKind::Accepted => {
                    let mut e = base();
                    e.expires_at = Some(now + Duration::seconds(300));
                    push("issued", e);
                }
                EventKind::Rejected => {
                    for rejection in rejections() {
                        let retry = has_retry(rejection.reason).then_some(23);
                        let label = format!("{} {:?}", rejection.reason.as_str(), rejection.detail);
                        push(&label, Event::rejected(id.clone(), phone, &rejection, retry, now));
                    }
                    // An object with no usable request_id (the decoder's `Invalid`): no phone either.
                    let invalid = Rejection { reason: RejectReason::InvalidRequest, detail: "missing field".into() };
                    push("undecodable", Event::rejected(None, "", &invalid, None, now));
                    // The verify lockout, with or without a request.
                    let lockout = Rejection {
                        reason: RejectReason::RateLimited,
                        detail: "verify_lockout: too many failed verifications for this number; retry in 900 s".into(),
                    };
                    push("lockout", Event::rejected(None, phone, &lockout, Some(900), now));
                    push("lockout with request", Event::rejected(id.clone(), phone, &lockout, Some(900), now));
                }
                EventKind::Sent => {
                    for message_id in [Some("SM0123456789abcdef".to_owned()), None] {
                        let mut e = base();
                        e.carrier = Some("twilio".into());
                        e.carrier_message_id = message_id;
                        push("sent", e);
                    }
                }
                EventKind::Failed => {
                    let mut e = base();
                    e.error = Some("expired".into());
                    push("expired before sending", e);
                    let mut e = base();
                    e.carrier = Some("webhook".into());
                    e.error = Some(CarrierError::Permanent { reason: "HTTP 400".into() }.to_string());
                    push("carrier failed", e);
                }
                EventKind::Delivered | EventKind::Undelivered => {
                    // From a receipt; the phone comes from the request's record ("" if gone).
                    for record_phone in [phone, ""] {
                        let mut e = Event::new(kind, id.clone(), record_phone, now);
                        e.carrier = Some("vonage".into());
                        e.carrier_message_id = Some("0A0000000123ABCD1".into());
                        e.error = (kind == EventKind::Undelivered).then(|| "expired".to_owned());
                        push("receipt", e);
                    }
                }
                EventKind::Verified | EventKind::Canceled => push("plain", base()),
                EventKind::Expired => {
                    push("at verification", base());
                    for error in ["max_attempts_reached", "not verified in time"] {
                        let mut e = base();
                        e.error = Some(error.into());
                        push(error, e);
                    }
                }
            }
        }
    }
    out
}

fn labelled<T: serde::Serialize>(items: Vec<(String, T)>) -> Vec<(String, Value)> {
    items.into_iter().map(|(label, item)| (label, to_value(&item))).collect()
}

// ---- (a) the document -------------------------------------------------------

#[test]
fn document_is_asyncapi_3_with_the_contract_channels_and_names() {
    let topology = Topology::new("", None);
    assert_eq!(at("/asyncapi"), "3.0.0");
    assert!(at("/info/title").is_string() && at("/info/version").is_string());
    assert!(at("/info/description").as_str().unwrap().contains("broker.prefix"), "the prefix is explained");
    assert_eq!(at("/defaultContentType"), "application/json");

    // The server is the default broker URL's host, AMQP 0-9-1.
    let url = Config::default().broker.url;
    let host = url.rsplit('@').next().unwrap().split('/').next().unwrap();
    assert_eq!(at("/servers/local/host"), host);
    assert_eq!(at("/servers/local/protocol"), "amqp");
    assert_eq!(at("/servers/local/protocolVersion"), "0-9-1");

    assert_eq!(
        keys(at("/channels")),
        set(["requests", "replies", "events", "deliveries", "status", "deadLetters"]),
        "channels"
    );
    let exchange_binding = |channel: &str, exchange: &str| {
        let amqp = at(&format!("/channels/{channel}/bindings/amqp"));
        assert_eq!(amqp["is"], "routingKey", "{channel}");
        assert_eq!(amqp["exchange"]["name"], exchange, "{channel}");
        assert_eq!(amqp["exchange"]["type"], "topic", "{channel}");
        assert_eq!(amqp["exchange"]["durable"], true, "{channel}");
        assert_eq!(amqp["bindingVersion"], "0.3.0", "{channel}");
        assert!(amqp.get("queue").is_none(), "{channel}: a routingKey binding has no queue");
    };
    let queue_binding = |channel: &str, name: Option<&str>| {
        let amqp = at(&format!("/channels/{channel}/bindings/amqp"));
        assert_eq!(amqp["is"], "queue", "{channel}");
        assert_eq!(amqp["queue"].get("name").and_then(Value::as_str), name, "{channel}");
        assert_eq!(amqp["bindingVersion"], "0.3.0", "{channel}");
        assert!(amqp.get("exchange").is_none(), "{channel}: a queue binding has no exchange");
    };

    // Requests: routing key `request` on `otp`, queue `otp.requests`.
    assert_eq!(at("/channels/requests/address"), Topology::REQUEST_KEY);
    assert_eq!(at("/channels/requests/x-otp-queue"), topology.requests.as_str());
    assert_eq!(at("/channels/requests/x-otp-exchange"), topology.exchange.as_str());
    exchange_binding("requests", &topology.exchange);

    // Deliveries (internal): routing key `delivery`, queue `otp.deliveries`.
    assert_eq!(at("/channels/deliveries/address"), Topology::DELIVERY_KEY);
    assert_eq!(at("/channels/deliveries/x-otp-queue"), topology.deliveries.as_str());
    assert_eq!(at("/channels/deliveries/x-otp-internal"), true);
    assert_eq!(at("/channels/deliveries/x-otp-exchange"), topology.internal.as_str());
    exchange_binding("deliveries", &topology.internal);

    // Status (internal): queue `otp.status` bound to the code's status keys.
    assert_eq!(at("/channels/status/address"), topology.status.as_str());
    assert_eq!(at("/channels/status/x-otp-internal"), true);
    assert_eq!(at("/channels/status/x-otp-exchange"), topology.internal.as_str());
    assert_eq!(strings(at("/channels/status/x-otp-binding-keys")), set(Topology::STATUS_KEYS));
    assert!(Topology::STATUS_KEYS.contains(&Topology::RECEIPT_KEY));
    queue_binding("status", Some(&topology.status));
    assert_eq!(keys(at("/channels/status/messages")), set(["statusEvent", "receipt"]));

    // Events: `event.{kind}` with every kind the code has.
    assert_eq!(at("/channels/events/address"), "event.{kind}");
    let kinds: BTreeSet<String> = ALL_KINDS.iter().map(|k| k.as_str().to_owned()).collect();
    assert_eq!(strings(at("/channels/events/parameters/kind/enum")), kinds, "event kinds");
    assert_eq!(strings(at("/components/schemas/EventKind/enum")), kinds, "EventKind schema");
    for kind in ALL_KINDS {
        assert_eq!(kind.routing_key(), format!("event.{}", kind.as_str()));
        assert_eq!(to_value(&kind), kind.as_str(), "serde and as_str agree");
    }
    let status_keys: BTreeSet<String> =
        strings(at("/components/schemas/StatusEvent/allOf/1/properties/status/enum")).into_iter().collect();
    let event_keys: BTreeSet<String> =
        Topology::STATUS_KEYS.iter().filter_map(|k| k.strip_prefix("event.")).map(str::to_owned).collect();
    assert_eq!(status_keys, event_keys, "StatusEvent kinds are the status queue's event keys");
    exchange_binding("events", &topology.exchange);

    // Replies: the producer's `reply_to` queue, no fixed address.
    assert!(at("/channels/replies/address").is_null());
    queue_binding("replies", None);

    // Dead letters: `otp.dlx` → `otp.dead`, with the code's headers.
    assert_eq!(at("/channels/deadLetters/address"), topology.dead.as_str());
    assert_eq!(at("/channels/deadLetters/x-otp-exchange"), topology.dlx.as_str());
    queue_binding("deadLetters", Some(&topology.dead));
    let headers = at("/components/schemas/DeadLetterHeaders/properties");
    for header in [Topology::ERROR_HEADER, Topology::REASON_HEADER] {
        assert!(headers.get(header).is_some(), "dead-letter header {header} documented");
    }
    assert_eq!(
        strings(&headers[Topology::REASON_HEADER]["enum"]),
        set([
            "malformed_json",
            "oversized",
            "malformed_delivery",
            "malformed_event",
            "malformed_receipt",
            "carrier_failed",
            "handler_panicked",
            "unsealed"
        ])
    );

    // Reasons and carriers: the code's sets.
    let reasons: BTreeSet<String> = ALL_REASONS.iter().map(|r| r.as_str().to_owned()).collect();
    assert_eq!(strings(at("/components/schemas/RejectReason/enum")), reasons, "reject reasons");
    for reason in ALL_REASONS {
        assert_eq!(to_value(&reason), reason.as_str(), "serde and as_str agree");
    }
    assert_eq!(strings(at("/components/schemas/OtpReply/properties/status/enum")), set(["accepted", "rejected"]));
    assert_eq!(to_value(&ReplyStatus::Accepted), "accepted");
    assert_eq!(to_value(&ReplyStatus::Rejected), "rejected");
    let carriers_in_doc = strings(at("/components/schemas/Carrier/enum"));
    let unknown = match carriers::build("no-such-carrier", &Config::default()) {
        Err(e @ CarrierConfigError::Unknown(_)) => e.to_string(),
        _ => panic!("an unknown carrier name is refused"),
    };
    let known = unknown.split("(known: ").nth(1).and_then(|s| s.strip_suffix(')')).expect("the known list");
    assert_eq!(carriers_in_doc, known.split(", ").map(str::to_owned).collect(), "carriers");
    for name in &carriers_in_doc {
        let built = carriers::build(name, &Config::default());
        assert!(!matches!(built, Err(CarrierConfigError::Unknown(_))), "{name} is a carrier");
    }
}

#[test]
fn operations_and_messages_are_the_applications_view() {
    let expected = [
        ("sendOtpRequest", "send", "requests"),
        ("receiveOtpReply", "receive", "replies"),
        ("receiveOtpEvents", "receive", "events"),
        ("receiveDeadLetters", "receive", "deadLetters"),
    ];
    assert_eq!(keys(at("/operations")), expected.iter().map(|(name, _, _)| (*name).to_owned()).collect());
    for (name, action, channel) in expected {
        let op = at(&format!("/operations/{name}"));
        assert_eq!(op["action"], action, "{name}");
        assert_eq!(op["channel"]["$ref"], format!("#/channels/{channel}"), "{name}");
        let messages = op["messages"].as_array().unwrap_or_else(|| panic!("{name} lists its messages"));
        assert!(!messages.is_empty(), "{name}");
        for m in messages {
            let r = m["$ref"].as_str().unwrap_or_else(|| panic!("{name}: messages are references"));
            assert!(r.starts_with(&format!("#/channels/{channel}/messages/")), "{name}: {r} is a message of {channel}");
        }
    }
    // Requests: persistent, mandatory; the reply goes to `reply_to`.
    assert_eq!(at("/operations/sendOtpRequest/bindings/amqp/deliveryMode"), 2);
    assert_eq!(at("/operations/sendOtpRequest/bindings/amqp/mandatory"), true);
    assert_eq!(at("/operations/sendOtpRequest/reply/address/location"), "$message.header#/reply_to");
    assert_eq!(at("/operations/sendOtpRequest/reply/channel/$ref"), "#/channels/replies");
    assert_eq!(at("/components/correlationIds/amqpCorrelationId/location"), "$message.header#/correlation_id");

    // Messages: JSON, with a payload schema and AMQP bindings.
    assert_eq!(
        keys(at("/components/messages")),
        set([
            "OtpRequest",
            "OtpReply",
            "OtpEvent",
            "StatusEvent",
            "Receipt",
            "Delivery",
            "DeliveryBatch",
            "DeadLetter"
        ])
    );
    let default_type = at("/defaultContentType");
    for (name, message) in at("/components/messages").as_object().unwrap() {
        assert_eq!(message.get("contentType").unwrap_or(default_type), "application/json", "{name}");
        assert!(message.get("payload").is_some(), "{name} has a payload");
        assert!(message.get("headers").is_some(), "{name} documents its properties/headers");
        assert_eq!(message["bindings"]["amqp"]["bindingVersion"], "0.3.0", "{name}");
        assert!(message["examples"].as_array().is_some_and(|e| !e.is_empty()), "{name} has examples");
    }
    // Each channel's messages are references to components.
    for (channel, value) in at("/channels").as_object().unwrap() {
        for (key, message) in value["messages"].as_object().unwrap_or_else(|| panic!("{channel} has messages")) {
            let r = message["$ref"].as_str().unwrap_or_else(|| panic!("{channel}/{key} is a reference"));
            assert!(r.starts_with("#/components/messages/"), "{channel}/{key}");
        }
    }
}

/// Every `$ref` in `value`, with where it was found.
fn refs<'a>(value: &'a Value, path: &str, out: &mut Vec<(String, &'a str)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if key == "$ref"
                    && let Some(r) = child.as_str()
                {
                    out.push((path.to_owned(), r));
                } else {
                    refs(child, &format!("{path}/{}", key.replace('~', "~0").replace('/', "~1")), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                refs(child, &format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_ref_resolves_inside_the_document_and_every_schema_is_used() {
    let mut found = Vec::new();
    refs(doc(), "", &mut found);
    assert!(found.len() > 50, "the document is made of references ({} found)", found.len());
    let broken: Vec<String> = found
        .iter()
        .filter(|(_, r)| !(r.starts_with("#/") && doc().pointer(&r[1..]).is_some()))
        .map(|(path, r)| format!("{path}: {r}"))
        .collect();
    assert!(broken.is_empty(), "references that do not resolve inside the document:\n{}", broken.join("\n"));

    let targets: BTreeSet<&str> = found.iter().map(|(_, r)| *r).collect();
    for section in ["schemas", "messages", "correlationIds", "securitySchemes"] {
        for name in keys(at(&format!("/components/{section}"))) {
            let target = format!("#/components/{section}/{name}");
            assert!(targets.contains(target.as_str()), "{target} is never referenced");
        }
    }
}

#[test]
fn schemas_are_valid_draft_07_and_every_example_matches() {
    for (name, s) in at("/components/schemas").as_object().unwrap() {
        if let Err(e) = jsonschema::draft7::meta::validate(s) {
            panic!("components.schemas.{name} is not valid draft-07: {e}");
        }
    }
    let mut failures = Vec::new();
    let mut checked = 0;
    for (name, message) in at("/components/messages").as_object().unwrap() {
        let payload = validator(&message["payload"]);
        let headers = validator(&message["headers"]);
        for (i, example) in message["examples"].as_array().unwrap().iter().enumerate() {
            let label = example["name"].as_str().map_or_else(|| i.to_string(), str::to_owned);
            for (part, v) in [("payload", &payload), ("headers", &headers)] {
                if let Some(value) = example.get(part) {
                    checked += 1;
                    let errs = errors(v, value);
                    if !errs.is_empty() {
                        failures.push(format!("{name} example {label} {part}: {}", errs.join("; ")));
                    }
                }
            }
        }
    }
    assert!(checked >= 20, "only {checked} examples");
    assert!(failures.is_empty(), "examples that do not match their schemas:\n{}", failures.join("\n"));
}

// ---- (b) real messages against the schemas ----------------------------------

#[test]
fn events_of_every_kind_match_the_event_schema() {
    let validator = payload("OtpEvent");
    for kind in ALL_KINDS {
        let events = events_of(kind);
        assert!(!events.is_empty(), "{kind:?}");
        for (label, event) in &events {
            assert_eq!(event.status, kind, "{label}");
        }
        assert_all_valid(&format!("event.{}", kind.as_str()), &validator, &labelled(events));
    }
    // The status queue sees the senders' sent/failed events.
    let status = payload("StatusEvent");
    let sender_events: Vec<_> = [EventKind::Sent, EventKind::Failed].into_iter().flat_map(events_of).collect();
    assert_all_valid("status queue events", &status, &labelled(sender_events));
    for (label, event) in labelled(events_of(EventKind::Delivered)) {
        assert!(!status.is_valid(&event), "{label}: only sent/failed reach the status queue");
    }
}

#[test]
fn replies_match_for_acceptance_and_every_rejection_reason() {
    let validator = payload("OtpReply");
    let mut replies = Vec::new();
    for now in times() {
        replies.push(("accepted".to_owned(), Reply::accepted("order-42-login-1", now + Duration::seconds(300))));
        for rejection in rejections() {
            for request_id in [Some("order-42-login-1".to_owned()), None] {
                let reply = Reply {
                    request_id,
                    status: ReplyStatus::Rejected,
                    reason: Some(rejection.reason),
                    error: Some(rejection.detail.clone()),
                    retry_after_secs: has_retry(rejection.reason).then_some(23),
                    expires_at: None,
                };
                replies.push((format!("rejected {} {:?}", rejection.reason.as_str(), rejection.detail), reply));
            }
        }
    }
    let reasons: BTreeSet<_> = replies.iter().filter_map(|(_, r)| r.reason).map(RejectReason::as_str).collect();
    assert_eq!(reasons.len(), ALL_REASONS.len());
    assert_all_valid("replies", &validator, &labelled(replies));
}

#[test]
fn deliveries_and_receipts_match() {
    let templates = Templates::default();
    let mut deliveries = Vec::new();
    for now in times() {
        for phone in PHONES {
            for digits in 4..=10 {
                let length = CodeLength::new(digits).expect("a contract length");
                let code = Code::generate(length, &mut rand::rng());
                let ttl = Duration::seconds(300);
                let phone = Phone::parse(phone).expect("a valid number");
                let delivery = Delivery {
                    delivery_id: uuid::Uuid::new_v4().to_string(),
                    request_id: "order-42-login-1".into(),
                    phone: phone.e164().to_owned(),
                    text: templates.render("login", "en", &code, ttl, "otp-pipeline").expect("the built-in template"),
                    code: code.expose().to_owned(),
                    expires_at: now + ttl,
                    requested_at: now,
                };
                deliveries.push((format!("{digits} digits to {phone}"), delivery));
            }
        }
    }
    // Coalesced under load: the bodies the generator's outbox publishes.
    let batches: Vec<(String, Value)> = deliveries
        .chunks(7)
        .filter(|chunk| chunk.len() >= 2)
        .map(|chunk| {
            let body = encode_deliveries(&chunk.iter().map(|(_, d)| d).collect::<Vec<_>>());
            (format!("{} deliveries from {}", chunk.len(), chunk[0].0), serde_json::from_slice(&body).unwrap())
        })
        .collect();
    assert_all_valid("delivery batches", &payload("DeliveryBatch"), &batches);
    assert_all_valid("deliveries", &payload("Delivery"), &labelled(deliveries));

    let mut receipts = Vec::new();
    for now in times() {
        for (carrier, delivered, error) in
            [("twilio", true, None), ("vonage", false, Some("expired")), ("msg91", false, None)]
        {
            let receipt = ReceiptMessage {
                carrier: carrier.into(),
                carrier_message_id: "SM0123456789abcdef".into(),
                delivered,
                error: error.map(str::to_owned),
                at: now,
            };
            receipts.push((format!("{carrier} delivered={delivered}"), receipt));
        }
    }
    assert_all_valid("receipts", &payload("Receipt"), &labelled(receipts));
}

#[test]
fn requests_as_producers_send_them_match() {
    let validator = payload("OtpRequest");
    let minimal = raw("order-42-login-1", "+14155550123");
    let full = RawRequest {
        template: Some("login".into()),
        locale: Some("en".into()),
        code_length: Some(6),
        ttl_secs: Some(300),
        channel: Some("sms".into()),
        ..minimal.clone()
    };
    let readme = br#"{ "request_id": "order-42-login-1", "phone": "+14155550123",
      "template": "login", "locale": "en", "code_length": 6, "ttl_secs": 300, "channel": "sms" }"#;
    let decoded = RawRequest::decode(readme).expect("the README's example decodes");
    assert_eq!(decoded, full);
    let mut requests = vec![("minimal".to_owned(), minimal), ("full".to_owned(), full)];
    for phone in PHONES {
        for (code_length, ttl_secs) in [(4, 30), (10, 3600)] {
            let r =
                RawRequest { code_length: Some(code_length), ttl_secs: Some(ttl_secs), ..raw(&"x".repeat(128), phone) };
            requests.push((format!("{phone} {code_length} digits {ttl_secs} s"), r));
        }
    }
    for (label, r) in &requests {
        assert!(r.clone().validate(&Limits::default(), &Templates::default()).is_ok(), "{label} is a valid request");
    }
    assert_all_valid("requests", &validator, &labelled(requests));
}

#[test]
fn the_schemas_refuse_what_the_code_never_emits() {
    let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
    let sent = || {
        let mut e = Event::new(EventKind::Sent, Some("r1".into()), PHONES[0], now);
        e.carrier = Some("twilio".into());
        to_value(&e)
    };
    let edit = |mut v: Value, f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        f(v.as_object_mut().unwrap());
        v
    };
    let event = payload("OtpEvent");
    assert!(event.is_valid(&sent()));
    let bad_events = [
        ("unmasked phone", edit(sent(), &|m| drop(m.insert("phone".into(), json!(PHONES[0]))))),
        ("sent without a carrier", edit(sent(), &|m| drop(m.remove("carrier")))),
        ("unknown carrier", edit(sent(), &|m| drop(m.insert("carrier".into(), json!("pigeon"))))),
        ("unknown field", edit(sent(), &|m| drop(m.insert("code".into(), json!("123456"))))),
        ("not RFC 3339", edit(sent(), &|m| drop(m.insert("at".into(), json!("2023-11-14 22:13:20"))))),
        ("unknown kind", edit(sent(), &|m| drop(m.insert("status".into(), json!("bounced"))))),
        ("reason on a sent event", edit(sent(), &|m| drop(m.insert("reason".into(), json!("rate_limited"))))),
        ("null request_id on a sent event", edit(sent(), &|m| drop(m.insert("request_id".into(), Value::Null)))),
    ];
    for (label, value) in bad_events {
        assert!(!event.is_valid(&value), "event {label} is refused: {value}");
    }
    let limited = Rejection { reason: RejectReason::RateLimited, detail: "resend_cooldown".into() };
    let refused = Event::rejected(Some("r1".into()), PHONES[0], &limited, None, now);
    assert!(!event.is_valid(&to_value(&refused)), "rate_limited without retry_after_secs is refused");

    let reply = payload("OtpReply");
    let accepted = Reply::accepted("r1", now);
    assert!(reply.is_valid(&to_value(&accepted)));
    let bad_replies = [
        ("accepted without expires_at", Reply { expires_at: None, ..accepted.clone() }),
        ("accepted with a reason", Reply { reason: Some(RejectReason::InvalidPhone), ..accepted.clone() }),
        ("accepted without request_id", Reply { request_id: None, ..accepted.clone() }),
        (
            "rejected without reason",
            Reply { status: ReplyStatus::Rejected, expires_at: None, error: Some("x".into()), ..accepted.clone() },
        ),
    ];
    for (label, value) in bad_replies {
        assert!(!reply.is_valid(&to_value(&value)), "reply {label} is refused");
    }

    let delivery = payload("Delivery");
    let good = json!({
        "delivery_id": "1b4e28ba-2fa1-41d2-883f-0016d3cca427", "request_id": "r1", "phone": "+14155550123",
        "text": "code 123456", "code": "123456", "expires_at": "2025-01-01T12:05:00Z",
        "requested_at": "2025-01-01T12:00:00Z"
    });
    assert!(delivery.is_valid(&good));
    for (field, bad) in [("code", json!("123")), ("phone", json!("+1415*****23")), ("delivery_id", json!("d1"))] {
        let value = edit(good.clone(), &|m| drop(m.insert(field.into(), bad.clone())));
        assert!(!delivery.is_valid(&value), "delivery with {field} {bad} is refused");
    }
}

// ---- (c) the request schema against the request decoder --------------------

/// The code's verdict on a request body: decoded and validated (default
/// limits and templates), before any rate limit or geo rule.
fn code_verdict(body: &Value) -> Result<(), String> {
    let bytes = serde_json::to_vec(body).expect("serializes");
    let request = RawRequest::decode(&bytes).map_err(|e| format!("decode: {e}"))?;
    request.validate(&Limits::default(), &Templates::default()).map(|_| ()).map_err(|e| format!("validate: {e}"))
}

/// A request body: the minimal valid one with `changes` applied (`None` removes the field).
fn body(changes: &[(&str, Option<Value>)]) -> Value {
    let mut value = json!({"request_id": "order-42-login-1", "phone": "+14155550123"});
    let map = value.as_object_mut().unwrap();
    for (field, change) in changes {
        match change {
            Some(v) => map.insert((*field).to_owned(), v.clone()),
            None => map.remove(*field),
        };
    }
    value
}

#[test]
fn the_request_schema_agrees_with_the_decoder() {
    let s = |v: &str| Some(json!(v));
    let n = |v: i64| Some(json!(v));
    let cases: Vec<(&str, Value)> = vec![
        // Accepted by both.
        ("minimal", body(&[])),
        (
            "full",
            body(&[
                ("template", s("login")),
                ("locale", s("en")),
                ("code_length", n(6)),
                ("ttl_secs", n(300)),
                ("channel", s("sms")),
            ]),
        ),
        (
            "explicit nulls",
            body(&[
                ("template", Some(Value::Null)),
                ("locale", Some(Value::Null)),
                ("code_length", Some(Value::Null)),
                ("ttl_secs", Some(Value::Null)),
                ("channel", Some(Value::Null)),
            ]),
        ),
        ("request_id of 128", body(&[("request_id", s(&"x".repeat(128)))])),
        ("request_id of one space", body(&[("request_id", s(" "))])),
        ("request_id with punctuation", body(&[("request_id", s("a b~!{}\"\\"))])),
        ("code_length 4", body(&[("code_length", n(4))])),
        ("code_length 10", body(&[("code_length", n(10))])),
        ("ttl 30", body(&[("ttl_secs", n(30))])),
        ("ttl 3600", body(&[("ttl_secs", n(3600))])),
        ("UK mobile", body(&[("phone", s("+447911123456"))])),
        ("German 13 digits", body(&[("phone", s("+4915123456789"))])),
        // Refused by both.
        ("missing phone", body(&[("phone", None)])),
        ("missing request_id", body(&[("request_id", None)])),
        ("empty object", json!({})),
        ("code_length 3", body(&[("code_length", n(3))])),
        ("code_length 11", body(&[("code_length", n(11))])),
        ("code_length 300", body(&[("code_length", n(300))])),
        ("code_length -1", body(&[("code_length", n(-1))])),
        ("code_length 6.5", body(&[("code_length", Some(json!(6.5)))])),
        ("code_length as a string", body(&[("code_length", s("6"))])),
        ("ttl 29", body(&[("ttl_secs", n(29))])),
        ("ttl 3601", body(&[("ttl_secs", n(3601))])),
        ("ttl 0", body(&[("ttl_secs", n(0))])),
        ("ttl negative", body(&[("ttl_secs", n(-300))])),
        ("ttl over u32", body(&[("ttl_secs", n(1 << 33))])),
        ("empty request_id", body(&[("request_id", s(""))])),
        ("request_id of 129", body(&[("request_id", s(&"x".repeat(129)))])),
        ("non-ASCII request_id", body(&[("request_id", s("é"))])),
        ("request_id with a newline", body(&[("request_id", s("a\nb"))])),
        ("request_id with DEL", body(&[("request_id", s("a\u{7f}b"))])),
        ("request_id as a number", body(&[("request_id", n(42))])),
        ("request_id null", body(&[("request_id", Some(Value::Null))])),
        ("phone without +", body(&[("phone", s("14155550123"))])),
        ("phone with spaces", body(&[("phone", s("+1 415 555 0123"))])),
        ("phone too short", body(&[("phone", s("+1415555"))])),
        ("phone too long", body(&[("phone", s("+1234567890123456"))])),
        ("phone starting +0", body(&[("phone", s("+0123456789"))])),
        ("phone with letters", body(&[("phone", s("+1415abc0123"))])),
        ("phone as a number", body(&[("phone", n(14155550123))])),
        ("phone null", body(&[("phone", Some(Value::Null))])),
        ("channel voice", body(&[("channel", s("voice"))])),
        ("channel SMS", body(&[("channel", s("SMS"))])),
        ("channel as a number", body(&[("channel", n(1))])),
        ("template as a number", body(&[("template", n(5))])),
        ("locale as an array", body(&[("locale", Some(json!(["en"])))])),
        ("unknown field ttl", body(&[("ttl", n(300))])),
        ("unknown field null", body(&[("foo", Some(Value::Null))])),
        ("an array", json!([1, 2])),
        ("a string", json!("order-42")),
        ("a number", json!(5)),
        ("null", Value::Null),
        ("a boolean", json!(true)),
    ];
    let validator = payload("OtpRequest");
    let mut disagreements = Vec::new();
    let (mut accepted, mut refused) = (0, 0);
    for (label, value) in &cases {
        let code = code_verdict(value);
        let schema_errors = errors(&validator, value);
        match (&code, schema_errors.is_empty()) {
            (Ok(()), true) => accepted += 1,
            (Err(_), false) => refused += 1,
            (Ok(()), false) => disagreements.push(format!(
                "{label}: the code accepts {value}, the schema refuses it: {}",
                schema_errors.join("; ")
            )),
            (Err(e), true) => {
                disagreements.push(format!("{label}: the code refuses {value} ({e}), the schema accepts it"))
            }
        }
    }
    assert!(disagreements.is_empty(), "schema and decoder disagree:\n{}", disagreements.join("\n"));
    assert!(accepted >= 10 && refused >= 30, "{accepted} accepted, {refused} refused");

    // What JSON Schema cannot know: documented in the schema's descriptions.
    let known = [
        // libphonenumber's metadata: well-formed but unassigned, or a trunk prefix.
        ("unassigned number", body(&[("phone", s("+10005550123"))])),
        ("trunk prefix after the country code", body(&[("phone", s("+49030000"))])),
        // Templates are configuration.
        ("unknown template", body(&[("template", s("nope"))])),
        ("unknown locale", body(&[("locale", s("xx"))])),
        // serde reads integers only; JSON Schema's `integer` includes 6.0.
        ("code_length 6.0", body(&[("code_length", Some(json!(6.0)))])),
        ("ttl 300.0", body(&[("ttl_secs", Some(json!(300.0)))])),
    ];
    for (label, value) in known {
        assert!(code_verdict(&value).is_err(), "{label}: the code refuses {value}");
        assert!(validator.is_valid(&value), "{label}: the schema cannot tell, and accepts {value}");
    }
}

#[test]
fn request_ids_and_phone_forms_match_their_schemas() {
    // Every one-character request_id (all of ASCII and a few others): the
    // schema and the validator agree on which are printable.
    let request_id = schema("RequestId");
    let limits = Limits::default();
    let templates = Templates::default();
    for c in (0u32..=0x80).chain([0xa0, 0xe9, 0x2028, 0x1f600]).filter_map(char::from_u32) {
        let id = format!("a{c}");
        let code = raw(&id, PHONES[0]).validate(&limits, &templates).is_ok();
        assert_eq!(request_id.is_valid(&json!(id)), code, "request_id {id:?}: the code says {code}");
    }

    // Masks of any digit count (rejected events mask whatever was sent).
    let masked = schema("MaskedPhone");
    let e164 = schema("E164Phone");
    let digits = "4155550123456789012345678";
    for n in 0..=digits.len() {
        for raw_phone in [format!("+{}", &digits[..n]), digits[..n].to_owned(), format!("00 {}", &digits[..n])] {
            let mask = otp_pipeline::domain::phone::mask(&raw_phone);
            assert!(masked.is_valid(&json!(mask)), "mask of {raw_phone:?}: {mask}");
            if Phone::parse(&raw_phone).is_ok() {
                assert!(e164.is_valid(&json!(raw_phone)), "{raw_phone} is E.164");
            }
        }
    }
    for phone in PHONES {
        let parsed = Phone::parse(phone).expect("a valid number");
        assert!(e164.is_valid(&json!(parsed.e164())), "{phone}");
        assert!(masked.is_valid(&json!(parsed.masked())), "{phone}");
        assert!(!masked.is_valid(&json!(phone)), "{phone} is not masked");
        assert!(!e164.is_valid(&json!(parsed.masked())), "a mask is not E.164");
    }
}
