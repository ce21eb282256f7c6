//! The status page (`/ui/`) and its stream (`/ui/stream`) against a real
//! herald: the numbers it streams, who may read the status topic, and the
//! `herald token --status` helper. Which addresses need a token is decided
//! from the TCP peer; a non-loopback peer cannot be faked on one machine,
//! so that decision is unit-tested (`http::status::tests`), and here every
//! client is loopback.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::redis::Redis;
use common::*;
use serde_json::Value;

const STATUS_TOPIC: &str = "/.well-known/mercure/status";

/// The next status event's JSON (skipping anything else), within `wait`.
async fn next_status(s: &mut Sub, wait: Duration) -> Option<Value> {
    let deadline = Instant::now() + wait;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let ev = s.next_within(left).await?;
        if ev.event_type == "status" {
            return Some(serde_json::from_str(&ev.data).expect("status data is JSON"));
        }
    }
    None
}

/// Status events until one satisfies `ok`; panics after 10 s.
async fn status_until(s: &mut Sub, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = None;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match next_status(s, left).await {
            Some(v) if ok(&v) => return v,
            Some(v) => last = Some(v),
            None => break,
        }
    }
    panic!("no status event with {what} within 10 s; last: {last:#?}");
}

#[tokio::test]
async fn the_status_stream_reports_what_the_hub_does() {
    let server = Server::start(&["--history-size", "3"]);
    let hub = server.hub();
    let stream_url = format!("{}/ui/stream", server.base);

    // A loopback client opens the stream without a token, and is sent the
    // current status at once.
    let mut status = Sub::open(&stream_url, "", SubOpts::default()).await;
    assert_eq!(status.status, 200);
    assert_eq!(
        status.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    let first = next_status(&mut status, Duration::from_secs(5))
        .await
        .expect("a first status event");
    assert_eq!(first["published_total"], 0);
    assert_eq!(first["history"]["len"], 0);
    assert_eq!(first["history"]["oldest_id"], Value::Null);
    assert_eq!(first["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(first["cluster"], Value::Null);
    assert_eq!(first["history_max_len"], 3);

    // Two subscribers of a topic, five publishes: history keeps three.
    let topic = "https://example.com/status-test";
    let mut a = Sub::ok(&hub, &format!("match={}", enc(topic))).await;
    let mut b = Sub::ok(&hub, &format!("match={}", enc(topic))).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(publish(&hub, &[("topic", topic), ("data", &format!("u{i}"))]).await);
    }
    for s in [&mut a, &mut b] {
        for id in &ids {
            assert_eq!(&s.next().await.id, id);
        }
    }
    let v = status_until(&mut status, "5 publishes and 10 deliveries", |v| {
        v["published_total"] == 5 && v["delivered_total"] == 10
    })
    .await;
    assert_eq!(v["subscribers"], 3, "{v:#}");
    assert_eq!(v["status_watchers"], 1, "{v:#}");
    assert_eq!(v["topics"], 2, "the test topic and the status topic: {v:#}");
    assert_eq!(v["slow_cut_offs_total"], 0);
    assert_eq!(v["history"]["len"], 3, "{v:#}");
    assert_eq!(v["history"]["oldest_id"], ids[2].as_str(), "{v:#}");
    assert_eq!(v["history"]["newest_id"], ids[4].as_str(), "{v:#}");
    assert_eq!(v["ready"], true);
    assert!(v["connections"].as_u64().unwrap() >= 3, "{v:#}");
    assert!(v["uptime_s"].as_f64().unwrap() > 0.0);

    // Status events are published about once a second and are neither
    // counted as deliveries nor stored.
    let one = next_status(&mut status, Duration::from_secs(3))
        .await
        .unwrap();
    let two = next_status(&mut status, Duration::from_secs(3))
        .await
        .unwrap();
    let t1 = one["time_ms"].as_u64().unwrap();
    let t2 = two["time_ms"].as_u64().unwrap();
    // A second apart (loosely: the machine may be busy).
    assert!((500..=2500).contains(&(t2 - t1)), "{t1} -> {t2}");
    assert_eq!(two["delivered_total"], 10);
    assert_eq!(two["history"]["len"], 3);
    assert_eq!(metric(&server.base, "herald_delivered_total").await, 10);

    // Nobody publishes on the status topic.
    let body = format!("topic={}&data=forged", enc(STATUS_TOPIC));
    let (code, text) = publish_raw(&hub, Some(&publisher()), &body).await;
    assert_eq!(code, 400, "{text}");

    // Through the hub endpoint: an anonymous subscriber of the status
    // topic gets nothing (status events are private), nor does a
    // subscriber of `*` allowed to read everything (only exact subscribers
    // of the topic are sent them); a token granting the topic gets them.
    let mut anon = Sub::ok(&hub, &format!("match={}", enc(STATUS_TOPIC))).await;
    let everything = token(&[], &["*"]);
    let mut wildcard = Sub::open(
        &hub,
        "match=*",
        SubOpts {
            token: Some(&everything),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(wildcard.status, 200);
    let granted = token(&[], &[STATUS_TOPIC]);
    let mut admin = Sub::open(
        &hub,
        &format!("match={}", enc(STATUS_TOPIC)),
        SubOpts {
            token: Some(&granted),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(admin.status, 200);
    let v = next_status(&mut admin, Duration::from_secs(3))
        .await
        .expect("a token granting the status topic receives status events");
    assert!(v["status_watchers"].as_u64().unwrap() >= 1, "{v:#}");
    assert!(anon
        .next_within(Duration::from_millis(2500))
        .await
        .is_none());
    assert!(wildcard
        .next_within(Duration::from_millis(100))
        .await
        .is_none());
    let id = publish(&hub, &[("topic", topic), ("data", "after")]).await;
    let ev = wildcard.next().await;
    assert_eq!(
        (ev.id.as_str(), ev.event_type.as_str()),
        (id.as_str(), "message")
    );
}

#[tokio::test]
async fn the_page_is_served_to_loopback_clients() {
    let server = Server::start(&[]);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = client
        .get(format!("{}/ui/", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(
        page.headers()["content-type"].to_str().unwrap(),
        "text/html; charset=utf-8"
    );
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    let html = page.text().await.unwrap();
    assert!(html.contains("<title>Herald status</title>"), "{html}");
    assert!(html.contains("new EventSource"));
    // No external resource: everything is in the page.
    assert!(!html.contains("src=\"http"), "external script");
    assert!(!html.contains("href=\"http"), "external link");

    let redirect = client
        .get(format!("{}/ui?authorization=abc", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 308);
    assert_eq!(redirect.headers()["location"], "/ui/?authorization=abc");
}

#[test]
fn herald_token_status_mints_the_claim() {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["token", "--jwt-key", KEY, "--status", "--ttl", "10m"])
        .output()
        .expect("run herald token");
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    let grants = herald::auth::Verifier::hmac(KEY)
        .unwrap()
        .verify(token.trim())
        .expect("a valid token");
    assert!(grants.status);
    assert!(grants.publish.is_empty() && grants.subscribe.is_empty());
    assert!(grants.expires_at.is_some());
    // Without --status, no claim.
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["token", "--jwt-key", KEY, "--subscribe", "*"])
        .output()
        .unwrap();
    let token = String::from_utf8(out.stdout).unwrap();
    let grants = herald::auth::Verifier::hmac(KEY)
        .unwrap()
        .verify(token.trim())
        .unwrap();
    assert!(!grants.status);
}

#[tokio::test]
async fn in_cluster_mode_the_status_names_the_node() {
    let redis = Redis::start(&[]);
    let url = redis.url();
    let node = |id: &'static str| {
        Server::start_raw(
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--jwt-key",
                KEY,
                "--transport",
                &url,
                "--node-id",
                id,
            ],
            &[],
        )
    };
    let a = node("node-a");
    let b = node("node-b");
    let mut status = Sub::open(&format!("{}/ui/stream", b.base), "", SubOpts::default()).await;
    assert_eq!(status.status, 200);
    let first = next_status(&mut status, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(first["node"], "node-b", "{first:#}");
    let cluster = &first["cluster"];
    assert_eq!(cluster["node_id"], "node-b", "{first:#}");
    let nodes = cluster["nodes"].as_array().unwrap();
    assert_eq!(nodes[0]["id"], "node-b", "this node first: {first:#}");
    assert_eq!(nodes[0]["this_node"], true);
    assert!(first["history_backend"]
        .as_str()
        .unwrap()
        .starts_with("memory"));

    // Published through the other node, applied (and counted) here.
    let id = publish(
        &a.hub(),
        &[("topic", "https://example.com/c"), ("data", "x")],
    )
    .await;
    let v = status_until(&mut status, "the update applied", |v| {
        v["published_total"] == 1 && v["cluster"]["applied_total"].as_u64() >= Some(1)
    })
    .await;
    assert_eq!(v["history"]["newest_id"], id.as_str(), "{v:#}");
    assert_eq!(v["cluster"]["nodes"][0]["caught_up"], true, "{v:#}");
    assert_eq!(v["ready"], true);
    // Every node says it is alive: node b lists node a too (its state is
    // on node a's own page).
    let v = status_until(&mut status, "node a listed", |v| {
        v["cluster"]["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n["id"] == "node-a"))
    })
    .await;
    let other = v["cluster"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "node-a")
        .unwrap()
        .clone();
    assert_eq!(other["this_node"], false);
    assert!(other["caught_up"].is_null(), "{v:#}");
    drop(a);
}
