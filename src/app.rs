//! Startup: builds each process from its configuration and runs it until a
//! shutdown signal. Binaries and integration tests start the service the
//! same way (tests bind port 0 and read the address back).

use crate::broker::{Broker, Subscription};
use crate::config::{Config, ConfigError, Secret};
use crate::domain::{Clock, TemplateError, Templates};
use crate::generator::{BrokerOutbox, Generator, Policy, RequestHandler, StatusHandler};
use crate::http::{self, ApiKeys, ApiState, Gate};
use crate::secrets::{self, SecretError};
use crate::sender::{DeliveryHandler, Sender, SenderError};
use crate::store::{Store, StoreError, Writer, WriterSettings};
use crate::supervisor::{Supervisor, TaskError};
use crate::telemetry;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Why a process could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A template is invalid.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// A secret could not be loaded.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The store could not be opened or flushed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The carrier or routing configuration is wrong.
    #[error(transparent)]
    Sender(#[from] SenderError),
    /// A supervised task failed, panicked or stopped early (named in the error).
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The HTTP port could not be bound or served.
    #[error("http {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// The failure.
        source: std::io::Error,
    },
}

/// Store commands that may wait for the writer before callers wait to send.
const WRITER_QUEUE: usize = 8192;

/// The generator process: request consumer, status consumer and HTTP API over one store.
pub struct GeneratorApp {
    generator: Arc<Generator>,
    broker: Arc<Broker>,
    edge: http::EdgeLimits,
    listener: TcpListener,
    router: axum::Router,
    created_api_key: Option<String>,
    data_dir: PathBuf,
    api_keys: Arc<ApiKeys>,
    sweep_every: std::time::Duration,
    retention: time::Duration,
}

/// Re-reads the API keys — from the configuration file and `OTP_HTTP__API_KEYS`,
/// else `<data_dir>/api_keys` — and swaps them in without a restart.
#[derive(Clone)]
pub struct KeyReloader {
    keys: Arc<ApiKeys>,
    config_path: Option<PathBuf>,
    data_dir: PathBuf,
}

impl KeyReloader {
    /// Reloads; on any error the old keys stay in force. Returns how many keys are active.
    pub fn reload(&self) -> Result<usize, AppError> {
        let config = Config::load(self.config_path.as_deref())?;
        let (keys, _) = secrets::api_keys(&config.http.api_keys, &self.data_dir)?;
        secrets::check_scoped_keys(&config.http.scoped_api_keys, &keys)?;
        self.keys.replace(&keys, &config.http.scoped_api_keys);
        Ok(keys.len())
    }

    /// Reloads on every SIGHUP, until the process ends.
    pub fn reload_on_sighup(self) -> std::io::Result<()> {
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                match self.reload() {
                    Ok(n) => tracing::info!(keys = n, "API keys reloaded"),
                    Err(e) => {
                        tracing::error!(error = %e, "API keys not reloaded; the old ones stay in force")
                    }
                }
            }
        });
        Ok(())
    }
}

