//! `otp-pipeline publish --phone +14155550123`: what a producer does, from the shell.

use otp_pipeline::broker::Topology;
use otp_pipeline::client;
use otp_pipeline::config::Config;
use otp_pipeline::domain::RawRequest;
use std::time::Duration;

/// Options of `publish`.
#[derive(clap::Args)]
pub struct Args {
    /// Recipient in E.164 form.
    #[arg(long)]
    phone: String,
    /// Idempotency key (default: a random one).
    #[arg(long)]
    request_id: Option<String>,
    /// Template name.
    #[arg(long)]
    template: Option<String>,
    /// Template locale.
    #[arg(long)]
    locale: Option<String>,
    /// Digits in the code (4-10).
    #[arg(long)]
    code_length: Option<u8>,
    /// Code lifetime in seconds (30-3600).
    #[arg(long)]
    ttl_secs: Option<u32>,
    /// Seconds to wait for the generator's reply (0: do not wait).
    #[arg(long, default_value_t = 10)]
    wait: u64,
}

/// Publishes the request and prints the reply as JSON.
pub async fn run(config: Config, args: Args) -> anyhow::Result<()> {
    let request = RawRequest {
        request_id: args.request_id.unwrap_or_else(|| format!("cli-{}", uuid::Uuid::new_v4())),
        phone: args.phone,
        template: args.template,
        locale: args.locale,
        code_length: args.code_length,
        ttl_secs: args.ttl_secs,
        channel: None,
    };
    let topology = Topology::new(&config.broker.prefix, None).sharded(None, config.broker.shards);
    let wait = (args.wait > 0).then(|| Duration::from_secs(args.wait));
    match client::publish(&config.broker.url, &topology, &request, wait).await? {
        Some(reply) => println!("{}", serde_json::to_string(&reply)?),
        None => println!("{}", serde_json::json!({"request_id": request.request_id, "published": true})),
    }
    Ok(())
}
