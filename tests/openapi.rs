//! The served OpenAPI document (`/openapi.json`) against a running generator:
//! every response the routes give — successes and refusals — must be one the
//! document declares, with a body valid under the declared schema, and every
//! documented operation must be exercised here.

mod common;

use common::{API_KEY, TestEnv};
use serde_json::{Value, json};
use std::collections::BTreeSet;

const ADMIN_KEY: &str = "admin-key-0123456789abcdef";

/// One exchange with the server and what the document says of it.
struct Conformance {
    env: TestEnv,
    doc: Value,
    /// `(METHOD path-template)` pairs exercised.
    seen: BTreeSet<(String, String)>,
}

enum Key {
    Api,
    Admin,
    None,
}

impl Conformance {
    async fn call(
        &mut self,
        method: reqwest::Method,
        template: &str,
        path: &str,
        key: Key,
        body: Option<Body>,
    ) -> (u16, Value) {
        let mut request = self.env.http.request(method.clone(), self.env.url(path));
        request = match key {
            Key::Api => request.bearer_auth(API_KEY),
            Key::Admin => request.bearer_auth(ADMIN_KEY),
            Key::None => request,
        };
        request = match body {
            Some(Body::Json(v)) => request.json(&v),
            Some(Body::Raw(content_type, bytes)) => request.header("content-type", content_type).body(bytes),
            None => request,
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type =
            response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let retry_after = response.headers().get("retry-after").is_some();
        let text = response.text().await.unwrap();
        let op = method.as_str().to_lowercase();
        self.seen.insert((op.clone(), template.to_owned()));
        let declared = &self.doc["paths"][template][&op]["responses"][status.to_string()];
        // A shared response (`#/components/responses/…`) stands for its definition.
        let declared = match declared["$ref"].as_str().and_then(|r| r.strip_prefix('#')) {
            Some(pointer) => self.doc.pointer(pointer).unwrap_or_else(|| panic!("{template}: dangling $ref {pointer}")),
            None => declared,
        };
        assert!(declared.is_object(), "{method} {path} answered {status}, which the document does not declare: {text}");
        let (media, spec) = declared["content"].as_object().and_then(|c| c.iter().next()).unwrap_or_else(|| {
            panic!("{method} {path} {status}: the document declares no content");
        });
        assert!(content_type.starts_with(media.as_str()), "{method} {path} {status}: {content_type} is not {media}");
        if status == 429 {
            // Waiting helps (a limit) unless the code itself is dead (`max_attempts_reached`).
            let dead_code = text.contains("max_attempts_reached");
            assert!(retry_after || dead_code, "{method} {path} 429 without Retry-After: {text}");
            assert!(declared["headers"]["Retry-After"].is_object(), "{template} 429 does not document Retry-After");
        }
        if media != "application/json" {
            return (status, Value::String(text));
        }
        let body: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
        let errors = validate(&self.doc, &spec["schema"], &body);
        assert!(errors.is_empty(), "{method} {path} {status}: body {body} breaks the schema: {errors:#?}");
        (status, body)
    }
}

enum Body {
    Json(Value),
    Raw(&'static str, Vec<u8>),
}

/// Validation errors of `instance` under `schema`, whose `$ref`s point into the document's components.
fn validate(doc: &Value, schema: &Value, instance: &Value) -> Vec<String> {
    let mut root = schema.clone();
    root["components"] = doc["components"].clone();
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("the document's schema does not compile: {e}"));
    validator.iter_errors(instance).map(|e| format!("{} at {}", e, e.instance_path())).collect()
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

#[tokio::test]
async fn every_response_matches_the_served_openapi_document() {
    let env = TestEnv::start_with(|config, _| {
        config.http.admin_api_keys = vec![ADMIN_KEY.into()];
        config.generator.max_attempts = 2;
    })
    .await;
    let response = env.http.get(env.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let doc: Value = response.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc, serde_json::from_str::<Value>(otp_pipeline::http::openapi::json()).unwrap());
    let mut c = Conformance { env, doc, seen: BTreeSet::new() };
    use reqwest::Method as M;

    // The schemas are not vacuous: a wrong body fails them.
    assert!(!validate(&c.doc, &schema_ref("VerifyResult"), &json!({"status": "maybe"})).is_empty());
    assert!(
        !validate(&c.doc, &schema_ref("RawRequest"), &json!({"request_id": "a", "phone": "+1", "x": 1})).is_empty()
    );
    assert!(!validate(&c.doc, &schema_ref("RequestView"), &json!({"request_id": "a"})).is_empty());

    // Operations.
    c.call(M::GET, "/healthz", "/healthz", Key::None, None).await;
    assert_eq!(c.call(M::GET, "/readyz", "/readyz", Key::None, None).await.0, 200);
    let (_, metrics) = c.call(M::GET, "/metrics", "/metrics", Key::None, None).await;
    assert!(metrics.as_str().unwrap().contains("otp_build_info"));

    // POST /v1/otp: accepted, refused for each reason the document lists, and HTTP-level refusals.
    let phone = "+14155550141";
    let ok = json!({"request_id": "oa-1", "phone": phone});
    assert_eq!(c.call(M::POST, "/v1/otp", "/v1/otp", Key::Api, Some(Body::Json(ok.clone()))).await.0, 202);
    // The consumer issues it (and counts the send) shortly after the 202.
    for _ in 0..100 {
        if c.env.get("/v1/otp/oa-1").await.0 == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let again = json!({"request_id": "oa-2", "phone": phone});
    let (status, body) = c.call(M::POST, "/v1/otp", "/v1/otp", Key::Api, Some(Body::Json(again))).await;
    assert_eq!((status, body["reason"].as_str()), (429, Some("rate_limited")), "resend cooldown: {body}");
    let bad_phone = json!({"request_id": "oa-3", "phone": "+1415"});
    assert_eq!(c.call(M::POST, "/v1/otp", "/v1/otp", Key::Api, Some(Body::Json(bad_phone))).await.0, 400);
    let unknown_field = json!({"request_id": "oa-4", "phone": "+14155550142", "colour": "red"});
    assert_eq!(c.call(M::POST, "/v1/otp", "/v1/otp", Key::Api, Some(Body::Json(unknown_field))).await.0, 400);
    let not_json = Body::Raw("application/json", b"{not json".to_vec());
    assert_eq!(c.call(M::POST, "/v1/otp", "/v1/otp", Key::Api, Some(not_json)).await.0, 400);
    let text = Body::Raw("text/plain", b"hello".to_vec());
    assert_eq!(c.call(M::POST, "/v1/otp", "/v1/otp", Key::Api, Some(text)).await.0, 415);
    // Just over http.max_body_bytes (16 KiB): small enough that the client finishes sending
    // before the 413 closes the connection.
    let huge = Body::Raw("application/json", vec![b' '; 20 * 1024]);
    assert_eq!(c.call(M::POST, "/v1/otp", "/v1/otp", Key::Api, Some(huge)).await.0, 413);
    assert_eq!(c.call(M::POST, "/v1/otp", "/v1/otp", Key::None, Some(Body::Json(ok))).await.0, 401);

    // GET /v1/otp/{request_id}.
    let code = c.env.code_for("oa-1").await;
    let (status, view) = c.call(M::GET, "/v1/otp/{request_id}", "/v1/otp/oa-1", Key::Api, None).await;
    assert_eq!((status, view["phone"].as_str().unwrap().contains("555")), (200, false), "masked: {view}");
    assert_eq!(c.call(M::GET, "/v1/otp/{request_id}", "/v1/otp/nope", Key::Api, None).await.0, 404);

    // POST /v1/verify: every outcome.
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let verify = |code: &str| Some(Body::Json(json!({"phone": phone, "code": code})));
    let (status, body) = c.call(M::POST, "/v1/verify", "/v1/verify", Key::Api, verify(wrong)).await;
    assert_eq!((status, body["attempts_left"].as_u64()), (422, Some(1)));
    assert_eq!(c.call(M::POST, "/v1/verify", "/v1/verify", Key::Api, verify(&code)).await.0, 200);
    assert_eq!(c.call(M::POST, "/v1/verify", "/v1/verify", Key::Api, verify(&code)).await.0, 404);
    assert_eq!(c.call(M::POST, "/v1/verify", "/v1/verify", Key::Api, verify("12")).await.0, 400);
    let bad = Some(Body::Json(json!({"phone": "+1", "code": "123456"})));
    assert_eq!(c.call(M::POST, "/v1/verify", "/v1/verify", Key::Api, bad).await.0, 400);
    let bad_field = Some(Body::Json(json!({"phone": phone, "code": "123456", "extra": true})));
    assert_eq!(c.call(M::POST, "/v1/verify", "/v1/verify", Key::Api, bad_field).await.0, 400);
    assert_eq!(c.call(M::POST, "/v1/verify", "/v1/verify", Key::None, verify(&code)).await.0, 401);

    // A second number: wrong codes until the code dies (429), then expiry (410).
    let phone2 = "+14155550143";
    let second = json!({"request_id": "oa-5", "phone": phone2});
    assert_eq!(c.call(M::POST, "/v1/otp", "/v1/otp", Key::Api, Some(Body::Json(second))).await.0, 202);
    let code2 = c.env.code_for("oa-5").await;
    let wrong2 = if code2 == "000000" { "111111" } else { "000000" };
    let verify2 = |code: &str| Some(Body::Json(json!({"phone": phone2, "code": code})));
    assert_eq!(c.call(M::POST, "/v1/verify", "/v1/verify", Key::Api, verify2(wrong2)).await.0, 422);
    let (status, body) = c.call(M::POST, "/v1/verify", "/v1/verify", Key::Api, verify2(wrong2)).await;
    assert_eq!((status, body["status"].as_str()), (429, Some("max_attempts_reached")));
    let phone3 = "+14155550144";
    let third = json!({"request_id": "oa-6", "phone": phone3});
    assert_eq!(c.call(M::POST, "/v1/otp", "/v1/otp", Key::Api, Some(Body::Json(third))).await.0, 202);
    let code3 = c.env.code_for("oa-6").await;
    c.env.clock.advance(time::Duration::seconds(301));
    let verify3 = Some(Body::Json(json!({"phone": phone3, "code": code3})));
    assert_eq!(c.call(M::POST, "/v1/verify", "/v1/verify", Key::Api, verify3).await.0, 410);

    // DELETE /v1/otp/{request_id}: canceled, already final, unknown.
    let fourth = json!({"request_id": "oa-7", "phone": "+14155550145"});
    assert_eq!(c.call(M::POST, "/v1/otp", "/v1/otp", Key::Api, Some(Body::Json(fourth))).await.0, 202);
    common::eventually(|| async { (c.env.get("/v1/otp/oa-7").await.0 == 200).then_some(()) })
        .await
        .expect("oa-7 is stored");
    let (status, body) = c.call(M::DELETE, "/v1/otp/{request_id}", "/v1/otp/oa-7", Key::Api, None).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("canceled")));
    let (status, body) = c.call(M::DELETE, "/v1/otp/{request_id}", "/v1/otp/oa-1", Key::Api, None).await;
    assert_eq!((status, body["status"].as_str()), (409, Some("verified")));
    assert_eq!(c.call(M::DELETE, "/v1/otp/{request_id}", "/v1/otp/nope", Key::Api, None).await.0, 404);

