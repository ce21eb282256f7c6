//! Durable history against a real herald: resume across restarts, nothing
//! acknowledged lost to `kill -9`, a race-free hand-over from replay to live
//! delivery, and clear errors for an unusable data dir.

mod common;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

fn resume_opts(id: &str) -> SubOpts<'_> {
    SubOpts {
        last_event_id: Some(id),
        ..Default::default()
    }
}

#[tokio::test]
async fn history_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    {
        let mut s = Server::start_on(dir.path(), &[]);
        for i in 0..5 {
            ids.push(publish(&s.hub(), &[("topic", "r"), ("data", &format!("m{i}"))]).await);
        }
        assert!(s.terminate().success());
    }
    let s = Server::start_on(dir.path(), &[]);
    let hub = s.hub();
    let mut sub = Sub::open(&hub, "match=r", resume_opts(&ids[1])).await;
    assert_eq!(sub.status, 200);
    assert_eq!(
        sub.header("mercure-last-event-id").as_deref(),
        Some(ids[1].as_str())
    );
    assert_eq!(
        sub.header("last-event-id").as_deref(),
        Some(ids[4].as_str()),
        "legacy header: the newest update in history"
    );
    for (i, id) in ids.iter().enumerate().skip(2) {
        let ev = sub.next().await;
        assert_eq!(
            (ev.id.as_str(), ev.data.as_str()),
            (id.as_str(), &*format!("m{i}"))
        );
    }
    publish(&hub, &[("topic", "r"), ("data", "live")]).await;
    assert_eq!(sub.next().await.data, "live");
    // Ids stay unique across the restart.
    let (status, _) = publish_raw(
        &hub,
        Some(&publisher()),
        &format!("topic=r&data=again&id={}", enc(&ids[0])),
    )
    .await;
    assert_eq!(status, 409);
    // Every way of resuming still works on the reloaded history.
    let mut all = Sub::ok(&hub, "match=r&last_event_id=earliest").await;
    assert_eq!(all.next().await.data, "m0");
}

#[tokio::test]
async fn memory_history_is_gone_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let id;
    {
        let mut s = Server::start_on(dir.path(), &["--history", "memory"]);
        id = publish(&s.hub(), &[("topic", "r"), ("data", "m")]).await;
        assert!(s.terminate().success());
    }
    let s = Server::start_on(dir.path(), &["--history", "memory"]);
    let mut sub = Sub::open(&s.hub(), "match=r", resume_opts(&id)).await;
    assert_eq!(
        sub.header("mercure-last-event-id").as_deref(),
        Some("earliest")
    );
    assert!(sub.next_within(Duration::from_millis(300)).await.is_none());
}

/// Publish in a loop from several publishers, `kill -9` the hub mid-stream,
/// restart it: every update that got a 200 must be in history and replayed,
/// once, in the order the hub accepted them.
#[tokio::test]
async fn kill_9_loses_no_acknowledged_update() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start_on(dir.path(), &[]);
    let hub = s.hub();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut publishers = Vec::new();
    for p in 0..8 {
        let hub = hub.clone();
        let acked = acked.clone();
        publishers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let token = publisher();
            for i in 0.. {
                let id = format!("crash-{p}-{i}");
                let resp = client
                    .post(&hub)
                    .bearer_auth(&token)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(format!("topic=crash&id={id}&data={id}"))
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == 200 => acked.lock().unwrap().push(id),
                    _ => return,
                }
            }
        }));
    }
    // Let a good number of updates through, then kill without warning.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 400 {
        assert!(tokio::time::Instant::now() < deadline, "publishing stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s.child.kill().expect("SIGKILL");
    s.child.wait().unwrap();
    for p in publishers {
        p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 400);

    let s = Server::start_on(dir.path(), &[]);
    let mut sub = Sub::ok(&s.hub(), "match=crash&last_event_id=earliest").await;
    let mut seen = HashSet::new();
    let mut last_of_publisher = std::collections::HashMap::new();
    while let Some(ev) = sub.next_within(Duration::from_secs(2)).await {
        assert!(seen.insert(ev.id.clone()), "{} replayed twice", ev.id);
        // Each publisher's updates were sent one after the other, so they
        // must come back in that order.
        let (p, i) = ev.id["crash-".len()..].split_once('-').unwrap();
        let i: u64 = i.parse().unwrap();
        if let Some(prev) = last_of_publisher.insert(p.to_string(), i) {
            assert!(i > prev, "publisher {p}: {i} after {prev}");
        }
    }
    let lost: Vec<_> = acked.iter().filter(|id| !seen.contains(*id)).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
}

