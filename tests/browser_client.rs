//! herald.js, the browser client herald serves at `/herald.js`, in real
//! Chromium (Debian's `chromium`, driven by `playwright-core`): tabs sharing
//! one stream, leader takeover, hub restart, token expiry, fresh-page resume.
//! The checks are in `tests/browser/herald_js.mjs`; this test runs the hub
//! for it, and restarts it (same port, same data dir) when it asks.
//! A binary of its own, so it never runs beside the other browser test.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

#[test]
fn herald_js_in_chromium() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run scripts/test-all.sh (or `npm ci` in tests/browser)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} not found: run scripts/test-all.sh (it installs Debian's chromium)"
    );

    let data = tempfile::tempdir().expect("data dir");
    let data_path = data.path().to_str().expect("utf-8 temp path").to_string();
    let mut server = Server::start_on(data.path(), &[]);
    let addr = server
        .base
        .strip_prefix("http://")
        .expect("http base")
        .to_string();

    let mut node = Command::new("node")
        .arg("herald_js.mjs")
        .current_dir(&dir)
        .env("HERALD_BASE", &server.base)
        .env("HERALD_TOKEN", publisher())
        .env("HERALD_JWT_KEY", KEY)
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run node");
    let mut to_node = node.stdin.take().expect("stdin");
    let from_node = BufReader::new(node.stdout.take().expect("stdout"));
    let mut report = String::new();
    for line in from_node.lines() {
        let line = line.expect("read node output");
        if line == "@restart" {
            // A deploy: SIGTERM ends the streams, a new process takes the
            // same port and history.
            server.terminate();
            server = Server::start_raw(
                &[
                    "serve",
                    "--listen",
                    &addr,
                    "--jwt-key",
                    KEY,
                    "--data-dir",
                    &data_path,
                ],
                &[],
            );
            writeln!(to_node, "restarted").expect("answer node");
            continue;
        }
        println!("{line}");
        report.push_str(&line);
        report.push('\n');
    }
    let status = node.wait().expect("wait for node");
    drop(server);
    assert!(status.success(), "herald.js checks failed:\n{report}");
    assert_eq!(report.matches("ok - ").count(), 9, "{report}");
}
