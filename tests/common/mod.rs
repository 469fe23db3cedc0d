//! Test harness: each test gets its own queue prefix, its own temp dir for
//! sled, a loopback fake carrier (wiremock) and the real RabbitMQ.
#![allow(dead_code)]

pub mod process;

use futures_lite::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use otp_pipeline::app::{GeneratorApp, SenderApp};
use otp_pipeline::broker::Topology;
use otp_pipeline::client;
use otp_pipeline::config::{Config, RouteEntry, TwilioConfig, VonageConfig};
use otp_pipeline::domain::{Clock, Event, ManualClock, RawRequest, Reply};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

pub const API_KEY: &str = "test-key-0123456789abcdef";
pub const PHONE: &str = "+14155550123";
const WAIT: Duration = Duration::from_secs(15);

/// The AMQP URL tests use (`OTP_TEST_AMQP_URL` overrides).
pub fn amqp_url() -> String {
    std::env::var("OTP_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Fails the test loudly (never skips it) when RabbitMQ is not reachable.
pub async fn require_rabbitmq() {
    if let Err(e) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await {
        panic!(
            "RabbitMQ is not reachable at {} ({e}). Start it with `rabbitmq-server -detached` \
             (then `rabbitmqctl await_startup`), or point OTP_TEST_AMQP_URL at one.",
            amqp_url()
        );
    }
}

/// A running pipeline under a private prefix.
pub struct TestEnv {
    pub prefix: String,
    pub config: Config,
    pub carrier: MockServer,
    pub clock: ManualClock,
    pub sender_clock: ManualClock,
    pub http: reqwest::Client,
    pub addr: SocketAddr,
    pub topology: Topology,
    /// Base URL of the sender's HTTP port (ops and receipt routes).
    pub sender_url: String,
    sender_listener: Option<tokio::net::TcpListener>,
    dir: tempfile::TempDir,
    generator: Option<(CancellationToken, JoinHandle<()>)>,
    sender: Option<(CancellationToken, JoinHandle<()>)>,
}

impl TestEnv {
    /// Starts a generator and a webhook sender whose fake carrier accepts every SMS.
    pub async fn start() -> Self {
        let env = Self::start_bare().await;
        env.accept_sms().await;
        env
    }

    /// Starts a generator and a webhook sender; the fake carrier has no mocks
    /// yet (it answers 404) until the test mounts some.
    pub async fn start_bare() -> Self {
        Self::start_with(|_, _| {}).await
    }

    /// Like `start_bare`, letting the test change the configuration first. The
    /// closure also gets the sender's base URL (for receipt callback URLs).
    pub async fn start_with(customize: impl FnOnce(&mut Config, &str)) -> Self {
        require_rabbitmq().await;
        let carrier = MockServer::start().await;
        let prefix = format!("t-{}.", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.broker.url = amqp_url();
        config.broker.prefix = prefix.clone();
        config.broker.queue_expires_ms = Some(300_000);
        config.store.data_dir = dir.path().join("data");
        config.http.listen = "127.0.0.1:0".parse().unwrap();
        config.http.api_keys = vec![API_KEY.into()];
        config.routing.default = vec![otp_pipeline::config::RouteEntry::Name("webhook".into())];
        config.sender.retry.min_delay_ms = 10;
        config.sender.retry.max_delay_ms = 50;
        config.carriers.webhook.url = format!("{}/sms", carrier.uri());
        config.carriers.webhook.token = Some("carrier-token".into());
        let sender_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sender_url = format!("http://{}", sender_listener.local_addr().unwrap());
        customize(&mut config, &sender_url);
        let topology = Topology::new(&prefix, None);
        let mut env = Self {
            sender_listener: Some(sender_listener),
            sender_url,
            prefix,
            config,
            carrier,
            clock: ManualClock::new(),
            sender_clock: ManualClock::new(),
            http: reqwest::Client::new(),
            addr: "127.0.0.1:0".parse().unwrap(),
            topology,
            dir,
            generator: None,
            sender: None,
        };
        env.start_generator().await;
        env.start_sender().await;
        env
    }

    /// Mounts `mock` on the fake carrier; mocks win over `accept_sms` by priority.
    pub async fn mount(&self, mock: Mock) {
        mock.mount(&self.carrier).await;
    }

    /// The fake carrier answers 200 with a message id (lowest priority).
    pub async fn accept_sms(&self) {
        Mock::given(method("POST"))
            .and(path("/sms"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "carrier-msg-1"})))
            .with_priority(10)
            .mount(&self.carrier)
            .await;
    }

    pub async fn start_generator(&mut self) {
        let clock: Arc<dyn Clock> = Arc::new(self.clock.clone());
        let app = GeneratorApp::build(&self.config, clock).await.expect("generator builds");
        self.addr = app.local_addr();
        let broker = app.broker();
        let token = CancellationToken::new();
        let handle = tokio::spawn({
            let token = token.clone();
            async move { app.run(token).await.expect("generator runs") }
        });
        assert!(broker.wait_connected(WAIT).await, "generator did not connect to RabbitMQ");
        self.generator = Some((token, handle));
    }

    pub async fn stop_generator(&mut self) {
        if let Some((token, handle)) = self.generator.take() {
            token.cancel();
            handle.await.unwrap();
        }
    }

    pub async fn start_sender(&mut self) {
        let clock: Arc<dyn Clock> = Arc::new(self.sender_clock.clone());
        let listener = self.sender_listener.take();
        let app = SenderApp::build_on(&self.config, clock, listener).expect("sender builds");
        let broker = app.broker();
        let token = CancellationToken::new();
        let handle = tokio::spawn({
            let token = token.clone();
            async move { app.run(token).await.expect("sender runs") }
        });
        assert!(broker.wait_connected(WAIT).await, "sender did not connect to RabbitMQ");
        self.sender = Some((token, handle));
    }

    pub fn request(&self, request_id: &str) -> RawRequest {
        RawRequest { request_id: request_id.into(), phone: PHONE.into(), ..Default::default() }
    }

    /// Publishes like a producer (as the test broker's own user, not
    /// necessarily the service's) and waits for the reply.
    pub async fn publish(&self, request: &RawRequest) -> Reply {
        client::publish(&amqp_url(), &self.topology, request, Some(WAIT)).await.expect("publish").expect("a reply")
    }

    /// Publishes raw bytes without waiting for a reply.
    pub async fn publish_bytes(&self, body: &[u8]) {
        client::publish_bytes(&amqp_url(), &self.topology, body, None).await.expect("publish");
    }

    pub fn url(&self, route: &str) -> String {
        format!("http://{}{route}", self.addr)
    }

    /// `POST /v1/verify`, returning status and JSON body.
    pub async fn verify(&self, phone: &str, code: &str) -> (u16, Value) {
        self.post("/v1/verify", json!({"phone": phone, "code": code})).await
    }

    pub async fn post(&self, route: &str, body: Value) -> (u16, Value) {
        let r = self.http.post(self.url(route)).bearer_auth(API_KEY).json(&body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, route: &str) -> (u16, Value) {
        let r = self.http.get(self.url(route)).bearer_auth(API_KEY).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// SMS bodies the fake carrier accepted (2xx answers only are not
    /// distinguished here: every POST it received).
    pub async fn carrier_posts(&self) -> Vec<Value> {
        self.carrier
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect()
    }

    /// Waits until the carrier has received at least `n` POSTs.
    pub async fn wait_posts(&self, n: usize) -> Vec<Value> {
        let posts = eventually(|| async {
            let posts = self.carrier_posts().await;
            (posts.len() >= n).then_some(posts)
        })
        .await;
        posts.unwrap_or_else(|| panic!("the carrier did not receive {n} SMS"))
    }

    /// Waits for the SMS of `request_id` and returns its code.
    pub async fn code_for(&self, request_id: &str) -> String {
        let found = eventually(|| async {
            self.carrier_posts()
                .await
                .into_iter()
                .find(|p| p["request_id"] == request_id)
                .map(|p| code_in(p["text"].as_str().unwrap()))
        })
        .await;
        found.unwrap_or_else(|| panic!("no SMS for {request_id}"))
    }

    /// A queue bound to every event of this prefix.
    pub async fn event_tap(&self) -> EventTap {
        let (connection, channel) = open_channel().await;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.name().clone(),
                self.topology.exchange.as_str().into(),
                "event.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "tap".into(),
                BasicConsumeOptions { no_ack: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap();
        EventTap { _connection: connection, consumer, seen: Vec::new() }
    }

    /// Takes every message now in the dead-letter queue: (body, x-otp-error, x-otp-reason).
    pub async fn dead_letters(&self) -> Vec<(Vec<u8>, String, String)> {
        let (connection, channel) = open_channel().await;
        let mut out = Vec::new();
        while let Some(m) =
            channel.basic_get(self.topology.dead.as_str().into(), BasicGetOptions { no_ack: true }).await.unwrap()
        {
            let header = |name: &str| {
                m.delivery
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get(name).cloned())
                    .map(|v| match v {
                        AMQPValue::LongString(s) => s.to_string(),
                        other => format!("{other:?}"),
                    })
                    .unwrap_or_default()
            };
            out.push((m.delivery.data.clone(), header("x-otp-error"), header("x-otp-reason")));
        }
        let _ = connection.close(200, "bye".into()).await;
        out
    }

    /// Messages waiting in `queue` (ready, not unacked).
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        let (connection, channel) = open_channel().await;
        let q = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = connection.close(200, "bye".into()).await;
        q.message_count()
    }

    /// Stops everything and deletes this test's queues and exchanges.
    pub async fn teardown(mut self) {
        if let Some((token, handle)) = self.sender.take() {
            token.cancel();
            handle.await.unwrap();
        }
        self.stop_generator().await;
        let (connection, channel) = open_channel().await;
        let t = &self.topology;
        for q in [&t.requests, &t.deliveries, &t.status, &t.dead] {
            channel.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await.unwrap();
        }
        for x in [&t.exchange, &t.internal, &t.dlx] {
            channel.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()).await.unwrap();
        }
        let _ = connection.close(200, "bye".into()).await;
    }

    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// Publishes `body` on the internal exchange as the service does,
    /// sealed with this deployment's key (`forged`: with no seal at all).
    pub async fn publish_internal(&self, routing_key: &str, body: &[u8], sealed: bool) {
        let mut headers = FieldTable::default();
        if sealed {
            let ring = otp_pipeline::secrets::seal_ring(&self.config.broker, &self.data_dir()).unwrap();
            let seal = ring.seal(routing_key, None, body);
            headers.insert(Topology::SEAL_HEADER.into(), AMQPValue::LongString(seal.into()));
        }
        let properties = lapin::BasicProperties::default().with_delivery_mode(2).with_headers(headers);
        let confirm = publish_confirmed(&amqp_url(), &self.topology.internal, routing_key, body, properties, false)
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }
}

/// Publishes one message as `url`'s user on a fresh connection, with a
/// confirm (and `mandatory` if asked): the broker's verdict, or the channel
/// error it closed the channel with (e.g. `ACCESS_REFUSED`).
pub async fn publish_confirmed(
    url: &str,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: lapin::BasicProperties,
    mandatory: bool,
) -> Result<lapin::Confirmation, lapin::Error> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    let options = lapin::options::BasicPublishOptions { mandatory, ..Default::default() };
    let published =
        async { channel.basic_publish(exchange.into(), routing_key.into(), options, body, properties).await?.await };
    let result = published.await;
    let _ = connection.close(200, "bye".into()).await;
    result
}

