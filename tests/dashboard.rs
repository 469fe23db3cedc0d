//! The operators' kit stays in step with the code: the Grafana dashboard
//! (config/grafana/dashboards/otp-pipeline.json), Grafana's provisioning, the
//! Prometheus scrape configuration and its alert rules. Every `otp_*` name a
//! query uses must be exported (`telemetry::ALL`, with the labels it carries),
//! every `rabbitmq_*` name must be one RabbitMQ documents, the panels must
//! answer the operators' questions, and `promtool` must accept the config, the
//! rules and every panel's query. No RabbitMQ needed.

use otp_pipeline::config::{Config, HttpConfig, SenderConfig};
use otp_pipeline::domain::{RejectReason, VerifyOutcome};
use otp_pipeline::telemetry::{ALL, Kind, MetricSpec};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const DASHBOARD: &str = "config/grafana/dashboards/otp-pipeline.json";
const PROMETHEUS: &str = "config/prometheus.yml";
const RULES: &str = "config/prometheus-rules.yml";
const DATASOURCES: &str = "config/grafana/provisioning/datasources/prometheus.yml";
const PROVIDERS: &str = "config/grafana/provisioning/dashboards/otp.yml";
const COMPOSE: &str = "docker-compose.yml";
/// Where Grafana reads provisioning files (its default `paths.provisioning`).
const GRAFANA_PROVISIONING: &str = "/etc/grafana/provisioning";
/// Where the official Prometheus image reads its configuration.
const PROMETHEUS_CONFIG: &str = "/etc/prometheus/prometheus.yml";
/// The uid of the provisioned datasource; every panel and query names it.
const DATASOURCE_UID: &str = "prometheus";

/// RabbitMQ metrics the dashboard and the alert rules may use, with their labels.
///
/// From the rabbitmq_prometheus plugin (port 15692), documented in
/// https://www.rabbitmq.com/docs/prometheus and in rabbitmq-server's
/// deps/rabbitmq_prometheus/metrics.md (aggregated `/metrics`: `rabbitmq_build_info`)
/// and metrics-detailed.md (`/metrics/detailed`, prefix `rabbitmq_detailed_`, one
/// series per queue labelled `vhost` and `queue`: group `queue_coarse_metrics` gives
/// `queue_messages_ready`, `queue_messages_unacked`, `queue_messages`; group
/// `queue_consumer_count` gives `queue_consumers`). Also checked against the
/// collector of the 3.10.8 plugin (prometheus_rabbitmq_core_metrics_collector).
const RABBITMQ_METRICS: &[(&str, &[&str])] = &[
    ("rabbitmq_detailed_queue_messages_ready", &["vhost", "queue"]),
    ("rabbitmq_detailed_queue_messages_unacked", &["vhost", "queue"]),
    ("rabbitmq_detailed_queue_messages", &["vhost", "queue"]),
    ("rabbitmq_detailed_queue_consumers", &["vhost", "queue"]),
    (
        "rabbitmq_build_info",
        &[
            "rabbitmq_version",
            "erlang_version",
            "prometheus_plugin_version",
            "prometheus_client_version",
            "product_version",
            "product_base_version",
        ],
    ),
];

/// Labels Prometheus adds to every scraped series (`process` comes from the
/// target labels in config/prometheus.yml).
const TARGET_LABELS: &[&str] = &["instance", "job", "process"];

// ------------------------------------------------------------------ helpers

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn yaml(rel: &str) -> Value {
    let text = read(rel);
    let mut value: serde_norway::Value =
        serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"));
    value.apply_merge().unwrap_or_else(|e| panic!("{rel}: YAML merge keys: {e}"));
    serde_json::to_value(value).unwrap_or_else(|e| panic!("{rel}: not representable as JSON: {e}"))
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD} is not valid JSON: {e}"))
}

/// Every panel, the ones nested in (collapsed) rows included.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("the dashboard has panels") {
        out.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

fn is_row(panel: &Value) -> bool {
    panel["type"] == "row"
}

fn title(panel: &Value) -> &str {
    panel["title"].as_str().unwrap_or("<untitled>")
}

/// (panel title, expr) for every query of the dashboard.
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in all_panels(dashboard).into_iter().filter(|p| !is_row(p)) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((title(panel).to_owned(), expr.to_owned()));
            }
        }
    }
    out
}

/// (alert name, expr) for every rule of config/prometheus-rules.yml.
fn rule_exprs(rules: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for group in rules["groups"].as_array().expect("rules have groups") {
        for rule in group["rules"].as_array().expect("a group has rules") {
            let name = rule["alert"].as_str().or(rule["record"].as_str()).expect("a rule has a name");
            let expr = rule["expr"].as_str().unwrap_or_else(|| panic!("rule {name} has no expr"));
            out.push((name.to_owned(), expr.to_owned()));
        }
    }
    out
}

