//! Typed configuration: built-in defaults, then a TOML file, then `OTP_*`
//! environment variables (`OTP_BROKER__URL`, `OTP_HTTP__LISTEN`, …).

use crate::domain::{CodeLength, Limits};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
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
    /// Which carriers each number goes to.
    pub routing: RoutingConfig,
    /// Abuse resistance: send and verify limits, geo permissions, SMS-pumping guard.
    pub limits: crate::domain::limits::Policies,
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
    /// Generator shards: phone numbers are split across this many generators
    /// (1: one generator owns every number).
    pub shards: u16,
    /// `classic` or `quorum` (replicated queues for a RabbitMQ cluster).
    pub queue_type: QueueType,
    /// The key that seals internal messages (hex, at least 64 hex digits),
    /// the same in every process of a deployment. Unset: read from
    /// `internal_key_file`, created by the first process that starts.
    pub internal_key: Option<Secret>,
    /// Where the sealing key lives when `internal_key` is unset
    /// (default `<store.data_dir>/internal.key`).
    pub internal_key_file: Option<PathBuf>,
    /// Retired sealing keys (hex) whose seals are still accepted.
    pub previous_internal_keys: Vec<Secret>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            prefix: String::new(),
            prefetch: 64,
            queue_expires_ms: None,
            shards: 1,
            queue_type: QueueType::Classic,
            internal_key: None,
            internal_key_file: None,
            previous_internal_keys: Vec::new(),
        }
    }
}

/// A configured secret (a key, a token, a carrier's password): `Debug`
/// prints `<redacted>`, serializing writes `<redacted>`, and only
/// [`Secret::expose`] gives the value, to the code that uses it.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(SecretString);

impl Secret {
    /// The secret's text.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// Whether it is empty (or only blanks).
    pub fn is_blank(&self) -> bool {
        self.expose().trim().is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

impl AsRef<str> for Secret {
    fn as_ref(&self) -> &str {
        self.expose()
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.into())
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value.into())
    }
}

/// The kind of queues declared (`broker.queue_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// RabbitMQ's classic queues (one node).
    Classic,
    /// Replicated quorum queues (a RabbitMQ cluster).
    Quorum,
}

/// How logs are written (`log.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people: one line per event.
    Pretty,
    /// For log shippers: one JSON object per line.
    Json,
}

/// Where the generator's state lives.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory for the sled database, `hmac.key` and `api_keys`.
    pub data_dir: PathBuf,
    /// The HMAC key for code digests, hex (at least 64 hex digits). If unset,
    /// it is read from `<data_dir>/hmac.key`, created on first start (mode 0600).
    pub hmac_key: Option<Secret>,
    /// Retired HMAC keys (hex). Codes issued under them keep verifying until
    /// they expire; drop a key from this list once its codes have (`ttl_secs` ≤ 1 h).
    pub previous_hmac_keys: Vec<Secret>,
    /// How often the sweeper removes expired codes and stale records, seconds.
    pub sweep_interval_secs: u64,
    /// How long a finished request's record is kept (for `GET /v1/otp/{id}`
    /// and idempotency on its request id), seconds.
    pub retention_secs: u64,
    /// sled's page cache, MiB: bounds the generator's memory.
    pub cache_mb: u64,
    /// How long a batch of store changes waits for more to share its fsync,
    /// microseconds (0: flush at once). Trades a little latency for fewer fsyncs.
    pub commit_window_us: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            hmac_key: None,
            previous_hmac_keys: Vec::new(),
            sweep_interval_secs: 60,
            retention_secs: 86_400,
            cache_mb: 64,
            commit_window_us: 1_000,
        }
    }
}

/// Code policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeneratorConfig {
    /// Digits when a request names none (4–10).
    pub default_code_length: u8,
    /// Fewest digits a request may ask for (4–10, at most
    /// `default_code_length`); shorter requests are rejected `invalid_request`.
    pub min_code_length: u8,
    /// Lifetime when a request names none, seconds (30–3600).
    pub default_ttl_secs: u32,
    /// Wrong codes allowed before a code is locked.
    pub max_attempts: u8,
    /// `{app}` in templates.
    pub app_name: String,
    /// This generator's shard, `0..broker.shards`.
    pub shard: u16,
    /// With `broker.shards` > 1: every shard's HTTP base URL, by shard, so a
    /// verify (or status) call that reaches the wrong shard is forwarded.
    pub shard_urls: Vec<String>,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            default_code_length: 6,
            min_code_length: 6,
            default_ttl_secs: 300,
            max_attempts: 5,
            app_name: "otp-pipeline".into(),
            shard: 0,
            shard_urls: Vec::new(),
        }
    }
}

