//! Scenario 4: a live dashboard on Herald.
//!
//! Every second the app reads this machine's CPU, memory and network
//! counters from `/proc`, moves a simulated price one tick, and publishes
//! all of it, with the lines its own log gained since the last second, as
//! *one* update on the public topic `https://example.app/dashboard`. Every
//! open page draws the numbers as live charts (plain canvas) and a tail of
//! the app's log.
//!
//! A slow tab never falls behind: the hub sends one small update a second
//! (the batching is done at the source), and the page keeps only the
//! latest points and draws at most once per animation frame, however many
//! updates arrived since the last frame (a background tab draws nothing
//! until it is shown, then once).
//!
//! Herald integration, all of it:
//! - one public update per second on `https://example.app/dashboard`,
//!   published with a publisher JWT the app mints for that topic only;
//! - the page subscribes with herald.js (no token: the topic is public),
//!   imported from the hub (another origin: Herald runs with
//!   `--cors-origins` listing this app); `GET /api/history` gives it the
//!   last two minutes to start from, and again each time its stream opens
//!   after a break (samples taken while Herald was away were never
//!   published: the app keeps them, the page fills the gap from them);
//! - every sample and log line carries the app's `epoch` (its start time):
//!   a page that sees a newer epoch knows the app restarted, its numbering
//!   starts again, and drops what it showed.
//!
//! Unlike the other apps, the dashboard publishes without an outbox: a
//! sample is worth nothing a minute late, and the page refetches the window
//! it draws (see docs/publishing.md).
//!
//! Run: `bash examples/run.sh` (or `cargo run --release --example
//! dashboard` with `HERALD_JWT_KEY`, `HERALD_URL`, `LISTEN`).

#[path = "../common/mod.rs"]
mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use rand::Rng;
use serde_json::{json, Value};

use common::*;

const PAGE: &str = include_str!("page.html");
const TOPIC: &str = "https://example.app/dashboard";
/// Samples kept for `/api/history` (and drawn by the page): two minutes.
const KEEP_SAMPLES: usize = 120;
/// Log lines kept for `/api/history`.
const KEEP_LOG: usize = 50;

struct App {
    settings: Settings,
    /// The latest samples, oldest first.
    samples: Mutex<VecDeque<Value>>,
    /// The app's log: every line is also printed to stderr; `pending` is
    /// what the next update carries, `tail` what a new page starts with.
    /// Lines are `{"n", "line"}`: `n` counts from 1, so a page drops the
    /// lines it already has from `/api/history`.
    pending: Mutex<Vec<Value>>,
    tail: Mutex<VecDeque<Value>>,
    lines: std::sync::atomic::AtomicU64,
    /// When this run started (ms): tells a restarted app's samples (and
    /// log lines, numbered from 1 again) from the last run's.
    epoch: i64,
}

impl App {
    fn log(&self, line: impl Into<String>) {
        let line = format!("{} {}", clock(now_ms()), line.into());
        eprintln!("{line}");
        // Numbered and queued under the tail's lock: the lines keep their
        // order in both.
        let mut tail = self.tail.lock().unwrap();
        let n = 1 + self
            .lines
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let line = json!({ "n": n, "line": line });
        self.pending.lock().unwrap().push(line.clone());
        tail.push_back(line);
        while tail.len() > KEEP_LOG {
            tail.pop_front();
        }
    }
}

type Shared = Arc<App>;

/// `HH:MM:SS` (UTC) of a time in ms.
fn clock(ms: i64) -> String {
    let s = (ms / 1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[tokio::main]
async fn main() {
    let settings = Settings::from_env("127.0.0.1:3004", "dashboard-data");
    let herald = Publisher::new(&settings, &[TOPIC]);
    let app = Arc::new(App {
        settings,
        samples: Mutex::new(VecDeque::new()),
        pending: Mutex::new(Vec::new()),
        tail: Mutex::new(VecDeque::new()),
        lines: Default::default(),
        epoch: now_ms(),
    });
    app.log("dashboard started: sampling /proc every second");
    tokio::spawn(sampler(app.clone(), herald));
    let listen = app.settings.listen.clone();
    serve(router(app), &listen, "dashboard").await;
}

fn router(app: Shared) -> Router {
    let routes = Router::new()
        .route("/", get(index))
        .route("/api/history", get(history));
    app_router(routes, app)
}

async fn index(State(app): State<Shared>) -> Response {
    app.log("page served");
    page(PAGE, &app.settings)
}

/// What a new page starts from: the hub, the topic, the samples kept and
/// the log tail. Updates after this answer arrive on the stream (the page
/// asks once its stream is open, and drops repeats by `seq`), with the
/// run's `epoch`.
async fn history(State(app): State<Shared>) -> Json<Value> {
    let samples: Vec<Value> = app.samples.lock().unwrap().iter().cloned().collect();
    let log: Vec<Value> = app.tail.lock().unwrap().iter().cloned().collect();
    Json(json!({
        "hub": format!("{}/.well-known/mercure", app.settings.herald_url),
        "topic": TOPIC,
        "keep": KEEP_SAMPLES,
        "epoch": app.epoch,
        "samples": samples,
        "log": log,
    }))
}

/// CPU time counters from the first line of `/proc/stat`: (busy, total).
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest is in user)
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// `/proc/meminfo`: (used, total) in bytes; used = total - available.
fn memory() -> Option<(u64, u64)> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:")?;
    Some((total.saturating_sub(available), total))
}

