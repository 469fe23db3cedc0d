//! The abuse rules' unit tests and property tests.

use super::*;
use serde::de::DeserializeOwned;
use time::macros::datetime;

const T0: OffsetDateTime = datetime!(2025-03-01 12:00:00 UTC);

fn at(s: i64) -> OffsetDateTime {
    T0 + Duration::seconds(s)
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T) {
    let json = serde_json::to_string(v).expect("serializes");
    let back: T = serde_json::from_str(&json).expect("deserializes");
    assert_eq!(&back, v, "{json}");
}

// --- send limits ---

fn sent(policy: &SendPolicy, times: &[i64]) -> SendHistory {
    let mut h = SendHistory::default();
    for t in times {
        policy.record(&mut h, at(*t));
    }
    h
}

#[test]
fn send_policy_defaults() {
    let p = SendPolicy::default();
    assert_eq!((p.resend_cooldown_secs, p.window_secs, p.max_per_window), (30, 600, 5));
    let empty = SendHistory::default();
    assert_eq!(p.check(&empty, T0), Ok(()));
    assert!(empty.is_stale(&p, T0));
}

#[test]
fn cooldown_lifts_exactly_after_cooldown() {
    let p = SendPolicy::default();
    let h = sent(&p, &[0]);
    let limited = Limited { rule: Limited::RESEND_COOLDOWN, retry_at: at(30) };
    assert_eq!(p.check(&h, at(0)), Err(limited));
    assert_eq!(p.check(&h, at(30) - Duration::nanoseconds(1)), Err(limited));
    assert_eq!(p.check(&h, at(30)), Ok(()));
}

#[test]
fn window_allows_exactly_max_then_refuses_until_oldest_expires() {
    let p = SendPolicy::default();
    let mut h = SendHistory::default();
    for i in 0..5 {
        assert_eq!(p.check(&h, at(i * 60)), Ok(()), "send {i}");
        p.record(&mut h, at(i * 60));
    }
    assert_eq!(p.check(&h, at(300)), Err(Limited { rule: Limited::SEND_WINDOW, retry_at: at(600) }));
    assert!(p.check(&h, at(599)).is_err());
    assert_eq!(p.check(&h, at(600)), Ok(()));
    p.record(&mut h, at(600));
    assert_eq!(h.sends().len(), 5, "the first send was pruned");
    assert_eq!(h.sends()[0], at(60));
}

#[test]
fn window_retry_at_accounts_for_a_lowered_max() {
    let wide = SendPolicy { resend_cooldown_secs: 0, max_per_window: 10, ..SendPolicy::default() };
    let h = sent(&wide, &[0, 10, 20, 30, 40]);
    let narrow = SendPolicy { max_per_window: 3, ..wide };
    // Five in the window, three allowed: the third oldest must expire.
    assert_eq!(narrow.check(&h, at(50)), Err(Limited { rule: Limited::SEND_WINDOW, retry_at: at(620) }));
}

#[test]
fn the_rule_that_lifts_last_is_reported() {
    let window_binds = SendPolicy { resend_cooldown_secs: 300, window_secs: 600, max_per_window: 1 };
    let h = sent(&window_binds, &[0]);
    assert_eq!(window_binds.check(&h, at(1)).map_err(|l| l.rule), Err(Limited::SEND_WINDOW));
    let cooldown_binds = SendPolicy { resend_cooldown_secs: 900, ..window_binds };
    let h = sent(&cooldown_binds, &[0]);
    assert_eq!(cooldown_binds.check(&h, at(1)), Err(Limited { rule: Limited::RESEND_COOLDOWN, retry_at: at(900) }));
    // A cooldown longer than the window keeps the history alive.
    assert!(!h.is_stale(&cooldown_binds, at(899)));
    assert!(h.is_stale(&cooldown_binds, at(900)));
}