/// Runs promtool; a missing promtool fails the test (CI installs it).
fn promtool(args: &[&str], dir: &Path) -> (bool, String) {
    let output = Command::new("promtool").args(args).current_dir(dir).output().unwrap_or_else(|e| {
        panic!(
            "cannot run promtool ({e}). It checks the Prometheus config and rules; install it with \
             `apt-get install -y prometheus` (Debian/Ubuntu) or put Prometheus's promtool on PATH"
        )
    });
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

// ------------------------------------------------------------ PromQL scanning

/// One label matcher of a selector: `label op "value"`.
#[derive(Debug, Clone)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

/// A metric named in a query, with its matchers.
#[derive(Debug, Clone)]
struct Selector {
    name: String,
    matchers: Vec<Matcher>,
}

/// What a query refers to: `otp_*` / `rabbitmq_*` selectors, and the labels of
/// its `by`/`without`/`on`/`ignoring`/`group_*` clauses.
#[derive(Debug, Default)]
struct Refs {
    selectors: Vec<Selector>,
    grouping: Vec<String>,
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':'
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// Reads a quoted string at `i` (", ' or `); returns its content and the index after it.
fn read_string(expr: &str, i: usize) -> (String, usize) {
    let b = expr.as_bytes();
    let quote = b[i];
    let mut j = i + 1;
    let mut out = String::new();
    while j < b.len() && b[j] != quote {
        if b[j] == b'\\' && quote != b'`' && j + 1 < b.len() {
            j += 1;
        }
        out.push(b[j] as char);
        j += 1;
    }
    assert!(j < b.len(), "unterminated string in {expr:?}");
    (out, j + 1)
}

/// Parses the matchers after a `{` at `i`; returns them and the index after `}`.
fn read_matchers(expr: &str, mut i: usize) -> (Vec<Matcher>, usize) {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    loop {
        i = skip_ws(b, i);
        assert!(i < b.len(), "unterminated selector in {expr:?}");
        if b[i] == b'}' {
            return (out, i + 1);
        }
        let start = i;
        while i < b.len() && is_ident(b[i]) {
            i += 1;
        }
        let label = expr[start..i].to_owned();
        assert!(!label.is_empty(), "bad label matcher at byte {start} of {expr:?}");
        i = skip_ws(b, i);
        let op = ["=~", "!~", "!=", "="]
            .into_iter()
            .find(|op| expr[i..].starts_with(op))
            .unwrap_or_else(|| panic!("bad matcher operator at byte {i} of {expr:?}"));
        i = skip_ws(b, i + op.len());
        assert!(matches!(b.get(i), Some(b'"' | b'\'' | b'`')), "unquoted label value at byte {i} of {expr:?}");
        let (value, next) = read_string(expr, i);
        out.push(Matcher { label, op: op.to_owned(), value });
        i = skip_ws(b, next);
        if b.get(i) == Some(&b',') {
            i += 1;
        }
    }
}

/// Scans a PromQL expression (with Grafana's `$__…` variables) for metric names
/// starting with `otp_` or `rabbitmq_`, their matchers, and grouping labels.
fn scan(expr: &str) -> Refs {
    let b = expr.as_bytes();
    let mut refs = Refs::default();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if matches!(c, b'"' | b'\'' | b'`') {
            i = read_string(expr, i).1;
        } else if c == b'$' {
            // A Grafana variable ($__rate_interval, $__range): not a metric.
            i += 1;
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
        } else if c == b'{' {
            // Matchers of a selector without an otp_/rabbitmq_ name (e.g. `up{…}`).
            i = read_matchers(expr, i + 1).1;
        } else if is_ident_start(c) {
            let start = i;
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            let next = skip_ws(b, i);
            if word.starts_with("otp_") || word.starts_with("rabbitmq_") {
                let mut selector = Selector { name: word.to_owned(), matchers: Vec::new() };
                if b.get(next) == Some(&b'{') {
                    let (matchers, after) = read_matchers(expr, next + 1);
                    selector.matchers = matchers;
                    i = after;
                }
                refs.selectors.push(selector);
            } else if matches!(word, "by" | "without" | "on" | "ignoring" | "group_left" | "group_right")
                && b.get(next) == Some(&b'(')
            {
                let close = expr[next..].find(')').map(|k| next + k).expect("grouping clause is closed");
                refs.grouping.extend(
                    expr[next + 1..close].split(',').map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned),
                );
                i = close + 1;
            }
        } else if c.is_ascii_digit() {
            // A number or a duration (5m, 0.99, 1e3): no names in it.
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    refs
}

/// What a metric name resolves to.
enum Known {
    Otp(&'static MetricSpec, Option<&'static str>),
    Rabbitmq(&'static [&'static str]),
}

/// Resolves an `otp_*` name against `telemetry::ALL` (histograms only through
/// `_bucket`, `_sum`, `_count`) or a `rabbitmq_*` name against [`RABBITMQ_METRICS`].
fn resolve(name: &str) -> Result<Known, String> {
    if name.starts_with("rabbitmq_") {
        return RABBITMQ_METRICS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, labels)| Known::Rabbitmq(labels))
            .ok_or_else(|| format!("{name} is not in RABBITMQ_METRICS (a metric RabbitMQ documents)"));
    }
    for spec in ALL {
        match spec.kind {
            Kind::Counter | Kind::Gauge if spec.name == name => return Ok(Known::Otp(spec, None)),
            Kind::Histogram => {
                if name == spec.name {
                    return Err(format!("{name} is a histogram: query {name}_bucket, _sum or _count"));
                }
                for suffix in ["_bucket", "_sum", "_count"] {
                    if name.strip_suffix(suffix) == Some(spec.name) {
                        return Ok(Known::Otp(spec, Some(suffix)));
                    }
                }
            }
            _ => {}
        }
    }
    Err(format!("{name} is not exported by otp-pipeline (telemetry::ALL)"))
}

