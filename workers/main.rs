//! `otp-pipeline`: the entry point of every process. Each subcommand only
//! reads configuration and starts what the library builds.

mod all_in_one;
mod bench;
mod fake_carrier;
mod generator;
mod publish;
mod sender;

use clap::{Parser, Subcommand};
use otp_pipeline::config::Config;
use std::path::PathBuf;

#[derive(Parser)]
#[command(version, about = "Self-hosted, queue-native OTP service")]
struct Cli {
    /// TOML configuration file (defaults apply without one; `OTP_*` variables override both).
    #[arg(long, short, global = true, env = "OTP_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generator, sender and HTTP API in one process (single machine, development).
    AllInOne,
    /// The generator: consumes requests, stores digests, serves the HTTP API.
    Generator,
    /// A sender: consumes deliveries and pushes SMS to the carrier.
    Sender,
    /// Publishes one OTP request to RabbitMQ and prints the generator's reply.
    Publish(publish::Args),
    /// Load run of an in-process all-in-one pipeline (private prefix, temp dir).
    Bench(bench::Args),
    /// A fake SMS carrier (Twilio, MSG91, Vonage and webhook APIs) on loopback.
    FakeCarrier(fake_carrier::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    otp_pipeline::telemetry::init_tracing(&config.log.format, &config.log.level);
    match cli.command {
        Command::AllInOne => all_in_one::run(config, cli.config).await,
        Command::Generator => generator::run(config, cli.config).await,
        Command::Sender => sender::run(config).await,
        Command::Publish(args) => publish::run(config, args).await,
        Command::Bench(args) => bench::run(config, args).await,
        Command::FakeCarrier(args) => fake_carrier::run(args).await,
    }
}