impl GeneratorConfig {
    /// The request defaults as domain limits.
    pub fn limits(&self) -> Result<Limits, ConfigError> {
        let default_code_length = CodeLength::new(self.default_code_length)
            .ok_or_else(|| ConfigError::OutOfRange("generator.default_code_length must be 4-10".into()))?;
        if !crate::domain::request::TTL_RANGE_SECS.contains(&self.default_ttl_secs) {
            return Err(ConfigError::OutOfRange("generator.default_ttl_secs must be 30-3600".into()));
        }
        if self.max_attempts == 0 {
            return Err(ConfigError::OutOfRange("generator.max_attempts must be at least 1".into()));
        }
        if !self.shard_urls.is_empty() && usize::from(self.shard) >= self.shard_urls.len() {
            return Err(ConfigError::OutOfRange("generator.shard must index generator.shard_urls".into()));
        }
        let min_code_length =
            CodeLength::new(self.min_code_length).filter(|min| *min <= default_code_length).ok_or_else(|| {
                ConfigError::OutOfRange("generator.min_code_length must be 4-10 and at most default_code_length".into())
            })?;
        Ok(Limits { default_code_length, default_ttl_secs: self.default_ttl_secs, min_code_length })
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
    pub api_keys: Vec<Secret>,
    /// Keys scoped to one application each (application name → its keys):
    /// such a key sees only the requests made with its application's keys.
    pub scoped_api_keys: BTreeMap<String, Vec<Secret>>,
    /// Largest request body accepted, bytes.
    pub max_body_bytes: usize,
    /// Keys of the operator routes (`/v1/admin/*`: list and lift quarantines),
    /// separate from the applications' keys. Empty: those routes answer 401.
    pub admin_api_keys: Vec<Secret>,
    /// Requests per second per API key on `/v1` routes (token bucket); 0 = unlimited.
    pub rate_per_key_per_sec: u32,
    /// Burst per API key.
    pub burst_per_key: u32,
    /// Time a client has to send a request's headers, milliseconds; an idle
    /// keep-alive connection is closed after as long (this port and the sender's).
    pub header_timeout_ms: u64,
    /// Time a request may take from its headers to its response, milliseconds;
    /// past it the client gets 503.
    pub request_timeout_ms: u64,
    /// HTTP connections open at once on this port (and on the sender's); more
    /// are closed as soon as they are accepted.
    pub max_connections: usize,
}

impl HttpConfig {
    /// The edge limits these settings give.
    pub fn edge_limits(&self) -> crate::http::EdgeLimits {
        crate::http::EdgeLimits {
            header_timeout: std::time::Duration::from_millis(self.header_timeout_ms.max(1)),
            max_connections: self.max_connections.max(1),
            request_timeout: std::time::Duration::from_millis(self.request_timeout_ms.max(1)),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_keys: Vec::new(),
            admin_api_keys: Vec::new(),
            scoped_api_keys: BTreeMap::new(),
            max_body_bytes: 16 * 1024,
            rate_per_key_per_sec: 200,
            burst_per_key: 400,
            header_timeout_ms: 10_000,
            request_timeout_ms: 10_000,
            max_connections: 512,
        }
    }
}

/// Sender workers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SenderConfig {
    /// Listen address for `/metrics`, `/healthz`, `/readyz` and the carriers'
    /// delivery-receipt callbacks (`/receipts/{twilio,vonage,msg91}`).
    pub listen: SocketAddr,
    /// Retries of one delivery on one carrier, before failing over.
    pub retry: RetryConfig,
    /// Circuit breaker applied to every carrier.
    pub breaker: BreakerConfig,
    /// Per-carrier concurrency cap and send rate, by carrier name.
    pub limits: BTreeMap<String, CarrierLimits>,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
            retry: RetryConfig::default(),
            breaker: BreakerConfig::default(),
            limits: BTreeMap::new(),
        }
    }
}