/// Labels a series of this metric may carry.
fn labels_of(known: &Known) -> BTreeSet<&'static str> {
    let mut labels: BTreeSet<&'static str> = TARGET_LABELS.iter().copied().collect();
    match known {
        Known::Otp(spec, suffix) => {
            labels.extend(spec.labels.iter().copied());
            if *suffix == Some("_bucket") {
                labels.insert("le");
            }
        }
        Known::Rabbitmq(extra) => labels.extend(extra.iter().copied()),
    }
    labels
}

/// The values a label of an otp-pipeline metric takes, where the code fixes them.
fn label_values(metric: &str, label: &str) -> Option<BTreeSet<String>> {
    let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
    match (metric, label) {
        // src/generator.rs: accepted, duplicate, malformed, oversized, and every RejectReason.
        ("otp_requests_total", "outcome") => {
            let mut values = owned(&["accepted", "duplicate", "malformed", "oversized"]);
            for reason in ["invalid_request", "invalid_phone", "rate_limited", "country_blocked", "suspected_pumping"] {
                if let Ok(r) = serde_json::from_value::<RejectReason>(json!(reason)) {
                    values.insert(r.as_str().to_owned());
                }
            }
            Some(values)
        }
        // src/sender.rs.
        ("otp_deliveries_total", "outcome") => Some(owned(&["sent", "failed", "expired"])),
        // VerifyOutcome::label, for every variant.
        ("otp_verifications_total", "outcome") => {
            let epoch = time::OffsetDateTime::UNIX_EPOCH;
            let outcomes = [
                VerifyOutcome::Approved { request_id: String::new() },
                VerifyOutcome::Invalid { attempts_left: 0 },
                VerifyOutcome::Expired { request_id: String::new() },
                VerifyOutcome::MaxAttemptsReached { request_id: String::new() },
                VerifyOutcome::NotFound,
                VerifyOutcome::Locked { until: epoch },
            ];
            Some(outcomes.iter().map(|o| o.label().to_owned()).collect())
        }
        _ => None,
    }
}

/// Checks every name, matcher label, label value and grouping label of `expr`.
fn check_expr(context: &str, expr: &str, problems: &mut Vec<String>) -> Refs {
    let refs = scan(expr);
    let mut allowed_grouping: BTreeSet<&'static str> = TARGET_LABELS.iter().copied().collect();
    for selector in &refs.selectors {
        let known = match resolve(&selector.name) {
            Ok(known) => known,
            Err(e) => {
                problems.push(format!("{context}: {e}\n    in {expr}"));
                continue;
            }
        };
        let labels = labels_of(&known);
        allowed_grouping.extend(labels.iter().copied());
        for m in &selector.matchers {
            if !labels.contains(m.label.as_str()) {
                problems.push(format!("{context}: {} has no label {:?} (it has {labels:?})", selector.name, m.label));
                continue;
            }
            let Some(values) = label_values(&selector.name, &m.label) else { continue };
            let alternatives: Vec<&str> = match m.op.as_str() {
                "=~" | "!~" => m.value.split('|').collect(),
                _ => vec![m.value.as_str()],
            };
            for alt in alternatives {
                let plain = alt.bytes().all(|c| c.is_ascii_lowercase() || c == b'_');
                if plain && !values.contains(alt) {
                    problems.push(format!(
                        "{context}: {}{{{}}} never takes the value {alt:?} (values: {values:?})",
                        selector.name, m.label
                    ));
                }
            }
        }
    }
    for label in &refs.grouping {
        if !allowed_grouping.contains(label.as_str()) {
            problems.push(format!("{context}: groups by {label:?}, a label none of its metrics carry\n    in {expr}"));
        }
    }
    refs
}

// -------------------------------------------------------------------- tests

#[test]
fn the_scanner_finds_names_matchers_and_grouping() {
    let refs = scan(
        r#"histogram_quantile(0.99, sum by (carrier, le) (rate(otp_carrier_request_duration_seconds_bucket{carrier!="x"}[$__rate_interval]))) / on (carrier) rabbitmq_detailed_queue_messages{queue=~".*otp[.]dead", vhost="/"} and up{job="otp_fake"}"#,
    );
    let names: Vec<&str> = refs.selectors.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["otp_carrier_request_duration_seconds_bucket", "rabbitmq_detailed_queue_messages"]);
    assert_eq!(refs.selectors[1].matchers.len(), 2);
    assert_eq!(refs.selectors[1].matchers[0].value, ".*otp[.]dead");
    assert_eq!(refs.grouping, ["carrier", "le", "carrier"]);

    let mut problems = Vec::new();
    check_expr("t", "sum by (reason) (rate(otp_requests_total{outcome=~\"sent|accepted\"}[5m]))", &mut problems);
    check_expr("t", "otp_delivery_latency_seconds + otp_nope_total + rabbitmq_nope", &mut problems);
    assert_eq!(problems.len(), 5, "{problems:#?}");
}

