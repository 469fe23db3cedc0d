//! The fake carrier: a loopback server that speaks the send APIs of Twilio,
//! MSG91, Vonage and the generic webhook, so that demos, tests and load runs
//! work without a real carrier.
//!
//! It keeps every send it received (accepted or refused) and lets callers read
//! them back ([`FakeCarrier::messages`] or `GET /messages`), e.g. to pick the
//! code out of the SMS. Faults are simulated per request, in this order: an
//! [`Outage`] window covering the carrier, then `error_rate`, then
//! `throttle_rate`; `latency_ms` is added to every send. Delivery receipts go
//! back to the URL each API uses (Twilio `StatusCallback`, Vonage `callback`,
//! MSG91's account-wide DLR webhook: [`FakeCarrierConfig::msg91_dlr_url`]).
//!
//! Routes (see [`router`]):
//!
//! | route | speaks |
//! |---|---|
//! | `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` | Twilio Programmable Messaging (form body, basic auth) |
//! | `POST /api/v5/flow` (and `/api/v5/flow/`) | MSG91 flow API (JSON body, `authkey` header) |
//! | `POST /sms/json` | Vonage SMS API (form or JSON body, `api_key` + `api_secret`/`sig`) |
//! | `POST /sms` | the generic webhook carrier (JSON body) |
//! | `GET /messages?to=&carrier=`, `DELETE /messages` | the received sends, as [`ReceivedSms`] |
//! | `GET /control`, `PUT /control` | the current [`FakeCarrierConfig`] |
//!
//! Only the phone number (masked) and the outcome are logged, never the text
//! or the code.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use otp_pipeline::domain::phone::mask;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Carrier name of the Twilio API, as in [`ReceivedSms::carrier`] and [`Outage::carrier`].
pub const TWILIO: &str = "twilio";
/// Carrier name of the MSG91 API.
pub const MSG91: &str = "msg91";
/// Carrier name of the Vonage API.
pub const VONAGE: &str = "vonage";
/// Carrier name of the generic webhook API.
pub const WEBHOOK: &str = "webhook";
const CARRIERS: [&str; 4] = [TWILIO, MSG91, VONAGE, WEBHOOK];

/// How the fake carrier behaves. Every field has a default (`#[serde(default)]`),
/// unknown fields are refused; `PUT /control` replaces it at run time.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FakeCarrierConfig {
    /// Milliseconds added to every send (default 0).
    pub latency_ms: u64,
    /// Share (0.0–1.0) of sends answered with a retryable server error in each
    /// API's own shape (default 0).
    pub error_rate: f64,
    /// Share (0.0–1.0) of sends answered 429 with `Retry-After` (Vonage: HTTP
    /// 200 with its status `"1"`, Throttled) (default 0).
    pub throttle_rate: f64,
    /// The `Retry-After` of throttled sends, seconds (default 1).
    pub retry_after_secs: u64,
    /// Windows during which a carrier answers only 503 (Vonage: status `"5"`).
    pub outages: Vec<Outage>,
    /// Whether delivery receipts are sent back (default true).
    pub receipts: bool,
    /// Delay before each receipt, milliseconds (default 100; Twilio gets
    /// `sent` after one delay and `delivered` after a second).
    pub receipt_delay_ms: u64,
    /// Signs Twilio status callbacks (`X-Twilio-Signature`) when set.
    pub twilio_auth_token: Option<String>,
    /// Where MSG91 delivery reports go (MSG91 has no per-message callback:
    /// the DLR webhook is set once per account).
    pub msg91_dlr_url: Option<String>,
    /// The shape of MSG91 delivery reports (default [`Msg91DlrFormat::Json`]).
    pub msg91_dlr_format: Msg91DlrFormat,
    /// Seeds the error/throttle draws for reproducible runs (None: from the
    /// OS). Every [`FakeCarrier::set_config`] with a seed restarts the sequence.
    pub seed: Option<u64>,
}

impl Default for FakeCarrierConfig {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            error_rate: 0.0,
            throttle_rate: 0.0,
            retry_after_secs: 1,
            outages: Vec::new(),
            receipts: true,
            receipt_delay_ms: 100,
            twilio_auth_token: None,
            msg91_dlr_url: None,
            msg91_dlr_format: Msg91DlrFormat::default(),
            seed: None,
        }
    }
}

impl std::fmt::Debug for FakeCarrierConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeCarrierConfig")
            .field("latency_ms", &self.latency_ms)
            .field("error_rate", &self.error_rate)
            .field("throttle_rate", &self.throttle_rate)
            .field("retry_after_secs", &self.retry_after_secs)
            .field("outages", &self.outages)
            .field("receipts", &self.receipts)
            .field("receipt_delay_ms", &self.receipt_delay_ms)
            .field("twilio_auth_token", &self.twilio_auth_token.as_ref().map(|_| "<redacted>"))
            .field("msg91_dlr_url", &self.msg91_dlr_url)
            .field("msg91_dlr_format", &self.msg91_dlr_format)
            .field("seed", &self.seed)
            .finish()
    }
}

