//! The generic webhook carrier: POSTs the contract's JSON to a URL.
//!
//! 2xx is accepted; 429 and 5xx are retryable (honouring `Retry-After`);
//! any other status is permanent. Network errors and timeouts are retryable.

use crate::broker::BoxFuture;
use crate::carriers::Reply;
use crate::carriers::{Accepted, Carrier, CarrierConfigError, CarrierError, CarrierKind, Sms, exchange};
use crate::config::WebhookConfig;
use reqwest::StatusCode;
use serde::Serialize;

const KIND: CarrierKind = CarrierKind::Webhook;
/// This carrier's name, as routes, metrics and receipts say it.
const NAME: &str = KIND.as_str();

/// Posts `{"to","text","request_id","delivery_id"}` to a configured URL.
#[derive(Debug, Clone)]
pub struct Webhook {
    client: reqwest::Client,
    url: reqwest::Url,
    token: Option<crate::config::Secret>,
}

#[derive(Serialize)]
struct Body<'a> {
    to: &'a str,
    text: &'a str,
    request_id: &'a str,
    delivery_id: &'a str,
}

#[derive(serde::Deserialize)]
struct Answer {
    #[serde(alias = "message_id", alias = "sid")]
    id: Option<String>,
}

impl Webhook {
    /// Builds the carrier; the URL must be http(s).
    pub fn new(config: &WebhookConfig) -> Result<Self, CarrierConfigError> {
        let url =
            reqwest::Url::parse(&config.url).map_err(|e| CarrierConfigError::Invalid(NAME, format!("url: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(CarrierConfigError::Invalid(NAME, "url must be http or https".into()));
        }
        let client = crate::carriers::http_client(NAME, config.timeout_ms)?;
        Ok(Self { client, url, token: config.token.clone() })
    }
}

/// Classifies an answer per the contract: any 2xx is accepted (an `id` in a
/// JSON answer is kept); 429 and 5xx are retryable; other 4xx permanent.
pub fn classify(reply: &Reply) -> Result<Accepted, CarrierError> {
    let (status, retry_after) = (reply.status, reply.retry_after);
    if status.is_success() {
        let id = serde_json::from_slice::<Answer>(&reply.body).ok().and_then(|a| a.id);
        Ok(Accepted { carrier_message_id: id })
    } else if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        Err(CarrierError::Retryable { reason: format!("HTTP {status}"), retry_after })
    } else {
        Err(CarrierError::Permanent { reason: format!("HTTP {status}") })
    }
}

impl Carrier for Webhook {
    fn kind(&self) -> CarrierKind {
        KIND
    }

    fn send<'a>(&'a self, sms: &'a Sms) -> BoxFuture<'a, Result<Accepted, CarrierError>> {
        Box::pin(async move {
            let body =
                Body { to: &sms.to, text: &sms.text, request_id: &sms.request_id, delivery_id: &sms.delivery_id };
            let mut request = self.client.post(self.url.clone()).json(&body);
            if let Some(token) = &self.token {
                request = request.bearer_auth(token.expose());
            }
            classify(&exchange(request).await?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_per_the_contract() {
        assert!(classify(&Reply::new(StatusCode::OK, b"")).is_ok());
        assert!(classify(&Reply::new(StatusCode::ACCEPTED, b"")).is_ok());
        for s in [429, 500, 502, 503, 504] {
            assert!(classify(&Reply::new(StatusCode::from_u16(s).unwrap(), b"")).unwrap_err().is_retryable(), "{s}");
        }
        for s in [400, 401, 403, 404, 422] {
            assert!(!classify(&Reply::new(StatusCode::from_u16(s).unwrap(), b"")).unwrap_err().is_retryable(), "{s}");
        }
    }

    #[test]
    fn bad_urls_are_refused() {
        let c = WebhookConfig { url: "ftp://x".into(), ..Default::default() };
        assert!(Webhook::new(&c).is_err());
    }
}