/// A fresh connection and channel to the test broker.
pub async fn open_channel() -> (Connection, lapin::Channel) {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    (connection, channel)
}

/// Deletes a prefix's queues and exchanges.
pub async fn delete_topology(t: &Topology) {
    let (connection, channel) = open_channel().await;
    for q in [&t.requests, &t.deliveries, &t.status, &t.dead] {
        channel.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await.unwrap();
    }
    for x in [&t.exchange, &t.internal, &t.dlx] {
        channel.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()).await.unwrap();
    }
    let _ = connection.close(200, "bye".into()).await;
}

/// Events seen on the exchange.
pub struct EventTap {
    _connection: Connection,
    consumer: lapin::Consumer,
    pub seen: Vec<Event>,
}

impl EventTap {
    /// Waits for an event of `status` for `request_id`.
    pub async fn expect(&mut self, status: &str, request_id: &str) -> Event {
        let what = format!("event.{status} for {request_id}");
        self.expect_matching(&what, |e| e.status.as_str() == status && e.request_id.as_deref() == Some(request_id))
            .await
    }

    /// Waits for an event `wanted` accepts (seen before or arriving within 15 s).
    pub async fn expect_matching(&mut self, what: &str, wanted: impl Fn(&Event) -> bool) -> Event {
        if let Some(e) = self.seen.iter().find(|e| wanted(e)) {
            return e.clone();
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.consumer.next())
                .await
                .unwrap_or_else(|_| panic!("no {what}; saw {:?}", self.seen));
            let delivery = next.unwrap().unwrap();
            let event: Event = serde_json::from_slice(&delivery.data).unwrap();
            self.seen.push(event.clone());
            if wanted(&event) {
                return event;
            }
        }
    }
}

