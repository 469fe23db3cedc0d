//! The generator's decisions with the in-memory outbox (no broker): what goes
//! out for each kind of request, copies, outbox failures, verification,
//! receipts and sharding.

use super::*;
use crate::domain::{Code, Event, EventKind, Limits, ManualClock, Phone, ReceiptMessage, Templates};
use crate::domain::{DigestKey, KeyRing, Reply, ReplyStatus, VerifyOutcome};
use crate::store::WriterSettings;

struct Fixture {
    generator: Arc<Generator>,
    outbox: Arc<MemoryOutbox>,
    _dir: tempfile::TempDir,
}

fn fixture_with(topology: Topology) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut guards = Policies::default();
    guards.send.resend_cooldown_secs = 0;
    guards.send.max_per_window = 0;
    let policy = Policy {
        limits: Limits::default(),
        templates: Templates::default(),
        max_attempts: 3,
        app_name: "Acme".into(),
        guards: guards.clone(),
    };
    let keys = KeyRing::new(DigestKey::new(vec![5; 32]).unwrap(), vec![]);
    let store = Store::open(dir.path()).unwrap();
    let settings =
        WriterSettings { keys, policies: guards, max_attempts: 3, queue: 64, commit_window: std::time::Duration::ZERO };
    let writer = Writer::start(store, settings).unwrap();
    let outbox = MemoryOutbox::new();
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new());
    let generator = Arc::new(Generator::new(writer, policy, outbox.clone(), topology, clock));
    Fixture { generator, outbox, _dir: dir }
}

fn fixture() -> Fixture {
    fixture_with(Topology::new("t.", None))
}

fn message(body: serde_json::Value) -> Inbound {
    Inbound {
        body: serde_json::to_vec(&body).unwrap(),
        routing_key: Topology::REQUEST_KEY.into(),
        reply_to: Some("replies".into()),
        correlation_id: Some("c1".into()),
        redelivered: false,
        owner: None,
    }
}

fn request(id: &str) -> Inbound {
    message(serde_json::json!({ "request_id": id, "phone": "+14155550123" }))
}

fn replies(outbox: &MemoryOutbox) -> Vec<Reply> {
    outbox.sent().into_iter().filter_map(|s| if let Sent::Reply(_, r) = s { Some(r) } else { None }).collect()
}

fn kinds(events: &[Event]) -> Vec<EventKind> {
    events.iter().map(|e| e.status).collect()
}

#[tokio::test]
async fn a_request_queues_one_delivery_announces_it_and_replies() {
    let f = fixture();
    assert_eq!(f.generator.process_request(request("r1")).await, Disposition::Ack);
    let deliveries = f.outbox.deliveries();
    assert_eq!(deliveries.len(), 1);
    let code = Code::parse(&deliveries[0].code).unwrap();
    assert!(deliveries[0].text.contains(code.expose()), "the SMS carries the code");
    assert_eq!(kinds(&f.outbox.events()), [EventKind::Accepted]);
    assert_eq!(replies(&f.outbox)[0].status, ReplyStatus::Accepted);
    let record = f.generator.request("r1").unwrap().unwrap();
    assert!(record.delivery_queued || wait_queued(&f.generator, "r1").await);
}

