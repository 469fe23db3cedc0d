//! The load harness (`otp-pipeline bench`).
//!
//! Two ways to run the pipeline:
//!
//! - **in-process** (default): an all-in-one generator and sender under a
//!   private queue prefix and a temporary data directory, sending through two
//!   in-process fake carriers (Twilio API first, Vonage API as failover),
//!   optionally with the primary failing a share of requests. The send limits
//!   that a load run would trip (resend cooldown, codes per window, the
//!   SMS-pumping guard, the per-key HTTP rate) are switched off for it.
//! - **running pipeline** ([`Target`]): requests go over AMQP to a generator
//!   and senders that already run (e.g. `scripts/run` with
//!   `config/fake-carriers.toml`, or the compose stack), codes are read back
//!   from the fake carrier's `GET /messages`, and verified over that
//!   pipeline's `POST /v1/verify`. Its own limits apply: relax them for a load
//!   run (see [`RELAXED_LIMITS`]).
//!
//! Both publish a count of requests or for a duration, paced (`rate`) or as
//! fast as confirms allow, and measure each request from its publish to the
//! carrier's acceptance by the `event.sent` events (a private, self-deleting
//! queue on the pipeline's exchange; the event's `at` is the sender's wall
//! clock when the carrier accepted, the publish time is this process's wall
//! clock, carried in the `request_id`: both on one machine). Then every code
//! is verified with `verify_concurrency` clients. In the same run the raw
//! broker baseline ([`crate::relay`]) gives the denominator of the pipeline's
//! throughput, and VmRSS can be sampled (this process, or the pipeline's by pid).

