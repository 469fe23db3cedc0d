//! The HTTP edge: accepts connections for a router with what a port facing
//! anonymous clients needs — a deadline for each request's headers (which
//! also closes idle keep-alive connections), a cap on open connections (at
//! the cap, the oldest connection not serving a request makes room, so slow
//! or idle clients cannot lock out a health check), a response-time budget
//! per request, URI and header size limits, JSON errors for all of these, and
//! a shutdown that finishes within a bound.
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
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
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
    /// Connections open at once. At the cap, a new connection closes the
    /// oldest one that is not serving a request (waiting for headers, or
    /// idle); if every one is, the new connection is closed at once.
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
    let open = Arc::new(Open::new(limits.max_connections));
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
        let Some(slot) = open.admit() else {
            tracing::debug!(max = limits.max_connections, "every HTTP connection is busy; closing a new one");
            drop(stream);
            continue;
        };
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
        let service = TowerToHyperService::new(router.clone());
        let busy = slot.clone();
        let service = hyper::service::service_fn(move |request| {
            let serving = Serving::start(&busy);
            let response = hyper::service::Service::call(&service, request);
            async move {
                let response = response.await;
                drop(serving);
                response
            }
        });
        let connection = connections.watch(builder.serve_connection(TokioIo::new(stream), service));
        let open = open.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = connection => {}
                // Evicted to make room: dropping the connection closes it.
                () = slot.close.cancelled() => {}
            }
            open.remove(&slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.shutdown()).await.is_err() {
        tracing::warn!("HTTP connections still open after the shutdown grace; closing them");
    }
    Ok(())
}

/// One open connection: how many requests it is serving now, and how to
/// close it.
struct Slot {
    id: u64,
    serving: AtomicUsize,
    close: CancellationToken,
}

/// Marks a connection as serving a request while alive.
struct Serving(Arc<Slot>);

impl Serving {
    fn start(slot: &Arc<Slot>) -> Self {
        slot.serving.fetch_add(1, Ordering::SeqCst);
        Self(slot.clone())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.serving.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The open connections, oldest first, at most `max`.
struct Open {
    max: usize,
    next_id: AtomicUsize,
    slots: Mutex<VecDeque<Arc<Slot>>>,
}

impl Open {
    fn new(max: usize) -> Self {
        Self { max: max.max(1), next_id: AtomicUsize::new(0), slots: Mutex::new(VecDeque::new()) }
    }

    /// A slot for a new connection: at the cap, the oldest connection not
    /// serving a request is closed to make room; `None` if all are serving.
    fn admit(&self) -> Option<Arc<Slot>> {
        let mut slots = self.slots.lock().expect("connections lock");
        if slots.len() >= self.max {
            let idle = slots.iter().position(|s| s.serving.load(Ordering::SeqCst) == 0)?;
            let evicted = slots.remove(idle).expect("found above");
            evicted.close.cancel();
            tracing::debug!(max = self.max, "HTTP connection cap reached; closed the oldest idle connection");
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) as u64;
        let slot = Arc::new(Slot { id, serving: AtomicUsize::new(0), close: CancellationToken::new() });
        slots.push_back(slot.clone());
        Some(slot)
    }

    fn remove(&self, slot: &Slot) {
        let mut slots = self.slots.lock().expect("connections lock");
        if let Some(at) = slots.iter().position(|s| s.id == slot.id) {
            slots.remove(at);
        }
    }
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

    #[test]
    fn at_the_cap_the_oldest_idle_connection_makes_room_and_busy_ones_never_do() {
        let open = Open::new(2);
        let (first, second) = (open.admit().unwrap(), open.admit().unwrap());
        let serving = Serving::start(&first);
        let third = open.admit().expect("room made");
        assert!(second.close.is_cancelled() && !first.close.is_cancelled(), "the idle one went, not the busy one");
        let _also = Serving::start(&third);
        assert!(open.admit().is_none(), "every connection serving: the new one is refused");
        drop(serving);
        assert!(open.admit().is_some() && first.close.is_cancelled());
    }
}
