//! Subscriptions API, subscription events, and the `herald` CLI helpers.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[tokio::test]
async fn subscription_events_and_api() {
    let s = Server::start(&["--subscriptions"]);
    let hub = s.hub();
    let admin = token(&[], &["/.well-known/mercure/subscriptions{/a}{/b}{/c}"]);
    let mut watcher = Sub::open(
        &hub,
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
    let topic = "https://example.com/books/1";
    let payload_token = herald::auth::mint_hs256(
        KEY,
        &[],
        &[],
        Some(serde_json::json!({"tenant": "t1"})),
        Some(600),
    )
    .unwrap();
    let sub = Sub::open(
        &hub,
        &format!("match={}", enc(topic)),
        SubOpts {
            token: Some(&payload_token),
            ..Default::default()
        },
    )
    .await;

    // The watcher sees its own subscription first, then the new one.
    let mut ev = watcher.next().await;
    if ev.data.contains("subscriptions%2F") {
        ev = watcher.next().await;
    }
    assert_eq!(ev.event_type, "mercure");
    let doc: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(doc["type"], "subscription");
    assert_eq!(doc["match_type"], "exact");
    assert_eq!(doc["match"], topic);
    assert_eq!(doc["active"], true);
    assert_eq!(doc["payload"]["tenant"], "t1");
    let subscriber = doc["subscriber"].as_str().unwrap().to_string();
    assert!(subscriber.starts_with("urn:uuid:"));
    let id = doc["id"].as_str().unwrap().to_string();
    assert_eq!(
        id,
        format!(
            "/.well-known/mercure/subscriptions/exact/{}/{}",
            enc_all(topic),
            enc_all(&subscriber)
        )
    );

    // The API lists it, and serves it alone.
    let client = reqwest::Client::new();
    let list: serde_json::Value = client
        .get(format!("{}/.well-known/mercure/subscriptions", s.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["type"], "subscriptions");
    assert!(list["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["id"] == id.as_str()));
    let one = client
        .get(format!("{}{}", s.base, id))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(one.status().as_u16(), 200);
    assert_eq!(one.headers()["content-type"], "application/json");
    assert!(one.headers()["link"]
        .to_str()
        .unwrap()
        .contains("rel=\"mercure\""));
    let one: serde_json::Value = one.json().await.unwrap();
    assert_eq!(one["subscriber"], subscriber.as_str());

    // Without a token: 401; with a token for something else: 403;
    // unknown subscription: 404.
    let r = client
        .get(format!("{}/.well-known/mercure/subscriptions", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = client
        .get(format!("{}/.well-known/mercure/subscriptions", s.base))
        .bearer_auth(token(&[], &["x"]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = client
        .get(format!(
            "{}/.well-known/mercure/subscriptions/exact/nope/urn%3Auuid%3Ax",
            s.base
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);

    // Disconnect: an inactive event follows.
    drop(sub);
    let ev = watcher.next().await;
    let doc: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(doc["active"], false);
    assert_eq!(doc["subscriber"], subscriber.as_str());

    // Anonymous subscribers never see subscription events (they are private).
    let mut anon = Sub::ok(
        &hub,
        &format!(
            "match_urlpattern={}",
            enc("/.well-known/mercure/subscriptions/*")
        ),
    )
    .await;
    let _other = Sub::ok(&hub, "match=zzz").await;
    assert!(anon.next_within(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn subscriptions_api_is_off_by_default() {
    let s = Server::start(&[]);
    let r = reqwest::Client::new()
        .get(format!("{}/.well-known/mercure/subscriptions", s.base))
        .bearer_auth(token(&[], &["*"]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

fn enc_all(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, &ENC).to_string()
}

const ENC: percent_encoding::AsciiSet = percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn herald_cmd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_herald"))
}

#[tokio::test]
async fn cli_token_publish_and_subscribe() {
    let s = Server::start(&[]);
    let hub = s.hub();
    let out = herald_cmd()
        .args(["token", "--jwt-key", KEY, "--publish", "*"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let tok = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(tok.split('.').count(), 3);

    let before = publish(&hub, &[("topic", "cli"), ("data", "before")]).await;
    let sub = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "subscribe",
            "--hub",
            &hub,
            "--match",
            "cli",
            "--last-event-id",
            &before,
            "--max-events",
            "2",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the subscriber is connected.
    for _ in 0..100 {
        if s.subscribers().await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let missed = publish(&hub, &[("topic", "cli"), ("data", "missed?")]).await;
    let out = herald_cmd()
        .args([
            "publish", "--hub", &hub, "--token", &tok, "--topic", "cli", "--data", "from cli",
            "--id", "cli-1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), "cli-1");
    let out = sub.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["id"], missed.as_str());
    assert_eq!(lines[1]["data"], "from cli");

    // A refused publish exits non-zero with the hub's message.
    let out = herald_cmd()
        .args(["publish", "--hub", &hub, "--token", "bad", "--topic", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}

/// The demo page at `/` tells a visitor of a hub started with a key (as
/// `examples/run.sh` starts it, printing no token) how to make a publisher
/// token; its command, run as written, makes one the hub takes.
#[tokio::test]
async fn the_demo_page_says_how_to_get_a_token_and_its_command_works() {
    let s = Server::start(&[]);
    let page = reqwest::get(format!("{}/", s.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = page
        .lines()
        .find(|l| l.contains("TOKEN=$(herald token"))
        .unwrap_or_else(|| panic!("the demo page gives no token command:\n{page}"));
    let at = line.find("TOKEN=$(herald ").expect("found above");
    let command = line[at..]
        .trim()
        .strip_prefix("TOKEN=$(herald ")
        .and_then(|c| c.strip_suffix(')'))
        .expect("TOKEN=$(herald ...)")
        .replace("&#39;", "'");
    // The words, as a shell would split them (the page quotes simply).
    let args: Vec<String> = command
        .split_whitespace()
        .map(|w| match w.trim_matches(|c| c == '"' || c == '\'') {
            "$HERALD_JWT_KEY" => KEY.to_string(),
            w => w.to_string(),
        })
        .collect();
    let out = herald_cmd().args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "herald {command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tok = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let body = "topic=https%3A%2F%2Fexample.com%2Fhello&data=hi";
    let (status, text) = publish_raw(&s.hub(), Some(&tok), body).await;
    assert_eq!(status, 200, "the page's token was refused: {text}");
}

#[tokio::test]
async fn serve_without_key_prints_a_working_dev_token() {
    let mut child = herald_cmd()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut base = String::new();
    let mut tok = String::new();
    for _ in 0..10 {
        let line = lines.next().unwrap().unwrap();
        if let Some(a) = line.strip_prefix("listening on ") {
            base = a.to_string();
        }
        if let Some(t) = line
            .split("token (publish+subscribe to every topic): ")
            .nth(1)
        {
            tok = t.trim().to_string();
            break;
        }
    }
    let (status, id) = publish_raw(
        &format!("{base}/.well-known/mercure"),
        Some(&tok),
        "topic=x&data=y",
    )
    .await;
    assert_eq!(status, 200, "{id}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn bad_configuration_is_a_clear_error() {
    let out = herald_cmd()
        .args(["serve", "--heartbeat", "soon"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid duration"));
    let out = herald_cmd()
        .args(["serve", "--config", "/nonexistent/herald.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/herald.toml"));
    let out = herald_cmd()
        .args([
            "serve",
            "--jwt-public-key-file",
            "/nonexistent.pem",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.pem"));
}

#[test]
fn env_overrides_file_and_flag_overrides_env() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("h.toml");
    std::fs::write(&cfg, "listen = \"127.0.0.1:1\"\nallow_anonymous = true\n").unwrap();
    // The file says port 1 (unbindable for non-root is not guaranteed, so
    // check the effect via HERALD_LISTEN overriding it to port 0).
    let s = Server::start_raw(
        &["serve", "--config", cfg.to_str().unwrap(), "--jwt-key", KEY],
        &[
            ("HERALD_LISTEN", "127.0.0.1:0"),
            ("HERALD_ALLOW_ANONYMOUS", "false"),
        ],
    );
    assert!(!s.base.ends_with(":1"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let sub = Sub::open(&s.hub(), "match=a", SubOpts::default()).await;
        assert_eq!(
            sub.status, 401,
            "HERALD_ALLOW_ANONYMOUS=false beat the file"
        );
    });
    drop(s);
    let s = Server::start_raw(
        &[
            "serve",
            "--config",
            cfg.to_str().unwrap(),
            "--jwt-key",
            KEY,
            "--allow-anonymous",
            "true",
        ],
        &[
            ("HERALD_LISTEN", "127.0.0.1:0"),
            ("HERALD_ALLOW_ANONYMOUS", "false"),
        ],
    );
    rt.block_on(async {
        let sub = Sub::open(&s.hub(), "match=a", SubOpts::default()).await;
        assert_eq!(sub.status, 200, "--allow-anonymous beat the environment");
    });
}
