//! `otp-pipeline sender`.

use otp_pipeline::app::{SenderApp, shutdown_on_signals};
use otp_pipeline::config::Config;
use otp_pipeline::domain::SystemClock;
use std::sync::Arc;

/// Builds a sender with its ops port and runs until a signal.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let app = SenderApp::build(&config, Arc::new(SystemClock), true).await?;
    if let Some(addr) = app.local_addr() {
        eprintln!("otp-pipeline sender ({}), metrics on http://{addr}/metrics", app.carriers());
    }
    app.run(shutdown_on_signals()).await?;
    Ok(())
}
