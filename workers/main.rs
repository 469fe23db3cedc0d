//! `otp-pipeline`: the entry point of every process. Each subcommand only
//! reads configuration and starts what the library builds.

mod all_in_one;
mod generator;
mod publish;
mod sender;

use clap::{Parser, Subcommand};
use otp_pipeline::config::Config;
use std::path::PathBuf;

/// mimalloc: the pipeline allocates many short-lived buffers per message;
/// glibc malloc was ~11 % of CPU in the load profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(version, about = "Self-hosted, queue-native OTP service")]
struct Cli {
    /// TOML configuration file (defaults apply without one; `OTP_*` variables override both).
    #[arg(long, short, global = true, env = "OTP_CONFIG")]
    config: Option<PathBuf>,
    /// Check only: parse the arguments, load the configuration and check it as the command would at start
    /// (templates, limits, shards, keys, routed carriers), then exit without writing, connecting or listening
    /// (tests/compose.rs checks every docker-compose command so).
    #[arg(long, global = true)]
    check: bool,
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
    /// Health check for containers (no curl in the image): GET URL, exit 0 on a 2xx, 1 otherwise.
    Probe {
        /// What to GET, e.g. http://127.0.0.1:8080/readyz.
        url: reqwest::Url,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Probe { url, timeout_ms } = &cli.command
        && !cli.check
    {
        let result = otp_pipeline::probe::probe(url.as_str(), std::time::Duration::from_millis(*timeout_ms)).await;
        let (line, code) = result.map_or_else(|e| (format!("unhealthy: {e}"), 1), |ok| (format!("ok: {ok}"), 0));
        println!("{line}");
        std::process::exit(code);
    }
    let config = Config::load(cli.config.as_deref())?;
    if cli.check {
        // What the command would refuse at start, without starting anything.
        if matches!(cli.command, Command::AllInOne | Command::Generator) {
            otp_pipeline::app::check_generator(&config)?;
        }
        if !matches!(cli.command, Command::Generator) {
            otp_pipeline::sender::routed_carriers(&config)?;
        }
        return Ok(());
    }
    otp_pipeline::telemetry::init_tracing(config.log.format, &config.log.level);
    match cli.command {
        Command::AllInOne => all_in_one::run(config, cli.config).await,
        Command::Generator => generator::run(config, cli.config).await,
        Command::Sender => sender::run(config).await,
        Command::Publish(args) => publish::run(config, args).await,
        Command::Probe { .. } => unreachable!("handled before the configuration is loaded"),
    }
}
