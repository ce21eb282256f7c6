//! Redis Sentinel for tests: a sentinel (`redis-server --sentinel`, the
//! binary Debian's `redis-sentinel` links to) on a free loopback port,
//! monitoring one primary as [`MASTER`], stopped on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis::{free_port, Redis};

pub const MASTER: &str = "herald-main";

/// A sentinel process on a free port, stopped on drop.
pub struct Sentinel {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    pub fn start(primary_port: u16) -> Sentinel {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 4000\n\
                 sentinel parallel-syncs {MASTER} 1\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (apt-get install redis-server)");
        let s = Sentinel {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while resp(port, &["PING"]).is_err() {
            assert!(Instant::now() < deadline, "sentinel did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    /// The port of the primary this sentinel names now.
    pub fn primary(&self) -> Option<u16> {
        let reply = resp(self.port, &["SENTINEL", "get-master-addr-by-name", MASTER]).ok()?;
        reply.lines().rev().find_map(|l| l.trim().parse().ok())
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One command, the whole raw reply (what arrives within a short while).
pub fn resp(port: u16, args: &[&str]) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_millis(300)))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes())?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) if !out.is_empty() => break,
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

pub fn port_of(redis: &Redis) -> u16 {
    redis.url().rsplit(':').next().unwrap().parse().unwrap()
}

/// Wait until every sentinel names `port` as the primary.
pub fn wait_named(sentinels: &[Sentinel], port: u16) {
    assert!(
        named_within(sentinels, port, Duration::from_secs(30)),
        "the sentinels did not move to {port}"
    );
}

/// Whether every sentinel names `port` as the primary within `limit`.
pub fn named_within(sentinels: &[Sentinel], port: u16, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !sentinels.iter().all(|s| s.primary() == Some(port)) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// Wait until `primary` has an online replica, known to the sentinels.
pub fn wait_replicated(primary: &Redis, sentinels: &[Sentinel]) {
    let info = replicated_within(primary, sentinels, Duration::from_secs(30));
    assert!(info.is_none(), "replica not online: {info:?}");
}

/// None once `primary` has an online replica known to the sentinels
/// (within `limit`); else what `INFO replication` said last.
pub fn replicated_within(
    primary: &Redis,
    sentinels: &[Sentinel],
    limit: Duration,
) -> Option<String> {
    let deadline = Instant::now() + limit;
    loop {
        let info = primary
            .try_cmd(&["INFO", "replication"])
            .unwrap_or_default();
        let known = sentinels.iter().all(|s| {
            resp(s.port, &["SENTINEL", "replicas", MASTER])
                .map(|r| r.contains("slave") || r.contains("replica"))
                .unwrap_or(false)
        });
        if info.contains("connected_slaves:1") && info.contains("state=online") && known {
            return None;
        }
        if Instant::now() >= deadline {
            return Some(info);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Redis primary, its replica and three sentinels watching them, once the
/// replica is online and known to the sentinels; `extra` are both Redis
/// servers' flags (persistence, say).
pub fn primary_replica_sentinels(extra: &[&str]) -> (Redis, Redis, Vec<Sentinel>) {
    let primary = Redis::start(extra);
    let primary_port = port_of(&primary).to_string();
    let mut replica_args = extra.to_vec();
    replica_args.extend(["--replicaof", "127.0.0.1", &primary_port]);
    let replica = Redis::start(&replica_args);
    let sentinels: Vec<Sentinel> = (0..3).map(|_| Sentinel::start(port_of(&primary))).collect();
    wait_replicated(&primary, &sentinels);
    (primary, replica, sentinels)
}

/// `--transport` for a node that knows only these sentinels.
pub fn transport(sentinels: &[Sentinel]) -> String {
    let hosts: Vec<String> = sentinels
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    format!("redis+sentinel://{}/{MASTER}", hosts.join(","))
}
