//! Bearer API keys, compared in constant time, with a request rate limit per
//! key. A key is either unscoped (it sees every request) or scoped to one
//! application (it sees only the requests made with that application's keys);
//! the middleware hands the handlers who called as a [`Caller`].

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

/// Who made an HTTP call: the application its key is scoped to, or
/// `None` for an unscoped key (which sees every request).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The application a scoped key belongs to.
    pub app: Option<Arc<str>>,
}

impl Caller {
    /// Whether this caller may see a request or code owned by `owner`.
    pub fn sees(&self, owner: Option<&str>) -> bool {
        crate::domain::request::visible_to(self.app.as_deref(), owner)
    }
}

/// The accepted keys, kept as SHA-256 digests so every comparison has the
/// same length and takes the same time whatever the caller sends, each with
/// its application if scoped. They can be replaced while serving (key
/// rotation without restart).
pub struct ApiKeys {
    entries: RwLock<Vec<([u8; 32], Caller)>>,
}

/// Unscoped `keys`, then every application's scoped keys.
fn entries<S: AsRef<str>>(keys: &[S], scoped: &ScopedKeys) -> Vec<([u8; 32], Caller)> {
    let digest = |k: &str| -> [u8; 32] { Sha256::digest(k.as_bytes()).into() };
    let unscoped = keys.iter().map(|k| (digest(k.as_ref()), Caller::default()));
    let scoped = scoped.iter().flat_map(|(app, keys)| {
        let caller = Caller { app: Some(Arc::from(app.as_str())) };
        keys.iter().map(move |k| (digest(k.expose()), caller.clone()))
    });
    unscoped.chain(scoped).collect()
}

/// Application name → its keys (`http.scoped_api_keys`).
pub type ScopedKeys = std::collections::BTreeMap<String, Vec<crate::config::Secret>>;

impl ApiKeys {
    /// From the plaintext keys, all unscoped.
    pub fn new<S: AsRef<str>>(keys: &[S]) -> Self {
        Self::with_scopes(keys, &ScopedKeys::new())
    }

    /// Unscoped `keys` and `scoped` keys (application → keys).
    pub fn with_scopes<S: AsRef<str>>(keys: &[S], scoped: &ScopedKeys) -> Self {
        Self { entries: RwLock::new(entries(keys, scoped)) }
    }

    /// Swaps in a new set of keys; requests in flight finish with the old set.
    pub fn replace<S: AsRef<str>>(&self, keys: &[S], scoped: &ScopedKeys) {
        *self.entries.write().expect("api keys lock") = entries(keys, scoped);
    }

    /// Whether `presented` is one of the keys.
    pub fn accepts(&self, presented: &str) -> bool {
        self.identify(presented).is_some()
    }

    /// The caller `presented` identifies, if it is one of the keys. Every
    /// key is compared (no early exit, the match picked without a branch on
    /// secret data).
    pub fn identify(&self, presented: &str) -> Option<Caller> {
        let candidate: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let entries = self.entries.read().expect("api keys lock");
        let mut found = subtle::Choice::from(0);
        let mut index = 0u64;
        for (i, (digest, _)) in entries.iter().enumerate() {
            let same = digest.ct_eq(&candidate);
            index = subtle::ConditionallySelectable::conditional_select(&index, &(i as u64), same);
            found |= same;
        }
        bool::from(found).then(|| entries[index as usize].1.clone())
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
pub async fn require_api_key(State(gate): State<Arc<Gate>>, mut request: Request, next: Next) -> Response {
    let reason = match bearer(&request).map(|token| (token, gate.keys.identify(token))) {
        // Only known keys get a rate-limit bucket: random tokens cost no memory.
        Some((token, Some(caller))) => match gate.admit(token) {
            Ok(()) => {
                request.extensions_mut().insert(caller);
                return next.run(request).await;
            }
            Err(wait) => {
                metrics::counter!(names::HTTP_RATE_LIMITED).increment(1);
                let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
                let body = ErrorBody::new("too many requests for this API key");
                return crate::http::json::too_many_requests(&body, secs);
            }
        },
        Some((_, None)) => "wrong_key",
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
        keys.replace(&["third-key-0123456789"], &ScopedKeys::new());
        assert!(keys.accepts("third-key-0123456789"));
        assert!(!keys.accepts("first-key-0123456789"), "replaced keys stop working");
    }

    #[test]
    fn a_scoped_key_names_its_application_and_sees_only_its_requests() {
        let scoped = ScopedKeys::from([
            ("billing".to_owned(), vec!["billing-key-0123456789".into()]),
            ("shop".to_owned(), vec!["shop-key-0123456789ab".into(), "shop-key-2-0123456789".into()]),
        ]);
        let keys = ApiKeys::with_scopes(&["admin-app-0123456789"], &scoped);
        let app = |key: &str| keys.identify(key).map(|c| c.app.map(|a| a.to_string()));
        assert_eq!(app("admin-app-0123456789"), Some(None));
        assert_eq!(app("billing-key-0123456789"), Some(Some("billing".into())));
        assert_eq!(app("shop-key-2-0123456789"), Some(Some("shop".into())));
        assert_eq!(app("nobody-0123456789abcd"), None);
        let shop = keys.identify("shop-key-0123456789ab").unwrap();
        assert!(shop.sees(Some("shop")) && !shop.sees(Some("billing")) && !shop.sees(None));
        assert!(Caller::default().sees(Some("shop")) && Caller::default().sees(None));
    }
}