impl GeneratorApp {
    /// Opens the store, loads secrets and binds the HTTP port.
    pub async fn build(config: &Config, clock: Arc<dyn Clock>) -> Result<Self, AppError> {
        // Everything that can be wrong with the configuration, before any
        // file is written, any port bound or any connection made.
        let policy = check_generator(config)?;
        let metrics = telemetry::metrics();
        let data_dir = config.store.data_dir.clone();
        secrets::ensure_data_dir(&data_dir)?;
        let key = secrets::key_ring(
            config.store.hmac_key.as_ref().map(Secret::expose),
            &config.store.previous_hmac_keys,
            &data_dir,
        )?;
        let (keys, created_api_key) = secrets::api_keys(&config.http.api_keys, &data_dir)?;
        let addr = config.http.listen;
        let listener = TcpListener::bind(addr).await.map_err(|source| AppError::Http { addr, source })?;
        let listener = listener.into_std().map_err(|source| AppError::Http { addr, source })?;
        let cache = config.store.cache_mb.saturating_mul(1024 * 1024);
        let store = open_store(&data_dir, cache, &listener, &metrics).await?;
        let listener = TcpListener::from_std(listener).map_err(|source| AppError::Http { addr, source })?;
        let seal = secrets::seal_ring(&config.broker, &data_dir)?;
        let broker = Broker::for_shard(&config.broker, "otp-generator", Some(config.generator.shard), seal);
        let settings = WriterSettings {
            keys: key,
            policies: policy.guards.clone(),
            max_attempts: policy.max_attempts,
            queue: WRITER_QUEUE,
            commit_window: std::time::Duration::from_micros(config.store.commit_window_us.min(100_000)),
        };
        let writer = Writer::start(store, settings)?;
        let outbox = BrokerOutbox::new(broker.clone());
        let generator = Arc::new(Generator::new(writer, policy, outbox, broker.topology().clone(), clock));
        secrets::check_scoped_keys(&config.http.scoped_api_keys, &keys)?;
        let api_keys = Arc::new(ApiKeys::with_scopes(&keys, &config.http.scoped_api_keys));
        let gate = Arc::new(Gate::new(api_keys.clone(), config.http.rate_per_key_per_sec, config.http.burst_per_key));
        let admin_keys = Arc::new(ApiKeys::new(&config.http.admin_api_keys));
        let admin = Arc::new(Gate::new(admin_keys, config.http.rate_per_key_per_sec, config.http.burst_per_key));
        let shards = Arc::new(http::Shards::new(&config.broker, &config.generator));
        let state = ApiState { generator: generator.clone(), broker: broker.clone(), gate, admin, shards };
        let router = http::api_router(state, metrics, config.http.max_body_bytes);
        let sweep_every = std::time::Duration::from_secs(config.store.sweep_interval_secs.max(1));
        let retention = time::Duration::seconds(i64::try_from(config.store.retention_secs).unwrap_or(i64::MAX));
        let edge = config.http.edge_limits();
        Ok(Self {
            generator,
            broker,
            edge,
            listener,
            router,
            created_api_key,
            data_dir,
            api_keys,
            sweep_every,
            retention,
        })
    }

    /// A handle that reloads the API keys (the configuration is read from
    /// `config_path`, as at start-up).
    pub fn key_reloader(&self, config_path: Option<PathBuf>) -> KeyReloader {
        KeyReloader { keys: self.api_keys.clone(), config_path, data_dir: self.data_dir.clone() }
    }

    /// Adds routes to the HTTP API (all-in-one mode mounts the receipt routes).
    pub fn merge_routes(mut self, routes: axum::Router) -> Self {
        self.router = self.router.merge(routes);
        self
    }

    /// The bound HTTP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// The API key created at this start, if there was none before.
    pub fn created_api_key(&self) -> Option<&str> {
        self.created_api_key.as_deref()
    }

    /// Where the store and secrets live.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// The broker handle (tests wait on its connection).
    pub fn broker(&self) -> Arc<Broker> {
        self.broker.clone()
    }

    /// Runs until `shutdown`: consumes, serves, then drains in-flight work and flushes the store.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AppError> {
        let addr = self.local_addr();
        let broker = self.broker.clone();
        let topology = broker.topology().clone();
        let mut subscriptions = vec![
            Subscription {
                queue: topology.requests.clone(),
                handler: Arc::new(RequestHandler(self.generator.clone())),
            },
            Subscription { queue: topology.status, handler: Arc::new(StatusHandler(self.generator.clone())) },
        ];
        if topology.ingress != topology.requests {
            // Sharded: every shard also drains the shared queue, forwarding what it does not own.
            let handler = Arc::new(RequestHandler(self.generator.clone()));
            subscriptions.push(Subscription { queue: topology.ingress, handler });
        }
        let mut tasks = Supervisor::new(shutdown.clone(), SHUTDOWN_GRACE);
        tasks.spawn("generator consumers", broker.run(subscriptions, shutdown.clone()));
        let (generator, stop, every, retention) =
            (self.generator.clone(), shutdown.clone(), self.sweep_every, self.retention);
        tasks.spawn("sweeper", ok(sweep_until(generator, stop, every, retention)));
        let served = http::serve_with(self.listener, self.router, shutdown, self.edge);
        tasks
            .spawn("generator HTTP API", async move { served.await.map_err(|source| AppError::Http { addr, source }) });
        let ended = tasks.wait().await;
        // Whatever ended the tasks, what the writer took is made durable.
        self.generator.writer().flush().await?;
        tracing::info!("generator stopped; store flushed");
        ended.map_err(AppError::Task)
    }
}

