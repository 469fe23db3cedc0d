//! A load run of the all-in-one pipeline on this machine: an in-process
//! generator and sender under a private queue prefix and a temporary data
//! directory, sending through two fake carriers (Twilio API first, Vonage API
//! as failover), optionally with the primary failing a share of requests.
//!
//! It measures throughput (first publish → last SMS accepted), per-request
//! latency (publish → SMS accepted by a carrier), how many were delivered and
//! through which carrier, and `POST /v1/verify` latency and rate with every
//! code it collected.

use crate::app::{GeneratorApp, SenderApp};
use crate::broker::{Topology, json_properties};
use crate::config::{Config, RouteEntry, TwilioConfig, VonageConfig};
use crate::domain::{RawRequest, SystemClock};
use crate::fake_carrier::{FakeCarrier, FakeCarrierConfig, ReceivedSms};
use hdrhistogram::Histogram;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Connection, ConnectionProperties};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The pipeline did not start.
    #[error(transparent)]
    App(#[from] crate::app::AppError),
    /// RabbitMQ failed.
    #[error("AMQP: {0}")]
    Amqp(#[from] lapin::Error),
    /// A socket could not be bound.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
    /// The run did not finish as it should.
    #[error("{0}")]
    Incomplete(&'static str),
}

/// Microseconds from 1 µs to 10 minutes, 3 significant figures.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// OTP requests to publish.
    pub requests: usize,
    /// Offered load in requests per second; `None` publishes as fast as confirms allow.
    pub rate: Option<u32>,
    /// Publishes awaiting their confirm at once.
    pub publish_window: usize,
    /// Concurrent HTTP clients for the verify phase.
    pub verify_concurrency: usize,
    /// Share of requests the primary carrier fails with a retryable error (0–1).
    pub primary_error_rate: f64,
}

/// The figures of one run.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// The options of the run.
    pub options: BenchOptions,
    /// SMS accepted by a carrier.
    pub delivered: usize,
    /// Of those, accepted by the failover carrier.
    pub via_failover: usize,
    /// Attempts the primary carrier refused.
    pub primary_errors: usize,
    /// Delivered SMS per second, first publish → last SMS.
    pub otp_per_sec: f64,
    /// Publish → SMS accepted, p50 / p99 / max, milliseconds.
    pub delivery_ms: (f64, f64, f64),
    /// Verifications per second.
    pub verify_per_sec: f64,
    /// Verify round trip p50 / p99 / max, milliseconds.
    pub verify_ms: (f64, f64, f64),
    /// Verifications approved.
    pub approved: usize,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = &self.options;
        let offered = o.rate.map_or("as fast as possible".to_owned(), |r| format!("{r}/s"));
        writeln!(f, "| measure | value |\n|---|---|")?;
        writeln!(f, "| requests (offered) | {} ({offered}) |", o.requests)?;
        writeln!(f, "| primary carrier error rate | {:.0} % |", o.primary_error_rate * 100.0)?;
        let pct = 100.0 * self.delivered as f64 / o.requests as f64;
        writeln!(f, "| delivered | {} ({pct:.2} %), {} via failover |", self.delivered, self.via_failover)?;
        writeln!(f, "| primary carrier errors | {} |", self.primary_errors)?;
        writeln!(f, "| pipeline throughput (publish → SMS accepted) | {:.0} OTP/s |", self.otp_per_sec)?;
        let (p50, p99, max) = self.delivery_ms;
        writeln!(f, "| delivery latency p50 / p99 / max | {p50:.1} / {p99:.1} / {max:.1} ms |")?;
        writeln!(f, "| verify throughput ({} clients) | {:.0} req/s |", o.verify_concurrency, self.verify_per_sec)?;
        let (p50, p99, max) = self.verify_ms;
        writeln!(f, "| verify latency p50 / p99 / max | {p50:.2} / {p99:.2} / {max:.2} ms |")?;
        write!(f, "| verifications approved | {} / {} |", self.approved, self.delivered)
    }
}

