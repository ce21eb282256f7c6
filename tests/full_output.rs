//! Writing to stdout or stderr must never stop Herald: with both on a full
//! device (`/dev/full`: every write fails with "no space left"), `herald
//! serve` starts, serves, and stops cleanly on SIGTERM.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[tokio::test]
async fn a_full_stdout_and_stderr_never_stop_the_hub() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--jwt-key", KEY, "--data-dir"])
        .arg(dir.path())
        .env("HERALD_LOG", "info")
        .stdout(Stdio::from(full()))
        .stderr(Stdio::from(full()))
        .spawn()
        .expect("start herald");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("herald exited with {status} when its output could not be written");
        }
        if let Ok(r) = reqwest::get(format!("{base}/readyz")).await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "herald never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // It serves: a publish (logged at info) goes through.
    let id = publish(
        &format!("{base}/.well-known/mercure"),
        &[("topic", "t"), ("data", "x")],
    )
    .await;
    assert!(!id.is_empty());
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "herald did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "herald stopped with {status}");
}