/// The generator's configuration checked as a whole — templates, limits,
/// shards, the admin and scoped keys — with no side effect; its policy.
/// `--check` runs this; [`GeneratorApp::build`] runs it before touching the
/// disk or the network.
pub fn check_generator(config: &Config) -> Result<Policy, AppError> {
    config.check_shards(true)?;
    if config.http.admin_api_keys.iter().any(|k| k.expose().trim().len() < secrets::MIN_API_KEY_LEN) {
        let detail = format!("http.admin_api_keys must be at least {} characters each", secrets::MIN_API_KEY_LEN);
        return Err(SecretError::Invalid(detail).into());
    }
    secrets::check_scoped_keys(&config.http.scoped_api_keys, &config.http.api_keys)?;
    Ok(Policy {
        limits: config.generator.limits()?,
        templates: Templates::new(config.templates.clone())?,
        max_attempts: config.generator.max_attempts,
        app_name: config.generator.app_name.clone(),
        guards: config.limits.clone(),
    })
}

/// Sweeps every `every` until `shutdown`; a failed sweep is tried again.
async fn sweep_until(
    generator: Arc<Generator>,
    shutdown: CancellationToken,
    every: Duration,
    retention: time::Duration,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticks.tick() => {
                if let Err(e) = generator.sweep(retention).await {
                    tracing::warn!(error = %e, "sweep failed; will try again");
                }
            }
        }
    }
}

/// A task that cannot fail, as a supervised one.
async fn ok(task: impl std::future::Future<Output = ()>) -> Result<(), std::convert::Infallible> {
    task.await;
    Ok(())
}

/// How long a process's tasks get to finish once shutdown begins (the HTTP
/// servers' own grace is shorter).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Opens the store. While it cannot be opened (disk full, permissions, a
/// damaged file), nothing is consumed — so nothing is acked — and `listener`
/// answers `/readyz` with 503 `{"store": false}` (and `/healthz`, `/metrics`),
/// retrying with backoff until it opens.
async fn open_store(
    data_dir: &std::path::Path,
    cache_bytes: u64,
    listener: &std::net::TcpListener,
    metrics: &metrics_exporter_prometheus::PrometheusHandle,
) -> Result<Store, AppError> {
    let error = match Store::open_with_cache(data_dir, cache_bytes) {
        Ok(store) => return Ok(store),
        Err(error) => error,
    };
    let addr = listener.local_addr().map_err(|source| AppError::Http { addr: ([0, 0, 0, 0], 0).into(), source })?;
    tracing::error!(error = %error, dir = %data_dir.display(), "cannot open the store: consuming nothing, not ready (http://{addr}/readyz); retrying");
    let clone = listener.try_clone().map_err(|source| AppError::Http { addr, source })?;
    let temporary = TcpListener::from_std(clone).map_err(|source| AppError::Http { addr, source })?;
    let opened = CancellationToken::new();
    let server = tokio::spawn(http::serve(temporary, http::not_ready_router(metrics.clone()), opened.clone()));
    let mut delays = backon::BackoffBuilder::build(
        backon::ExponentialBuilder::default()
            .with_min_delay(std::time::Duration::from_millis(500))
            .with_max_delay(std::time::Duration::from_secs(15))
            .without_max_times(),
    );
    let store = loop {
        tokio::time::sleep(delays.next().unwrap_or(std::time::Duration::from_secs(15))).await;
        match Store::open_with_cache(data_dir, cache_bytes) {
            Ok(store) => break store,
            Err(e) => tracing::warn!(error = %e, "the store still cannot be opened"),
        }
    };
    tracing::info!("store opened");
    opened.cancel();
    let _ = server.await;
    Ok(store)
}

