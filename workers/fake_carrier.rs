//! `otp-pipeline fake-carrier`: Twilio-, MSG91-, Vonage- and webhook-compatible
//! endpoints on loopback, for demos, tests and load runs.

use otp_pipeline::app::shutdown_on_signals;
use otp_pipeline::fake_carrier::{FakeCarrier, FakeCarrierConfig};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Options of `fake-carrier`.
#[derive(clap::Args)]
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
}

/// Serves until SIGINT/SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = match &args.behaviour {
        Some(path) => serde_json::from_slice(&std::fs::read(path)?)?,
        None => FakeCarrierConfig::default(),
    };
    config.latency_ms = args.latency_ms.unwrap_or(config.latency_ms);
    config.error_rate = args.error_rate.unwrap_or(config.error_rate);
    config.throttle_rate = args.throttle_rate.unwrap_or(config.throttle_rate);
    config.twilio_auth_token = args.twilio_auth_token.or(config.twilio_auth_token);
    config.validate().map_err(anyhow::Error::msg)?;
    let carrier = FakeCarrier::start(args.listen, config).await?;
    eprintln!(
        "fake carrier on {} — GET /messages lists what it received, PUT /control changes its behaviour",
        carrier.base_url()
    );
    shutdown_on_signals().cancelled().await;
    carrier.shutdown().await;
    Ok(())
}