use crate::relay::{RelayOptions, RelayReport};
use futures_lite::StreamExt;
use hdrhistogram::Histogram;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use otp_fake_carrier::{FakeCarrier, FakeCarrierConfig, ReceivedSms};
use otp_pipeline::app::{GeneratorApp, SenderApp};
use otp_pipeline::broker::{Topology, json_properties};
use otp_pipeline::config::{Config, RouteEntry, TwilioConfig, VonageConfig};
use otp_pipeline::domain::{Event, EventKind, RawRequest, SystemClock};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// The settings a running pipeline needs for a load run from one key and
/// many numbers (`OTP_*` environment variables; in-process mode sets them itself).
pub const RELAXED_LIMITS: &str = "OTP_LIMITS__SEND__RESEND_COOLDOWN_SECS=0 OTP_LIMITS__SEND__MAX_PER_WINDOW=0 \
     OTP_LIMITS__PUMPING__PREFIX_DIGITS=0 OTP_HTTP__RATE_PER_KEY_PER_SEC=0";

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The pipeline did not start.
    #[error(transparent)]
    App(#[from] otp_pipeline::app::AppError),
    /// RabbitMQ failed.
    #[error("AMQP: {0}")]
    Amqp(#[from] lapin::Error),
    /// The relay baseline failed.
    #[error("relay baseline: {0}")]
    Relay(#[from] crate::relay::RelayError),
    /// A socket could not be bound.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// An HTTP call failed (fake carrier, client setup).
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// The run did not go as it should.
    #[error("{0}")]
    Incomplete(String),
}

/// Microseconds from 1 µs to 10 minutes, 3 significant figures.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

/// How much to publish.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// This many requests.
    Count(usize),
    /// For this long.
    Duration(Duration),
}

/// A pipeline that already runs (running-pipeline mode).
#[derive(Debug, Clone)]
pub struct Target {
    /// Base URL of its HTTP API, e.g. `http://127.0.0.1:8080`.
    pub api: String,
    /// An API key of it.
    pub api_key: String,
    /// Base URL of the fake carrier its senders send to (codes for the verify
    /// phase); None skips verification.
    pub fake_carrier: Option<String>,
    /// Its `broker.prefix`.
    pub prefix: String,
    /// The pipeline's processes (generator, senders or all-in-one) whose CPU
    /// time to account per OTP and per verify; empty: none.
    pub service_pids: Vec<u32>,
}

/// VmRSS sampling.
#[derive(Debug, Clone)]
pub struct RssOptions {
    /// Interval between samples.
    pub every: Duration,
    /// Processes to sample; empty: this process.
    pub pids: Vec<u32>,
    /// Samples before this much time are warm-up: drift is measured from the
    /// first sample after it.
    pub warmup: Duration,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// How much to publish.
    pub load: Load,
    /// Offered load in requests per second; `None` publishes as fast as confirms allow.
    pub rate: Option<u32>,
    /// Publishes awaiting their confirm at once.
    pub publish_window: usize,
    /// Concurrent HTTP clients for the verify phase (0: no verify phase).
    pub verify_concurrency: usize,
    /// Share of requests the primary carrier fails with a retryable error (0–1; in-process only).
    pub primary_error_rate: f64,
    /// The raw broker baseline, measured first (None: skipped).
    pub relay: Option<RelayOptions>,
    /// A running pipeline instead of the in-process one.
    pub target: Option<Target>,
    /// VmRSS sampling.
    pub rss: Option<RssOptions>,
    /// Give up waiting for outcomes after this long without one.
    pub idle_timeout: Duration,
    /// Report delivery per window of this length (by publish time), and every RSS sample.
    pub series: Option<Duration>,
    /// Code lifetime asked for by each request, seconds (30-3600).
    pub ttl_secs: u32,
}

/// Milliseconds at p50 / p90 / p99 / p99.9 / max.
fn percentiles(h: &Histogram<u64>) -> [f64; 5] {
    if h.is_empty() {
        return [0.0; 5];
    }
    let ms = |us: u64| us as f64 / 1000.0;
    let q = |q: f64| ms(h.value_at_quantile(q));
    [q(0.5), q(0.9), q(0.99), q(0.999), ms(h.max())]
}

fn fmt_percentiles(h: &Histogram<u64>) -> String {
    let p = percentiles(h);
    format!("{:.2} / {:.2} / {:.2} / {:.2} / {:.2} ms", p[0], p[1], p[2], p[3], p[4])
}

/// `12345` → `12,345`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn wall_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

// ---------------------------------------------------------------------------
// Phone numbers

/// US area codes the bench draws numbers from (geographic, valid in
/// libphonenumber's metadata), each with exchanges 200–999: 8 million numbers
/// apiece, 128 million in all.
const AREA_CODES: [u16; 16] = [201, 202, 206, 212, 213, 303, 305, 312, 404, 415, 503, 512, 602, 617, 702, 713];
const PER_AREA: u64 = 8_000_000;
const SPACE: u64 = PER_AREA * AREA_CODES.len() as u64;

/// A run's numbers: consecutive from a random start in a space of 128 million
/// valid US numbers, so runs against one running pipeline rarely share one.
#[derive(Debug, Clone, Copy)]
pub struct Numbers {
    start: u64,
}

impl Numbers {
    /// Numbers from a random start.
    pub fn random() -> Self {
        Self { start: rand::random_range(0..SPACE) }
    }

    /// The `i`-th number of the run, E.164.
    pub fn phone(&self, i: u64) -> String {
        let n = (self.start + i) % SPACE;
        let area = AREA_CODES[(n / PER_AREA) as usize];
        format!("+1{area}{}", 2_000_000 + n % PER_AREA)
    }

    /// Which `i` gave `phone`, if it is one of this space's numbers.
    pub fn index(&self, phone: &str) -> Option<u64> {
        let digits = phone.strip_prefix("+1")?;
        if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let area: u16 = digits[..3].parse().ok()?;
        let slot = AREA_CODES.iter().position(|a| *a == area)? as u64;
        let local = digits[3..].parse::<u64>().ok()?.checked_sub(2_000_000)?;
        let n = slot * PER_AREA + local;
        Some((n + SPACE - self.start) % SPACE)
    }
}

// ---------------------------------------------------------------------------
// Requests and their outcomes

/// Names this run's requests: `<run>-<i>-<publish wall clock, µs>`.
#[derive(Debug, Clone)]
struct RunId(String);

impl RunId {
    fn new() -> Self {
        Self(format!("bench{}", &uuid::Uuid::new_v4().simple().to_string()[..8]))
    }

    fn request_id(&self, i: u64, published_us: u64) -> String {
        format!("{}-{i}-{published_us}", self.0)
    }

    /// `(i, published_us)` of one of this run's request ids.
    fn parse(&self, request_id: &str) -> Option<(u64, u64)> {
        let rest = request_id.strip_prefix(self.0.as_str())?.strip_prefix('-')?;
        let (i, us) = rest.split_once('-')?;
        Some((i.parse().ok()?, us.parse().ok()?))
    }
}

/// A request as a producer would send one, every field spelled out.
fn request(request_id: String, phone: String, ttl_secs: u32) -> RawRequest {
    RawRequest {
        request_id,
        phone,
        template: Some("login".into()),
        locale: Some("en".into()),
        code_length: Some(6),
        ttl_secs: Some(ttl_secs),
        channel: Some("sms".into()),
    }
}

/// The serialized size of a typical request of this bench (the relay's default message size).
pub fn typical_request_bytes() -> usize {
    let run = RunId::new();
    let body = request(run.request_id(123_456, wall_us()), Numbers::random().phone(0), 300);
    serde_json::to_vec(&body).expect("requests serialize").len()
}

/// What the `event.*` stream told about this run's requests.
struct Outcomes {
    run: RunId,
    /// Per request: whether a final outcome was seen.
    done: Vec<bool>,
    delivery: Histogram<u64>,
    by_carrier: BTreeMap<String, usize>,
    failed: BTreeMap<String, usize>,
    rejected: BTreeMap<String, usize>,
    duplicates: usize,
    last_sent_us: u64,
    /// Per window of publish time (`published_us / window`): delivered, and their latency.
    windows: Option<(u64, BTreeMap<u64, Histogram<u64>>)>,
}

impl Outcomes {
    fn new(run: RunId, window: Option<Duration>) -> Self {
        Self {
            run,
            done: Vec::new(),
            delivery: histogram(),
            by_carrier: BTreeMap::new(),
            failed: BTreeMap::new(),
            rejected: BTreeMap::new(),
            duplicates: 0,
            last_sent_us: 0,
            windows: window.map(|w| (u64::try_from(w.as_micros()).unwrap_or(u64::MAX).max(1), BTreeMap::new())),
        }
    }

    /// Takes one event; true if it is the first final outcome of one of our requests.
    fn take(&mut self, body: &[u8]) -> bool {
        let Ok(event) = serde_json::from_slice::<Event>(body) else { return false };
        let Some((i, published_us)) = event.request_id.as_deref().and_then(|id| self.run.parse(id)) else {
            return false;
        };
        if !matches!(event.status, EventKind::Sent | EventKind::Failed | EventKind::Rejected) {
            return false;
        }
        let i = usize::try_from(i).unwrap_or(usize::MAX);
        if i >= self.done.len() {
            self.done.resize(i.saturating_add(1).max(self.done.len() * 2), false);
        }
        if std::mem::replace(&mut self.done[i], true) {
            self.duplicates += 1;
            return false;
        }
        match event.status {
            EventKind::Sent => {
                let at_us = u64::try_from(event.at.unix_timestamp_nanos() / 1000).unwrap_or(0);
                let latency = at_us.saturating_sub(published_us).max(1);
                self.delivery.saturating_record(latency);
                if let Some((window, hists)) = &mut self.windows {
                    // Two significant figures: a few kB per window.
                    let h = hists
                        .entry(published_us / *window)
                        .or_insert_with(|| Histogram::new_with_bounds(1, 600_000_000, 2).expect("valid bounds"));
                    h.saturating_record(latency);
                }
                self.last_sent_us = self.last_sent_us.max(at_us);
                *self.by_carrier.entry(event.carrier.unwrap_or_default()).or_default() += 1;
            }
            EventKind::Failed => *self.failed.entry(event.error.unwrap_or_default()).or_default() += 1,
            _ => {
                let reason = event.reason.map_or("unknown".to_owned(), |r| r.as_str().to_owned());
                *self.rejected.entry(reason).or_default() += 1;
            }
        }
        true
    }

    fn delivered(&self) -> usize {
        self.by_carrier.values().sum()
    }
}

/// Follows `event.sent`, `event.failed` and `event.rejected` on `exchange`
/// through a private queue (exclusive, auto-delete, `x-expires`), until `stop`.
/// Follows the events of `run`: the count of final outcomes so far, the
/// token that stops following, and the task that returns the outcomes.
async fn follow_run(
    connection: &Connection,
    exchange: &str,
    run: &RunId,
    window: Option<Duration>,
) -> Result<(Arc<AtomicUsize>, CancellationToken, tokio::task::JoinHandle<Outcomes>), BenchError> {
    let finals = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let events = follow_events(connection, exchange, run.clone(), finals.clone(), stop.clone(), window).await?;
    Ok((finals, stop, events))
}

async fn follow_events(
    connection: &Connection,
    exchange: &str,
    run: RunId,
    finals: Arc<AtomicUsize>,
    stop: CancellationToken,
    window: Option<Duration>,
) -> Result<tokio::task::JoinHandle<Outcomes>, BenchError> {
    let channel = connection.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(ShortString::from("x-expires"), AMQPValue::LongUInt(60_000));
    let queue = channel
        .queue_declare(
            format!("{}.events", run.0).as_str().into(),
            QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
            args,
        )
        .await?;
    for key in [EventKind::Sent, EventKind::Failed, EventKind::Rejected] {
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.into(),
                key.routing_key().as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            format!("{}-events", run.0).as_str().into(),
            BasicConsumeOptions { no_ack: true, exclusive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    Ok(tokio::spawn(async move {
        let mut outcomes = Outcomes::new(run, window);
        loop {
            let next = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                next = consumer.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    if outcomes.take(&delivery.data) {
                        finals.fetch_add(1, Ordering::SeqCst);
                    }
                }
                _ => break,
            }
        }
        outcomes
    }))
}

/// How the publish phase went.
struct Published {
    count: usize,
    first_us: u64,
    elapsed: Duration,
    /// Most the publisher fell behind its schedule (paced runs).
    max_lag: Duration,
}

async fn publish_load(
    connection: &Connection,
    exchange: &str,
    run: &RunId,
    numbers: Numbers,
    options: &BenchOptions,
    published: &AtomicUsize,
) -> Result<Published, BenchError> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let window = options.publish_window.max(1);
    let mut pending = VecDeque::with_capacity(window);
    let started = Instant::now();
    let first_us = wall_us();
    let mut max_lag = Duration::ZERO;
    let mut i = 0u64;
    loop {
        match options.load {
            Load::Count(n) if i >= n as u64 => break,
            Load::Duration(d) if started.elapsed() >= d => break,
            _ => {}
        }
        if let Some(rate) = options.rate {
            let due = started + Duration::from_secs_f64(i as f64 / f64::from(rate.max(1)));
            tokio::time::sleep_until(due.into()).await;
            max_lag = max_lag.max(Instant::now().saturating_duration_since(due));
        }
        let body = request(run.request_id(i, wall_us()), numbers.phone(i), options.ttl_secs);
        let body = serde_json::to_vec(&body).expect("requests serialize");
        let confirm = channel
            .basic_publish(
                exchange.into(),
                Topology::REQUEST_KEY.into(),
                BasicPublishOptions::default(),
                &body,
                json_properties(),
            )
            .await?;
        pending.push_back(confirm);
        i += 1;
        published.store(i as usize, Ordering::SeqCst);
        while pending.len() >= window {
            if let Some(c) = pending.pop_front() {
                c.await?;
            }
        }
    }
    for c in pending {
        c.await?;
    }
    Ok(Published { count: i as usize, first_us, elapsed: started.elapsed(), max_lag })
}