#[test]
fn disabled_send_rules() {
    let no_cooldown = SendPolicy { resend_cooldown_secs: 0, ..SendPolicy::default() };
    let h = sent(&no_cooldown, &[0]);
    assert_eq!(no_cooldown.check(&h, at(0)), Ok(()));

    let no_window = SendPolicy { max_per_window: 0, ..SendPolicy::default() };
    let times: Vec<i64> = (0..50).map(|i| i * 30).collect();
    let h = sent(&no_window, &times);
    assert_eq!(no_window.check(&h, at(1500)), Ok(()));
    assert_eq!(h.sends().len(), 1, "only the last send matters");

    let off = SendPolicy { resend_cooldown_secs: 0, max_per_window: 0, ..SendPolicy::default() };
    let h = sent(&off, &[0, 0, 0]);
    assert_eq!(off.check(&h, at(0)), Ok(()));
    assert!(h.sends().is_empty() && h.is_stale(&off, at(0)));
}

#[test]
fn send_history_is_bounded_and_goes_stale_with_the_window() {
    let p = SendPolicy { resend_cooldown_secs: 0, ..SendPolicy::default() };
    let h = sent(&p, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(h.sends(), &[at(5), at(6), at(7), at(8), at(9)]);
    assert!(!h.is_stale(&p, at(608)));
    assert!(h.is_stale(&p, at(609)));
}

#[test]
fn send_limits_survive_a_clock_going_backwards_and_huge_durations() {
    let p = SendPolicy::default();
    let mut h = sent(&p, &[0]);
    // Now is before the last send: elapsed counts as zero.
    assert_eq!(p.check(&h, at(-100)), Err(Limited { rule: Limited::RESEND_COOLDOWN, retry_at: at(30) }));
    p.record(&mut h, at(-100));
    assert_eq!(h.sends(), &[at(-100), at(0)]);
    assert!(!h.is_stale(&p, at(-1000)));

    let huge = SendPolicy { resend_cooldown_secs: u64::MAX, window_secs: u64::MAX, max_per_window: 1 };
    let h = sent(&huge, &[0]);
    let refused = huge.check(&h, at(10)).expect_err("limited");
    assert_eq!(refused.retry_at, LATEST);
    round_trip(&h);
}

#[test]
fn send_history_round_trips() {
    let h = sent(&SendPolicy::default(), &[0, 45, 90]);
    round_trip(&h);
    let json = serde_json::to_string(&h).expect("serializes");
    assert!(json.contains("2025-03-01T12:00:45Z"), "{json}");
    round_trip(&SendHistory::default());
}

// --- verification lockout ---

#[test]
fn lock_policy_defaults() {
    let p = VerifyLockPolicy::default();
    assert_eq!((p.max_consecutive_failures, p.lock_secs), (100, 900));
}

#[test]
fn locks_exactly_at_the_max_and_resets_the_count() {
    let p = VerifyLockPolicy::default();
    let mut f = VerifyFailures::default();
    for _ in 0..99 {
        f.on_failure(&p, T0);
    }
    assert_eq!((f.consecutive, f.check(T0)), (99, Ok(())));
    f.on_failure(&p, T0);
    assert_eq!(f.consecutive, 0);
    assert_eq!(f.check(T0), Err(at(900)));
    assert!(!f.is_stale(at(899)));
}

#[test]
fn lock_expires_at_locked_until() {
    let p = VerifyLockPolicy { max_consecutive_failures: 2, lock_secs: 60 };
    let mut f = VerifyFailures::default();
    f.on_failure(&p, T0);
    f.on_failure(&p, T0);
    assert_eq!(f.check(at(59)), Err(at(60)));
    assert_eq!(f.check(at(60)), Ok(()));
    assert!(f.is_stale(at(60)));
    // A fresh count starts after the lock.
    f.on_failure(&p, at(60));
    assert_eq!((f.consecutive, f.locked_until, f.check(at(60))), (1, None, Ok(())));
}

#[test]
fn failures_while_locked_do_not_extend_the_lock() {
    let p = VerifyLockPolicy { max_consecutive_failures: 1, lock_secs: 60 };
    let mut f = VerifyFailures::default();
    f.on_failure(&p, T0);
    f.on_failure(&p, at(30));
    assert_eq!(f.check(at(30)), Err(at(60)));
    assert_eq!(f.consecutive, 0);
}

#[test]
fn success_resets_failures() {
    let p = VerifyLockPolicy::default();
    let mut f = VerifyFailures::default();
    for _ in 0..99 {
        f.on_failure(&p, T0);
    }
    assert!(!f.is_stale(T0));
    f.on_success();
    assert_eq!(f, VerifyFailures::default());
    assert!(f.is_stale(T0));
    f.on_failure(&p, T0);
    assert_eq!(f.check(T0), Ok(()));
}

#[test]
fn disabled_lockout_never_locks() {
    let p = VerifyLockPolicy { max_consecutive_failures: 0, lock_secs: 900 };
    let mut f = VerifyFailures::default();
    for _ in 0..1000 {
        f.on_failure(&p, T0);
    }
    assert_eq!(f.check(T0), Ok(()));
    assert!(f.is_stale(T0));
    // A zero-length lock is no lock.
    let p = VerifyLockPolicy { max_consecutive_failures: 1, lock_secs: 0 };
    f.on_failure(&p, T0);
    assert_eq!(f.check(T0), Ok(()));
}

#[test]
fn verify_failures_round_trip() {
    let p = VerifyLockPolicy { max_consecutive_failures: 1, lock_secs: u64::MAX };
    let mut f = VerifyFailures::default();
    round_trip(&f);
    f.consecutive = 7;
    round_trip(&f);
    f.on_failure(&p, T0);
    assert_eq!(f.locked_until, Some(LATEST));
    round_trip(&f);
    let old: VerifyFailures = serde_json::from_str("{}").expect("defaults");
    assert_eq!(old, VerifyFailures::default());
}

// --- geo ---

fn geo(allowed: &[&str], blocked: &[&str]) -> GeoPolicy {
    let owned = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
    GeoPolicy { allowed: owned(allowed), blocked: owned(blocked) }
}

fn blocked(prefix: &str) -> Result<(), GeoBlocked> {
    Err(GeoBlocked { prefix: prefix.into() })
}

#[test]
fn empty_geo_policy_allows_everything() {
    let p = GeoPolicy::default();
    assert_eq!(p.check("+14155550123"), Ok(()));
    assert_eq!(p.check("+882"), Ok(()));
    assert_eq!(p.validate(), Ok(()));
}

#[test]
fn allow_list_restricts() {
    let p = geo(&["1", "44"], &[]);
    assert_eq!(p.check("+14155550123"), Ok(()));
    assert_eq!(p.check("+447911123456"), Ok(()));
    assert_eq!(p.check("+33612345678"), blocked(""));
}

#[test]
fn longest_prefix_decides_and_blocked_wins_ties() {
    let p = geo(&["1"], &["1242"]);
    assert_eq!(p.check("+14155550123"), Ok(()));
    assert_eq!(p.check("+12425550123"), blocked("1242"));
    let p = geo(&["1242"], &["1"]);
    assert_eq!(p.check("+12425550123"), Ok(()));
    assert_eq!(p.check("+14155550123"), blocked("1"));
    let p = geo(&["44"], &["44"]);
    assert_eq!(p.check("+447911123456"), blocked("44"));
    let p = geo(&[], &["44", "4479"]);
    assert_eq!(p.check("+447911123456"), blocked("4479"));
    assert_eq!(p.check("+14155550123"), Ok(()));
}

#[test]
fn weird_numbers_are_refused_without_panicking() {
    let p = geo(&[], &["44"]);
    for weird in ["", "+", "++1", "14155550123", "+1 415", "+1415x", "+\u{661}\u{662}", "é", "+-1"] {
        assert_eq!(p.check(weird), blocked(""), "{weird:?}");
    }
    // Malformed prefixes never match (an empty one would match everything).
    let p = geo(&[], &["", "+1", "1a"]);
    assert_eq!(p.check("+14155550123"), Ok(()));
}

#[test]
fn validate_refuses_malformed_prefixes() {
    assert_eq!(geo(&["1", "44", "1242", "123456"], &["9"]).validate(), Ok(()));
    for bad in ["", "+44", "1234567", "4a", "0", "07", " 1", "\u{661}"] {
        assert!(geo(&[bad], &[]).validate().is_err(), "allowed {bad:?}");
        let err = geo(&["1"], &["44", bad]).validate().expect_err("refused");
        assert!(err.contains("blocked[1]"), "{err}");
    }
}

// --- pumping ---

fn pumping() -> PumpingPolicy {
    PumpingPolicy::default()
}

/// `n` sends at `t` seconds.
fn send_n(stats: &mut PrefixStats, p: &PumpingPolicy, n: u32, t: i64) {
    for _ in 0..n {
        stats.on_send(p, at(t));
    }
}

#[test]
fn pumping_policy_defaults() {
    let p = pumping();
    assert_eq!(p.prefix_digits, 6);
    assert_eq!(p.window_secs, 3600);
    assert_eq!(p.max_sends_per_window, 200);
    assert_eq!(p.min_volume, 50);
    assert_eq!(p.min_conversion, 0.1);
    assert_eq!(p.conversion_grace_secs, 300);
    assert_eq!(p.quarantine_secs, 3600);
    assert_eq!(p.validate(), Ok(()));
}

#[test]
fn prefix_of_takes_leading_digits_and_never_panics() {
    let p = pumping();
    assert_eq!(prefix_of(&p, "+14155550123"), "141555");
    assert_eq!(prefix_of(&p, "+1234"), "1234");
    assert_eq!(prefix_of(&p, "+12ab34"), "12");
    assert_eq!(prefix_of(&p, "14155550123"), "141555");
    for weird in ["", "+", "abc", "+\u{661}\u{662}", "++1", "é+1"] {
        assert_eq!(prefix_of(&p, weird), "", "{weird:?}");
    }
    let p = PumpingPolicy { prefix_digits: 0, ..pumping() };
    assert_eq!(prefix_of(&p, "+14155550123"), "");
    let p = PumpingPolicy { prefix_digits: u32::MAX, ..pumping() };
    assert_eq!(prefix_of(&p, "+14155550123"), "14155550123");
}

#[test]
fn velocity_fires_one_over_the_max() {
    let p = PumpingPolicy { min_volume: 0, ..pumping() };
    let mut s = PrefixStats::new("141555");
    send_n(&mut s, &p, 200, 0);
    assert_eq!(p.evaluate(&s, at(0)), None);
    s.on_send(&p, at(10));
    let q = p.evaluate(&s, at(10)).expect("quarantined");
    assert_eq!(
        q,
        Quarantine {
            prefix: "141555".into(),
            rule: Quarantine::PREFIX_VELOCITY.into(),
            detail: "201 sends in 3600 s (max 200)".into(),
            since: at(10),
            until: at(3610),
        }
    );
}

#[test]
fn the_window_restarts_when_it_ends() {
    let p = pumping();
    let mut s = PrefixStats::new("141555");
    send_n(&mut s, &p, 150, 0);
    s.on_verified(&p, at(10));
    assert_eq!((s.sends(), s.verified(), s.window_start()), (150, 1, Some(at(0))));
    assert!(!s.is_stale(&p, at(3599)));
    assert!(s.is_stale(&p, at(3600)));
    assert_eq!(p.evaluate(&s, at(3600)), None, "an ended window counts nothing");
    send_n(&mut s, &p, 100, 3600);
    assert_eq!((s.sends(), s.verified(), s.window_start()), (100, 0, Some(at(3600))));
    assert_eq!(s.prefix(), "141555");
    assert_eq!(p.evaluate(&s, at(3600)), None);
}

#[test]
fn conversion_fires_just_below_the_minimum() {
    let p = pumping();
    let mut s = PrefixStats::new("234803");
    send_n(&mut s, &p, 50, 0);
    for _ in 0..5 {
        s.on_verified(&p, at(60));
    }
    assert_eq!(p.evaluate(&s, at(300)), None, "exactly 10 %");
    let mut s = PrefixStats::new("234803");
    send_n(&mut s, &p, 50, 0);
    for _ in 0..4 {
        s.on_verified(&p, at(60));
    }
    let q = p.evaluate(&s, at(300)).expect("quarantined");
    assert_eq!(q.rule, Quarantine::LOW_CONVERSION);
    assert_eq!(q.detail, "conversion 8.0 % (4/50) below 10.0 % with at least 50 sends");
    assert_eq!((q.since, q.until), (at(300), at(3900)));
    // One settled send fewer than min_volume: not judged.
    let mut s = PrefixStats::new("234803");
    send_n(&mut s, &p, 49, 0);
    assert_eq!(p.evaluate(&s, at(300)), None);
}

#[test]
fn conversion_detail_shows_the_figures() {
    let p = pumping();
    let mut s = PrefixStats::new("234803");
    send_n(&mut s, &p, 129, 0);
    for _ in 0..4 {
        s.on_verified(&p, at(100));
    }
    let q = p.evaluate(&s, at(400)).expect("quarantined");
    assert_eq!(q.detail, "conversion 3.1 % (4/129) below 10.0 % with at least 50 sends");
}

#[test]
fn sends_in_the_grace_period_are_not_judged() {
    let p = pumping();
    let mut s = PrefixStats::new("234803");
    send_n(&mut s, &p, 60, 0);
    assert_eq!(s.settled_sends(&p, at(0)), 0);
    assert_eq!(p.evaluate(&s, at(0)), None);
    assert_eq!(p.evaluate(&s, at(299)), None);
    assert_eq!(s.settled_sends(&p, at(300)), 60);
    assert!(p.evaluate(&s, at(300)).is_some());

    // 40 settled + 40 recent: below min_volume until the second batch settles.
    let mut s = PrefixStats::new("234803");
    send_n(&mut s, &p, 40, 0);
    send_n(&mut s, &p, 40, 280);
    assert_eq!(s.settled_sends(&p, at(300)), 40);
    assert_eq!(p.evaluate(&s, at(300)), None);
    assert_eq!(s.settled_sends(&p, at(580)), 80);
    let q = p.evaluate(&s, at(580)).expect("quarantined");
    assert!(q.detail.contains("(0/80)"), "{}", q.detail);

    // No grace: everything counts at once.
    let p = PumpingPolicy { conversion_grace_secs: 0, ..pumping() };
    let mut s = PrefixStats::new("234803");
    send_n(&mut s, &p, 50, 0);
    assert_eq!(s.settled_sends(&p, at(0)), 50);
    assert!(p.evaluate(&s, at(0)).is_some());
}

#[test]
fn disabled_pumping_rules() {
    let mut s = PrefixStats::new("234803");
    let base = pumping();
    send_n(&mut s, &base, 500, 0);
    assert!(base.evaluate(&s, at(300)).is_some());
    let off = |p: PumpingPolicy| p.evaluate(&s, at(300));
    assert_eq!(off(PumpingPolicy { prefix_digits: 0, ..base }), None);
    assert_eq!(off(PumpingPolicy { window_secs: 0, ..base }), None);
    assert_eq!(off(PumpingPolicy { quarantine_secs: 0, ..base }), None);
    let no_velocity = PumpingPolicy { max_sends_per_window: 0, ..base };
    assert_eq!(off(no_velocity).map(|q| q.rule), Some(Quarantine::LOW_CONVERSION.to_owned()));
    assert_eq!(off(PumpingPolicy { min_volume: 0, ..no_velocity }), None);
    assert_eq!(off(PumpingPolicy { min_conversion: 0.0, ..no_velocity }), None);
    assert_eq!(off(PumpingPolicy { min_conversion: f64::NAN, ..no_velocity }), None);
    // A zero window keeps nothing.
    let p = PumpingPolicy { window_secs: 0, ..base };
    let mut s = PrefixStats::new("234803");
    send_n(&mut s, &p, 3, 0);
    assert_eq!(s.sends(), 1);
    assert!(s.is_stale(&p, at(0)));
}

#[test]
fn quarantine_expires_at_until() {
    let p = PumpingPolicy { max_sends_per_window: 1, ..pumping() };
    let mut s = PrefixStats::new("141555");
    send_n(&mut s, &p, 2, 0);
    let q = p.evaluate(&s, at(0)).expect("quarantined");
    assert!(q.is_active(at(-10)), "a clock going backwards stays quarantined");
    assert!(q.is_active(at(3600) - Duration::nanoseconds(1)));
    assert!(!q.is_active(at(3600)));
    let forever = PumpingPolicy { quarantine_secs: u64::MAX, ..p };
    let q = forever.evaluate(&s, at(0)).expect("quarantined");
    assert_eq!(q.until, LATEST);
    round_trip(&q);
}

#[test]
fn stale_prefix_stats() {
    let p = pumping();
    assert!(PrefixStats::default().is_stale(&p, T0));
    let mut s = PrefixStats::new("141555");
    s.on_verified(&p, at(0));
    assert!(!s.is_stale(&p, at(3599)));
    assert!(s.is_stale(&p, at(3600)));
}

#[test]
fn recent_buckets_stay_bounded() {
    let p = PumpingPolicy { window_secs: 86_400 * 7, conversion_grace_secs: 86_400, ..pumping() };
    let mut s = PrefixStats::new("141555");
    for minute in 0..1000 {
        s.on_send(&p, at(minute * 60));
        s.on_send(&p, at(minute * 60 + 30));
    }
    assert_eq!(s.buckets(), MAX_RECENT_BUCKETS);
    assert_eq!(s.sends(), 2000);
    // Folding errs towards "recent": nothing settles early.
    assert_eq!(s.settled_sends(&p, at(59_999)), 0);
    assert_eq!(s.settled_sends(&p, at(999 * 60 + 30 + 86_400)), 2000);
    // Old buckets are dropped as they leave the grace period.
    let p = pumping();
    let mut s = PrefixStats::new("141555");
    for minute in 0..50 {
        s.on_send(&p, at(minute * 60));
    }
    assert_eq!(s.buckets(), 5);
}

#[test]
fn prefix_stats_survive_a_clock_going_backwards() {
    let p = pumping();
    let mut s = PrefixStats::new("141555");
    s.on_send(&p, at(600));
    s.on_send(&p, at(0));
    s.on_send(&p, at(-86_400));
    s.on_verified(&p, at(-86_400));
    assert_eq!((s.sends(), s.verified()), (3, 1));
    assert_eq!(s.buckets(), 1, "folded into the newest bucket");
    assert_eq!(s.settled_sends(&p, at(0)), 0);
    assert!(!s.is_stale(&p, at(-86_400)));
    assert_eq!(p.evaluate(&s, at(-86_400)), None);
}

#[test]
fn prefix_stats_and_quarantine_round_trip() {
    let p = pumping();
    round_trip(&PrefixStats::default());
    let mut s = PrefixStats::new("141555");
    send_n(&mut s, &p, 3, 0);
    send_n(&mut s, &p, 2, 90);
    s.on_verified(&p, at(100));
    round_trip(&s);
    let q = Quarantine {
        prefix: "141555".into(),
        rule: Quarantine::LOW_CONVERSION.into(),
        detail: "x".into(),
        since: at(0),
        until: at(3600),
    };
    round_trip(&q);
    let json = serde_json::to_string(&q).expect("serializes");
    assert!(json.contains("\"until\":\"2025-03-01T13:00:00Z\""), "{json}");
}

#[test]
fn pumping_validate_refuses_bad_conversion() {
    for bad in [f64::NAN, -0.1, 1.5, f64::INFINITY] {
        let p = PumpingPolicy { min_conversion: bad, ..pumping() };
        assert!(p.validate().is_err(), "{bad}");
    }
    for good in [0.0, 0.5, 1.0] {
        let p = PumpingPolicy { min_conversion: good, ..pumping() };
        assert_eq!(p.validate(), Ok(()));
    }
}

// --- any input ---

proptest::proptest! {
    #[test]
    fn no_input_panics_and_state_stays_bounded(
        number in ".{0,20}",
        prefixes in proptest::collection::vec("[0-9+a ]{0,8}", 0..4),
        steps in proptest::collection::vec((-100_000i64..100_000, 0u8..4), 1..60),
        secs in proptest::collection::vec(proptest::prop_oneof![0u64..1000, proptest::strategy::Just(u64::MAX)], 5),
        small in proptest::collection::vec(0u32..8, 3),
        conversion in proptest::prop_oneof![0.0f64..1.0, proptest::strategy::Just(f64::NAN)],
    ) {
        let geo = GeoPolicy { allowed: prefixes.clone(), blocked: prefixes };
        let _ = geo.check(&number);
        let _ = geo.validate();
        let send = SendPolicy {
            resend_cooldown_secs: secs[0],
            window_secs: secs[1],
            max_per_window: small[0],
        };
        let lock = VerifyLockPolicy { max_consecutive_failures: small[1], lock_secs: secs[2] };
        let pump = PumpingPolicy {
            prefix_digits: small[2],
            window_secs: secs[3],
            max_sends_per_window: small[0],
            min_volume: small[1],
            min_conversion: conversion,
            conversion_grace_secs: secs[4],
            quarantine_secs: secs[2],
        };
        let mut history = SendHistory::default();
        let mut failures = VerifyFailures::default();
        let mut stats = PrefixStats::new(prefix_of(&pump, &number));
        for (offset, event) in steps {
            let now = at(offset);
            let _ = send.check(&history, now);
            match event {
                0 => send.record(&mut history, now),
                1 => failures.on_failure(&lock, now),
                2 => stats.on_send(&pump, now),
                _ => stats.on_verified(&pump, now),
            }
            let _ = (failures.check(now), failures.is_stale(now));
            let _ = (history.is_stale(&send, now), stats.is_stale(&pump, now));
            if let Some(q) = pump.evaluate(&stats, now) {
                let _ = q.is_active(now);
                round_trip(&q);
            }
            proptest::prop_assert!(history.sends().len() <= small[0].max(1) as usize);
            proptest::prop_assert!(stats.buckets() <= MAX_RECENT_BUCKETS);
            proptest::prop_assert!(stats.settled_sends(&pump, now) <= stats.sends());
        }
        round_trip(&history);
        round_trip(&failures);
        round_trip(&stats);
    }
}

// --- policies as config ---

fn config_round_trip<T>(default: T, partial: &str, unknown: &str)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let empty: T = serde_json::from_str("{}").expect("empty config");
    assert_eq!(empty, default);
    round_trip(&default);
    let partial: Result<T, _> = serde_json::from_str(partial);
    assert!(partial.is_ok(), "{partial:?}");
    let err = serde_json::from_str::<T>(unknown).expect_err("unknown field refused");
    assert!(err.to_string().contains("unknown field"), "{err}");
}

#[test]
fn policies_deserialize_with_defaults_and_refuse_unknown_fields() {
    config_round_trip(SendPolicy::default(), r#"{"max_per_window": 3}"#, r#"{"max_per_windw": 3}"#);
    config_round_trip(VerifyLockPolicy::default(), r#"{"lock_secs": 60}"#, r#"{"lock": 60}"#);
    config_round_trip(GeoPolicy::default(), r#"{"blocked": ["1242"]}"#, r#"{"deny": ["1242"]}"#);
    config_round_trip(PumpingPolicy::default(), r#"{"min_conversion": 0.2}"#, r#"{"min_convertion": 0.2}"#);
    let p: SendPolicy = serde_json::from_str(r#"{"max_per_window": 3}"#).expect("partial");
    assert_eq!(p, SendPolicy { max_per_window: 3, ..SendPolicy::default() });
}
