//! JSON bodies and errors: every failure answers `{"error": …}` with the
//! right status (400 for bad JSON or fields, 413 for oversized bodies).

use crate::domain::{DecodeError, RawRequest};
use crate::http::bodies::ErrorBody;
use axum::extract::FromRequest;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// `axum::Json`, with rejections turned into the contract's error shape.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// A `POST /v1/otp` body, decoded exactly as the queue consumer decodes a
/// request ([`RawRequest::decode`]: objects only, no unknown or repeated
/// keys), after `axum::Json`'s content-type (415) and size (413) checks.
pub struct RequestJson(pub RawRequest);

impl<S: Send + Sync> FromRequest<S> for RequestJson {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(request.headers()) {
            let message = "expected a request body with Content-Type: application/json".to_owned();
            return Err(ApiError { status: StatusCode::UNSUPPORTED_MEDIA_TYPE, message });
        }
        let body = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|e| ApiError { status: e.status(), message: e.body_text() })?;
        match RawRequest::decode(&body) {
            Ok(raw) => Ok(Self(raw)),
            Err(DecodeError::Malformed(detail) | DecodeError::Invalid { detail, .. }) => {
                Err(ApiError::bad_request(crate::domain::phone::redact_numbers(&detail)))
            }
        }
    }
}

/// `application/json` or `application/*+json`, as `axum::Json` accepts.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// An error answered as `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// The message (never a code; numbers redacted).
    pub message: String,
}

impl ApiError {
    /// 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, message: message.into() }
    }

    /// 503: a dependency (store, broker) failed.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self { status: StatusCode::SERVICE_UNAVAILABLE, message: message.into() }
    }

    /// For `map_err`: logs the failure of `what` and answers 503
    /// "`what` is unavailable; try again".
    pub fn failed<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> Self {
        move |e| {
            tracing::error!(error = %e, "{what} failed");
            Self::unavailable(format!("{what} is unavailable; try again"))
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::BAD_REQUEST,
        };
        Self { status, message: crate::domain::phone::redact_numbers(&rejection.body_text()) }
    }
}

/// 429 with `body` and `Retry-After: wait_secs`.
pub fn too_many_requests(body: &impl serde::Serialize, wait_secs: u64) -> Response {
    let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(wait_secs));
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(ErrorBody::new(self.message))).into_response()
    }
}
