//! `otp-pipeline probe URL`: an HTTP health check for containers, whose slim
//! image has no curl. One GET with a timeout; healthy on any 2xx.

use std::time::Duration;

/// Longest part of an answer's body quoted in the reason.
const MAX_QUOTED: usize = 200;

/// GETs `url` (no proxy, no redirects) within `timeout`. `Ok` on a 2xx, `Err`
/// otherwise; either way a one-line reason (status, and the start of the body
/// of a refusal, such as `/readyz`'s `{"broker","store"}`).
pub async fn probe(url: &str, timeout: Duration) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("{url}: {e}"))?;
    let response =
        client.get(url).send().await.map_err(|e| format!("{url}: {}", one_line(&error_chain(&e.without_url()))))?;
    let status = response.status();
    if status.is_success() {
        return Ok(format!("{url}: {status}"));
    }
    let body = response.text().await.unwrap_or_default();
    let mut quoted: String = one_line(&body).chars().take(MAX_QUOTED).collect();
    if !quoted.is_empty() {
        quoted.insert_str(0, ": ");
    }
    Err(format!("{url}: {status}{quoted}"))
}

/// The error and its causes (reqwest's own message says only "error sending request").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::get;

    async fn serve(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn healthy_on_2xx_only_with_the_reason_on_one_line() {
        let base = serve(
            Router::new()
                .route("/ok", get(|| async { "ready" }))
                .route("/down", get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "{\"broker\":\n \"down\"}") }))
                .route("/moved", get(|| async { (StatusCode::FOUND, [("location", "/ok")]) })),
        )
        .await;
        let timeout = Duration::from_secs(2);
        assert_eq!(probe(&format!("{base}/ok"), timeout).await.unwrap(), format!("{base}/ok: 200 OK"));
        let down = probe(&format!("{base}/down"), timeout).await.unwrap_err();
        assert_eq!(down, format!("{base}/down: 503 Service Unavailable: {{\"broker\": \"down\"}}"));
        assert!(
            probe(&format!("{base}/moved"), timeout).await.unwrap_err().contains("302"),
            "redirects are not followed"
        );
    }

    #[tokio::test]
    async fn unreachable_and_slow_servers_fail_within_the_timeout() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let refused = probe(&format!("http://127.0.0.1:{port}/readyz"), Duration::from_secs(2)).await.unwrap_err();
        assert!(!refused.contains('\n') && refused.contains("refused"), "{refused}");
        let slow = serve(Router::new().route(
            "/readyz",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        ))
        .await;
        let started = std::time::Instant::now();
        assert!(probe(&format!("{slow}/readyz"), Duration::from_millis(200)).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(probe("not a url", Duration::from_secs(1)).await.is_err());
    }
}
