//! Bearer API keys, compared in constant time.

use crate::telemetry::names;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::{Arc, RwLock};
use subtle::ConstantTimeEq;

/// The accepted keys, kept as SHA-256 digests so every comparison has the
/// same length and takes the same time whatever the caller sends. They can be
/// replaced while serving (key rotation without restart).
pub struct ApiKeys {
    digests: RwLock<Vec<[u8; 32]>>,
}

fn digests<S: AsRef<str>>(keys: &[S]) -> Vec<[u8; 32]> {
    keys.iter()
        .map(|k| Sha256::digest(k.as_ref().as_bytes()).into())
        .collect()
}

impl ApiKeys {
    /// From the plaintext keys.
    pub fn new<S: AsRef<str>>(keys: &[S]) -> Self {
        Self {
            digests: RwLock::new(digests(keys)),
        }
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
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Middleware: 401 unless the request carries `Authorization: Bearer <key>`.
pub async fn require_api_key(
    State(keys): State<Arc<ApiKeys>>,
    request: Request,
    next: Next,
) -> Response {
    let reason = match bearer(&request) {
        Some(token) if keys.accepts(token) => return next.run(request).await,
        Some(_) => "wrong_key",
        None => "missing_key",
    };
    metrics::counter!(names::AUTH_FAILURES, "reason" => reason).increment(1);
    let mut response = (
        StatusCode::UNAUTHORIZED,
        axum::Json(serde_json::json!({"error": "missing or invalid API key: send Authorization: Bearer <key>"})),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
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
        assert!(
            !keys.accepts("first-key-0123456789"),
            "replaced keys stop working"
        );
    }
}
