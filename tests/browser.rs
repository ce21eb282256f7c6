//! Real Chromium (Debian's `chromium`, driven by `playwright-core`) opens an
//! EventSource on a page served by herald and receives published updates.
//! `scripts/test-all.sh` installs Chromium and the npm package.

mod common;

use std::path::Path;
use std::process::Command;

use common::pki::Pki;
use common::*;

#[test]
fn chromium_eventsource_receives_updates() {
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

    let server = Server::start(&[]);
    let out = Command::new("node")
        .arg("eventsource.mjs")
        .current_dir(&dir)
        .env("HERALD_BASE", &server.base)
        .env("HERALD_TOKEN", publisher())
        .env(
            "HERALD_SUBSCRIBER_TOKEN",
            token(&[], &["https://example.com/users/1"]),
        )
        .env("CHROMIUM", &chromium)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "browser checks failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(stdout.matches("ok - ").count(), 3, "{stdout}");
}

/// Over https, one page opens 12 EventSources (over HTTP/1.1 the 7th would
/// wait for a free connection) and every one receives every update.
#[test]
fn chromium_over_https_runs_twelve_eventsources_on_http2() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let pki = Pki::new();
    let (cert, key) = (pki.s("a.pem"), pki.s("a.key"));
    let server = Server::start(&["--tls-cert", &cert, "--tls-key", &key]);
    let base = server.base.replace("127.0.0.1", "localhost");
    let out = Command::new("node")
        .arg("h2_streams.mjs")
        .current_dir(&dir)
        .env("HERALD_BASE", &base)
        .env("HERALD_TOKEN", publisher())
        .env("NODE_EXTRA_CA_CERTS", pki.s("a-ca.pem"))
        .env("CHROMIUM", &chromium)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "browser checks failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(stdout.matches("ok - ").count(), 5, "{stdout}");
}