impl FakeCarrierConfig {
    /// Checks rates (finite, 0.0–1.0), outage windows (`start_ms < end_ms`)
    /// and carrier names (`twilio`, `msg91`, `vonage`, `webhook`).
    pub fn validate(&self) -> Result<(), String> {
        for (name, rate) in [("error_rate", self.error_rate), ("throttle_rate", self.throttle_rate)] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0.0 and 1.0"));
            }
        }
        for outage in &self.outages {
            if outage.start_ms >= outage.end_ms {
                return Err("an outage needs start_ms < end_ms".into());
            }
            if let Some(carrier) = &outage.carrier
                && !CARRIERS.contains(&carrier.as_str())
            {
                return Err(format!("unknown carrier {carrier:?} in an outage (known: {})", CARRIERS.join(", ")));
            }
        }
        Ok(())
    }
}

/// The shape of the delivery reports POSTed to [`FakeCarrierConfig::msg91_dlr_url`]
/// (one request per recipient; `status` `"1"` and `desc` `"DELIVERED"`, as
/// MSG91's webhook documentation shows: <https://msg91.com/help/webhooks/how-can-i-get-the-delivery-reports-on-my-webhook-url>).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Msg91DlrFormat {
    /// `application/json`: `{"data":[{"senderId","requestId","report":[{"date",
    /// "number","status":"1","desc":"DELIVERED"}],"userId","campaignName"}]}`
    /// (webhook v2's fields, with `data` as a JSON array).
    #[default]
    Json,
    /// Webhook v2 as MSG91 sends it: `application/x-www-form-urlencoded` with
    /// one field `data` holding the JSON array above as a string.
    V2,
    /// Webhook v3: `application/json`, one flat object `{"date","number",
    /// "senderId","requestId","status":"1","desc":"DELIVERED","userId",
    /// "campaignName","amount","credit"}`.
    V3,
}

/// A window during which a carrier answers only 503 (Vonage: status `"5"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    /// `twilio`, `msg91`, `vonage` or `webhook`; None (or absent) means all.
    #[serde(default)]
    pub carrier: Option<String>,
    /// Start, milliseconds since the server started (inclusive).
    pub start_ms: u64,
    /// End, milliseconds since the server started (exclusive).
    pub end_ms: u64,
}

impl Outage {
    /// Whether this window takes `carrier` down at `at_ms` (since server start).
    pub fn covers(&self, carrier: &str, at_ms: u64) -> bool {
        self.carrier.as_deref().is_none_or(|c| c == carrier) && (self.start_ms..self.end_ms).contains(&at_ms)
    }
}

/// One send the fake carrier received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedSms {
    /// `twilio`, `msg91`, `vonage` or `webhook`.
    pub carrier: String,
    /// Recipient, E.164 with `+` (whatever form the API takes).
    pub to: String,
    /// The text (None for MSG91, which fills a registered template).
    pub text: Option<String>,
    /// The code: MSG91's template variable `otp` (or its only variable), else
    /// the first run of 4–10 digits in the text.
    pub code: Option<String>,
    /// The id the carrier answered with (Twilio `sid`, MSG91 request id,
    /// Vonage `message-id`, webhook `id`); empty for refused sends.
    pub message_id: String,
    /// The webhook's `request_id`, or Vonage's `client-ref`.
    pub request_id: Option<String>,
    /// Arrival, milliseconds since the server started.
    pub at_ms: u64,
    /// Arrival, microseconds since the server started (for latency figures).
    #[serde(default)]
    pub at_us: u64,
    /// False when an outage, error or throttle refused it.
    pub accepted: bool,
}

/// The shared state behind [`router`]: configuration, received sends, the
/// random source and the pending delivery receipts.
#[derive(Clone)]
pub struct FakeCarrierState {
    inner: Arc<Inner>,
}

struct Inner {
    started: Instant,
    config: RwLock<FakeCarrierConfig>,
    rng: Mutex<StdRng>,
    messages: Mutex<Vec<ReceivedSms>>,
    http: reqwest::Client,
    receipts: TaskTracker,
    stop: CancellationToken,
}

fn rng_for(config: &FakeCarrierConfig) -> StdRng {
    match config.seed {
        Some(seed) => StdRng::seed_from_u64(seed),
        None => StdRng::from_rng(&mut rand::rng()),
    }
}

/// Locks `mutex`, even if a panicking holder poisoned it (the data stays usable).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A probability `random_bool` accepts: NaN becomes 0, the rest is clamped.
fn probability(p: f64) -> f64 {
    if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) }
}

