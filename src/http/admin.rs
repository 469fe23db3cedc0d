//! Operator routes (behind the operators' keys, `http.admin_api_keys`): the
//! SMS-pumping quarantines.
//!
//! `GET /v1/admin/quarantines` lists those in force with their rule and
//! figures; `DELETE /v1/admin/quarantines/{prefix}` lifts one.

use crate::http::ApiState;
use crate::http::json::ApiError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "admin route failed");
    ApiError::unavailable("the store is unavailable; try again")
}

/// The quarantines in force.
pub async fn quarantines(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let list = state.generator.quarantines().map_err(unavailable)?;
    Ok(axum::Json(json!({ "quarantines": list })).into_response())
}

/// Lifts one: 200 `{"lifted": prefix}`, or 404 if none was in force.
pub async fn lift(State(state): State<ApiState>, Path(prefix): Path<String>) -> Result<Response, ApiError> {
    if prefix.is_empty() || prefix.len() > 15 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::bad_request("prefix must be the quarantined digits, without '+'"));
    }
    if state.generator.lift_quarantine(&prefix).map_err(unavailable)? {
        Ok(axum::Json(json!({ "lifted": prefix })).into_response())
    } else {
        Ok((StatusCode::NOT_FOUND, axum::Json(json!({ "status": "not_found" }))).into_response())
    }
}