#[test]
fn every_panel_queries_the_prometheus_datasource_and_says_what_it_shows() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "otp-pipeline");
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion of Grafana 9.4+");
    let mut problems = Vec::new();
    let mut ids = BTreeSet::new();
    let mut cells: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let panels = all_panels(&dashboard);
    assert!(panels.iter().filter(|p| is_row(p)).count() >= 3, "panels are grouped in rows");
    for panel in &panels {
        let name = title(panel);
        let id = panel["id"].as_u64();
        if !id.is_some_and(|id| ids.insert(id)) {
            problems.push(format!("{name}: missing or duplicate id {id:?}"));
        }
        if name.trim().is_empty() || name == "<untitled>" {
            problems.push(format!("panel {id:?} has no title"));
        }
        let pos = &panel["gridPos"];
        let (x, y, w, h) = (pos["x"].as_u64(), pos["y"].as_u64(), pos["w"].as_u64(), pos["h"].as_u64());
        let (Some(x), Some(y), Some(w), Some(h)) = (x, y, w, h) else {
            problems.push(format!("{name}: incomplete gridPos {pos}"));
            continue;
        };
        if w == 0 || h == 0 || x + w > 24 {
            problems.push(format!("{name}: gridPos {pos} is outside the 24-column grid"));
        }
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = cells.insert((cx, cy), name.to_owned()) {
                    problems.push(format!("{name} overlaps {other} at ({cx}, {cy})"));
                }
            }
        }
        if is_row(panel) {
            continue;
        }
        if panel["description"].as_str().is_none_or(|d| d.trim().is_empty()) {
            problems.push(format!("{name}: no description"));
        }
        if panel["datasource"]["uid"] != DATASOURCE_UID {
            problems.push(format!("{name}: panel datasource is {}, not uid {DATASOURCE_UID}", panel["datasource"]));
        }
        let targets = panel["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
        if !targets.iter().any(|t| t["expr"].as_str().is_some_and(|e| !e.trim().is_empty())) {
            problems.push(format!("{name}: no target with a PromQL expr"));
        }
        let mut refs = BTreeSet::new();
        for target in targets {
            if target["datasource"]["uid"] != DATASOURCE_UID {
                problems.push(format!("{name}: target datasource is {}", target["datasource"]));
            }
            if target["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
                problems.push(format!("{name}: a target has an empty expr"));
            }
            if !target["refId"].as_str().is_some_and(|r| refs.insert(r.to_owned())) {
                problems.push(format!("{name}: missing or duplicate refId"));
            }
        }
    }
    assert!(problems.is_empty(), "dashboard problems:\n{}", problems.join("\n"));
}

#[test]
fn dashboard_queries_use_exported_metric_names_and_labels() {
    let dashboard = dashboard();
    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.len() >= 20, "the dashboard has its queries");
    let mut problems = Vec::new();
    for (panel, expr) in &exprs {
        check_expr(&format!("panel {panel:?}"), expr, &mut problems);
    }
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
}

#[test]
fn dashboard_answers_the_operators_questions() {
    let dashboard = dashboard();
    let exprs = dashboard_exprs(&dashboard);
    let used: BTreeSet<String> =
        exprs.iter().flat_map(|(_, e)| scan(e).selectors.into_iter().map(|s| s.name)).collect();
    let has = |needle: &str| exprs.iter().any(|(_, e)| e.contains(needle));
    for (metric, question) in [
        ("otp_requests_total", "requests/s by outcome, rejections by reason"),
        ("otp_codes_issued_total", "codes issued"),
        ("otp_deliveries_total", "deliveries by carrier and outcome"),
        ("otp_carrier_request_duration_seconds_bucket", "carrier latency quantiles"),
        ("otp_delivery_latency_seconds_bucket", "end-to-end latency quantiles"),
        ("otp_failovers_total", "failovers"),
        ("otp_carrier_circuit_open", "open circuit breakers"),
        ("otp_verifications_total", "verify outcomes"),
        ("otp_verify_duration_seconds_bucket", "verify latency"),
        ("otp_conversions_total", "conversion rate per carrier"),
        ("otp_dead_letters_total", "dead letters by reason"),
        ("otp_quarantines_total", "SMS-pumping quarantines"),
        ("otp_verify_lockouts_total", "verify lockouts"),
        ("otp_broker_connected", "broker connected"),
        ("otp_broker_reconnects_total", "broker reconnects"),
        ("otp_build_info", "build info"),
        ("rabbitmq_detailed_queue_messages_ready", "queue depth"),
        ("rabbitmq_detailed_queue_messages", "depth of otp.dead"),
    ] {
        assert!(used.contains(metric), "no panel shows {question} ({metric})");
    }
    for (needle, question) in [
        ("histogram_quantile(0.5, sum by (carrier, le) (rate(otp_carrier_request_duration_seconds_bucket", "p50"),
        ("histogram_quantile(0.95, sum by (carrier, le) (rate(otp_carrier_request_duration_seconds_bucket", "p95"),
        ("histogram_quantile(0.99, sum by (carrier, le) (rate(otp_carrier_request_duration_seconds_bucket", "p99"),
        ("histogram_quantile(0.99, sum by (le) (rate(otp_delivery_latency_seconds_bucket", "end-to-end p99"),
        ("sum by (carrier, outcome) (rate(otp_deliveries_total", "deliveries by carrier and outcome"),
        ("sum by (outcome) (rate(otp_requests_total", "requests by outcome"),
        ("sum by (reason) (rate(otp_dead_letters_total", "dead letters by reason"),
        ("rabbitmq_detailed_queue_messages{queue=~\".*otp[.]dead\"}", "depth of otp.dead"),
    ] {
        assert!(has(needle), "no query answers {question}: expected one containing {needle:?}");
    }
    // Conversion per carrier: conversions over SMS sent, both by carrier.
    assert!(
        exprs.iter().any(|(_, e)| {
            let Some((num, den)) = e.split_once(" / ") else { return false };
            num.contains("sum by (carrier) (rate(otp_conversions_total")
                && den.contains("sum by (carrier)")
                && den.contains("otp_deliveries_total{outcome=\"sent\"}")
        }),
        "no panel divides conversions by SMS sent per carrier"
    );
    // Rejections by reason: every RejectReason shows on the dashboard.
    for reason in ["rate_limited", "country_blocked", "suspected_pumping", "invalid_request", "invalid_phone"] {
        assert!(
            exprs.iter().any(|(_, e)| e.contains("otp_requests_total{outcome=~") && e.contains(reason)),
            "rejections by reason do not include {reason}"
        );
    }
}

