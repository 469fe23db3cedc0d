//! `otp-pipeline all-in-one`: generator, one sender and the HTTP API in one process.

use otp_pipeline::app::{GeneratorApp, SenderApp, shutdown_on_signals};
use otp_pipeline::config::Config;
use otp_pipeline::domain::SystemClock;
use std::path::PathBuf;
use std::sync::Arc;

/// Runs both workers until a signal; the sender's metrics appear on the API's `/metrics`.
pub async fn run(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let generator = GeneratorApp::build(&config, Arc::new(SystemClock)).await?;
    let sender = SenderApp::build(&config, Arc::new(SystemClock), false).await?;
    let generator = generator.merge_routes(sender.receipt_routes());
    generator.key_reloader(config_path).reload_on_sighup()?;
    crate::generator::announce(&generator);
    eprintln!("Carriers: {} (console prints SMS below). Ctrl-C stops.", sender.carriers());
    let shutdown = shutdown_on_signals();
    let (g, s) = tokio::join!(generator.run(shutdown.clone()), sender.run(shutdown));
    g?;
    s?;
    Ok(())
}