/// Waits until every published request has a final outcome, or none came for `idle`.
async fn wait_for_outcomes(finals: &AtomicUsize, expected: usize, idle: Duration) {
    let mut last = (finals.load(Ordering::SeqCst), Instant::now());
    loop {
        let count = finals.load(Ordering::SeqCst);
        if count >= expected {
            return;
        }
        if count != last.0 {
            last = (count, Instant::now());
        } else if last.1.elapsed() > idle {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// Codes and the verify phase

/// Codes per request index, compactly (value × 16 + digits; 0: none).
#[derive(Default)]
struct CodeBook {
    codes: Vec<u64>,
    found: usize,
}

impl CodeBook {
    /// Keeps the code of an accepted SMS to one of this run's first `published` numbers
    /// (a later SMS to a number replaces an earlier one, as its code does).
    fn take(&mut self, numbers: &Numbers, published: usize, sms: &ReceivedSms) {
        let (Some(i), Some(code)) = (numbers.index(&sms.to), sms.code.as_deref()) else { return };
        let Ok(i) = usize::try_from(i) else { return };
        let Ok(value) = code.parse::<u64>() else { return };
        if !sms.accepted || i >= published || code.len() > 15 {
            return;
        }
        if i >= self.codes.len() {
            self.codes.resize((i + 1).max(self.codes.len() * 2).min(published), 0);
        }
        if self.codes[i] == 0 {
            self.found += 1;
        }
        self.codes[i] = value * 16 + code.len() as u64;
    }

    fn work(&self, numbers: &Numbers) -> Vec<(String, String)> {
        self.codes
            .iter()
            .enumerate()
            .filter(|(_, c)| **c != 0)
            .map(|(i, c)| {
                let (value, len) = (c / 16, (c % 16) as usize);
                (numbers.phone(i as u64), format!("{value:0len$}"))
            })
            .collect()
    }
}

/// The verify phase's figures.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// Concurrent clients.
    pub clients: usize,
    /// Codes found at the carrier(s).
    pub codes: usize,
    /// Requests made.
    pub requests: usize,
    /// Requests per second over the phase.
    pub per_sec: f64,
    /// Round trip, microseconds.
    pub latency_us: Histogram<u64>,
    /// Answers by HTTP status (0: no answer).
    pub statuses: BTreeMap<u16, usize>,
}

async fn verify_all(
    api: &str,
    api_key: &str,
    work: Vec<(String, String)>,
    clients: usize,
) -> Result<VerifyReport, BenchError> {
    let codes = work.len();
    let work = Arc::new(Mutex::new(work));
    let client = reqwest::Client::builder().pool_max_idle_per_host(clients).build()?;
    let url = format!("{}/v1/verify", api.trim_end_matches('/'));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (work, client, url, key) = (work.clone(), client.clone(), url.clone(), api_key.to_owned());
        workers.spawn(async move {
            let mut hist = histogram();
            let mut statuses = BTreeMap::<u16, usize>::new();
            loop {
                let Some((phone, code)) = work.lock().expect("work lock").pop() else { break };
                let body = format!(r#"{{"phone":"{phone}","code":"{code}"}}"#);
                let t = Instant::now();
                let response = client
                    .post(&url)
                    .bearer_auth(&key)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body)
                    .send()
                    .await;
                let status = match response {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let _ = r.bytes().await;
                        status
                    }
                    Err(_) => 0,
                };
                hist.saturating_record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX).max(1));
                *statuses.entry(status).or_default() += 1;
            }
            (hist, statuses)
        });
    }
    let mut latency_us = histogram();
    let mut statuses = BTreeMap::new();
    for (hist, s) in workers.join_all().await {
        latency_us.add(hist).expect("histograms of one shape add up");
        for (k, v) in s {
            *statuses.entry(k).or_default() += v;
        }
    }
    let requests = latency_us.len() as usize;
    Ok(VerifyReport {
        clients,
        codes,
        requests,
        per_sec: requests as f64 / started.elapsed().as_secs_f64().max(1e-9),
        latency_us,
        statuses,
    })
}

// ---------------------------------------------------------------------------
// RSS