/// When a carrier's circuit opens and when it is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failed deliveries (after their retries) that open the circuit.
    pub failure_threshold: u32,
    /// How long an open circuit stays open before one probe is let through, ms.
    pub open_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self { failure_threshold: 5, open_ms: 30_000 }
    }
}

/// Limits of one carrier, so bursts do not trip its throttling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CarrierLimits {
    /// Requests to this carrier in flight at once (per sender process).
    pub concurrency: u32,
    /// Sustained sends per second (token bucket); 0 means unlimited.
    pub rate_per_sec: u32,
    /// Bucket size: sends allowed in a burst.
    pub burst: u32,
}

impl Default for CarrierLimits {
    fn default() -> Self {
        Self { concurrency: 64, rate_per_sec: 0, burst: 1 }
    }
}

/// Which carriers a number goes to, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// Route for numbers no country route matches.
    pub default: Vec<RouteEntry>,
    /// Per-country routes, by calling code without `+` (`"91"`, `"1"`, `"44"`).
    pub countries: BTreeMap<String, Vec<RouteEntry>>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self { default: vec![RouteEntry::Name("console".into())], countries: BTreeMap::new() }
    }
}

/// One carrier in a route: a bare name (weight 1), or a table with a weight.
///
/// The first carrier of a delivery is drawn among the route's entries in
/// proportion to their weights; the others follow, in listed order, as
/// failover. Weight 0 means "failover only".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RouteEntry {
    /// `"twilio"`.
    Name(String),
    /// `{ carrier = "twilio", weight = 3 }`.
    Weighted {
        /// Carrier name.
        carrier: String,
        /// Share of first attempts.
        weight: u32,
    },
}

impl RouteEntry {
    /// The carrier's name.
    pub fn carrier(&self) -> &str {
        match self {
            Self::Name(name) | Self::Weighted { carrier: name, .. } => name,
        }
    }