/// A sender process: deliveries consumer, optionally with its ops HTTP port.
pub struct SenderApp {
    sender: Arc<Sender>,
    edge: http::EdgeLimits,
    broker: Arc<Broker>,
    listener: Option<TcpListener>,
    receipts: http::ReceiptState,
}

impl SenderApp {
    /// Builds the carriers; binds `sender.listen` if `with_http`.
    pub async fn build(config: &Config, clock: Arc<dyn Clock>, with_http: bool) -> Result<Self, AppError> {
        // Carriers and routes first: a wrong one stops the start before the port is bound.
        crate::sender::routed_carriers(config)?;
        let listener = if with_http {
            let addr = config.sender.listen;
            Some(TcpListener::bind(addr).await.map_err(|source| AppError::Http { addr, source })?)
        } else {
            None
        };
        Self::build_on(config, clock, listener)
    }

    /// Builds the carriers, serving ops and receipt routes on `listener` if given.
    pub fn build_on(config: &Config, clock: Arc<dyn Clock>, listener: Option<TcpListener>) -> Result<Self, AppError> {
        telemetry::metrics();
        let seal = secrets::seal_ring(&config.broker, &config.store.data_dir)?;
        let broker = Broker::new(&config.broker, "otp-sender", seal);
        let sender = Arc::new(Sender::from_config(config, broker.clone(), clock.clone())?);
        let receipts = http::ReceiptState {
            carriers: Arc::new(crate::carriers::receivers(config).map_err(SenderError::from)?),
            broker: broker.clone(),
            clock,
            replays: Default::default(),
        };
        Ok(Self { sender, edge: config.http.edge_limits(), broker, listener, receipts })
    }

    /// The bound ops address, if any.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The broker handle.
    pub fn broker(&self) -> Arc<Broker> {
        self.broker.clone()
    }

    /// The carriers this sender routes to, comma-separated (for start-up messages).
    pub fn carriers(&self) -> String {
        self.sender.carrier_names().join(", ")
    }

    /// The carriers' delivery-receipt routes (to mount elsewhere in all-in-one mode).
    pub fn receipt_routes(&self) -> axum::Router {
        http::receipts_router(self.receipts.clone())
    }

    /// Runs until `shutdown`, finishing in-flight deliveries first.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AppError> {
        let queue = self.broker.topology().deliveries.clone();
        let subscriptions = vec![Subscription { queue, handler: Arc::new(DeliveryHandler(self.sender.clone())) }];
        let mut tasks = Supervisor::new(shutdown.clone(), SHUTDOWN_GRACE);
        tasks.spawn("sender consumers", self.broker.clone().run(subscriptions, shutdown.clone()));
        if let Some(listener) = self.listener {
            let addr =
                listener.local_addr().map_err(|source| AppError::Http { addr: ([0, 0, 0, 0], 0).into(), source })?;
            let router =
                http::ops_router(self.broker.clone(), telemetry::metrics()).merge(http::receipts_router(self.receipts));
            let served = http::serve_with(listener, router, shutdown, self.edge);
            tasks.spawn(
                "sender HTTP port",
                async move { served.await.map_err(|source| AppError::Http { addr, source }) },
            );
        }
        let ended = tasks.wait().await;
        tracing::info!("sender stopped");
        ended.map_err(AppError::Task)
    }
}

pub use crate::supervisor::shutdown_on_signals;
