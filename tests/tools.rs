//! The tools live beside the product: the production binary lists only
//! product commands, and `otp-fake-carrier` and `otp-bench` (workspace
//! crates, built by `cargo test --workspace`) work as the README says.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A workspace binary beside this test's own (`target/<profile>/`).
fn tool(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(std::path::Path::parent).unwrap().join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --workspace` (scripts/test does)", path.display());
    path
}

#[test]
fn the_production_binary_lists_only_product_commands() {
    let help = Command::new(env!("CARGO_BIN_EXE_otp-pipeline")).arg("--help").output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(commands, ["all-in-one", "generator", "sender", "publish", "probe", "help"], "{help}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_carrier_serves_its_control_route_and_stops_on_sigterm() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(tool("otp-fake-carrier"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--latency-ms", "5"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/control");
    let control =
        common::eventually(|| async { reqwest::get(&url).await.ok()?.json::<serde_json::Value>().await.ok() })
            .await
            .expect("GET /control answers");
    assert_eq!(control["latency_ms"], 5);
    let probe = Command::new(tool("otp-fake-carrier")).args(["--probe", &url]).output().unwrap();
    assert!(probe.status.success(), "--probe is its health check");
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "otp-fake-carrier ignores SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_runs_an_in_process_pipeline_and_prints_its_table() {
    common::require_rabbitmq().await;
    let out = Command::new(tool("otp-bench"))
        .args(["--requests", "40", "--no-relay", "--verify-concurrency", "4"])
        .env("OTP_BROKER__URL", common::amqp_url())
        .env("OTP_LOG__LEVEL", "warn")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(table.contains("| delivered (event.sent) | 40 (100.00 %)"), "{table}");
}
