//! Redis Sentinel: a Herald cluster follows its Redis through failovers.
//!
//! Real parts: two `redis-server`s (a primary and its replica), three
//! sentinels (`redis-server --sentinel`, the same binary Debian's
//! `redis-sentinel` links to) and three Herald nodes that know only the
//! sentinels, all on loopback. Publishers on every node publish
//! continuously with `--redis-replicas 1`; the primary is killed with
//! SIGKILL and restarted once the sentinels moved (as a supervisor would),
//! then the new primary is killed the same way, then a failover is asked
//! of the sentinels (the primary is demoted and stays up). Every update that got a
//! 200 must reach the subscriber on each node once, in its publisher's
//! order, and the subscribers stay connected throughout.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis::free_port;
use common::*;

use common::sentinel::{
    port_of, primary_replica_sentinels, resp, transport, wait_named, wait_replicated, MASTER,
};

#[derive(Default)]
struct Published {
    /// Ids answered 200, in publish order, and when.
    acked: Vec<String>,
    acked_at: Vec<Instant>,
    /// When each failover began (the kill), and the first 200 after it.
    first_ok_after: Vec<Option<Instant>>,
    /// Answers other than 200, by status (0: no answer).
    refused: std::collections::BTreeMap<u16, u64>,
    /// Their reasons (the answer's first words), counted.
    reasons: std::collections::BTreeMap<String, u64>,
}

