//! Cluster mode against real parts: `redis-server` processes started on free
//! ports, several `herald serve --transport redis://...` nodes on loopback.
//! Publish on any node, receive on every node, resume on any node; Redis
//! down, restarted, flushed or misconfigured; entries that are not updates.
//!
//! Needs `redis-server` on PATH (the test command installs it).

mod common;

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::nginx::Nginx;
use common::redis::{free_port, Redis};
use common::*;

/// The tests of this file each run a Redis and several nodes (some an
/// nginx too): one at a time, so a loaded 2-core machine does not starve
/// them into timeouts.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn node(redis: &Redis, extra: &[&str]) -> Server {
    node_on(&[redis], 1, extra)
}

/// A node whose log is `partitions` partitions over `redis` (in order).
fn node_on(redis: &[&Redis], partitions: usize, extra: &[&str]) -> Server {
    let transport = redis.iter().map(|r| r.url()).collect::<Vec<_>>().join(",");
    let partitions = partitions.to_string();
    let mut more = vec!["--redis-partitions", partitions.as_str()];
    more.extend_from_slice(extra);
    node_at(&transport, &more)
}

/// `herald serve` arguments for a node on `transport`.
fn serve_args(transport: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--jwt-key",
        KEY,
        "--transport",
        transport,
    ];
    args.extend_from_slice(extra);
    args.into_iter().map(String::from).collect()
}

