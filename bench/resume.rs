//! Resume storm benchmark: prints figures, asserts nothing about speed.
//!
//! `ulimit -n 20000; cargo bench --bench resume` (`HERALD_BIN=path` to
//! measure another build; add `-- --quick` for a
//! short run, `-- --clients N` to change the storm). It starts the release
//! `herald` binary on loopback with durable history, publishes more updates
//! than the in-memory cache holds (so replays read the file), then opens N
//! connections at once that all resume from `earliest` and read slowly,
//! while one probe subscriber on its own topic receives a live update every
//! 50 ms. It prints herald's RSS before, at its peak during and after the
//! storm, and the probe's publish-to-receive latency before and during the
//! storm: the replay must stay bounded in memory (one page per subscriber,
//! read on the blocking pool) and must not stall live delivery.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use herald::sse::SseParser;
use support::{publish_load, start, KEY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1024)
}

/// Publish to the probe's topic every 50 ms with the send time as data;
/// the probe records publish-to-receive latencies (µs).
async fn probe(base: String, token: String, stop: Arc<AtomicBool>) -> Vec<u64> {
    let url = format!("{base}/.well-known/mercure?match=probe");
    let resp = reqwest::Client::new()
        .get(url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("probe subscribe");
    let mut body = resp.bytes_stream();
    let started = Instant::now();
    let publisher = {
        let (base, token, stop) = (base.clone(), token.clone(), stop.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                let sent = started.elapsed().as_micros();
                let _ = client
                    .post(format!("{base}/.well-known/mercure"))
                    .bearer_auth(&token)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(format!("topic=probe&data={sent}"))
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let mut parser = SseParser::new();
    let mut latencies = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok(Some(Ok(chunk))) =
            tokio::time::timeout(Duration::from_millis(200), body.next()).await
        else {
            continue;
        };
        for ev in parser.feed(&chunk) {
            if let Ok(sent) = ev.data.parse::<u128>() {
                latencies.push((started.elapsed().as_micros() - sent) as u64);
            }
        }
    }
    let _ = publisher.await;
    latencies
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn summary(name: &str, mut v: Vec<u64>) {
    v.sort_unstable();
    println!(
        "{name:<28} {:>6} events   p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms",
        v.len(),
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        percentile(&v, 1.0)
    );
}

/// One storm client: resume from `earliest`, read `chunk` bytes every
/// `pause`, until `stop`.
async fn slow_resumer(addr: String, stop: Arc<AtomicBool>, received: Arc<AtomicU64>) {
    let Ok(mut tcp) = tokio::net::TcpStream::connect(&addr).await else {
        return;
    };
    let request = format!(
        "GET /.well-known/mercure?match=*&last_event_id=earliest HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    );
    if tcp.write_all(request.as_bytes()).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => {
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let mut clients: usize = if quick { 2_000 } else { 10_000 };
    if let Some(i) = args.iter().position(|a| a == "--clients") {
        clients = args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .expect("--clients N");
    }
    let updates = if quick { 12_000 } else { 30_000 };
    let storm_secs = if quick { 10 } else { 30 };
    let limit = open_files_limit();
    if limit < clients as u64 + 200 {
        eprintln!(
            "open-files limit {limit} is too low for {clients} clients: run `ulimit -n 20000` first"
        );
        std::process::exit(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let dir = tempfile::tempdir().expect("temp dir");
        let hub = start(dir.path(), &[]);
        let pid = hub.child.id();
        let addr = hub.base.trim_start_matches("http://").to_string();
        let token =
            herald::auth::mint_hs256(KEY, &["*".into()], &[], None, Some(3600)).expect("token");
        println!("publishing {updates} updates (history cache holds the newest 10,000)...");
        publish_load(&hub.base, updates, 64, "storm").await;
        let rss_before = rss_kib(pid);

        // Live delivery before the storm.
        let stop = Arc::new(AtomicBool::new(false));
        let calm = tokio::spawn(probe(hub.base.clone(), token.clone(), stop.clone()));
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
        let calm = calm.await.expect("probe");

        // The storm.
        println!("{clients} clients resume from earliest at once and read slowly for {storm_secs} s...");
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let during = tokio::spawn(probe(hub.base.clone(), token.clone(), stop.clone()));
        let mut storm = Vec::with_capacity(clients);
        for _ in 0..clients {
            storm.push(tokio::spawn(slow_resumer(
                addr.clone(),
                stop.clone(),
                received.clone(),
            )));
        }
        let started = Instant::now();
        let mut peak = rss_before;
        let mut samples = Vec::new();
        while started.elapsed() < Duration::from_secs(storm_secs) {
            let rss = rss_kib(pid);
            peak = peak.max(rss);
            samples.push((started.elapsed().as_secs_f64(), rss));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for t in storm {
            let _ = t.await;
        }
        let during = during.await.expect("probe");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_after = rss_kib(pid);

        println!();
        println!("history: {updates} updates; storm: {clients} clients from earliest, {storm_secs} s");
        println!(
            "replayed to the storm clients: {:.1} MiB ({:.1} MiB/s)",
            received.load(Ordering::Relaxed) as f64 / 1048576.0,
            received.load(Ordering::Relaxed) as f64 / 1048576.0 / storm_secs as f64
        );
        println!(
            "herald RSS: before {:.1} MiB, peak during {:.1} MiB ({:.1} KiB per resuming client), after disconnect {:.1} MiB",
            rss_before as f64 / 1024.0,
            peak as f64 / 1024.0,
            (peak.saturating_sub(rss_before)) as f64 / clients as f64,
            rss_after as f64 / 1024.0
        );
        summary("live latency before storm", calm);
        summary("live latency during storm", during);
        let curve: Vec<String> = samples
            .iter()
            .step_by(4)
            .map(|(t, r)| format!("{t:.0}s:{:.0}", *r as f64 / 1024.0))
            .collect();
        println!("RSS MiB over the storm: {}", curve.join(" "));
    });
}