impl FakeCarrierState {
    /// A fresh state; the outage clock starts now.
    pub fn new(config: FakeCarrierConfig) -> std::io::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("otp-pipeline-fake-carrier/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Self {
            inner: Arc::new(Inner {
                started: Instant::now(),
                rng: Mutex::new(rng_for(&config)),
                config: RwLock::new(config),
                messages: Mutex::new(Vec::new()),
                http,
                receipts: TaskTracker::new(),
                stop: CancellationToken::new(),
            }),
        })
    }

    /// The current configuration.
    pub fn config(&self) -> FakeCarrierConfig {
        self.inner.config.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Replaces the configuration (rates outside 0.0–1.0 act as the nearest
    /// bound, NaN as 0); a seed restarts the random sequence.
    pub fn set_config(&self, config: FakeCarrierConfig) {
        if config.seed.is_some() {
            *lock(&self.inner.rng) = rng_for(&config);
        }
        *self.inner.config.write().unwrap_or_else(PoisonError::into_inner) = config;
    }

    /// Every send received so far (accepted and refused), in arrival order.
    pub fn messages(&self) -> Vec<ReceivedSms> {
        lock(&self.inner.messages).clone()
    }

    /// Forgets every received send.
    pub fn clear_messages(&self) {
        lock(&self.inner.messages).clear();
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.inner.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Waits the configured latency and returns the configuration this send runs under.
    async fn latency(&self) -> FakeCarrierConfig {
        let config = self.config();
        if config.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(config.latency_ms)).await;
        }
        config
    }

    /// Decides a well-formed send's fault, if any: outage first, then error,
    /// then throttle.
    fn fault(&self, carrier: &str, config: &FakeCarrierConfig) -> Option<Fault> {
        let now = self.now_ms();
        if config.outages.iter().any(|o| o.covers(carrier, now)) {
            return Some(Fault::Outage);
        }
        let mut rng = lock(&self.inner.rng);
        if rng.random_bool(probability(config.error_rate)) {
            Some(Fault::Error)
        } else if rng.random_bool(probability(config.throttle_rate)) {
            Some(Fault::Throttle)
        } else {
            None
        }
    }

    fn record(&self, sms: ReceivedSms, fault: Option<Fault>) {
        tracing::debug!(
            carrier = %sms.carrier,
            to = %mask(&sms.to),
            accepted = sms.accepted,
            outcome = fault.map_or("accepted", Fault::label),
            message_id = %sms.message_id,
            "fake carrier: send"
        );
        lock(&self.inner.messages).push(sms);
    }

    /// Runs a receipt in the background; it is dropped at shutdown.
    fn spawn_receipt(&self, receipt: impl Future<Output = ()> + Send + 'static) {
        let stop = self.inner.stop.clone();
        self.inner.receipts.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = receipt => {}
            }
        });
    }
}

/// A simulated failure of one send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Outage,
    Error,
    Throttle,
}

impl Fault {
    fn label(self) -> &'static str {
        match self {
            Self::Outage => "outage",
            Self::Error => "error",
            Self::Throttle => "throttled",
        }
    }
}

/// The fake carrier's routes on `state` (what [`FakeCarrier::start`] serves).
pub fn router(state: FakeCarrierState) -> Router {
    Router::new()
        .route("/2010-04-01/Accounts/{account_sid}/Messages.json", post(twilio_send))
        .route("/api/v5/flow", post(msg91_send))
        .route("/api/v5/flow/", post(msg91_send))
        .route("/sms/json", post(vonage_send))
        .route("/sms", post(webhook_send))
        .route("/messages", get(list_messages).delete(delete_messages))
        .route("/control", get(get_control).put(put_control))
        .with_state(state)
}