    /// Its weight (1 for a bare name).
    pub fn weight(&self) -> u32 {
        match self {
            Self::Name(_) => 1,
            Self::Weighted { weight, .. } => *weight,
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
        Self { min_delay_ms: 100, max_delay_ms: 2_000, max_retries: 2 }
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

/// Settings of each carrier. A carrier named in a route must be configured here
/// (`console` needs nothing).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CarriersConfig {
    /// The generic webhook carrier.
    pub webhook: WebhookConfig,
    /// Twilio Programmable Messaging.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub twilio: Option<TwilioConfig>,
    /// MSG91 (v5 flow API, DLT templates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msg91: Option<Msg91Config>,
    /// Vonage SMS API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vonage: Option<VonageConfig>,
}

/// Twilio Programmable Messaging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioConfig {
    /// API base URL (tests point it at loopback).
    #[serde(default = "TwilioConfig::default_base_url")]
    pub base_url: String,
    /// Account SID (`AC…`): in the URL, and the basic-auth user unless an API key is set.
    pub account_sid: String,
    /// Auth token: basic-auth password (without an API key) and the key that
    /// checks `X-Twilio-Signature` on status callbacks.
    pub auth_token: Secret,
    /// API key SID (`SK…`), to authenticate with an API key instead of the auth token.
    #[serde(default)]
    pub api_key_sid: Option<String>,
    /// API key secret.
    #[serde(default)]
    pub api_key_secret: Option<Secret>,
    /// Sender number (E.164) or alphanumeric id; or use `messaging_service_sid`.
    #[serde(default)]
    pub from: Option<String>,
    /// Messaging Service SID (`MG…`), instead of `from`.
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    /// Public URL of this sender's `/receipts/twilio`, sent as `StatusCallback`.
    /// Must be exactly what Twilio calls: it is part of the signature.
    #[serde(default)]
    pub status_callback: Option<String>,
    /// Per-request timeout, milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

impl TwilioConfig {
    /// A complete section against `base_url` (a fake carrier or Twilio's
    /// test credentials): account `ACtest`, auth token `auth_token`, Twilio's
    /// magic test sender `+15005550006`, no status callback, 5 s timeout. The
    /// one fixture tests, the bench and demos start from.
    pub fn sandbox(base_url: &str, auth_token: &str) -> Self {
        Self {
            base_url: base_url.into(),
            account_sid: "ACtest".into(),
            auth_token: auth_token.into(),
            api_key_sid: None,
            api_key_secret: None,
            from: Some("+15005550006".into()),
            messaging_service_sid: None,
            status_callback: None,
            timeout_ms: 5_000,
        }
    }

    fn default_base_url() -> String {
        "https://api.twilio.com".into()
    }
}

/// MSG91 v5 flow API (India requires a DLT-registered template).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Msg91Config {
    /// API base URL.
    #[serde(default = "Msg91Config::default_base_url")]
    pub base_url: String,
    /// The `authkey` header.
    pub authkey: Secret,
    /// The flow/DLT template id.
    pub template_id: String,
    /// Template variable that receives the code (`##otp##` in the template → `otp`).
    #[serde(default = "Msg91Config::default_code_variable")]
    pub code_variable: String,
    /// Secret expected as `?token=` on `/receipts/msg91` (the DLR webhook URL set in MSG91's panel).
    #[serde(default)]
    pub receipt_token: Option<Secret>,
    /// Per-request timeout, milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

impl Msg91Config {
    /// A complete section against `base_url`: authkey `auth-key-1`, template
    /// `6123abcd` with variable `otp`, no receipt token, 5 s timeout.
    pub fn sandbox(base_url: &str) -> Self {
        Self {
            base_url: base_url.into(),
            authkey: "auth-key-1".into(),
            template_id: "6123abcd".into(),
            code_variable: "otp".into(),
            receipt_token: None,
            timeout_ms: 5_000,
        }
    }

    fn default_base_url() -> String {
        "https://control.msg91.com".into()
    }
    fn default_code_variable() -> String {
        "otp".into()
    }
}

/// Vonage SMS API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VonageConfig {
    /// API base URL.
    #[serde(default = "VonageConfig::default_base_url")]
    pub base_url: String,
    /// `api_key`.
    pub api_key: String,
    /// `api_secret` (or sign requests with `signature_secret`).
    #[serde(default)]
    pub api_secret: Option<Secret>,
    /// Signature secret: requests are signed (`sig`, HMAC-SHA-256) instead of
    /// sending `api_secret`. Set the account's signing method to "SHA-256 HMAC"
    /// in Vonage's dashboard.
    #[serde(default)]
    pub signature_secret: Option<Secret>,
    /// Sender id or number.
    pub from: String,
    /// Public URL of this sender's `/receipts/vonage`, sent as `callback`
    /// (Vonage accepts at most 100 characters).
    #[serde(default)]
    pub callback: Option<String>,
    /// Secret expected as `?token=` on `/receipts/vonage` (append it to `callback`).
    #[serde(default)]
    pub receipt_token: Option<Secret>,
    /// Per-request timeout, milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

impl VonageConfig {
    /// A complete section against `base_url`: key `vonage-key` with secret
    /// `vonage-secret`, sender `OTP`, no callback, 5 s timeout.
    pub fn sandbox(base_url: &str) -> Self {
        Self {
            base_url: base_url.into(),
            api_key: "vonage-key".into(),
            api_secret: Some("vonage-secret".into()),
            signature_secret: None,
            from: "OTP".into(),
            callback: None,
            receipt_token: None,
            timeout_ms: 5_000,
        }
    }

    fn default_base_url() -> String {
        "https://rest.nexmo.com".into()
    }
}

fn default_timeout_ms() -> u64 {
    10_000
}

/// The generic webhook carrier: POSTs JSON to `url`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST.
    pub url: String,
    /// Optional bearer token sent as `Authorization: Bearer …`.
    pub token: Option<Secret>,
    /// Per-request timeout, milliseconds.
    pub timeout_ms: u64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self { url: "http://127.0.0.1:9099/sms".into(), token: None, timeout_ms: 5_000 }
    }
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `pretty` (humans) or `json` (log shippers).
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info,otp_pipeline=debug`. `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Pretty, level: "info".into() }
    }
}

