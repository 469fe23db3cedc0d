//! Carriers' delivery-receipt callbacks, served by senders on one route,
//! `GET|POST /receipts/{carrier}`, that hands each callback to its carrier
//! (Twilio checks `X-Twilio-Signature`, Vonage and MSG91 a secret `?token=`):
//! this module knows no carrier's format.
//!
//! An authentic receipt is forwarded to the generator (routing key
//! `receipt`), which resolves it to a request. Forged or unsigned callbacks
//! get 403 and are counted; a signed Twilio callback seen before (a replay)
//! is answered 200, counted `replayed` and dropped; a callback with more
//! than [`MAX_REPORTS_PER_CALLBACK`] reports gets 400.

use crate::broker::{Broker, Topology};
use crate::carriers::{Callback, Carrier, CarrierKind, Receipt, ReceiptError, ReceiptStatus, Receipts};
use crate::domain::{Clock, ReceiptMessage};
use crate::telemetry::names;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Largest receipt body accepted.
const MAX_RECEIPT_BYTES: usize = 64 * 1024;

/// Most delivery reports one callback may carry (MSG91 batches them; one
/// request's SMS has a handful).
pub const MAX_REPORTS_PER_CALLBACK: usize = 100;

/// How long a Twilio signature is remembered to spot replays, and how many.
const REPLAY_WINDOW: Duration = Duration::from_secs(3600);
const REPLAY_MEMORY: usize = 50_000;

/// The signed callbacks seen lately: a signature covers the whole callback,
/// so seeing one again is a replay (or the carrier's own retry of a callback
/// already forwarded). Bounded in time and in size, oldest forgotten first.
#[derive(Default)]
pub struct Replays {
    order: VecDeque<(Instant, String)>,
    seen: HashSet<String>,
}

impl Replays {
    /// Whether `signature` was remembered within the window.
    fn seen(&mut self, signature: &str, now: Instant) -> bool {
        while let Some((at, old)) = self.order.front() {
            if now.duration_since(*at) < REPLAY_WINDOW && self.order.len() < REPLAY_MEMORY {
                break;
            }
            self.seen.remove(old);
            self.order.pop_front();
        }
        self.seen.contains(signature)
    }

    /// Remembers `signature` (once its callback was forwarded: a callback
    /// that got no 2xx may come again and must be taken then).
    fn remember(&mut self, signature: &str, now: Instant) {
        if self.seen.insert(signature.to_owned()) {
            self.order.push_back((now, signature.to_owned()));
        }
    }
}

/// What the receipt routes need.
#[derive(Clone)]
pub struct ReceiptState {
    /// The carriers whose callbacks are taken (those configured).
    pub carriers: Arc<BTreeMap<CarrierKind, Arc<dyn Carrier>>>,
    /// Where authentic receipts go.
    pub broker: Arc<Broker>,
    /// Stamps receipts.
    pub clock: Arc<dyn Clock>,
    /// Signed callbacks seen lately.
    pub replays: Arc<Mutex<Replays>>,
}

/// The receipt route.
pub fn router(state: ReceiptState) -> Router {
    Router::new()
        .route("/receipts/{carrier}", get(receive).post(receive))
        .layer(DefaultBodyLimit::max(MAX_RECEIPT_BYTES))
        .with_state(state)
}

fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query.and_then(|q| serde_urlencoded::from_str(q).ok()).unwrap_or_default()
}

/// One callback: to its carrier, then (if authentic) to the generator.
async fn receive(
    State(state): State<ReceiptState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(kind) = name.parse::<CarrierKind>() else {
        let error = format!("no carrier {name:?}");
        return (StatusCode::NOT_FOUND, axum::Json(json!({ "error": error }))).into_response();
    };
    let carrier = kind.as_str();
    let callback = Callback { query: query_pairs(query.as_deref()), headers: &headers, body: &body };
    let result = match state.carriers.get(&kind) {
        Some(receiver) => receiver.receipts(&callback),
        None => Err(ReceiptError::NotConfigured(carrier)),
    };
    match result {
        Ok(Receipts { receipts, replay_key: Some(key) }) => state.forward_once(carrier, &key, Ok(receipts)).await,
        Ok(Receipts { receipts, replay_key: None }) => state.forward(carrier, Ok(receipts)).await,
        Err(e) => state.forward(carrier, Err(e)).await,
    }
}

impl ReceiptState {
    /// Forwards an authentic signed callback unless it was forwarded before
    /// (then: 200, counted `replayed`, dropped).
    async fn forward_once(
        &self,
        carrier: &'static str,
        signature: &str,
        result: Result<Vec<Receipt>, ReceiptError>,
    ) -> Response {
        if self.replays.lock().expect("replays lock").seen(signature, Instant::now()) {
            metrics::counter!(names::RECEIPTS, "carrier" => carrier, "status" => "replayed").increment(1);
            tracing::warn!(carrier, "a signed callback came again; dropped");
            return StatusCode::OK.into_response();
        }
        let response = self.forward(carrier, result).await;
        if response.status().is_success() {
            self.replays.lock().expect("replays lock").remember(signature, Instant::now());
        }
        response
    }

    /// Counts, forwards the final ones to the generator, and answers the carrier.
    async fn forward(&self, carrier: &'static str, result: Result<Vec<Receipt>, ReceiptError>) -> Response {
        let receipts = match result {
            Ok(r) if r.len() > MAX_REPORTS_PER_CALLBACK => {
                metrics::counter!(names::RECEIPTS, "carrier" => carrier, "status" => "malformed").increment(1);
                tracing::warn!(carrier, reports = r.len(), "delivery receipt callback with too many reports refused");
                let error = format!("at most {MAX_REPORTS_PER_CALLBACK} reports per callback");
                return (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": error }))).into_response();
            }
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
            if let Err(e) = self.broker.publish_routed_json(Topology::RECEIPT_KEY, &message, true).await {
                // The carrier retries a callback that did not get a 2xx.
                tracing::warn!(carrier, error = %e, "could not forward a delivery receipt");
                return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"error": "try again"}))).into_response();
            }
        }
        StatusCode::OK.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_a_replay_within_the_window_and_forgotten_after() {
        let mut replays = Replays::default();
        let start = Instant::now();
        assert!(!replays.seen("sig-a", start));
        replays.remember("sig-a", start);
        assert!(replays.seen("sig-a", start + Duration::from_secs(60)), "seen again: a replay");
        assert!(!replays.seen("sig-b", start + Duration::from_secs(60)));
        assert!(!replays.seen("sig-a", start + REPLAY_WINDOW + Duration::from_secs(1)), "forgotten after the window");
    }
}
