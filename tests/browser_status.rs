//! The status page (`/ui/`) in real Chromium (Debian's `chromium`, driven
//! by `playwright-core`): it goes live on the hub's status stream, and its
//! numbers and charts follow publishes. The checks are in
//! `tests/browser/status_ui.mjs`; this test runs the hub for it. The
//! screenshot it takes is saved as `target/screenshots/status-ui.png`
//! (`docs/img/status-ui.png` is a copy).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

#[test]
fn status_page_in_chromium() {
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
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let shots = target.join("screenshots");
    std::fs::create_dir_all(&shots).expect("create the screenshots dir");
    let screenshot = shots.join("status-ui.png");
    let _ = std::fs::remove_file(&screenshot);

    let server = Server::start(&[]);
    let out = Command::new("node")
        .arg("status_ui.mjs")
        .current_dir(&dir)
        .env("HERALD_BASE", &server.base)
        .env("HERALD_TOKEN", publisher())
        .env("SCREENSHOT", &screenshot)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "status page checks failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(stdout.matches("ok - ").count(), 4, "{stdout}");
    let png = std::fs::read(&screenshot).expect("the screenshot was saved");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
}