/// The code in an SMS text: its first run of 4 to 10 digits.
pub fn code_in(text: &str) -> String {
    text.split(|c: char| !c.is_ascii_digit())
        .find(|run| (4..=10).contains(&run.len()))
        .unwrap_or_else(|| panic!("no code in {text:?}"))
        .to_owned()
}

/// Polls `check` every 20 ms until it returns `Some`, for at most 15 s.
pub async fn eventually<T, F, Fut>(mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Closes this test's connections from the broker's side, as a broker
/// restart or a network cut would.
pub fn kill_connections(prefix: &str) -> usize {
    let list = std::process::Command::new("rabbitmqctl")
        .args(["list_connections", "pid", "client_properties", "--quiet", "--no-table-headers"])
        .output()
        .expect("rabbitmqctl runs (it ships with RabbitMQ)");
    let text = String::from_utf8_lossy(&list.stdout);
    let pids: Vec<&str> =
        text.lines().filter(|l| l.contains(prefix)).filter_map(|l| l.split_whitespace().next()).collect();
    for pid in &pids {
        std::process::Command::new("rabbitmqctl")
            .args(["close_connection", pid, "test: connection killed"])
            .output()
            .unwrap();
    }
    pids.len()
}

pub const TWILIO_TOKEN: &str = "twilio-auth-token-for-tests";

/// Twilio on `base_url` (a fake carrier), receipts to this sender.
pub fn twilio(base_url: &str, sender_url: &str) -> TwilioConfig {
    let status_callback = Some(format!("{sender_url}/receipts/twilio"));
    TwilioConfig { status_callback, ..TwilioConfig::sandbox(base_url, TWILIO_TOKEN) }
}

/// Vonage on `base_url`, receipts to this sender with token `vonage-token`.
pub fn vonage(base_url: &str, sender_url: &str) -> VonageConfig {
    VonageConfig {
        callback: Some(format!("{sender_url}/receipts/vonage?token=vonage-token")),
        receipt_token: Some("vonage-token".into()),
        ..VonageConfig::sandbox(base_url)
    }
}

/// Routing entries `(carrier, weight)`.
pub fn route(entries: &[(&str, u32)]) -> Vec<RouteEntry> {
    entries.iter().map(|(c, w)| RouteEntry::Weighted { carrier: (*c).into(), weight: *w }).collect()
}

/// The RabbitMQ user a restricted producer gets, as the README's trust
/// boundaries describe it: write on the public exchange (`otp`, under any
/// prefix) and nothing else — no configure, no read.
pub const PRODUCER_USER: &str = "otp-test-producer";

/// An AMQP URL as that producer user (created with `rabbitmqctl` once per
/// test process; the broker must run on this machine).
pub fn producer_url() -> String {
    static READY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    READY.get_or_init(|| rabbit_user(PRODUCER_USER, ["^$", "^(t-[0-9a-f]+\\.)?otp$", "^$"])).clone()
}

/// The service's user as the README's trust boundaries describe it, for
/// test prefixes: everything named `otp…`, and the default exchange (replies).
pub const SERVICE_USER: &str = "otp-test-service";

/// An AMQP URL as that service user.
pub fn service_url() -> String {
    static READY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    const OURS: &str = "^(t-[0-9a-f]+\\.)?otp(\\..+)?$";
    let write = format!("{OURS}|^amq\\.default$");
    READY.get_or_init(|| rabbit_user(SERVICE_USER, [OURS, &write, OURS])).clone()
}

/// Runs `rabbitmqctl` (it ships with RabbitMQ); whether it succeeded, and its stderr.
pub fn rabbitmqctl(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("rabbitmqctl").args(args).output().expect("run rabbitmqctl");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Creates (or resets) `user` with `[configure, write, read]` permissions on
/// vhost `/`; its AMQP URL.
fn rabbit_user(user: &str, permissions: [&str; 3]) -> String {
    const PASSWORD: &str = "test-user-secret-0123456789";
    let (added, error) = rabbitmqctl(&["add_user", user, PASSWORD]);
    if !added {
        assert!(error.contains("already exists"), "rabbitmqctl add_user: {error}");
        assert!(rabbitmqctl(&["change_password", user, PASSWORD]).0, "rabbitmqctl change_password");
    }
    let [configure, write, read] = permissions;
    let (set, error) = rabbitmqctl(&["set_permissions", "-p", "/", user, configure, write, read]);
    assert!(set, "rabbitmqctl set_permissions: {error}");
    format!("amqp://{user}:{PASSWORD}@127.0.0.1:5672/%2f")
}
