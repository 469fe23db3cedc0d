//! Logs (tracing) and metrics (Prometheus): one recorder per process, and the
//! contract's metric names in one place.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use tracing_subscriber::EnvFilter;

/// Metric names of the public contract (`../shared/DESIGN.md`).
pub mod names {
    /// Requests processed by the generator, by `outcome`.
    pub const REQUESTS: &str = "otp_requests_total";
    /// Codes issued.
    pub const CODES_ISSUED: &str = "otp_codes_issued_total";
    /// Deliveries finished, by `carrier` and `outcome`.
    pub const DELIVERIES: &str = "otp_deliveries_total";
    /// Calls to carriers, by `carrier` and `outcome`.
    pub const CARRIER_ATTEMPTS: &str = "otp_carrier_attempts_total";
    /// Duration of one carrier call, by `carrier`.
    pub const CARRIER_DURATION: &str = "otp_carrier_request_duration_seconds";
    /// Request received → carrier accepted.
    pub const DELIVERY_LATENCY: &str = "otp_delivery_latency_seconds";
    /// 1 while a carrier's breaker is open.
    pub const CIRCUIT_OPEN: &str = "otp_carrier_circuit_open";
    /// Deliveries moved to another carrier.
    pub const FAILOVERS: &str = "otp_failovers_total";
    /// Verify attempts, by `outcome`.
    pub const VERIFICATIONS: &str = "otp_verifications_total";
    /// Duration of `POST /v1/verify`.
    pub const VERIFY_DURATION: &str = "otp_verify_duration_seconds";
    /// Carrier delivery receipts, by `carrier` and `status`.
    pub const RECEIPTS: &str = "otp_delivery_receipts_total";
    /// Messages dead-lettered, by `reason`.
    pub const DEAD_LETTERS: &str = "otp_dead_letters_total";
    /// 1 while connected to the broker.
    pub const BROKER_CONNECTED: &str = "otp_broker_connected";
    /// Broker connections rebuilt after a loss.
    pub const BROKER_RECONNECTS: &str = "otp_broker_reconnects_total";
    /// Numbers locked after too many consecutive failed verifications.
    pub const VERIFY_LOCKOUTS: &str = "otp_verify_lockouts_total";
    /// Number prefixes quarantined as suspected SMS pumping, by `rule`.
    pub const QUARANTINES: &str = "otp_quarantines_total";
    /// HTTP requests refused because their API key is over its rate.
    pub const HTTP_RATE_LIMITED: &str = "otp_http_rate_limited_total";
    /// HTTP requests refused for a missing or wrong API key.
    pub const AUTH_FAILURES: &str = "otp_http_auth_failures_total";
}

/// Histogram buckets for OTP work: 1 ms … 30 s.
const BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once) and returns its handle,
/// whose `render()` is the `/metrics` body.
pub fn metrics() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .expect("buckets are not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            describe();
            let upkeep = handle.clone();
            // Histograms are drained lazily; keep them bounded even if nobody scrapes.
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .expect("spawn metrics upkeep thread");
            handle
        })
        .clone()
}

fn describe() {
    use names::*;
    describe_counter!(REQUESTS, "OTP requests processed by the generator, by outcome.");
    describe_counter!(CODES_ISSUED, "One-time codes issued.");
    describe_counter!(DELIVERIES, "Deliveries finished, by carrier and outcome.");
    describe_counter!(CARRIER_ATTEMPTS, "Calls to carriers, by carrier and outcome.");
    describe_histogram!(CARRIER_DURATION, Unit::Seconds, "Duration of one carrier call.");
    describe_histogram!(
        DELIVERY_LATENCY,
        Unit::Seconds,
        "Request received by the generator to SMS accepted by a carrier."
    );
    describe_gauge!(CIRCUIT_OPEN, "1 while the carrier's circuit breaker is open.");
    describe_counter!(FAILOVERS, "Deliveries moved to another carrier.");
    describe_counter!(VERIFICATIONS, "Verification attempts, by outcome.");
    describe_histogram!(VERIFY_DURATION, Unit::Seconds, "Duration of POST /v1/verify.");
    describe_counter!(RECEIPTS, "Carrier delivery receipts, by carrier and status.");
    describe_counter!(DEAD_LETTERS, "Messages moved to the dead-letter queue, by reason.");
    describe_gauge!(BROKER_CONNECTED, "1 while connected to RabbitMQ.");
    describe_counter!(BROKER_RECONNECTS, "Broker connections rebuilt after a loss.");
    describe_counter!(AUTH_FAILURES, "HTTP requests refused for a missing or wrong API key.");
}

/// Installs the global `tracing` subscriber. `RUST_LOG` overrides `level`.
/// Safe to call more than once (later calls do nothing).
pub fn init_tracing(format: &str, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if format == "json" { builder.json().try_init() } else { builder.try_init() };
}
