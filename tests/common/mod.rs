//! Test support: start a real `herald serve` on an ephemeral port and talk to
//! it with a real HTTP client and the crate's spec-complete SSE parser.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use herald::sse::{SseEvent, SseParser};

pub const KEY: &str = "integration-test-secret";

pub struct Server {
    pub child: Child,
    pub base: String,
    /// The server's own data dir (removed when the test ends), unless the
    /// test chose one.
    pub data_dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Start with the test key and extra flags.
    pub fn start(extra: &[&str]) -> Server {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--jwt-key", KEY];
        args.extend_from_slice(extra);
        Server::start_raw(&args, &[])
    }

    pub fn start_raw(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        // Every server gets a data dir of its own, so parallel tests never
        // share (or lock each other out of) a history file.
        let chose_dir =
            args.contains(&"--data-dir") || env.iter().any(|(k, _)| *k == "HERALD_DATA_DIR");
        let data_dir = if chose_dir {
            None
        } else {
            let dir = tempfile::tempdir().expect("temp data dir");
            cmd.env("HERALD_DATA_DIR", dir.path());
            Some(dir)
        };
        // HERALD_TEST_STDERR=FILE: the server's log lines go to FILE.
        let stderr = match env.iter().find(|(k, _)| *k == "HERALD_TEST_STDERR") {
            Some((_, path)) => Stdio::from(std::fs::File::create(path).expect("log file")),
            None => Stdio::null(),
        };
        cmd.args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .env("HERALD_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start herald");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("herald exited before listening")
                .expect("read stdout");
            if let Some(addr) = line.strip_prefix("listening on ") {
                break addr.trim().to_string();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            base,
            data_dir,
        }
    }

    /// Start on a data dir the test owns (to restart on it, or inspect it).
    pub fn start_on(dir: &std::path::Path, extra: &[&str]) -> Server {
        let dir = dir.to_str().expect("utf-8 temp path");
        let mut args = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--jwt-key",
            KEY,
            "--data-dir",
            dir,
        ];
        args.extend_from_slice(extra);
        Server::start_raw(&args, &[])
    }

    pub fn hub(&self) -> String {
        format!("{}/.well-known/mercure", self.base)
    }

    /// Send SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe_kill(self.child.id(), "TERM");
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("herald did not exit within 10 s of SIGTERM");
    }

    /// Subscriber count from `/metrics`.
    pub async fn subscribers(&self) -> u64 {
        metric(&self.base, "herald_subscribers").await
    }
}

pub async fn metric(base: &str, name: &str) -> u64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing in {text}"))
}

fn unsafe_kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn token(publish: &[&str], subscribe: &[&str]) -> String {
    let p: Vec<String> = publish.iter().map(|s| s.to_string()).collect();
    let s: Vec<String> = subscribe.iter().map(|s| s.to_string()).collect();
    herald::auth::mint_hs256(KEY, &p, &s, None, Some(3600)).expect("mint")
}

pub fn publisher() -> String {
    token(&["*"], &[])
}

/// Publish and return (status, body).
pub async fn publish_raw(hub: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .post(hub)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("publish request");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// Publish, asserting success; returns the id.
pub async fn publish(hub: &str, fields: &[(&str, &str)]) -> String {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let (status, text) = publish_raw(hub, Some(&publisher()), &body).await;
    assert_eq!(status, 200, "publish failed: {text}");
    text
}

/// An open SSE subscription.
pub struct Sub {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    body: Option<futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>>,
    parser: SseParser,
    pending: std::collections::VecDeque<SseEvent>,
}

#[derive(Default)]
pub struct SubOpts<'a> {
    pub token: Option<&'a str>,
    pub last_event_id: Option<&'a str>,
    pub headers: Vec<(&'a str, String)>,
}

impl Sub {
    /// `query` is the raw query string.
    pub async fn open(hub: &str, query: &str, opts: SubOpts<'_>) -> Sub {
        let mut req = reqwest::Client::new()
            .get(format!("{hub}?{query}"))
            .header("accept", "text/event-stream");
        if let Some(t) = opts.token {
            req = req.bearer_auth(t);
        }
        if let Some(id) = opts.last_event_id {
            req = req.header("last-event-id", id);
        }
        for (k, v) in opts.headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.expect("subscribe request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        Sub {
            status,
            headers,
            body: Some(resp.bytes_stream().boxed()),
            parser: SseParser::new(),
            pending: Default::default(),
        }
    }

    pub async fn ok(hub: &str, query: &str) -> Sub {
        let s = Sub::open(hub, query, SubOpts::default()).await;
        assert_eq!(s.status, 200);
        s
    }

    /// Next event, or None if the stream ended or nothing came within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(ev);
            }
            let body = self.body.as_mut()?;
            match tokio::time::timeout_at(deadline, body.next()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => {
                    self.body = None;
                    return None;
                }
                Ok(Some(Ok(chunk))) => self.pending.extend(self.parser.feed(&chunk)),
            }
        }
    }

    /// Next event; panics after 10 s.
    pub async fn next(&mut self) -> SseEvent {
        self.next_within(Duration::from_secs(10))
            .await
            .expect("expected an event within 10 s")
    }

    /// Has the server ended the stream (within `wait`)?
    pub async fn ended_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < deadline {
            if self.body.is_none() {
                return true;
            }
            let _ = self
                .next_within(deadline - tokio::time::Instant::now())
                .await;
        }
        self.body.is_none()
    }

    pub fn comments(&self) -> u64 {
        self.parser.comments()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// URL-encode one query component.
pub fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The example apps' tests (tests/example_*.rs).
pub mod apps;

pub mod curl;
pub mod nginx;
pub mod pki;
pub mod proxy;
pub mod redis;
pub mod sentinel;
