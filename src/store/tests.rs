//! The store's rules through its writer, on a real sled in a temp dir:
//! idempotency under concurrent copies and restarts, verification, status,
//! cancel, sweep; and a property test over random interleavings.

use super::*;
use crate::domain::limits::Policies;
use crate::domain::{Code, DigestKey, EventKind, KeyRing, Limits, RawRequest, Templates, ValidRequest, VerifyOutcome};
use proptest::prelude::*;
use std::collections::HashMap;
use time::{Duration, OffsetDateTime};

/// Policies with the send limits off, for tests of other rules.
fn open_policies() -> Policies {
    let mut p = Policies::default();
    p.send.resend_cooldown_secs = 0;
    p.send.max_per_window = 0;
    p.pumping.prefix_digits = 0;
    p
}

fn keys() -> KeyRing {
    KeyRing::new(DigestKey::new(vec![9; 32]).unwrap(), vec![])
}

fn settings(keys: KeyRing) -> WriterSettings {
    let commit_window = std::time::Duration::ZERO;
    WriterSettings { keys, policies: open_policies(), max_attempts: 5, queue: 64, commit_window }
}

fn start(dir: &std::path::Path, keys: KeyRing) -> Writer {
    Writer::start(Store::open(dir).unwrap(), settings(keys)).unwrap()
}