/// A running fake carrier. Dropping it stops the server too; [`FakeCarrier::shutdown`]
/// also waits for it.
pub struct FakeCarrier {
    state: FakeCarrierState,
    addr: SocketAddr,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl FakeCarrier {
    /// Binds `listen` (port 0 picks a free one) and serves the fake carrier.
    pub async fn start(listen: SocketAddr, config: FakeCarrierConfig) -> std::io::Result<Self> {
        let state = FakeCarrierState::new(config)?;
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(otp_pipeline::http::serve(listener, router(state.clone()), state.inner.stop.clone()));
        tracing::info!(%addr, "fake carrier listening");
        Ok(Self { state, addr, server: Some(server) })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:port` (loopback when bound to an unspecified address).
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// Every send received so far (accepted and refused), in arrival order.
    pub fn messages(&self) -> Vec<ReceivedSms> {
        self.state.messages()
    }

    /// The instant `at_ms` / `at_us` count from.
    pub fn epoch(&self) -> Instant {
        self.state.inner.started
    }

    /// Forgets every received send.
    pub fn clear_messages(&self) {
        self.state.clear_messages();
    }

    /// The current configuration.
    pub fn config(&self) -> FakeCarrierConfig {
        self.state.config()
    }

    /// Replaces the configuration at run time (rates outside 0.0–1.0 act as
    /// the nearest bound, NaN as 0); a seed restarts the random sequence.
    pub fn set_config(&self, config: FakeCarrierConfig) {
        self.state.set_config(config);
    }

    /// Stops serving, lets open requests finish and drops pending receipts.
    pub async fn shutdown(mut self) {
        self.state.inner.stop.cancel();
        if let Some(server) = self.server.take()
            && let Ok(Err(e)) = server.await
        {
            tracing::warn!(error = %e, "fake carrier server failed");
        }
        self.state.inner.receipts.close();
        self.state.inner.receipts.wait().await;
    }
}

impl Drop for FakeCarrier {
    fn drop(&mut self) {
        self.state.inner.stop.cancel();
    }
}

// ---------------------------------------------------------------------------
// Helpers shared by the APIs.

/// `+` and the digits of `number` (`91…`, `+1…`, `1 415…` all become E.164).
fn e164(number: &str) -> String {
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    format!("+{digits}")
}

/// The first run of 4–10 digits in `text`.
fn code_in(text: &str) -> Option<String> {
    text.split(|c: char| !c.is_ascii_digit()).find(|run| (4..=10).contains(&run.len())).map(str::to_owned)
}

fn hex_id(len: usize) -> String {
    let mut id = String::with_capacity(len + 32);
    while id.len() < len {
        id.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    id.truncate(len);
    id
}

fn retry_after(config: &FakeCarrierConfig) -> [(header::HeaderName, HeaderValue); 1] {
    [(header::RETRY_AFTER, HeaderValue::from(config.retry_after_secs))]
}

fn now_utc() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// `YYYY-MM-DD HH:MM:SS` (MSG91 report dates, Vonage `message-timestamp`).
fn plain_datetime(at: time::OffsetDateTime) -> String {
    at.format(time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]")).unwrap_or_default()
}

/// Posts one receipt; failures are logged (without the URL, which may carry a token).
async fn deliver(carrier: &'static str, request: reqwest::RequestBuilder) {
    match request.send().await {
        Ok(response) if response.status().is_success() => {
            tracing::debug!(carrier, status = %response.status(), "fake carrier: receipt delivered");
        }
        Ok(response) => {
            tracing::warn!(carrier, status = %response.status(), "fake carrier: receipt refused");
        }
        Err(e) => {
            tracing::warn!(carrier, error = %e.without_url(), "fake carrier: receipt failed");
        }
    }
}

/// `{"error": …}` (the webhook's and `/control`'s error shape).
fn json_error(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({"error": error}))).into_response()
}

/// A value of a JSON object as a string (numbers too).
fn json_str(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A form or JSON parameter, if present and not blank.
fn param<'a>(params: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    params.get(name).map(String::as_str).filter(|v| !v.trim().is_empty())
}

/// Form pairs into a map (the first value of a repeated name wins).
fn form_map(body: &[u8]) -> HashMap<String, String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body).unwrap_or_default();
    let mut map = HashMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        map.entry(name).or_insert(value);
    }
    map
}

// ---------------------------------------------------------------------------
// Twilio: POST /2010-04-01/Accounts/{AccountSid}/Messages.json

const TWILIO_API_VERSION: &str = "2010-04-01";

/// Twilio's error JSON: `{"code","message","more_info","status"}`.
fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response {
    let body = json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    });
    (status, Json(body)).into_response()
}

/// Whether the request carries HTTP basic credentials with a non-empty user.
fn has_basic_auth(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some((scheme, encoded)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| pair.split_once(':').map(|(user, _)| !user.is_empty()))
        .unwrap_or(false)
}

async fn twilio_send(
    State(state): State<FakeCarrierState>,
    axum::extract::Path(account_sid): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let config = state.latency().await;
    if !has_basic_auth(&headers) {
        let mut response = twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"Twilio API\""));
        return response;
    }
    let params = form_map(&body);
    let Some(to) = param(&params, "To") else {
        return twilio_error(StatusCode::BAD_REQUEST, 21604, "A 'To' phone number is required.");
    };
    let from = param(&params, "From").map(str::to_owned);
    let service = param(&params, "MessagingServiceSid").map(str::to_owned);
    if from.is_none() && service.is_none() {
        return twilio_error(StatusCode::BAD_REQUEST, 21603, "A 'From' phone number is required.");
    }
    let Some(text) = param(&params, "Body") else {
        return twilio_error(StatusCode::BAD_REQUEST, 21602, "Message body is required.");
    };
    let fault = state.fault(TWILIO, &config);
    let to = e164(to);
    let mut sms = ReceivedSms {
        carrier: TWILIO.into(),
        to: to.clone(),
        text: Some(text.to_owned()),
        code: code_in(text),
        message_id: String::new(),
        request_id: None,
        at_ms: state.now_ms(),
        at_us: state.now_us(),
        accepted: fault.is_none(),
    };
    if let Some(fault) = fault {
        state.record(sms, Some(fault));
        return twilio_fault(fault, &config);
    }
    let sid = format!("SM{}", hex_id(32));
    sms.message_id = sid.clone();
    state.record(sms, None);

    // Twilio picks a number of the Messaging Service's pool; the fake uses its magic test number.
    let sender = from.clone().unwrap_or_else(|| "+15005550006".into());
    if config.receipts
        && let Some(callback) = param(&params, "StatusCallback")
    {
        let mut base = vec![
            ("MessageSid".to_owned(), sid.clone()),
            ("SmsSid".to_owned(), sid.clone()),
            ("AccountSid".to_owned(), account_sid.clone()),
            ("From".to_owned(), sender),
            ("To".to_owned(), to.clone()),
            ("ApiVersion".to_owned(), TWILIO_API_VERSION.to_owned()),
        ];
        if let Some(service) = &service {
            base.push(("MessagingServiceSid".to_owned(), service.clone()));
        }
        twilio_callbacks(&state, &config, callback.to_owned(), base);
    }

    let message = TwilioMessage { account_sid: &account_sid, sid: &sid, text, from, service, to: &to };
    (StatusCode::CREATED, Json(message.json())).into_response()
}

/// Twilio's answer to a faulty send: 503, 500 or 429 with `Retry-After`.
fn twilio_fault(fault: Fault, config: &FakeCarrierConfig) -> Response {
    match fault {
        Fault::Outage => twilio_error(StatusCode::SERVICE_UNAVAILABLE, 20503, "Service Unavailable"),
        Fault::Error => twilio_error(StatusCode::INTERNAL_SERVER_ERROR, 20500, "Internal Server Error"),
        Fault::Throttle => {
            (retry_after(config), twilio_error(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests"))
                .into_response()
        }
    }
}

/// A message resource as Twilio answers a send with it (`queued`).
struct TwilioMessage<'a> {
    account_sid: &'a str,
    sid: &'a str,
    text: &'a str,
    from: Option<String>,
    service: Option<String>,
    to: &'a str,
}

impl TwilioMessage<'_> {
    fn json(&self) -> Value {
        let (account_sid, sid) = (self.account_sid, self.sid);
        let date = now_utc().format(&time::format_description::well_known::Rfc2822).unwrap_or_default();
        json!({
            "account_sid": account_sid,
            "api_version": TWILIO_API_VERSION,
            "body": self.text,
            "date_created": date,
            "date_sent": null,
            "date_updated": date,
            "direction": "outbound-api",
            "error_code": null,
            "error_message": null,
            "from": self.from,
            "messaging_service_sid": self.service,
            "num_media": "0",
            "num_segments": "1",
            "price": null,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued",
            "subresource_uris": {
                "media": format!("/{TWILIO_API_VERSION}/Accounts/{account_sid}/Messages/{sid}/Media.json"),
            },
            "to": self.to,
            "uri": format!("/{TWILIO_API_VERSION}/Accounts/{account_sid}/Messages/{sid}.json"),
        })
    }
}

/// Twilio's status callbacks (a form): `sent`, then `delivered`, each after
/// the receipt delay, with `X-Twilio-Signature` when `twilio_auth_token` is set.
fn twilio_callbacks(
    state: &FakeCarrierState,
    config: &FakeCarrierConfig,
    callback: String,
    base: Vec<(String, String)>,
) {
    let (http, token) = (state.inner.http.clone(), config.twilio_auth_token.clone());
    let delay = Duration::from_millis(config.receipt_delay_ms);
    state.spawn_receipt(async move {
        for status in ["sent", "delivered"] {
            tokio::time::sleep(delay).await;
            let mut params = base.clone();
            params.push(("MessageStatus".to_owned(), status.to_owned()));
            params.push(("SmsStatus".to_owned(), status.to_owned()));
            let mut request = http.post(&callback).form(&params);
            if let Some(token) = &token {
                request = request
                    .header("X-Twilio-Signature", otp_pipeline::carriers::twilio::signature(token, &callback, &params));
            }
            deliver(TWILIO, request).await;
        }
    });
}

// ---------------------------------------------------------------------------
// MSG91: POST /api/v5/flow

fn msg91_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"type": "error", "message": message}))).into_response()
}

/// The code in one MSG91 recipient: its `otp` variable, else its only variable.
fn msg91_code(recipient: &serde_json::Map<String, Value>) -> Option<String> {
    if let Some(otp) = recipient.get("otp").and_then(json_str) {
        return Some(otp);
    }
    let mut vars = recipient.iter().filter(|(name, _)| *name != "mobiles");
    match (vars.next(), vars.next()) {
        (Some((_, value)), None) => json_str(value),
        _ => None,
    }
}

async fn msg91_send(State(state): State<FakeCarrierState>, headers: HeaderMap, body: Bytes) -> Response {
    let config = state.latency().await;
    let authenticated = headers.get("authkey").and_then(|v| v.to_str().ok()).is_some_and(|v| !v.trim().is_empty());
    if !authenticated {
        return msg91_error(StatusCode::UNAUTHORIZED, "Authentication failure");
    }
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(&body) else {
        return msg91_error(StatusCode::BAD_REQUEST, "Invalid JSON body");
    };
    let has_template =
        ["template_id", "flow_id"].iter().any(|k| request.get(*k).and_then(json_str).is_some_and(|t| !t.is_empty()));
    if !has_template {
        return msg91_error(StatusCode::BAD_REQUEST, "template_id is required");
    }
    let Some(recipients) = request.get("recipients").and_then(Value::as_array).filter(|r| !r.is_empty()) else {
        return msg91_error(StatusCode::BAD_REQUEST, "recipients are required");
    };
    // (number, code) of every recipient; `mobiles` may list several numbers.
    let mut targets = Vec::new();
    for recipient in recipients {
        let Some(recipient) = recipient.as_object() else {
            return msg91_error(StatusCode::BAD_REQUEST, "each recipient must be an object");
        };
        let Some(mobiles) = recipient.get("mobiles").and_then(json_str) else {
            return msg91_error(StatusCode::BAD_REQUEST, "mobiles is required");
        };
        let code = msg91_code(recipient);
        for number in mobiles.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            targets.push((e164(number), code.clone()));
        }
    }
    if targets.is_empty() {
        return msg91_error(StatusCode::BAD_REQUEST, "mobiles is required");
    }
    let fault = state.fault(MSG91, &config);
    let request_id = if fault.is_none() { hex_id(24) } else { String::new() };
    let (at_ms, at_us) = (state.now_ms(), state.now_us());
    for (to, code) in &targets {
        let sms = ReceivedSms {
            carrier: MSG91.into(),
            to: to.clone(),
            text: None,
            code: code.clone(),
            message_id: request_id.clone(),
            request_id: None,
            at_ms,
            at_us,
            accepted: fault.is_none(),
        };
        state.record(sms, fault);
    }
    if let Some(fault) = fault {
        return match fault {
            Fault::Outage => msg91_error(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"),
            Fault::Error => msg91_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
            Fault::Throttle => {
                (retry_after(&config), msg91_error(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests")).into_response()
            }
        };
    }
    if config.receipts
        && let Some(url) = config.msg91_dlr_url.clone()
    {
        let sender = request.get("sender").and_then(json_str).unwrap_or_else(|| "FAKEOT".into());
        let numbers = targets.into_iter().map(|(to, _)| to).collect();
        msg91_dlrs(&state, &config, url, sender, request_id.clone(), numbers);
    }
    Json(json!({"type": "success", "message": request_id})).into_response()
}

/// MSG91 delivery reports, one POST per number after the receipt delay, in
/// the configured [`Msg91DlrFormat`].
fn msg91_dlrs(
    state: &FakeCarrierState,
    config: &FakeCarrierConfig,
    url: String,
    sender: String,
    request_id: String,
    numbers: Vec<String>,
) {
    let (http, format) = (state.inner.http.clone(), config.msg91_dlr_format);
    let delay = Duration::from_millis(config.receipt_delay_ms);
    state.spawn_receipt(async move {
        tokio::time::sleep(delay).await;
        for number in numbers {
            let report = msg91_report(&sender, &request_id, number.trim_start_matches('+'));
            let request = match format {
                Msg91DlrFormat::Json => http.post(&url).json(&json!({"data": [report]})),
                Msg91DlrFormat::V2 => {
                    let data = json!([report]).to_string();
                    http.post(&url).form(&[("data", data)])
                }
                Msg91DlrFormat::V3 => http.post(&url).json(&msg91_flat_report(&report)),
            };
            deliver(MSG91, request).await;
        }
    });
}

/// One entry of MSG91's webhook `data` array (v2 fields) for one delivered number.
fn msg91_report(sender: &str, request_id: &str, number: &str) -> Value {
    json!({
        "senderId": sender,
        "requestId": request_id,
        "report": [{
            "date": plain_datetime(now_utc()),
            "number": number,
            "status": "1",
            "desc": "DELIVERED",
        }],
        "userId": "000000",
        "campaignName": "API",
    })
}

/// MSG91's webhook v3: the v2 entry flattened into one object.
fn msg91_flat_report(entry: &Value) -> Value {
    let line = &entry["report"][0];
    json!({
        "date": line["date"],
        "number": line["number"],
        "senderId": entry["senderId"],
        "amount": "0.01",
        "requestId": entry["requestId"],
        "credit": "1",
        "userId": entry["userId"],
        "campaignName": entry["campaignName"],
        "status": line["status"],
        "desc": line["desc"],
    })
}

// ---------------------------------------------------------------------------
// Vonage: POST /sms/json

/// Vonage answers HTTP 200 with a per-message status (`"0"` success).
fn vonage_failure(status: &str, error_text: &str) -> Response {
    Json(json!({
        "message-count": "1",
        "messages": [{"status": status, "error-text": error_text}],
    }))
    .into_response()
}

/// The body's parameters: JSON when the content type says so, else a form.
fn vonage_params(headers: &HeaderMap, body: &[u8]) -> HashMap<String, String> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !is_json {
        return form_map(body);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => map.iter().filter_map(|(k, v)| json_str(v).map(|v| (k.clone(), v))).collect(),
        _ => HashMap::new(),
    }
}

async fn vonage_send(State(state): State<FakeCarrierState>, headers: HeaderMap, body: Bytes) -> Response {
    let config = state.latency().await;
    let params = vonage_params(&headers, &body);
    let Some(api_key) = param(&params, "api_key").map(str::to_owned) else {
        return vonage_failure("2", "Missing api_key");
    };
    if param(&params, "api_secret").is_none() && param(&params, "sig").is_none() {
        return vonage_failure("2", "Missing api_secret");
    }
    let Some(from) = param(&params, "from").map(str::to_owned) else {
        return vonage_failure("2", "Missing from param");
    };
    let Some(to_param) = param(&params, "to") else {
        return vonage_failure("2", "Missing to param");
    };
    let Some(text) = param(&params, "text") else {
        return vonage_failure("2", "Missing text param");
    };
    let fault = state.fault(VONAGE, &config);
    let to = e164(to_param);
    let msisdn = to.trim_start_matches('+').to_owned();
    let client_ref = param(&params, "client-ref").map(str::to_owned);
    let mut sms = ReceivedSms {
        carrier: VONAGE.into(),
        to,
        text: Some(text.to_owned()),
        code: code_in(text),
        message_id: String::new(),
        request_id: client_ref.clone(),
        at_ms: state.now_ms(),
        at_us: state.now_us(),
        accepted: fault.is_none(),
    };
    if let Some(fault) = fault {
        state.record(sms, Some(fault));
        return match fault {
            Fault::Outage | Fault::Error => vonage_failure("5", "Internal Error"),
            Fault::Throttle => vonage_failure("1", "Throughput Rate Exceeded - please wait and retry"),
        };
    }
    let message_id = hex_id(16).to_uppercase();
    sms.message_id = message_id.clone();
    state.record(sms, None);

    if config.receipts
        && let Some(callback) = param(&params, "callback").map(str::to_owned)
    {
        let receipt = VonageReceipt { msisdn: msisdn.clone(), from, message_id: message_id.clone(), api_key };
        vonage_dlr(&state, &config, callback, receipt, client_ref.clone());
    }

    let mut message = json!({
        "to": msisdn,
        "message-id": message_id,
        "status": "0",
        "remaining-balance": "10.00",
        "message-price": "0.01",
        "network": "23410",
    });
    if let Some(client_ref) = client_ref {
        message["client-ref"] = Value::String(client_ref);
    }
    Json(json!({"message-count": "1", "messages": [message]})).into_response()
}

/// What a Vonage delivery receipt names.
struct VonageReceipt {
    msisdn: String,
    from: String,
    message_id: String,
    api_key: String,
}

/// Posts Vonage's DLR (a form) to `callback` after the receipt delay.
fn vonage_dlr(
    state: &FakeCarrierState,
    config: &FakeCarrierConfig,
    callback: String,
    r: VonageReceipt,
    client_ref: Option<String>,
) {
    let now = now_utc();
    let scts = now
        .format(time::macros::format_description!("[year repr:last_two][month][day][hour][minute]"))
        .unwrap_or_default();
    let mut receipt = vec![
        ("msisdn", r.msisdn),
        ("to", r.from),
        ("network-code", "23410".to_owned()),
        ("messageId", r.message_id),
        ("price", "0.01000000".to_owned()),
        ("status", "delivered".to_owned()),
        ("scts", scts),
        ("err-code", "0".to_owned()),
        ("api-key", r.api_key),
        ("message-timestamp", plain_datetime(now)),
    ];
    if let Some(client_ref) = client_ref {
        receipt.push(("client-ref", client_ref));
    }
    let http = state.inner.http.clone();
    let delay = Duration::from_millis(config.receipt_delay_ms);
    state.spawn_receipt(async move {
        tokio::time::sleep(delay).await;
        deliver(VONAGE, http.post(&callback).form(&receipt)).await;
    });
}

// ---------------------------------------------------------------------------
// The generic webhook: POST /sms

#[derive(Deserialize)]
struct WebhookSms {
    to: Option<String>,
    text: Option<String>,
    request_id: Option<String>,
}

async fn webhook_send(State(state): State<FakeCarrierState>, body: Bytes) -> Response {
    let config = state.latency().await;
    let sms: WebhookSms = match serde_json::from_slice(&body) {
        Ok(sms) => sms,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}")),
    };
    let (Some(to), Some(text)) = (sms.to.filter(|t| !t.trim().is_empty()), sms.text.filter(|t| !t.is_empty())) else {
        return json_error(StatusCode::BAD_REQUEST, "to and text are required");
    };
    let fault = state.fault(WEBHOOK, &config);
    let id = if fault.is_none() { uuid::Uuid::new_v4().to_string() } else { String::new() };
    let received = ReceivedSms {
        carrier: WEBHOOK.into(),
        to: e164(&to),
        code: code_in(&text),
        text: Some(text),
        message_id: id.clone(),
        request_id: sms.request_id,
        at_ms: state.now_ms(),
        at_us: state.now_us(),
        accepted: fault.is_none(),
    };
    state.record(received, fault);
    match fault {
        Some(Fault::Outage) => json_error(StatusCode::SERVICE_UNAVAILABLE, "carrier outage"),
        Some(Fault::Error) => json_error(StatusCode::SERVICE_UNAVAILABLE, "simulated carrier error"),
        Some(Fault::Throttle) => {
            (retry_after(&config), json_error(StatusCode::TOO_MANY_REQUESTS, "throttled")).into_response()
        }
        None => Json(json!({"id": id})).into_response(),
    }
}

// ---------------------------------------------------------------------------
// Read-back and control.

#[derive(Deserialize)]
struct MessagesQuery {
    to: Option<String>,
    carrier: Option<String>,
}

/// `GET /messages?to=&carrier=`: `to` is compared by its digits only, so an
/// unescaped `+` (decoded as a space) still matches.
async fn list_messages(
    State(state): State<FakeCarrierState>,
    Query(query): Query<MessagesQuery>,
) -> Json<Vec<ReceivedSms>> {
    let to = query.to.as_deref().filter(|t| !t.trim().is_empty()).map(e164);
    let carrier = query.carrier.filter(|c| !c.is_empty());
    let messages = state
        .messages()
        .into_iter()
        .filter(|m| to.as_ref().is_none_or(|to| *to == m.to))
        .filter(|m| carrier.as_ref().is_none_or(|c| *c == m.carrier))
        .collect();
    Json(messages)
}

async fn delete_messages(State(state): State<FakeCarrierState>) -> StatusCode {
    state.clear_messages();
    StatusCode::NO_CONTENT
}

async fn get_control(State(state): State<FakeCarrierState>) -> Json<FakeCarrierConfig> {
    Json(state.config())
}

async fn put_control(State(state): State<FakeCarrierState>, body: Bytes) -> Response {
    let config: FakeCarrierConfig = match serde_json::from_slice(&body) {
        Ok(config) => config,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &format!("invalid config: {e}")),
    };
    if let Err(e) = config.validate() {
        return json_error(StatusCode::BAD_REQUEST, &e);
    }
    tracing::info!(?config, "fake carrier: configuration replaced");
    state.set_config(config.clone());
    Json(config).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_is_the_first_run_of_four_to_ten_digits() {
        assert_eq!(
            code_in("otp-pipeline: your verification code is 123456. It expires in 5 min.").as_deref(),
            Some("123456")
        );
        assert_eq!(code_in("code 12 then 0042").as_deref(), Some("0042"));
        assert_eq!(code_in("12345678901 then 9876").as_deref(), Some("9876"));
        assert_eq!(code_in("no code here 123"), None);
    }

    #[test]
    fn numbers_become_e164() {
        assert_eq!(e164("919876543210"), "+919876543210");
        assert_eq!(e164("+14155550123"), "+14155550123");
        assert_eq!(e164(" 14155550123"), "+14155550123");
    }

    #[test]
    fn outages_cover_their_carrier_and_window() {
        let twilio = Outage { carrier: Some(TWILIO.into()), start_ms: 10, end_ms: 20 };
        assert!(twilio.covers(TWILIO, 10));
        assert!(twilio.covers(TWILIO, 19));
        assert!(!twilio.covers(TWILIO, 20));
        assert!(!twilio.covers(MSG91, 15));
        let all = Outage { carrier: None, ..twilio };
        assert!(all.covers(VONAGE, 15));
    }

    #[test]
    fn config_defaults_and_validation() {
        let config: FakeCarrierConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(config, FakeCarrierConfig::default());
        assert!(config.receipts);
        assert!(config.validate().is_ok());
        let bad = FakeCarrierConfig { error_rate: 1.5, ..Default::default() };
        assert!(bad.validate().is_err());
        let nan = FakeCarrierConfig { throttle_rate: f64::NAN, ..Default::default() };
        assert!(nan.validate().is_err());
        let unknown = FakeCarrierConfig {
            outages: vec![Outage { carrier: Some("sinch".into()), start_ms: 0, end_ms: 1 }],
            ..Default::default()
        };
        assert!(unknown.validate().is_err());
        assert!(serde_json::from_str::<FakeCarrierConfig>(r#"{"eror_rate":1}"#).is_err());
        assert_eq!(probability(f64::NAN), 0.0);
        assert_eq!(probability(2.0), 1.0);
    }

    #[test]
    fn msg91_code_prefers_otp_then_the_only_variable() {
        let both = json!({"mobiles": "91", "otp": "1234", "name": "x"});
        assert_eq!(msg91_code(both.as_object().unwrap()).as_deref(), Some("1234"));
        let only = json!({"mobiles": "91", "code": 5678});
        assert_eq!(msg91_code(only.as_object().unwrap()).as_deref(), Some("5678"));
        let two = json!({"mobiles": "91", "a": "1", "b": "2"});
        assert_eq!(msg91_code(two.as_object().unwrap()), None);
    }

    #[test]
    fn basic_auth_needs_a_user() {
        let mut headers = HeaderMap::new();
        assert!(!has_basic_auth(&headers));
        let encoded = base64::engine::general_purpose::STANDARD.encode("AC123:secret");
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Basic {encoded}")).unwrap());
        assert!(has_basic_auth(&headers));
        let empty = base64::engine::general_purpose::STANDARD.encode(":secret");
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Basic {empty}")).unwrap());
        assert!(!has_basic_auth(&headers));
    }

    #[test]
    fn seeded_draws_repeat() {
        let config = FakeCarrierConfig { seed: Some(7), ..Default::default() };
        let draws = |mut rng: StdRng| (0..32).map(|_| rng.random_bool(0.5)).collect::<Vec<_>>();
        assert_eq!(draws(rng_for(&config)), draws(rng_for(&config)));
    }
}
