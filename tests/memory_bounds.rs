//! A subscriber that never reads holds bounded memory: its queue is
//! bounded in bytes (`--queue-bytes`), not only in events, so large
//! updates cut it off within a few of them, long before `--write-timeout`.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Resident memory of a process, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_let_go_before_it_pins_memory() {
    let server = Server::start(&["--history", "memory", "--history-size", "16"]);
    let hub = server.hub();
    // A subscriber with a 4 KB receive buffer that never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr: std::net::SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    let mut stuck = socket.connect(addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    stuck
        .write_all(
            format!(
                "GET /.well-known/mercure?topic=big HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.subscribers().await < 1 {
        assert!(Instant::now() < deadline, "the subscriber never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = rss_bytes(server.child.id());
    // 1 MB updates at 20 per second: 400 of them, far more than the
    // subscriber's queue may hold (1,024 events, or 4 MiB).
    let data = "x".repeat(1_000_000);
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut let_go_after = None;
    let mut peak = before;
    for i in 0..400u32 {
        let (status, body) = {
            let resp = client
                .post(&hub)
                .bearer_auth(publisher())
                .form(&[("topic", "big"), ("data", data.as_str())])
                .send()
                .await
                .expect("publish");
            (
                resp.status().as_u16(),
                resp.text().await.unwrap_or_default(),
            )
        };
        assert_eq!(status, 200, "publish {i}: {body}");
        if let_go_after.is_none() && server.subscribers().await == 0 {
            let_go_after = Some(started.elapsed());
        }
        peak = peak.max(rss_bytes(server.child.id()));
        if let_go_after.is_some() && i >= 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let let_go_after = let_go_after.expect("the never-reading subscriber was never let go");
    assert!(
        let_go_after < Duration::from_secs(10),
        "let go only after {let_go_after:?}"
    );
    assert_eq!(metric(&server.base, "herald_slow_cut_off_total").await, 1);
    assert!(
        peak < before + 300_000_000,
        "the server's memory grew by {} MB for one subscriber that never reads",
        (peak - before) / 1_000_000
    );
    drop(stuck);
}
