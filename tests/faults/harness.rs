//! Support for `tests/faults.rs`: real `otp-pipeline` processes (killed on
//! drop, logs in files), the in-process fake carrier, a paced publisher that
//! survives connection loss, RabbitMQ inspection through `rabbitmqctl`, and
//! the end-of-test accounting against the fake carrier's record.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Confirmation, Connection, ConnectionProperties};
use otp_fake_carrier::{FakeCarrier, FakeCarrierConfig, ReceivedSms};
use otp_pipeline::broker::{Topology, json_properties};
use otp_pipeline::domain::RawRequest;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// The applications' API key the generators are configured with.
pub const API_KEY: &str = "fault-test-key-0123456789abcdef";
/// How long a process may take to answer 200 on `/readyz`.
const READY_WITHIN: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Knobs and serialisation.

/// `name` from the environment, parsed, or `default`.
pub fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} does not parse")),
        Err(_) => default,
    }
}

static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Taken at the start of every test: they kill and restart processes and
/// measure memory, so they never overlap (a failed test releases it as well).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    LOCK.lock().await
}

/// A free loopback port (bound, read, released: the process binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Resident set size of process `pid`, KiB (`VmRSS` of /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------
// Processes.

/// A running `otp-pipeline` child: SIGKILLed and reaped on drop; its standard
/// output and error go to a file in the test's temp dir.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
    /// Its HTTP port (`http.listen` of a generator, `sender.listen` of a sender).
    pub port: u16,
    exit: Option<ExitStatus>,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            self.exit = child.wait().ok();
        }
    }

    /// SIGTERM, then reap within `within` (SIGKILL after). Returns the exit status.
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.exit = Some(status);
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                self.exit = child.wait().ok();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status if it ended by itself.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        match self.child.as_mut()?.try_wait() {
            Ok(Some(status)) => {
                self.exit = Some(status);
                self.child = None;
                Some(status)
            }
            _ => None,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A snapshot of a `/metrics` page.
pub struct Metrics(pub String);

impl Metrics {
    /// The sum of every sample of `name` whose labels contain each of `labels`
    /// (e.g. `carrier="twilio"`); None when no sample matches.
    pub fn sum(&self, name: &str, labels: &[&str]) -> Option<f64> {
        let mut found = None;
        for line in self.0.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest),
                None => (series, ""),
            };
            if metric != name || !labels.iter().all(|l| label_text.contains(l)) {
                continue;
            }
            if let Ok(v) = value.parse::<f64>() {
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }
}

// ---------------------------------------------------------------------------
// The pipeline under test.

/// Settings written to the processes' configuration file.
#[derive(Clone, Debug)]
pub struct Settings {
    pub prefetch: u16,
    pub breaker_threshold: u32,
    pub breaker_open_ms: u64,
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
    pub max_retries: usize,
    pub carrier_timeout_ms: u64,
    /// `routing.default`, TOML.
    pub routing: String,
}

/// Twilio's API first, Vonage's as failover only.
pub const TWILIO_THEN_VONAGE: &str = r#"[{ carrier = "twilio", weight = 1 }, { carrier = "vonage", weight = 0 }]"#;
/// Vonage's API first, Twilio's as failover only.
pub const VONAGE_THEN_TWILIO: &str = r#"[{ carrier = "vonage", weight = 1 }, { carrier = "twilio", weight = 0 }]"#;

impl Default for Settings {
    fn default() -> Self {
        Self {
            prefetch: 64,
            breaker_threshold: 5,
            breaker_open_ms: 30_000,
            retry_min_ms: 50,
            retry_max_ms: 500,
            max_retries: 2,
            carrier_timeout_ms: 5_000,
            routing: TWILIO_THEN_VONAGE.into(),
        }
    }
}

/// One test's world: a private queue prefix, a temp dir (data, config,
/// logs), the fake carrier, and the processes.
pub struct Pipeline {
    pub name: &'static str,
    pub prefix: String,
    pub topology: Topology,
    pub settings: Settings,
    pub carrier: FakeCarrier,
    pub http: reqwest::Client,
    pub started: Instant,
    dir: Option<tempfile::TempDir>,
    config: PathBuf,
    pub generator: Option<Proc>,
    pub senders: Vec<Proc>,
    /// Processes that were killed, kept for their logs.
    pub gone: Vec<Proc>,
    spawned: usize,
}

