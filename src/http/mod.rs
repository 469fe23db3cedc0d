//! HTTP: the generator's API (`/v1/*`, described at `/openapi.json`) and every
//! process's operational routes (`/metrics`, `/healthz`, `/readyz`).

mod admin;
mod auth;
pub mod bodies;
mod edge;
mod json;
pub mod openapi;
mod ops;
mod otp;
mod receipts;
mod shards;
mod verify;

pub use auth::{ApiKeys, Caller, Gate, ScopedKeys};
pub use edge::{EdgeLimits, MAX_HEADER_BYTES, MAX_URI_BYTES};
pub use receipts::{MAX_REPORTS_PER_CALLBACK, ReceiptState, router as receipts_router};
pub use shards::Shards;

use crate::broker::Broker;
use crate::generator::Generator;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the generator's routes share.
#[derive(Clone)]
pub struct ApiState {
    /// Codes, requests, verification.
    pub generator: Arc<Generator>,
    /// The process's broker link (readiness).
    pub broker: Arc<Broker>,
    /// Accepted bearer keys.
    pub gate: Arc<Gate>,
    /// Keys of the operator routes (`/v1/admin/*`); none configured: those routes are off.
    pub admin: Arc<Gate>,
    /// The other generator shards, for calls about numbers this one does not own.
    pub shards: Arc<Shards>,
}

/// The generator process's router: `/v1/*` behind API keys, plus ops routes.
pub fn api_router(state: ApiState, metrics: PrometheusHandle, max_body_bytes: usize) -> Router {
    let broker = state.broker.clone();
    let v1 = Router::new()
        .route("/v1/verify", post(verify::verify))
        .route("/v1/otp", post(otp::create))
        .route("/v1/otp/{request_id}", get(otp::status).delete(otp::cancel))
        .route_layer(axum::middleware::from_fn_with_state(state.gate.clone(), auth::require_api_key))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state.clone());
    let admin = Router::new()
        .route("/v1/admin/quarantines", get(admin::quarantines))
        .route("/v1/admin/quarantines/{prefix}", axum::routing::delete(admin::lift))
        .route_layer(axum::middleware::from_fn_with_state(state.admin.clone(), auth::require_api_key))
        .with_state(state.clone());
    let v1 = v1.merge(admin);
    let generator = state.generator.clone();
    let openapi = Router::new().route(
        "/openapi.json",
        get(|| async { ([(axum::http::header::CONTENT_TYPE, "application/json")], openapi::json()) }),
    );
    v1.merge(openapi)
        .merge(ops::router(broker, metrics, Some(Arc::new(move || generator.store_ok()))))
        .fallback(edge::no_route)
        .method_not_allowed_fallback(edge::wrong_method)
}

/// What a generator serves while its store cannot be opened: `/healthz`,
/// `/metrics`, and `/readyz` answering 503 `{"status":"not_ready","store":false}`.
pub fn not_ready_router(metrics: PrometheusHandle) -> Router {
    ops::not_ready_router(metrics).fallback(edge::no_route).method_not_allowed_fallback(edge::wrong_method)
}

/// A sender process's router: ops routes only.
pub fn ops_router(broker: Arc<Broker>, metrics: PrometheusHandle) -> Router {
    ops::router(broker, metrics, None).fallback(edge::no_route).method_not_allowed_fallback(edge::wrong_method)
}

/// Serves `router` on `listener` with the default [`EdgeLimits`] until
/// `shutdown`, then lets open requests finish.
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    edge::serve(listener, router, shutdown, EdgeLimits::default()).await
}

/// Like [`serve`], with `limits`.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    limits: EdgeLimits,
) -> std::io::Result<()> {
    edge::serve(listener, router, shutdown, limits).await
}
