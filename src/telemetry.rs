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
    /// Always 1; the `version` label carries the crate version.
    pub const BUILD_INFO: &str = "otp_build_info";
    /// Approved verifications, by the `carrier` that delivered the code.
    pub const CONVERSIONS: &str = "otp_conversions_total";
    /// Numbers locked after too many consecutive failed verifications.
    pub const VERIFY_LOCKOUTS: &str = "otp_verify_lockouts_total";
    /// Number prefixes quarantined as suspected SMS pumping, by `rule`.
    pub const QUARANTINES: &str = "otp_quarantines_total";
    /// HTTP requests refused because their API key is over its rate.
    pub const HTTP_RATE_LIMITED: &str = "otp_http_rate_limited_total";
    /// HTTP requests refused for a missing or wrong API key, by `reason`.
    pub const AUTH_FAILURES: &str = "otp_http_auth_failures_total";
}

/// What kind of Prometheus metric a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (`_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Bucketed observations (`_bucket`, `_sum`, `_count`), in seconds.
    Histogram,
}

/// One exported metric: the reference the README, the dashboard and the tests share.
#[derive(Debug, Clone, Copy)]
pub struct MetricSpec {
    /// Prometheus name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Label names it carries.
    pub labels: &'static [&'static str],
    /// `# HELP` text.
    pub help: &'static str,
    /// Which process exports it.
    pub process: Process,
}

/// The process that exports a metric (the all-in-one process exports all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    /// Generator + verify API.
    Generator,
    /// Sender.
    Sender,
    /// Both.
    Every,
}

/// Every metric otp-pipeline exports: the contract's (DESIGN.md) first, then the additions.
pub const ALL: &[MetricSpec] = {
    use Kind::*;
    use Process::*;
    use names::*;
    &[
        spec(REQUESTS, Counter, &["outcome"], "OTP requests processed by the generator, by outcome.", Generator),
        spec(CODES_ISSUED, Counter, &[], "One-time codes issued.", Generator),
        spec(DELIVERIES, Counter, &["carrier", "outcome"], "Deliveries finished, by carrier and outcome.", Sender),
        spec(CARRIER_ATTEMPTS, Counter, &["carrier", "outcome"], "Calls to carriers, by carrier and outcome.", Sender),
        spec(CARRIER_DURATION, Histogram, &["carrier"], "Duration of one carrier call, in seconds.", Sender),
        spec(
            DELIVERY_LATENCY,
            Histogram,
            &[],
            "Request received by the generator to SMS accepted by a carrier, in seconds.",
            Sender,
        ),
        spec(CIRCUIT_OPEN, Gauge, &["carrier"], "1 while the carrier's circuit breaker is open.", Sender),
        spec(FAILOVERS, Counter, &[], "Deliveries moved to another carrier.", Sender),
        spec(VERIFICATIONS, Counter, &["outcome"], "Verification attempts, by outcome.", Generator),
        spec(VERIFY_DURATION, Histogram, &[], "Duration of POST /v1/verify, in seconds.", Generator),
        spec(RECEIPTS, Counter, &["carrier", "status"], "Carrier delivery receipts, by carrier and status.", Sender),
        spec(DEAD_LETTERS, Counter, &["reason"], "Messages moved to the dead-letter queue, by reason.", Every),
        spec(BROKER_CONNECTED, Gauge, &[], "1 while connected to RabbitMQ.", Every),
        spec(BROKER_RECONNECTS, Counter, &[], "Broker connections rebuilt after a loss.", Every),
        spec(BUILD_INFO, Gauge, &["version"], "Always 1; the version label is the running build.", Every),
        spec(
            CONVERSIONS,
            Counter,
            &["carrier"],
            "Approved verifications, by the carrier that delivered the code.",
            Generator,
        ),
        spec(
            VERIFY_LOCKOUTS,
            Counter,
            &[],
            "Numbers locked after too many consecutive failed verifications.",
            Generator,
        ),
        spec(QUARANTINES, Counter, &["rule"], "Number prefixes quarantined as suspected SMS pumping.", Generator),
        spec(
            HTTP_RATE_LIMITED,
            Counter,
            &[],
            "HTTP requests refused because their API key is over its rate.",
            Generator,
        ),
        spec(AUTH_FAILURES, Counter, &["reason"], "HTTP requests refused for a missing or wrong API key.", Generator),
    ]
};

/// The metric names of DESIGN.md's contract (the first entries of [`ALL`]).
pub const CONTRACT: &[&str] = &[
    names::REQUESTS,
    names::CODES_ISSUED,
    names::DELIVERIES,
    names::CARRIER_ATTEMPTS,
    names::CARRIER_DURATION,
    names::DELIVERY_LATENCY,
    names::CIRCUIT_OPEN,
    names::FAILOVERS,
    names::VERIFICATIONS,
    names::VERIFY_DURATION,
    names::RECEIPTS,
    names::DEAD_LETTERS,
    names::BROKER_CONNECTED,
    names::BROKER_RECONNECTS,
];

const fn spec(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
    process: Process,
) -> MetricSpec {
    MetricSpec { name, kind, labels, help, process }
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
    for m in ALL {
        match m.kind {
            Kind::Counter => describe_counter!(m.name, m.help),
            Kind::Gauge => describe_gauge!(m.name, m.help),
            Kind::Histogram => describe_histogram!(m.name, Unit::Seconds, m.help),
        }
    }
    // Series that exist from the start, so dashboards and alerts see 0, not "no data".
    metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for name in [
        names::CODES_ISSUED,
        names::FAILOVERS,
        names::BROKER_RECONNECTS,
        names::VERIFY_LOCKOUTS,
        names::HTTP_RATE_LIMITED,
    ] {
        metrics::counter!(name).absolute(0);
    }
}

/// Installs the global `tracing` subscriber. `RUST_LOG` overrides `level`.
/// Safe to call more than once (later calls do nothing).
pub fn init_tracing(format: crate::config::LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // Colours only on a terminal: a log file or collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    // A second subscriber (tests) is refused; the first stays.
    let _ = match format {
        crate::config::LogFormat::Json => builder.json().try_init(),
        crate::config::LogFormat::Pretty => builder.try_init(),
    };
}
