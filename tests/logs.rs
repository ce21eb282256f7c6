//! Log lines and request ids: every error answer carries an `X-Request-Id`
//! (the one the request brought, or a new one) and a log line with the
//! same id says what was refused and why; `--log-format json` writes one
//! JSON object per line. A real server, its real stderr.
mod common;

use std::time::{Duration, Instant};

use common::*;

struct Logged {
    server: Server,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn start(extra: &[&str]) -> Logged {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--jwt-key", KEY];
    args.extend_from_slice(extra);
    let server = Server::start_raw(
        &args,
        &[
            ("HERALD_TEST_STDERR", log.to_str().unwrap()),
            ("HERALD_LOG", "herald=info"),
        ],
    );
    Logged {
        server,
        log,
        _dir: dir,
    }
}

impl Logged {
    /// The first log line holding `needle` (waits up to 5 s for it).
    fn line_with(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(l) = text.lines().find(|l| l.contains(needle)) {
                return l.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn all(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn request_id(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string())
}

#[tokio::test]
async fn an_error_answer_and_its_log_line_share_a_request_id() {
    let s = start(&[]);
    let client = reqwest::Client::new();
    // A subscriber with a bad token, the token in the query (as EventSource
    // clients send it): refused, with an id, and the token is never logged.
    let url = format!(
        "{}?topic=https%3A%2F%2Fexample.com%2Fa&authorization=not.a.secretjwt",
        s.server.hub()
    );
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let id = request_id(&r).expect("an error answer carries a request id");
    let line = s.line_with(&id);
    for part in [
        "401",
        "GET",
        "/.well-known/mercure",
        "127.0.0.1",
        "request refused",
    ] {
        assert!(line.contains(part), "{part} in {line}");
    }
    assert!(
        !s.all().contains("secretjwt"),
        "the query (a token) is never logged"
    );

    // A proxy's request id is honoured: on the answer and in the log line.
    let r = client
        .post(s.server.hub())
        .header("x-request-id", "edge-7f3a")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("topic=x&data=y")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no token");
    assert_eq!(request_id(&r).as_deref(), Some("edge-7f3a"));
    let line = s.line_with("edge-7f3a");
    assert!(line.contains("POST") && line.contains("401"), "{line}");
    assert!(line.to_lowercase().contains("token"), "the reason: {line}");

    // Two error answers without an id get different ones.
    let a = client.get(&url).send().await.unwrap();
    let b = client.get(&url).send().await.unwrap();
    assert_ne!(request_id(&a), request_id(&b));

    // A success keeps the id it was given, and gets none otherwise.
    let ok = client
        .get(format!("{}/healthz", s.server.base))
        .header("x-request-id", "probe-1")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(request_id(&ok).as_deref(), Some("probe-1"));
    let ok = client
        .get(format!("{}/healthz", s.server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(request_id(&ok), None);

    // An id with spaces (or too long) is not taken: a new one is made.
    let r = client
        .get(&url)
        .header("x-request-id", "a b")
        .send()
        .await
        .unwrap();
    let id = request_id(&r).unwrap();
    assert_ne!(id, "a b");
    s.line_with(&id);
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let s = start(&["--log-format", "json"]);
    let r = reqwest::Client::new()
        .get(format!("{}/nope", s.server.base))
        .header("x-request-id", "json-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let line = s.line_with("json-1");
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON object");
    assert_eq!(v["request_id"], "json-1");
    assert_eq!(v["status"], 404);
    assert_eq!(v["path"], "/nope");
    for l in s.all().lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"));
    }
}
