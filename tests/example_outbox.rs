//! The outbox (examples/common/outbox.rs), through the notification
//! center example: with Herald down, a notification and a "mark read" are
//! answered as stored (not "saved, but Herald could not be reached");
//! once Herald is up they are published, in order, each once, and a
//! subscriber resuming from the start gets them. Needs the example built
//! (`cargo build --release --examples`, as scripts/test-all.sh does).

mod common;

use std::time::Duration;

use common::apps::{example_bin, App};
use common::redis::free_port;
use common::*;

async fn log_in(app: &str, name: &str) -> String {
    let resp = reqwest::Client::new()
        .post(format!("{app}/api/login"))
        .json(&serde_json::json!({ "name": name }))
        .send()
        .await
        .expect("login");
    assert!(resp.status().is_success(), "login: {}", resp.status());
    let cookie = resp.headers()["set-cookie"].to_str().unwrap();
    cookie.split(';').next().unwrap().to_string()
}

async fn post(app: &str, path: &str, cookie: &str, body: serde_json::Value) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(format!("{app}{path}"))
        .header("cookie", cookie)
        .json(&body)
        .send()
        .await
        .expect("request");
    (
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    )
}

/// The example `name` started with Herald's address, where nothing
/// listens yet: the app, its data dir, and Herald's port.
fn app_without_herald(name: &str) -> (App, tempfile::TempDir, u16) {
    let data = tempfile::tempdir().unwrap();
    let herald_port = free_port();
    let herald_url = format!("http://127.0.0.1:{herald_port}");
    let app = App::start(
        &example_bin(name),
        "127.0.0.1:0",
        &herald_url,
        data.path(),
        &[],
    );
    (app, data, herald_port)
}

/// Herald started on `port`, and a reader of `topic` (allowed its private
/// updates) from the start of history.
async fn herald_and_reader(port: u16, topic: &str) -> (Server, Sub) {
    let listen = format!("127.0.0.1:{port}");
    let server = Server::start_raw(&["serve", "--listen", &listen, "--jwt-key", KEY], &[]);
    let token = token(&[], &[topic]);
    let sub = Sub::open(
        &server.hub(),
        &format!("topic={}", enc(topic)),
        SubOpts {
            token: Some(&token),
            last_event_id: Some("earliest"),
            ..SubOpts::default()
        },
    )
    .await;
    assert_eq!(sub.status, 200);
    (server, sub)
}

#[tokio::test]
async fn changes_made_while_herald_is_down_are_published_once_it_is_back() {
    let (app, _data, herald_port) = app_without_herald("notifications");
    let alice = log_in(&app.base, "alice").await;
    let bob = log_in(&app.base, "bob").await;

    let (status, body) = post(
        &app.base,
        "/api/notifications",
        &alice,
        serde_json::json!({ "to": "bob", "body": "sent while the hub was down" }),
    )
    .await;
    assert_eq!(status, 201, "stored, whatever Herald's state: {body}");
    let note: serde_json::Value = serde_json::from_str(&body).unwrap();
    let (status, body) = post(
        &app.base,
        &format!("/api/notifications/{}/read", note["id"]),
        &bob,
        serde_json::json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Herald comes up: the outbox publishes both, in order.
    let (_server, mut sub) =
        herald_and_reader(herald_port, "https://example.app/users/bob/notifications").await;
    let first = sub
        .next_within(Duration::from_secs(20))
        .await
        .expect("the notification, published by the outbox");
    let second = sub
        .next_within(Duration::from_secs(20))
        .await
        .expect("the read state, after it");
    let first: serde_json::Value = serde_json::from_str(&first.data).unwrap();
    let second: serde_json::Value = serde_json::from_str(&second.data).unwrap();
    assert_eq!(first["kind"], "notification");
    assert_eq!(first["notification"]["body"], "sent while the hub was down");
    assert_eq!(second["kind"], "read");
    assert_eq!(second["unread"], 0);
    assert!(
        sub.next_within(Duration::from_millis(1500)).await.is_none(),
        "each once"
    );
    // With Herald up, a new change arrives live.
    let (status, _) = post(
        &app.base,
        "/api/notifications",
        &alice,
        serde_json::json!({ "to": "bob", "body": "and one more" }),
    )
    .await;
    assert_eq!(status, 201);
    let live = sub
        .next_within(Duration::from_secs(10))
        .await
        .expect("live");
    assert!(live.data.contains("and one more"), "{}", live.data);
}

/// The chat keeps its messages now: one sent while Herald is down is
/// answered 201 with its id and published, under that id, once Herald is
/// back (it used to answer 502 and be gone).
#[tokio::test]
async fn a_chat_message_sent_while_herald_is_down_is_kept_and_published() {
    let (app, _data, herald_port) = app_without_herald("chat");
    let alice = log_in(&app.base, "alice").await;
    let _bob = log_in(&app.base, "bob").await;
    let (status, body) = post(
        &app.base,
        "/api/conversations",
        &alice,
        serde_json::json!({ "with": "bob" }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = post(
        &app.base,
        "/api/conversations/alice~bob/messages",
        &alice,
        serde_json::json!({ "body": "are you there?" }),
    )
    .await;
    assert_eq!(status, 201, "kept while Herald is down: {body}");
    let sent: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = sent["id"].as_str().expect("the id it is published with");

    let (_server, mut sub) =
        herald_and_reader(herald_port, "https://example.app/conversations/alice~bob").await;
    let got = sub
        .next_within(Duration::from_secs(20))
        .await
        .expect("the message, published by the outbox");
    assert_eq!(got.id, id);
    assert!(got.data.contains("are you there?"), "{}", got.data);
    assert!(
        sub.next_within(Duration::from_millis(1500)).await.is_none(),
        "once"
    );
}
