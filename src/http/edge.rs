//! The HTTP edge: accepts connections for a router with what a port facing
//! anonymous clients needs — a deadline for each request's headers (which
//! also closes idle keep-alive connections), a cap on open connections, a
//! response-time budget per request, URI and header size limits, JSON errors
//! for all of these, and a shutdown that finishes within a bound.
//!
//! It owns sockets and connection lifetimes; it knows no route.

use crate::http::json::ApiError;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Longest request URI (path and query) answered; longer gets 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// Most header bytes a request may carry; more gets 431. (Far beyond that,
/// hyper itself closes the connection before any route runs.)
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// How long open requests get to finish once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What one HTTP port allows a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeLimits {
    /// Time to send a request's headers; an idle keep-alive connection is
    /// closed after as long.
    pub header_timeout: Duration,
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Time a request may take from its headers to its response; past it the
    /// client gets 503 (the work it started may still finish).
    pub request_timeout: Duration,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        Self { header_timeout: Duration::from_secs(10), max_connections: 512, request_timeout: Duration::from_secs(10) }
    }
}

/// Serves `router` on `listener` until `shutdown`, then lets open requests
/// finish (at most [`SHUTDOWN_GRACE`]).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    limits: EdgeLimits,
) -> std::io::Result<()> {
    let router = router.layer(axum::middleware::from_fn_with_state(limits.request_timeout, guard));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause, do not spin.
                    tracing::warn!(error = %e, "could not accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(max = limits.max_connections, "HTTP connection cap reached; closing a new connection");
            drop(stream);
            continue;
        };
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
        let connection = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router.clone()));
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.shutdown()).await.is_err() {
        tracing::warn!("HTTP connections still open after the shutdown grace; closing them");
    }
    Ok(())
}

/// Per request: URI and header size limits, then the response-time budget.
async fn guard(State(budget): State<Duration>, request: Request, next: Next) -> Response {
    let uri = request.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri > MAX_URI_BYTES {
        let message = format!("the request URI is longer than {MAX_URI_BYTES} bytes");
        return ApiError { status: StatusCode::URI_TOO_LONG, message }.into_response();
    }
    let headers: usize = request.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if headers > MAX_HEADER_BYTES {
        let message = format!("the request headers are larger than {MAX_HEADER_BYTES} bytes");
        return ApiError { status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, message }.into_response();
    }
    match tokio::time::timeout(budget, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            ApiError::unavailable(format!("no answer within {} ms; try again", budget.as_millis())).into_response()
        }
    }
}

/// 404 for a path no route serves, as `{"error": …}`.
pub async fn no_route() -> Response {
    ApiError { status: StatusCode::NOT_FOUND, message: "no such route".into() }.into_response()
}

/// 405 for a method a route does not take, as `{"error": …}`.
pub async fn wrong_method() -> Response {
    let message = "method not allowed on this route".into();
    ApiError { status: StatusCode::METHOD_NOT_ALLOWED, message }.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    #[tokio::test]
    async fn a_request_over_its_budget_gets_503_as_json_and_shutdown_is_bounded() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
        let limits = EdgeLimits { request_timeout: Duration::from_millis(100), ..EdgeLimits::default() };
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, router, stop.clone(), limits));
        let response = reqwest::get(format!("http://{addr}/slow")).await.unwrap();
        assert_eq!(response.status(), 503);
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("100 ms"));
        stop.cancel();
        tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), server).await.unwrap().unwrap().unwrap();
    }
}
