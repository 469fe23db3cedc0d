//! The operator's view of metrics: after real traffic through a running
//! pipeline (failover, an open breaker, receipts, refusals of every kind, dead
//! letters, a lockout, a quarantine, a broker reconnect), every metric of
//! `telemetry::ALL` is exported with its documented type, help and labels, every
//! counter and histogram has moved, and `promtool check metrics` accepts the
//! exposition. One test per binary: the recorder is global to the process.

mod common;

use common::{API_KEY, TestEnv, code_in, eventually, route, twilio, vonage};
use otp_fake_carrier::{FakeCarrier, FakeCarrierConfig, Outage};
use otp_pipeline::config::TwilioConfig;
use otp_pipeline::domain::RawRequest;
use otp_pipeline::telemetry::{ALL, Kind};
use std::collections::{BTreeMap, BTreeSet};

/// One sample line of the exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text exposition: `# HELP`/`# TYPE` lines and samples.
fn parse(text: &str) -> (BTreeMap<String, String>, BTreeMap<String, String>, Vec<Sample>) {
    let (mut help, mut types, mut samples) = (BTreeMap::new(), BTreeMap::new(), Vec::new());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap();
            help.insert(name.to_owned(), text.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            types.insert(name.to_owned(), kind.to_owned());
        } else {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let inner = rest.strip_suffix('}').unwrap();
                    let labels = inner
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|pair| {
                            let (k, v) = pair.split_once('=').unwrap();
                            (k.to_owned(), v.trim_matches('"').to_owned())
                        })
                        .collect();
                    (name, labels)
                }
                None => (series, BTreeMap::new()),
            };
            samples.push(Sample { name: name.to_owned(), labels, value: value.parse().unwrap() });
        }
    }
    (help, types, samples)
}

/// The code of `request_id`'s SMS, once the fake carrier accepted it.
async fn delivered_code(carrier: &FakeCarrier, request_id: &str) -> String {
    let sms = eventually(|| async {
        carrier.messages().into_iter().find(|m| m.accepted && m.request_id.as_deref() == Some(request_id))
    })
    .await
    .unwrap_or_else(|| panic!("no SMS for {request_id}"));
    code_in(sms.text.as_deref().unwrap())
}