impl Config {
    /// `generator.shard` must be one of `broker.shards`; with `generator`,
    /// a sharded generator must also know every shard's URL.
    pub fn check_shards(&self, generator: bool) -> Result<(), ConfigError> {
        let (shards, shard) = (self.broker.shards.max(1), self.generator.shard);
        if shard >= shards {
            return Err(ConfigError::OutOfRange(format!(
                "generator.shard {shard} must be below broker.shards {shards}"
            )));
        }
        let urls = self.generator.shard_urls.len();
        if generator && shards > 1 && urls != usize::from(shards) {
            let detail = format!("broker.shards = {shards} needs generator.shard_urls with {shards} URLs (has {urls})");
            return Err(ConfigError::OutOfRange(detail));
        }
        Ok(())
    }

    /// Defaults, then `path` (if given; it must exist), then `OTP_*` variables.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError::Missing(path.to_owned()));
            }
            figment = figment.merge(Toml::file(path));
        }
        // Every key lives in a section (`OTP_SECTION__KEY`): other `OTP_*`
        // variables (`OTP_CONFIG`, test settings) are not configuration.
        let env = Env::prefixed("OTP_").filter(|key| key.as_str().contains("__")).split("__");
        let config: Config = figment.merge(EnvStrings(env)).extract_lossy().map_err(Box::new)?;
        config.generator.limits()?;
        config.limits.validate().map_err(ConfigError::OutOfRange)?;
        config.check_shards(false)?;
        Ok(config)
    }
}

/// The `OTP_SECTION__KEY` variables as [`Env`] reads them, except that a
/// value that would parse as a number or a boolean stays the text it is:
/// `OTP_CARRIERS__TWILIO__FROM=+15005550006` is a string, as the field wants.
/// Extraction is lossy, so numeric and boolean fields still take such text
/// (`OTP_BROKER__PREFETCH=32`). Lists and tables (`'["a","b"]'`) parse as
/// before; inside them, quote numeric-looking strings.
struct EnvStrings(Env);

