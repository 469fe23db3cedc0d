//! A load run of the all-in-one pipeline on this machine: an in-process
//! generator and sender (webhook carrier pointed at an in-process collector),
//! under a private queue prefix and a temporary data directory.
//!
//! It measures request throughput (first publish → last SMS at the carrier),
//! per-request latency (publish → SMS received), and `POST /v1/verify`
//! latency and rate with every code it collected.

use crate::app::{GeneratorApp, SenderApp};
use crate::broker::{Topology, json_properties};
use crate::config::Config;
use crate::domain::{RawRequest, SystemClock};
use axum::Json;
use axum::extract::State;
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

fn histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant figures is valid")
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// OTP requests to publish.
    pub requests: usize,
    /// Publishes awaiting their confirm at once.
    pub publish_window: usize,
    /// Concurrent HTTP clients for the verify phase.
    pub verify_concurrency: usize,
}

/// The figures of one run.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Requests published and delivered.
    pub requests: usize,
    /// Delivered SMS per second, first publish → last SMS.
    pub otp_per_sec: f64,
    /// Publish → SMS at the carrier, p50 / p99 / max, milliseconds.
    pub delivery_ms: (f64, f64, f64),
    /// Verifications per second.
    pub verify_per_sec: f64,
    /// Verify round trip p50 / p99 / max, milliseconds.
    pub verify_ms: (f64, f64, f64),
    /// Verifications approved (should equal `requests`).
    pub approved: usize,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "| measure | value |\n|---|---|")?;
        writeln!(f, "| requests | {} |", self.requests)?;
        writeln!(
            f,
            "| pipeline throughput (publish → SMS at carrier) | {:.0} OTP/s |",
            self.otp_per_sec
        )?;
        let (p50, p99, max) = self.delivery_ms;
        writeln!(
            f,
            "| delivery latency p50 / p99 / max | {p50:.1} / {p99:.1} / {max:.1} ms |"
        )?;
        writeln!(
            f,
            "| verify throughput | {:.0} req/s |",
            self.verify_per_sec
        )?;
        let (p50, p99, max) = self.verify_ms;
        writeln!(
            f,
            "| verify latency p50 / p99 / max | {p50:.2} / {p99:.2} / {max:.2} ms |"
        )?;
        write!(
            f,
            "| verifications approved | {} / {} |",
            self.approved, self.requests
        )
    }
}

#[derive(Default)]
struct Collected {
    sms: HashMap<String, (String, Instant)>,
}

type Collector = Arc<Mutex<Collected>>;

async fn receive(
    State(collected): State<Collector>,
    Json(body): Json<serde_json::Value>,
) -> Json<serde_json::Value> {
    let now = Instant::now();
    let id = body["request_id"].as_str().unwrap_or_default().to_owned();
    let code = body["text"]
        .as_str()
        .unwrap_or_default()
        .split(|c: char| !c.is_ascii_digit())
        .find(|run| run.len() >= 4)
        .unwrap_or_default()
        .to_owned();
    collected
        .lock()
        .expect("collector lock")
        .sms
        .insert(id, (code, now));
    Json(serde_json::json!({"id": "bench"}))
}

fn millis(h: &Histogram<u64>) -> (f64, f64, f64) {
    let ms = |us: u64| us as f64 / 1000.0;
    (
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max()),
    )
}

/// Runs the benchmark against the broker in `base` (its URL is used; names
/// get a private prefix, and everything is deleted afterwards).
pub async fn run(base: &Config, options: BenchOptions) -> Result<BenchReport, BenchError> {
    let collected: Collector = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let carrier_addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let router = axum::Router::new()
        .route("/sms", axum::routing::post(receive))
        .with_state(collected.clone());
    let carrier = tokio::spawn(crate::http::serve(listener, router, stop.clone()));

    let dir = std::env::temp_dir().join(format!("otp-bench-{}", uuid::Uuid::new_v4().simple()));
    let prefix = format!("bench-{}.", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let api_key = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let mut config = base.clone();
    config.broker.prefix = prefix.clone();
    config.broker.queue_expires_ms = Some(600_000);
    config.store.data_dir = dir.clone();
    config.http.listen = ([127, 0, 0, 1], 0).into();
    config.http.api_keys = vec![api_key.clone()];
    config.routing.default = vec![crate::config::RouteEntry::Name("webhook".into())];
    config.carriers.webhook.url = format!("http://{carrier_addr}/sms");

    let generator = GeneratorApp::build(&config, Arc::new(SystemClock)).await?;
    let sender = SenderApp::build(&config, Arc::new(SystemClock), false).await?;
    let api = generator.local_addr();
    let (g_broker, s_broker) = (generator.broker(), sender.broker());
    let apps = tokio::spawn({
        let stop = stop.clone();
        async move { tokio::join!(generator.run(stop.clone()), sender.run(stop)) }
    });
    if !(g_broker.wait_connected(Duration::from_secs(10)).await
        && s_broker.wait_connected(Duration::from_secs(10)).await)
    {
        return Err(BenchError::Incomplete(
            "the pipeline did not connect to RabbitMQ within 10 s",
        ));
    }

    // Publish phase: confirms pipelined within a window.
    let topology = Topology::new(&prefix, None);
    let connection =
        Connection::connect(&config.broker.url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut published_at = HashMap::with_capacity(options.requests);
    let mut pending = std::collections::VecDeque::new();
    let started = Instant::now();
    for i in 0..options.requests {
        let request = RawRequest {
            request_id: format!("bench-{i}"),
            phone: format!("+1415{}", 2_000_000 + i),
            ..Default::default()
        };
        let body = serde_json::to_vec(&request).expect("requests serialize");
        published_at.insert(request.request_id.clone(), Instant::now());
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
        if pending.len() >= options.publish_window
            && let Some(c) = pending.pop_front()
        {
            c.await?;
        }
    }
    for c in pending {
        c.await?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while collected.lock().expect("collector lock").sms.len() < options.requests {
        if Instant::now() > deadline {
            return Err(BenchError::Incomplete("not every SMS arrived within 120 s"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sms = std::mem::take(&mut collected.lock().expect("collector lock").sms);
    let last = sms.values().map(|(_, at)| *at).max().unwrap_or(started);
    let otp_per_sec = options.requests as f64 / (last - started).as_secs_f64();
    let mut delivery = histogram();
    for (id, (_, at)) in &sms {
        delivery.saturating_record((*at - published_at[id]).as_micros() as u64);
    }
    let _ = connection.close(200, "bye".into()).await;

    // Verify phase: every collected code, `verify_concurrency` clients.
    let work: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(
        sms.into_iter()
            .map(|(id, (code, _))| {
                let i: usize = id.trim_start_matches("bench-").parse().unwrap_or(0);
                (format!("+1415{}", 2_000_000 + i), code)
            })
            .collect(),
    ));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(options.verify_concurrency)
        .build()?;
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
    let verify_per_sec = options.requests as f64 / verify_started.elapsed().as_secs_f64();

    stop.cancel();
    let _ = apps.await;
    let _ = carrier.await;
    cleanup(&config.broker.url, &topology).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(BenchReport {
        requests: options.requests,
        otp_per_sec,
        delivery_ms: millis(&delivery),
        verify_per_sec,
        verify_ms: millis(&verify),
        approved,
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
        let _ = channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for x in [&t.exchange, &t.dlx] {
        let _ = channel
            .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "bye".into()).await;
}
