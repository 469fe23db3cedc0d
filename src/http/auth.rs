//! Bearer API keys, compared in constant time, with a request rate limit per key.

use crate::http::bodies::ErrorBody;
use crate::telemetry::names;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use subtle::ConstantTimeEq;

/// The accepted keys, kept as SHA-256 digests so every comparison has the
/// same length and takes the same time whatever the caller sends. They can be
/// replaced while serving (key rotation without restart).
pub struct ApiKeys {
    digests: RwLock<Vec<[u8; 32]>>,
}

fn digests<S: AsRef<str>>(keys: &[S]) -> Vec<[u8; 32]> {
    keys.iter().map(|k| Sha256::digest(k.as_ref().as_bytes()).into()).collect()
}

impl ApiKeys {
    /// From the plaintext keys.
    pub fn new<S: AsRef<str>>(keys: &[S]) -> Self {
        Self { digests: RwLock::new(digests(keys)) }
    }

    /// Swaps in a new set of keys; requests in flight finish with the old set.
    pub fn replace<S: AsRef<str>>(&self, keys: &[S]) {
        *self.digests.write().expect("api keys lock") = digests(keys);
    }

    /// Whether `presented` is one of the keys. Every key is compared (no early exit).
    pub fn accepts(&self, presented: &str) -> bool {
        let candidate: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = subtle::Choice::from(0);
        for digest in self.digests.read().expect("api keys lock").iter() {
            found |= digest.ct_eq(&candidate);
        }
        found.into()
    }
}

fn bearer(request: &Request) -> Option<&str> {
    let value = request.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Middleware: 401 unless the request carries `Authorization: Bearer <key>`.
/// What guards the `/v1` routes: the keys, and a token bucket per key.
pub struct Gate {
    /// Accepted keys.
    pub keys: Arc<ApiKeys>,
    limiter: Option<DefaultKeyedRateLimiter<[u8; 32]>>,
}

impl Gate {
    /// `per_sec` requests per second per key, bursts of `burst`; 0 disables the limit.
    pub fn new(keys: Arc<ApiKeys>, per_sec: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(per_sec).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self { keys, limiter }
    }

    /// `Err(wait)` if this key is over its rate.
    fn admit(&self, token: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        limiter.check_key(&key).map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// Middleware: 401 unless the request carries `Authorization: Bearer <key>`;
/// 429 with `Retry-After` when that key is over its request rate.
pub async fn require_api_key(State(gate): State<Arc<Gate>>, request: Request, next: Next) -> Response {
    let reason = match bearer(&request) {
        Some(token) if gate.keys.accepts(token) => match gate.admit(token) {
            Ok(()) => return next.run(request).await,
            Err(wait) => {
                metrics::counter!(names::HTTP_RATE_LIMITED).increment(1);
                let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
                let body = ErrorBody::new("too many requests for this API key");
                return crate::http::json::too_many_requests(&body, secs);
            }
        },
        Some(_) => "wrong_key",
        None => "missing_key",
    };
    metrics::counter!(names::AUTH_FAILURES, "reason" => reason).increment(1);
    let body = ErrorBody::new("missing or invalid API key: send Authorization: Bearer <key>");
    let mut response = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_configured_keys() {
        let keys = ApiKeys::new(&["first-key-0123456789", "second-key-0123456789"]);
        assert!(keys.accepts("first-key-0123456789"));
        assert!(keys.accepts("second-key-0123456789"));
        assert!(!keys.accepts("first-key-012345678"));
        assert!(!keys.accepts(""));
        keys.replace(&["third-key-0123456789"]);
        assert!(keys.accepts("third-key-0123456789"));
        assert!(!keys.accepts("first-key-0123456789"), "replaced keys stop working");
    }
}
