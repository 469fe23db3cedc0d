//! Copies of one request — the broker redelivering, a producer re-publishing,
//! an application retrying `POST /v1/otp` — give one code and one SMS,
//! whatever their timing and the consumer's prefetch. Run against the real
//! binary (all-in-one) and the real broker, with copies published back to
//! back by an independent AMQP client.

mod common;

use common::process::{Process, pipeline_env};
use common::{API_KEY, amqp_url, require_rabbitmq};
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use otp_pipeline::broker::Topology;
use std::collections::BTreeMap;
use std::time::Duration;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// An all-in-one process on a private prefix with consumer prefetch
/// `prefetch`, its fake carrier, and its HTTP base URL.
struct Pipeline {
    process: Process,
    carrier: MockServer,
    base: String,
    topology: Topology,
    _dir: tempfile::TempDir,
}

impl Pipeline {
    async fn start(prefetch: u16) -> Self {
        require_rabbitmq().await;
        let carrier = MockServer::start().await;
        Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).mount(&carrier).await;
        let dir = tempfile::tempdir().unwrap();
        let prefix = format!("dup-{}.", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let mut env = pipeline_env(&prefix, dir.path(), &carrier.uri());
        env.extend([
            ("OTP_BROKER__PREFETCH", prefetch.to_string()),
            // Many requests to a few numbers: no send limits in the way.
            ("OTP_LIMITS__SEND__RESEND_COOLDOWN_SECS", "0".into()),
            ("OTP_LIMITS__SEND__MAX_PER_WINDOW", "0".into()),
        ]);
        let process = Process::spawn("all-in-one", &env);
        let line = process.wait_for_line("HTTP API on http://").await;
        let base = line[line.find("http://").unwrap()..].trim().to_owned();
        process.wait_for_line("connected to RabbitMQ").await;
        Self { process, carrier, base, topology: Topology::new(&prefix, None), _dir: dir }
    }

    /// The generator's counter `otp_requests_total{outcome}`.
    async fn requests(&self, outcome: &str) -> u64 {
        let metrics = reqwest::get(format!("{}/metrics", self.base)).await.unwrap().text().await.unwrap();
        let series = format!("otp_requests_total{{outcome=\"{outcome}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&series)).map_or(0, |v| v.trim().parse().unwrap())
    }

    /// Waits until `handled` messages were settled as accepted or duplicate,
    /// then a little longer (anything extra would reach the carrier by then),
    /// and returns the SMS count per request id.
    async fn sms_per_request(&self, handled: u64) -> BTreeMap<String, usize> {
        let done = common::eventually(|| async {
            (self.requests("accepted").await + self.requests("duplicate").await >= handled).then_some(())
        })
        .await;
        assert!(done.is_some(), "every copy handled; log: {:#?}", self.process.log.lock().unwrap());
        let accepted = self.requests("accepted").await;
        let sms = common::eventually(|| async {
            let posts = self.carrier.received_requests().await.unwrap_or_default();
            (posts.len() as u64 >= accepted).then_some(())
        })
        .await;
        assert!(sms.is_some(), "every accepted code reached the carrier");
        tokio::time::sleep(Duration::from_millis(700)).await;
        let mut per_request = BTreeMap::new();
        for post in self.carrier.received_requests().await.unwrap() {
            let body: serde_json::Value = serde_json::from_slice(&post.body).unwrap();
            *per_request.entry(body["request_id"].as_str().unwrap().to_owned()).or_insert(0) += 1;
        }
        per_request
    }

    /// How many times the generator logged `code issued` for `request_id`.
    fn issued_lines(&self, request_id: &str) -> usize {
        let log = self.process.log.lock().unwrap();
        log.iter().filter(|l| l.contains("code issued") && l.contains(request_id)).count()
    }

    async fn stop(self) {
        self.process.terminate();
        common::delete_topology(&self.topology).await;
    }
}

fn body(request_id: &str, phone: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "request_id": request_id, "phone": phone })).unwrap()
}

