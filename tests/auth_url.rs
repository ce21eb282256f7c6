//! `--auth-url`: the application's own sessions instead of tokens. A small
//! application (a real HTTP server on loopback) answers by session cookie;
//! a real Herald asks it for subscribers without a token.
mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const ALICE_TOPIC: &str = "https://example.com/users/alice/inbox";

/// The application: answers by the `session` cookie, counts the calls.
fn start_app() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/herald/session", listener.local_addr().unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let counted = counted.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let head = String::from_utf8_lossy(&head).to_lowercase();
                let session = head
                    .lines()
                    .find_map(|l| l.strip_prefix("cookie: "))
                    .and_then(|c| c.split(';').find_map(|p| p.trim().strip_prefix("session=")))
                    .unwrap_or("")
                    .to_string();
                let (status, body) = match session.as_str() {
                    "alice" => (
                        "200 OK",
                        format!(
                            r#"{{"subscribe": ["{ALICE_TOPIC}"], "sub": "alice", "payload": {{"name": "Alice"}}}}"#
                        ),
                    ),
                    "slow" => {
                        std::thread::sleep(Duration::from_secs(3));
                        ("200 OK", r#"{"subscribe": []}"#.to_string())
                    }
                    "broken" => ("500 Internal Server Error", "oops".to_string()),
                    "garbage" => ("200 OK", "<html>login</html>".to_string()),
                    "banned" => ("403 Forbidden", String::new()),
                    _ => ("401 Unauthorized", String::new()),
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    (url, calls)
}

async fn open(server: &Server, cookie: Option<&str>) -> Sub {
    let mut opts = SubOpts::default();
    if let Some(c) = cookie {
        opts.headers.push(("cookie", c.to_string()));
    }
    Sub::open(&server.hub(), &format!("topic={}", enc(ALICE_TOPIC)), opts).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_without_a_token_are_who_the_application_says() {
    let (url, calls) = start_app();
    let server = Server::start(&["--auth-url", &url, "--auth-timeout", "1s"]);

    // Alice's session: her private updates.
    let mut alice = open(&server, Some("theme=dark; session=alice")).await;
    assert_eq!(alice.status, 200);
    let anonymous = open(&server, None).await;
    assert_eq!(
        anonymous.status, 200,
        "no cookie: an anonymous visitor (public updates)"
    );
    let id = publish(
        &server.hub(),
        &[
            ("topic", ALICE_TOPIC),
            ("data", "for alice"),
            ("private", "on"),
        ],
    )
    .await;
    assert_eq!(alice.next().await.id, id);
    let mut anonymous = anonymous;
    assert!(
        anonymous
            .next_within(Duration::from_millis(500))
            .await
            .is_none(),
        "an anonymous visitor never gets a private update"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "no cookie, no call");

    // Her other tab: the answer is reused (--auth-cache-ttl).
    let again = open(&server, Some("theme=dark; session=alice")).await;
    assert_eq!(again.status, 200);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "cached");

    // No session, or refused: the application's status, with the reason.
    let nobody = open(&server, Some("session=mallory")).await;
    assert_eq!(nobody.status, 401);
    assert!(nobody.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    let banned = open(&server, Some("session=banned")).await;
    assert_eq!(banned.status, 403);

    // An application that fails is a 503 with the reason, never an open door.
    let started = Instant::now();
    let slow = open(&server, Some("session=slow")).await;
    assert_eq!(slow.status, 503);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "--auth-timeout bounds the wait"
    );
    for (cookie, why) in [
        ("session=broken", "answered 500"),
        ("session=garbage", "not JSON"),
    ] {
        let r = reqwest::Client::new()
            .get(format!("{}?topic={}", server.hub(), enc(ALICE_TOPIC)))
            .header("accept", "text/event-stream")
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503, "{cookie}");
        let text = r.text().await.unwrap();
        assert!(
            text.contains(why) && text.contains(&url),
            "{cookie}: {text}"
        );
    }
    // Failures are not cached: asked again.
    let before = calls.load(Ordering::SeqCst);
    let _ = open(&server, Some("session=broken")).await;
    assert_eq!(calls.load(Ordering::SeqCst), before + 1);
}

#[tokio::test]
async fn a_zero_cache_ttl_asks_every_time() {
    let (url, calls) = start_app();
    let server = Server::start(&["--auth-url", &url, "--auth-cache-ttl", "0s"]);
    for _ in 0..3 {
        assert_eq!(open(&server, Some("session=alice")).await.status, 200);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}
