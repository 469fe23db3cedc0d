//! The production shape: a generator process and a sender process started
//! from the real binary, talking only through RabbitMQ. Also checks that
//! their logs carry neither codes nor full phone numbers, and that SIGTERM
//! shuts both down cleanly.

mod common;

use common::process::{Process, base_env, files_under, pipeline_env};
use common::{API_KEY, PHONE, amqp_url, code_in, require_rabbitmq};
use otp_pipeline::broker::Topology;
use otp_pipeline::client;
use otp_pipeline::domain::{RawRequest, ReplyStatus};
use std::process::Command;
use std::time::Duration;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_generator_and_sender_processes() {
    require_rabbitmq().await;
    let carrier = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).mount(&carrier).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("p-{}.", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let env = pipeline_env(&prefix, dir.path(), &carrier.uri());
    let generator = Process::spawn("generator", &env);
    let line = generator.wait_for_line("HTTP API on http://").await;
    let base = line[line.find("http://").unwrap()..].trim().to_owned();
    generator.wait_for_line("connected to RabbitMQ").await;
    let sender = Process::spawn("sender", &env);
    let line = sender.wait_for_line("metrics on http://").await;
    let sender_metrics = line[line.find("http://").unwrap()..].trim().trim_end_matches("/metrics").to_owned();
    sender.wait_for_line("connected to RabbitMQ").await;

    let topology = Topology::new(&prefix, None);
    // A producer that puts the number in its request id: it is not logged in full either.
    let request = RawRequest { request_id: "proc-14155550123".into(), phone: PHONE.into(), ..Default::default() };
    let reply =
        client::publish(&amqp_url(), &topology, &request, Some(Duration::from_secs(15))).await.unwrap().unwrap();
    assert_eq!(reply.status, ReplyStatus::Accepted);
    let posts = common::eventually(|| async { carrier.received_requests().await.filter(|r| !r.is_empty()) })
        .await
        .expect("an SMS");
    let sms: serde_json::Value = serde_json::from_slice(&posts[0].body).unwrap();
    let code = code_in(sms["text"].as_str().unwrap());

    let http = reqwest::Client::new();
    let verify = http
        .post(format!("{base}/v1/verify"))
        .bearer_auth(API_KEY)
        .json(&serde_json::json!({"phone": PHONE, "code": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(verify.status(), 200);
    let metrics = http.get(format!("{sender_metrics}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("otp_deliveries_total{carrier=\"webhook\",outcome=\"sent\"} 1"), "{metrics}");
    assert_eq!(http.get(format!("{sender_metrics}/readyz")).send().await.unwrap().status(), 200);

    let mut logs = sender.terminate();
    logs.extend(generator.terminate());
    assert!(logs.iter().any(|l| l.contains("generator stopped; store flushed")), "graceful shutdown");
    for line in &logs {
        assert!(!line.contains(&code), "a log line shows the code: {line}");
        assert!(!line.contains("4155550123"), "a log line shows the full number: {line}");
    }
    assert!(logs.iter().any(|l| l.contains("+1415*****23")), "numbers are logged masked");
    // At rest: no file the generator wrote holds the code in clear.
    for file in files_under(dir.path()) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(!bytes.windows(code.len()).any(|w| w == code.as_bytes()), "{} holds the code", file.display());
    }
    common::delete_topology(&topology).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_api_keys_without_a_restart() {
    require_rabbitmq().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("p-{}.", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let env = base_env(&prefix, dir.path());
    let generator = Process::spawn("generator", &env);
    let line = generator.wait_for_line("HTTP API on http://").await;
    let base = line[line.find("http://").unwrap()..].trim().to_owned();
    let keys_file = dir.path().join("api_keys");
    let first = std::fs::read_to_string(&keys_file).unwrap().lines().find(|l| !l.starts_with('#')).unwrap().to_owned();
    let http = reqwest::Client::new();
    let status = |key: String| {
        let request = http.get(format!("{base}/v1/otp/none")).bearer_auth(key);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(first.clone()).await, 404, "the created key works");

    let second = "rotated-key-0123456789abcdef".to_owned();
    std::fs::write(&keys_file, format!("{second}\n")).unwrap();
    Command::new("kill").arg("-HUP").arg(generator.child.id().to_string()).status().unwrap();
    let reloaded = common::eventually(|| async { (status(second.clone()).await == 404).then_some(()) }).await;
    assert!(reloaded.is_some(), "the new key works after SIGHUP");
    assert_eq!(status(first).await, 401, "the old key no longer does");
    generator.wait_for_line("API keys reloaded").await;
    generator.terminate();
    common::delete_topology(&Topology::new(&prefix, None)).await;
}

/// The disk under sled is unusable (here: a file where its directory goes):
/// the generator consumes nothing — so acks nothing — and says not ready,
/// then carries on by itself once the store opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_open_consumes_nothing_and_reports_not_ready_until_it_can() {
    require_rabbitmq().await;
    let carrier = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).mount(&carrier).await;
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("sled");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let prefix = format!("p-{}.", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let env = pipeline_env(&prefix, dir.path(), &carrier.uri());
    let sender = Process::spawn("sender", &env);
    sender.wait_for_line("connected to RabbitMQ").await;
    let generator = Process::spawn("generator", &env);
    let line = generator.wait_for_line("cannot open the store").await;
    let start = line.find("http://").unwrap();
    let readyz = line[start..].split(')').next().unwrap().to_owned();
    let http = reqwest::Client::new();
    let answer = http.get(&readyz).send().await.unwrap();
    assert_eq!(answer.status(), 503);
    assert_eq!(answer.json::<serde_json::Value>().await.unwrap()["store"], false);

    let topology = Topology::new(&prefix, None);
    for i in 0..5 {
        let request = RawRequest {
            request_id: format!("blocked-{i}"),
            phone: format!("+1415555{:04}", 200 + i),
            ..Default::default()
        };
        client::publish_bytes(&amqp_url(), &topology, &serde_json::to_vec(&request).unwrap(), None).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (connection, channel) = common::open_channel().await;
    let depth = channel
        .queue_declare(
            topology.requests.as_str().into(),
            lapin::options::QueueDeclareOptions { passive: true, ..Default::default() },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count();
    let _ = connection.close(200, "bye".into()).await;
    assert_eq!(depth, 5, "nothing was consumed while the store could not open");
    assert!(carrier.received_requests().await.unwrap().is_empty());

    std::fs::remove_file(&blocker).unwrap();
    generator.wait_for_line("store opened").await;
    let line = generator.wait_for_line("HTTP API on http://").await;
    let base = line[line.find("http://").unwrap()..].trim().to_owned();
    let sent = common::eventually(|| async { carrier.received_requests().await.filter(|r| r.len() == 5) }).await;
    assert!(sent.is_some(), "all five delivered once the store opened");
    assert_eq!(http.get(format!("{base}/readyz")).send().await.unwrap().status(), 200);
    generator.terminate();
    sender.terminate();
    common::delete_topology(&topology).await;
}

/// Processes on different machines share the sealing key through
/// `OTP_BROKER__INTERNAL_KEY` (no shared data dir): the generator's
/// deliveries are sent, and a delivery without the seal, published as the
/// same RabbitMQ user, is dead-lettered `unsealed` and never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_on_separate_machines_share_the_internal_key_from_the_environment() {
    require_rabbitmq().await;
    let carrier = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).mount(&carrier).await;
    let (machine_a, machine_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let prefix = format!("p-{}.", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let key = ("OTP_BROKER__INTERNAL_KEY", "5e".repeat(32));
    let mut generator_env = pipeline_env(&prefix, machine_a.path(), &carrier.uri());
    generator_env.push(key.clone());
    let mut sender_env = pipeline_env(&prefix, machine_b.path(), &carrier.uri());
    sender_env.push(key);
    let generator = Process::spawn("generator", &generator_env);
    generator.wait_for_line("connected to RabbitMQ").await;
    let sender = Process::spawn("sender", &sender_env);
    let line = sender.wait_for_line("metrics on http://").await;
    let sender_metrics = line[line.find("http://").unwrap()..].trim().to_owned();
    sender.wait_for_line("connected to RabbitMQ").await;

    let topology = Topology::new(&prefix, None);
    let request = RawRequest { request_id: "two-machines-1".into(), phone: PHONE.into(), ..Default::default() };
    let reply =
        client::publish(&amqp_url(), &topology, &request, Some(Duration::from_secs(15))).await.unwrap().unwrap();
    assert_eq!(reply.status, ReplyStatus::Accepted);
    let sent = common::eventually(|| async { carrier.received_requests().await.filter(|r| !r.is_empty()) }).await;
    assert!(sent.is_some(), "the sealed delivery is sent");

    let forged = serde_json::json!({"delivery_id": "f-1", "request_id": "f-1", "phone": "+14155550199",
        "text": "Your bank account is locked", "code": "000000",
        "expires_at": "2099-01-01T00:00:00Z", "requested_at": "2026-01-01T00:00:00Z"});
    let (connection, channel) = common::open_channel().await;
    let properties = lapin::BasicProperties::default().with_delivery_mode(2);
    let body = serde_json::to_vec(&forged).unwrap();
    let exchange = topology.internal.as_str();
    channel.basic_publish(exchange.into(), "delivery".into(), Default::default(), &body, properties).await.unwrap();
    let _ = connection.close(200, "bye".into()).await;
    let http = reqwest::Client::new();
    let counted = common::eventually(|| async {
        let metrics = http.get(&sender_metrics).send().await.ok()?.text().await.ok()?;
        metrics.contains("otp_dead_letters_total{reason=\"unsealed\"} 1").then_some(())
    })
    .await;
    assert!(counted.is_some(), "the unsealed delivery is counted");
    assert_eq!(carrier.received_requests().await.unwrap().len(), 1, "and never sent");
    let logs = [sender.terminate(), generator.terminate()].concat();
    assert!(logs.iter().any(|l| l.contains("no seal")), "the sender says why");
    for dir in [machine_a.path(), machine_b.path()] {
        assert!(files_under(dir).iter().all(|f| !f.ends_with("internal.key")), "the configured key is not written");
    }
    common::delete_topology(&topology).await;
}

/// One supervisor per process: a consumer the broker refuses for good (here
/// a deliveries queue someone declared with other arguments) stops the whole
/// process, which exits non-zero naming the task and the broker's answer,
/// instead of retrying forever while not ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_the_broker_refuses_stops_the_process_naming_it() {
    require_rabbitmq().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("p-{}.", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let topology = Topology::new(&prefix, None);
    let (connection, channel) = common::open_channel().await;
    let mut args = lapin::types::FieldTable::default();
    args.insert("x-max-length".into(), lapin::types::AMQPValue::LongUInt(1));
    let options = lapin::options::QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(topology.deliveries.as_str().into(), options, args).await.unwrap();
    let _ = connection.close(200, "bye".into()).await;
    let mut all_in_one = Process::spawn("all-in-one", &base_env(&prefix, dir.path()));
    let status = all_in_one.wait_exit(Duration::from_secs(20)).expect("the process stops by itself");
    assert!(!status.success(), "exit status {status}");
    let logs = all_in_one.log.lock().unwrap().clone();
    let error = logs.iter().find(|l| l.contains("Error:")).unwrap_or_else(|| panic!("no error line: {logs:#?}"));
    assert!(error.contains("consumers failed") && error.contains("PRECONDITION_FAILED"), "{error}");
    common::delete_topology(&topology).await;
}

/// Started as `scripts/run | tee run.log` and stopped with Ctrl-C, the
/// process loses its stdout; SIGTERM must still stop it within seconds, and
/// a second signal stops it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_stdout_closed_still_stops_the_process() {
    require_rabbitmq().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("p-{}.", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let mut env = base_env(&prefix, dir.path());
    env.push(("OTP_HTTP__API_KEYS", format!("[{API_KEY}]")));
    env.push(("OTP_SENDER__LISTEN", "127.0.0.1:0".into()));
    let mut all_in_one = Process::spawn_with_stdout_closed("all-in-one", &env);
    all_in_one.wait_for_line("connected to RabbitMQ").await;
    // The console carrier prints the SMS to the closed stdout.
    let request = RawRequest { request_id: "closed-stdout".into(), phone: PHONE.into(), ..Default::default() };
    let reply =
        client::publish(&amqp_url(), &Topology::new(&prefix, None), &request, Some(Duration::from_secs(15))).await;
    assert_eq!(reply.unwrap().unwrap().status, ReplyStatus::Accepted);
    all_in_one.wait_for_line("Broken pipe").await;
    all_in_one.signal("-INT");
    let status = all_in_one.wait_exit(Duration::from_secs(15)).expect("stopped within seconds of SIGINT");
    assert!(status.success(), "a clean stop: {status}");
    common::delete_topology(&Topology::new(&prefix, None)).await;
}

/// A misconfigured generator says what is wrong and exits non-zero before it
/// touches the disk or the network: no data dir, no key file, no port, no
/// queue. `--check` gives the same verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misconfigured_generator_exits_before_touching_disk_or_network() {
    require_rabbitmq().await;
    let cases: [(&str, Vec<(&'static str, String)>); 3] = [
        (
            "generator.shard 5 must be below broker.shards 2",
            vec![("OTP_BROKER__SHARDS", "2".into()), ("OTP_GENERATOR__SHARD", "5".into())],
        ),
        ("{code}", vec![("OTP_TEMPLATES__LOGIN__EN", "no placeholder here".into())]),
        ("http.admin_api_keys must be at least 16 characters", vec![("OTP_HTTP__ADMIN_API_KEYS", "[short]".into())]),
    ];
    for (expected, extra) in cases {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let prefix = format!("p-{}.", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut env = base_env(&prefix, &data);
        env.retain(|(k, _)| *k != "OTP_HTTP__LISTEN");
        env.push(("OTP_HTTP__LISTEN", format!("127.0.0.1:{port}")));
        env.extend(extra);
        let check = Command::new(env!("CARGO_BIN_EXE_otp-pipeline"))
            .args(["--check", "generator"])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap();
        assert!(!check.status.success(), "--check refuses it ({expected})");
        assert!(String::from_utf8_lossy(&check.stderr).contains(expected), "{:?}", check.stderr);
        let mut generator = Process::spawn("generator", &env);
        let status = generator.wait_exit(Duration::from_secs(10)).expect("it stops by itself");
        assert!(!status.success(), "{expected}: {status}");
        let logs = generator.log.lock().unwrap().join("\n");
        assert!(logs.contains(expected), "{expected}: {logs}");
        assert!(!data.exists(), "{expected}: the data dir was created");
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(), "the port is free");
        let (connection, channel) = common::open_channel().await;
        let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
        let declared = channel
            .queue_declare(Topology::new(&prefix, None).requests.as_str().into(), passive, Default::default())
            .await;
        assert!(declared.is_err(), "{expected}: it declared its queues");
        let _ = connection.close(200, "bye".into()).await;
    }
}
