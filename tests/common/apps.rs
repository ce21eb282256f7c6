//! Support for the example apps' tests (tests/example_*.rs): find the
//! example's binary, start it beside a real herald, and run its Playwright
//! script (tests/browser/example_*.mjs) against both.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::SystemTime;

use super::{publisher, Server, KEY};

/// The session key the tests give the apps (so a restarted app still
/// knows the browser's login cookie).
pub const SESSION_KEY: &str = "example-tests-session-key";

/// `target/<profile>`: the test binary lives in `target/<profile>/deps`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .to_path_buf()
}

/// Where the tests save their screenshots: `target/screenshots`.
pub fn screenshot_dir() -> PathBuf {
    let dir = profile_dir()
        .parent()
        .expect("target dir")
        .join("screenshots");
    std::fs::create_dir_all(&dir).expect("create target/screenshots");
    dir
}

fn newest_source(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir)
        .expect("read example sources")
        .flatten()
    {
        if let Ok(m) = entry.metadata().and_then(|m| m.modified()) {
            newest = newest.max(m);
        }
    }
    newest
}

/// The example's binary (`cargo build --release --examples`, which
/// scripts/test-all.sh runs before the tests), refusing a stale one.
pub fn example_bin(name: &str) -> PathBuf {
    let bin = profile_dir().join("examples").join(name);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} not found: build the examples first (`cargo build --release --examples`; scripts/test-all.sh does)",
                bin.display()
            )
        });
    let sources = newest_source(&root.join(name)).max(newest_source(&root.join("common")));
    assert!(
        built >= sources,
        "{} is older than its sources: rebuild it (`cargo build --release --examples`)",
        bin.display()
    );
    bin
}

// Herald's port is chosen first: its --cors-origins must name the apps
// before it starts, and the apps need its URL.
use super::redis::free_port;

/// A running example app.
pub struct App {
    pub child: Child,
    pub base: String,
}

impl App {
    pub fn start(
        bin: &Path,
        listen: &str,
        herald_url: &str,
        data_dir: &Path,
        env: &[(&str, &str)],
    ) -> App {
        let mut child = Command::new(bin)
            .envs(env.iter().copied())
            .env("LISTEN", listen)
            .env("HERALD_URL", herald_url)
            .env("HERALD_JWT_KEY", KEY)
            .env("SESSION_KEY", SESSION_KEY)
            .env("DATA_DIR", data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start example app");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("app exited before listening")
                .expect("read stdout");
            if let Some(addr) = line.strip_prefix("listening on ") {
                break addr.trim().to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        App { child, base }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Start herald and the example, run `tests/browser/<script>`; the script
/// may print `@restart-app` to have the app killed (SIGKILL) and started
/// again on the same port and data dir, and `@stop-herald` / `@start-herald`
/// to stop Herald (SIGTERM) while the app runs and start it again on the
/// same port and data dir (an outage). Returns the script's report.
pub fn run_example(name: &str, script: &str) -> String {
    run_example_with_env(name, script, &[])
}

/// Start Herald again on the port it had: that port may still be held for
/// a moment by the old process's sockets, so try for a few seconds.
pub fn start_on_port(args: &[&str]) -> Server {
    for _ in 0..50 {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        let probe = cmd
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .env("HERALD_LOG", "warn")
            .spawn();
        let mut child = probe.expect("start herald");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let listening = lines.by_ref().map_while(Result::ok).find_map(|l| {
            l.strip_prefix("listening on ")
                .map(|addr| addr.trim().to_string())
        });
        match listening {
            Some(base) => {
                std::thread::spawn(move || for _ in lines {});
                return Server {
                    child,
                    base,
                    data_dir: None,
                };
            }
            None => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
    panic!("herald could not listen again on its port within 5 s");
}

/// [`run_example`], the app getting `env` too (e.g. `REDIS_URL`).
pub fn run_example_with_env(name: &str, script: &str, env: &[(&str, &str)]) -> String {
    run(name, script, env, None)
}

/// [`run_example`] with Herald asking the app about subscribers that bring
/// no token: `--auth-url <app><auth_path>`.
#[allow(dead_code)]
pub fn run_example_with_auth_url(name: &str, script: &str, auth_path: &str) -> String {
    run(name, script, &[], Some(auth_path))
}

fn run(name: &str, script: &str, env: &[(&str, &str)], auth_path: Option<&str>) -> String {
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
    let bin = example_bin(name);
    let data = tempfile::tempdir().expect("app data dir");

    let herald_port = free_port();
    let herald_url = format!("http://127.0.0.1:{herald_port}");
    let mut app = App::start(&bin, "127.0.0.1:0", &herald_url, data.path(), env);
    let app_addr = app.base.strip_prefix("http://").expect("http").to_string();
    let app_base = app.base.clone();
    // The app's page subscribes across origins: Herald lists it.
    let listen = format!("127.0.0.1:{herald_port}");
    let herald_data = tempfile::tempdir().expect("herald data dir");
    let herald_dir = herald_data.path().to_str().expect("utf-8 temp path");
    let mut args = vec![
        "serve",
        "--listen",
        &listen,
        "--jwt-key",
        KEY,
        "--cors-origins",
        &app_base,
        "--data-dir",
        herald_dir,
    ];
    let auth_url = auth_path.map(|p| format!("{app_base}{p}"));
    if let Some(url) = &auth_url {
        args.extend(["--auth-url", url.as_str()]);
    }
    let mut server = Some(Server::start_raw(&args, &[]));
    let hub_url = server.as_ref().expect("started").base.clone();

    let mut node = Command::new("node")
        .arg(script)
        .current_dir(&dir)
        .env("APP_URL", &app_base)
        .env("HERALD_URL", &hub_url)
        .env("HERALD_TOKEN", publisher())
        .env("SCREENSHOT_DIR", screenshot_dir())
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
        if line == "@restart-app" {
            app.kill();
            app = App::start(&bin, &app_addr, &herald_url, data.path(), env);
            writeln!(to_node, "restarted").expect("answer node");
            continue;
        }
        if line == "@stop-herald" {
            let mut stopped = server.take().expect("herald is running");
            stopped.terminate();
            writeln!(to_node, "stopped").expect("answer node");
            continue;
        }
        if line == "@start-herald" {
            assert!(server.is_none(), "herald is already running");
            server = Some(start_on_port(&args));
            writeln!(to_node, "started").expect("answer node");
            continue;
        }
        println!("{line}");
        report.push_str(&line);
        report.push('\n');
    }
    let status = node.wait().expect("wait for node");
    drop(app);
    drop(server);
    assert!(status.success(), "{script} failed:\n{report}");
    report
}