    // Operator routes.
    let (status, body) = c.call(M::GET, "/v1/admin/quarantines", "/v1/admin/quarantines", Key::Admin, None).await;
    assert_eq!((status, body["quarantines"].as_array().map(Vec::len)), (200, Some(0)));
    assert_eq!(c.call(M::GET, "/v1/admin/quarantines", "/v1/admin/quarantines", Key::Api, None).await.0, 401);
    let lift = "/v1/admin/quarantines/{prefix}";
    assert_eq!(c.call(M::DELETE, lift, "/v1/admin/quarantines/1415", Key::Admin, None).await.0, 404);
    assert_eq!(c.call(M::DELETE, lift, "/v1/admin/quarantines/abc", Key::Admin, None).await.0, 400);

    // Every documented operation was exercised.
    let documented: BTreeSet<(String, String)> = c.doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| ops.as_object().unwrap().keys().map(move |op| (op.clone(), path.clone())))
        .collect();
    let missed: Vec<_> = documented.difference(&c.seen).collect();
    assert!(missed.is_empty(), "documented but not exercised: {missed:?}");
    c.env.teardown().await;
}

#[tokio::test]
async fn the_key_rate_limit_answers_as_documented() {
    let env = TestEnv::start_with(|config, _| {
        config.http.rate_per_key_per_sec = 1;
        config.http.burst_per_key = 1;
    })
    .await;
    let doc: Value = serde_json::from_str(otp_pipeline::http::openapi::json()).unwrap();
    let mut c = Conformance { env, doc, seen: BTreeSet::new() };
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(c.call(reqwest::Method::GET, "/v1/otp/{request_id}", "/v1/otp/x", Key::Api, None).await.0);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    c.env.teardown().await;
}
