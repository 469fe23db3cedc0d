//! `POST /v1/verify {"phone","code"}`.

use crate::domain::{Code, Phone, VerifyOutcome};
use crate::http::ApiState;
use crate::http::Caller;
use crate::http::bodies::refusals::{Unauthorized, Unavailable};
use crate::http::bodies::{ErrorBody, VerifyResult, VerifyStatus, VerifyTooMany};
use crate::http::json::{ApiError, ApiJson, too_many_requests};
use crate::telemetry::names;
use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::time::Instant;

/// The code a user typed, for the number it was sent to.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyBody {
    /// The number, E.164.
    #[schema(example = "+14155550123")]
    phone: String,
    /// The code: 4 to 10 digits.
    #[schema(pattern = "^[0-9]{4,10}$", example = "493817")]
    code: String,
}

/// Checks a code. Approved at most once; wrong codes count against the code's
/// attempt limit and the number's lockout.
#[utoipa::path(
    post,
    path = "/v1/verify",
    tag = "verify",
    request_body = VerifyBody,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Approved: the code was right and is now used up.", body = VerifyResult),
        (status = 400, description = "Malformed body, phone or code.", body = ErrorBody),
        (status = 401, response = Unauthorized),
        (status = 404, description = "No pending code for this number (for a scoped key: none of its \
            application's).", body = VerifyResult),
        (status = 410, description = "The code expired.", body = VerifyResult),
        (status = 413, description = "Body over `http.max_body_bytes`.", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json.", body = ErrorBody),
        (status = 422, description = "Wrong code; `attempts_left` tries remain.", body = VerifyResult),
        (status = 429, description = "Too many wrong codes (`max_attempts_reached`), the number is locked \
            (`locked`, with `Retry-After`), or the API key is over its rate.", body = VerifyTooMany,
            headers(("Retry-After" = u64, description = "Seconds to wait, with `locked` and key limits"))),
        (status = 503, response = Unavailable),
    )
)]
pub async fn verify(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<VerifyBody>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let phone = Phone::parse(&body.phone).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some(owner) = state.shards.owner_elsewhere(phone.e164(), &headers) {
        let forwarded = serde_json::to_vec(&serde_json::json!({"phone": phone.e164(), "code": body.code}))
            .expect("JSON serializes");
        return Ok(state.shards.forward(owner, Method::POST, "/v1/verify", &headers, Some(forwarded)).await);
    }
    let code = Code::parse(&body.code).ok_or_else(|| ApiError::bad_request("code must be 4 to 10 digits"))?;
    let outcome = state
        .generator
        .verify_as(&phone, &code, caller.app.as_deref())
        .await
        .map_err(ApiError::failed("verification"))?;
    metrics::histogram!(names::VERIFY_DURATION).record(started.elapsed().as_secs_f64());
    let (status, body) = match outcome {
        VerifyOutcome::Approved { .. } => (StatusCode::OK, VerifyResult::of(VerifyStatus::Approved)),
        VerifyOutcome::Invalid { attempts_left } => (
            StatusCode::UNPROCESSABLE_ENTITY,
            VerifyResult { attempts_left: Some(attempts_left), ..VerifyResult::of(VerifyStatus::InvalidCode) },
        ),
        VerifyOutcome::Expired { .. } => (StatusCode::GONE, VerifyResult::of(VerifyStatus::Expired)),
        VerifyOutcome::MaxAttemptsReached { .. } => {
            (StatusCode::TOO_MANY_REQUESTS, VerifyResult::of(VerifyStatus::MaxAttemptsReached))
        }
        VerifyOutcome::NotFound => (StatusCode::NOT_FOUND, VerifyResult::of(VerifyStatus::NotFound)),
        VerifyOutcome::Locked { until } => {
            let wait = crate::domain::clock::seconds_until(until, state.generator.now());
            let body = VerifyResult { retry_after_secs: Some(wait), ..VerifyResult::of(VerifyStatus::Locked) };
            return Ok(too_many_requests(&body, wait));
        }
    };
    Ok((status, axum::Json(body)).into_response())
}
