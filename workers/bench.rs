//! `otp-pipeline bench`: prints a results table (Markdown).

use otp_pipeline::bench::{self, BenchOptions};
use otp_pipeline::config::Config;

/// Options of `bench`.
#[derive(clap::Args)]
pub struct Args {
    /// OTP requests to publish.
    #[arg(long, default_value_t = 5_000)]
    requests: usize,
    /// Offered load, requests per second (default: as fast as confirms allow).
    #[arg(long)]
    rate: Option<u32>,
    /// Share of requests the primary (Twilio-API) fake carrier fails, 0-1.
    #[arg(long, default_value_t = 0.0)]
    primary_error_rate: f64,
    /// Publishes awaiting their confirm at once.
    #[arg(long, default_value_t = 256)]
    publish_window: usize,
    /// Concurrent HTTP clients verifying codes.
    #[arg(long, default_value_t = 64)]
    verify_concurrency: usize,
}

/// Runs the benchmark and prints its table.
pub async fn run(config: Config, args: Args) -> anyhow::Result<()> {
    let options = BenchOptions {
        requests: args.requests,
        rate: args.rate,
        primary_error_rate: args.primary_error_rate.clamp(0.0, 1.0),
        publish_window: args.publish_window.max(1),
        verify_concurrency: args.verify_concurrency.max(1),
    };
    let report = bench::run(&config, options).await?;
    println!("{report}");
    Ok(())
}
