//! The OpenAPI 3.1 document of the generator's HTTP API, generated from the
//! handlers' annotations and the body types, and served at `/openapi.json`.

use crate::http::{admin, bodies, ops, otp, verify};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// The API's description; `ApiDoc::openapi()` builds it.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "otp-pipeline",
        description = "Self-hosted one-time passwords over SMS. Applications request a code (`POST /v1/otp`, or \
            the AMQP contract in docs/asyncapi.yaml) and check what the user typed (`POST /v1/verify`). Every \
            `/v1` route takes `Authorization: Bearer <key>` (`http.api_keys`; `/v1/admin` takes \
            `http.admin_api_keys`). Errors answer `{\"error\": …}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        otp::create,
        otp::status,
        otp::cancel,
        verify::verify,
        admin::quarantines,
        admin::lift,
        ops::metrics,
        ops::healthz,
        ops::readyz
    ),
    components(
        schemas(bodies::NotFoundStatus, bodies::HealthStatus, bodies::ReadyStatus, bodies::VerifyStatus),
        responses(bodies::refusals::Unauthorized, bodies::refusals::KeyRateLimited, bodies::refusals::Unavailable)
    ),
    modifiers(&BearerKeys),
    tags(
        (name = "otp", description = "Request, inspect and cancel codes"),
        (name = "verify", description = "Check a code"),
        (name = "admin", description = "Operators: SMS-pumping quarantines"),
        (name = "ops", description = "Metrics, liveness, readiness (no authentication)")
    )
)]
pub struct ApiDoc;

/// Declares the two bearer-key schemes the routes refer to.
struct BearerKeys;

impl utoipa::Modify for BearerKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, what) in [
            ("api_key", "An application key (`http.api_keys`)"),
            ("admin_key", "An operator key (`http.admin_api_keys`)"),
        ] {
            let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(what)).build();
            components.add_security_scheme(name, SecurityScheme::Http(scheme));
        }
    }
}

/// The document as JSON, built once.
pub fn json() -> &'static str {
    static JSON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    JSON.get_or_init(|| ApiDoc::openapi().to_pretty_json().expect("the OpenAPI document serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_openapi_3_1_with_every_route() {
        let doc: serde_json::Value = serde_json::from_str(json()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths: Vec<&str> = doc["paths"].as_object().unwrap().keys().map(String::as_str).collect();
        for route in ["/v1/otp", "/v1/otp/{request_id}", "/v1/verify", "/v1/admin/quarantines", "/readyz", "/metrics"] {
            assert!(paths.contains(&route), "{route} missing from {paths:?}");
        }
    }
}