/// The `queued` note is applied by the writer shortly after the ack.
async fn wait_queued(generator: &Generator, id: &str) -> bool {
    for _ in 0..100 {
        if generator.request(id).unwrap().is_some_and(|r| r.delivery_queued) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_copies_queue_one_delivery() {
    let f = fixture();
    let copies: Vec<_> = (0..12)
        .map(|_| {
            let generator = f.generator.clone();
            tokio::spawn(async move { generator.process_request(request("same")).await })
        })
        .collect();
    for copy in copies {
        assert_eq!(copy.await.unwrap(), Disposition::Ack);
    }
    assert_eq!(f.outbox.deliveries().len(), 1, "one code, one SMS");
    assert_eq!(replies(&f.outbox).len(), 12, "every copy is answered accepted");
    assert!(replies(&f.outbox).iter().all(|r| r.status == ReplyStatus::Accepted));
}

#[tokio::test]
async fn a_delivery_that_cannot_be_queued_is_retried_with_the_same_code() {
    let f = fixture();
    f.outbox.fail(true);
    assert!(matches!(f.generator.process_request(request("r1")).await, Disposition::Retry { .. }));
    assert!(f.outbox.deliveries().is_empty());
    f.outbox.fail(false);
    let mut again = request("r1");
    again.redelivered = true;
    assert_eq!(f.generator.process_request(again).await, Disposition::Ack);
    let deliveries = f.outbox.deliveries();
    assert_eq!(deliveries.len(), 1);
    // A copy now is a duplicate: nothing more goes out but the answer.
    assert_eq!(f.generator.process_request(request("r1")).await, Disposition::Ack);
    assert!(wait_queued(&f.generator, "r1").await);
    assert_eq!(f.generator.process_request(request("r1")).await, Disposition::Ack);
    assert_eq!(f.outbox.deliveries().len(), 1);
    let phone = Phone::parse("+14155550123").unwrap();
    let code = Code::parse(&deliveries[0].code).unwrap();
    assert!(matches!(f.generator.verify(&phone, &code).await.unwrap(), VerifyOutcome::Approved { .. }));
}

#[tokio::test]
async fn invalid_and_malformed_requests_send_nothing_to_carriers() {
    let f = fixture();
    let invalid = message(serde_json::json!({ "request_id": "bad", "phone": "12" }));
    assert_eq!(f.generator.process_request(invalid).await, Disposition::Ack);
    assert_eq!(kinds(&f.outbox.events()), [EventKind::Rejected]);
    assert_eq!(replies(&f.outbox)[0].status, ReplyStatus::Rejected);
    let mut malformed = request("x");
    malformed.body = b"{not json".to_vec();
    assert!(matches!(
        f.generator.process_request(malformed).await,
        Disposition::DeadLetter { reason: "malformed_json", .. }
    ));
    assert!(f.outbox.deliveries().is_empty());
}

#[tokio::test]
async fn a_verified_code_is_announced_and_a_receipt_becomes_an_event() {
    let f = fixture();
    f.generator.process_request(request("r1")).await;
    let delivery = f.outbox.deliveries().remove(0);
    let sent = Event {
        carrier: Some("twilio".into()),
        carrier_message_id: Some("SM1".into()),
        ..Event::new(EventKind::Sent, Some("r1".into()), &delivery.phone, f.generator.now())
    };
    let status =
        Inbound { body: serde_json::to_vec(&sent).unwrap(), routing_key: "event.sent".into(), ..request("r1") };
    assert_eq!(f.generator.process_status(status).await, Disposition::Ack);
    let receipt = ReceiptMessage {
        carrier: "twilio".into(),
        carrier_message_id: "SM1".into(),
        delivered: true,
        error: None,
        at: f.generator.now(),
    };
    let body = serde_json::to_vec(&receipt).unwrap();
    let receipt = Inbound { body, routing_key: Topology::RECEIPT_KEY.into(), ..request("r1") };
    assert_eq!(f.generator.process_status(receipt).await, Disposition::Ack);
    assert_eq!(f.generator.request("r1").unwrap().unwrap().status, crate::domain::RequestStatus::Delivered);
    let phone = Phone::parse(&delivery.phone).unwrap();
    let code = Code::parse(&delivery.code).unwrap();
    assert!(matches!(f.generator.verify(&phone, &code).await.unwrap(), VerifyOutcome::Approved { .. }));
    let announced = || kinds(&f.outbox.events()).contains(&EventKind::Verified);
    for _ in 0..100 {
        if announced() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(kinds(&f.outbox.events()), [EventKind::Accepted, EventKind::Delivered, EventKind::Verified]);
}

#[tokio::test]
async fn a_shard_forwards_what_it_does_not_own_and_issues_what_it_does() {
    let phone = "+14155550123";
    let owner = crate::domain::sharding::shard_of(phone, 2);
    let other = 1 - owner;
    let f = fixture_with(Topology::new("t.", None).sharded(Some(other), 2));
    assert_eq!(f.generator.process_request(request("r1")).await, Disposition::Ack);
    assert_eq!(f.outbox.sent(), [Sent::Forward(crate::domain::sharding::request_key(owner))]);
    let mut own = request("r1");
    own.routing_key = crate::domain::sharding::request_key(other);
    assert_eq!(f.generator.process_request(own).await, Disposition::Ack);
    assert_eq!(f.outbox.deliveries().len(), 1, "sent to this shard's key: issued here");
}
