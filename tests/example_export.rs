//! The async export example (examples/export, scenario 3) in real
//! Chromium, clustered: a real `redis-server`, two herald nodes sharing it
//! with `--transport redis://...`, the page subscribing on node 1 and the
//! export worker (a separate process the app starts) publishing through
//! node 2 (node 1 refuses the app's publisher tokens, so the events can
//! only reach the page through node 2 and Redis). The page's progress bar advances, the "ready" pop-up appears,
//! its link downloads the file; another user sees nothing of the job (live
//! or by replay, on either node) and cannot download it; bad input gets a
//! clear 4xx; a job run while both nodes are stopped, a worker killed
//! mid-job and the app restarted mid-job all reach the open page. The checks are in `tests/browser/example_export.mjs`. Needs
//! the example built (`cargo build --release --examples`) and
//! `redis-server` on PATH.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::apps::{example_bin, screenshot_dir, start_on_port, App};
use common::redis::{free_port, Redis};
use common::{publisher, KEY};

/// Node 1's publisher key: not the one the worker mints its tokens with.
const NODE1_PUBLISHER_KEY: &str = "node-1-takes-no-publishes-from-the-app";

/// Wait until the node answers `/readyz` 200 (it caught up with the log).
fn wait_ready(base: &str) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = reqwest::get(format!("{base}/readyz")).await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "{base}/readyz is not 200");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

#[test]
fn export_in_chromium_on_two_clustered_nodes() {
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
    let bin = example_bin("export");
    let redis = Redis::start(&[]);
    let redis_url = redis.url();
    let data = tempfile::tempdir().expect("app data dir");

    // The app needs both hub URLs, the hubs need the app's origin: choose
    // the hubs' ports first.
    let (port1, port2) = (free_port(), free_port());
    let (node1_url, node2_url) = (
        format!("http://127.0.0.1:{port1}"),
        format!("http://127.0.0.1:{port2}"),
    );
    let app_env = [
        ("HERALD_PUBLISH_URL", node2_url.as_str()),
        ("EXPORT_STEP_MS", "400"),
    ];
    let mut app = App::start(&bin, "127.0.0.1:0", &node1_url, data.path(), &app_env);
    let app_base = app.base.clone();
    let app_addr = app_base.strip_prefix("http://").expect("http").to_string();
    let args = |listen: &str, extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "serve",
            "--listen",
            listen,
            "--jwt-key",
            KEY,
            "--transport",
            &redis_url,
            "--cors-origins",
            &app_base,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    // Node 1 verifies publisher tokens with another key: it refuses the
    // worker's, so whatever the page receives came through node 2 and
    // Redis.
    let args1 = args(
        &format!("127.0.0.1:{port1}"),
        &["--publisher-jwt-key", NODE1_PUBLISHER_KEY],
    );
    let args2 = args(&format!("127.0.0.1:{port2}"), &[]);
    let start = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = start_on_port(&args);
        wait_ready(&server.base);
        server
    };
    let mut nodes = Some((start(&args1), start(&args2)));
    let (node1_base, node2_base) = {
        let (n1, n2) = nodes.as_ref().expect("started");
        (n1.base.clone(), n2.base.clone())
    };

    let mut script = Command::new("node")
        .arg("example_export.mjs")
        .current_dir(&dir)
        .env("APP_URL", &app_base)
        .env("HERALD_URL", &node1_base)
        .env("HERALD2_URL", &node2_base)
        .env("HERALD_TOKEN", publisher())
        .env("APP_PID", app.child.id().to_string())
        .env("SCREENSHOT_DIR", screenshot_dir())
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run node");
    let mut to_script = script.stdin.take().expect("stdin");
    let mut report = String::new();
    for line in BufReader::new(script.stdout.take().expect("stdout")).lines() {
        let line = line.expect("read node output");
        // An outage: both nodes stopped (SIGTERM) while the app runs, then
        // started again on their ports (Redis keeps the log).
        if line == "@stop-herald" {
            let (mut n1, mut n2) = nodes.take().expect("nodes are running");
            n1.terminate();
            n2.terminate();
            writeln!(to_script, "stopped").expect("answer node");
            continue;
        }
        // The app killed (SIGKILL; its running workers go on) and started
        // again on its address and data dir.
        if line == "@restart-app" {
            app.kill();
            app = App::start(&bin, &app_addr, &node1_url, data.path(), &app_env);
            writeln!(to_script, "restarted").expect("answer node");
            continue;
        }
        if line == "@start-herald" {
            assert!(nodes.is_none(), "the nodes are already running");
            nodes = Some((start(&args1), start(&args2)));
            writeln!(to_script, "started").expect("answer node");
            continue;
        }
        println!("{line}");
        report.push_str(&line);
        report.push('\n');
    }
    let status = script.wait().expect("wait for node");
    drop(app);
    drop(nodes);
    drop(redis);
    assert!(status.success(), "example_export.mjs failed:\n{report}");
    assert_eq!(report.matches("ok - ").count(), 10, "{report}");
}
