//! What the benchmarks share: start the release `herald` binary on loopback
//! with a fresh data dir, and publish over HTTP from concurrent publishers.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub const KEY: &str = "bench-secret";

pub struct Hub {
    pub child: Child,
    pub base: String,
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The herald binary to measure: this build's, or `HERALD_BIN` (another
/// build, for a before/after on the same machine and load).
fn herald_bin() -> String {
    std::env::var("HERALD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_herald").to_string())
}

pub fn start(data_dir: &std::path::Path, extra: &[&str]) -> Hub {
    let bin = herald_bin();
    let help = Command::new(&bin)
        .args(["serve", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    // Benchmarks open thousands of connections from one address: lift the
    // limits, on builds that have them.
    let unlimited: &[&str] = if help.contains("--max-connections-per-ip") {
        &["--max-connections", "0", "--max-connections-per-ip", "0"]
    } else {
        &[]
    };
    let mut child = Command::new(&bin)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--jwt-key",
            KEY,
            "--data-dir",
            data_dir.to_str().expect("utf-8 path"),
            "--history-size",
            "200000",
        ])
        .args(unlimited)
        .args(extra)
        .env("HERALD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start herald");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let base = loop {
        let line = lines.next().expect("herald exited").expect("stdout");
        if let Some(a) = line.strip_prefix("listening on ") {
            break a.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Hub { child, base }
}

/// Publish `total` updates from `concurrency` tasks; returns updates/s.
pub async fn publish_load(base: &str, total: usize, concurrency: usize, prefix: &str) -> f64 {
    let token = herald::auth::mint_hs256(KEY, &["*".into()], &[], None, Some(3600)).expect("token");
    let hub = format!("{base}/.well-known/mercure");
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (hub, token, next) = (hub.clone(), token.clone(), next.clone());
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                let body = format!(
                    "topic=https%3A%2F%2Fbench.example%2Fitems%2F{}&id={prefix}-{i}&data=%7B%22n%22%3A{i}%2C%22status%22%3A%22UNREAD%22%2C%22body%22%3A%22your+export+is+ready%22%7D",
                    i % 100
                );
                let resp = client
                    .post(&hub)
                    .bearer_auth(&token)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body)
                    .send()
                    .await
                    .expect("publish");
                assert_eq!(resp.status(), 200, "publish refused");
            }
        }));
    }
    for t in tasks {
        t.await.expect("publisher");
    }
    total as f64 / started.elapsed().as_secs_f64()
}
