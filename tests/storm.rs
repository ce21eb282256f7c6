//! A storm of faults, checked like Jepsen: three Herald nodes on Redis (a
//! primary with AOF, its replica, three sentinels), publishers and
//! subscribers that hop between nodes, and a seeded random schedule of
//! faults for a bounded time:
//!
//! - `kill -9` of a node, restarted;
//! - `SIGSTOP`/`SIGCONT` of a node (a long GC, a hung disk);
//! - `SIGSTOP`/`SIGCONT` of the Redis primary, shorter than the sentinels'
//!   `down-after-milliseconds` (a stall, no failover);
//! - a failover asked of the sentinels (the primary demoted, still up);
//! - the Redis primary killed with SIGKILL, then restarted from its AOF
//!   once the sentinels moved;
//! - subscribers that drop their stream at random points and resume with
//!   `Last-Event-ID` on a random node.
//!
//! Publishers use their own ids and hub-generated ones, on public and
//! private topics; subscribers hold different tokens. The checker then
//! holds every subscriber to this: every update that got a 200 and that it
//! may see is delivered once, in its publisher's order, and none that it
//! may not see; and after the storm every node answers `/readyz` 200.
//!
//! `HERALD_STORM_SEED` picks the schedule (printed; a failing seed replays
//! the same schedule of faults, though not the same interleaving of every
//! request); `HERALD_STORM_SECS` how long it lasts (60 by default,
//! with a fixed seed, as the test command runs it; `bench/chaos.sh [SEED]
//! MINUTES` runs long ones).
//!
//! A real nginx sits in front of the nodes: half of the subscribers and
//! one publisher go through it (it picks the node), the others pick nodes
//! themselves. Node 0 reaches Redis through a TCP proxy per Redis
//! (`--redis-nat-map` maps the addresses the sentinels give out to the
//! proxies), so its link to Redis can be cut or stalled while the other
//! nodes and the sentinels still reach Redis.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use herald::sse::SseParser;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use common::nginx::Nginx;
use common::proxy::Link;
use common::redis::{free_port, Redis};
use common::sentinel::{
    named_within, port_of, primary_replica_sentinels, replicated_within, resp, transport,
    wait_replicated, Sentinel, MASTER,
};
use common::*;

const PUBLISHERS: usize = 3;
/// How long a fault waits for the sentinels or a replica.
const WAIT: Duration = Duration::from_secs(30);
/// Every third update of a publisher is private.
const PRIVATE_EVERY: u64 = 3;

/// Whether a subscriber may see publisher k's private updates.
type MaySee = fn(usize) -> bool;

fn topic(kind: &str, publisher: usize) -> String {
    format!("https://storm.example/{kind}/{publisher}")
}

/// The nodes: each slot's current server, restarted on the same port
/// after a kill (nginx knows the ports).
struct Nodes {
    args: Vec<Vec<String>>,
    servers: Vec<Mutex<Server>>,
    bases: Vec<String>,
    /// nginx in front of the three.
    balancer: String,
}

