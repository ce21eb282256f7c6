//! Behind a real nginx on the defaults: every connection comes from the
//! proxy's address, yet 10,000 subscribers get in (loopback is a trusted
//! proxy by default, so its connections are not counted per address), and
//! every one of them receives an update published through the proxy.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::nginx::Nginx;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

const SUBSCRIBERS: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_subscribers_through_nginx_on_the_defaults() {
    let server = Server::start(&[]);
    let nginx = Nginx::start_with(&[&server.base], 4);
    let port = nginx.port;
    let gate = Arc::new(Semaphore::new(200));
    let mut opened = Vec::with_capacity(SUBSCRIBERS);
    for _ in 0..SUBSCRIBERS {
        let gate = gate.clone();
        opened.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            tcp.write_all(b"GET /.well-known/mercure?topic=https%3A%2F%2Fexample.com%2Fall HTTP/1.1\r\nHost: hub\r\n\r\n")
                .await
                .unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 512];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut buf))
                    .await
                    .expect("an answer within 30 s")
                    .unwrap();
                assert!(n > 0, "closed before answering");
                head.extend_from_slice(&buf[..n]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            (tcp, head)
        }));
    }
    let mut streams = Vec::with_capacity(SUBSCRIBERS);
    let mut refused = 0;
    for o in opened {
        let (tcp, head) = o.await.unwrap();
        if head.starts_with("HTTP/1.1 200") {
            streams.push(tcp);
        } else {
            refused += 1;
            if refused < 3 {
                eprintln!("refused: {head}");
            }
        }
    }
    assert_eq!(refused, 0, "every subscriber got in through the proxy");
    assert_eq!(
        metric(&server.base, "herald_subscribers").await,
        SUBSCRIBERS as u64
    );
    let id = publish(
        &nginx.hub(),
        &[
            ("topic", "https://example.com/all"),
            ("data", "to-everyone"),
        ],
    )
    .await;
    let mut reads = Vec::with_capacity(SUBSCRIBERS);
    for mut tcp in streams {
        let id = id.clone();
        reads.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            let needle = format!("id: {id}");
            while !String::from_utf8_lossy(&got).contains(&needle) {
                let n = tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut buf))
                    .await
                    .expect("the update within 30 s")
                    .unwrap();
                assert!(n > 0, "the stream ended");
                got.extend_from_slice(&buf[..n]);
            }
        }));
    }
    for r in reads {
        r.await.unwrap();
    }
}
