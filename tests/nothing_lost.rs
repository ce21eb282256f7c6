//! "Nothing lost, nobody in", against a real herald: storage faults answer
//! 503 and recover by themselves without losing an acknowledged update; a
//! damaged history file is a clear error, never a panic; private ids leak
//! to nobody; subscription events never evict published updates.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

async fn status_of(url: &str) -> (u16, String) {
    let resp = reqwest::get(url).await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// A small tmpfs, so "disk full" is real: mounted for the test, unmounted
/// when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().expect("temp dir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs for the disk-full test (it needs root, as CI has)"
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Fill what is left with a file; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).expect("create filler");
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        // The last partial block may still fit in smaller writes.
        while f.write_all(&block[..512]).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[tokio::test]
async fn disk_full_answers_503_then_recovers_by_itself_losing_nothing() {
    let disk = SmallDisk::mount("4m");
    let data_dir = disk.path().join("data");
    let s = Server::start_on(&data_dir, &[]);
    let hub = s.hub();
    let mut acknowledged = Vec::new();
    for i in 0..10 {
        acknowledged.push(publish(&hub, &[("topic", "t"), ("data", &format!("before {i}"))]).await);
    }
    let filler = disk.fill();
    // Publish until the store refuses: redb may still have free pages.
    let big = "x".repeat(64 * 1024);
    let mut refused = None;
    for i in 0..200 {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs([("topic", "t"), ("data", &format!("{big} {i}"))])
            .finish();
        let (status, text) = publish_raw(&hub, Some(&publisher()), &body).await;
        match status {
            200 => acknowledged.push(text),
            503 => {
                refused = Some(text);
                break;
            }
            other => panic!("a full disk must answer 503, got {other}: {text}"),
        }
    }
    let refused = refused.expect("the full disk never refused a publish");
    assert!(refused.contains("history"), "{refused}");
    let (status, text) = status_of(&format!("{}/readyz", s.base)).await;
    assert_eq!(status, 503, "readyz must say not ready: {text}");
    assert!(text.contains("history"), "{text}");
    assert!(metric(&s.base, "herald_storage_errors_total").await >= 1);

    // Space comes back: the hub recovers without a restart.
    std::fs::remove_file(&filler).expect("remove filler");
    let mut ready = false;
    for _ in 0..100 {
        if status_of(&format!("{}/readyz", s.base)).await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "readyz stayed 503 after space came back");
    acknowledged.push(publish(&hub, &[("topic", "t"), ("data", "after")]).await);

    // Every acknowledged update is in history, in order, and nothing else.
    let mut sub = Sub::ok(&hub, "match=t&last_event_id=earliest").await;
    for id in &acknowledged {
        assert_eq!(&sub.next().await.id, id);
    }
    assert!(sub.next_within(Duration::from_millis(300)).await.is_none());
    drop(sub);
    // And the file holds them too: kill -9, start again, replay.
    drop(s);
    let s = Server::start_on(&data_dir, &[]);
    let mut sub = Sub::ok(&s.hub(), "match=t&last_event_id=earliest").await;
    for id in &acknowledged {
        assert_eq!(&sub.next().await.id, id);
    }
    assert!(sub.next_within(Duration::from_millis(300)).await.is_none());
}

/// Make a history file with some updates, then damage it the way a bad
/// disk would: a run of garbage in the middle.
async fn damaged_history(dir: &std::path::Path) {
    {
        let mut s = Server::start_on(dir, &[]);
        let data = "y".repeat(300);
        for i in 0..300 {
            publish(&s.hub(), &[("topic", "t"), ("data", &format!("{i}{data}"))]).await;
        }
        assert!(s.terminate().success());
    }
    let file = dir.join("history.redb");
    let mut bytes = std::fs::read(&file).expect("read history");
    // Garble the page that holds update 150's record: wherever the storage
    // engine put it, a page of updates every start reads.
    let needle = format!("150{}", "y".repeat(40));
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .expect("update 150 is in the file");
    let page = at / 4096 * 4096;
    let mut x: u32 = 0x1234_5678;
    for b in bytes.iter_mut().skip(page).take(4096) {
        // xorshift: deterministic garbage.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    std::fs::write(&file, bytes).expect("write damaged history");
}

#[tokio::test]
async fn a_damaged_history_file_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    damaged_history(dir.path()).await;
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "127.0.0.1:0", "--jwt-key", KEY])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run herald");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {stderr}");
    assert!(stderr.contains("history.redb"), "names the file: {stderr}");
    assert!(stderr.contains("backup"), "says what to do: {stderr}");
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
    assert!(
        !stderr.contains("stack backtrace"),
        "no backtrace: {stderr}"
    );
}

fn history_check(dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["history", "check", "--data-dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run herald history check")
}