impl Pipeline {
    /// Starts the fake carrier and writes the configuration; spawns nothing yet.
    pub async fn new(name: &'static str, carrier: FakeCarrierConfig, settings: Settings) -> Self {
        super::common::require_rabbitmq().await;
        let carrier = FakeCarrier::start("127.0.0.1:0".parse().unwrap(), carrier).await.expect("fake carrier starts");
        let prefix = format!("t-{}.", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let dir = tempfile::Builder::new().prefix("otp-faults-").tempdir().unwrap();
        let config = dir.path().join("otp.toml");
        let pipeline = Self {
            name,
            topology: Topology::new(&prefix, None),
            prefix,
            settings,
            carrier,
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap(),
            started: Instant::now(),
            dir: Some(dir),
            config,
            generator: None,
            senders: Vec::new(),
            gone: Vec::new(),
            spawned: 0,
        };
        std::fs::write(&pipeline.config, pipeline.toml()).unwrap();
        pipeline
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    fn toml(&self) -> String {
        let s = &self.settings;
        let base = self.carrier.base_url();
        format!(
            r#"# written by tests/faults.rs
[broker]
url = "{url}"
prefix = "{prefix}"
prefetch = {prefetch}
queue_expires_ms = 120000

[store]
data_dir = "{data}"

[http]
listen = "127.0.0.1:0"
api_keys = ["{API_KEY}"]
rate_per_key_per_sec = 0

[sender]
listen = "127.0.0.1:0"

[sender.retry]
min_delay_ms = {retry_min}
max_delay_ms = {retry_max}
max_retries = {max_retries}

[sender.breaker]
failure_threshold = {threshold}
open_ms = {open_ms}

[routing]
default = {routing}

[carriers.twilio]
base_url = "{base}"
account_sid = "ACfaulttest"
auth_token = "twilio-auth-token-for-fault-tests"
from = "+15005550006"
timeout_ms = {timeout}

[carriers.vonage]
base_url = "{base}"
api_key = "vonage-key"
api_secret = "vonage-secret"
from = "OTP"
timeout_ms = {timeout}

[limits.pumping]
# Thousands of numbers share a few prefixes here: the pumping guard would quarantine them.
prefix_digits = 0
"#,
            url = super::common::amqp_url(),
            prefix = self.prefix,
            prefetch = s.prefetch,
            data = self.dir().join("data").display(),
            retry_min = s.retry_min_ms,
            retry_max = s.retry_max_ms,
            max_retries = s.max_retries,
            threshold = s.breaker_threshold,
            open_ms = s.breaker_open_ms,
            routing = s.routing,
            timeout = s.carrier_timeout_ms,
        )
    }

    /// Spawns `otp-pipeline <command> --config <file>` with `env` on top.
    /// `OTP_*` variables of the test's own environment (OTP_FAULT_*,
    /// OTP_TEST_AMQP_URL…) are not passed on: the config loader refuses
    /// unknown `OTP_` keys.
    fn spawn(&mut self, label: &str, command: &str, port: u16, env: &[(&str, String)]) -> Proc {
        self.spawned += 1;
        let log = self.dir().join(format!("{:02}-{label}.log", self.spawned));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_otp-pipeline"));
        cmd.arg("--config").arg(&self.config).arg(command);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("OTP_") {
                cmd.env_remove(&key);
            }
        }
        cmd.env("RUST_LOG", "info").env("NO_COLOR", "1").env("RUST_BACKTRACE", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(file.try_clone().unwrap()).stderr(file);
        let child = cmd.spawn().expect("spawn otp-pipeline");
        Proc { name: label.to_owned(), child: Some(child), log, port, exit: None }
    }

    /// Starts the generator (on the same data dir every time) and waits until it is ready.
    pub async fn start_generator(&mut self) {
        assert!(self.generator.is_none(), "one generator per data dir");
        let port = free_port();
        let earlier = self.gone.iter().filter(|p| p.name.starts_with("generator")).count();
        let label = if earlier == 0 { "generator".to_owned() } else { format!("generator-{}", earlier + 1) };
        let mut generator = self.spawn(&label, "generator", port, &[("OTP_HTTP__LISTEN", format!("127.0.0.1:{port}"))]);
        self.wait_ready(&mut generator).await;
        self.generator = Some(generator);
    }

    /// Starts a sender with `routing` (None: the settings' route) and waits until it is ready.
    pub async fn start_sender(&mut self, label: &str, routing: Option<&str>) -> usize {
        let port = free_port();
        let mut env = vec![("OTP_SENDER__LISTEN", format!("127.0.0.1:{port}"))];
        if let Some(routing) = routing {
            env.push(("OTP_ROUTING__DEFAULT", routing.replace(['\n', ' '], "")));
        }
        let mut sender = self.spawn(label, "sender", port, &env);
        self.wait_ready(&mut sender).await;
        self.senders.push(sender);
        self.senders.len() - 1
    }

    async fn wait_ready(&self, proc: &mut Proc) {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(status) = proc.exited() {
                panic!("{} exited ({status}) before it was ready; log:\n{}", proc.name, proc.log_text());
            }
            if let Ok(r) = self.http.get(proc.url("/readyz")).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready within {READY_WITHIN:?}; log:\n{}",
                proc.name,
                proc.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether `proc` answers 200 on `/readyz` within `within`.
    pub async fn ready_within(&self, proc: &Proc, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(r) = self.http.get(proc.url("/readyz")).send().await
                && r.status() == 200
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// SIGKILLs the generator; it is kept (for its log) in `gone`.
    pub fn kill_generator(&mut self) {
        let mut generator = self.generator.take().expect("a generator");
        generator.kill();
        self.gone.push(generator);
    }

    /// SIGKILLs sender `index`; it is kept (for its log) in `gone`.
    pub fn kill_sender(&mut self, index: usize) -> Proc {
        let mut sender = self.senders.remove(index);
        sender.kill();
        sender
    }

    pub async fn metrics(&self, proc: &Proc) -> Metrics {
        let r = self.http.get(proc.url("/metrics")).send().await.expect("GET /metrics");
        Metrics(r.text().await.unwrap())
    }

    /// Statuses the generator reports (`GET /v1/otp/{id}`) for `ids`, 32 at a time.
    pub async fn statuses(&self, ids: &[String]) -> BTreeMap<String, Vec<String>> {
        let generator = self.generator.as_ref().expect("a generator");
        let mut by_status: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for chunk in ids.chunks(32) {
            let mut set = JoinSet::new();
            for id in chunk {
                let request = self.http.get(generator.url(&format!("/v1/otp/{id}"))).bearer_auth(API_KEY);
                let id = id.clone();
                set.spawn(async move {
                    let status = match request.send().await {
                        Ok(r) if r.status() == 200 => r
                            .json::<serde_json::Value>()
                            .await
                            .ok()
                            .and_then(|v| v["status"].as_str().map(str::to_owned))
                            .unwrap_or_else(|| "unreadable".into()),
                        Ok(r) => format!("http-{}", r.status().as_u16()),
                        Err(e) => format!("error: {e}"),
                    };
                    (id, status)
                });
            }
            while let Some(r) = set.join_next().await {
                let (id, status) = r.unwrap();
                by_status.entry(status).or_default().push(id);
            }
        }
        by_status
    }

    /// Waits (at most `within`) until the generator reports every id as sent
    /// (or delivered); returns the last count per status.
    pub async fn wait_statuses_sent(&self, ids: &[String], within: Duration) -> BTreeMap<String, usize> {
        let deadline = Instant::now() + within;
        loop {
            let statuses = self.statuses(ids).await;
            let done = statuses.keys().all(|s| s == "sent" || s == "delivered");
            let counts = statuses.iter().map(|(s, v)| (s.clone(), v.len())).collect();
            if done || Instant::now() > deadline {
                if !done {
                    let generator = self.generator.as_ref().expect("a generator");
                    for (status, ids) in statuses.iter().filter(|(s, _)| *s != "sent" && *s != "delivered") {
                        println!(
                            "  [{}] status {status}: {} request(s), e.g. {:?}",
                            self.name,
                            ids.len(),
                            &ids[..ids.len().min(10)]
                        );
                        for id in ids.iter().take(3) {
                            let url = generator.url(&format!("/v1/otp/{id}"));
                            if let Ok(r) = self.http.get(url).bearer_auth(API_KEY).send().await {
                                let body = r.text().await.unwrap_or_default();
                                println!("  [{}]   GET /v1/otp/{id}: {body}", self.name);
                            }
                        }
                    }
                }
                return counts;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Stops what still runs (SIGTERM, then SIGKILL) and deletes the queues.
    pub async fn finish(mut self) {
        for mut sender in self.senders.drain(..) {
            sender.terminate(Duration::from_secs(10));
            self.gone.push(sender);
        }
        if let Some(mut generator) = self.generator.take() {
            generator.terminate(Duration::from_secs(10));
            self.gone.push(generator);
        }
        super::common::delete_topology(&self.topology).await;
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            if knob("OTP_FAULT_KEEP", 0) == 1 {
                let dir = self.dir.take().unwrap().keep();
                println!("  [{}] OTP_FAULT_KEEP=1: logs and data kept in {}", self.name, dir.display());
            }
            return;
        }
        // A failed test: show the end of every log and keep the temp dir.
        let dir = self.dir.take().unwrap().keep();
        eprintln!("\n===== {} failed; logs and data kept in {} =====", self.name, dir.display());
        let procs = self.generator.iter().chain(self.senders.iter()).chain(self.gone.iter());
        for proc in procs {
            let text = proc.log_text();
            let problems: Vec<&str> = text
                .lines()
                .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("panicked"))
                .collect();
            eprintln!(
                "----- {} ({}): {} warning/error line(s), the first 30 -----\n{}",
                proc.name,
                proc.log.display(),
                problems.len(),
                problems[..problems.len().min(30)].join("\n")
            );
            eprintln!("----- {}: last 20 lines -----\n{}", proc.name, proc.log_tail(20));
        }
    }
}

// ---------------------------------------------------------------------------
// The load.

/// Calling codes + area codes the test numbers are spread over (555 exchange).
const AREAS: [&str; 10] = ["1415", "1212", "1646", "1718", "1312", "1617", "1206", "1303", "1512", "1702"];

/// `n` requests, each with its own request id and phone number.
pub struct Load {
    pub requests: Vec<RawRequest>,
    by_phone: HashMap<String, usize>,
}

impl Load {
    pub fn new(tag: &str, n: usize) -> Self {
        assert!(n <= AREAS.len() * 10_000, "at most {} distinct numbers", AREAS.len() * 10_000);
        let requests: Vec<RawRequest> = (0..n)
            .map(|i| RawRequest {
                request_id: format!("{tag}-{i:05}"),
                phone: format!("+{}555{:04}", AREAS[i % AREAS.len()], i / AREAS.len()),
                ..Default::default()
            })
            .collect();
        let by_phone = requests.iter().enumerate().map(|(i, r)| (r.phone.clone(), i)).collect();
        Self { requests, by_phone }
    }

    pub fn len(&self) -> usize {
        self.requests.len()
    }

    pub fn index_of(&self, phone: &str) -> Option<usize> {
        self.by_phone.get(phone).copied()
    }

    pub fn bodies(&self) -> Vec<Vec<u8>> {
        self.requests.iter().map(|r| serde_json::to_vec(r).unwrap()).collect()
    }

    pub fn ids(&self, which: &[usize]) -> Vec<String> {
        which.iter().map(|&i| self.requests[i].request_id.clone()).collect()
    }
}

// ---------------------------------------------------------------------------
// The publisher.

/// What the publisher did.
#[derive(Debug)]
pub struct PublishReport {
    /// When the broker confirmed each request (None: never, within the deadline).
    pub confirmed_at: Vec<Option<Duration>>,
    /// Publishes repeated because a confirm was lost, negative or unroutable.
    pub republished: usize,
    /// Connections opened (1 when nothing broke).
    pub connections: usize,
    /// A sample of the errors seen.
    pub errors: Vec<String>,
    pub elapsed: Duration,
}

impl PublishReport {
    pub fn confirmed(&self) -> Vec<usize> {
        (0..self.confirmed_at.len()).filter(|&i| self.confirmed_at[i].is_some()).collect()
    }
}

/// A producer as another system would run one: one long-lived connection
/// (named with the test's prefix, so cutting the prefix's connections cuts it
/// too), publisher confirms, a fixed rate, and every message whose confirm
/// did not arrive (connection lost, nack, unroutable) published again until
/// the broker confirms it. A re-published request is a duplicate the
/// generator recognises by its request id.
pub struct Publisher {
    /// Requests handed to the broker so far (first attempts).
    pub sent: Arc<AtomicUsize>,
    handle: tokio::task::JoinHandle<PublishReport>,
}

impl Publisher {
    /// Publishes `bodies` at `rate` per second (0: as fast as the broker takes them).
    pub fn start(prefix: &str, topology: &Topology, bodies: Vec<Vec<u8>>, rate: f64, deadline: Duration) -> Self {
        let (sent, confirmed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let name = format!("otp-fault-publisher ({prefix})");
        let handle = tokio::spawn(publish(
            name,
            topology.exchange.clone(),
            bodies,
            rate,
            deadline,
            sent.clone(),
            confirmed.clone(),
        ));
        Self { sent, handle }
    }

    /// Waits until at least `n` requests were handed to the broker.
    pub async fn wait_sent(&self, n: usize) {
        while self.sent.load(Ordering::SeqCst) < n && !self.handle.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    pub async fn finish(self) -> PublishReport {
        self.handle.await.expect("publisher task")
    }
}

/// How long a confirm may take before the message counts as lost (and the
/// connection as stuck).
const CONFIRM_WITHIN: Duration = Duration::from_secs(10);

type ConfirmResult = (usize, u64, Result<Confirmation, String>);

/// The publisher's bookkeeping.
struct Book {
    started: Instant,
    confirmed_at: Vec<Option<Duration>>,
    confirmed: Arc<AtomicUsize>,
    /// To publish again, before fresh ones.
    again: VecDeque<usize>,
    /// Published on the current connection, confirm pending.
    in_flight: HashSet<usize>,
    errors: Vec<String>,
}

impl Book {
    fn note(&mut self, e: impl std::fmt::Display) {
        if self.errors.len() < 20 {
            self.errors.push(format!("{:>6} ms: {e}", self.started.elapsed().as_millis()));
        }
    }

    /// The connection is unusable: everything unconfirmed on it is published again.
    fn lose(&mut self, link: &mut Option<(Connection, lapin::Channel)>) {
        *link = None;
        let mut lost: Vec<usize> = self.in_flight.drain().collect();
        lost.sort_unstable();
        self.again.extend(lost);
    }

    fn settle(
        &mut self,
        result: Result<ConfirmResult, tokio::task::JoinError>,
        generation: u64,
        link: &mut Option<(Connection, lapin::Channel)>,
    ) {
        let Ok((index, g, outcome)) = result else { return };
        if self.confirmed_at[index].is_some() {
            return;
        }
        match outcome {
            Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => {
                self.confirmed_at[index] = Some(self.started.elapsed());
                self.confirmed.fetch_add(1, Ordering::SeqCst);
                self.in_flight.remove(&index);
            }
            Ok(other) => {
                self.note(format!("not confirmed: {other:?}"));
                if self.in_flight.remove(&index) {
                    self.again.push_back(index);
                }
            }
            Err(e) => {
                self.note(format!("confirm: {e}"));
                if g == generation && link.is_some() {
                    self.lose(link);
                } else if self.in_flight.remove(&index) {
                    self.again.push_back(index);
                }
            }
        }
    }
}

async fn publish(
    name: String,
    exchange: String,
    bodies: Vec<Vec<u8>>,
    rate: f64,
    deadline: Duration,
    sent: Arc<AtomicUsize>,
    confirmed: Arc<AtomicUsize>,
) -> PublishReport {
    let n = bodies.len();
    let mut book = Book {
        started: Instant::now(),
        confirmed_at: vec![None; n],
        confirmed,
        again: VecDeque::new(),
        in_flight: HashSet::new(),
        errors: Vec::new(),
    };
    let mut fresh: VecDeque<usize> = (0..n).collect();
    let mut confirms: JoinSet<ConfirmResult> = JoinSet::new();
    let (mut republished, mut connections) = (0, 0);
    let mut link: Option<(Connection, lapin::Channel)> = None;
    let mut generation = 0u64;
    let period = if rate > 0.0 { Duration::from_secs_f64(1.0 / rate) } else { Duration::ZERO };
    let mut next_at = tokio::time::Instant::now();
    while book.confirmed.load(Ordering::SeqCst) < n && book.started.elapsed() < deadline {
        if link.is_none() {
            let properties = ConnectionProperties::default().with_connection_name(name.as_str().into());
            let opened = async {
                let connection = Connection::connect(&super::common::amqp_url(), properties).await?;
                let channel = connection.create_channel().await?;
                channel.confirm_select(ConfirmSelectOptions::default()).await?;
                Ok::<_, lapin::Error>((connection, channel))
            };
            match tokio::time::timeout(Duration::from_secs(5), opened).await {
                Ok(Ok(l)) => {
                    connections += 1;
                    generation += 1;
                    link = Some(l);
                }
                Ok(Err(e)) => book.note(format!("connect: {e}")),
                Err(_) => book.note("connect: timed out"),
            }
            if link.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        let has_work = !book.again.is_empty() || !fresh.is_empty();
        if has_work && tokio::time::Instant::now() >= next_at {
            let (index, first) = match book.again.pop_front() {
                Some(i) => (i, false),
                None => (fresh.pop_front().unwrap(), true),
            };
            if book.confirmed_at[index].is_some() {
                continue; // a late confirm from a lost connection arrived meanwhile
            }
            let (_, channel) = link.as_ref().unwrap();
            let options = BasicPublishOptions { mandatory: true, ..Default::default() };
            let key = Topology::REQUEST_KEY;
            let published = channel
                .basic_publish(exchange.as_str().into(), key.into(), options, &bodies[index], json_properties())
                .await;
            if first {
                sent.fetch_add(1, Ordering::SeqCst);
            } else {
                republished += 1;
            }
            match published {
                Ok(confirm) => {
                    book.in_flight.insert(index);
                    let g = generation;
                    confirms.spawn(async move {
                        let outcome = match tokio::time::timeout(CONFIRM_WITHIN, confirm).await {
                            Ok(r) => r.map_err(|e| e.to_string()),
                            Err(_) => Err(format!("no confirm within {CONFIRM_WITHIN:?}")),
                        };
                        (index, g, outcome)
                    });
                }
                Err(e) => {
                    book.note(format!("publish: {e}"));
                    book.again.push_front(index);
                    book.lose(&mut link);
                    continue;
                }
            }
            next_at += period;
            while let Some(r) = confirms.try_join_next() {
                book.settle(r, generation, &mut link);
            }
            if period == Duration::ZERO {
                tokio::task::yield_now().await;
            }
            continue;
        }
        let wake = if has_work { next_at } else { tokio::time::Instant::now() + Duration::from_millis(100) };
        tokio::select! {
            Some(r) = confirms.join_next(), if !confirms.is_empty() => book.settle(r, generation, &mut link),
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
    confirms.abort_all();
    if let Some((connection, _)) = link {
        let _ = connection.close(200, "bye".into()).await;
    }
    PublishReport {
        confirmed_at: book.confirmed_at,
        republished,
        connections,
        errors: book.errors,
        elapsed: book.started.elapsed(),
    }
}

// ---------------------------------------------------------------------------
// RabbitMQ from the outside.

fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs (it ships with RabbitMQ; is it on PATH?)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The connections whose client properties mention `prefix`, as
/// `(broker id, connection name)`: the processes name theirs
/// `otp-generator (<prefix>)`, `otp-sender (<prefix>)`, the publisher
/// `otp-fault-publisher (<prefix>)`; other tests' connections on the same
/// broker never match.
pub fn connections_with(prefix: &str) -> Vec<(String, String)> {
    let list = rabbitmqctl(&["list_connections", "pid", "client_properties", "--quiet", "--no-table-headers"]);
    list.lines()
        .filter(|l| l.contains(prefix))
        .filter_map(|l| {
            let pid = l.split_whitespace().next()?.to_owned();
            let name = l.split("{\"connection_name\",\"").nth(1).and_then(|rest| rest.split("\"}").next());
            Some((pid, name.unwrap_or("?").to_owned()))
        })
        .collect()
}

/// Closes `connections` from the broker's side (all at once), as a broker
/// restart or a network cut would.
pub fn close_connections(connections: &[(String, String)]) {
    let closers: Vec<Child> = connections
        .iter()
        .map(|(pid, _)| {
            Command::new("rabbitmqctl")
                .args(["close_connection", pid, "fault test: connection cut"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("rabbitmqctl runs")
        })
        .collect();
    for mut c in closers {
        let _ = c.wait();
    }
}

/// `(ready, unacknowledged)` of `queue`, from `rabbitmqctl list_queues`.
pub fn queue_counts(queue: &str) -> Option<(u64, u64)> {
    let list = rabbitmqctl(&[
        "list_queues",
        "name",
        "messages_ready",
        "messages_unacknowledged",
        "--quiet",
        "--no-table-headers",
    ]);
    list.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        if f.next()? != queue {
            return None;
        }
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    })
}

/// Local ports of `pid`'s TCP connections to port 5672 (from /proc).
fn amqp_ports_of(pid: u32) -> HashSet<u16> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut ports = HashSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || !inodes.contains(f[9]) {
                continue;
            }
            let port = |addr: &str| addr.rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if port(f[2]) == Some(5672)
                && let Some(local) = port(f[1])
            {
                ports.insert(local);
            }
        }
    }
    ports
}

/// The broker's ids (`<rabbit@…>`) of process `pid`'s connections.
pub fn connections_of(pid: u32) -> HashSet<String> {
    let ports = amqp_ports_of(pid);
    let list = rabbitmqctl(&["list_connections", "pid", "peer_port", "--quiet", "--no-table-headers"]);
    list.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let conn = f.next()?.to_owned();
            let port: u16 = f.next()?.parse().ok()?;
            ports.contains(&port).then_some(conn)
        })
        .collect()
}

/// Messages the broker delivered on `connections` and has not seen
/// acknowledged yet, over all their channels (`rabbitmqctl list_channels`).
pub fn unacked_on(connections: &HashSet<String>) -> u64 {
    let channels =
        rabbitmqctl(&["list_channels", "connection", "messages_unacknowledged", "--quiet", "--no-table-headers"]);
    channels
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let conn = f.next()?;
            let unacked: u64 = f.next()?.parse().ok()?;
            connections.contains(conn).then_some(unacked)
        })
        .sum()
}

// ---------------------------------------------------------------------------
// Accounting.

/// Accepted SMS per request, from the fake carrier's record.
pub struct Accounting {
    /// Requests the broker confirmed.
    pub requests: usize,
    /// Of those, requests with at least one accepted SMS.
    pub delivered: usize,
    /// Accepted SMS beyond the first, summed over requests.
    pub duplicates: usize,
    /// Requests with more than one accepted SMS.
    pub duplicated: Vec<usize>,
    /// Confirmed requests with no accepted SMS.
    pub undelivered: Vec<usize>,
    /// Requests whose SMS (accepted or refused) carry more than one code, with their history.
    pub multi_code: Vec<(usize, String)>,
    /// Sends to numbers no request of this test has.
    pub strays: usize,
    /// Accepted SMS per carrier.
    pub by_carrier: BTreeMap<String, usize>,
}

pub fn account(load: &Load, confirmed: &[usize], messages: &[ReceivedSms]) -> Accounting {
    let mut per: HashMap<usize, Vec<&ReceivedSms>> = HashMap::new();
    let mut strays = 0;
    let mut by_carrier = BTreeMap::new();
    for m in messages {
        match load.index_of(&m.to) {
            Some(i) => per.entry(i).or_default().push(m),
            None => strays += 1,
        }
        if m.accepted {
            *by_carrier.entry(m.carrier.clone()).or_insert(0) += 1;
        }
    }
    let mut a = Accounting {
        requests: confirmed.len(),
        delivered: 0,
        duplicates: 0,
        duplicated: Vec::new(),
        undelivered: Vec::new(),
        multi_code: Vec::new(),
        strays,
        by_carrier,
    };
    for &i in confirmed {
        let sms = per.get(&i).map(Vec::as_slice).unwrap_or_default();
        let accepted = sms.iter().filter(|m| m.accepted).count();
        if accepted == 0 {
            a.undelivered.push(i);
        } else {
            a.delivered += 1;
        }
        if accepted > 1 {
            a.duplicates += accepted - 1;
            a.duplicated.push(i);
        }
        let codes: BTreeSet<Option<&str>> = sms.iter().map(|m| m.code.as_deref()).collect();
        if codes.len() > 1 {
            a.multi_code.push((i, history(&load.requests[i].request_id, sms)));
        }
    }
    a
}

/// Every send of a request, one per line (time since the fake carrier started, carrier, code, outcome).
pub fn history(request_id: &str, sms: &[&ReceivedSms]) -> String {
    let mut out = format!("{request_id}:");
    for m in sms {
        let _ = write!(
            out,
            "\n    {:>9.3} s  {:<7} code {}  {}",
            m.at_us as f64 / 1e6,
            m.carrier,
            m.code.as_deref().unwrap_or("?"),
            if m.accepted { "accepted" } else { "refused" }
        );
    }
    out
}

/// Polls the fake carrier until every confirmed request has an accepted SMS,
/// or `within` passes. Returns whether all did.
pub async fn wait_delivered(carrier: &FakeCarrier, load: &Load, confirmed: &[usize], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let wanted: HashSet<usize> = confirmed.iter().copied().collect();
    loop {
        let delivered: HashSet<usize> =
            carrier.messages().iter().filter(|m| m.accepted).filter_map(|m| load.index_of(&m.to)).collect();
        if wanted.is_subset(&delivered) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The checks every scenario shares: every confirmed request delivered, one
/// code each, no stray sends, duplicates within `dup_bound`, and the
/// generator's record of each request says sent. Prints the summary line.
pub async fn check_and_summarise(
    pipeline: &Pipeline,
    load: &Load,
    report: &PublishReport,
    dup_bound: usize,
    bound_why: &str,
    extra: &str,
) -> Accounting {
    let confirmed = report.confirmed();
    assert_eq!(
        confirmed.len(),
        load.len(),
        "the broker confirmed {} of {} requests within the deadline; publisher errors: {:#?}",
        confirmed.len(),
        load.len(),
        report.errors
    );
    let messages = pipeline.carrier.messages();
    let a = account(load, &confirmed, &messages);
    let statuses = pipeline.wait_statuses_sent(&load.ids(&confirmed), Duration::from_secs(15)).await;
    println!(
        "[faults] {:<28} requests={} delivered={} duplicates={} (bound {dup_bound}: {bound_why}) multi-code={} \
         by-carrier={:?} republished={} publisher-connections={} generator-statuses={:?} publish={:.1}s elapsed={:.1}s{}{extra}",
        pipeline.name,
        a.requests,
        a.delivered,
        a.duplicates,
        a.multi_code.len(),
        a.by_carrier,
        report.republished,
        report.connections,
        statuses,
        report.elapsed.as_secs_f64(),
        pipeline.started.elapsed().as_secs_f64(),
        if extra.is_empty() { "" } else { " " },
    );
    if !a.duplicated.is_empty() {
        let ids: Vec<&str> = a.duplicated.iter().take(20).map(|&i| load.requests[i].request_id.as_str()).collect();
        println!("  [{}] duplicated requests (first 20): {ids:?}", pipeline.name);
    }
    for (_, h) in a.multi_code.iter().take(20) {
        println!("  [{}] MORE THAN ONE CODE: {h}", pipeline.name);
    }
    let undelivered: Vec<String> = load.ids(&a.undelivered[..a.undelivered.len().min(20)]);
    assert!(
        a.undelivered.is_empty(),
        "{} confirmed request(s) never delivered, e.g. {undelivered:?}",
        a.undelivered.len()
    );
    assert!(
        a.multi_code.is_empty(),
        "{} request(s) got more than one distinct code (histories printed above)",
        a.multi_code.len()
    );
    assert_eq!(a.strays, 0, "sends to numbers this test never requested");
    assert!(a.duplicates <= dup_bound, "{} duplicate SMS, above the bound {dup_bound} ({bound_why})", a.duplicates);
    assert!(
        statuses.keys().all(|s| s == "sent" || s == "delivered"),
        "the generator does not report every request as sent: {statuses:?}"
    );
    a
}
