//! The reverse-proxy snippets in deploy/, as shipped, through the real
//! servers: Debian's nginx (nginx-light) and Caddy, each in front of a real
//! Herald, HTTPS and HTTP/2 to a real client (curl). A stream opened
//! through the proxy gets each update at once (nothing buffered), a
//! publish goes through, and an error answer carries the proxy's request
//! id.
mod common;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::curl::CurlStream;
use common::pki::Pki;
use common::redis::free_port;
use common::*;

struct Proxy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_port(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn herald_addr(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_string()
}

/// deploy/nginx/herald.conf with its upstream, listen address and
/// certificate pointed at the test's.
fn nginx(server: &Server, pki: &Pki) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let snippet = std::fs::read_to_string("deploy/nginx/herald.conf").unwrap();
    let snippet = snippet
        .replace(
            "server 127.0.0.1:8080;",
            &format!("server {};", herald_addr(server)),
        )
        .replace(
            "listen 443 ssl http2;",
            &format!("listen 127.0.0.1:{port} ssl http2;"),
        )
        .replace("    listen [::]:443 ssl http2;\n", "")
        .replace("/etc/ssl/push.example.com/fullchain.pem", &pki.s("a.pem"))
        .replace("/etc/ssl/push.example.com/privkey.pem", &pki.s("a.key"));
    assert!(
        snippet.contains(&format!("127.0.0.1:{port}")),
        "the listen line is as expected"
    );
    let d = dir.path().display();
    std::fs::write(dir.path().join("herald.conf"), snippet).unwrap();
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         include {d}/herald.conf;\n}}\n"
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let mut child = Command::new("nginx")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx on PATH (apt-get install nginx-light)");
    wait_port(port, "nginx", &mut child);
    Proxy {
        child,
        port,
        _dir: dir,
    }
}

/// deploy/caddy/Caddyfile for `localhost` (Caddy's own CA) on a free port.
fn caddy(server: &Server) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let site = std::fs::read_to_string("deploy/caddy/Caddyfile")
        .unwrap()
        .replace("push.example.com {", &format!("localhost:{port} {{"))
        .replace(
            "reverse_proxy 127.0.0.1:8080",
            &format!("reverse_proxy {}", herald_addr(server)),
        );
    let d = dir.path().display();
    let global = format!(
        "{{\n\tadmin off\n\tskip_install_trust\n\tstorage file_system {d}/data\n\tauto_https disable_redirects\n\
         \thttp_port {}\n\thttps_port {port}\n}}\n\n",
        free_port()
    );
    std::fs::write(dir.path().join("Caddyfile"), global + &site).unwrap();
    let mut child = Command::new("caddy")
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(dir.path().join("Caddyfile"))
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path().join("data"))
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("caddy on PATH (apt-get install caddy)");
    wait_port(port, "caddy", &mut child);
    Proxy {
        child,
        port,
        _dir: dir,
    }
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "-k", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl on PATH");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What both proxies must do for Herald; `id_ok` recognises the proxy's
/// request ids.
fn through(base: &str, id_ok: impl Fn(&str) -> bool) {
    let topic = "https://example.com/behind";
    let url = format!("{base}/.well-known/mercure?topic={}", enc(topic));
    let stream = CurlStream::open(&["-k", "--http2", "-D", "-", &url]);
    assert!(stream.wait_for(":"), "the stream opened through the proxy");
    assert!(
        stream.out.lock().starts_with("HTTP/2 200"),
        "HTTP/2 to the client: {}",
        stream.out.lock()
    );
    for i in 0..3 {
        let sent = Instant::now();
        let answer = curl(&[
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &format!("Authorization: Bearer {}", publisher()),
            "-d",
            &format!("topic={topic}"),
            "-d",
            &format!("data=event-{i}"),
            &format!("{base}/.well-known/mercure"),
        ]);
        assert_eq!(answer, "200");
        assert!(
            stream.wait_for(&format!("data: event-{i}")),
            "event {i} came through"
        );
        // Not held in a buffer: well within the heartbeat.
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "event {i} took {:?}",
            sent.elapsed()
        );
    }
    // An error answer carries the proxy's request id.
    let head = curl(&[
        "-D",
        "-",
        "-o",
        "/dev/null",
        &format!("{base}/no-such-page"),
    ]);
    assert!(head.contains(" 404"), "{head}");
    let id = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap_or_else(|| panic!("no request id: {head}"))
        .trim();
    assert!(id_ok(id), "the proxy's id, not one Herald made: {id}");
}

#[test]
fn the_nginx_snippet_serves_streams_over_https_and_http2() {
    let server = Server::start(&[]);
    let pki = Pki::new();
    let proxy = nginx(&server, &pki);
    // nginx's $request_id: 32 hex digits.
    through(&format!("https://127.0.0.1:{}", proxy.port), |id| {
        id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit())
    });
}

#[test]
fn the_caddy_snippet_serves_streams_over_https_and_http2() {
    let server = Server::start(&[]);
    let proxy = caddy(&server);
    // Caddy's {http.request.uuid}: a UUID.
    through(&format!("https://localhost:{}", proxy.port), |id| {
        id.len() == 36 && id.matches('-').count() == 4
    });
}
