//! `otp-pipeline generator`.

use otp_pipeline::app::{GeneratorApp, shutdown_on_signals};
use otp_pipeline::config::Config;
use otp_pipeline::domain::SystemClock;
use std::path::PathBuf;
use std::sync::Arc;

/// Builds the generator, prints how to reach it, runs until a signal;
/// SIGHUP reloads the API keys.
pub async fn run(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let app = GeneratorApp::build(&config, Arc::new(SystemClock)).await?;
    app.key_reloader(config_path).reload_on_sighup()?;
    announce(&app);
    app.run(shutdown_on_signals()).await?;
    Ok(())
}

/// Tells a newcomer where the API is and, on first start, its key.
pub fn announce(app: &GeneratorApp) {
    eprintln!("otp-pipeline HTTP API on http://{}", app.local_addr());
    let keys = app.data_dir().join("api_keys");
    match app.created_api_key() {
        Some(key) => eprintln!("Created an API key (kept in {}):\n    {key}", keys.display()),
        None => eprintln!("API keys: from configuration or {}", keys.display()),
    }
}