impl Nodes {
    /// Three nodes on `transport`; `extra[i]` for node i.
    fn start(transport: &str, extra: [Vec<String>; 3]) -> (Nodes, Nginx) {
        let args: Vec<Vec<String>> = extra
            .into_iter()
            .map(|extra| {
                let port = free_port();
                let mut args: Vec<String> = [
                    "serve",
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--jwt-key",
                    KEY,
                    "--transport",
                    transport,
                    "--redis-replicas",
                    "1",
                    "--redis-replica-timeout",
                    "500ms",
                    "--heartbeat",
                    "1s",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                args.extend(extra);
                args
            })
            .collect();
        let servers: Vec<Mutex<Server>> =
            args.iter().map(|a| Mutex::new(Self::launch(a))).collect();
        let bases: Vec<String> = servers.iter().map(|s| s.lock().base.clone()).collect();
        let nginx = Nginx::start(&bases.iter().map(String::as_str).collect::<Vec<_>>());
        let nodes = Nodes {
            args,
            servers,
            bases,
            balancer: format!("http://127.0.0.1:{}", nginx.port),
        };
        (nodes, nginx)
    }

    fn launch(args: &[String]) -> Server {
        Server::start_raw(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[])
    }

    /// A node picked by the client, or nginx (`through_nginx`).
    fn any(&self, rng: &mut impl Rng, through_nginx: bool) -> String {
        if through_nginx {
            return self.balancer.clone();
        }
        self.bases[rng.gen_range(0..self.bases.len())].clone()
    }

    fn kill_and_restart(&self, i: usize) {
        let mut server = self.servers[i].lock();
        let _ = server.child.kill();
        let _ = server.child.wait();
        *server = Self::launch(&self.args[i]);
        assert_eq!(server.base, self.bases[i], "restarted on its port");
    }

    fn pid(&self, i: usize) -> u32 {
        self.servers[i].lock().child.id()
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

#[derive(Default)]
struct Acked {
    /// (publisher, sequence number, private) of every update answered 200.
    updates: Vec<(usize, u64, bool)>,
    refused: u64,
    /// Why each refused update was refused (node, status and body), and
    /// which node answered 200 for each acknowledged one, for the report
    /// of a violation.
    why: std::collections::HashMap<(usize, u64), String>,
}

async fn publisher_loop(
    k: usize,
    nodes: Arc<Nodes>,
    acked: Arc<Mutex<Acked>>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ ((k as u64 + 1) * 0x9e37));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let token = publisher();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let private = i.is_multiple_of(PRIVATE_EVERY);
        let kind = if private { "priv" } else { "pub" };
        let mut form = vec![
            ("topic".to_string(), topic(kind, k)),
            ("data".to_string(), format!("{k}:{i}")),
        ];
        // Half with their own ids, half with the hub's.
        if i.is_multiple_of(2) {
            form.push(("id".into(), format!("p{k}-{i}")));
        }
        if private {
            form.push(("private".into(), "on".into()));
        }
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&form)
            .finish();
        // The last publisher goes through nginx.
        let hub = format!(
            "{}/.well-known/mercure",
            nodes.any(&mut rng, k == PUBLISHERS - 1)
        );
        let sent = Instant::now();
        let answer = client
            .post(&hub)
            .bearer_auth(&token)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await;
        let (status, text) = match answer {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.text().await.unwrap_or_default())
            }
            Err(e) => (0, e.to_string()),
        };
        if status == 200 {
            {
                let mut a = acked.lock();
                a.updates.push((k, i, private));
                a.why
                    .insert((k, i), format!("by {hub} after {:?}", sent.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        } else {
            let why = format!(
                "{hub}: {status} after {:?}: {}",
                sent.elapsed(),
                text.trim()
            );
            {
                let mut a = acked.lock();
                a.refused += 1;
                a.why.insert((k, i), why);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What one subscriber received.
#[derive(Default)]
struct Received {
    /// (publisher, sequence number) in arrival order.
    updates: Vec<(usize, u64)>,
    /// Where each stream began: index into `updates`, the hub, the id it
    /// resumed from and what the hub answered in Mercure-Last-Event-ID.
    streams: Vec<(usize, String, String, String)>,
    resumes: u64,
    /// Sequence numbers of private updates it got although it may not see
    /// them.
    forbidden: Vec<(usize, u64)>,
}

async fn subscriber(
    name: usize,
    token: Option<String>,
    may_see: MaySee,
    nodes: Arc<Nodes>,
    received: Arc<Mutex<Received>>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ ((name as u64 + 101) * 0x51ed));
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let query = format!("topic={}", enc("https://storm.example/{kind}/{k}"));
    let mut last_id = "earliest".to_string();
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        // Every other subscriber goes through nginx.
        let hub = format!(
            "{}/.well-known/mercure?{query}",
            nodes.any(&mut rng, name.is_multiple_of(2))
        );
        let mut req = client
            .get(&hub)
            .header("accept", "text/event-stream")
            .header("last-event-id", &last_id);
        if let Some(t) = &token {
            req = req.bearer_auth(t);
        }
        let resp = match tokio::time::timeout(Duration::from_secs(5), req.send()).await {
            Ok(Ok(r)) if r.status().as_u16() == 200 => r,
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        {
            let mut r = received.lock();
            if !first {
                r.resumes += 1;
            }
            let at = r.updates.len();
            let answered = resp
                .headers()
                .get("mercure-last-event-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string();
            r.streams.push((at, hub.clone(), last_id.clone(), answered));
        }
        first = false;
        let mut body = resp.bytes_stream();
        let mut parser = SseParser::new();
        // Drop the stream at a random point: a client that goes away.
        let drop_at = Instant::now() + Duration::from_millis(rng.gen_range(1_000..6_000));
        'stream: while !stop.load(Ordering::Relaxed) && Instant::now() < drop_at {
            let chunk = match tokio::time::timeout(Duration::from_millis(300), body.next()).await {
                Err(_) => continue,
                Ok(Some(Ok(chunk))) => chunk,
                Ok(_) => break 'stream,
            };
            for ev in parser.feed(&chunk) {
                let Some((k, i)) = ev.data.split_once(':') else {
                    continue;
                };
                let (k, i): (usize, u64) = (k.parse().unwrap(), i.parse().unwrap());
                let mut r = received.lock();
                if i.is_multiple_of(PRIVATE_EVERY) && !may_see(k) {
                    r.forbidden.push((k, i));
                }
                r.updates.push((k, i));
                last_id = ev.id.clone();
            }
        }
    }
}

/// The Redis that the sentinels name as primary, and the other.
fn roles<'a>(
    sentinels: &[Sentinel],
    a: &'a mut Redis,
    b: &'a mut Redis,
) -> (&'a mut Redis, &'a mut Redis) {
    let primary = sentinels[0].primary();
    if primary == Some(port_of(a)) {
        (a, b)
    } else {
        (b, a)
    }
}

/// In the test command: 60 s with a fixed seed. A 30-minute run once
/// found a subscriber that got one update twice (seed 3004304987): a lost
/// entry's counter value taken by the next update; fixed in
/// src/cluster/positions.rs (see docs/cluster.md, "A storm of faults").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_faults_loses_nothing_and_shows_nobody_what_is_not_theirs() {
    let seed: u64 = std::env::var("HERALD_STORM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        // The test command runs one fixed schedule; bench/chaos.sh draws
        // new ones.
        .unwrap_or(20_261_205);
    let secs: u64 = std::env::var("HERALD_STORM_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    eprintln!("storm: seed {seed}, {secs} s (HERALD_STORM_SEED={seed} reproduces the schedule)");
    let mut rng = StdRng::seed_from_u64(seed);

    let (mut a, mut b, sentinels) = tokio::task::block_in_place(|| {
        primary_replica_sentinels(&["--appendonly", "yes", "--appendfsync", "always"])
    });
    let transport = transport(&sentinels);
    // Node 0 reaches each Redis through a link that the storm cuts and
    // stalls.
    let links = [
        Link::start(port_of(&a)).await,
        Link::start(port_of(&b)).await,
    ];
    let nat_map = format!(
        "127.0.0.1:{}=127.0.0.1:{},127.0.0.1:{}=127.0.0.1:{}",
        port_of(&a),
        links[0].port,
        port_of(&b),
        links[1].port
    );
    let (nodes, _nginx) = Nodes::start(
        &transport,
        [vec!["--redis-nat-map".to_string(), nat_map], vec![], vec![]],
    );
    let nodes = Arc::new(nodes);
    wait_all_ready(&nodes).await;

    // Subscribers and what each may see of the private updates.
    fn only_0(k: usize) -> bool {
        k == 0
    }
    fn one_and_two(k: usize) -> bool {
        k == 1 || k == 2
    }
    fn none(_: usize) -> bool {
        false
    }
    fn all(_: usize) -> bool {
        true
    }
    let priv_0 = token(&[], &[&topic("priv", 0)]);
    let priv_12 = token(&[], &[&topic("priv", 1), &topic("priv", 2)]);
    let every = token(&[], &["*"]);
    let subscribers: Vec<(Option<String>, MaySee)> = vec![
        (Some(priv_0), only_0),
        (Some(priv_12), one_and_two),
        (None, none),
        (Some(every), all),
    ];
    let stop_subs = Arc::new(AtomicBool::new(false));
    let mut received = Vec::new();
    let mut sub_tasks = Vec::new();
    for (n, (token, may_see)) in subscribers.iter().cloned().enumerate() {
        let r = Arc::new(Mutex::new(Received::default()));
        received.push((r.clone(), may_see));
        sub_tasks.push(tokio::spawn(subscriber(
            n,
            token,
            may_see,
            nodes.clone(),
            r,
            stop_subs.clone(),
            seed,
        )));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stop_pubs = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Acked::default()));
    let pub_tasks: Vec<_> = (0..PUBLISHERS)
        .map(|k| {
            tokio::spawn(publisher_loop(
                k,
                nodes.clone(),
                acked.clone(),
                stop_pubs.clone(),
                seed,
            ))
        })
        .collect();

    // The schedule.
    let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(500..2_500))).await;
        let fault = rng.gen_range(0..7);
        let node = rng.gen_range(0..3);
        let name = match fault {
            0 => {
                let nodes = nodes.clone();
                tokio::task::spawn_blocking(move || nodes.kill_and_restart(node))
                    .await
                    .unwrap();
                "node killed (-9) and restarted"
            }
            1 => {
                let pid = nodes.pid(node);
                signal(pid, "STOP");
                tokio::time::sleep(Duration::from_millis(rng.gen_range(200..2_000))).await;
                signal(pid, "CONT");
                "node stopped (SIGSTOP) and continued"
            }
            2 => {
                let (primary, _) = roles(&sentinels, &mut a, &mut b);
                let pid = primary.pid().unwrap();
                signal(pid, "STOP");
                tokio::time::sleep(Duration::from_millis(rng.gen_range(100..600))).await;
                signal(pid, "CONT");
                "Redis primary stalled (SIGSTOP) and continued"
            }
            3 => {
                let (primary, replica) = roles(&sentinels, &mut a, &mut b);
                let new = port_of(replica);
                // The sentinels may refuse (-INPROG, -NOGOODSLAVE) or not
                // finish: a fault of its own, counted by what happened.
                tokio::task::block_in_place(|| {
                    if replicated_within(primary, &sentinels, WAIT).is_some() {
                        return "failover not asked: the replica was not online";
                    }
                    let answer = resp(sentinels[0].port, &["SENTINEL", "FAILOVER", MASTER]);
                    if !answer.as_deref().is_ok_and(|a| a.starts_with("+OK")) {
                        return "failover asked, refused by the sentinels";
                    }
                    if named_within(&sentinels, new, WAIT) {
                        "failover asked of the sentinels"
                    } else {
                        "failover asked, not carried out within 30 s"
                    }
                })
            }
            4 => {
                links.iter().for_each(Link::cut);
                tokio::time::sleep(Duration::from_millis(rng.gen_range(300..4_000))).await;
                links.iter().for_each(Link::restore);
                "node 0's link to Redis cut, then restored"
            }
            5 => {
                links.iter().for_each(Link::stall);
                tokio::time::sleep(Duration::from_millis(rng.gen_range(200..2_000))).await;
                links.iter().for_each(Link::restore);
                "node 0's link to Redis stalled, then restored"
            }
            _ => {
                let (primary, replica) = roles(&sentinels, &mut a, &mut b);
                tokio::task::block_in_place(|| {
                    if replicated_within(primary, &sentinels, WAIT).is_some() {
                        return "primary not killed: the replica was not online";
                    }
                    primary.stop();
                    let moved = named_within(&sentinels, port_of(replica), WAIT);
                    // A supervisor restarts it (from its AOF; a replica
                    // once the sentinels tell it), failover or not.
                    primary.launch();
                    if moved {
                        "Redis primary killed (-9), restarted from its AOF after the failover"
                    } else {
                        "Redis primary killed (-9), restarted from its AOF (no failover within 30 s)"
                    }
                })
            }
        };
        *faults.entry(name).or_default() += 1;
    }

    // After the storm: every node converges.
    tokio::task::block_in_place(|| {
        let (primary, _) = roles(&sentinels, &mut a, &mut b);
        wait_replicated(primary, &sentinels);
    });
    wait_all_ready(&nodes).await;
    stop_pubs.store(true, Ordering::Relaxed);
    for t in pub_tasks {
        t.await.unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock());
    // Every subscriber catches up (or the deadline says what it missed).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let behind = received.iter().any(|(r, may_see)| {
            let got: HashSet<(usize, u64)> = r.lock().updates.iter().copied().collect();
            acked
                .updates
                .iter()
                .any(|&(k, i, private)| (!private || may_see(k)) && !got.contains(&(k, i)))
        });
        if !behind || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_subs.store(true, Ordering::Relaxed);
    for t in sub_tasks {
        t.await.unwrap();
    }

    let mut checked = 0u64;
    let mut resumes = 0u64;
    for (n, (r, may_see)) in received.iter().enumerate() {
        let r = r.lock();
        resumes += r.resumes;
        assert!(
            r.forbidden.is_empty(),
            "seed {seed}: subscriber {n} got private updates it may not see: {:?}",
            r.forbidden
        );
        for k in 0..PUBLISHERS {
            let got: Vec<u64> = r
                .updates
                .iter()
                .filter(|(p, _)| *p == k)
                .map(|(_, i)| *i)
                .collect();
            for w in got.windows(2) {
                if w[0] >= w[1] {
                    eprintln!("{}", report(&r, &acked, k, w[1], w[0]));
                }
                assert!(
                    w[0] < w[1],
                    "seed {seed}: subscriber {n}, publisher {k}: {} after {} (a duplicate or \
                     out of order)",
                    w[1],
                    w[0]
                );
            }
            let got: HashSet<u64> = got.into_iter().collect();
            let missing: Vec<u64> = acked
                .updates
                .iter()
                .filter(|&&(p, i, private)| p == k && (!private || may_see(k)) && !got.contains(&i))
                .map(|&(_, i, _)| i)
                .collect();
            if let (Some(&first), Some(&last)) = (missing.first(), missing.last()) {
                // Around the gap, and whether the others got them (a gap in
                // this subscriber's streams, or updates gone from the log).
                eprintln!(
                    "{}",
                    report(&r, &acked, k, first.saturating_sub(1), last + 1)
                );
                for (m, (other, _)) in received.iter().enumerate() {
                    if m != n {
                        let o = other.lock();
                        let had = missing
                            .iter()
                            .filter(|&&i| o.updates.contains(&(k, i)))
                            .count();
                        eprintln!(
                            "  subscriber {m} got {had} of the {} missing",
                            missing.len()
                        );
                    }
                }
            }
            assert!(
                missing.is_empty(),
                "seed {seed}: subscriber {n} never got {} acknowledged updates of publisher \
                 {k}: {missing:?}",
                missing.len()
            );
            checked += acked
                .updates
                .iter()
                .filter(|&&(p, _, private)| p == k && (!private || may_see(k)))
                .count() as u64;
        }
    }
    eprintln!(
        "storm: seed {seed}: faults {faults:?}; {} updates acknowledged, {} refused; \
         {checked} deliveries checked over {} subscribers, {resumes} resumes",
        acked.updates.len(),
        acked.refused,
        received.len()
    );
    assert!(
        acked.updates.len() > 100,
        "seed {seed}: publishes went through"
    );
}