/// One process's VmRSS over the run.
#[derive(Debug, Clone)]
pub struct RssSeries {
    /// `this process` or `pid N`.
    pub label: String,
    /// `(seconds since the start, kB)`.
    pub samples: Vec<(f64, u64)>,
    /// Warm-up, seconds.
    pub warmup: f64,
}

impl RssSeries {
    /// The first sample at or after the warm-up (the last one if the run was shorter).
    pub fn baseline(&self) -> Option<(f64, u64)> {
        self.samples.iter().find(|(t, _)| *t >= self.warmup).or(self.samples.last()).copied()
    }
}

impl std::fmt::Display for RssSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mb = |kb: u64| kb as f64 / 1024.0;
        let kbs = || self.samples.iter().map(|(_, kb)| *kb);
        let (Some(first), Some(min), Some(max), Some(last), Some((bt, base))) =
            (kbs().next(), kbs().min(), kbs().max(), kbs().next_back(), self.baseline())
        else {
            return write!(f, "| RSS ({}) | no samples |", self.label);
        };
        let after: Vec<u64> = self.samples.iter().filter(|(t, _)| *t >= bt).map(|(_, kb)| *kb).collect();
        let pct = |kb: u64| 100.0 * (kb as f64 - base as f64) / base.max(1) as f64;
        let (lo, hi) = (after.iter().copied().min().unwrap_or(base), after.iter().copied().max().unwrap_or(base));
        write!(
            f,
            "| RSS ({}), {} samples over {:.0} s | first / min / max / last {:.1} / {:.1} / {:.1} / {:.1} MB; \
             after warm-up (t = {bt:.0} s, {:.1} MB): last {:+.1} %, range {:+.1} % … {:+.1} % |",
            self.label,
            self.samples.len(),
            self.samples.last().map_or(0.0, |(t, _)| *t),
            mb(first),
            mb(min),
            mb(max),
            mb(last),
            mb(base),
            pct(last),
            pct(lo),
            pct(hi),
        )
    }
}

/// VmRSS of `pid` (None: this process), kB.
fn vm_rss_kb(pid: Option<u32>) -> Option<u64> {
    let path = pid.map_or_else(|| "/proc/self/status".to_owned(), |p| format!("/proc/{p}/status"));
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn sample_rss(options: RssOptions, stop: CancellationToken) -> tokio::task::JoinHandle<Vec<RssSeries>> {
    tokio::spawn(async move {
        let sources: Vec<Option<u32>> =
            if options.pids.is_empty() { vec![None] } else { options.pids.iter().copied().map(Some).collect() };
        let mut series: Vec<RssSeries> = sources
            .iter()
            .map(|p| RssSeries {
                label: p.map_or("this process".to_owned(), |p| format!("pid {p}")),
                samples: Vec::new(),
                warmup: options.warmup.as_secs_f64(),
            })
            .collect();
        let started = Instant::now();
        let mut ticks = tokio::time::interval(options.every.max(Duration::from_millis(100)));
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                _ = ticks.tick() => {}
            }
            let t = started.elapsed().as_secs_f64();
            for (source, s) in sources.iter().zip(&mut series) {
                if let Some(kb) = vm_rss_kb(*source) {
                    s.samples.push((t, kb));
                }
            }
        }
        // One last sample at the end of the load phase.
        let t = started.elapsed().as_secs_f64();
        for (source, s) in sources.iter().zip(&mut series) {
            if let Some(kb) = vm_rss_kb(*source) {
                s.samples.push((t, kb));
            }
        }
        series
    })
}

/// CPU time (user + system) of a process over one phase of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuUse {
    /// `this process …` or `pid N`.
    pub label: String,
    /// CPU seconds spent in the phase.
    pub seconds: f64,
    /// Wall-clock seconds of the phase.
    pub wall: f64,
    /// Context switches of the process's threads in the phase (voluntary and
    /// not; threads that ended during it are not counted).
    pub switches: u64,
}

impl CpuUse {
    /// Microseconds of CPU per unit of work (`per` OTPs or verifications).
    pub fn micros_per(&self, per: usize) -> f64 {
        self.seconds * 1e6 / per.max(1) as f64
    }
}