#[test]
fn every_exported_metric_is_on_the_dashboard() {
    let dashboard = dashboard();
    let used: BTreeSet<String> =
        dashboard_exprs(&dashboard).iter().flat_map(|(_, e)| scan(e).selectors.into_iter().map(|s| s.name)).collect();
    let missing: Vec<&str> = ALL
        .iter()
        .filter(|spec| match spec.kind {
            Kind::Histogram => {
                !["_bucket", "_sum", "_count"].iter().any(|s| used.contains(&format!("{}{s}", spec.name)))
            }
            _ => !used.contains(spec.name),
        })
        .map(|spec| spec.name)
        .collect();
    assert!(missing.is_empty(), "exported but on no panel of {DASHBOARD}: {missing:?}");
}

/// The targets of each scrape job, by job name.
fn scrape_jobs(config: &Value) -> BTreeMap<String, (Value, Vec<String>)> {
    let mut jobs = BTreeMap::new();
    for job in config["scrape_configs"].as_array().expect("scrape_configs is a list") {
        let name = job["job_name"].as_str().expect("every scrape job has a job_name").to_owned();
        let targets = job["static_configs"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|sc| sc["targets"].as_array().into_iter().flatten())
            .map(|t| t.as_str().expect("targets are strings").to_owned())
            .collect();
        assert!(jobs.insert(name.clone(), (job.clone(), targets)).is_none(), "two scrape jobs named {name}");
    }
    jobs
}

fn port(addr: &str) -> u16 {
    addr.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {addr}"))
}

#[test]
fn prometheus_scrapes_the_generator_every_sender_and_rabbitmq() {
    let config = yaml(PROMETHEUS);
    let jobs = scrape_jobs(&config);
    let scraping = |target: &str, path: &str| {
        jobs.values().find(|(job, targets)| {
            targets.iter().any(|t| t == target) && job["metrics_path"].as_str().unwrap_or("/metrics") == path
        })
    };
    for target in ["generator:8080", "sender-1:9091", "sender-2:9091", "rabbitmq:15692"] {
        assert!(scraping(target, "/metrics").is_some(), "no job scrapes {target}/metrics");
    }
    // Per-queue depth: /metrics/detailed with the queue families.
    let (detailed, _) = scraping("rabbitmq:15692", "/metrics/detailed").expect("no job scrapes /metrics/detailed");
    let families: Vec<&str> =
        detailed["params"]["family"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    for family in ["queue_coarse_metrics", "queue_consumer_count"] {
        assert!(families.contains(&family), "/metrics/detailed is scraped without family {family}");
    }
    // The ports are the processes' default listen ports (config/default.toml).
    assert_eq!(port("generator:8080"), HttpConfig::default().listen.port(), "http.listen");
    assert_eq!(port("sender-1:9091"), SenderConfig::default().listen.port(), "sender.listen");
    // Rules are loaded, from a file next to prometheus.yml.
    let rule_files: Vec<&str> =
        config["rule_files"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    assert_eq!(rule_files, ["prometheus-rules.yml"]);
    assert_eq!(Path::new(PROMETHEUS).parent().unwrap().join(rule_files[0]), Path::new(RULES));
}

#[test]
fn alert_rules_cover_the_failures_and_use_known_metrics() {
    let rules = yaml(RULES);
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().expect("only alerting rules").to_owned();
            if rule["labels"]["severity"].as_str().is_none() {
                problems.push(format!("{name}: no severity label"));
            }
            for key in ["summary", "description"] {
                if rule["annotations"][key].as_str().is_none_or(|s| s.trim().is_empty()) {
                    problems.push(format!("{name}: no {key} annotation"));
                }
            }
            names.insert(name);
        }
    }
    for (name, expr) in rule_exprs(&rules) {
        check_expr(&format!("rule {name}"), &expr, &mut problems);
    }
    for wanted in [
        "OtpCarrierCircuitOpen",
        "OtpDeadLettersRising",
        "OtpUnsealedInternalMessage",
        "OtpBrokerDisconnected",
        "OtpDeliveryLatencyHigh",
        "OtpNoCodesIssued",
    ] {
        if !names.contains(wanted) {
            problems.push(format!("no alert {wanted}"));
        }
    }
    assert!(problems.is_empty(), "{RULES}:\n{}", problems.join("\n"));
}