/// What a subscriber received around a violation (publisher `k`'s
/// updates `a` and `b`): the events, where its streams began, and how
/// each update near them was answered.
fn report(r: &Received, acked: &Acked, k: usize, a: u64, b: u64) -> String {
    let mut out = format!("violation: publisher {k}, {a} and {b}\n");
    let at: Vec<usize> = r
        .updates
        .iter()
        .enumerate()
        .filter(|(_, u)| u.0 == k && (u.1 == a || u.1 == b))
        .map(|(i, _)| i)
        .collect();
    let (lo, hi) = (
        at.first().copied().unwrap_or(0).saturating_sub(8),
        (at.last().copied().unwrap_or(0) + 8).min(r.updates.len()),
    );
    for i in lo..hi {
        for s in r.streams.iter().filter(|s| s.0 == i) {
            out += &format!(
                "  -- stream from {} resuming after {:?}, answered {:?}\n",
                s.1, s.2, s.3
            );
        }
        let (p, q) = r.updates[i];
        out += &format!("  #{i}: publisher {p} update {q}\n");
    }
    for q in a.min(b).saturating_sub(2)..=a.max(b) + 2 {
        let acked_it = acked.updates.iter().any(|&(p, i, _)| p == k && i == q);
        let why = acked.why.get(&(k, q)).map(String::as_str).unwrap_or("");
        out += &format!(
            "  update {q}: {} {why}\n",
            if acked_it { "200" } else { "refused" }
        );
    }
    out
}

async fn wait_all_ready(nodes: &Nodes) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut all = true;
        for base in &nodes.bases {
            let ok = reqwest::get(format!("{base}/readyz"))
                .await
                .map(|r| r.status().as_u16() == 200)
                .unwrap_or(false);
            all &= ok;
        }
        if all {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the nodes did not all answer /readyz 200 within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
