//! Carriers' delivery-receipt callbacks, served by senders:
//! `POST /receipts/twilio` (checked `X-Twilio-Signature`), `GET|POST
//! /receipts/vonage` and `POST /receipts/msg91` (secret `?token=`).
//!
//! An authentic receipt is forwarded to the generator (routing key
//! `receipt`), which resolves it to a request. Forged or unsigned callbacks
//! get 403 and are counted.

use crate::broker::{Broker, Topology};
use crate::carriers::{self, Receipt, ReceiptError, ReceiptStatus};
use crate::config::CarriersConfig;
use crate::domain::{Clock, ReceiptMessage};
use crate::telemetry::names;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use std::sync::Arc;

/// Largest receipt body accepted.
const MAX_RECEIPT_BYTES: usize = 64 * 1024;

/// What the receipt routes need.
#[derive(Clone)]
pub struct ReceiptState {
    /// Carrier settings (secrets to check callbacks with).
    pub carriers: Arc<CarriersConfig>,
    /// Where authentic receipts go.
    pub broker: Arc<Broker>,
    /// Stamps receipts.
    pub clock: Arc<dyn Clock>,
}

/// The receipt routes.
pub fn router(state: ReceiptState) -> Router {
    Router::new()
        .route("/receipts/twilio", post(twilio))
        .route("/receipts/vonage", get(vonage).post(vonage))
        .route("/receipts/msg91", post(msg91))
        .layer(DefaultBodyLimit::max(MAX_RECEIPT_BYTES))
        .with_state(state)
}

fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query.and_then(|q| serde_urlencoded::from_str(q).ok()).unwrap_or_default()
}

async fn twilio(State(state): State<ReceiptState>, headers: HeaderMap, body: Bytes) -> Response {
    let result = match state.carriers.twilio.as_ref() {
        Some(config) => match config.status_callback.as_deref() {
            Some(url) => {
                let signature = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok());
                carriers::twilio::receipt(config, url, signature, &body).map(|r| vec![r])
            }
            None => Err(ReceiptError::NotConfigured("twilio")),
        },
        None => Err(ReceiptError::NotConfigured("twilio")),
    };
    state.forward("twilio", result).await
}

async fn vonage(
    State(state): State<ReceiptState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut params = query_pairs(query.as_deref());
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if is_json {
        match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body) {
            Ok(map) => params.extend(map.into_iter().map(|(k, v)| match v {
                serde_json::Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })),
            Err(e) => {
                return state.forward("vonage", Err(ReceiptError::Malformed(e.to_string()))).await;
            }
        }
    } else if !body.is_empty() {
        params.extend(query_pairs(std::str::from_utf8(&body).ok()));
    }
    let result = match state.carriers.vonage.as_ref() {
        Some(config) => carriers::vonage::receipt(config, &params).map(|r| vec![r]),
        None => Err(ReceiptError::NotConfigured("vonage")),
    };
    state.forward("vonage", result).await
}

async fn msg91(State(state): State<ReceiptState>, RawQuery(query): RawQuery, body: Bytes) -> Response {
    let params = query_pairs(query.as_deref());
    let token = params.iter().find(|(k, _)| k == "token").map(|(_, v)| v.as_str());
    let result = match state.carriers.msg91.as_ref() {
        Some(config) => carriers::msg91::receipts(config, token, &body),
        None => Err(ReceiptError::NotConfigured("msg91")),
    };
    state.forward("msg91", result).await
}

impl ReceiptState {
    /// Counts, forwards the final ones to the generator, and answers the carrier.
    async fn forward(&self, carrier: &'static str, result: Result<Vec<Receipt>, ReceiptError>) -> Response {
        let receipts = match result {
            Ok(r) => r,
            Err(e) => {
                let (status, label) = match &e {
                    ReceiptError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
                    ReceiptError::Malformed(_) => (StatusCode::BAD_REQUEST, "malformed"),
                    ReceiptError::NotConfigured(_) => (StatusCode::NOT_FOUND, "not_configured"),
                };
                metrics::counter!(names::RECEIPTS, "carrier" => carrier, "status" => label).increment(1);
                tracing::warn!(carrier, error = %e, "delivery receipt refused");
                return (status, axum::Json(json!({"error": e.to_string()}))).into_response();
            }
        };
        for receipt in receipts {
            metrics::counter!(names::RECEIPTS, "carrier" => carrier, "status" => receipt.status.as_str()).increment(1);
            if receipt.status == ReceiptStatus::Pending {
                continue;
            }
            let message = ReceiptMessage {
                carrier: receipt.carrier.to_owned(),
                carrier_message_id: receipt.carrier_message_id,
                delivered: receipt.status == ReceiptStatus::Delivered,
                error: receipt.error,
                at: self.clock.now(),
            };
            if let Err(e) = self.broker.publish_to_exchange(Topology::RECEIPT_KEY, &message, true).await {
                // The carrier retries a callback that did not get a 2xx.
                tracing::warn!(carrier, error = %e, "could not forward a delivery receipt");
                return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"error": "try again"}))).into_response();
            }
        }
        StatusCode::OK.into_response()
    }
}