#[test]
fn grafana_provisions_the_datasource_and_the_dashboard_directory() {
    let datasources = yaml(DATASOURCES);
    assert_eq!(datasources["apiVersion"], 1);
    let ds = datasources["datasources"]
        .as_array()
        .and_then(|list| list.iter().find(|d| d["uid"] == DATASOURCE_UID))
        .expect("a datasource with uid prometheus");
    assert_eq!(ds["type"], "prometheus");
    assert_eq!(ds["url"], "http://prometheus:9090");

    let providers = yaml(PROVIDERS);
    assert_eq!(providers["apiVersion"], 1);
    let provider = providers["providers"]
        .as_array()
        .and_then(|list| list.iter().find(|p| p["type"] == "file"))
        .expect("a file dashboard provider");
    let path = provider["options"]["path"].as_str().expect("the provider has options.path");

    // The header comment says how compose mounts the directories: the
    // provider's path must be where the dashboard's directory is mounted, and
    // the provisioning directory must be mounted where Grafana reads it.
    let mounts: Vec<(String, String)> = read(PROVIDERS)
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter_map(|l| l.trim().strip_prefix("./"))
        .filter_map(|l| {
            let mut parts = l.split(':');
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect();
    let host_of = |container: &str| mounts.iter().find(|(_, c)| c == container).map(|(h, _)| root().join(h));
    let dashboards = host_of(path).unwrap_or_else(|| panic!("{PROVIDERS}: no documented mount for {path}"));
    assert_eq!(dashboards.join("otp-pipeline.json"), root().join(DASHBOARD), "{path} is not the dashboard directory");
    let provisioning =
        host_of(GRAFANA_PROVISIONING).unwrap_or_else(|| panic!("{PROVIDERS}: no mount for {GRAFANA_PROVISIONING}"));
    assert_eq!(provisioning.join("dashboards/otp.yml"), root().join(PROVIDERS));
    assert_eq!(provisioning.join("datasources/prometheus.yml"), root().join(DATASOURCES));
}

/// Host path of `container_path` in a compose service, through its bind mounts.
fn host_path(service: &Value, container_path: &str) -> Option<PathBuf> {
    let mut best: Option<(usize, PathBuf)> = None;
    for volume in service["volumes"].as_array().into_iter().flatten() {
        let (source, target) = match volume {
            Value::String(short) => {
                let mut parts = short.split(':');
                (parts.next()?.to_owned(), parts.next().unwrap_or_default().to_owned())
            }
            long => (long["source"].as_str()?.to_owned(), long["target"].as_str()?.to_owned()),
        };
        if !(source.starts_with("./") || source.starts_with("../") || source.starts_with('/')) {
            continue; // a named volume
        }
        let Some(rest) = container_path.strip_prefix(target.as_str()) else { continue };
        if !(rest.is_empty() || rest.starts_with('/')) {
            continue;
        }
        let mut host = root().join(source.trim_start_matches("./"));
        if !rest.is_empty() {
            host.push(rest.trim_start_matches('/'));
        }
        if best.as_ref().is_none_or(|(len, _)| target.len() > *len) {
            best = Some((target.len(), host));
        }
    }
    best.map(|(_, p)| p)
}

/// The `--config FILE` of a compose service's command, as a host path.
fn service_config(service: &Value) -> Option<Config> {
    let args: Vec<&str> = service["command"].as_array()?.iter().filter_map(Value::as_str).collect();
    let file = args.windows(2).find(|w| w[0] == "--config").map(|w| w[1])?;
    let host = host_path(service, file)?;
    Some(Config::load(Some(&host)).unwrap_or_else(|e| panic!("{}: {e}", host.display())))
}

#[test]
fn docker_compose_mounts_what_prometheus_and_grafana_expect() {
    if !root().join(COMPOSE).exists() {
        eprintln!("no {COMPOSE}: nothing to check");
        return;
    }
    let compose = yaml(COMPOSE);
    let services = &compose["services"];
    let canonical = |p: PathBuf| std::fs::canonicalize(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));

    // Prometheus: its config and, next to it, the rules.
    let prometheus = &services["prometheus"];
    assert!(prometheus.is_object(), "{COMPOSE} has no prometheus service");
    let config_file = prometheus["command"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix("--config.file="))
        .unwrap_or(PROMETHEUS_CONFIG);
    let mounted = host_path(prometheus, config_file).expect("prometheus.yml is not mounted");
    assert_eq!(canonical(mounted), canonical(root().join(PROMETHEUS)), "{config_file}");
    let rules_in_container = Path::new(config_file).with_file_name("prometheus-rules.yml");
    let mounted = host_path(prometheus, rules_in_container.to_str().unwrap()).expect("the rules are not mounted");
    assert_eq!(canonical(mounted), canonical(root().join(RULES)), "{}", rules_in_container.display());

    // Grafana: provisioning where Grafana reads it, dashboards where the provider looks.
    let grafana = &services["grafana"];
    assert!(grafana.is_object(), "{COMPOSE} has no grafana service");
    for (container, host) in [
        (format!("{GRAFANA_PROVISIONING}/datasources/prometheus.yml"), DATASOURCES),
        (format!("{GRAFANA_PROVISIONING}/dashboards/otp.yml"), PROVIDERS),
    ] {
        let mounted = host_path(grafana, &container).unwrap_or_else(|| panic!("grafana: {container} not mounted"));
        assert_eq!(canonical(mounted), canonical(root().join(host)), "{container}");
    }
    let providers = yaml(PROVIDERS);
    let dir = providers["providers"][0]["options"]["path"].as_str().expect("provider path");
    let mounted = host_path(grafana, &format!("{dir}/otp-pipeline.json")).expect("dashboards are not mounted");
    assert_eq!(canonical(mounted), canonical(root().join(DASHBOARD)));

    // Every scrape target is a compose service, on the port its process listens on.
    for (job, (_, targets)) in scrape_jobs(&yaml(PROMETHEUS)) {
        for target in targets {
            let (host, target_port) = target.rsplit_once(':').expect("host:port");
            let service = &services[host];
            assert!(service.is_object(), "job {job}: {host} is not a compose service");
            let Some(config) = service_config(service) else { continue };
            let listen = match job.as_str() {
                "otp-generator" => config.http.listen,
                "otp-sender" => config.sender.listen,
                _ => continue,
            };
            assert_eq!(target_port, listen.port().to_string(), "job {job}: {host} listens on {listen}");
            assert!(listen.ip().is_unspecified(), "job {job}: {host} listens on {listen}, unreachable from prometheus");
        }
    }
}

#[test]
fn promtool_accepts_the_config_the_rules_and_every_panel_query() {
    let config_dir = root().join("config");
    let (ok, out) = promtool(&["check", "config", "prometheus.yml"], &config_dir);
    assert!(ok, "promtool check config {PROMETHEUS}:\n{out}");
    let (ok, out) = promtool(&["check", "rules", "prometheus-rules.yml"], &config_dir);
    assert!(ok, "promtool check rules {RULES}:\n{out}");

    // Every panel query parses: as recording rules, with Grafana's variables
    // replaced by durations.
    let dashboard = dashboard();
    let mut rules = Vec::new();
    for panel in all_panels(&dashboard).into_iter().filter(|p| !is_row(p)) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            let expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m").replace("$__range", "1h");
            let record = format!("dashboard:panel_{}:{}", panel["id"], target["refId"].as_str().unwrap_or("X"));
            rules.push(json!({ "record": record, "expr": expr }));
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("dashboard-queries.yml");
    let doc = json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    std::fs::write(&file, serde_norway::to_string(&doc).expect("yaml")).expect("write rules");
    let (ok, out) = promtool(&["check", "rules", file.to_str().unwrap()], dir.path());
    assert!(ok, "a panel query is not valid PromQL:\n{out}");
}

/// One case of [`alert_rules_fire_when_they_should`]: series, when to look,
/// and the label sets the alert's expression must then return.
struct Case {
    alert: &'static str,
    series: &'static [(&'static str, &'static str)],
    at: &'static str,
    fires: &'static [&'static str],
}

