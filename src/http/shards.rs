//! Sharded generators: a call about a number another shard owns is forwarded
//! to that shard's HTTP API with the caller's key, and its answer relayed.
//! `GET`/`DELETE /v1/otp/{request_id}` (no number to hash) ask the other
//! shards in turn when the request is not found here. A forwarded call
//! carries `x-otp-forwarded`, so it is never forwarded again.

use crate::config::{BrokerConfig, GeneratorConfig};
use crate::domain::sharding::shard_of;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::time::Duration;

/// Marks a call forwarded from another shard.
pub const FORWARDED: HeaderName = HeaderName::from_static("x-otp-forwarded");

/// This generator's place among the shards.
#[derive(Debug)]
pub struct Shards {
    mine: u16,
    count: u16,
    urls: Vec<String>,
    client: reqwest::Client,
}

impl Shards {
    /// From `broker.shards`, `generator.shard` and `generator.shard_urls`.
    pub fn new(broker: &BrokerConfig, generator: &GeneratorConfig) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client builds");
        let urls = generator.shard_urls.iter().map(|u| u.trim_end_matches('/').to_owned()).collect();
        Self { mine: generator.shard, count: broker.shards.max(1), urls, client }
    }

    /// The base URL of the shard owning `e164`, if that is not this one (and
    /// this call was not itself forwarded).
    pub fn owner_elsewhere(&self, e164: &str, headers: &HeaderMap) -> Option<&str> {
        if !self.may_forward(headers) {
            return None;
        }
        let owner = shard_of(e164, self.count);
        (owner != self.mine).then(|| self.urls.get(usize::from(owner)).map(String::as_str)).flatten()
    }

    /// The other shards' base URLs (none if this call was forwarded).
    pub fn others(&self, headers: &HeaderMap) -> Vec<&str> {
        if !self.may_forward(headers) {
            return Vec::new();
        }
        let mine = usize::from(self.mine);
        self.urls.iter().enumerate().filter(|(i, _)| *i != mine).map(|(_, u)| u.as_str()).collect()
    }

    /// Sharded, and this call did not come from another shard.
    fn may_forward(&self, headers: &HeaderMap) -> bool {
        self.count > 1 && !headers.contains_key(&FORWARDED)
    }

    /// Sends `method path` with `body` to `base`, with the caller's
    /// `Authorization`, and relays the answer (status, JSON body, `Retry-After`).
    /// A shard that cannot be reached answers 503.
    pub async fn forward(
        &self,
        base: &str,
        method: Method,
        path: &str,
        headers: &HeaderMap,
        body: Option<Vec<u8>>,
    ) -> Response {
        let mut request = self.client.request(method, format!("{base}{path}")).header(FORWARDED, "1");
        if let Some(auth) = headers.get(header::AUTHORIZATION) {
            request = request.header(header::AUTHORIZATION, auth);
        }
        if let Some(body) = body {
            request = request.header(header::CONTENT_TYPE, "application/json").body(body);
        }
        let answer = match request.send().await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::warn!(shard = base, error = %e, "the owning shard did not answer");
                let body = crate::http::bodies::ErrorBody::new("the shard that owns this number is unavailable");
                return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
            }
        };
        let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut relayed = Response::builder().status(status);
        for name in [header::CONTENT_TYPE, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
            if let Some(value) = answer.headers().get(name.as_str()).and_then(|v| v.to_str().ok()) {
                relayed = relayed.header(name, value);
            }
        }
        let bytes = answer.bytes().await.unwrap_or_default();
        relayed.body(Body::from(bytes)).expect("a relayed response builds")
    }
}