/// Publishes `bodies` back to back on one channel (no waiting between them),
/// then waits for every confirm.
async fn publish_back_to_back(topology: &Topology, bodies: &[Vec<u8>]) {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    let properties = BasicProperties::default().with_content_type("application/json".into()).with_delivery_mode(2);
    let mut confirms = Vec::new();
    for body in bodies {
        let confirm = channel
            .basic_publish(
                topology.exchange.as_str().into(),
                Topology::REQUEST_KEY.into(),
                BasicPublishOptions::default(),
                body,
                properties.clone(),
            )
            .await
            .unwrap();
        confirms.push(confirm);
    }
    for confirm in confirms {
        assert!(confirm.await.unwrap().is_ack());
    }
    let _ = connection.close(200, "bye".into()).await;
}

async fn fifteen_copies_back_to_back_give_one_sms(prefetch: u16) {
    let pipeline = Pipeline::start(prefetch).await;
    let copies: Vec<_> = (0..15).map(|_| body("copies-15", "+14155550123")).collect();
    publish_back_to_back(&pipeline.topology, &copies).await;
    let sms = pipeline.sms_per_request(15).await;
    assert_eq!(sms, BTreeMap::from([("copies-15".to_owned(), 1)]), "one SMS for fifteen copies");
    assert_eq!(pipeline.requests("accepted").await, 1);
    assert_eq!(pipeline.requests("duplicate").await, 14);
    assert_eq!(pipeline.issued_lines("copies-15"), 1, "one code issued");
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifteen_copies_back_to_back_give_one_sms_with_prefetch_1() {
    fifteen_copies_back_to_back_give_one_sms(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifteen_copies_back_to_back_give_one_sms_with_prefetch_256() {
    fifteen_copies_back_to_back_give_one_sms(256).await;
}

/// Five copies of each of forty requests, interleaved (1, 2, … 40, 1, 2, …).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_copies_of_forty_requests_give_one_sms_each() {
    let pipeline = Pipeline::start(256).await;
    let mut bodies = Vec::new();
    for _ in 0..5 {
        for i in 0..40 {
            bodies.push(body(&format!("mix-{i}"), &format!("+1415555{:04}", 3000 + i)));
        }
    }
    publish_back_to_back(&pipeline.topology, &bodies).await;
    let sms = pipeline.sms_per_request(200).await;
    assert_eq!(sms.len(), 40, "every request delivered");
    assert!(sms.values().all(|n| *n == 1), "one SMS per request: {sms:?}");
    assert_eq!((pipeline.requests("accepted").await, pipeline.requests("duplicate").await), (40, 160));
    pipeline.stop().await;
}

/// An application retrying `POST /v1/otp` twenty times at once: each
/// attempt is accepted (202, the same request id), one code, one SMS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_posts_of_one_request_give_one_sms() {
    let pipeline = Pipeline::start(64).await;
    let http = reqwest::Client::new();
    let request = serde_json::json!({ "request_id": "post-20", "phone": "+14155550123" });
    let posts: Vec<_> = (0..20)
        .map(|_| {
            let call = http.post(format!("{}/v1/otp", pipeline.base)).bearer_auth(API_KEY).json(&request).send();
            tokio::spawn(async move { call.await.unwrap().status().as_u16() })
        })
        .collect();
    let mut statuses = Vec::new();
    for post in posts {
        statuses.push(post.await.unwrap());
    }
    let accepted = statuses.iter().filter(|s| **s == 202).count() as u64;
    assert!(accepted >= 1, "statuses: {statuses:?}");
    let sms = pipeline.sms_per_request(accepted).await;
    assert_eq!(sms, BTreeMap::from([("post-20".to_owned(), 1)]), "one SMS for {accepted} accepted posts");
    assert_eq!(pipeline.issued_lines("post-20"), 1, "one code issued");
    pipeline.stop().await;
}