fn request(id: &str, phone: &str) -> RawRequest {
    RawRequest { request_id: id.into(), phone: phone.into(), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_is_exported_documented_and_moving_and_promtool_accepts_it() {
    // Twilio is down for the whole test; Vonage takes over and sends receipts.
    let carrier = FakeCarrier::start(
        "127.0.0.1:0".parse().unwrap(),
        FakeCarrierConfig {
            outages: vec![Outage { carrier: Some("twilio".into()), start_ms: 0, end_ms: 3_600_000 }],
            receipts: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let base = carrier.base_url();
    let env = TestEnv::start_with(|c, sender| {
        c.carriers.twilio = Some(TwilioConfig { status_callback: None, ..twilio(&base, sender) });
        c.carriers.vonage = Some(vonage(&base, sender));
        c.routing.default = route(&[("twilio", 1), ("vonage", 0)]);
        c.sender.breaker.failure_threshold = 2;
        c.sender.breaker.open_ms = 3_600_000;
        c.limits.verify.max_consecutive_failures = 2;
        c.limits.pumping.max_sends_per_window = 2;
        c.http.rate_per_key_per_sec = 40;
        c.http.burst_per_key = 40;
    })
    .await;

    // Accepted, delivered through failover (opening twilio's breaker), receipted, verified.
    env.publish(&request("m-ok", "+14155550171")).await;
    let code = delivered_code(&carrier, "m-ok").await;
    eventually(|| async { (env.get("/v1/otp/m-ok").await.1["status"] == "delivered").then_some(()) })
        .await
        .expect("the vonage receipt marks it delivered");
    assert_eq!(env.verify("+14155550171", &code).await.0, 200);

    // Refusals: resend cooldown, invalid phone, malformed JSON (dead letter), pumping quarantine.
    let again = env.publish(&request("m-again", "+14155550171")).await;
    assert_eq!(again.reason.map(|r| r.as_str()), Some("rate_limited"));
    env.publish(&request("m-bad", "+1415")).await;
    env.publish_bytes(b"{not json").await;
    for i in 0..4 {
        env.publish(&request(&format!("m-pump-{i}"), &format!("+1212555{:04}", 100 + i))).await;
    }
    // A lockout: two wrong codes in a row for one number.
    env.publish(&request("m-lock", "+14155550172")).await;
    let lock_code = delivered_code(&carrier, "m-lock").await;
    let wrong = if lock_code == "000000" { "111111" } else { "000000" };
    env.verify("+14155550172", wrong).await;
    env.verify("+14155550172", wrong).await;
    assert_eq!(env.verify("+14155550172", wrong).await.0, 429, "locked");
    // HTTP refusals: a wrong key, and a key over its rate.
    let r = env.http.get(env.url("/v1/otp/x")).bearer_auth("wrong-key-0123456789").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let mut limited = false;
    for _ in 0..80 {
        limited |= env.http.get(env.url("/v1/otp/x")).bearer_auth(API_KEY).send().await.unwrap().status() == 429;
    }
    assert!(limited, "the key's rate limit answered 429");
    // A forged receipt.
    let r = env.http.post(format!("{}/receipts/vonage?token=wrong", env.sender_url)).send().await.unwrap();
    assert!(r.status().is_client_error());
    // A broker connection loss.
    assert!(common::kill_connections(&env.prefix) >= 2);
    eventually(|| async {
        let text = env.http.get(env.url("/metrics")).send().await.ok()?.text().await.ok()?;
        let ready = env.http.get(env.url("/readyz")).send().await.ok()?.status() == 200;
        (ready && !text.contains("otp_broker_reconnects_total 0")).then_some(())
    })
    .await
    .expect("reconnected, and counted");

    // The exposition.
    let text = env.http.get(env.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let sender_text = env.http.get(format!("{}/metrics", env.sender_url)).send().await.unwrap().text().await.unwrap();
    assert!(sender_text.contains("otp_deliveries_total"), "the sender serves /metrics too");
    let (help, types, samples) = parse(&text);
    let mut problems = Vec::new();
    for spec in ALL {
        let kind = match spec.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        if types.get(spec.name).map(String::as_str) != Some(kind) {
            problems.push(format!("{}: TYPE {:?}, documented {kind}", spec.name, types.get(spec.name)));
        }
        if help.get(spec.name).map(String::as_str) != Some(spec.help) {
            problems.push(format!("{}: HELP {:?}, documented {:?}", spec.name, help.get(spec.name), spec.help));
        }
        let series: Vec<&Sample> = samples
            .iter()
            .filter(|s| match spec.kind {
                Kind::Histogram => s.name == format!("{}_count", spec.name),
                _ => s.name == spec.name,
            })
            .collect();
        if series.is_empty() {
            problems.push(format!("{}: no series", spec.name));
            continue;
        }
        let documented: BTreeSet<&str> = spec.labels.iter().copied().collect();
        for s in &series {
            let labels: BTreeSet<&str> = s.labels.keys().map(String::as_str).collect();
            if labels != documented {
                problems.push(format!("{}: labels {labels:?}, documented {documented:?}", spec.name));
            }
        }
        if spec.kind != Kind::Gauge && series.iter().map(|s| s.value).sum::<f64>() <= 0.0 {
            problems.push(format!("{}: did not move", spec.name));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}\n\n{text}");

    // Values an operator relies on.
    let value = |name: &str, labels: &[(&str, &str)]| {
        samples
            .iter()
            .find(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .map(|s| s.value)
    };
    assert_eq!(value("otp_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0));
    assert_eq!(value("otp_broker_connected", &[]), Some(1.0));
    assert_eq!(value("otp_carrier_circuit_open", &[("carrier", "twilio")]), Some(1.0));
    assert_eq!(value("otp_carrier_circuit_open", &[("carrier", "vonage")]), Some(0.0));
    assert!(value("otp_conversions_total", &[("carrier", "vonage")]) >= Some(1.0));
    assert!(value("otp_requests_total", &[("outcome", "suspected_pumping")]) >= Some(1.0));
    assert!(value("otp_dead_letters_total", &[("reason", "malformed_json")]) >= Some(1.0));
    assert!(value("otp_delivery_receipts_total", &[("carrier", "vonage"), ("status", "delivered")]) >= Some(1.0));
    // Buckets for OTP work: 1 ms … 30 s.
    let les: Vec<&str> = samples
        .iter()
        .filter(|s| s.name == "otp_verify_duration_seconds_bucket")
        .map(|s| s.labels["le"].as_str())
        .collect();
    assert_eq!(les.first(), Some(&"0.001"));
    assert_eq!(les.iter().rev().nth(1), Some(&"30"), "{les:?}");

    // promtool, Prometheus's own linter (Debian package `prometheus`; .ci/run installs it).
    for (who, exposition) in [("generator", &text), ("sender", &sender_text)] {
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool is missing: install it with `apt-get install -y prometheus` (.ci/run does)");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics ({who}): {said}");
    }

    // The README's metrics reference names every metric.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let missing: Vec<&str> = ALL.iter().map(|m| m.name).filter(|n| !readme.contains(&format!("`{n}"))).collect();
    assert!(missing.is_empty(), "README's metrics reference lacks {missing:?}");
    env.teardown().await;
    carrier.shutdown().await;
}
