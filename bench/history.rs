//! History benchmark: prints figures, asserts nothing about speed.
//!
//! `cargo bench --bench history` (add `-- --quick` for a short run). It
//! starts the release `herald` binary on loopback and measures:
//! 1. publish throughput over HTTP with 64 concurrent publishers, durable
//!    history (`--history disk`, fsync per batch) vs in-memory history;
//! 2. the time to replay 100,000 missed updates to one subscriber;
//! 3. disk bytes per stored update.

mod support;

use std::time::Instant;

use futures_util::StreamExt;
use herald::sse::SseParser;
use support::{publish_load, start};

/// Subscribe after `after` and time until `expect` events arrived.
async fn replay_time(base: &str, after: &str, expect: usize) -> f64 {
    let url = format!("{base}/.well-known/mercure?match=*");
    let started = Instant::now();
    let resp = reqwest::Client::new()
        .get(url)
        .header("last-event-id", after)
        .send()
        .await
        .expect("subscribe");
    let mut body = resp.bytes_stream();
    let mut parser = SseParser::new();
    let mut got = 0;
    while got < expect {
        let chunk = body
            .next()
            .await
            .expect("stream ended early")
            .expect("read");
        got += parser.feed(&chunk).len();
    }
    started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (total, replay_n) = if quick {
        (5_000, 20_000)
    } else {
        (50_000, 100_000)
    };
    println!("# herald history benchmark ({total} publishes at 64 concurrent publishers)");
    println!("| history | publishes/s |");
    println!("|---|---|");
    let mut results = Vec::new();
    for (name, extra) in [
        ("memory", &["--history", "memory"][..]),
        ("disk, --durability sync (default)", &[][..]),
        (
            "disk, --durability relaxed",
            &["--durability", "relaxed"][..],
        ),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let hub = start(dir.path(), extra);
        // Warm up connections and the file.
        publish_load(&hub.base, 1_000, 64, "warm").await;
        let rate = publish_load(&hub.base, total, 64, "run").await;
        println!("| {name} | {rate:.0} |");
        results.push(rate);
    }
    println!(
        "\ndurable (sync) / memory: {:.0}%",
        100.0 * results[1] / results[0]
    );

    // Replay and disk footprint on the default (durable, sync) store.
    let dir = tempfile::tempdir().expect("temp dir");
    let hub = start(dir.path(), &[]);
    publish_load(&hub.base, replay_n + 1, 64, "r").await;
    // Ids were taken in order by the publishers, but may have been
    // accepted slightly out of order: resume after the oldest one in
    // history to count exactly `replay_n` newer updates.
    let oldest = oldest_id(&hub.base).await;
    let mut times = Vec::new();
    for _ in 0..3 {
        times.push(replay_time(&hub.base, &oldest, replay_n).await);
    }
    times.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    println!(
        "\nreplay of {replay_n} missed updates to one subscriber: best {:.3} s, median {:.3} s ({:.0} updates/s)",
        times[0],
        times[1],
        replay_n as f64 / times[1]
    );
    drop(hub);
    let size = std::fs::metadata(dir.path().join("history.redb"))
        .expect("history file")
        .len();
    println!(
        "disk: {} bytes for {} updates = {:.0} bytes/update (each: ~58-byte JSON data, 30-byte topic, ~7-byte id)",
        size,
        replay_n + 1,
        size as f64 / (replay_n + 1) as f64,
    );
}

/// The id of the first update replayed from `earliest`.
async fn oldest_id(base: &str) -> String {
    let resp = reqwest::Client::new()
        .get(format!(
            "{base}/.well-known/mercure?match=*&last_event_id=earliest"
        ))
        .send()
        .await
        .expect("subscribe");
    let mut body = resp.bytes_stream();
    let mut parser = SseParser::new();
    loop {
        let chunk = body.next().await.expect("stream").expect("read");
        if let Some(ev) = parser.feed(&chunk).into_iter().next() {
            return ev.id;
        }
    }
}
