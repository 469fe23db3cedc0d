//! `otp-bench`: the load harness of otp-pipeline. Runs the pipeline (in this
//! process, or a running one) against the raw broker baseline and prints a
//! results table (Markdown). A tool beside the product, not part of it.

mod bench;
mod relay;

use bench::{BenchOptions, Load, RssOptions, Target};
use clap::Parser;
use otp_pipeline::config::Config;
use relay::RelayOptions;
use std::path::PathBuf;
use std::time::Duration;

/// mimalloc, as in the product binary: the in-process pipeline measures as it runs in production.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Options of `otp-bench`.
#[derive(Parser)]
#[command(version, about = "Load harness for otp-pipeline: the pipeline against the raw broker", after_long_help = AFTER_HELP)]
pub struct Args {
    /// otp-pipeline configuration (broker, prefix; in-process mode: everything). `OTP_*` variables override it.
    #[arg(long, short, env = "OTP_CONFIG")]
    config: Option<PathBuf>,
    /// OTP requests to publish (ignored with --duration).
    #[arg(long, default_value_t = 5_000)]
    requests: usize,
    /// Publish for this many seconds instead of a count (at --rate, or as fast as confirms allow).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Offered load, requests per second (default: as fast as confirms allow).
    #[arg(long)]
    rate: Option<u32>,
    /// Code lifetime each request asks for, seconds (30-3600). With a short one and
    /// OTP_STORE__RETENTION_SECS / OTP_STORE__SWEEP_INTERVAL_SECS, the store reaches a
    /// steady size within a run (for RSS runs).
    #[arg(long, default_value_t = 300)]
    ttl_secs: u32,
    /// Share of requests the primary (Twilio-API) fake carrier fails, 0-1 (in-process mode).
    #[arg(long, default_value_t = 0.0, conflicts_with = "target")]
    primary_error_rate: f64,
    /// Publishes awaiting their confirm at once.
    #[arg(long, default_value_t = 256)]
    publish_window: usize,
    /// Concurrent HTTP clients verifying codes.
    #[arg(long, default_value_t = 64)]
    verify_concurrency: usize,
    /// Skip the verify phase.
    #[arg(long)]
    no_verify: bool,
    /// Messages through the raw two-hop relay baseline, measured first in the same run.
    #[arg(long, default_value_t = 20_000)]
    relay_messages: usize,
    /// Relay message size, bytes (default: the serialized size of one of this bench's requests).
    #[arg(long)]
    relay_bytes: Option<usize>,
    /// Offered load of the relay, messages per second (default: as fast as confirms allow).
    #[arg(long)]
    relay_rate: Option<u32>,
    /// Skip the relay baseline.
    #[arg(long)]
    no_relay: bool,
    /// Running-pipeline mode: base URL of a running generator's HTTP API (e.g. http://127.0.0.1:8080).
    /// Requests go over AMQP to config's broker.url; see below for the limits to relax.
    #[arg(long, requires = "api_key")]
    target: Option<String>,
    /// API key of the running pipeline (with --target).
    #[arg(long, env = "OTP_BENCH_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Fake carrier the running pipeline sends to (codes for the verify phase), e.g. http://127.0.0.1:9099.
    #[arg(long, requires = "target")]
    fake_carrier: Option<String>,
    /// broker.prefix of the running pipeline (default: the configuration's).
    #[arg(long, requires = "target")]
    prefix: Option<String>,
    /// Sample VmRSS every SECS during the load phase (in-process: this process; with --target: --rss-pid).
    #[arg(long, value_name = "SECS")]
    rss_every: Option<f64>,
    /// Processes whose VmRSS to sample with --target (e.g. the generator's and senders' pids).
    #[arg(long, value_name = "PID", num_args = 1.., requires = "target")]
    rss_pid: Vec<u32>,
    /// The running pipeline's processes (with --target) whose CPU time is reported per OTP and per verify.
    #[arg(long, value_name = "PID", num_args = 1.., requires = "target")]
    service_pid: Vec<u32>,
    /// RSS drift is measured from the first sample after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    rss_warmup: f64,
    /// Stop waiting for outcomes after this many seconds without one.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    idle_timeout: u64,
    /// Also print a time series: delivery per window of SECS (by publish time) and every RSS sample.
    #[arg(long, value_name = "SECS")]
    series: Option<f64>,
}