/// Opens the store again once the previous writer let go of sled's lock.
async fn reopen_with(dir: &std::path::Path, keys: KeyRing) -> Writer {
    for _ in 0..200 {
        if let Ok(store) = Store::open(dir) {
            return Writer::start(store, settings(keys)).unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the store did not reopen");
}

fn setup() -> (tempfile::TempDir, Writer) {
    let dir = tempfile::tempdir().unwrap();
    let writer = start(dir.path(), keys());
    (dir, writer)
}

fn request_to(id: &str, phone: &str) -> ValidRequest {
    RawRequest { request_id: id.into(), phone: phone.into(), ..Default::default() }
        .validate(&Limits::default(), &Templates::default())
        .unwrap()
}

fn request(id: &str) -> ValidRequest {
    request_to(id, "+14155550123")
}

async fn issue(w: &Writer, req: &ValidRequest, now: OffsetDateTime) -> Issued {
    match w.issue(req.clone(), now).await.unwrap() {
        IssueOutcome::Issued(issued) => issued,
        other => panic!("expected a code, got {other:?}"),
    }
}

async fn verify(w: &Writer, req: &ValidRequest, code: &Code, now: OffsetDateTime) -> &'static str {
    w.verify(&req.phone, code, now).await.unwrap().outcome.label()
}

fn update(id: &str, kind: EventKind, carrier: Option<&str>, message_id: Option<&str>) -> StatusUpdate {
    StatusUpdate {
        request_id: id.into(),
        kind,
        carrier: carrier.map(str::to_owned),
        carrier_message_id: message_id.map(str::to_owned),
        error: None,
        at: OffsetDateTime::now_utc(),
    }
}

#[tokio::test]
async fn a_queued_request_is_a_duplicate_and_keeps_its_code() {
    let (_d, w) = setup();
    let now = OffsetDateTime::now_utc();
    let req = request("r1");
    let issued = issue(&w, &req, now).await;
    w.queued("r1");
    assert!(matches!(w.issue(req.clone(), now).await.unwrap(), IssueOutcome::Duplicate(_)));
    assert_eq!(verify(&w, &req, &issued.code, now).await, "approved");
    assert_eq!(w.store().request("r1").unwrap().unwrap().status, RequestStatus::Verified);
}

#[tokio::test]
async fn concurrent_copies_wait_for_their_twin_and_never_issue() {
    let (_d, w) = setup();
    let now = OffsetDateTime::now_utc();
    let req = request("r1");
    let first = issue(&w, &req, now).await;
    // Ten copies arrive while the first is in flight (its delivery not yet confirmed).
    let copies: Vec<_> = (0..10)
        .map(|_| {
            tokio::spawn({
                let (w, req) = (w.clone(), req.clone());
                async move { w.issue(req, now).await.unwrap() }
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(copies.iter().all(|c| !c.is_finished()), "copies wait while their twin is in flight");
    w.queued("r1");
    for copy in copies {
        assert!(matches!(copy.await.unwrap(), IssueOutcome::Duplicate(_)));
    }
    assert_eq!(verify(&w, &req, &first.code, now).await, "approved");
}

#[tokio::test]
async fn a_copy_of_a_twin_that_gave_up_tries_again_and_gets_the_same_code() {
    let (_d, w) = setup();
    let now = OffsetDateTime::now_utc();
    let req = request("r1");
    let first = issue(&w, &req, now).await;
    let copy = tokio::spawn({
        let (w, req) = (w.clone(), req.clone());
        async move { w.issue(req, now).await.unwrap() }
    });
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    w.release("r1");
    assert_eq!(copy.await.unwrap(), IssueOutcome::InProgress);
    // Retried, it re-issues from the stored seed: the same code.
    let again = issue(&w, &req, now).await;
    assert!(again.reissued);
    assert_eq!(again.code, first.code);
}

#[tokio::test]
async fn after_a_restart_an_unqueued_request_gets_the_same_code() {
    let dir = tempfile::tempdir().unwrap();
    let now = OffsetDateTime::now_utc();
    let req = request("r1");
    let first = {
        let w = start(dir.path(), keys());
        let issued = issue(&w, &req, now).await;
        w.flush().await.unwrap();
        issued
    };
    let w = reopen(dir.path()).await;
    let again = issue(&w, &req, now).await;
    assert!(again.reissued, "found issued but never queued");
    assert_eq!(again.code, first.code);
    w.queued("r1");
    assert!(matches!(w.issue(req.clone(), now).await.unwrap(), IssueOutcome::Duplicate(_)));
}

async fn reopen(dir: &std::path::Path) -> Writer {
    reopen_with(dir, keys()).await
}

#[tokio::test]
async fn events_of_unknown_requests_index_nothing() {
    let (_d, w) = setup();
    let applied = w.apply_status(update("elsewhere", EventKind::Sent, Some("twilio"), Some("SM1"))).await.unwrap();
    assert_eq!(applied, StatusApplied::default());
    assert_eq!(w.store().request_for_message("twilio", "SM1").unwrap(), None);
    assert!(w.store().is_empty());
}

#[tokio::test]
async fn a_reused_id_with_other_parameters_conflicts() {
    let (_d, w) = setup();
    let now = OffsetDateTime::now_utc();
    issue(&w, &request("r1"), now).await;
    let other = request_to("r1", "+447911123456");
    assert_eq!(w.issue(other, now).await.unwrap(), IssueOutcome::Conflict);
}

#[tokio::test]
async fn a_newer_code_replaces_the_older_one() {
    let (_d, w) = setup();
    let now = OffsetDateTime::now_utc();
    let (a, b) = (request("a"), request("b"));
    let old = issue(&w, &a, now).await;
    let new = issue(&w, &b, now).await;
    if old.code != new.code {
        assert_eq!(verify(&w, &a, &old.code, now).await, "invalid_code");
    }
    assert_eq!(w.store().request("a").unwrap().unwrap().status, RequestStatus::Expired);
    assert_eq!(verify(&w, &b, &new.code, now).await, "approved");
    assert_eq!(verify(&w, &b, &new.code, now).await, "not_found");
}

#[tokio::test]
async fn expired_codes_answer_expired_once_then_not_found() {
    let (_d, w) = setup();
    let now = OffsetDateTime::now_utc();
    let req = request("r1");
    let issued = issue(&w, &req, now).await;
    let later = now + Duration::minutes(6);
    assert_eq!(verify(&w, &req, &issued.code, later).await, "expired");
    assert_eq!(w.store().request("r1").unwrap().unwrap().status, RequestStatus::Expired);
    assert_eq!(verify(&w, &req, &issued.code, later).await, "not_found");
}

#[tokio::test]
async fn sender_events_move_the_status_forward_only() {
    let (_d, w) = setup();
    let now = OffsetDateTime::now_utc();
    issue(&w, &request("r1"), now).await;
    assert!(w.apply_status(update("r1", EventKind::Sent, Some("webhook"), Some("m1"))).await.unwrap().applied);
    assert!(w.apply_status(update("r1", EventKind::Delivered, None, None)).await.unwrap().applied);
    let late = w.apply_status(update("r1", EventKind::Sent, Some("webhook"), None)).await.unwrap();
    assert_eq!(late, StatusApplied { phone: Some("+14155550123".into()), applied: false });
    let r = w.store().request("r1").unwrap().unwrap();
    assert_eq!(
        (r.status, r.carrier.as_deref(), r.carrier_message_id.as_deref()),
        (RequestStatus::Delivered, Some("webhook"), Some("m1"))
    );
    assert_eq!(w.store().request_for_message("webhook", "m1").unwrap().as_deref(), Some("r1"));
    assert_eq!(w.store().request_for_message("twilio", "m1").unwrap(), None);
}

#[tokio::test]
async fn the_carrier_is_kept_when_sent_arrives_after_verification() {
    let (_d, w) = setup();
    let now = OffsetDateTime::now_utc();
    let req = request("r1");
    let issued = issue(&w, &req, now).await;
    let verified = w.verify(&req.phone, &issued.code, now).await.unwrap();
    assert_eq!((verified.outcome.label(), verified.carrier), ("approved", None));
    let applied = w.apply_status(update("r1", EventKind::Sent, Some("twilio"), Some("SM1"))).await.unwrap();
    assert!(!applied.applied, "verified stays verified");
    let r = w.store().request("r1").unwrap().unwrap();
    assert_eq!(
        (r.status, r.carrier.as_deref(), r.carrier_message_id.as_deref()),
        (RequestStatus::Verified, Some("twilio"), Some("SM1"))
    );
}

#[tokio::test]
async fn an_approval_names_the_carrier_that_delivered_the_code() {
    let (_d, w) = setup();
    let now = OffsetDateTime::now_utc();
    let req = request("r1");
    let issued = issue(&w, &req, now).await;
    w.apply_status(update("r1", EventKind::Sent, Some("vonage"), Some("V1"))).await.unwrap();
    let verified = w.verify(&req.phone, &issued.code, now).await.unwrap();
    assert_eq!(verified.carrier.as_deref(), Some("vonage"));
}

#[tokio::test]
async fn a_scoped_application_sees_and_verifies_only_its_own_codes() {
    let (_d, w) = setup();
    let now = OffsetDateTime::now_utc();
    let req = ValidRequest { owner: Some("billing".into()), ..request("r1") };
    let issued = issue(&w, &req, now).await;
    assert_eq!(w.store().request("r1").unwrap().unwrap().owner.as_deref(), Some("billing"));
    let as_shop = w.verify_as(&req.phone, &issued.code, Some("shop"), now).await.unwrap();
    assert_eq!((as_shop.outcome.label(), as_shop.changed), ("not_found", false), "no attempt counted");
    let wrong = Code::parse("000000").unwrap();
    let wrong = if wrong == issued.code { Code::parse("111111").unwrap() } else { wrong };
    let as_billing = w.verify_as(&req.phone, &wrong, Some("billing"), now).await.unwrap();
    assert_eq!(as_billing.outcome, VerifyOutcome::Invalid { attempts_left: 4 });
    let again = ValidRequest { owner: Some("shop".into()), ..request("r1") };
    assert!(matches!(w.issue(again, now).await.unwrap(), IssueOutcome::Conflict), "another app's request id");
    assert_eq!(verify(&w, &req, &issued.code, now).await, "approved", "unscoped callers see every code");
}

#[tokio::test]
async fn codes_issued_before_a_key_rotation_still_verify() {
    let dir = tempfile::tempdir().unwrap();
    let now = OffsetDateTime::now_utc();
    let old = keys();
    let (req, req2) = (request_to("r1", "+14155550123"), request_to("r2", "+14155550124"));
    let (c1, c2) = {
        let w = start(dir.path(), old.clone());
        let c = (issue(&w, &req, now).await.code, issue(&w, &req2, now).await.code);
        w.flush().await.unwrap();
        c
    };
    let rotated = KeyRing::new(DigestKey::new(vec![7; 32]).unwrap(), vec![old.current().clone()]);
    let w = reopen_with(dir.path(), rotated).await;
    assert_eq!(verify(&w, &req, &c1, now).await, "approved");
    drop(w);
    // Once the old key is dropped, its codes no longer verify.
    let dropped = KeyRing::new(DigestKey::new(vec![7; 32]).unwrap(), vec![]);
    let w = reopen_with(dir.path(), dropped).await;
    assert_eq!(verify(&w, &req2, &c2, now).await, "invalid_code");
}

#[tokio::test]
async fn a_canceled_code_no_longer_verifies() {
    let (_d, w) = setup();
    let now = OffsetDateTime::now_utc();
    let req = request("r1");
    let issued = issue(&w, &req, now).await;
    assert!(matches!(w.cancel("r1", now).await.unwrap(), CancelOutcome::Canceled(_)));
    assert_eq!(verify(&w, &req, &issued.code, now).await, "not_found");
    assert_eq!(w.cancel("r1", now).await.unwrap(), CancelOutcome::AlreadyFinal(RequestStatus::Canceled));
    assert_eq!(w.cancel("nope", now).await.unwrap(), CancelOutcome::NotFound);
    // A newer code for the number is not touched by canceling an older request.
    let (a, b) = (request("a"), request("b"));
    issue(&w, &a, now).await;
    let newer = issue(&w, &b, now).await;
    assert!(matches!(w.cancel("a", now).await.unwrap(), CancelOutcome::AlreadyFinal(RequestStatus::Expired)));
    assert_eq!(verify(&w, &b, &newer.code, now).await, "approved");
}

#[tokio::test]
async fn the_sweeper_returns_the_store_to_its_baseline() {
    let (_d, w) = setup();
    let now = OffsetDateTime::now_utc();
    assert!(w.store().is_empty());
    for i in 0..20 {
        let req = request_to(&format!("r{i}"), &format!("+1415555{:04}", 1000 + i));
        issue(&w, &req, now).await;
        let message_id = format!("SM{i}");
        w.apply_status(update(&req.request_id, EventKind::Sent, Some("twilio"), Some(&message_id))).await.unwrap();
    }
    assert_eq!(w.store().len(), 60 + 21, "codes, requests, message ids; 20 send histories and 1 prefix");
    // Before expiry only what limits nothing goes (with no send limits, the send histories).
    let report = w.sweep(now, Duration::hours(24)).await.unwrap();
    assert_eq!(report, SweepReport { limits: 20, ..SweepReport::default() });
    let later = now + Duration::minutes(6);
    let report = w.sweep(later, Duration::hours(24)).await.unwrap();
    assert_eq!(report.expired.len(), 20, "expired codes are removed and their requests expire");
    assert_eq!(w.store().request("r0").unwrap().unwrap().status, RequestStatus::Expired);
    assert_eq!(w.store().len(), 40 + 1, "request records stay for the retention period");
    let day_later = later + Duration::hours(24);
    let report = w.sweep(day_later, Duration::hours(24)).await.unwrap();
    assert_eq!((report.requests, report.message_ids, report.limits), (20, 20, 1));
    assert!(w.store().is_empty(), "back to the baseline");
}

#[tokio::test]
async fn a_copy_after_the_record_was_swept_is_a_new_request() {
    let (_d, w) = setup();
    let now = OffsetDateTime::now_utc();
    let req = request("r1");
    let first = issue(&w, &req, now).await;
    w.queued("r1");
    // The first sweep expires the code, the one a retention later removes the record.
    w.sweep(now + Duration::hours(1), Duration::hours(24)).await.unwrap();
    let day_later = now + Duration::hours(26);
    w.sweep(day_later, Duration::hours(24)).await.unwrap();
    assert_eq!(w.store().request("r1").unwrap(), None, "forgotten after retention");
    // The old code died long ago (ttl ≤ 1 h < retention); a new one is issued.
    let again = issue(&w, &req, day_later).await;
    assert!(!again.reissued);
    assert_eq!(verify(&w, &req, &first.code, day_later).await == "approved", again.code == first.code);
}

#[tokio::test]
async fn nothing_plaintext_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let now = OffsetDateTime::now_utc();
    let code = {
        let w = start(dir.path(), keys());
        let issued = issue(&w, &request("r1"), now).await;
        w.flush().await.unwrap();
        issued.code
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let needle = format!("\"{}\"", code.expose());
    let found = walk(dir.path()).iter().any(|f| {
        let bytes = std::fs::read(f).unwrap();
        bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
    });
    assert!(!found, "the plaintext code is in the sled files");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

/// One step of a random history against the writer.
#[derive(Debug, Clone)]
enum Step {
    /// `copies` copies of request `id` arrive at once; the first to get a code
    /// queues its delivery (or gives up, if `give_up`).
    Copies { id: u8, copies: u8, give_up: bool },
    /// A status event for request `id`.
    Sent { id: u8 },
    /// Verification of request `id`'s code: right or wrong, `tries` at once.
    Verify { id: u8, right: bool, tries: u8 },
    /// The process dies (nothing unflushed survives) and starts again.
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..6u8, 1..6u8, proptest::bool::weighted(0.2))
            .prop_map(|(id, copies, give_up)| Step::Copies { id, copies, give_up }),
        1 => (0..6u8).prop_map(|id| Step::Sent { id }),
        2 => (0..6u8, any::<bool>(), 1..4u8).prop_map(|(id, right, tries)| Step::Verify { id, right, tries }),
        1 => Just(Step::Restart),
    ]
}

/// What the model remembers across restarts: each request's one code, and
/// whether it was approved.
#[derive(Default)]
struct Model {
    codes: HashMap<u8, Code>,
    approved: HashMap<u8, u32>,
}

impl Model {
    fn request(id: u8) -> ValidRequest {
        // Each request its own number, so no code supersedes another.
        request_to(&format!("req-{id}"), &format!("+1415555{:04}", 2000 + u16::from(id)))
    }

    async fn copies(&mut self, w: &Writer, id: u8, copies: u8, give_up: bool, now: OffsetDateTime) {
        let req = Self::request(id);
        let calls: Vec<_> = (0..copies)
            .map(|_| {
                let (w, req) = (w.clone(), req.clone());
                tokio::spawn(async move { w.issue(req, now).await.unwrap() })
            })
            .collect();
        let mut issued = 0;
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        for mut call in calls {
            if let Ok(outcome) = tokio::time::timeout(std::time::Duration::from_millis(5), &mut call).await {
                self.seen(id, &outcome.unwrap(), &mut issued);
                continue;
            }
            // Still waiting: its twin is in flight. Settle the twin, then it answers.
            if give_up {
                w.release(&req.request_id)
            } else {
                w.queued(&req.request_id)
            }
            let outcome = call.await.unwrap();
            self.seen(id, &outcome, &mut issued);
        }
        if issued > 0 {
            if give_up { w.release(&req.request_id) } else { w.queued(&req.request_id) }
        }
        assert!(issued <= 1, "one code per request id among concurrent copies, got {issued}");
    }

    fn seen(&mut self, id: u8, outcome: &IssueOutcome, issued: &mut u32) {
        if let IssueOutcome::Issued(i) = outcome {
            *issued += 1;
            let first = self.codes.entry(id).or_insert_with(|| i.code.clone());
            assert_eq!(first, &i.code, "request {id} got a second, different code");
        }
    }

    async fn verify(&mut self, w: &Writer, id: u8, right: bool, tries: u8, now: OffsetDateTime) {
        let req = Self::request(id);
        let Some(code) = self.codes.get(&id) else { return };
        let code = if right { code.clone() } else { wrong(code) };
        let calls: Vec<_> = (0..tries)
            .map(|_| {
                let (w, phone, code) = (w.clone(), req.phone.clone(), code.clone());
                tokio::spawn(async move { w.verify(&phone, &code, now).await.unwrap() })
            })
            .collect();
        for call in calls {
            if let VerifyOutcome::Approved { .. } = call.await.unwrap().outcome {
                *self.approved.entry(id).or_default() += 1;
            }
        }
        assert!(self.approved.get(&id).copied().unwrap_or(0) <= 1, "request {id}'s code approved twice");
    }
}

fn wrong(code: &Code) -> Code {
    let digits: String =
        code.expose().chars().map(|c| char::from(b'0' + (c.to_digit(10).unwrap() as u8 + 1) % 10)).collect();
    Code::parse(&digits).unwrap()
}

fn run_history(steps: Vec<Step>) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let mut model = Model::default();
        let mut w = start(dir.path(), keys());
        for step in steps {
            match step {
                Step::Copies { id, copies, give_up } => model.copies(&w, id, copies, give_up, now).await,
                Step::Sent { id } => {
                    let u = update(&Model::request(id).request_id, EventKind::Sent, Some("webhook"), Some("m"));
                    w.apply_status(u).await.unwrap();
                }
                Step::Verify { id, right, tries } => model.verify(&w, id, right, tries, now).await,
                Step::Restart => {
                    drop(w);
                    w = reopen(dir.path()).await;
                }
            }
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any interleaving of concurrent copies, twins that give up, restarts on
    /// the same data dir, status events and verifies gives each request id
    /// one code (never a second, different one), and approves it once at most.
    #[test]
    fn one_code_per_request_and_one_approval_under_any_interleaving(
        steps in proptest::collection::vec(step(), 1..24)
    ) {
        run_history(steps);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_larger_than_one_slice_goes_on_where_it_stopped() {
    let (_d, w) = setup();
    let now = OffsetDateTime::now_utc();
    let issues: Vec<_> = (0..1_100)
        .map(|i| {
            let (w, req) = (w.clone(), request_to(&format!("big-{i}"), &format!("+1415556{:04}", i)));
            tokio::spawn(async move { issue(&w, &req, now).await })
        })
        .collect();
    for i in issues {
        i.await.unwrap();
    }
    let keys = w.store().len();
    assert!(keys > super::sweep::SWEEP_SLICE, "{keys} keys: more than one slice");
    let later = now + Duration::minutes(6);
    let report = w.sweep(later, Duration::hours(24)).await.unwrap();
    assert_eq!(report.expired.len(), 1_100, "every expired code, across slices");
    let report = w.sweep(later + Duration::hours(24), Duration::hours(24)).await.unwrap();
    assert_eq!(report.requests, 1_100);
    assert!(w.store().is_empty());
}