fn millis(h: &Histogram<u64>) -> (f64, f64, f64) {
    let ms = |us: u64| us as f64 / 1000.0;
    (ms(h.value_at_quantile(0.5)), ms(h.value_at_quantile(0.99)), ms(h.max()))
}

fn phone(i: usize) -> String {
    format!("+1415{}", 2_000_000 + i)
}

/// A fake carrier and the instant its arrival times count from.
struct Carrier {
    fake: FakeCarrier,
    zero: Instant,
}

impl Carrier {
    async fn start(config: FakeCarrierConfig) -> Result<Self, BenchError> {
        let fake = FakeCarrier::start(([127, 0, 0, 1], 0).into(), config).await?;
        Ok(Self { zero: fake.epoch(), fake })
    }

    fn accepted(&self) -> Vec<(ReceivedSms, Instant)> {
        self.fake
            .messages()
            .into_iter()
            .filter(|m| m.accepted)
            .map(|m| {
                let at = self.zero + Duration::from_micros(m.at_us);
                (m, at)
            })
            .collect()
    }
}

/// Runs the benchmark against the broker in `base` (its URL is used; names
/// get a private prefix, and everything is deleted afterwards).
pub async fn run(base: &Config, options: BenchOptions) -> Result<BenchReport, BenchError> {
    let quiet = FakeCarrierConfig { receipts: false, ..Default::default() };
    let primary = Carrier::start(FakeCarrierConfig { error_rate: options.primary_error_rate, ..quiet.clone() }).await?;
    let failover = Carrier::start(quiet).await?;

    let dir = std::env::temp_dir().join(format!("otp-bench-{}", uuid::Uuid::new_v4().simple()));
    let prefix = format!("bench-{}.", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let api_key = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let mut config = base.clone();
    config.broker.prefix = prefix.clone();
    config.broker.queue_expires_ms = Some(600_000);
    config.store.data_dir = dir.clone();
    config.http.listen = ([127, 0, 0, 1], 0).into();
    config.http.api_keys = vec![api_key.clone()];
    config.http.rate_per_key_per_sec = 0; // the load generator is one key
    config.carriers.twilio = Some(TwilioConfig {
        base_url: primary.fake.base_url(),
        account_sid: "ACbench".into(),
        auth_token: "bench-token".into(),
        api_key_sid: None,
        api_key_secret: None,
        from: Some("+15005550006".into()),
        messaging_service_sid: None,
        status_callback: None,
        timeout_ms: 5_000,
    });
    config.carriers.vonage = Some(VonageConfig {
        base_url: failover.fake.base_url(),
        api_key: "bench".into(),
        api_secret: Some("bench-secret".into()),
        signature_secret: None,
        from: "OTP".into(),
        callback: None,
        receipt_token: None,
        timeout_ms: 5_000,
    });
    config.routing.default = vec![
        RouteEntry::Weighted { carrier: "twilio".into(), weight: 1 },
        RouteEntry::Weighted { carrier: "vonage".into(), weight: 0 },
    ];

    let generator = GeneratorApp::build(&config, Arc::new(SystemClock)).await?;
    let sender = SenderApp::build(&config, Arc::new(SystemClock), false).await?;
    let api = generator.local_addr();
    let (g_broker, s_broker) = (generator.broker(), sender.broker());
    let stop = CancellationToken::new();
    let apps = tokio::spawn({
        let stop = stop.clone();
        async move { tokio::join!(generator.run(stop.clone()), sender.run(stop)) }
    });
    if !(g_broker.wait_connected(Duration::from_secs(10)).await
        && s_broker.wait_connected(Duration::from_secs(10)).await)
    {
        return Err(BenchError::Incomplete("the pipeline did not connect to RabbitMQ within 10 s"));
    }

    // Publish phase: paced (or not), confirms pipelined within a window.
    let topology = Topology::new(&prefix, None);
    let connection = Connection::connect(&config.broker.url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut published_at = HashMap::with_capacity(options.requests);
    let mut pending = std::collections::VecDeque::new();
    let started = Instant::now();
    for i in 0..options.requests {
        if let Some(rate) = options.rate {
            let due = started + Duration::from_secs_f64(i as f64 / f64::from(rate.max(1)));
            tokio::time::sleep_until(due.into()).await;
        }
        let request = RawRequest { request_id: format!("bench-{i}"), phone: phone(i), ..Default::default() };
        let body = serde_json::to_vec(&request).expect("requests serialize");
        published_at.insert(request.phone.clone(), Instant::now());
        let confirm = channel
            .basic_publish(
                topology.exchange.as_str().into(),
                Topology::REQUEST_KEY.into(),
                BasicPublishOptions::default(),
                &body,
                json_properties(),
            )
            .await?;
        pending.push_back(confirm);
        while pending.len() >= options.publish_window {
            if let Some(c) = pending.pop_front() {
                c.await?;
            }
        }
    }
    for c in pending {
        c.await?;
    }
    // Wait until every request is delivered, or nothing moved for 30 s.
    let mut last_count = 0;
    let mut last_change = Instant::now();
    loop {
        let count = primary.accepted().len() + failover.accepted().len();
        if count >= options.requests {
            break;
        }
        if count != last_count {
            (last_count, last_change) = (count, Instant::now());
        } else if last_change.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = connection.close(200, "bye".into()).await;
    let via_primary = primary.accepted();
    let via_failover = failover.accepted();
    let primary_errors = primary.fake.messages().iter().filter(|m| !m.accepted).count();
    let delivered: Vec<_> = via_primary.iter().chain(&via_failover).collect();
    let last = delivered.iter().map(|(_, at)| *at).max().unwrap_or(started);
    let otp_per_sec = delivered.len() as f64 / (last - started).as_secs_f64().max(1e-9);
    let mut delivery = histogram();
    for (sms, at) in &delivered {
        if let Some(sent) = published_at.get(&sms.to) {
            delivery.saturating_record(at.saturating_duration_since(*sent).as_micros() as u64);
        }
    }

    // Verify phase: every collected code, `verify_concurrency` clients.
    let work: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(
        delivered.iter().filter_map(|(sms, _)| Some((sms.to.clone(), sms.code.clone()?))).collect(),
    ));
    let client = reqwest::Client::builder().pool_max_idle_per_host(options.verify_concurrency).build()?;
    let url = format!("http://{api}/v1/verify");
    let verify_started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..options.verify_concurrency {
        let (work, client, url, key) = (work.clone(), client.clone(), url.clone(), api_key.clone());
        workers.spawn(async move {
            let mut hist = histogram();
            let mut approved = 0usize;
            loop {
                let Some((phone, code)) = work.lock().expect("work lock").pop() else {
                    break;
                };
                let t = Instant::now();
                let response = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&serde_json::json!({"phone": phone, "code": code}))
                    .send()
                    .await;
                hist.saturating_record(t.elapsed().as_micros() as u64);
                approved += usize::from(response.map(|r| r.status() == 200).unwrap_or(false));
            }
            (hist, approved)
        });
    }
    let mut verify = histogram();
    let mut approved = 0;
    for (hist, ok) in workers.join_all().await {
        verify.add(hist).expect("histograms of one shape add up");
        approved += ok;
    }
    let verify_per_sec = verify.len() as f64 / verify_started.elapsed().as_secs_f64();

    stop.cancel();
    let _ = apps.await;
    primary.fake.shutdown().await;
    failover.fake.shutdown().await;
    cleanup(&config.broker.url, &topology).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(BenchReport {
        delivered: delivered.len(),
        via_failover: via_failover.len(),
        primary_errors,
        otp_per_sec,
        delivery_ms: millis(&delivery),
        verify_per_sec,
        verify_ms: millis(&verify),
        approved,
        options,
    })
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
