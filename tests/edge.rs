//! The HTTP edge against hostile or broken clients: raw TCP clients that
//! stall, trickle, never read, open too many connections or forge
//! cross-site requests. Timeouts here are upper bounds with generous slack.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn addr(s: &Server) -> String {
    s.base.trim_start_matches("http://").to_string()
}

/// Read until `until` appears, the peer closes, or `wait` passes. Returns
/// what was read and whether the peer closed.
async fn read_until(tcp: &mut TcpStream, until: &str, wait: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    let mut closed = false;
    while until.is_empty() || !String::from_utf8_lossy(&got).contains(until) {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

async fn send(addr: &str, request: &[u8]) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    tcp
}

/// A raw subscription whose response head has arrived.
async fn raw_subscriber(addr: &str, from: Option<&str>) -> TcpStream {
    let mut tcp = match from {
        None => TcpStream::connect(addr).await.unwrap(),
        Some(ip) => {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
            socket.connect(addr.parse().unwrap()).await.unwrap()
        }
    };
    tcp.write_all(b"GET /.well-known/mercure?match=a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_until(&mut tcp, "\r\n\r\n", Duration::from_secs(10)).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tcp
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.to_ascii_lowercase().matches(needle).count()
}

// Defect 1: authorization before the body, body size and time limits.

#[tokio::test]
async fn publish_without_a_valid_token_is_refused_before_the_body_arrives() {
    let s = Server::start(&[]);
    let a = addr(&s);
    for auth in ["", "Authorization: Bearer not-a-jwt\r\n"] {
        // The body is announced but never sent.
        let request = format!(
            "POST /.well-known/mercure HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\n"
        );
        let mut tcp = send(&a, request.as_bytes()).await;
        let (answer, _) = read_until(&mut tcp, "\r\n\r\n", Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{auth:?}: {answer:?}");
    }
}

#[tokio::test]
async fn publish_body_that_trickles_gets_408_after_the_body_timeout() {
    let s = Server::start(&["--body-timeout", "1s"]);
    let request = format!(
        "POST /.well-known/mercure HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ntopic=a&da",
        publisher()
    );
    let mut tcp = send(&addr(&s), request.as_bytes()).await;
    let (answer, _) = read_until(&mut tcp, "body-timeout", Duration::from_secs(15)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert_eq!(metric(&s.base, "herald_body_timeouts_total").await, 1);
    // A body announced larger than the limit is refused without reading it.
    let s = Server::start(&["--max-body", "1000"]);
    let request = format!(
        "POST /.well-known/mercure HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 5000\r\n\r\n",
        publisher()
    );
    let mut tcp = send(&addr(&s), request.as_bytes()).await;
    let (answer, _) = read_until(&mut tcp, "\r\n\r\n", Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
}

#[tokio::test]
async fn publish_type_is_limited_like_ids() {
    let s = Server::start(&["--max-selector-len", "50"]);
    let hub = s.hub();
    let p = publisher();
    let (status, text) =
        publish_raw(&hub, Some(&p), &format!("topic=a&type={}", "t".repeat(51))).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("type"), "{text}");
    let (status, text) =
        publish_raw(&hub, Some(&p), &format!("topic=a&type={}", "t".repeat(50))).await;
    assert_eq!(status, 200, "{text}");
}

// Defect 3: CSRF on cookie-authenticated publishes.

async fn cookie_publish(hub: &str, headers: &[(&str, &str)], bearer: bool) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .post(hub)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", format!("mercureAuthorization={}", publisher()))
        .body("topic=a&data=x");
    if bearer {
        req = req.bearer_auth(publisher());
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

#[tokio::test]
async fn cookie_authenticated_publish_needs_a_listed_origin() {
    let s = Server::start(&["--cors-origins", "https://app.example.com"]);
    let hub = s.hub();
    let cases: &[(&[(&str, &str)], u16)] = &[
        (&[], 403),
        (&[("origin", "https://evil.example")], 403),
        (&[("origin", "null")], 403),
        (&[("origin", "https://app.example.com.evil.example")], 403),
        (&[("origin", "https://app.example.com")], 200),
        (&[("origin", "https://APP.example.com:443")], 200),
        (&[("referer", "https://app.example.com/page?x=1")], 200),
        (&[("referer", "https://evil.example/app.example.com")], 403),
        // Origin wins over Referer.
        (
            &[
                ("origin", "https://evil.example"),
                ("referer", "https://app.example.com/"),
            ],
            403,
        ),
    ];
    for (headers, expected) in cases {
        let (status, text) = cookie_publish(&hub, headers, false).await;
        assert_eq!(status, *expected, "{headers:?}: {text}");
        if status == 403 {
            assert!(text.contains("cookie"), "{text}");
        }
    }
    // A bearer token is not sent by browsers unasked: no origin check.
    let (status, text) = cookie_publish(&hub, &[("origin", "https://evil.example")], true).await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = cookie_publish(&hub, &[], true).await;
    assert_eq!(status, 200, "{text}");

    // `*` accepts any origin, but one must still be given.
    let s = Server::start(&["--cors-origins", "*"]);
    let (status, _) = cookie_publish(&s.hub(), &[("origin", "https://any.example")], false).await;
    assert_eq!(status, 200);
    let (status, _) = cookie_publish(&s.hub(), &[], false).await;
    assert_eq!(status, 403);
    // No list: no cookie publishes.
    let s = Server::start(&[]);
    let (status, _) = cookie_publish(&s.hub(), &[("origin", "https://any.example")], false).await;
    assert_eq!(status, 403);
}

// Defect 2: header read timeout on both paths.

#[tokio::test]
async fn half_a_request_head_is_closed_after_the_header_timeout() {
    let s = Server::start(&["--header-timeout", "1s"]);
    let a = addr(&s);
    // Lean path: the head of a subscription, without its final empty line.
    let mut lean = send(
        &a,
        b"GET /.well-known/mercure?match=a HTTP/1.1\r\nHost: x\r\n",
    )
    .await;
    let (answer, closed) = read_until(&mut lean, "", Duration::from_secs(15)).await;
    assert!(closed, "still open: {answer:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    // An idle connection that never sends anything is closed too.
    let mut idle = TcpStream::connect(&a).await.unwrap();
    let (answer, closed) = read_until(&mut idle, "", Duration::from_secs(15)).await;
    assert!(closed && answer.is_empty(), "{answer:?}");
    // hyper's path: a request it serves, then half of the next one.
    let mut other = send(
        &a,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHo",
    )
    .await;
    let (answer, closed) = read_until(&mut other, "", Duration::from_secs(15)).await;
    assert!(closed, "still open: {answer:?}");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    // hyper's path, a request served, then half of the next one sent
    // after its answer: told why, like the lean path.
    let mut next = send(&a, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (answer, _) = read_until(&mut next, "\r\n\r\n", Duration::from_secs(15)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    next.write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let (answer, closed) = read_until(&mut next, "", Duration::from_secs(15)).await;
    assert!(closed, "still open: {answer:?}");
    assert!(answer.contains("HTTP/1.1 408"), "{answer:?}");
    // hyper's path between requests: a served request, then nothing.
    let mut kept = send(&a, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (answer, closed) = read_until(&mut kept, "", Duration::from_secs(15)).await;
    assert!(closed, "still open: {answer:?}");
    assert!(
        !answer.contains("408"),
        "an idle connection is just closed: {answer:?}"
    );
    // Every one of them counted: lean, idle, hyper pipelined, hyper
    // mid-request, hyper idle.
    assert!(metric(&s.base, "herald_header_timeouts_total").await >= 5);
}

// Defect 4: framing on the lean path, Host, slow writers, stream end.

#[tokio::test]
async fn lean_path_answers_are_framed_once_and_streams_end_cleanly() {
    let mut s = Server::start(&[]);
    let a = addr(&s);
    // An error answer on the lean path: one Content-Length, one Connection.
    let mut bad = send(
        &a,
        b"GET /.well-known/mercure?nomatch=1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
    )
    .await;
    let (answer, closed) = read_until(&mut bad, "", Duration::from_secs(10)).await;
    assert!(closed);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(count(&answer, "\r\ncontent-length:"), 1, "{answer}");
    assert_eq!(count(&answer, "\r\nconnection:"), 1, "{answer}");
    assert_eq!(count(&answer, "\r\ntransfer-encoding:"), 0, "{answer}");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_string)
        })
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(length, body.len(), "{answer}");

    // HTTP/1.1 without Host: 400 on the lean path and on hyper's.
    for request in [
        &b"GET /.well-known/mercure?match=a HTTP/1.1\r\n\r\n"[..],
        &b"GET /healthz HTTP/1.1\r\n\r\n"[..],
        &b"POST /.well-known/mercure HTTP/1.1\r\nContent-Length: 0\r\n\r\n"[..],
    ] {
        let mut tcp = send(&a, request).await;
        let (answer, _) = read_until(&mut tcp, "Host", Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }

    // A client writing its head a byte at a time still gets its stream.
    let mut slow = TcpStream::connect(&a).await.unwrap();
    for b in b"GET /.well-known/mercure?match=a HTTP/1.1\r\nHost: x\r\n\r\n" {
        slow.write_all(&[*b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (head, _) = read_until(&mut slow, "\r\n\r\n", Duration::from_secs(10)).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(count(&head, "\r\ntransfer-encoding:"), 1, "{head}");
    assert_eq!(count(&head, "\r\ncontent-length:"), 0, "{head}");

    // A stream the hub ends gets its last chunk, then the connection closes.
    publish(&s.hub(), &[("topic", "a"), ("data", "bye")]).await;
    let (events, _) = read_until(&mut slow, "bye", Duration::from_secs(10)).await;
    assert!(events.contains("data: bye"), "{events}");
    let status = s.terminate();
    assert!(status.success());
    let (rest, closed) = read_until(&mut slow, "", Duration::from_secs(10)).await;
    assert!(closed, "{rest:?}");
    assert!(rest.ends_with("0\r\n\r\n"), "{rest:?}");
}

// Defect 5: connection limits.

#[tokio::test]
async fn connections_over_the_total_limit_get_503_until_one_closes() {
    let s = Server::start(&["--max-connections", "3", "--max-subscribers", "3"]);
    let a = addr(&s);
    let mut subs = Vec::new();
    for _ in 0..3 {
        subs.push(raw_subscriber(&a, None).await);
    }
    let mut fourth = send(&a, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (answer, closed) = read_until(&mut fourth, "", Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert_eq!(count(&answer, "\r\nretry-after: "), 1, "{answer}");
    assert!(closed);
    drop(subs.pop());
    // The slot frees as soon as the server sees the close.
    assert_served_once_a_slot_frees(&a).await;
    drop(subs.pop());
    assert!(metric_when_admitted(&s.base, "herald_connections_refused_total").await >= 1);
}

/// A slot freed by a closed socket is given back a moment later: a new
/// request is served (200) within a few seconds.
async fn assert_served_once_a_slot_frees(a: &str) {
    let mut served = String::new();
    for _ in 0..100 {
        let mut tcp = send(a, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        served = read_until(&mut tcp, "ok\n", Duration::from_secs(10))
            .await
            .0;
        if served.starts_with("HTTP/1.1 200") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no request was served after a slot was freed: {served}");
}

/// A metric, read once the hub admits the request: sockets the test just
/// closed free their connection slots a moment later, and until then the
/// metrics request itself may be refused (503/429). A refusal is written as
/// soon as the connection is accepted, possibly before the client has sent
/// its request, which the HTTP client reports as an error rather than a
/// status: that is a refusal too.
async fn metric_when_admitted(base: &str, name: &str) -> u64 {
    for _ in 0..100 {
        let Ok(resp) = reqwest::get(format!("{base}/metrics")).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if resp.status() == 200 {
            let text = resp.text().await.expect("body");
            return text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("metric {name} missing in {text}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the hub never admitted a metrics request");
}

#[tokio::test]
async fn connections_over_the_per_ip_limit_get_429() {
    // Loopback is a trusted proxy by default: trust none here.
    let s = Server::start(&["--max-connections-per-ip", "2", "--trusted-proxies", ""]);
    let a = addr(&s);
    let mut subs = vec![
        raw_subscriber(&a, Some("127.0.0.1")).await,
        raw_subscriber(&a, Some("127.0.0.1")).await,
    ];
    let mut third = send(&a, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (answer, closed) = read_until(&mut third, "", Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert_eq!(count(&answer, "\r\nretry-after: "), 1, "{answer}");
    assert!(closed);
    // Another address has its own allowance (Linux routes all of 127/8 to
    // loopback).
    let other = raw_subscriber(&a, Some("127.0.0.2")).await;
    drop(subs.pop());
    assert_served_once_a_slot_frees(&a).await;
    drop(subs);
    drop(other);
    assert!(metric_when_admitted(&s.base, "herald_connections_refused_per_ip_total").await >= 1);
}

// Defect 6: a client that stops reading is disconnected.

#[tokio::test]
async fn subscribers_that_stop_reading_are_disconnected_by_the_write_timeout() {
    let s = Server::start(&[
        "--write-timeout",
        "1s",
        "--queue-capacity",
        "64",
        "--history",
        "memory",
    ]);
    let a = addr(&s);
    // One on the lean path, one on hyper's (HTTP/1.0 streams through hyper);
    // neither reads anything after the request.
    let mut lean = send(
        &a,
        b"GET /.well-known/mercure?match=flood HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    let mut old = send(&a, b"GET /.well-known/mercure?match=flood HTTP/1.0\r\n\r\n").await;
    let mut ready = false;
    for _ in 0..100 {
        if s.subscribers().await == 2 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "both subscribed");
    let data = "x".repeat(64 * 1024);
    let mut gone = false;
    for _ in 0..400 {
        publish(&s.hub(), &[("topic", "flood"), ("data", &data)]).await;
        if metric(&s.base, "herald_write_timeouts_total").await >= 2 {
            gone = true;
            break;
        }
    }
    // Publishing may have stopped before the timeout fired: wait for it.
    for _ in 0..200 {
        if gone {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        gone = metric(&s.base, "herald_write_timeouts_total").await >= 2;
    }
    assert!(gone, "both stalled writers timed out");
    let mut count = u64::MAX;
    for _ in 0..100 {
        count = s.subscribers().await;
        if count == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count, 0, "the stalled subscribers were removed");
    // Their sockets were closed: reading what was buffered ends in EOF or
    // a reset, not a wait.
    for tcp in [&mut lean, &mut old] {
        let mut buf = vec![0u8; 1 << 20];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => {}
                Err(_) => panic!("a stalled subscriber's socket is still open"),
            }
        }
    }
}

/// A subscriber's request with extra header lines; the head of the answer.
async fn subscribe_with(addr: &str, extra: &str) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET /.well-known/mercure?match=a HTTP/1.1\r\nHost: x\r\n{extra}\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (head, _) = read_until(&mut tcp, "\r\n\r\n", Duration::from_secs(10)).await;
    (tcp, head)
}

/// A hub holding its most subscribers still takes publishes, and answers
/// /healthz and /metrics: subscribers cannot crowd out publishers.
#[tokio::test]
async fn a_hub_full_of_subscribers_still_takes_publishes_and_answers_the_operator() {
    // --max-subscribers derived: 20 connections less a reserve of 10.
    let s = Server::start(&["--max-connections", "20"]);
    let a = addr(&s);
    let mut subs = Vec::new();
    for _ in 0..10 {
        subs.push(raw_subscriber(&a, None).await);
    }
    let (_, refused) = subscribe_with(&a, "").await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert_eq!(count(&refused, "\r\nretry-after: "), 1, "{refused}");
    let (mut tcp, head) = subscribe_with(&a, "").await;
    let (body, _) = read_until(&mut tcp, "retry later", Duration::from_secs(10)).await;
    assert!(
        format!("{head}{body}").contains("--max-subscribers 10"),
        "{head}{body}"
    );
    let id = publish(&s.hub(), &[("topic", "a"), ("data", "still")]).await;
    let (got, _) = read_until(&mut subs[0], &id, Duration::from_secs(10)).await;
    assert!(got.contains(&id), "{got}");
    assert_eq!(
        reqwest::get(format!("{}/healthz", s.base))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(metric(&s.base, "herald_subscribers").await, 10);
}

/// Through a trusted proxy (loopback, by default), streams count against
/// the client's address from X-Forwarded-For, not the proxy's; without a
/// forwarding header they are not counted per address.
#[tokio::test]
async fn streams_through_a_trusted_proxy_count_by_the_forwarded_client() {
    let s = Server::start(&["--max-connections-per-ip", "2"]);
    let a = addr(&s);
    let mut held = Vec::new();
    for _ in 0..2 {
        let (tcp, head) = subscribe_with(&a, "X-Forwarded-For: 6.6.6.6, 203.0.113.9\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        held.push(tcp);
    }
    let (_, head) = subscribe_with(&a, "X-Forwarded-For: 203.0.113.9\r\n").await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    let (tcp, head) = subscribe_with(&a, "Forwarded: for=203.0.113.10\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "another client: {head}");
    held.push(tcp);
    // The proxy's own connections are not counted per address.
    for _ in 0..3 {
        let (tcp, head) = subscribe_with(&a, "").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        held.push(tcp);
    }
    // A closed stream frees its client's slot.
    held.remove(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (tcp, head) = subscribe_with(&a, "X-Forwarded-For: 203.0.113.9\r\n").await;
        if head.starts_with("HTTP/1.1 200") {
            held.push(tcp);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was freed: {head}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// From a peer that is not a trusted proxy, forwarding headers change
/// nothing: the connection counts against the peer's own address.
#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
    let s = Server::start(&[
        "--max-connections-per-ip",
        "2",
        "--trusted-proxies",
        "10.0.0.0/8",
    ]);
    let a = addr(&s);
    let mut held = Vec::new();
    for n in 0..2 {
        let (tcp, head) = subscribe_with(&a, &format!("X-Forwarded-For: 203.0.113.{n}\r\n")).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        held.push(tcp);
    }
    let (_, head) = subscribe_with(&a, "X-Forwarded-For: 203.0.113.99\r\n").await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
}

/// Over HTTP/2 one connection carries many streams: each event stream
/// counts against --max-connections-per-ip by the peer's address.
#[tokio::test]
async fn http2_streams_count_against_the_per_address_limit() {
    let s = Server::start(&["--max-connections-per-ip", "3", "--trusted-proxies", ""]);
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let url = format!("{}?topic=h2", s.hub());
    let mut held = Vec::new();
    for _ in 0..3 {
        let resp = client.get(&url).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        held.push(resp);
    }
    let refused = client.get(&url).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 429);
    assert!(refused
        .text()
        .await
        .unwrap()
        .contains("--max-connections-per-ip"));
    // A closed stream frees its slot.
    drop(held.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let resp = client.get(&url).send().await.unwrap();
        if resp.status().as_u16() == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the slot was freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
