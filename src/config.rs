//! Typed configuration: built-in defaults, then a TOML file, then `OTP_*`
//! environment variables (`OTP_BROKER__URL`, `OTP_HTTP__LISTEN`, …).

use crate::domain::{CodeLength, Limits};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file, key or value is wrong (figment names the key and the source).
    #[error("configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    /// The `--config` file does not exist.
    #[error("configuration file {0} does not exist")]
    Missing(PathBuf),
    /// A value is out of range.
    #[error("configuration: {0}")]
    OutOfRange(String),
}

/// The whole configuration of every process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// RabbitMQ connection and names.
    pub broker: BrokerConfig,
    /// Where sled keeps its data, and the secrets kept beside it.
    pub store: StoreConfig,
    /// Code policy.
    pub generator: GeneratorConfig,
    /// The generator's HTTP API.
    pub http: HttpConfig,
    /// Sender workers: carrier, retries, their own HTTP port.
    pub sender: SenderConfig,
    /// Carrier settings.
    pub carriers: CarriersConfig,
    /// SMS templates: name → locale → text (adds to the built-in `login`/`en`).
    pub templates: BTreeMap<String, BTreeMap<String, String>>,
    /// Logging.
    pub log: LogConfig,
}

/// RabbitMQ connection and topology names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// AMQP URI.
    pub url: String,
    /// Prepended to every exchange and queue name (tenants, tests).
    pub prefix: String,
    /// Unacknowledged messages a consumer may hold (and so process at once).
    pub prefetch: u16,
    /// Test-only: let queues vanish after this many idle milliseconds.
    pub queue_expires_ms: Option<u32>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            prefix: String::new(),
            prefetch: 64,
            queue_expires_ms: None,
        }
    }
}

/// Where the generator's state lives.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory for the sled database, `hmac.key` and `api_keys`.
    pub data_dir: PathBuf,
    /// The HMAC key for code digests, hex (at least 64 hex digits). If unset,
    /// it is read from `<data_dir>/hmac.key`, created on first start (mode 0600).
    pub hmac_key: Option<String>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            hmac_key: None,
        }
    }
}

/// Code policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeneratorConfig {
    /// Digits when a request names none (4–10).
    pub default_code_length: u8,
    /// Lifetime when a request names none, seconds (30–3600).
    pub default_ttl_secs: u32,
    /// Wrong codes allowed before a code is locked.
    pub max_attempts: u8,
    /// `{app}` in templates.
    pub app_name: String,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            default_code_length: 6,
            default_ttl_secs: 300,
            max_attempts: 5,
            app_name: "otp-pipeline".into(),
        }
    }
}

impl GeneratorConfig {
    /// The request defaults as domain limits.
    pub fn limits(&self) -> Result<Limits, ConfigError> {
        let default_code_length = CodeLength::new(self.default_code_length).ok_or_else(|| {
            ConfigError::OutOfRange("generator.default_code_length must be 4-10".into())
        })?;
        if !crate::domain::request::TTL_RANGE_SECS.contains(&self.default_ttl_secs) {
            return Err(ConfigError::OutOfRange(
                "generator.default_ttl_secs must be 30-3600".into(),
            ));
        }
        if self.max_attempts == 0 {
            return Err(ConfigError::OutOfRange(
                "generator.max_attempts must be at least 1".into(),
            ));
        }
        Ok(Limits {
            default_code_length,
            default_ttl_secs: self.default_ttl_secs,
        })
    }
}

/// The generator's HTTP API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Accepted bearer keys. If empty, keys are read from `<data_dir>/api_keys`
    /// (one per line), created with one random key on first start.
    pub api_keys: Vec<String>,
    /// Largest request body accepted, bytes.
    pub max_body_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_keys: Vec::new(),
            max_body_bytes: 16 * 1024,
        }
    }
}

/// Sender workers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SenderConfig {
    /// Listen address for `/metrics`, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
    /// Which carrier sends: `console` or `webhook`.
    pub carrier: String,
    /// Retries of one delivery.
    pub retry: RetryConfig,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
            carrier: "console".into(),
            retry: RetryConfig::default(),
        }
    }
}

/// Exponential backoff with jitter for retryable carrier failures.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// First delay, milliseconds.
    pub min_delay_ms: u64,
    /// Largest delay, milliseconds.
    pub max_delay_ms: u64,
    /// Retries after the first attempt.
    pub max_retries: usize,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            min_delay_ms: 200,
            max_delay_ms: 10_000,
            max_retries: 6,
        }
    }
}

impl RetryConfig {
    /// The backon policy: exponential ×2 with jitter.
    pub fn backoff(&self) -> backon::ExponentialBuilder {
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.min_delay_ms))
            .with_max_delay(Duration::from_millis(self.max_delay_ms))
            .with_max_times(self.max_retries)
            .with_factor(2.0)
            .with_jitter()
    }
}

/// Settings of each carrier.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CarriersConfig {
    /// The generic webhook carrier.
    pub webhook: WebhookConfig,
}

/// The generic webhook carrier: POSTs JSON to `url`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST.
    pub url: String,
    /// Optional bearer token sent as `Authorization: Bearer …`.
    pub token: Option<String>,
    /// Per-request timeout, milliseconds.
    pub timeout_ms: u64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:9099/sms".into(),
            token: None,
            timeout_ms: 5_000,
        }
    }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `pretty` (humans) or `json` (log shippers).
    pub format: String,
    /// A `tracing` filter, e.g. `info,otp_pipeline=debug`. `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "pretty".into(),
            level: "info".into(),
        }
    }
}

impl Config {
    /// Defaults, then `path` (if given; it must exist), then `OTP_*` variables.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError::Missing(path.to_owned()));
            }
            figment = figment.merge(Toml::file(path));
        }
        let config: Config = figment
            .merge(Env::prefixed("OTP_").split("__"))
            .extract()
            .map_err(Box::new)?;
        config.generator.limits()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_default_toml_matches_the_built_in_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
        let figment = Figment::from(Toml::file(&path));
        let file: Config = figment.extract().expect("config/default.toml parses");
        assert_eq!(
            serde_json::to_value(&file).unwrap(),
            serde_json::to_value(Config::default()).unwrap(),
            "config/default.toml and Config::default() drifted apart"
        );
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API
    fn environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "[broker]\nprefix = \"from-file.\"\n[http]\nlisten = \"127.0.0.1:1\"\n",
            )?;
            jail.set_env("OTP_BROKER__PREFIX", "from-env.");
            let c = Config::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.broker.prefix, "from-env.");
            assert_eq!(c.http.listen.port(), 1);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API
    fn unknown_keys_and_bad_ranges_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("typo.toml", "[broker]\nprefetchh = 3\n")?;
            assert!(Config::load(Some(Path::new("typo.toml"))).is_err());
            jail.create_file("range.toml", "[generator]\ndefault_code_length = 12\n")?;
            let err = Config::load(Some(Path::new("range.toml"))).unwrap_err();
            assert!(err.to_string().contains("default_code_length"), "{err}");
            assert!(matches!(
                Config::load(Some(Path::new("nope.toml"))),
                Err(ConfigError::Missing(_))
            ));
            Ok(())
        });
    }
}