/// Run `herald serve` on `transport`, which must refuse to start: its
/// error output.
fn refused_to_start(transport: &str, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(serve_args(transport, extra))
        .stdin(Stdio::null())
        .output()
        .expect("run herald");
    assert!(!out.status.success(), "herald must refuse to start");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn node_at(transport: &str, extra: &[&str]) -> Server {
    let args = serve_args(transport, extra);
    Server::start_raw(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[])
}

/// An anonymous subscriber gets exactly `public`, in order, and nothing
/// private after it.
async fn gets_only(sub: &mut Sub, public: &[&String]) {
    for id in public {
        assert_eq!(&&sub.next().await.id, id, "only public updates");
    }
    assert!(
        sub.next_within(Duration::from_millis(300)).await.is_none(),
        "nothing private leaks to an anonymous subscriber"
    );
}

/// The topics the multi-topic tests publish to: enough that four
/// partitions over two Redis all get some (checked where it matters).
const SPREAD: usize = 8;

fn spread_topic(prefix: &str, i: usize) -> String {
    format!("{prefix}/{}", i % SPREAD)
}

fn spread_query(prefix: &str) -> String {
    (0..SPREAD)
        .map(|i| format!("topic={}", spread_topic(prefix, i)))
        .collect::<Vec<_>>()
        .join("&")
}

async fn ready(base: &str) -> (u16, String) {
    match reqwest::get(format!("{base}/readyz")).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// Wait until `/readyz` answers `status` (the node caught up, or noticed a
/// fault).
async fn wait_ready(base: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (got, body) = ready(base).await;
        if got == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{base}/readyz: wanted {status}, still {got} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn private_reader(topic: &str) -> String {
    token(&[], &[topic])
}

#[tokio::test]
async fn three_nodes_act_as_one_hub() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start(&[]);
    let nodes = [node(&redis, &[]), node(&redis, &[]), node(&redis, &[])];
    for n in &nodes {
        wait_ready(&n.base, 200).await;
    }
    let reader = private_reader("chat/1");
    let opts = || SubOpts {
        token: Some(&reader),
        ..Default::default()
    };
    let mut on_b = Sub::open(&nodes[1].hub(), "topic=chat/1", opts()).await;
    let mut on_c = Sub::open(&nodes[2].hub(), "topic=chat/1", opts()).await;
    let mut anonymous_on_c = Sub::ok(&nodes[2].hub(), "topic=chat/1").await;
    assert_eq!((on_b.status, on_c.status), (200, 200));

    let mut expected = Vec::new();
    let mut public = Vec::new();
    for i in 0..40 {
        let private = i % 3 == 0;
        let mut fields = vec![("topic", "chat/1"), ("data", "")];
        let data = format!("m{i}");
        fields[1].1 = &data;
        if private {
            fields.push(("private", "on"));
        }
        // Published round-robin through every node.
        let id = publish(&nodes[i % 3].hub(), &fields).await;
        expected.push((id.clone(), data.clone()));
        if !private {
            public.push((id, data));
        }
    }
    for sub in [&mut on_b, &mut on_c] {
        for (id, data) in &expected {
            let ev = sub.next().await;
            assert_eq!(
                (&ev.id, &ev.data),
                (id, data),
                "every update once, in order"
            );
        }
    }
    gets_only(
        &mut anonymous_on_c,
        &public.iter().map(|(id, _)| id).collect::<Vec<_>>(),
    )
    .await;
    // A replay of everything on yet another node: the same sequence, and
    // the same privacy.
    let mut replay_a = Sub::open(
        &nodes[0].hub(),
        "topic=chat/1&last_event_id=earliest",
        opts(),
    )
    .await;
    for (id, _) in &expected {
        assert_eq!(&replay_a.next().await.id, id);
    }
    let mut anonymous_replay =
        Sub::ok(&nodes[0].hub(), "topic=chat/1&last_event_id=earliest").await;
    for (id, _) in &public {
        assert_eq!(&anonymous_replay.next().await.id, id);
    }

    // Ids are unique cluster-wide: the same id through another node is 409.
    let (status, _) = publish_raw(&nodes[0].hub(), Some(&publisher()), "topic=t&id=once").await;
    assert_eq!(status, 200);
    let (status, body) = publish_raw(&nodes[2].hub(), Some(&publisher()), "topic=t&id=once").await;
    assert_eq!(status, 409, "{body}");

    // A batch through one node arrives whole and in order on the others.
    let lines: Vec<String> = (0..25)
        .map(|i| serde_json::json!({"topic": "chat/1", "data": format!("b{i}")}).to_string())
        .collect();
    let resp = reqwest::Client::new()
        .post(format!("{}/batch", nodes[2].hub()))
        .bearer_auth(publisher())
        .header("content-type", "application/x-ndjson")
        .body(lines.join("\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ids: Vec<String> = resp
        .text()
        .await
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(ids.len(), 25);
    for (i, id) in ids.iter().enumerate() {
        let ev = on_b.next().await;
        assert_eq!((&ev.id, ev.data.as_str()), (id, &*format!("b{i}")));
    }
    assert_eq!(
        metric(&nodes[1].base, "herald_cluster_bad_entries_total").await,
        0
    );
}

#[tokio::test]
async fn a_subscriber_resumes_on_any_node_without_gap_or_duplicate() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start(&[]);
    let nodes = [node(&redis, &[]), node(&redis, &[]), node(&redis, &[])];
    for n in &nodes {
        wait_ready(&n.base, 200).await;
    }
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            publish(
                &nodes[0].hub(),
                &[("topic", "r"), ("data", &format!("m{i}"))],
            )
            .await,
        );
    }
    // Resume on node 2 from the 4th: exactly 5..10, then live.
    let mut sub = Sub::open(
        &nodes[1].hub(),
        "topic=r",
        SubOpts {
            last_event_id: Some(&ids[3]),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        sub.header("mercure-last-event-id").as_deref(),
        Some(ids[3].as_str())
    );
    for (i, id) in ids.iter().enumerate().skip(4) {
        let ev = sub.next().await;
        assert_eq!((&ev.id, ev.data.as_str()), (id, &*format!("m{i}")));
    }
    let live = publish(&nodes[2].hub(), &[("topic", "r"), ("data", "live")]).await;
    assert_eq!(sub.next().await.id, live);

    // Published through one node and resumed from at once on a node that
    // lags 300 ms behind the log: it holds the subscriber until it has
    // applied that id, then resumes from it (never "earliest", never a
    // replay of everything).
    let url = redis.url();
    let lagging = Server::start_raw(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--jwt-key",
            KEY,
            "--transport",
            &url,
        ],
        &[("HERALD_CLUSTER_APPLY_DELAY_MS", "300")],
    );
    wait_ready(&lagging.base, 200).await;
    for round in 0..5 {
        let id = publish(&nodes[0].hub(), &[("topic", "r"), ("data", "fresh")]).await;
        let mut s = Sub::open(
            &lagging.hub(),
            "topic=r",
            SubOpts {
                last_event_id: Some(&id),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(
            s.header("mercure-last-event-id").as_deref(),
            Some(id.as_str()),
            "round {round}"
        );
        let next = publish(&nodes[1].hub(), &[("topic", "r"), ("data", "after")]).await;
        assert_eq!(s.next().await.id, next, "round {round}");
    }
}

#[tokio::test]
async fn redis_down_answers_503_then_recovers_losing_nothing_acknowledged() {
    let _serial = SERIAL.lock().await;
    let mut redis = Redis::start(&["--appendonly", "yes", "--appendfsync", "always"]);
    let a = node(&redis, &["--heartbeat", "200ms"]);
    let b = node(&redis, &["--heartbeat", "200ms"]);
    wait_ready(&a.base, 200).await;
    wait_ready(&b.base, 200).await;
    let mut sub = Sub::ok(&b.hub(), "topic=d").await;
    let before = publish(&a.hub(), &[("topic", "d"), ("data", "before")]).await;
    assert_eq!(sub.next().await.id, before);

    redis.stop();
    let started = Instant::now();
    let (status, body) = publish_raw(&a.hub(), Some(&publisher()), "topic=d&data=lost").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("Redis"), "names the cause: {body}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered within a bounded time ({:?})",
        started.elapsed()
    );
    wait_ready(&b.base, 503).await;
    let (_, why) = ready(&b.base).await;
    assert!(why.contains("Redis"), "{why}");
    // Subscribers stay connected and keep getting keep-alives.
    let comments = sub.comments();
    assert!(sub.next_within(Duration::from_millis(800)).await.is_none());
    assert!(sub.comments() > comments, "keep-alives while Redis is down");

    redis.launch();
    wait_ready(&a.base, 200).await;
    wait_ready(&b.base, 200).await;
    // The tail resumes where it was: the next update arrives once, and the
    // acknowledged one before the outage is still in the log (AOF).
    let after = publish(&a.hub(), &[("topic", "d"), ("data", "after")]).await;
    let ev = sub.next().await;
    assert_eq!(
        (ev.id.as_str(), ev.data.as_str()),
        (after.as_str(), "after")
    );
    let c = node(&redis, &[]);
    wait_ready(&c.base, 200).await;
    let mut replay = Sub::ok(&c.hub(), "topic=d&last_event_id=earliest").await;
    assert_eq!(replay.next().await.id, before);
    assert_eq!(replay.next().await.id, after);
    assert!(replay
        .next_within(Duration::from_millis(300))
        .await
        .is_none());
}

#[tokio::test]
async fn a_flushed_log_makes_old_resume_points_answer_earliest() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start(&[]);
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    wait_ready(&a.base, 200).await;
    wait_ready(&b.base, 200).await;
    let old = publish(&a.hub(), &[("topic", "f"), ("data", "old")]).await;
    // Resuming from it makes node b hold the request until it has applied
    // "old": the watcher then sees only what comes after.
    let mut watch = Sub::open(
        &b.hub(),
        "topic=f",
        SubOpts {
            last_event_id: Some(&old),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(watch.status, 200);
    assert!(redis.cmd(&["FLUSHALL"]).contains("OK"));
    // Noticed while idle (the log's counter went back), not only when the
    // next entry arrives.
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&b.base, "herald_cluster_resets_total").await == 0 {
        assert!(Instant::now() < deadline, "node b noticed the reset");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let new = publish(&a.hub(), &[("topic", "f"), ("data", "new")]).await;
    assert_eq!(watch.next().await.id, new, "live delivery goes on");
    assert_eq!(metric(&b.base, "herald_cluster_resets_total").await, 1);
    let sub = Sub::open(
        &b.hub(),
        "topic=f",
        SubOpts {
            last_event_id: Some(&old),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        sub.header("mercure-last-event-id").as_deref(),
        Some("earliest")
    );
}

#[tokio::test]
async fn entries_that_are_not_updates_are_skipped_and_counted() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start(&[]);
    let a = node(&redis, &[]);
    wait_ready(&a.base, 200).await;
    let mut sub = Sub::ok(&a.hub(), "topic=g").await;
    let reply = redis.cmd(&["XADD", "herald:{p0}:log", "*", "junk", "\u{1}\u{2}"]);
    assert!(reply.starts_with('$'), "{reply}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&a.base, "herald_cluster_bad_entries_total").await == 0 {
        assert!(Instant::now() < deadline, "the bad entry is counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = publish(&a.hub(), &[("topic", "g"), ("data", "fine")]).await;
    assert_eq!(sub.next().await.id, id, "the node carries on");
    // An entry that takes a counter value but whose record is not one this
    // node reads (a newer version, say): skipped, and not mistaken for a
    // gap in the log.
    let n = redis.cmd(&["INCR", "herald:{p0}:n"]);
    let n = n.trim().trim_start_matches(':').to_string();
    let reply = redis.cmd(&["XADD", "herald:{p0}:log", "*", "n", &n, "r", "not a record"]);
    assert!(reply.starts_with('$'), "{reply}");
    let next = publish(&a.hub(), &[("topic", "g"), ("data", "after")]).await;
    assert_eq!(sub.next().await.id, next);
    assert_eq!(metric(&a.base, "herald_cluster_bad_entries_total").await, 2);
    assert_eq!(metric(&a.base, "herald_cluster_resets_total").await, 0);
    assert_eq!(ready(&a.base).await.0, 200);
}

#[test]
fn a_redis_that_may_evict_is_refused_by_name() {
    let redis = Redis::start(&["--maxmemory-policy", "allkeys-lru"]);
    let err = refused_to_start(&redis.url(), &[]);
    assert!(err.contains("maxmemory-policy"), "{err}");
    assert!(err.contains("allkeys-lru"), "{err}");
    assert!(err.contains("noeviction"), "{err}");
}

#[test]
fn an_unreachable_redis_at_startup_is_a_clear_error() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let err = refused_to_start(&url, &[]);
    assert!(err.contains(&url), "{err}");
}

#[tokio::test]
async fn subscribers_of_a_killed_node_resume_on_another_exactly_once() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start(&[]);
    killed_node_resumes(&[&redis], 1).await;
}

#[tokio::test]
async fn with_four_partitions_on_two_redis_a_killed_nodes_subscribers_resume_exactly_once() {
    let _serial = SERIAL.lock().await;
    let (r1, r2) = (Redis::start(&[]), Redis::start(&[]));
    killed_node_resumes(&[&r1, &r2], 4).await;
}

/// Subscribers (to topics in every partition) of a node killed with
/// SIGKILL resume on another node: every update once, in log order.
async fn killed_node_resumes(redis: &[&Redis], partitions: usize) {
    let mut a = node_on(redis, partitions, &[]);
    let b = node_on(redis, partitions, &[]);
    let c = node_on(redis, partitions, &[]);
    for n in [&a, &b, &c] {
        wait_ready(&n.base, 200).await;
    }
    let query = spread_query("k");
    let mut on_a = Sub::ok(&a.hub(), &query).await;
    // Publishes flow through node b the whole time.
    let hub_b = b.hub();
    let publisher = tokio::spawn(async move {
        let mut ids = Vec::new();
        for i in 0..200 {
            let topic = spread_topic("k", i);
            ids.push(publish(&hub_b, &[("topic", &topic), ("data", &format!("m{i}"))]).await);
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        ids
    });
    let mut got: Vec<String> = Vec::new();
    while got.len() < 50 {
        got.push(on_a.next().await.id);
    }
    let _ = a.child.kill(); // SIGKILL
    let _ = a.child.wait();
    // Drain whatever node a managed to send before it died.
    while let Some(ev) = on_a.next_within(Duration::from_millis(500)).await {
        got.push(ev.id);
    }
    let last = got.last().unwrap().clone();
    let mut on_c = Sub::open(
        &c.hub(),
        &query,
        SubOpts {
            last_event_id: Some(&last),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        on_c.header("mercure-last-event-id").as_deref(),
        Some(last.as_str())
    );
    let ids = publisher.await.unwrap();
    while got.len() < ids.len() {
        match on_c.next_within(Duration::from_secs(10)).await {
            Some(ev) => got.push(ev.id),
            None => break,
        }
    }
    assert_eq!(
        got, ids,
        "every update exactly once, in order, across the move"
    );
}

/// Through a load balancer, subscribers that keep reconnecting land on
/// whichever node is next and still see every update once, in log order.
#[tokio::test]
async fn behind_nginx_reconnecting_clients_see_no_gap_and_no_duplicate() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start(&[]);
    hopping_behind_nginx(&[&redis], 1).await;
}

#[tokio::test]
async fn with_four_partitions_on_two_redis_reconnecting_clients_see_no_gap_and_no_duplicate() {
    let _serial = SERIAL.lock().await;
    let (r1, r2) = (Redis::start(&[]), Redis::start(&[]));
    hopping_behind_nginx(&[&r1, &r2], 4).await;
    // Both Redis carried part of the log.
    for r in [&r1, &r2] {
        let keys = r.cmd(&[
            "EXISTS",
            "herald:{p0}:log",
            "herald:{p1}:log",
            "herald:{p2}:log",
            "herald:{p3}:log",
        ]);
        assert_eq!(keys.trim(), ":2", "two partitions on each Redis");
    }
}

/// 10,000 updates over topics in every partition, published through the
/// balancer; clients that keep reconnecting through it see the reference
/// subscriber's sequence exactly.
async fn hopping_behind_nginx(redis: &[&Redis], partitions: usize) {
    const UPDATES: usize = 10_000;
    let nodes = [
        node_on(redis, partitions, &[]),
        node_on(redis, partitions, &[]),
        node_on(redis, partitions, &[]),
    ];
    for n in &nodes {
        wait_ready(&n.base, 200).await;
    }
    let lb = Nginx::start(&[&nodes[0].base, &nodes[1].base, &nodes[2].base]);
    let query = spread_query("lb");
    // The reference: one subscriber that never moves.
    let mut reference = Sub::ok(&nodes[0].hub(), &query).await;

    let publishers: Vec<_> = (0..8)
        .map(|w| {
            let hub = lb.hub();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in (w..UPDATES).step_by(8) {
                    let topic = spread_topic("lb", i / 8);
                    ids.push(publish(&hub, &[("topic", &topic), ("data", &format!("u{i}"))]).await);
                }
                ids
            })
        })
        .collect();
    let hoppers: Vec<_> = (0..3)
        .map(|h| {
            let hub = lb.hub();
            let query = query.clone();
            tokio::spawn(async move {
                let mut got: Vec<String> = Vec::new();
                let mut hops = 0;
                // Generous: the test command runs this beside other test
                // binaries on two cores (scripts/run-tests.sh); a client
                // that gets everything stops long before.
                let deadline = Instant::now() + Duration::from_secs(240);
                while got.len() < UPDATES && Instant::now() < deadline {
                    // The first connection may come after publishing
                    // started: it asks for everything from the start.
                    let last = got.last().cloned();
                    let mut sub = Sub::open(
                        &hub,
                        &query,
                        SubOpts {
                            last_event_id: Some(last.as_deref().unwrap_or("earliest")),
                            ..Default::default()
                        },
                    )
                    .await;
                    assert_eq!(sub.status, 200);
                    hops += 1;
                    // Read a while, then drop the connection and come back
                    // through the balancer (another node, mostly).
                    let take = 300 + (h * 211 + hops * 97) % 700;
                    for _ in 0..take {
                        match sub.next_within(Duration::from_secs(5)).await {
                            Some(ev) => got.push(ev.id),
                            None => break,
                        }
                        if got.len() == UPDATES {
                            break;
                        }
                    }
                }
                (got, hops)
            })
        })
        .collect();

    let mut published = std::collections::HashSet::new();
    for p in publishers {
        published.extend(p.await.unwrap());
    }
    assert_eq!(published.len(), UPDATES);
    let mut order = Vec::with_capacity(UPDATES);
    while order.len() < UPDATES {
        order.push(reference.next().await.id);
    }
    let seen: std::collections::HashSet<_> = order.iter().cloned().collect();
    assert_eq!(
        seen, published,
        "the reference saw every published update once"
    );
    for h in hoppers {
        let (got, hops) = h.await.unwrap();
        assert!(
            hops >= 10,
            "clients moved between nodes ({hops} connections)"
        );
        if got != order {
            let first = got
                .iter()
                .zip(&order)
                .position(|(a, b)| a != b)
                .unwrap_or(got.len().min(order.len()));
            panic!(
                "a reconnecting client saw a gap, a duplicate or another order: {} received, \
                 first difference at {first} (got {:?}, log order {:?}), {hops} connections",
                got.len(),
                got.get(first),
                order.get(first)
            );
        }
    }
}

async fn list_subscriptions(base: &str, admin: &str) -> Vec<serde_json::Value> {
    let list: serde_json::Value = reqwest::Client::new()
        .get(format!("{base}/.well-known/mercure/subscriptions"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list["subscriptions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn has_match(list: &[serde_json::Value], topic: &str, active: bool) -> bool {
    list.iter()
        .any(|d| d["match"] == topic && d["active"] == active)
}

#[tokio::test]
async fn the_subscriptions_api_and_events_answer_for_the_whole_cluster() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start(&[]);
    let a = node(&redis, &["--subscriptions"]);
    let mut b = node(&redis, &["--subscriptions"]);
    wait_ready(&a.base, 200).await;
    wait_ready(&b.base, 200).await;
    let admin = token(&[], &["/.well-known/mercure/subscriptions{/a}{/b}{/c}"]);
    // A watcher of subscription events on node a.
    let mut watcher = Sub::open(
        &a.hub(),
        &format!(
            "match_urlpattern={}",
            enc("/.well-known/mercure/subscriptions/*")
        ),
        SubOpts {
            token: Some(&admin),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(watcher.status, 200);
    // A subscriber on node b...
    let topic = "https://example.com/rooms/7";
    let on_b = Sub::ok(&b.hub(), &format!("match={}", enc(topic))).await;
    // ...is announced on node a (events travel through the log)...
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ev = watcher
            .next_within(deadline.saturating_duration_since(Instant::now()))
            .await
            .expect("a subscription event from node b");
        let doc: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
        if doc["match"] == topic {
            assert_eq!(doc["active"], true);
            break;
        }
    }
    // ...and listed by node a's subscriptions API.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !has_match(&list_subscriptions(&a.base, &admin).await, topic, true) {
        assert!(
            Instant::now() < deadline,
            "node a lists node b's subscriber"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The same authorization as on one node: no token, no list.
    let denied = reqwest::get(format!("{}/.well-known/mercure/subscriptions", a.base))
        .await
        .unwrap();
    assert_eq!(denied.status().as_u16(), 401);

    // It leaves: an inactive event, and the list forgets it.
    drop(on_b);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ev = watcher
            .next_within(deadline.saturating_duration_since(Instant::now()))
            .await
            .expect("the inactive event from node b");
        let doc: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
        if doc["match"] == topic && doc["active"] == false {
            break;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while has_match(&list_subscriptions(&a.base, &admin).await, topic, true) {
        assert!(
            Instant::now() < deadline,
            "node a forgets the subscriber that left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A node that dies without saying goodbye vanishes within the TTL.
    let _held = Sub::ok(&b.hub(), &format!("match={}", enc(topic))).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !has_match(&list_subscriptions(&a.base, &admin).await, topic, true) {
        assert!(Instant::now() < deadline, "listed again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = b.child.kill();
    let _ = b.child.wait();
    let deadline = Instant::now() + Duration::from_secs(25);
    while has_match(&list_subscriptions(&a.base, &admin).await, topic, true) {
        assert!(
            Instant::now() < deadline,
            "a dead node's subscribers are gone within the presence TTL"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn a_node_that_is_behind_says_so_instead_of_resuming_wrongly() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start(&[]);
    let a = node(&redis, &[]);
    wait_ready(&a.base, 200).await;
    for i in 0..3 {
        publish(&a.hub(), &[("topic", "h"), ("data", &format!("m{i}"))]).await;
    }
    // A node that applies each page of the log 3 s late: while it reads
    // the log at start it refuses subscribers (503, Retry-After)...
    let url = redis.url();
    let slow = Server::start_raw(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--jwt-key",
            KEY,
            "--transport",
            &url,
        ],
        &[("HERALD_CLUSTER_APPLY_DELAY_MS", "3000")],
    );
    let early = Sub::open(&slow.hub(), "topic=h", SubOpts::default()).await;
    assert_eq!(early.status, 503);
    assert_eq!(early.header("retry-after").as_deref(), Some("1"));
    wait_ready(&slow.base, 200).await;
    // ...and an id it will not have within the 2 s hold is a 503 too,
    // never a resume from the wrong place.
    let id = publish(&a.hub(), &[("topic", "h"), ("data", "late")]).await;
    let held = Sub::open(
        &slow.hub(),
        "topic=h",
        SubOpts {
            last_event_id: Some(&id),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(held.status, 503);
}

async fn batch(hub: &str, lines: &[serde_json::Value]) -> (u16, String) {
    let body: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let resp = reqwest::Client::new()
        .post(format!("{hub}/batch"))
        .bearer_auth(publisher())
        .header("content-type", "application/x-ndjson")
        .body(body.join("\n"))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// `--redis-partitions 4` over two Redis: topics spread over both, yet
/// every node delivers one sequence (publish order, since each publish
/// waits for the one before), privacy holds, ids are unique across
/// partitions and Redis, a batch over both is whole and in order, and a
/// resume on any node continues exactly.
#[tokio::test]
async fn four_partitions_on_two_redis_act_as_one_hub() {
    let _serial = SERIAL.lock().await;
    let (r1, r2) = (Redis::start(&[]), Redis::start(&[]));
    let on = [&r1, &r2];
    let nodes = [
        node_on(&on, 4, &[]),
        node_on(&on, 4, &[]),
        node_on(&on, 4, &[]),
    ];
    for n in &nodes {
        wait_ready(&n.base, 200).await;
    }
    let query = spread_query("p");
    let topics: Vec<String> = (0..SPREAD).map(|i| spread_topic("p", i)).collect();
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    let reader = token(&[], &topic_refs);
    let opts = || SubOpts {
        token: Some(&reader),
        ..Default::default()
    };
    let mut on_b = Sub::open(&nodes[1].hub(), &query, opts()).await;
    let mut on_c = Sub::open(&nodes[2].hub(), &query, opts()).await;
    let mut anonymous_on_c = Sub::ok(&nodes[2].hub(), &query).await;
    assert_eq!((on_b.status, on_c.status), (200, 200));

    let mut expected = Vec::new();
    let mut public = Vec::new();
    for i in 0..64 {
        let topic = spread_topic("p", i);
        let data = format!("m{i}");
        let id = format!("chosen-{i}");
        let mut fields = vec![("topic", topic.as_str()), ("data", data.as_str())];
        // Some ids chosen by the publisher (kept on the partition of the
        // id, often on the other Redis), the others generated.
        if i % 5 == 0 {
            fields.push(("id", &id));
        }
        if i % 4 == 0 {
            fields.push(("private", "on"));
        }
        let got = publish(&nodes[i % 3].hub(), &fields).await;
        expected.push((got.clone(), data.clone()));
        if i % 4 != 0 {
            public.push(got);
        }
    }
    for sub in [&mut on_b, &mut on_c] {
        for (id, data) in &expected {
            let ev = sub.next().await;
            assert_eq!(
                (&ev.id, &ev.data),
                (id, data),
                "one sequence, publish order"
            );
        }
    }
    gets_only(&mut anonymous_on_c, &public.iter().collect::<Vec<_>>()).await;
    // Resume on node a from the middle: exactly the rest.
    let mut resumed = Sub::open(
        &nodes[0].hub(),
        &query,
        SubOpts {
            token: Some(&reader),
            last_event_id: Some(&expected[20].0),
            ..Default::default()
        },
    )
    .await;
    for (id, _) in &expected[21..] {
        assert_eq!(&resumed.next().await.id, id);
    }

    // An id is unique whatever the topic, partition or Redis.
    for i in 1..SPREAD {
        let body = format!("topic={}&id=chosen-0", spread_topic("p", i));
        let (status, text) = publish_raw(&nodes[i % 3].hub(), Some(&publisher()), &body).await;
        assert_eq!(status, 409, "{text}");
    }

    // A batch over every partition: whole, each topic in request order,
    // the same order on every node.
    let lines: Vec<serde_json::Value> = (0..24)
        .map(|i| serde_json::json!({"topic": spread_topic("p", i * 3), "data": format!("b{i}")}))
        .collect();
    let (status, text) = batch(&nodes[2].hub(), &lines).await;
    assert_eq!(status, 200, "{text}");
    let ids: Vec<&str> = text.lines().collect();
    assert_eq!(ids.len(), 24);
    let mut seen = Vec::new();
    for _ in 0..24 {
        let (b, c) = (on_b.next().await, on_c.next().await);
        assert_eq!(b.id, c.id, "one order on every node");
        seen.push(
            ids.iter()
                .position(|id| *id == b.id)
                .expect("an id of the batch"),
        );
    }
    for topic in 0..SPREAD {
        let of_topic: Vec<usize> = seen
            .iter()
            .copied()
            .filter(|i| i * 3 % SPREAD == topic)
            .collect();
        assert!(
            of_topic.windows(2).all(|w| w[0] < w[1]),
            "{topic}: {of_topic:?}"
        );
    }
    seen.sort();
    assert_eq!(
        seen,
        (0..24).collect::<Vec<_>>(),
        "every update of the batch once"
    );
    // A batch with an id already used is refused whole, wherever that id
    // and its other updates live (ids repeated within one batch are a 400
    // before the cluster is asked).
    for used in ["chosen-5", "chosen-10", "chosen-15"] {
        let mut lines: Vec<serde_json::Value> = (0..SPREAD)
            .map(|i| serde_json::json!({"topic": spread_topic("p", i), "data": "no", "id": format!("{used}-{i}")}))
            .collect();
        lines[6]["id"] = used.into();
        let (status, text) = batch(&nodes[0].hub(), &lines).await;
        assert_eq!(status, 409, "{text}");
    }
    assert!(
        on_b.next_within(Duration::from_millis(500)).await.is_none(),
        "a refused batch delivers nothing"
    );
    // The refused batches reserved nothing: their other ids are free.
    for used in ["chosen-5", "chosen-10", "chosen-15"] {
        let body = format!("topic=p/3&id={used}-3");
        let (status, text) = publish_raw(&nodes[1].hub(), Some(&publisher()), &body).await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(on_b.next().await.id, format!("{used}-3"));
    }

    for r in on {
        let keys = r.cmd(&[
            "EXISTS",
            "herald:{p0}:log",
            "herald:{p1}:log",
            "herald:{p2}:log",
            "herald:{p3}:log",
        ]);
        assert_eq!(keys.trim(), ":2", "two partitions on each Redis");
    }
    for n in &nodes {
        assert_eq!(metric(&n.base, "herald_cluster_bad_entries_total").await, 0);
    }

    // An entry that is not Herald's, last in every partition, is skipped
    // and holds nothing back.
    for p in 0..4 {
        let log = format!("herald:{{p{p}}}:log");
        on[p % 2].cmd(&["XADD", &log, "*", "junk", "x"]);
    }
    let mut after = Vec::new();
    for i in 0..SPREAD {
        after.push(
            publish(
                &nodes[0].hub(),
                &[("topic", &spread_topic("p", i)), ("data", "after junk")],
            )
            .await,
        );
    }
    for id in &after {
        let ev = on_b
            .next_within(Duration::from_secs(5))
            .await
            .expect("delivered");
        assert_eq!(&ev.id, id);
    }
    for n in &nodes {
        assert_eq!(metric(&n.base, "herald_cluster_bad_entries_total").await, 4);
    }
}

/// One Redis whose clock runs an hour ahead of the other's (a partition's
/// clock key set forward stands for it): entries of its partitions do not
/// hold the others back for an hour, and every node still applies one
/// sequence, each topic in publish order.
#[tokio::test]
async fn a_redis_clock_far_ahead_neither_stalls_delivery_nor_splits_the_order() {
    let _serial = SERIAL.lock().await;
    let (r1, r2) = (Redis::start(&[]), Redis::start(&[]));
    let on = [&r1, &r2];
    let nodes = [node_on(&on, 4, &[]), node_on(&on, 4, &[])];
    for n in &nodes {
        wait_ready(&n.base, 200).await;
    }
    let ahead = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros()
        + 3_600_000_000)
        .to_string();
    assert!(r2.cmd(&["SET", "herald:{p1}:t", &ahead]).contains("OK"));
    let query = spread_query("s");
    let mut subs = [
        Sub::ok(&nodes[0].hub(), &query).await,
        Sub::ok(&nodes[1].hub(), &query).await,
    ];
    let mut published = Vec::new();
    for i in 0..40 {
        let topic = spread_topic("s", i);
        let id = publish(&nodes[i % 2].hub(), &[("topic", &topic), ("data", "x")]).await;
        published.push((topic, id));
    }
    let mut sequences = Vec::new();
    for sub in &mut subs {
        let mut got = Vec::new();
        for _ in 0..published.len() {
            let ev = sub
                .next_within(Duration::from_secs(5))
                .await
                .expect("delivered within seconds, not an hour");
            got.push(ev.id);
        }
        sequences.push(got);
    }
    assert_eq!(sequences[0], sequences[1], "one sequence on every node");
    for i in 0..SPREAD {
        let topic = spread_topic("s", i);
        let want: Vec<&String> = published
            .iter()
            .filter(|(t, _)| *t == topic)
            .map(|(_, id)| id)
            .collect();
        let got: Vec<&String> = sequences[0].iter().filter(|id| want.contains(id)).collect();
        assert_eq!(got, want, "{topic} in publish order");
    }
}

/// One of two Redis stops: publishes to its partitions answer 503, the
/// others are accepted but (one order for every node) delivered only once
/// it is back; then everything acknowledged arrives once, in order.
#[tokio::test]
async fn with_one_of_two_redis_down_nothing_acknowledged_is_lost_or_reordered() {
    let _serial = SERIAL.lock().await;
    let aof = ["--appendonly", "yes", "--appendfsync", "always"];
    let (r1, mut r2) = (Redis::start(&aof), Redis::start(&aof));
    let a = node_on(&[&r1, &r2], 4, &[]);
    let b = node_on(&[&r1, &r2], 4, &[]);
    for n in [&a, &b] {
        wait_ready(&n.base, 200).await;
    }
    let query = spread_query("d");
    let mut sub = Sub::ok(&b.hub(), &query).await;
    let mut acked = Vec::new();
    for i in 0..16 {
        acked.push(
            publish(
                &a.hub(),
                &[("topic", &spread_topic("d", i)), ("data", "before")],
            )
            .await,
        );
    }
    r2.stop();
    wait_ready(&a.base, 503).await;
    let (mut ok, mut refused) = (0, 0);
    for i in 0..16 {
        let started = Instant::now();
        let body = format!("topic={}&data=during", spread_topic("d", i));
        let (status, text) = publish_raw(&a.hub(), Some(&publisher()), &body).await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "answered in bounded time"
        );
        match status {
            200 => {
                ok += 1;
                acked.push(text);
            }
            503 => {
                refused += 1;
                assert!(text.contains("unreachable"), "{text}");
            }
            other => panic!("{other} {text}"),
        }
    }
    assert!(ok > 0 && refused > 0, "{ok} accepted, {refused} refused");
    r2.launch();
    for n in [&a, &b] {
        wait_ready(&n.base, 200).await;
    }
    for i in 0..16 {
        acked.push(
            publish(
                &a.hub(),
                &[("topic", &spread_topic("d", i)), ("data", "after")],
            )
            .await,
        );
    }
    for id in &acked {
        match sub.next_within(Duration::from_secs(15)).await {
            Some(ev) => assert_eq!(&ev.id, id, "every acknowledged update, in order"),
            None => panic!("missing {id}"),
        }
    }
    assert!(
        sub.next_within(Duration::from_millis(300)).await.is_none(),
        "no duplicate"
    );
}

/// Every node must route topics alike: a node given another layout than
/// the cluster's is refused by name, as is a layout that cannot be.
#[tokio::test]
async fn a_node_with_another_partition_layout_is_refused() {
    let _serial = SERIAL.lock().await;
    let (r1, r2) = (Redis::start(&[]), Redis::start(&[]));
    let first = node_on(&[&r1, &r2], 4, &[]);
    wait_ready(&first.base, 200).await;
    let transport = format!("{},{}", r1.url(), r2.url());
    for (transport, partitions, says) in [
        (
            transport.as_str(),
            "2",
            "laid out as 4 partitions over 2 Redis",
        ),
        (&*r1.url(), "4", "laid out as 4 partitions over 2 Redis"),
        (transport.as_str(), "1", "fewer than the 2 Redis"),
        (transport.as_str(), "257", "out of range"),
    ] {
        let err = refused_to_start(transport, &["--redis-partitions", partitions]);
        assert!(err.contains(says), "{err}");
    }
}

/// `--redis-replicas 1`: a publish answers 200 once a replica has it; with
/// the replica gone it answers 503 within the timeout, saying so. The
/// update is in the primary's log ("maybe kept", like any 503 after the
/// write: a retry answers 409) but is not delivered while no replica has
/// it: a failover now would lose it, and no subscriber may hold its id.
/// With the replica back it is delivered without another publish, then
/// publishes answer 200 again.
#[tokio::test]
async fn a_publish_waits_for_a_redis_replica_when_asked() {
    let _serial = SERIAL.lock().await;
    let primary = Redis::start(&[]);
    let port = primary.url().rsplit(':').next().unwrap().to_string();
    let mut replica = Redis::start(&["--replicaof", "127.0.0.1", &port]);
    let synced = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let info = primary.cmd(&["INFO", "replication"]);
            let online = info.contains("state=online");
            if info.contains(&format!("connected_slaves:{want}")) && (want == "0" || online) {
                break;
            }
            assert!(Instant::now() < deadline, "replica state {want}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    synced("1");
    let a = node(
        &primary,
        &["--redis-replicas", "1", "--redis-replica-timeout", "500ms"],
    );
    wait_ready(&a.base, 200).await;
    let mut sub = Sub::ok(&a.hub(), "topic=r").await;
    let first = publish(&a.hub(), &[("topic", "r"), ("data", "kept twice")]).await;
    assert_eq!(sub.next().await.id, first);
    let on_replica = replica.cmd(&["GET", "herald:{p0}:n"]);
    assert!(
        on_replica.ends_with("\r\n1\r\n"),
        "the replica has it: {on_replica:?}"
    );

    replica.stop();
    synced("0");
    let started = Instant::now();
    let (status, text) = publish_raw(
        &a.hub(),
        Some(&publisher()),
        "topic=r&id=unconfirmed&data=x",
    )
    .await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("replicas"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let (status, _) = publish_raw(
        &a.hub(),
        Some(&publisher()),
        "topic=r&id=unconfirmed&data=x",
    )
    .await;
    assert_eq!(status, 409, "a retry with its id finds it kept");
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), sub.next())
            .await
            .is_err(),
        "not delivered while no replica has it"
    );
    // A resume meanwhile does not replay it either.
    let mut resumed = Sub::open(
        &a.hub(),
        "topic=r",
        SubOpts {
            last_event_id: Some(&first),
            ..SubOpts::default()
        },
    )
    .await;
    assert_eq!(resumed.status, 200);

    replica.launch();
    synced("1");
    assert_eq!(
        sub.next().await.id,
        "unconfirmed",
        "delivered once a replica has it, with no publish after it"
    );
    assert_eq!(resumed.next().await.id, "unconfirmed");
    let last = publish(&a.hub(), &[("topic", "r"), ("data", "kept again")]).await;
    assert_eq!(sub.next().await.id, last);
    assert_eq!(resumed.next().await.id, last);
}

/// `rediss://`: a node talks to a Redis that only speaks TLS, trusting the
/// private CA given with `--redis-tls-ca`; without it the server's
/// certificate is refused at startup, by URL.
#[tokio::test]
async fn a_cluster_over_tls_with_a_private_ca() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(d)
            .stdin(Stdio::null())
            .output()
            .expect("openssl on PATH (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=herald test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    let port = free_port();
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--tls-cert-file",
            "server.pem",
            "--tls-key-file",
            "server.key",
        ])
        .args([
            "--tls-ca-cert-file",
            "ca.pem",
            "--tls-auth-clients",
            "no",
            "--save",
            "",
        ])
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server (TLS) did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("rediss://127.0.0.1:{port}");
    let ca = d.join("ca.pem");
    let ca = ca.to_str().unwrap();
    let a = node_at(&url, &["--redis-tls-ca", ca]);
    let b = node_at(&url, &["--redis-tls-ca", ca]);
    wait_ready(&a.base, 200).await;
    wait_ready(&b.base, 200).await;
    let mut sub = Sub::ok(&b.hub(), "topic=tls").await;
    let id = publish(&a.hub(), &[("topic", "tls"), ("data", "over TLS")]).await;
    assert_eq!(sub.next().await.id, id);

    // An unknown CA is refused.
    let err = refused_to_start(&url, &[]);
    assert!(err.contains(&url), "{err}");
    drop((a, b));
    let _ = redis.kill();
    let _ = redis.wait();
}

/// The partition Herald routes `topic` to (FNV-1a of the topic, as the
/// nodes do), to aim at one partition.
fn partition_of(topic: &str, partitions: u64) -> u64 {
    topic.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    }) % partitions
}

/// A Redis flushed while one of its partitions keeps getting publishes and
/// the other gets none: both resets are noticed (the idle one by its
/// counter, checked under load too), delivery goes on, nothing that was
/// acknowledged after the flush is missing.
#[tokio::test]
async fn a_flushed_redis_under_load_is_noticed_in_every_partition() {
    let _serial = SERIAL.lock().await;
    let (r1, r2) = (Redis::start(&[]), Redis::start(&[]));
    let a = node_on(&[&r1, &r2], 4, &[]);
    let b = node_on(&[&r1, &r2], 4, &[]);
    for n in [&a, &b] {
        wait_ready(&n.base, 200).await;
    }
    // Partitions 0 and 2 live on r1.
    let busy = (0..)
        .map(|i| format!("busy/{i}"))
        .find(|t| partition_of(t, 4) == 0)
        .unwrap();
    let quiet = (0..)
        .map(|i| format!("quiet/{i}"))
        .find(|t| partition_of(t, 4) == 2)
        .unwrap();
    let query = format!("topic={busy}&topic={quiet}");
    let mut sub = Sub::ok(&b.hub(), &query).await;
    for topic in [&busy, &quiet] {
        let id = publish(&a.hub(), &[("topic", topic), ("data", "before")]).await;
        assert_eq!(sub.next().await.id, id);
    }
    let hub = a.hub();
    let topic = busy.clone();
    let publisher = tokio::spawn(async move {
        let mut ids = Vec::new();
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            let started = Instant::now();
            ids.push((
                started,
                publish(&hub, &[("topic", &topic), ("data", "during")]).await,
            ));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        ids
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(r1.cmd(&["FLUSHALL"]).contains("OK"));
    let flushed = Instant::now();
    let sent = publisher.await.unwrap();
    let ids: Vec<String> = sent.iter().map(|(_, id)| id.clone()).collect();
    let mut got = Vec::new();
    while let Some(ev) = sub.next_within(Duration::from_secs(5)).await {
        got.push(ev.id);
        if got.last() == ids.last() {
            break;
        }
    }
    assert_eq!(got.last(), ids.last(), "delivery goes on after the flush");
    // Everything published after the flush arrived once, in order (what
    // was acknowledged before it went with it: Redis lost it).
    let want: Vec<&String> = sent
        .iter()
        .filter(|(started, _)| *started > flushed)
        .map(|(_, id)| id)
        .collect();
    assert!(want.len() > 100, "{} published after the flush", want.len());
    let after: Vec<&String> = got.iter().filter(|id| want.contains(id)).collect();
    assert_eq!(
        after, want,
        "every update published after the flush, once, in order"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&b.base, "herald_cluster_resets_total").await < 2 {
        assert!(
            Instant::now() < deadline,
            "both of r1's partitions were reset"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And the quiet partition works again.
    let id = publish(&a.hub(), &[("topic", &quiet), ("data", "after")]).await;
    let ev = sub
        .next_within(Duration::from_secs(5))
        .await
        .expect("delivered");
    assert_eq!(ev.id, id);
}

/// An entry lost from the log (an unreplicated append, then a failover)
/// frees its counter, and the next update takes it. A subscriber that got
/// that next update from one node and resumes from it on a node that read
/// the lost entry (and not yet the new one) must not count that node as
/// caught up by counter: the node holds the resume until it has read the
/// update, then resumes after it, so the update is not delivered twice.
#[tokio::test]
async fn a_lost_entry_whose_counter_is_reused_does_not_repeat_an_update() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start(&[]);
    let a = node(&redis, &[]);
    let url = redis.url();
    // Node b applies each page of the log 1 s late.
    let b = Server::start_raw(
        &serve_args(&url, &[])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &[("HERALD_CLUSTER_APPLY_DELAY_MS", "1000")],
    );
    wait_ready(&a.base, 200).await;
    wait_ready(&b.base, 200).await;
    let mut watch = Sub::ok(&b.hub(), "topic=lost").await;
    let lost = publish(&a.hub(), &[("topic", "lost"), ("id", "will-be-lost")]).await;
    assert_eq!(watch.next().await.id, lost, "node b applied it");
    // The failover: the entry, its id and its counter step are gone.
    let gone = redis.cmd(&[
        "EVAL",
        "local e = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1) \
         redis.call('XDEL', KEYS[1], e[1][1]) redis.call('DECR', KEYS[2]) \
         redis.call('DEL', KEYS[3]) return 'gone'",
        "3",
        "herald:{p0}:log",
        "herald:{p0}:n",
        "herald:{p0}:id:will-be-lost",
    ]);
    assert!(gone.contains("gone"), "{gone}");
    // The next update takes the lost one's counter; a subscriber got it
    // from node a and resumes from it on node b, which has not read it.
    let next = publish(&a.hub(), &[("topic", "lost"), ("id", "takes-its-place")]).await;
    let mut resumed = Sub::open(
        &b.hub(),
        "topic=lost",
        SubOpts {
            last_event_id: Some(&next),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(resumed.status, 200);
    assert_eq!(
        resumed.header("mercure-last-event-id").as_deref(),
        Some(next.as_str()),
        "resumed exactly after the update it got"
    );
    let after = publish(&a.hub(), &[("topic", "lost"), ("data", "after")]).await;
    assert_eq!(resumed.next().await.id, after, "the update is not repeated");
}

/// An append held up on its way to Redis (a stalled link) past the point
/// where Herald answered 503 must not run later and land after updates
/// published since: Redis refuses it as late (its deadline passed), so
/// the 503 means "not published" and nothing overtakes. (Multi-threaded:
/// the proxy runs on the test's runtime while a node starts, blocking.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_held_in_a_stalled_link_does_not_land_after_later_updates() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start(&[]);
    let link = common::proxy::Link::start(common::sentinel::port_of(&redis)).await;
    let a = node_at(&format!("redis://127.0.0.1:{}", link.port), &[]);
    let b = node(&redis, &[]);
    wait_ready(&a.base, 200).await;
    wait_ready(&b.base, 200).await;
    let mut watch = Sub::ok(&b.hub(), "topic=fence").await;
    link.stall();
    let started = Instant::now();
    let (status, body) = publish_raw(
        &a.hub(),
        Some(&publisher()),
        "topic=fence&id=held&data=first",
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let later = publish(
        &b.hub(),
        &[("topic", "fence"), ("id", "later"), ("data", "second")],
    )
    .await;
    // The held call reaches Redis now, past its deadline.
    link.restore();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = publish(&b.hub(), &[("topic", "fence"), ("data", "third")]).await;
    assert_eq!(watch.next().await.id, later);
    assert_eq!(
        watch.next().await.id,
        after,
        "the held update did not land late"
    );
    // It was not published: its id is free.
    let again = publish(
        &b.hub(),
        &[("topic", "fence"), ("id", "held"), ("data", "first, again")],
    )
    .await;
    assert_eq!(again, "held");
}
