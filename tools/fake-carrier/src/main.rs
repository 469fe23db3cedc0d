//! `otp-fake-carrier`: Twilio-, MSG91-, Vonage- and webhook-compatible
//! endpoints on loopback, for demos, tests and load runs. A tool beside the
//! product, not part of it.

use clap::Parser;
use otp_fake_carrier::{FakeCarrier, FakeCarrierConfig};
use otp_pipeline::supervisor::shutdown_on_signals;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Options of `otp-fake-carrier`.
#[derive(Parser)]
#[command(
    version,
    about = "A fake SMS carrier (Twilio, MSG91, Vonage and webhook APIs) for demos, tests and load runs"
)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9099")]
    listen: SocketAddr,
    /// Behaviour as JSON (the body `GET /control` returns); flags below override it.
    #[arg(long)]
    behaviour: Option<PathBuf>,
    /// Added latency per send, milliseconds.
    #[arg(long)]
    latency_ms: Option<u64>,
    /// Share of sends answered with a retryable server error (0-1).
    #[arg(long)]
    error_rate: Option<f64>,
    /// Share of sends answered 429 with Retry-After (0-1).
    #[arg(long)]
    throttle_rate: Option<f64>,
    /// Auth token that signs Twilio status callbacks.
    #[arg(long, env = "FAKE_CARRIER_TWILIO_AUTH_TOKEN")]
    twilio_auth_token: Option<String>,
    /// Check only: parse the options and the behaviour file, then exit without listening.
    #[arg(long)]
    check: bool,
    /// Health check for containers: GET this URL, exit 0 on a 2xx, 1 otherwise (nothing else runs).
    #[arg(long, value_name = "URL", conflicts_with = "check")]
    probe: Option<String>,
}

/// Serves until SIGINT/SIGTERM.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(url) = &args.probe {
        let result = otp_pipeline::probe::probe(url, std::time::Duration::from_secs(2)).await;
        let (line, code) = result.map_or_else(|e| (format!("unhealthy: {e}"), 1), |ok| (format!("ok: {ok}"), 0));
        println!("{line}");
        std::process::exit(code);
    }
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(false).try_init().ok();
    let mut config = match &args.behaviour {
        Some(path) => serde_json::from_slice(&std::fs::read(path)?)?,
        None => FakeCarrierConfig::default(),
    };
    config.latency_ms = args.latency_ms.unwrap_or(config.latency_ms);
    config.error_rate = args.error_rate.unwrap_or(config.error_rate);
    config.throttle_rate = args.throttle_rate.unwrap_or(config.throttle_rate);
    config.twilio_auth_token = args.twilio_auth_token.or(config.twilio_auth_token);
    config.validate().map_err(anyhow::Error::msg)?;
    if args.check {
        return Ok(());
    }
    let carrier = FakeCarrier::start(args.listen, config).await?;
    eprintln!(
        "fake carrier on {} — GET /messages lists what it received, PUT /control changes its behaviour",
        carrier.base_url()
    );
    shutdown_on_signals().cancelled().await;
    carrier.shutdown().await;
    Ok(())
}
