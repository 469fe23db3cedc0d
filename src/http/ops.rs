//! `/metrics`, `/healthz`, `/readyz` and `/openapi.json`: no authentication.

use crate::broker::Broker;
use crate::http::bodies::{Health, HealthStatus, Readiness, ReadyStatus};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;

/// A readiness check beyond the broker (the generator's store).
pub type Check = Arc<dyn Fn() -> bool + Send + Sync>;

/// What the operational routes read.
#[derive(Clone)]
pub struct OpsState {
    broker: Arc<Broker>,
    metrics: PrometheusHandle,
    store: Option<Check>,
}

/// The operational routes of every process.
pub fn router(broker: Arc<Broker>, handle: PrometheusHandle, store: Option<Check>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(OpsState { broker, metrics: handle, store })
}

/// `/healthz`, `/metrics`, and a `/readyz` that says not ready: the store is not open yet.
pub fn not_ready_router(handle: PrometheusHandle) -> Router {
    let render = move || std::future::ready(exposition(&handle));
    let not_ready = || async {
        let body = Readiness { status: ReadyStatus::NotReady, broker: false, store: false };
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body))
    };
    Router::new().route("/metrics", get(render)).route("/healthz", get(healthz)).route("/readyz", get(not_ready))
}

/// Prometheus text exposition of this process's metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    responses((status = 200, description = "Prometheus text format 0.0.4.", content_type = "text/plain", body = String))
)]
pub async fn metrics(State(state): State<OpsState>) -> Response {
    exposition(&state.metrics)
}

/// The text exposition of `handle`, with Prometheus's content type.
fn exposition(handle: &PrometheusHandle) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render()).into_response()
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "Alive.", body = Health)))]
pub async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: HealthStatus::Ok })
}

/// Readiness: connected to RabbitMQ and, on the generator, the store answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    responses(
        (status = 200, description = "Ready to work.", body = Readiness),
        (status = 503, description = "Not ready: `broker` or `store` says which part is down.", body = Readiness),
    )
)]
pub async fn readyz(State(state): State<OpsState>) -> Response {
    let broker = state.broker.is_connected();
    let store = state.store.as_ref().is_none_or(|check| check());
    let ready = broker && store;
    let (code, status) = if ready {
        (StatusCode::OK, ReadyStatus::Ready)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, ReadyStatus::NotReady)
    };
    (code, axum::Json(Readiness { status, broker, store })).into_response()
}