#[test]
fn alert_rules_fire_when_they_should() {
    let rules_yaml = yaml(RULES);
    let rules: BTreeMap<String, String> = rule_exprs(&rules_yaml).into_iter().collect();
    let cases = [
        Case {
            alert: "OtpCarrierCircuitOpen",
            series: &[
                (r#"otp_carrier_circuit_open{carrier="twilio",instance="sender-1:9091"}"#, "0 0 1 1 1 1"),
                (r#"otp_carrier_circuit_open{carrier="twilio",instance="sender-2:9091"}"#, "0x5"),
                (r#"otp_carrier_circuit_open{carrier="msg91",instance="sender-1:9091"}"#, "0x5"),
            ],
            at: "4m",
            fires: &[r#"{carrier="twilio"}"#],
        },
        Case {
            alert: "OtpCarrierCircuitOpen",
            series: &[(r#"otp_carrier_circuit_open{carrier="twilio",instance="sender-1:9091"}"#, "1 1 0 0 0")],
            at: "4m",
            fires: &[],
        },
        Case {
            alert: "OtpDeadLettersRising",
            series: &[
                (r#"otp_dead_letters_total{reason="malformed_json",instance="generator:8080"}"#, "0 0 0 1 2 3"),
                (r#"otp_dead_letters_total{reason="carrier_failed",instance="sender-1:9091"}"#, "4x5"),
            ],
            at: "5m",
            fires: &[r#"{reason="malformed_json"}"#],
        },
        Case {
            alert: "OtpUnsealedInternalMessage",
            series: &[
                (r#"otp_dead_letters_total{reason="unsealed",instance="sender-1:9091"}"#, "0 0 0 1 1 1"),
                (r#"otp_dead_letters_total{reason="malformed_json",instance="generator:8080"}"#, "0 0 0 1 2 3"),
            ],
            at: "5m",
            fires: &[r#"{instance="sender-1:9091"}"#],
        },
        Case {
            alert: "OtpBrokerDisconnected",
            series: &[
                (r#"otp_broker_connected{instance="sender-1:9091",job="otp-sender"}"#, "1 1 0 0"),
                (r#"otp_broker_connected{instance="sender-2:9091",job="otp-sender"}"#, "1x3"),
            ],
            at: "3m",
            fires: &[r#"{instance="sender-1:9091",job="otp-sender"}"#],
        },
        Case {
            alert: "OtpDeliveryLatencyHigh",
            series: &[
                (r#"otp_delivery_latency_seconds_bucket{le="1"}"#, "0+1x20"),
                (r#"otp_delivery_latency_seconds_bucket{le="5"}"#, "0+1x20"),
                (r#"otp_delivery_latency_seconds_bucket{le="10"}"#, "0+10x20"),
                (r#"otp_delivery_latency_seconds_bucket{le="+Inf"}"#, "0+10x20"),
            ],
            at: "10m",
            fires: &["{}"],
        },
        Case {
            alert: "OtpDeliveryLatencyHigh",
            series: &[
                (r#"otp_delivery_latency_seconds_bucket{le="1"}"#, "0+10x20"),
                (r#"otp_delivery_latency_seconds_bucket{le="5"}"#, "0+10x20"),
                (r#"otp_delivery_latency_seconds_bucket{le="+Inf"}"#, "0+10x20"),
            ],
            at: "10m",
            fires: &[],
        },
        Case {
            alert: "OtpNoCodesIssued",
            series: &[
                (r#"otp_requests_total{outcome="suspected_pumping"}"#, "0+5x30"),
                ("otp_codes_issued_total", "0x30"),
            ],
            at: "20m",
            fires: &["{}"],
        },
        Case {
            alert: "OtpNoCodesIssued",
            series: &[(r#"otp_requests_total{outcome="accepted"}"#, "0+5x30"), ("otp_codes_issued_total", "0+5x30")],
            at: "20m",
            fires: &[],
        },
        Case {
            // Idle at night: no requests, no codes, no alert.
            alert: "OtpNoCodesIssued",
            series: &[(r#"otp_requests_total{outcome="accepted"}"#, "7x30"), ("otp_codes_issued_total", "7x30")],
            at: "20m",
            fires: &[],
        },
        Case {
            alert: "OtpQueueWithoutConsumers",
            series: &[
                (r#"rabbitmq_detailed_queue_consumers{queue="otp.deliveries",vhost="/"}"#, "2 0 0"),
                (r#"rabbitmq_detailed_queue_consumers{queue="t1.otp.requests",vhost="/"}"#, "0x2"),
                (r#"rabbitmq_detailed_queue_consumers{queue="otp.dead",vhost="/"}"#, "0x2"),
                (r#"rabbitmq_detailed_queue_consumers{queue="otp.status",vhost="/"}"#, "1x2"),
            ],
            at: "2m",
            fires: &[r#"{queue="otp.deliveries",vhost="/"}"#, r#"{queue="t1.otp.requests",vhost="/"}"#],
        },
        Case {
            alert: "OtpDeadLetterQueueGrowing",
            series: &[
                (r#"rabbitmq_detailed_queue_messages{queue="otp.dead",vhost="/"}"#, "500x3"),
                (r#"rabbitmq_detailed_queue_messages{queue="otp.deliveries",vhost="/"}"#, "5000x3"),
            ],
            at: "2m",
            fires: &[r#"{queue="otp.dead"}"#],
        },
    ];
    let mut tests = Vec::new();
    for case in &cases {
        let expr = rules.get(case.alert).unwrap_or_else(|| panic!("no rule {}", case.alert));
        // Only which series the alert's expression returns matters, not their
        // values: `* 0 + 1` makes every value 1 (and drops the metric name).
        let probe = format!("({expr}) * 0 + 1");
        let samples: Vec<Value> = case.fires.iter().map(|labels| json!({ "labels": labels, "value": 1 })).collect();
        tests.push(json!({
            "interval": "1m",
            "input_series": case.series.iter().map(|(s, v)| json!({ "series": s, "values": v })).collect::<Vec<_>>(),
            "promql_expr_test": [{ "expr": probe, "eval_time": case.at, "exp_samples": samples }],
        }));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("rules-test.yml");
    let rules_file = root().join(RULES);
    let doc = json!({ "rule_files": [rules_file.to_str().unwrap()], "evaluation_interval": "1m", "tests": tests });
    std::fs::write(&file, serde_norway::to_string(&doc).expect("yaml")).expect("write the rule tests");
    let (ok, out) = promtool(&["test", "rules", file.to_str().unwrap()], dir.path());
    assert!(ok, "alert rules do not fire as expected:\n{out}");
}