#[tokio::test]
async fn history_check_reads_every_record_offline() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = Server::start_on(dir.path(), &[]);
        for i in 0..25 {
            publish(&s.hub(), &[("topic", "t"), ("data", &i.to_string())]).await;
        }
        assert!(s.terminate().success());
    }
    let out = history_check(dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("25 updates, sequence 1 to 25"), "{stdout}");

    let missing = history_check(&dir.path().join("nope"));
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no such file"));

    let damaged = tempfile::tempdir().unwrap();
    damaged_history(damaged.path()).await;
    let out = history_check(damaged.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("history.redb") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

#[tokio::test]
async fn private_ids_are_never_revealed_to_those_who_may_not_see_them() {
    let s = Server::start(&[]);
    let hub = s.hub();
    let public = publish(&hub, &[("topic", "https://ex.net/u/1"), ("data", "p")]).await;
    let secret = publish(
        &hub,
        &[
            ("topic", "https://ex.net/u/1"),
            ("data", "s"),
            ("private", "on"),
        ],
    )
    .await;
    let query = format!("topic={}", enc("https://ex.net/u/{id}"));
    // The legacy header names the newest update this subscriber may see.
    let anon = Sub::open(&hub, &query, SubOpts::default()).await;
    let _ = anon; // no resume asked: no header
    let resume = |id: &'static str| SubOpts {
        last_event_id: Some(id),
        ..Default::default()
    };
    let secret_static: &'static str = Box::leak(secret.clone().into_boxed_str());
    let from_secret = Sub::open(&hub, &query, resume(secret_static)).await;
    let from_unknown = Sub::open(&hub, &query, resume("urn:uuid:unknown")).await;
    for sub in [&from_secret, &from_unknown] {
        assert_eq!(sub.status, 200);
        assert_eq!(
            sub.header("mercure-last-event-id").as_deref(),
            Some("earliest")
        );
        assert_eq!(
            sub.header("last-event-id").as_deref(),
            Some(public.as_str()),
            "the newest private id leaked"
        );
    }
    // Its owner sees it.
    let owner_token = token(&[], &["https://ex.net/u/1"]);
    let owner = Sub::open(
        &hub,
        &query,
        SubOpts {
            token: Some(&owner_token),
            last_event_id: Some(&public),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        owner.header("mercure-last-event-id").as_deref(),
        Some(public.as_str())
    );
    assert_eq!(
        owner.header("last-event-id").as_deref(),
        Some(secret.as_str())
    );
}

#[tokio::test]
async fn subscription_churn_never_evicts_published_updates() {
    let s = Server::start(&["--subscriptions", "--history-size", "5"]);
    let hub = s.hub();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(publish(&hub, &[("topic", "t"), ("data", &i.to_string())]).await);
    }
    for _ in 0..30 {
        let sub = Sub::ok(&hub, "match=other").await;
        drop(sub);
    }
    // Let the disconnects be processed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut sub = Sub::open(
        &hub,
        "match=t",
        SubOpts {
            last_event_id: Some(&ids[0]),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        sub.header("mercure-last-event-id").as_deref(),
        Some(ids[0].as_str()),
        "the resume point was evicted by subscription events"
    );
    for id in &ids[1..] {
        assert_eq!(&sub.next().await.id, id);
    }
}

#[tokio::test]
async fn the_subscriptions_api_never_reveals_a_private_id() {
    let s = Server::start(&["--subscriptions"]);
    let hub = s.hub();
    let public = publish(&hub, &[("topic", "https://ex.net/news"), ("data", "p")]).await;
    let secret = publish(
        &hub,
        &[
            ("topic", "https://ex.net/users/alice/inbox"),
            ("data", "s"),
            ("private", "on"),
        ],
    )
    .await;
    let ask = |token: String| {
        let url = format!("{}/.well-known/mercure/subscriptions", s.base);
        async move {
            let resp = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("subscriptions API");
            assert_eq!(resp.status(), 200);
            let link = resp
                .headers()
                .get("link")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let body: serde_json::Value = resp.json().await.expect("json");
            (
                link,
                body["lastEventID"].as_str().unwrap_or_default().to_string(),
            )
        }
    };
    // A token for the subscriptions topic only: the newest public id.
    let (link, last) = ask(token(&[], &["/.well-known/mercure/subscriptions"])).await;
    assert_eq!(
        last, public,
        "a private id leaked through the subscriptions API"
    );
    assert!(link.contains(&public) && !link.contains(&secret), "{link}");
    // A token that may read Alice's inbox sees its id.
    let (_, last) = ask(token(
        &[],
        &[
            "/.well-known/mercure/subscriptions",
            "https://ex.net/users/alice/inbox",
        ],
    ))
    .await;
    assert_eq!(last, secret);
}

/// On a small disk the journal is not preallocated (its 17 MiB of zeros
/// would fill it for a moment, and then a log line or the history file
/// could not be written): it grows as it is written, and the hub says so.
#[tokio::test]
async fn on_a_small_disk_the_journal_is_not_preallocated() {
    let disk = SmallDisk::mount("48m");
    let data_dir = disk.path().join("data");
    let s = Server::start_on(&data_dir, &[]);
    let journal = data_dir.join("history.journal");
    let len = std::fs::metadata(&journal)
        .expect("the journal exists")
        .len();
    assert!(
        len < 1 << 20,
        "the journal was preallocated on a 48 MiB disk: {len} bytes"
    );
    let id = publish(&s.hub(), &[("topic", "t"), ("data", "fits")]).await;
    assert!(!id.is_empty());
    assert!(
        std::fs::metadata(&journal).unwrap().len() > 0,
        "the journal grows as written"
    );
    drop(s);
    // On a roomy disk it is preallocated as before.
    let roomy = tempfile::tempdir().unwrap();
    let s = Server::start_on(roomy.path(), &[]);
    let len = std::fs::metadata(roomy.path().join("history.journal"))
        .unwrap()
        .len();
    assert!(
        len >= 16 << 20,
        "the journal was not preallocated on a roomy disk: {len} bytes"
    );
    drop(s);
}
