//! `POST /v1/verify {"phone","code"}`.

use crate::domain::{Code, Phone, VerifyOutcome};
use crate::http::ApiState;
use crate::http::json::{ApiError, ApiJson, too_many_requests};
use crate::telemetry::names;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use std::time::Instant;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyBody {
    phone: String,
    code: String,
}

pub async fn verify(State(state): State<ApiState>, ApiJson(body): ApiJson<VerifyBody>) -> Result<Response, ApiError> {
    let started = Instant::now();
    let phone = Phone::parse(&body.phone).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let code = Code::parse(&body.code).ok_or_else(|| ApiError::bad_request("code must be 4 to 10 digits"))?;
    let outcome = state.generator.verify(&phone, &code).await.map_err(|e| {
        tracing::error!(error = %e, "verification failed");
        ApiError::unavailable("verification is unavailable; try again")
    })?;
    metrics::histogram!(names::VERIFY_DURATION).record(started.elapsed().as_secs_f64());
    let (status, body) = match outcome {
        VerifyOutcome::Approved { .. } => (StatusCode::OK, json!({"status": "approved"})),
        VerifyOutcome::Invalid { attempts_left } => {
            (StatusCode::UNPROCESSABLE_ENTITY, json!({"status": "invalid_code", "attempts_left": attempts_left}))
        }
        VerifyOutcome::Expired { .. } => (StatusCode::GONE, json!({"status": "expired"})),
        VerifyOutcome::MaxAttemptsReached { .. } => {
            (StatusCode::TOO_MANY_REQUESTS, json!({"status": "max_attempts_reached"}))
        }
        VerifyOutcome::NotFound => (StatusCode::NOT_FOUND, json!({"status": "not_found"})),
        VerifyOutcome::Locked { until } => {
            let wait = crate::generator::seconds_until(until, state.generator.now());
            return Ok(too_many_requests(json!({"status": "locked", "retry_after_secs": wait}), wait));
        }
    };
    Ok((status, axum::Json(body)).into_response())
}
