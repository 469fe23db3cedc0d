//! `POST /v1/otp` (publish a request) and `GET /v1/otp/{request_id}` (its state).

use crate::domain::RawRequest;
use crate::domain::phone::mask;
use crate::generator::GeneratorError;
use crate::http::ApiState;
use crate::http::json::{ApiError, ApiJson, too_many_requests};
use crate::store::CancelOutcome;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use time::format_description::well_known::Rfc3339;

/// Validates the request as the generator will, publishes it with a confirm,
/// and answers 202 once the broker has it.
pub async fn create(State(state): State<ApiState>, ApiJson(raw): ApiJson<RawRequest>) -> Result<Response, ApiError> {
    let request_id = raw.request_id.clone();
    let valid = match state.generator.validate(raw.clone()) {
        Ok(valid) => valid,
        Err(rejection) => {
            let body = json!({"error": rejection.detail, "reason": rejection.reason});
            return Ok((StatusCode::BAD_REQUEST, axum::Json(body)).into_response());
        }
    };
    match state.generator.precheck(&valid) {
        Ok(()) => {}
        Err(GeneratorError::Refused(rejection, retry_at)) => {
            state.generator.announce_refusal(&valid, &rejection, retry_at).await;
            let mut body = json!({"error": rejection.detail, "reason": rejection.reason});
            let Some(retry_at) = retry_at else {
                return Ok((StatusCode::BAD_REQUEST, axum::Json(body)).into_response());
            };
            let wait = crate::generator::seconds_until(retry_at, state.generator.now());
            body["retry_after_secs"] = json!(wait);
            return Ok(too_many_requests(body, wait));
        }
        Err(e) => {
            tracing::error!(error = %e, "limit check failed");
            return Err(ApiError::unavailable("the store is unavailable; try again"));
        }
    }
    state.generator.submit(&raw).await.map_err(|e| {
        tracing::warn!(error = %e, "could not publish a request");
        ApiError::unavailable("the broker did not take the request; try again")
    })?;
    Ok((StatusCode::ACCEPTED, axum::Json(json!({"request_id": request_id}))).into_response())
}

/// Cancels a pending code: 200 `{"status":"canceled"}`, 409 with the final
/// status if it is already verified/expired/canceled, 404 if unknown.
pub async fn cancel(State(state): State<ApiState>, Path(request_id): Path<String>) -> Result<Response, ApiError> {
    let outcome = state.generator.cancel(&request_id).await.map_err(|e| {
        tracing::error!(error = %e, "cancel failed");
        ApiError::unavailable("cancel is unavailable; try again")
    })?;
    let (status, body) = match outcome {
        CancelOutcome::Canceled(_) => (StatusCode::OK, json!({"status": "canceled"})),
        CancelOutcome::AlreadyFinal(current) => (StatusCode::CONFLICT, json!({"status": current})),
        CancelOutcome::NotFound => (StatusCode::NOT_FOUND, json!({"status": "not_found"})),
    };
    Ok((status, axum::Json(body)).into_response())
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("UTC times format")
}

/// The request's lifecycle: status, carrier and timestamps.
pub async fn status(State(state): State<ApiState>, Path(request_id): Path<String>) -> Result<Response, ApiError> {
    let record = state.generator.request(&request_id).map_err(|e| {
        tracing::error!(error = %e, "status lookup failed");
        ApiError::unavailable("status is unavailable; try again")
    })?;
    let Some(r) = record else {
        return Ok((StatusCode::NOT_FOUND, axum::Json(json!({"status": "not_found"}))).into_response());
    };
    let body = json!({
        "request_id": r.request_id,
        "status": r.status,
        "phone": mask(&r.phone),
        "carrier": r.carrier,
        "carrier_message_id": r.carrier_message_id,
        "error": r.error,
        "created_at": rfc3339(r.created_at),
        "updated_at": rfc3339(r.updated_at),
        "expires_at": rfc3339(r.expires_at),
    });
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}