/// User + system CPU seconds of `pid` (None: this process) from `/proc`.
fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = pid.map_or_else(|| "/proc/self/stat".to_owned(), |p| format!("/proc/{p}/stat"));
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3,
    // utime 14 and stime 15, in clock ticks of USER_HZ (100 on Linux).
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Context switches so far of every thread of `pid` (None: this process).
fn context_switches(pid: Option<u32>) -> u64 {
    let dir = pid.map_or_else(|| "/proc/self/task".to_owned(), |p| format!("/proc/{p}/task"));
    let Ok(tasks) = std::fs::read_dir(dir) else { return 0 };
    let mut total = 0;
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
        for line in status.lines() {
            if let Some(n) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += n.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

/// Measures the CPU time of some processes from [`CpuMeter::start`] on.
struct CpuMeter {
    sources: Vec<(String, Option<u32>, f64, u64)>,
    started: Instant,
}

impl CpuMeter {
    /// Starts on `pids`, or on this process (labelled `self_label`) if none.
    fn start(pids: &[u32], self_label: &str) -> Self {
        let sources: Vec<(String, Option<u32>)> = if pids.is_empty() {
            vec![(self_label.to_owned(), None)]
        } else {
            pids.iter().map(|p| (format!("pid {p}"), Some(*p))).collect()
        };
        let sources =
            sources.into_iter().filter_map(|(l, p)| Some((l, p, cpu_seconds(p)?, context_switches(p)))).collect();
        Self { sources, started: Instant::now() }
    }

    fn stop(self) -> Vec<CpuUse> {
        let wall = self.started.elapsed().as_secs_f64();
        let used = |(label, pid, start, switched): (String, Option<u32>, f64, u64)| {
            let switches = context_switches(pid).saturating_sub(switched);
            Some(CpuUse { label, seconds: cpu_seconds(pid)? - start, wall, switches })
        };
        self.sources.into_iter().filter_map(used).collect()
    }
}

/// What in-process mode measures: the pipeline shares the process with the harness.
const IN_PROCESS_CPU: &str = "this process: pipeline + load generator + fake carriers";

// ---------------------------------------------------------------------------
// The report

/// The figures of one run.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// The options of the run.
    pub options: BenchOptions,
    /// What ran.
    pub mode: String,
    /// The raw broker baseline.
    pub relay: Option<RelayReport>,
    /// Requests published.
    pub published: usize,
    /// How long publishing took.
    pub publish_elapsed: Duration,
    /// Most the publisher fell behind its schedule (paced runs).
    pub publisher_max_lag: Duration,
    /// SMS accepted, by carrier.
    pub by_carrier: BTreeMap<String, usize>,
    /// Deliveries that failed for good, by error.
    pub failed: BTreeMap<String, usize>,
    /// Requests the pipeline refused, by reason.
    pub rejected: BTreeMap<String, usize>,
    /// Repeated final events (at-least-once redeliveries).
    pub duplicates: usize,
    /// Attempts the primary fake carrier refused (in-process).
    pub primary_errors: Option<usize>,
    /// Delivered SMS per second, first publish → last `event.sent`.
    pub otp_per_sec: f64,
    /// Publish → carrier accepted, microseconds.
    pub delivery_us: Histogram<u64>,
    /// The verify phase.
    pub verify: Option<VerifyReport>,
    /// VmRSS over the load phase.
    pub rss: Vec<RssSeries>,
    /// CPU time over the load phase (first publish → last outcome).
    pub cpu_load: Vec<CpuUse>,
    /// CPU time over the verify phase.
    pub cpu_verify: Vec<CpuUse>,
    /// Delivery per window of publish time: `(seconds from the first publish, delivered, latency)`.
    pub windows: Vec<(f64, Histogram<u64>)>,
}

impl BenchReport {
    /// SMS accepted by a carrier.
    pub fn delivered(&self) -> usize {
        self.by_carrier.values().sum()
    }

    /// Pipeline OTP/s ÷ relay msg/s.
    pub fn relay_ratio(&self) -> Option<f64> {
        self.relay.as_ref().map(|r| self.otp_per_sec / r.messages_per_sec.max(1e-9))
    }
}

fn counts(map: &BTreeMap<String, usize>) -> String {
    if map.is_empty() {
        return "0".into();
    }
    let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k} {}", thousands(*v as u64))).collect();
    format!("{} ({})", thousands(map.values().sum::<usize>() as u64), parts.join(", "))
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = &self.options;
        let offered = o.rate.map_or("as fast as confirms allow".to_owned(), |r| format!("{r}/s"));
        writeln!(f, "| measure | value |\n|---|---|")?;
        writeln!(f, "| pipeline | {} |", self.mode)?;
        self.fmt_relay(f)?;
        let lag = if o.rate.is_some() {
            format!(", publisher at most {:.1} ms behind schedule", self.publisher_max_lag.as_secs_f64() * 1000.0)
        } else {
            String::new()
        };
        writeln!(
            f,
            "| requests published ({offered}) | {} in {:.1} s{lag} |",
            thousands(self.published as u64),
            self.publish_elapsed.as_secs_f64()
        )?;
        let pct = 100.0 * self.delivered() as f64 / self.published.max(1) as f64;
        writeln!(f, "| delivered (event.sent) | {} ({pct:.2} %): {} |", thousands(self.delivered() as u64), {
            let parts: Vec<String> =
                self.by_carrier.iter().map(|(k, v)| format!("{k} {}", thousands(*v as u64))).collect();
            parts.join(", ")
        })?;
        writeln!(f, "| failed / rejected | {} / {} |", counts(&self.failed), counts(&self.rejected))?;
        let limited = self.rejected.iter().filter(|(r, _)| *r == "rate_limited" || *r == "suspected_pumping");
        let verify_429 = self.verify.as_ref().and_then(|v| v.statuses.get(&429)).copied().unwrap_or(0);
        if limited.count() > 0 || verify_429 > 0 {
            writeln!(
                f,
                "| note | the pipeline's limits refused part of the load: for load runs start it with {RELAXED_LIMITS} |"
            )?;
        }
        if self.duplicates > 0 {
            writeln!(f, "| repeated outcome events | {} |", self.duplicates)?;
        }
        if let Some(n) = self.primary_errors {
            writeln!(
                f,
                "| primary carrier errors (error rate {:.0} %) | {} |",
                o.primary_error_rate * 100.0,
                thousands(n as u64)
            )?;
        }
        writeln!(
            f,
            "| pipeline throughput (first publish → last event.sent) | {} OTP/s |",
            thousands(self.otp_per_sec.round() as u64)
        )?;
        if let (Some(ratio), Some(r)) = (self.relay_ratio(), &self.relay) {
            let note = if o.rate.is_some() { "; paced run: offered load, not capacity" } else { "" };
            writeln!(
                f,
                "| pipeline ÷ relay baseline | {ratio:.2} × ({} ÷ {}; target ≥ 0.6{note}) |",
                thousands(self.otp_per_sec.round() as u64),
                thousands(r.messages_per_sec.round() as u64)
            )?;
        }
        writeln!(
            f,
            "| publish → carrier accepted p50 / p90 / p99 / p99.9 / max | {} |",
            fmt_percentiles(&self.delivery_us)
        )?;
        self.fmt_verify(f)?;
        self.fmt_cpu(f)?;
        for s in &self.rss {
            writeln!(f, "{s}")?;
        }
        Ok(())
    }
}

impl BenchReport {
    /// The relay baseline's row, if it ran.
    fn fmt_relay(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(r) = &self.relay {
            let [p50, p90, p99, max] = r.latency_ms();
            let offered = r.options.rate.map_or("as fast as confirms allow".to_owned(), |r| format!("{r}/s"));
            writeln!(
                f,
                "| relay baseline ({} × {} B persistent, 2 confirmed hops, prefetch {}, {offered}) | {} msg/s; \
                 publish → consumed p50 / p90 / p99 / max {p50:.2} / {p90:.2} / {p99:.2} / {max:.2} ms |",
                thousands(r.received as u64),
                r.options.message_bytes,
                r.options.prefetch,
                thousands(r.messages_per_sec.round() as u64),
            )?;
        }
        Ok(())
    }

    /// The verify phase's rows, if it ran.
    fn fmt_verify(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(v) = &self.verify {
            let statuses: Vec<String> =
                v.statuses.iter().map(|(s, n)| format!("{} × {}", thousands(*n as u64), s)).collect();
            writeln!(
                f,
                "| verify ({} clients, {} codes found) | {} req/s; {} |",
                v.clients,
                thousands(v.codes as u64),
                thousands(v.per_sec.round() as u64),
                statuses.join(", ")
            )?;
            writeln!(f, "| verify round trip p50 / p90 / p99 / p99.9 / max | {} |", fmt_percentiles(&v.latency_us))?;
        }
        Ok(())
    }

