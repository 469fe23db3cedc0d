//! `POST /v1/otp` (publish a request), `GET /v1/otp/{request_id}` (its state)
//! and `DELETE /v1/otp/{request_id}` (cancel it).

use crate::domain::RawRequest;
use crate::domain::phone::mask;
use crate::generator::GeneratorError;
use crate::http::ApiState;
use crate::http::Caller;
use crate::http::bodies::refusals::{KeyRateLimited, Unauthorized, Unavailable};
use crate::http::bodies::{Accepted, ErrorBody, NotFound, RequestView, StatusOnly};
use crate::http::json::{ApiError, RequestJson, too_many_requests};
use crate::store::CancelOutcome;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use time::format_description::well_known::Rfc3339;

/// Validates the request as the generator will, publishes it with a confirm,
/// and answers 202 once the broker has it. The outcome follows as events.
#[utoipa::path(
    post,
    path = "/v1/otp",
    tag = "otp",
    request_body = RawRequest,
    security(("api_key" = [])),
    responses(
        (status = 202, description = "Published; the generator issues the code and a sender delivers it.",
            body = Accepted),
        (status = 400, description = "Invalid request (`reason`: `invalid_request`, `invalid_phone`, \
            `country_blocked`, `suspected_pumping`) or malformed JSON.", body = ErrorBody),
        (status = 401, response = Unauthorized),
        (status = 413, description = "Body over `http.max_body_bytes`.", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json.", body = ErrorBody),
        (status = 429, description = "Send limit for this number (`rate_limited`, `retry_after_secs`) or \
            the API key is over its rate.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The broker or store is unavailable; retry.", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    RequestJson(raw): RequestJson,
) -> Result<Response, ApiError> {
    let request_id = raw.request_id.clone();
    let valid = match state.generator.validate(raw.clone()) {
        Ok(valid) => valid,
        Err(rejection) => {
            let body = ErrorBody { reason: Some(rejection.reason), ..ErrorBody::new(rejection.detail) };
            return Ok((StatusCode::BAD_REQUEST, axum::Json(body)).into_response());
        }
    };
    // The owner's store holds the number's limits: let it answer.
    if let Some(owner) = state.shards.owner_elsewhere(valid.phone.e164(), &headers) {
        let body = serde_json::to_vec(&raw).expect("requests serialize");
        return Ok(state.shards.forward(owner, Method::POST, "/v1/otp", &headers, Some(body)).await);
    }
    match state.generator.precheck(&valid) {
        Ok(()) => {}
        Err(GeneratorError::Refused(rejection, retry_at)) => {
            state.generator.announce_refusal(&valid, &rejection, retry_at).await;
            let mut body = ErrorBody { reason: Some(rejection.reason), ..ErrorBody::new(rejection.detail) };
            let Some(retry_at) = retry_at else {
                return Ok((StatusCode::BAD_REQUEST, axum::Json(body)).into_response());
            };
            let wait = crate::domain::clock::seconds_until(retry_at, state.generator.now());
            body.retry_after_secs = Some(wait);
            return Ok(too_many_requests(&body, wait));
        }
        Err(e) => return Err(ApiError::failed("the store")(e)),
    }
    state.generator.submit(&raw, &valid.phone, caller.app.as_deref()).await.map_err(|e| {
        tracing::warn!(error = %e, "could not publish a request");
        ApiError::unavailable("the broker did not take the request; try again")
    })?;
    Ok((StatusCode::ACCEPTED, axum::Json(Accepted { request_id })).into_response())
}

/// Cancels a pending code: 200 `{"status":"canceled"}`, 409 with the final
/// status if it is already verified/expired/canceled, 404 if unknown.
#[utoipa::path(
    delete,
    path = "/v1/otp/{request_id}",
    tag = "otp",
    params(("request_id" = String, Path, description = "The producer's request id")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Canceled: the code can no longer be verified.", body = StatusOnly),
        (status = 401, response = Unauthorized),
        (status = 404, description = "No such request (or another application's, for a scoped key).",
            body = NotFound),
        (status = 409, description = "Already final (verified, expired or canceled); `status` says which.",
            body = StatusOnly),
        (status = 429, response = KeyRateLimited),
        (status = 503, response = Unavailable),
    )
)]
pub async fn cancel(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(request_id): Path<String>,
) -> Result<Response, ApiError> {
    // Another application's request does not exist for a scoped key.
    if let Some(r) = state.generator.request(&request_id).map_err(ApiError::failed("cancel"))?
        && !caller.sees(r.owner.as_deref())
    {
        return Ok(not_found());
    }
    let outcome = state.generator.cancel(&request_id).await.map_err(ApiError::failed("cancel"))?;
    Ok(match outcome {
        CancelOutcome::Canceled(record) => {
            (StatusCode::OK, axum::Json(StatusOnly { status: record.status })).into_response()
        }
        CancelOutcome::AlreadyFinal(status) => {
            (StatusCode::CONFLICT, axum::Json(StatusOnly { status })).into_response()
        }
        CancelOutcome::NotFound => {
            let path = format!("/v1/otp/{}", encode_segment(&request_id));
            return Ok(ask_other_shards(&state, Method::DELETE, &path, &headers).await);
        }
    })
}

/// Not here: the first other shard that knows the request answers (sharded
/// deployments only); otherwise 404.
async fn ask_other_shards(state: &ApiState, method: Method, path: &str, headers: &HeaderMap) -> Response {
    for base in state.shards.others(headers) {
        let answer = state.shards.forward(base, method.clone(), path, headers, None).await;
        if answer.status() != StatusCode::NOT_FOUND {
            return answer;
        }
    }
    not_found()
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, axum::Json(NotFound::new())).into_response()
}

/// A request id as one URL path segment.
fn encode_segment(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("UTC times format")
}

/// The request's lifecycle: status, carrier and timestamps.
#[utoipa::path(
    get,
    path = "/v1/otp/{request_id}",
    tag = "otp",
    params(("request_id" = String, Path, description = "The producer's request id")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The request's state; the phone is masked.", body = RequestView),
        (status = 401, response = Unauthorized),
        (status = 404, description = "No such request (or it was swept after `store.retention_secs`, or it \
            is another application's and the key is scoped).", body = NotFound),
        (status = 429, response = KeyRateLimited),
        (status = 503, response = Unavailable),
    )
)]
pub async fn status(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(request_id): Path<String>,
) -> Result<Response, ApiError> {
    let record = state.generator.request(&request_id).map_err(ApiError::failed("status"))?;
    let Some(r) = record else {
        let path = format!("/v1/otp/{}", encode_segment(&request_id));
        return Ok(ask_other_shards(&state, Method::GET, &path, &headers).await);
    };
    if !caller.sees(r.owner.as_deref()) {
        return Ok(not_found());
    }
    let body = RequestView {
        request_id: r.request_id,
        status: r.status,
        phone: mask(&r.phone),
        carrier: r.carrier,
        carrier_message_id: r.carrier_message_id,
        error: r.error,
        reason: r.reason,
        created_at: rfc3339(r.created_at),
        updated_at: rfc3339(r.updated_at),
        expires_at: rfc3339(r.expires_at),
    };
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}