async fn publisher_loop(
    hub: String,
    node: usize,
    published: Arc<parking_lot::Mutex<Published>>,
    kills: Arc<parking_lot::Mutex<Vec<Instant>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let token = publisher();
    let mut i = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        i += 1;
        let id = format!("n{node}-{i}");
        let body = format!("topic=f/{node}&id={id}&data={i}");
        let sent = Instant::now();
        let answer = client
            .post(&hub)
            .bearer_auth(&token)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await;
        let status = answer.as_ref().map_or(0, |r| r.status().as_u16());
        let text = match answer {
            Ok(r) if status != 200 => r.text().await.unwrap_or_default(),
            _ => String::new(),
        };
        {
            let mut p = published.lock();
            if status == 200 {
                p.acked.push(id);
                p.acked_at.push(Instant::now());
                // A publish sent after a kill and answered 200: the
                // cluster took publishes again.
                let kills = kills.lock();
                while p.first_ok_after.len() < kills.len() {
                    p.first_ok_after.push(None);
                }
                for (slot, killed) in p.first_ok_after.iter_mut().zip(kills.iter()) {
                    if sent > *killed {
                        slot.get_or_insert_with(Instant::now);
                    }
                }
            } else {
                *p.refused.entry(status).or_default() += 1;
                let reason: String = text.chars().take(70).collect();
                *p.reasons.entry(reason).or_default() += 1;
            }
        }
        if status != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Read a subscription until told to stop, reconnecting (with
/// `Last-Event-ID`) only if the stream ends; returns the ids in order and
/// how many times it had to reconnect.
async fn subscriber_loop(
    hub: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (Vec<String>, u32) {
    let query = format!("topic={}", enc("f/{node}"));
    let mut ids: Vec<String> = Vec::new();
    let mut reconnects = 0;
    let mut sub = Sub::ok(&hub, &query).await;
    loop {
        match sub.next_within(Duration::from_millis(500)).await {
            Some(ev) => ids.push(ev.id),
            None if stop.load(std::sync::atomic::Ordering::Relaxed) => return (ids, reconnects),
            None => {
                if sub.ended_within(Duration::from_millis(1)).await {
                    reconnects += 1;
                    let opts = SubOpts {
                        last_event_id: ids.last().map(String::as_str),
                        ..Default::default()
                    };
                    sub = Sub::open(&hub, &query, opts).await;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_follows_three_failovers_losing_nothing_acknowledged() {
    let (mut a, mut b, sentinels) = tokio::task::block_in_place(|| primary_replica_sentinels(&[]));
    let transport = transport(&sentinels);
    let nodes: Vec<Server> = (0..3)
        .map(|i| {
            let name = format!("node{i}");
            Server::start(&[
                "--transport",
                &transport,
                "--node-id",
                &name,
                "--redis-replicas",
                "1",
                "--redis-replica-timeout",
                "500ms",
            ])
        })
        .collect();
    for n in &nodes {
        let deadline = Instant::now() + Duration::from_secs(15);
        while reqwest::get(format!("{}/readyz", n.base))
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
            != 200
        {
            assert!(Instant::now() < deadline, "{} not ready", n.base);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let stop_subs = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let subs: Vec<_> = nodes
        .iter()
        .map(|n| tokio::spawn(subscriber_loop(n.hub(), stop_subs.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stop_pubs = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let kills = Arc::new(parking_lot::Mutex::new(Vec::<Instant>::new()));
    let published: Vec<_> = (0..3)
        .map(|_| Arc::new(parking_lot::Mutex::new(Published::default())))
        .collect();
    let pubs: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            tokio::spawn(publisher_loop(
                n.hub(),
                i,
                published[i].clone(),
                kills.clone(),
                stop_pubs.clone(),
            ))
        })
        .collect();

    // Wait until every publisher's next 200 comes after the latest kill.
    let recovered = |published: &[Arc<parking_lot::Mutex<Published>>], n: usize| {
        let published = published.to_vec();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let firsts: Vec<Option<Instant>> = published
                    .iter()
                    .map(|p| p.lock().first_ok_after.get(n).copied().flatten())
                    .collect();
                if firsts.iter().all(Option::is_some) {
                    return firsts.into_iter().flatten().min().unwrap();
                }
                assert!(
                    Instant::now() < deadline,
                    "no publish answered 200 within 60 s of failover {n}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    // Failover 1: the primary (a) dies; b takes over; a comes back as
    // b's replica.
    tokio::time::sleep(Duration::from_secs(1)).await;
    kills.lock().push(Instant::now());
    let killed = Instant::now();
    a.stop();
    let b_port = port_of(&b);
    tokio::task::block_in_place(|| wait_named(&sentinels, b_port));
    let moved1 = killed.elapsed();
    a.launch();
    let first = recovered(&published, 0).await;
    let recovery1 = first - killed;
    tokio::task::block_in_place(|| wait_replicated(&b, &sentinels));
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Failover 2: back to a.
    kills.lock().push(Instant::now());
    let killed = Instant::now();
    b.stop();
    tokio::task::block_in_place(|| wait_named(&sentinels, port_of(&a)));
    let moved2 = killed.elapsed();
    b.launch();
    let first = recovered(&published, 1).await;
    let recovery2 = first - killed;
    tokio::task::block_in_place(|| wait_replicated(&a, &sentinels));
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Failover 3, asked for: the primary (a) is demoted but stays up, so
    // connections to it answer READONLY (or ROLE says replica) instead of
    // failing.
    kills.lock().push(Instant::now());
    let switched = Instant::now();
    // A sentinel still finishing the last failover answers -INPROG: ask
    // again for a while.
    let asked_until = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = resp(sentinels[0].port, &["SENTINEL", "FAILOVER", MASTER]).unwrap();
        if answer.starts_with("+OK") {
            break;
        }
        assert!(Instant::now() < asked_until, "SENTINEL FAILOVER: {answer}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::task::block_in_place(|| wait_named(&sentinels, port_of(&b)));
    recovered(&published, 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The switch is asynchronous: what it cost is the longest time any
    // publisher went without a 200 after it was asked for.
    let recovery3 = published
        .iter()
        .filter_map(|p| {
            let p = p.lock();
            let after: Vec<Instant> = p
                .acked_at
                .iter()
                .copied()
                .filter(|t| *t >= switched)
                .collect();
            std::iter::once(switched)
                .chain(after)
                .collect::<Vec<_>>()
                .windows(2)
                .map(|w| w[1] - w[0])
                .max()
        })
        .max()
        .unwrap_or_default();

    stop_pubs.store(true, std::sync::atomic::Ordering::Relaxed);
    for p in pubs {
        p.await.unwrap();
    }
    // Let the last deliveries arrive, then stop reading.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_subs.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut seen = Vec::new();
    for s in subs {
        seen.push(s.await.unwrap());
    }

    let mut resets = Vec::new();
    for n in &nodes {
        resets.push(metric(&n.base, "herald_cluster_resets_total").await);
    }
    eprintln!("log resets seen by each node (history dropped): {resets:?}");
    let acked: Vec<Vec<String>> = published.iter().map(|p| p.lock().acked.clone()).collect();
    let refused: Vec<_> = published.iter().map(|p| p.lock().refused.clone()).collect();
    let mut reasons = std::collections::BTreeMap::<String, u64>::new();
    for p in &published {
        for (r, n) in &p.lock().reasons {
            *reasons.entry(r.clone()).or_default() += n;
        }
    }
    eprintln!("refusals by reason: {reasons:#?}");
    eprintln!(
        "failover recovery (first 200 after the kill): {recovery1:?} (sentinels moved after \
         {moved1:?}), then {recovery2:?} (moved after {moved2:?}); SENTINEL FAILOVER (old \
         primary demoted, still up): longest time without a 200 {recovery3:?}; \
         acknowledged per publisher: {:?}; refused by status: {refused:?}",
        acked.iter().map(Vec::len).collect::<Vec<_>>()
    );
    for (node, (ids, reconnects)) in seen.iter().enumerate() {
        assert_eq!(*reconnects, 0, "node {node}'s subscriber was disconnected");
        for (p, acked) in acked.iter().enumerate() {
            let prefix = format!("n{p}-");
            let got: Vec<u64> = ids
                .iter()
                .filter_map(|id| id.strip_prefix(&prefix))
                .map(|n| n.parse().unwrap())
                .collect();
            assert!(
                got.windows(2).all(|w| w[0] < w[1]),
                "node {node}: publisher {p}'s updates out of order or repeated: {got:?}"
            );
            let got: std::collections::HashSet<u64> = got.into_iter().collect();
            let missing: Vec<&String> = acked
                .iter()
                .filter(|id| !got.contains(&id[prefix.len()..].parse().unwrap()))
                .collect();
            assert!(
                missing.is_empty(),
                "node {node} missed {} acknowledged updates of publisher {p}: {missing:?}",
                missing.len()
            );
        }
    }
    assert!(acked.iter().all(|a| a.len() > 50), "publishes went through");
}

/// A `redis+sentinel://` transport whose sentinels cannot be reached is a
/// clear startup error naming them, and a malformed one is refused by its
/// text.
#[test]
fn unreachable_or_malformed_sentinels_are_clear_errors() {
    let port = free_port();
    for (transport, wanted) in [
        (
            format!("redis+sentinel://127.0.0.1:{port}/{MASTER}"),
            "no sentinel named the primary".to_string(),
        ),
        (
            format!("redis+sentinel://127.0.0.1:{port}"),
            "no master name".to_string(),
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["serve", "--listen", "127.0.0.1:0", "--jwt-key", KEY])
            .args(["--transport", &transport])
            .stdin(Stdio::null())
            .output()
            .expect("run herald");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{transport}: must refuse to start");
        assert!(stderr.contains(&wanted), "{transport}: {stderr}");
    }
}

/// The sentinels name another primary while the old one stays up and no
/// connection breaks (here an operator points them at another Redis;
/// likewise a partition that healed): the nodes ask the sentinels every
/// second and move, readers and appends alike. (A failover the sentinels
/// carry out themselves also kills the old primary's client connections,
/// which makes the nodes dial again anyway.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_follow_the_primary_the_sentinels_name_without_a_broken_connection() {
    let a = common::redis::Redis::start(&[]);
    let b = common::redis::Redis::start(&[]);
    let sentinels: Vec<common::sentinel::Sentinel> = tokio::task::block_in_place(|| {
        (0..3)
            .map(|_| common::sentinel::Sentinel::start(port_of(&a)))
            .collect()
    });
    let node = Server::start(&["--transport", &transport(&sentinels)]);
    wait_ready(&node).await;
    // The node's reader blocks in XREAD on the primary.
    let deadline = Instant::now() + Duration::from_secs(10);
    while readers(&a) == 0 {
        assert!(Instant::now() < deadline, "the reader is on the primary");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b_port = port_of(&b).to_string();
    for s in &sentinels {
        let removed = resp(s.port, &["SENTINEL", "REMOVE", MASTER]);
        assert!(
            removed.as_deref().is_ok_and(|r| r.starts_with("+OK")),
            "{removed:?}"
        );
        let added = resp(
            s.port,
            &["SENTINEL", "MONITOR", MASTER, "127.0.0.1", &b_port, "2"],
        );
        assert!(
            added.as_deref().is_ok_and(|r| r.starts_with("+OK")),
            "{added:?}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while readers(&a) > 0 || readers(&b) == 0 {
        assert!(
            Instant::now() < deadline,
            "the reader left the old primary for the one the sentinels name"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Publishes go to the new primary and are delivered from it.
    let mut sub = Sub::ok(&node.hub(), "topic=moved").await;
    let id = publish(&node.hub(), &[("topic", "moved"), ("data", "after")]).await;
    assert_eq!(sub.next().await.id, id);
    assert!(
        b.try_cmd(&["XLEN", "herald:{p0}:log"])
            .unwrap_or_default()
            .contains(":1"),
        "the update is in the new primary's log"
    );
}

/// Just after a failover one node may still read the old primary while
/// another already publishes through the new one. A subscriber that got an
/// update from the second and resumes from its id on the first must not be
/// told "unknown id" and go live there: that node would deliver the update
/// again once it moves. The old primary shows what happened (it lost its
/// replica to the promotion), so the resume answers 503 until the node has
/// moved, and then resumes exactly. Before the new primary has a replica
/// of its own, what is published through it is answered 503 and not
/// delivered at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_on_a_node_still_reading_the_old_primary_waits_instead_of_repeating() {
    let a = common::redis::Redis::start(&[]);
    let a_port = port_of(&a).to_string();
    let b = common::redis::Redis::start(&["--replicaof", "127.0.0.1", &a_port]);
    // One sentinel per node, so each can be pointed on its own: X's keeps
    // naming the old primary (a node that has not noticed yet).
    let (sx, sy) = tokio::task::block_in_place(|| {
        wait_replicated(&a, &[]);
        (
            common::sentinel::Sentinel::start(port_of(&a)),
            common::sentinel::Sentinel::start(port_of(&a)),
        )
    });
    let flags = |s: &common::sentinel::Sentinel| {
        vec![
            "--transport".to_string(),
            transport(std::slice::from_ref(s)),
            "--redis-replicas".into(),
            "1".into(),
            "--redis-replica-timeout".into(),
            "300ms".into(),
        ]
    };
    let fx = flags(&sx);
    let fy = flags(&sy);
    let x = Server::start(&fx.iter().map(String::as_str).collect::<Vec<_>>());
    let y = Server::start(&fy.iter().map(String::as_str).collect::<Vec<_>>());
    for node in [&x, &y] {
        wait_ready(node).await;
    }
    // The failover, as Y sees it: B promoted, Y's sentinel names it.
    b.cmd(&["REPLICAOF", "NO", "ONE"]);
    let repoint = |s: &common::sentinel::Sentinel, to: &common::redis::Redis| {
        let to = port_of(to).to_string();
        let removed = resp(s.port, &["SENTINEL", "REMOVE", MASTER]);
        assert!(
            removed.as_deref().is_ok_and(|r| r.starts_with("+OK")),
            "{removed:?}"
        );
        let added = resp(
            s.port,
            &["SENTINEL", "MONITOR", MASTER, "127.0.0.1", &to, "1"],
        );
        assert!(
            added.as_deref().is_ok_and(|r| r.starts_with("+OK")),
            "{added:?}"
        );
    };
    repoint(&sy, &b);
    let deadline = Instant::now() + Duration::from_secs(15);
    while readers(&b) == 0 || readers(&a) < 1 {
        assert!(Instant::now() < deadline, "Y reads B, X still reads A");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Published through Y: B has no replica now, so 503 "0 of 1"; it is in
    // B's log but not delivered, for a failover now would lose it.
    let mut on_y = Sub::ok(&y.hub(), "topic=moved").await;
    let (status, _) = publish_raw(
        &y.hub(),
        Some(&publisher()),
        "topic=moved&data=unsure&id=u0",
    )
    .await;
    assert_eq!(status, 503);
    assert!(
        tokio::time::timeout(Duration::from_millis(1200), on_y.next())
            .await
            .is_err(),
        "an update no replica has is not delivered"
    );
    // B gets a replica: u0 is delivered now, and publishes answer 200.
    let b_port = port_of(&b).to_string();
    let c = common::redis::Redis::start(&["--replicaof", "127.0.0.1", &b_port]);
    tokio::task::block_in_place(|| wait_replicated(&b, &[]));
    assert_eq!(on_y.next().await.id, "u0");
    let (status, _) =
        publish_raw(&y.hub(), Some(&publisher()), "topic=moved&data=first&id=u1").await;
    assert_eq!(status, 200);
    assert_eq!(on_y.next().await.id, "u1");
    // Resumed on X, which still reads A: it cannot tell, so 503.
    let opts = || SubOpts {
        last_event_id: Some("u1"),
        ..SubOpts::default()
    };
    let early = Sub::open(&x.hub(), "topic=moved", opts()).await;
    assert_eq!(
        early.status, 503,
        "X does not know u1 yet: it must not answer as if the id did not exist"
    );
    // Once X follows its sentinel to B, the resume is exact.
    repoint(&sx, &b);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut resumed = loop {
        let s = Sub::open(&x.hub(), "topic=moved", opts()).await;
        if s.status == 200 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "X resumes once it moved: {}",
            s.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        resumed
            .headers
            .get("mercure-last-event-id")
            .map(|v| v.to_str().unwrap()),
        Some("u1"),
        "resumed exactly after u1"
    );
    let (status, _) = publish_raw(
        &y.hub(),
        Some(&publisher()),
        "topic=moved&data=second&id=u2",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(resumed.next().await.id, "u2", "u1 is not delivered again");
    drop(c);
}

/// Wait (at most 30 s) until `node` answers /readyz with 200.
async fn wait_ready(node: &Server) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{}/readyz", node.base))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        assert!(Instant::now() < deadline, "the node got ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many node readers block in XREAD on `r`.
fn readers(r: &common::redis::Redis) -> usize {
    r.try_cmd(&["CLIENT", "LIST"])
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("cmd=xread"))
        .count()
}
