//! The HTTP port faces anonymous clients: a slow or idle client is cut off
//! after the header timeout, at the connection cap slow clients make room for
//! real requests (a health check gets through a flood), a slow request gets 503
//! within its budget, and every error body — 404, 405, 414, 431 — is JSON.
//! Bounded loops and times only; tight limits set through the real config.

mod common;

use common::TestEnv;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEADER_TIMEOUT_MS: u64 = 400;
const MAX_CONNECTIONS: usize = 16;

async fn start() -> TestEnv {
    TestEnv::start_with(|config, _| {
        config.http.header_timeout_ms = HEADER_TIMEOUT_MS;
        config.http.max_connections = MAX_CONNECTIONS;
    })
    .await
}

/// Reads until the server closes the connection, at most `limit`; returns
/// what came and whether it closed in time.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (seen, true),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => return (seen, false),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_headers_and_idle_connections_are_closed_after_the_header_timeout() {
    let env = start().await;
    // Slowloris: headers begun, never finished.
    let mut slow = TcpStream::connect(env.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(closed, "a client that never finishes its headers is cut off");
    assert!(started.elapsed() >= Duration::from_millis(HEADER_TIMEOUT_MS / 2));
    // Keep-alive: one request answered, then idle.
    let mut idle = TcpStream::connect(env.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let (answer, closed) = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"), "answered first");
    assert!(closed, "an idle keep-alive connection is closed");
    env.teardown().await;
}

/// A slowloris flood fills the cap: a health check still gets through at
/// once, because the oldest connection that is not serving a request makes
/// room; open connections never exceed the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_a_slow_client_makes_room_for_a_real_request() {
    let env = start().await;
    let mut held = Vec::new();
    for _ in 0..MAX_CONNECTIONS * 3 {
        let mut slow = TcpStream::connect(env.addr).await.unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        held.push(slow);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut probe = TcpStream::connect(env.addr).await.unwrap();
    probe.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let (answer, _) = read_until_closed(&mut probe, Duration::from_secs(2)).await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"), "the probe is answered during the flood");
    // Of the slow ones, at most the cap are still open (the oldest were closed).
    let mut open = 0;
    for slow in &mut held {
        let mut byte = [0u8; 1];
        if tokio::time::timeout(Duration::from_millis(5), slow.read(&mut byte)).await.is_err() {
            open += 1;
        }
    }
    assert!(open < MAX_CONNECTIONS, "{open} slow connections still open, cap {MAX_CONNECTIONS}");
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_of_the_edge_is_json() {
    let env = start().await;
    let check = |status: u16, response: reqwest::Response| async move {
        assert_eq!(response.status().as_u16(), status);
        let body: serde_json::Value = response.json().await.expect("a JSON body");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{status}: {body}");
    };
    check(404, env.http.get(env.url("/no/such/route")).send().await.unwrap()).await;
    check(405, env.http.put(env.url("/healthz")).send().await.unwrap()).await;
    let long = format!("/v1/otp/{}", "a".repeat(otp_pipeline::http::MAX_URI_BYTES + 1));
    check(414, env.http.get(env.url(&long)).send().await.unwrap()).await;
    let big = "b".repeat(otp_pipeline::http::MAX_HEADER_BYTES + 1);
    check(431, env.http.get(env.url("/healthz")).header("x-big", big).send().await.unwrap()).await;
    env.teardown().await;
}
