//! A subscriber whose network vanishes (no FIN, no RST: a laptop lid
//! closed, Wi-Fi gone) is dropped within about `--peer-timeout`, and leaves
//! the subscriptions API. For real: the client (curl) runs in a network
//! namespace joined to the host by a veth pair, and its end of the pair is
//! taken down, so nothing it would send, and nothing sent to it, gets
//! through. Needs root (as the test command runs in CI); elsewhere it
//! says so and does nothing.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A network namespace with a veth pair to the host: host side
/// `10.213.N.1/30`, namespace side `10.213.N.2/30`. Removed on drop.
struct Netns {
    name: String,
    inner: String,
    host_ip: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    fn new() -> Netns {
        let tag = std::process::id() % 10_000;
        let n = std::process::id() % 250 + 1;
        let name = format!("hv{tag}");
        let (outer, inner) = (format!("hva{tag}"), format!("hvb{tag}"));
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &outer]).output();
        ip(&["netns", "add", &name]);
        let ns = Netns {
            name: name.clone(),
            inner: inner.clone(),
            host_ip: format!("10.213.{n}.1"),
        };
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ]);
        ip(&["link", "set", &inner, "netns", &name]);
        ip(&["addr", "add", &format!("10.213.{n}.1/30"), "dev", &outer]);
        ip(&["link", "set", &outer, "up"]);
        ns.exec_ip(&["addr", "add", &format!("10.213.{n}.2/30"), "dev", &inner]);
        ns.exec_ip(&["link", "set", &inner, "up"]);
        ns.exec_ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn exec_ip(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name, "ip"];
        all.extend_from_slice(args);
        ip(&all);
    }

    fn spawn(&self, program: &str, args: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ip netns exec")
    }

    /// The namespace's side of the link goes down: no FIN, no RST, nothing.
    fn vanish(&self) {
        self.exec_ip(&["link", "set", &self.inner, "down"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

#[tokio::test]
async fn a_subscriber_whose_network_vanished_is_dropped_within_the_peer_timeout() {
    if !is_root() {
        eprintln!("skipped: network namespaces need root (the test command runs as root in CI)");
        return;
    }
    let ns = Netns::new();
    let listen = format!("{}:0", ns.host_ip);
    let server = Server::start_raw(
        &[
            "serve",
            "--listen",
            &listen,
            "--jwt-key",
            KEY,
            "--subscriptions",
            "--peer-timeout",
            "4s",
        ],
        &[],
    );
    let topic = "https://example.com/vanish";
    let url = format!("{}/.well-known/mercure?topic={}", server.base, enc(topic));
    let mut curl = ns.spawn("curl", &["-sN", &url]);
    let admin = token(&[], &["/.well-known/mercure/subscriptions{/a}{/b}{/c}"]);
    let listed = || async {
        let list: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/.well-known/mercure/subscriptions", server.base))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        list["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["topic"] == topic)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while listed().await == 0 {
        assert!(
            Instant::now() < deadline,
            "the subscriber in the namespace connected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&server.base, "herald_subscribers").await, 1);

    ns.vanish();
    let cut = Instant::now();
    // Keep publishing to it: data left unacknowledged counts too.
    let deadline = Instant::now() + Duration::from_secs(40);
    while metric(&server.base, "herald_subscribers").await > 0 {
        assert!(
            Instant::now() < deadline,
            "a vanished subscriber with --peer-timeout 4s is still connected after 40 s"
        );
        publish(
            &format!("{}/.well-known/mercure", server.base),
            &[("topic", topic), ("data", "anyone?")],
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("vanished subscriber dropped after {:?}", cut.elapsed());
    assert_eq!(listed().await, 0, "it left the subscriptions API");
    let _ = curl.kill();
    let _ = curl.wait();
}