impl figment::Provider for EnvStrings {
    fn metadata(&self) -> figment::Metadata {
        self.0.metadata()
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        use figment::value::Value;
        let mut nested = Figment::new();
        for (key, text) in self.0.iter() {
            let value = match text.parse::<Value>().expect("parsing a Value is infallible") {
                Value::Num(..) | Value::Bool(..) => Value::from(text),
                other => other,
            };
            nested = nested.merge(Serialized::default(key.as_str(), value));
        }
        nested.data()
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

    /// Keys of `config/default.toml`, set or shown commented out (`# key = …`),
    /// as `section.key`; the maps (`sender.limits`, `routing.countries`) excluded.
    fn documented_keys() -> Vec<String> {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml")).unwrap();
        let (mut section, mut keys) = (String::new(), Vec::new());
        for line in text.lines() {
            let bare = line.trim_start_matches('#').trim();
            if let Some(name) = bare.strip_prefix('[').and_then(|r| r.split_once(']')).map(|(n, _)| n) {
                section = name.to_owned();
            } else if let Some((key, _)) = bare.split_once(" = ")
                && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                && !section.is_empty()
                && !["sender.limits", "routing.countries"].contains(&section.as_str())
            {
                keys.push(format!("{section}.{key}"));
            }
        }
        keys
    }

    #[test]
    fn the_readme_reference_lists_every_key_with_its_environment_variable() {
        let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
        let keys = documented_keys();
        assert!(keys.len() > 60, "{keys:?}");
        for key in keys {
            let env = format!("OTP_{}", key.to_uppercase().replace('.', "__"));
            let row = format!("| `{key}` |");
            let line = readme.lines().find(|l| l.starts_with(&row));
            assert!(line.is_some_and(|l| l.contains(&env)), "README lacks a reference row for {key} with {env}");
        }
    }

    #[test]
    fn every_shipped_config_file_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Config::load(Some(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API
    fn environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[broker]\nprefix = \"from-file.\"\n[http]\nlisten = \"127.0.0.1:1\"\n")?;
            jail.set_env("OTP_BROKER__PREFIX", "from-env.");
            // Variables outside a section are not configuration (`--config`'s own, tests').
            jail.set_env("OTP_CONFIG", "c.toml");
            jail.set_env("OTP_TEST_AMQP_URL", "amqp://elsewhere");
            jail.set_env("OTP_HTTP__SCOPED_API_KEYS", r#"{billing=["billing-key-0123456789"]}"#);
            let c = Config::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.broker.prefix, "from-env.");
            assert_eq!(c.http.listen.port(), 1);
            assert_eq!(c.http.scoped_api_keys["billing"][0].expose(), "billing-key-0123456789");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API
    fn numeric_looking_values_from_the_environment_load_as_strings_where_strings_are_wanted() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("OTP_CARRIERS__TWILIO__FROM", "+15005550006");
            jail.set_env("OTP_CARRIERS__TWILIO__ACCOUNT_SID", "1234567890");
            jail.set_env("OTP_CARRIERS__WEBHOOK__TOKEN", "true");
            jail.set_env("OTP_BROKER__PREFETCH", "32");
            jail.set_env("OTP_CARRIERS__TWILIO__AUTH_TOKEN", "0123");
            jail.set_env("OTP_HTTP__RATE_PER_KEY_PER_SEC", "0");
            jail.set_env("OTP_ROUTING__DEFAULT", "[webhook, console]");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            let twilio = c.carriers.twilio.expect("the section from the environment");
            assert_eq!((twilio.from.as_deref(), twilio.account_sid.as_str()), (Some("+15005550006"), "1234567890"));
            assert_eq!(c.carriers.webhook.token.as_ref().map(Secret::expose), Some("true"));
            assert_eq!(twilio.auth_token.expose(), "0123", "leading zeros kept");
            assert_eq!((c.broker.prefetch, c.http.rate_per_key_per_sec), (32, 0));
            assert_eq!(c.routing.default.len(), 2);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API
    fn unknown_keys_and_bad_ranges_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("typo.toml", "[broker]\nprefetchh = 3\n")?;
            assert!(Config::load(Some(Path::new("typo.toml"))).is_err());
            jail.set_env("OTP_BROKER__PREFETCHH", "3");
            assert!(Config::load(None).is_err(), "a misspelt variable is an error too");
            jail.clear_env();
            jail.create_file("range.toml", "[generator]\ndefault_code_length = 12\n")?;
            let err = Config::load(Some(Path::new("range.toml"))).unwrap_err();
            assert!(err.to_string().contains("default_code_length"), "{err}");
            assert!(matches!(Config::load(Some(Path::new("nope.toml"))), Err(ConfigError::Missing(_))));
            Ok(())
        });
    }

    #[test]
    fn secrets_never_show_in_debug_or_serialized_output() {
        let mut config = Config::default();
        config.store.hmac_key = Some("ab".repeat(32).into());
        config.carriers.twilio = Some(TwilioConfig::sandbox("http://127.0.0.1:1", "twilio-token-secret-1"));
        config.carriers.webhook.token = Some("webhook-token-secret-2".into());
        let shown = format!("{config:?}{}", serde_json::to_string(&config).unwrap());
        for secret in ["abababab", "twilio-token-secret-1", "webhook-token-secret-2"] {
            assert!(!shown.contains(secret), "{secret} shown");
        }
        assert!(shown.contains("<redacted>"));
        assert_eq!(config.carriers.twilio.unwrap().auth_token.expose(), "twilio-token-secret-1");
    }

    #[test]
    fn the_code_length_floor_defaults_to_six_and_stays_within_the_default() {
        let defaults = Config::default().generator.limits().unwrap();
        assert_eq!(defaults.min_code_length.get(), 6);
        let mut generator = Config::default().generator;
        generator.min_code_length = 4;
        assert_eq!(generator.limits().unwrap().min_code_length.get(), 4, "operators may lower it to the contract's 4");
        generator.min_code_length = 8;
        assert!(generator.limits().unwrap_err().to_string().contains("min_code_length"), "above the default");
        generator.min_code_length = 3;
        assert!(generator.limits().is_err(), "below the contract");
    }
}
