//! `/metrics`, `/healthz`, `/readyz`: no authentication.

use crate::broker::Broker;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use std::sync::Arc;

/// A readiness check beyond the broker (the generator's store).
pub type Check = Arc<dyn Fn() -> bool + Send + Sync>;

pub fn router(broker: Arc<Broker>, metrics: PrometheusHandle, store: Option<Check>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = metrics.render();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body) }
            }),
        )
        .route("/healthz", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .route(
            "/readyz",
            get(move || {
                let broker_ok = broker.is_connected();
                let store_ok = store.as_ref().is_none_or(|check| check());
                async move {
                    let ready = broker_ok && store_ok;
                    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                    let body = json!({
                        "status": if ready { "ready" } else { "not_ready" },
                        "broker": broker_ok,
                        "store": store_ok,
                    });
                    (status, axum::Json(body)).into_response()
                }
            }),
        )
}