const AFTER_HELP: &str = "\
Modes:
  in-process (default)  an all-in-one pipeline in this process: private queue prefix, temporary sled,
                        two in-process fake carriers (Twilio API, Vonage API as failover). The limits a
                        load run would trip are switched off for it: resend cooldown and codes per
                        window (limits.send), the SMS-pumping guard (limits.pumping.prefix_digits = 0)
                        and the per-key HTTP rate.
  --target URL          an already running generator and sender(s) on config's broker (e.g. scripts/run
                        --config config/fake-carriers.toml with `otp-fake-carrier`, or the
                        compose stack). Its own limits apply: start it with
                          OTP_LIMITS__SEND__RESEND_COOLDOWN_SECS=0 OTP_LIMITS__SEND__MAX_PER_WINDOW=0
                          OTP_LIMITS__PUMPING__PREFIX_DIGITS=0 OTP_HTTP__RATE_PER_KEY_PER_SEC=0
                        or requests get rejected (rate_limited, suspected_pumping: counted in the
                        report) and verifies answered 429. Route it to the fake carrier, not the
                        console carrier, and give --fake-carrier for the verify phase.

Each run measures publish → carrier accepted from the event.sent events (its `at`: the sender's clock;
same machine), then verifies every code. Numbers are consecutive from a random start among 128 million
valid US numbers, so runs rarely reuse one. With the relay baseline (default on) the pipeline's OTP/s is
also printed as a multiple of the raw broker's rate measured in the same run (target ≥ 0.6).

Examples:
  otp-bench --requests 20000                          # burst, with the relay baseline
  otp-bench --rate 1000 --duration 30 --no-relay      # steady load
  otp-bench --rate 1000 --duration 120 --rss-every 5 --no-verify --no-relay
  otp-bench --target http://127.0.0.1:8080 --api-key $KEY --fake-carrier http://127.0.0.1:9099";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = Config::load(args.config.as_deref())?;
    otp_pipeline::telemetry::init_tracing(config.log.format, &config.log.level);
    run(config, args).await
}

/// Runs the benchmark and prints its table.
async fn run(config: Config, args: Args) -> anyhow::Result<()> {
    let load = match args.duration {
        Some(secs) if secs > 0.0 => Load::Duration(Duration::from_secs_f64(secs)),
        Some(_) => anyhow::bail!("--duration must be positive"),
        None => Load::Count(args.requests),
    };
    let target = match args.target {
        Some(api) => Some(Target {
            api,
            api_key: args.api_key.ok_or_else(|| anyhow::anyhow!("--target needs --api-key"))?,
            fake_carrier: args.fake_carrier,
            prefix: args.prefix.unwrap_or_else(|| config.broker.prefix.clone()),
            service_pids: args.service_pid,
        }),
        None => None,
    };
    let relay = (!args.no_relay && args.relay_messages > 0).then(|| RelayOptions {
        messages: args.relay_messages,
        message_bytes: args.relay_bytes.unwrap_or_else(bench::typical_request_bytes),
        prefetch: config.broker.prefetch,
        publish_window: args.publish_window.max(1),
        rate: args.relay_rate,
    });
    let rss = args.rss_every.filter(|s| *s > 0.0).map(|secs| RssOptions {
        every: Duration::from_secs_f64(secs),
        pids: args.rss_pid,
        warmup: Duration::from_secs_f64(args.rss_warmup.max(0.0)),
    });
    let options = BenchOptions {
        load,
        rate: args.rate,
        primary_error_rate: args.primary_error_rate.clamp(0.0, 1.0),
        publish_window: args.publish_window.max(1),
        verify_concurrency: if args.no_verify { 0 } else { args.verify_concurrency.max(1) },
        relay,
        target,
        rss,
        idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
        series: args.series.filter(|s| *s > 0.0).map(Duration::from_secs_f64),
        ttl_secs: args.ttl_secs.clamp(30, 3600),
    };
    let report = bench::run(&config, options).await?;
    println!("{report}");
    if args.series.is_some() {
        print!("{}", report.series());
    }
    Ok(())
}