/// 100 subscribers resume from different points while a publisher keeps
/// publishing: each must see exactly the updates after its point, with no
/// gap and no duplicate where replay hands over to live delivery.
#[tokio::test]
async fn resume_hands_over_to_live_without_gap_or_duplicate() {
    let s = Server::start(&[]);
    let hub = s.hub();
    const FIRST: usize = 200;
    const TOTAL: usize = 1_200;
    for i in 0..FIRST {
        publish(
            &hub,
            &[
                ("topic", "seq"),
                ("id", &format!("s-{i}")),
                ("data", &i.to_string()),
            ],
        )
        .await;
    }
    let publisher_task = {
        let hub = hub.clone();
        tokio::spawn(async move {
            for i in FIRST..TOTAL {
                publish(
                    &hub,
                    &[
                        ("topic", "seq"),
                        ("id", &format!("s-{i}")),
                        ("data", &i.to_string()),
                    ],
                )
                .await;
            }
        })
    };
    let mut subscribers = Vec::new();
    for n in 0..100usize {
        let hub = hub.clone();
        // Resume points spread over the whole range, some in the part
        // still being published while the subscriber connects.
        let from = (n * 11) % (FIRST + 600);
        subscribers.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis((n as u64 % 20) * 15)).await;
            // Wait until the resume point exists.
            let from_id = format!("s-{from}");
            let mut sub = loop {
                let sub = Sub::open(&hub, "match=seq", resume_opts(&from_id)).await;
                if sub.header("mercure-last-event-id").as_deref() == Some(from_id.as_str()) {
                    break sub;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let mut expected = from + 1;
            while expected < TOTAL {
                let ev = sub.next().await;
                let got: usize = ev.data.parse().unwrap();
                assert_eq!(got, expected, "subscriber resuming after {from}");
                assert_eq!(ev.id, format!("s-{got}"));
                expected += 1;
            }
            assert!(
                sub.next_within(Duration::from_millis(200)).await.is_none(),
                "nothing after the last update"
            );
        }));
    }
    publisher_task.await.unwrap();
    for t in subscribers {
        t.await.unwrap();
    }
}

fn start_expecting_failure(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run herald");
    assert!(!out.status.success(), "herald must refuse to start");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unusable_history_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("history.redb");
    std::fs::write(&file, b"not a database").unwrap();
    let d = dir.path().to_str().unwrap();
    let err = start_expecting_failure(&["serve", "--listen", "127.0.0.1:0", "--data-dir", d]);
    assert!(err.contains(file.to_str().unwrap()), "{err}");
    assert!(err.contains("move it aside"), "{err}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"not a database",
        "left untouched"
    );

    // A data dir that is a file.
    let not_dir = dir.path().join("plain-file");
    std::fs::write(&not_dir, b"x").unwrap();
    let err = start_expecting_failure(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        not_dir.to_str().unwrap(),
    ]);
    assert!(err.contains("data directory"), "{err}");
}

#[tokio::test]
async fn second_hub_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Server::start_on(dir.path(), &[]);
    let d = dir.path().to_str().unwrap();
    let err = start_expecting_failure(&["serve", "--listen", "127.0.0.1:0", "--data-dir", d]);
    assert!(err.contains("another herald"), "{err}");
}

#[tokio::test]
async fn resuming_from_a_discarded_id_says_earliest() {
    let s = Server::start(&["--history-size", "2"]);
    let hub = s.hub();
    let first = publish(&hub, &[("topic", "d"), ("data", "0")]).await;
    for i in 1..4 {
        publish(&hub, &[("topic", "d"), ("data", &i.to_string())]).await;
    }
    let mut sub = Sub::open(&hub, "match=d", resume_opts(&first)).await;
    assert_eq!(
        sub.header("mercure-last-event-id").as_deref(),
        Some("earliest"),
        "the id left history: the client must learn it may have missed updates"
    );
    assert!(sub.next_within(Duration::from_millis(300)).await.is_none());
    // What is left is still there from `earliest`.
    let mut all = Sub::ok(&hub, "match=d&last_event_id=earliest").await;
    assert_eq!(all.next().await.data, "2");
    assert_eq!(all.next().await.data, "3");
}