    /// The CPU rows: per OTP over the load phase, per verification over the verify phase.
    fn fmt_cpu(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let delivered = self.delivered();
        for c in &self.cpu_load {
            writeln!(
                f,
                "| service CPU per OTP, load phase ({}) | {:.0} µs ({:.2} CPU s ÷ {} delivered; {:.0} % of a core; \
                 {:.1} context switches per OTP) |",
                c.label,
                c.micros_per(delivered),
                c.seconds,
                thousands(delivered as u64),
                100.0 * c.seconds / c.wall.max(1e-9),
                c.switches as f64 / delivered.max(1) as f64
            )?;
        }
        if let Some(v) = &self.verify {
            for c in &self.cpu_verify {
                writeln!(
                    f,
                    "| service CPU per verify ({}) | {:.0} µs ({:.2} CPU s ÷ {} requests) |",
                    c.label,
                    c.micros_per(v.requests),
                    c.seconds,
                    thousands(v.requests as u64)
                )?;
            }
        }
        Ok(())
    }

    /// The time series: delivery per window of publish time, and the RSS samples.
    pub fn series(&self) -> String {
        let mut out = String::new();
        if !self.windows.is_empty() {
            out.push_str(
                "\n| published at (s) | delivered | publish → accepted p50 / p99 / max (ms) |\n|---|---|---|\n",
            );
            for (t, h) in &self.windows {
                let ms = |us: u64| us as f64 / 1000.0;
                out.push_str(&format!(
                    "| {t:.0} | {} | {:.1} / {:.1} / {:.1} |\n",
                    thousands(h.len()),
                    ms(h.value_at_quantile(0.5)),
                    ms(h.value_at_quantile(0.99)),
                    ms(h.max())
                ));
            }
            out.push('\n');
        }
        for s in &self.rss {
            let points: Vec<String> =
                s.samples.iter().map(|(t, kb)| format!("{t:.0}s {:.1}", *kb as f64 / 1024.0)).collect();
            out.push_str(&format!("RSS MB ({}): {}\n", s.label, points.join(", ")));
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Running it

/// Runs the benchmark: the relay baseline (if asked), then the pipeline — the
/// in-process one, or `options.target` — against the broker of `base`.
pub async fn run(base: &Config, options: BenchOptions) -> Result<BenchReport, BenchError> {
    let relay = match &options.relay {
        Some(relay) => Some(crate::relay::run(&base.broker.url, relay.clone()).await?),
        None => None,
    };
    let mut report = match options.target.clone() {
        Some(target) => run_target(base, options, target).await?,
        None => run_in_process(base, options).await?,
    };
    report.relay = relay;
    Ok(report)
}

/// An in-process fake carrier.
struct Carrier {
    fake: FakeCarrier,
}

impl Carrier {
    async fn start(config: FakeCarrierConfig) -> Result<Self, BenchError> {
        Ok(Self { fake: FakeCarrier::start(([127, 0, 0, 1], 0).into(), config).await? })
    }

    /// Files the codes of its SMS and forgets them; returns how many attempts it refused.
    fn drain(&self, codes: &mut CodeBook, numbers: &Numbers, published: usize) -> usize {
        let messages = self.fake.messages();
        self.fake.clear_messages();
        let mut refused = 0;
        for sms in &messages {
            refused += usize::from(!sms.accepted);
            codes.take(numbers, published, sms);
        }
        refused
    }
}

/// The in-process pipeline's configuration: `base` with a private prefix,
/// a temporary sled, one API key, the limits a load run would trip switched
/// off, and the two fake carriers (Twilio API first, Vonage as failover).
struct InProcess {
    config: Config,
    dir: std::path::PathBuf,
    prefix: String,
    api_key: String,
}

fn in_process_config(base: &Config, primary: &Carrier, failover: &Carrier) -> InProcess {
    let dir = std::env::temp_dir().join(format!("otp-bench-{}", uuid::Uuid::new_v4().simple()));
    let prefix = format!("bench-{}.", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let api_key = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let mut config = base.clone();
    config.broker.prefix = prefix.clone();
    config.broker.queue_expires_ms = Some(600_000);
    config.store.data_dir = dir.clone();
    config.http.listen = ([127, 0, 0, 1], 0).into();
    config.http.api_keys = vec![api_key.clone().into()];
    // One key, many numbers under few prefixes: the limits a load run would trip.
    config.http.rate_per_key_per_sec = 0;
    config.limits.send.resend_cooldown_secs = 0;
    config.limits.send.max_per_window = 0;
    config.limits.pumping.prefix_digits = 0;
    config.carriers.twilio = Some(TwilioConfig::sandbox(&primary.fake.base_url(), "bench-token"));
    config.carriers.vonage = Some(VonageConfig::sandbox(&failover.fake.base_url()));
    config.routing.default = vec![
        RouteEntry::Weighted { carrier: "twilio".into(), weight: 1 },
        RouteEntry::Weighted { carrier: "vonage".into(), weight: 0 },
    ];
    InProcess { config, dir, prefix, api_key }
}

/// Empties the fake carriers into `codes` every second until `stop`: with
/// RSS sampling, what grows must be the pipeline, not the carriers' record
/// of every SMS. (A send arriving between the copy and the clear is lost to
/// the verify phase: the codes found are counted.)
fn spawn_drainer(
    codes: Arc<Mutex<CodeBook>>,
    refused: Arc<AtomicUsize>,
    carriers: Arc<(Carrier, Carrier)>,
    published: Arc<AtomicUsize>,
    numbers: Numbers,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        while tokio::select! { () = stop.cancelled() => false, _ = ticks.tick() => true } {
            let mut book = codes.lock().expect("codes lock");
            let n = published.load(Ordering::SeqCst);
            refused.fetch_add(carriers.0.drain(&mut book, &numbers, n), Ordering::SeqCst);
            carriers.1.drain(&mut book, &numbers, n);
        }
    })
}

/// The in-process pipeline, running: its API's base URL, how to stop it,
/// and its task.
struct Running {
    api: String,
    stop: CancellationToken,
    apps: tokio::task::JoinHandle<(Result<(), otp_pipeline::app::AppError>, Result<(), otp_pipeline::app::AppError>)>,
}

impl Running {
    /// Stops the pipeline and removes what the run left: its queues and its sled.
    async fn stop(self, url: &str, topology: &Topology, dir: &std::path::Path) {
        self.stop.cancel();
        let _ = self.apps.await;
        cleanup(url, topology).await;
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Builds and starts the all-in-one pipeline; fails (cleaning `dir`) if it
/// does not connect to RabbitMQ within 10 s.
async fn start_pipeline(config: &Config, dir: &std::path::Path) -> Result<Running, BenchError> {
    let generator = GeneratorApp::build(config, Arc::new(SystemClock)).await?;
    let sender = SenderApp::build(config, Arc::new(SystemClock), false).await?;
    let api = format!("http://{}", generator.local_addr());
    let (g_broker, s_broker) = (generator.broker(), sender.broker());
    let stop = CancellationToken::new();
    let apps = tokio::spawn({
        let stop = stop.clone();
        async move { tokio::join!(generator.run(stop.clone()), sender.run(stop)) }
    });
    if !(g_broker.wait_connected(Duration::from_secs(10)).await
        && s_broker.wait_connected(Duration::from_secs(10)).await)
    {
        stop.cancel();
        let _ = apps.await;
        let _ = std::fs::remove_dir_all(dir);
        return Err(BenchError::Incomplete("the pipeline did not connect to RabbitMQ within 10 s".into()));
    }
    Ok(Running { api, stop, apps })
}

/// Verifies every code found (unless `concurrency` is 0), with the CPU it cost.
async fn verify_phase(
    api: &str,
    api_key: &str,
    work: Vec<(String, String)>,
    concurrency: usize,
) -> Result<(Option<VerifyReport>, Vec<CpuUse>), BenchError> {
    let cpu = CpuMeter::start(&[], IN_PROCESS_CPU);
    let verify = if concurrency > 0 { Some(verify_all(api, api_key, work, concurrency).await?) } else { None };
    Ok((verify, cpu.stop()))
}

async fn run_in_process(base: &Config, options: BenchOptions) -> Result<BenchReport, BenchError> {
    let quiet = FakeCarrierConfig { receipts: false, ..Default::default() };
    let primary = Carrier::start(FakeCarrierConfig { error_rate: options.primary_error_rate, ..quiet.clone() }).await?;
    let failover = Carrier::start(quiet).await?;

    let InProcess { config, dir, prefix, api_key } = in_process_config(base, &primary, &failover);

    let rss_stop = CancellationToken::new();
    let rss = options.rss.clone().map(|r| sample_rss(RssOptions { pids: Vec::new(), ..r }, rss_stop.clone()));

    let running = start_pipeline(&config, &dir).await?;

    let topology = Topology::new(&prefix, None);
    let run = RunId::new();
    let numbers = Numbers::random();
    let connection = Connection::connect(
        &config.broker.url,
        ConnectionProperties::default().with_connection_name("otp-bench".into()),
    )
    .await?;
    let (finals, events_stop, events) = follow_run(&connection, &topology.exchange, &run, options.series).await?;

    let codes = Arc::new(Mutex::new(CodeBook::default()));
    let refused = Arc::new(AtomicUsize::new(0));
    let published_so_far = Arc::new(AtomicUsize::new(0));
    let carriers = Arc::new((primary, failover));
    let drainer = options.rss.is_some().then(|| {
        spawn_drainer(
            codes.clone(),
            refused.clone(),
            carriers.clone(),
            published_so_far.clone(),
            numbers,
            rss_stop.clone(),
        )
    });

    let cpu = CpuMeter::start(&[], IN_PROCESS_CPU);
    let outcome = publish_load(&connection, &topology.exchange, &run, numbers, &options, &published_so_far).await;
    let published = match outcome {
        Ok(p) => p,
        Err(e) => {
            running.stop(&config.broker.url, &topology, &dir).await;
            return Err(e);
        }
    };
    wait_for_outcomes(&finals, published.count, options.idle_timeout).await;
    let cpu_load = cpu.stop();
    rss_stop.cancel();
    let rss = match rss {
        Some(handle) => handle.await.unwrap_or_default(),
        None => Vec::new(),
    };
    if let Some(d) = drainer {
        let _ = d.await;
    }
    events_stop.cancel();
    let outcomes = events.await.map_err(|e| BenchError::Incomplete(format!("event follower: {e}")))?;
    let _ = connection.close(200, "bye".into()).await;

    let mut book = std::mem::take(&mut *codes.lock().expect("codes lock"));
    let primary_errors = refused.load(Ordering::SeqCst) + carriers.0.drain(&mut book, &numbers, published.count);
    carriers.1.drain(&mut book, &numbers, published.count);
    let work = book.work(&numbers);
    let (verify, cpu_verify) = verify_phase(&running.api, &api_key, work, options.verify_concurrency).await?;

    running.stop(&config.broker.url, &topology, &dir).await;
    if let Ok((primary, failover)) = Arc::try_unwrap(carriers) {
        primary.fake.shutdown().await;
        failover.fake.shutdown().await;
    }
    let mode = format!(
        "in-process all-in-one (prefix {prefix}, temp sled; fake carriers: twilio, vonage as failover; \
         send limits and pumping guard off)"
    );
    let measured = Measured { verify, rss, cpu_load, cpu_verify };
    Ok(report(options, mode, published, outcomes, Some(primary_errors), measured))
}

/// What a run measured besides delivery: the verify phase, RSS and CPU.
struct Measured {
    verify: Option<VerifyReport>,
    rss: Vec<RssSeries>,
    cpu_load: Vec<CpuUse>,
    cpu_verify: Vec<CpuUse>,
}

fn report(
    options: BenchOptions,
    mode: String,
    published: Published,
    outcomes: Outcomes,
    primary_errors: Option<usize>,
    measured: Measured,
) -> BenchReport {
    let Measured { verify, rss, cpu_load, cpu_verify } = measured;
    let span_us = outcomes.last_sent_us.saturating_sub(published.first_us).max(1);
    BenchReport {
        mode,
        relay: None,
        published: published.count,
        publish_elapsed: published.elapsed,
        publisher_max_lag: published.max_lag,
        otp_per_sec: outcomes.delivered() as f64 / (span_us as f64 / 1e6),
        by_carrier: outcomes.by_carrier,
        failed: outcomes.failed,
        rejected: outcomes.rejected,
        duplicates: outcomes.duplicates,
        primary_errors,
        delivery_us: outcomes.delivery,
        windows: outcomes
            .windows
            .map(|(window, hists)| {
                hists
                    .into_iter()
                    .map(|(k, h)| ((k * window).saturating_sub(published.first_us) as f64 / 1e6, h))
                    .collect()
            })
            .unwrap_or_default(),
        verify,
        rss,
        cpu_load,
        cpu_verify,
        options,
    }
}

async fn run_target(base: &Config, options: BenchOptions, target: Target) -> Result<BenchReport, BenchError> {
    let topology = Topology::new(&target.prefix, None);
    let connection =
        Connection::connect(&base.broker.url, ConnectionProperties::default().with_connection_name("otp-bench".into()))
            .await?;
    // Is a pipeline there? (Passive declares fail on a missing name and close
    // their channel, so each gets its own.)
    let missing = |what: &str, e: lapin::Error| {
        BenchError::Incomplete(format!(
            "{what}: {e} — is a pipeline running on this broker with broker.prefix {:?}?",
            target.prefix
        ))
    };
    let check = connection.create_channel().await?;
    check
        .exchange_declare(
            topology.exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions { passive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .map_err(|e| missing(&format!("exchange {}", topology.exchange), e))?;
    let requests = check
        .queue_declare(
            topology.requests.as_str().into(),
            QueueDeclareOptions { passive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .map_err(|e| missing(&format!("queue {}", topology.requests), e))?;
    if requests.consumer_count() == 0 {
        return Err(BenchError::Incomplete(format!("no generator consumes {}", topology.requests)));
    }
    let _ = check.close(200, "checked".into()).await;

    let rss_stop = CancellationToken::new();
    let rss = options.rss.clone().filter(|r| !r.pids.is_empty()).map(|r| sample_rss(r, rss_stop.clone()));
    let run = RunId::new();
    let numbers = Numbers::random();
    let (finals, events_stop, events) = follow_run(&connection, &topology.exchange, &run, options.series).await?;
    let published_so_far = AtomicUsize::new(0);
    let cpu = (!target.service_pids.is_empty()).then(|| CpuMeter::start(&target.service_pids, ""));
    let published = publish_load(&connection, &topology.exchange, &run, numbers, &options, &published_so_far).await?;
    wait_for_outcomes(&finals, published.count, options.idle_timeout).await;
    let cpu_load = cpu.map(CpuMeter::stop).unwrap_or_default();
    rss_stop.cancel();
    let rss = match rss {
        Some(handle) => handle.await.unwrap_or_default(),
        None => Vec::new(),
    };
    events_stop.cancel();
    let outcomes = events.await.map_err(|e| BenchError::Incomplete(format!("event follower: {e}")))?;
    let _ = connection.close(200, "bye".into()).await;

    let cpu = (!target.service_pids.is_empty()).then(|| CpuMeter::start(&target.service_pids, ""));
    let verify = match &target.fake_carrier {
        Some(fake) if options.verify_concurrency > 0 => {
            let url = format!("{}/messages", fake.trim_end_matches('/'));
            let messages: Vec<ReceivedSms> = reqwest::get(&url).await?.error_for_status()?.json().await?;
            let mut book = CodeBook::default();
            for sms in &messages {
                book.take(&numbers, published.count, sms);
            }
            drop(messages);
            Some(verify_all(&target.api, &target.api_key, book.work(&numbers), options.verify_concurrency).await?)
        }
        _ => None,
    };
    let cpu_verify = cpu.map(CpuMeter::stop).unwrap_or_default();
    let mode = format!(
        "running pipeline: API {}, exchange {} (prefix {:?}), fake carrier {}",
        target.api,
        topology.exchange,
        target.prefix,
        target.fake_carrier.as_deref().unwrap_or("none (no verify phase)")
    );
    Ok(report(options, mode, published, outcomes, None, Measured { verify, rss, cpu_load, cpu_verify }))
}

async fn cleanup(url: &str, t: &Topology) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let Ok(connection) = Connection::connect(url, ConnectionProperties::default()).await else {
        return;
    };
    let Ok(channel) = connection.create_channel().await else {
        return;
    };
    for q in [&t.requests, &t.deliveries, &t.status, &t.dead] {
        let _ = channel.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await;
    }
    for x in [&t.exchange, &t.dlx] {
        let _ = channel.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()).await;
    }
    let _ = connection.close(200, "bye".into()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use otp_pipeline::domain::Phone;

    #[test]
    fn numbers_are_valid_and_invert() {
        for start in [0, PER_AREA - 3, SPACE - 5, 12_345_678] {
            let numbers = Numbers { start };
            for i in 0..10 {
                let phone = numbers.phone(i);
                assert!(Phone::parse(&phone).is_ok(), "{phone}");
                assert_eq!(numbers.index(&phone), Some(i), "{phone}");
            }
        }
        // Every area code, every exchange from 200 to 999 (N11 and 555 too).
        let numbers = Numbers { start: 0 };
        for slot in 0..AREA_CODES.len() as u64 {
            for exchange in 0..800u64 {
                for line in [0u64, 1234, 9999] {
                    let i = slot * PER_AREA + exchange * 10_000 + line;
                    let phone = numbers.phone(i);
                    assert!(Phone::parse(&phone).is_ok(), "{phone}");
                }
            }
        }
        assert_eq!(
            Numbers { start: 7 }.index("+14155550123").map(|i| Numbers { start: 7 }.phone(i)).as_deref(),
            Some("+14155550123")
        );
        assert_eq!(numbers.index("+442071234567"), None);
        assert_eq!(numbers.index("+19995550123"), None);
    }

    #[test]
    fn request_ids_carry_index_and_time() {
        let run = RunId::new();
        let id = run.request_id(42, 1_700_000_000_123_456);
        assert_eq!(run.parse(&id), Some((42, 1_700_000_000_123_456)));
        assert!(id.len() <= 128);
        assert_eq!(RunId::new().parse(&id), None);
    }

    #[test]
    fn outcomes_count_each_request_once() {
        let run = RunId::new();
        let mut outcomes = Outcomes::new(run.clone(), None);
        let at = time::OffsetDateTime::now_utc();
        let published = u64::try_from(at.unix_timestamp_nanos() / 1000).unwrap() - 2_500;
        let mut event = Event::new(EventKind::Sent, Some(run.request_id(3, published)), "+14155550123", at);
        event.carrier = Some("twilio".into());
        let body = serde_json::to_vec(&event).unwrap();
        assert!(outcomes.take(&body));
        assert!(!outcomes.take(&body));
        assert_eq!((outcomes.delivered(), outcomes.duplicates), (1, 1));
        let ms = outcomes.delivery.max() as f64 / 1000.0;
        assert!((2.4..2.6).contains(&ms), "{ms}");
        let other = Event::new(EventKind::Sent, Some("someone-else".into()), "+14155550123", at);
        assert!(!outcomes.take(&serde_json::to_vec(&other).unwrap()));
    }

    #[test]
    fn code_book_keeps_leading_zeros_and_the_latest_code() {
        let numbers = Numbers { start: 99 };
        let sms = |i: u64, code: &str| ReceivedSms {
            carrier: "twilio".into(),
            to: numbers.phone(i),
            text: None,
            code: Some(code.into()),
            message_id: "m".into(),
            request_id: None,
            at_ms: 0,
            at_us: 0,
            accepted: true,
        };
        let mut book = CodeBook::default();
        book.take(&numbers, 10, &sms(2, "001234"));
        book.take(&numbers, 10, &sms(5, "999999"));
        book.take(&numbers, 10, &sms(5, "123456"));
        book.take(&numbers, 10, &sms(11, "111111"));
        let work = book.work(&numbers);
        assert_eq!(work, vec![(numbers.phone(2), "001234".into()), (numbers.phone(5), "123456".into())]);
        assert_eq!(book.found, 2);
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
