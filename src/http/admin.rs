//! Operator routes (behind the operators' keys, `http.admin_api_keys`): the
//! SMS-pumping quarantines.
//!
//! `GET /v1/admin/quarantines` lists those in force with their rule and
//! figures; `DELETE /v1/admin/quarantines/{prefix}` lifts one.

use crate::http::ApiState;
use crate::http::bodies::{ErrorBody, Lifted, NotFound, QuarantineList};
use crate::http::json::ApiError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// The quarantines in force.
#[utoipa::path(
    get,
    path = "/v1/admin/quarantines",
    tag = "admin",
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "Number prefixes quarantined as suspected SMS pumping.", body = QuarantineList),
        (status = 401, description = "Missing or wrong operator key (or no `http.admin_api_keys` configured).",
            body = ErrorBody),
        (status = 503, description = "The store is unavailable; retry.", body = ErrorBody),
    )
)]
pub async fn quarantines(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let quarantines = state.generator.quarantines().map_err(ApiError::failed("the store"))?;
    Ok(axum::Json(QuarantineList { quarantines }).into_response())
}

/// Lifts one: 200 `{"lifted": prefix}`, or 404 if none was in force.
#[utoipa::path(
    delete,
    path = "/v1/admin/quarantines/{prefix}",
    tag = "admin",
    params(("prefix" = String, Path, description = "The quarantined digits, without `+`")),
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "Lifted.", body = Lifted),
        (status = 400, description = "Not 1 to 15 digits.", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator key.", body = ErrorBody),
        (status = 404, description = "No quarantine in force for that prefix.", body = NotFound),
        (status = 503, description = "The store is unavailable; retry.", body = ErrorBody),
    )
)]
pub async fn lift(State(state): State<ApiState>, Path(prefix): Path<String>) -> Result<Response, ApiError> {
    if prefix.is_empty() || prefix.len() > 15 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::bad_request("prefix must be the quarantined digits, without '+'"));
    }
    if state.generator.lift_quarantine(&prefix).await.map_err(ApiError::failed("the store"))? {
        Ok(axum::Json(Lifted { lifted: prefix }).into_response())
    } else {
        Ok((StatusCode::NOT_FOUND, axum::Json(NotFound::new())).into_response())
    }
}