/// `/proc/net/dev`: bytes (received, sent) over all interfaces, loopback
/// included (on a machine serving only itself that is where the traffic is).
fn network() -> Option<(u64, u64)> {
    let dev = std::fs::read_to_string("/proc/net/dev").ok()?;
    let (mut rx, mut tx) = (0u64, 0u64);
    for line in dev.lines().skip(2) {
        let (_, counters) = line.split_once(':')?;
        let f: Vec<u64> = counters
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if f.len() >= 9 {
            rx += f[0];
            tx += f[8];
        }
    }
    Some((rx, tx))
}

/// Once a second: sample, publish one combined update, keep it for new
/// pages. A tick missed (the hub slow to answer) is skipped, not caught
/// up: the next update carries fresh values and every log line since.
async fn sampler(app: Shared, herald: Publisher) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut cpu_before = cpu_times();
    let mut net_before = network();
    let mut at_before = std::time::Instant::now();
    let mut price: f64 = 100.0;
    let mut seq: u64 = 0;
    let mut herald_down = false;
    loop {
        ticker.tick().await;
        seq += 1;
        let at = std::time::Instant::now();
        let secs = at.duration_since(at_before).as_secs_f64().max(0.001);
        at_before = at;

        let cpu_now = cpu_times();
        let cpu = match (cpu_before, cpu_now) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                Some(100.0 * (b1.saturating_sub(b0)) as f64 / (t1 - t0) as f64)
            }
            _ => None,
        };
        cpu_before = cpu_now;
        let net_now = network();
        let (rx, tx) = match (net_before, net_now) {
            (Some((r0, t0)), Some((r1, t1))) => (
                Some(r1.saturating_sub(r0) as f64 / secs),
                Some(t1.saturating_sub(t0) as f64 / secs),
            ),
            _ => (None, None),
        };
        net_before = net_now;
        let mem = memory();
        // A random walk: at most 0.5 % a tick, kept above 1.
        let step: f64 = rand::thread_rng().gen_range(-0.005..0.005);
        price = (price * (1.0 + step)).max(1.0);
        let price = (price * 100.0).round() / 100.0;

        if seq.is_multiple_of(10) {
            app.log(format!(
                "sample {seq}: cpu {} · memory {} · price {price:.2}",
                cpu.map_or("?".into(), |c| format!("{c:.1} %")),
                mem.map_or("?".into(), |(u, t)| format!(
                    "{:.0} / {:.0} MiB",
                    u as f64 / 1048576.0,
                    t as f64 / 1048576.0
                )),
            ));
        }
        let log = std::mem::take(&mut *app.pending.lock().unwrap());
        let sample = json!({
            "seq": seq,
            "t": now_ms(),
            "cpu": cpu.map(|c| (c * 10.0).round() / 10.0),
            "mem_used": mem.map(|m| m.0),
            "mem_total": mem.map(|m| m.1),
            "rx": rx.map(f64::round),
            "tx": tx.map(f64::round),
            "price": price,
        });
        {
            let mut samples = app.samples.lock().unwrap();
            samples.push_back(sample.clone());
            while samples.len() > KEEP_SAMPLES {
                samples.pop_front();
            }
        }
        let update = json!({ "kind": "sample", "epoch": app.epoch, "sample": sample, "log": log });
        let sent = tokio::time::timeout(
            Duration::from_secs(2),
            herald.publish(TOPIC, &update, false),
        )
        .await;
        match sent {
            Ok(Ok(_)) if herald_down => {
                herald_down = false;
                app.log("Herald reachable again");
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) if !herald_down => {
                herald_down = true;
                app.log(format!(
                    "publishing failed: {}",
                    e.message.trim_start_matches("saved, but ")
                ));
            }
            Err(_) if !herald_down => {
                herald_down = true;
                app.log("publishing failed: Herald did not answer within 2 s");
            }
            _ => {}
        }
    }
}
