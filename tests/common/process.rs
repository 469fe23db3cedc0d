//! Real processes of the production binary: spawned with their own
//! environment, their logs captured, stopped with SIGTERM.

use super::{API_KEY, amqp_url};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Process {
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Process {
    pub fn spawn(command: &str, env: &[(&str, String)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_otp-pipeline"));
        cmd.arg(command).stdout(Stdio::piped()).stderr(Stdio::piped()).env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn otp-pipeline");
        let log = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        Self { child, log }
    }

    pub async fn wait_for_line(&self, needle: &str) -> String {
        super::eventually(|| async { self.log.lock().unwrap().iter().find(|l| l.contains(needle)).cloned() })
            .await
            .unwrap_or_else(|| panic!("no log line with {needle:?}; log: {:#?}", self.log.lock().unwrap()))
    }

    /// Spawns `command` with stdout closed (its reader gone, as when a
    /// `| tee` ends with Ctrl-C); stderr is captured.
    pub fn spawn_with_stdout_closed(command: &str, env: &[(&str, String)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_otp-pipeline"));
        cmd.arg(command).stdout(Stdio::piped()).stderr(Stdio::piped()).env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn otp-pipeline");
        drop(child.stdout.take()); // the read end: writes now fail with EPIPE
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        Self { child, log }
    }

    /// Waits (at most `limit`) for the process to exit by itself; its status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(50));
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends `signal` (e.g. "-TERM").
    pub fn signal(&self, signal: &str) {
        Command::new("kill").arg(signal).arg(self.child.id().to_string()).status().unwrap();
    }

    pub fn terminate(mut self) -> Vec<String> {
        Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "exit status {status}; log: {:#?}", self.log.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
        self.log.lock().unwrap().clone()
    }
}

/// The environment every spawned process gets: the test broker, a private
/// prefix, its own data dir, a free HTTP port.
pub fn base_env(prefix: &str, data_dir: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        ("OTP_BROKER__URL", amqp_url()),
        ("OTP_BROKER__PREFIX", prefix.to_owned()),
        ("OTP_BROKER__QUEUE_EXPIRES_MS", "300000".into()),
        ("OTP_STORE__DATA_DIR", data_dir.display().to_string()),
        ("OTP_HTTP__LISTEN", "127.0.0.1:0".into()),
    ]
}

/// `base_env` plus an API key, a free sender port and the webhook carrier at `carrier`.
pub fn pipeline_env(prefix: &str, data_dir: &std::path::Path, carrier: &str) -> Vec<(&'static str, String)> {
    let mut env = base_env(prefix, data_dir);
    env.extend([
        ("OTP_HTTP__API_KEYS", format!("[{API_KEY}]")),
        ("OTP_SENDER__LISTEN", "127.0.0.1:0".into()),
        ("OTP_ROUTING__DEFAULT", "[webhook]".into()),
        ("OTP_CARRIERS__WEBHOOK__URL", format!("{carrier}/sms")),
    ]);
    env
}

pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flat_map(|e| {
            let path = e.unwrap().path();
            if path.is_dir() { files_under(&path) } else { vec![path] }
        })
        .collect()
}
