//! TLS, HTTP/2 and h2c, with real clients: curl (HTTP/2 through libcurl's
//! nghttp2), h2load and nghttp (Debian's `nghttp2-client`), certificates
//! made by openssl.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::curl::CurlStream;
use common::pki::Pki;
use common::redis::free_port;
use common::*;

fn tls_server(pki: &Pki, extra: &[&str]) -> Server {
    let cert = pki.s("cert.pem");
    let key = pki.s("cert.key");
    std::fs::copy(pki.path("a.pem"), &cert).unwrap();
    std::fs::copy(pki.path("a.key"), &key).unwrap();
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--jwt-key",
        KEY,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ];
    args.extend_from_slice(extra);
    Server::start_raw(&args, &[])
}

/// `curl` with `args`; its stdout, and its exit code.
fn curl(args: &[&str]) -> (String, i32) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl on PATH");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

fn bearer() -> String {
    format!("Authorization: Bearer {}", publisher())
}

fn hub(base: &str) -> String {
    format!("{base}/.well-known/mercure")
}

/// Publish `data` to `topic` with curl and `how` (e.g. `--http2`); the
/// status and the HTTP version curl used.
fn curl_publish(base: &str, how: &[&str], topic: &str, data: &str) -> (String, String) {
    let mut args: Vec<&str> = how.to_vec();
    let auth = bearer();
    let topic = format!("topic={topic}");
    let data = format!("data={data}");
    let url = hub(base);
    args.extend([
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{http_version}",
        "-H",
        &auth,
        "-d",
        &topic,
        "-d",
        &data,
        &url,
    ]);
    let (out, code) = curl(&args);
    assert_eq!(code, 0, "curl publish {how:?}: {out}");
    let (status, version) = out.split_once(' ').unwrap();
    (status.to_string(), version.to_string())
}

#[test]
fn https_serves_http2_and_http1_streams_and_publishes() {
    let pki = Pki::new();
    let server = tls_server(&pki, &[]);
    assert!(server.base.starts_with("https://"), "{}", server.base);
    let ca = pki.s("a-ca.pem");
    for (how, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let topic = format!("https://example.com/tls/{}", version.replace('.', "-"));
        let url = format!("{}?topic={}", hub(&server.base), enc(&topic));
        let stream = CurlStream::open(&["--cacert", &ca, how, "-D", "-", &url]);
        assert!(stream.wait_for(":"), "{how}: the stream opened");
        let (status, used) =
            curl_publish(&server.base, &["--cacert", &ca, how], &topic, "over-tls");
        assert_eq!((status.as_str(), used.as_str()), ("200", version), "{how}");
        assert!(
            stream.wait_for("data: over-tls"),
            "{how}: the event arrived"
        );
        let head = stream.out.lock().clone();
        let first = head.lines().next().unwrap_or("");
        assert!(
            first.starts_with(&format!("HTTP/{version} 200")),
            "{how}: {first}"
        );
    }
    // Clear text on a TLS port is refused, not served.
    let plain = server.base.replace("https://", "http://");
    let (_, code) = curl(&["-o", "/dev/null", &format!("{plain}/healthz")]);
    assert_ne!(code, 0, "no clear-text answer on the TLS port");
    // TLS 1.1 is refused.
    let (_, code) = curl(&[
        "--cacert",
        &ca,
        "--tls-max",
        "1.1",
        &format!("{}/healthz", server.base),
    ]);
    assert_ne!(code, 0, "TLS 1.1 refused");
}

#[test]
fn h2c_with_prior_knowledge_on_the_clear_text_listener() {
    let server = Server::start(&[]);
    let topic = "https://example.com/h2c";
    let url = format!("{}?topic={}", hub(&server.base), enc(topic));
    let stream = CurlStream::open(&["--http2-prior-knowledge", "-D", "-", &url]);
    assert!(stream.wait_for(":"), "the stream opened");
    let (status, used) = curl_publish(
        &server.base,
        &["--http2-prior-knowledge"],
        topic,
        "plain-h2",
    );
    assert_eq!((status.as_str(), used.as_str()), ("200", "2"));
    assert!(stream.wait_for("data: plain-h2"));
    assert!(stream.out.lock().starts_with("HTTP/2 200"));
    // HTTP/1.1 on the same listener.
    let (status, used) = curl_publish(&server.base, &[], topic, "plain-h1");
    assert_eq!((status.as_str(), used.as_str()), ("200", "1.1"));
    assert!(stream.wait_for("data: plain-h1"));
    let metrics = curl(&[&format!("{}/metrics", server.base)]).0;
    assert!(
        metrics.contains("herald_http2_connections_total 2"),
        "the stream's and the publish's: {metrics}"
    );
}

/// Each stream over one HTTP/2 connection is a subscriber of its own, and
/// the stream limit is what `--h2-max-streams` says.
#[test]
fn many_streams_share_one_http2_connection_within_the_limit() {
    let pki = Pki::new();
    let server = tls_server(&pki, &["--h2-max-streams", "7"]);
    let addr = server.base.trim_start_matches("https://").to_string();
    // h2load: 10,000 streams over 100 connections, 7 at once on each (the
    // most the server allows: more could be refused, RST_STREAM
    // REFUSED_STREAM, before the client has read the server's SETTINGS).
    let out = Command::new("h2load")
        .args(["-n", "10000", "-c", "100", "-m", "7"])
        .arg(format!("https://{addr}/healthz"))
        .output()
        .expect("h2load on PATH (apt-get install nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("10000 succeeded"), "{text}");
    assert!(text.contains("status codes: 10000 2xx"), "{text}");
    assert!(text.contains("Application protocol: h2"), "{text}");
    // nghttp shows the server's SETTINGS frame.
    let out = Command::new("nghttp")
        .args(["-nv", &format!("https://{addr}/healthz")])
        .output()
        .expect("nghttp on PATH (apt-get install nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("SETTINGS_MAX_CONCURRENT_STREAMS(0x03):7"),
        "{text}"
    );
}

fn start_fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "127.0.0.1:0", "--jwt-key", KEY])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} must not start");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_bad_certificate_or_key_is_a_clear_startup_error() {
    let pki = Pki::new();
    pki.issue("b");
    let (cert, key) = (pki.s("a.pem"), pki.s("a.key"));
    let missing = pki.s("nope.pem");
    let e = start_fails(&["--tls-cert", &missing, "--tls-key", &key]);
    assert!(
        e.contains("--tls-cert") && e.contains("nope.pem") && e.contains("cannot read"),
        "{e}"
    );
    // A key file given as the certificate: no certificate in it.
    let e = start_fails(&["--tls-cert", &key, "--tls-key", &key]);
    assert!(
        e.contains("--tls-cert") && e.contains("no PEM certificate"),
        "{e}"
    );
    let e = start_fails(&["--tls-cert", &cert, "--tls-key", &cert]);
    assert!(
        e.contains("--tls-key") && e.contains("no PEM private key"),
        "{e}"
    );
    // b's key with a's certificate.
    let e = start_fails(&["--tls-cert", &cert, "--tls-key", &pki.s("b.key")]);
    assert!(e.contains("does not go with"), "{e}");
    let e = start_fails(&["--tls-cert", &cert]);
    assert!(e.contains("tls_key"), "{e}");
    let e = start_fails(&["--redirect-http", "127.0.0.1:0"]);
    assert!(e.contains("redirect_http"), "{e}");
}

#[test]
fn sighup_reloads_the_certificate_without_dropping_a_stream() {
    let pki = Pki::new();
    pki.issue("b");
    let server = tls_server(&pki, &[]);
    let (ca_a, ca_b) = (pki.s("a-ca.pem"), pki.s("b-ca.pem"));
    let topic = "https://example.com/reload";
    let url = format!("{}?topic={}", hub(&server.base), enc(topic));
    let stream = CurlStream::open(&["--cacert", &ca_a, "--http2", "-D", "-", &url]);
    assert!(stream.wait_for(":"));
    // A broken pair first: logged, the old one stays.
    std::fs::write(pki.path("cert.pem"), "garbage").unwrap();
    signal(server.child.id(), "HUP");
    std::thread::sleep(Duration::from_millis(300));
    let healthz = format!("{}/healthz", server.base);
    assert_eq!(curl(&["--cacert", &ca_a, &healthz]), ("ok\n".into(), 0));
    // Then b's pair.
    std::fs::copy(pki.path("b.pem"), pki.path("cert.pem")).unwrap();
    std::fs::copy(pki.path("b.key"), pki.path("cert.key")).unwrap();
    signal(server.child.id(), "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while curl(&["--cacert", &ca_b, &healthz]).1 != 0 {
        assert!(Instant::now() < deadline, "the new certificate is served");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_ne!(
        curl(&["--cacert", &ca_a, &healthz]).1,
        0,
        "the old one is not"
    );
    // The stream opened before the reload still gets updates.
    let (status, _) = curl_publish(&server.base, &["--cacert", &ca_b], topic, "after-reload");
    assert_eq!(status, "200");
    assert!(stream.wait_for("data: after-reload"));
}

#[test]
fn redirect_http_answers_308_to_https() {
    let pki = Pki::new();
    let port = free_port();
    let at = format!("127.0.0.1:{port}");
    let server = tls_server(&pki, &["--redirect-http", &at]);
    let tls_port = server.base.rsplit(':').next().unwrap().to_string();
    let (out, code) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        &format!("http://localhost:{port}/.well-known/mercure?topic=x"),
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        format!("308 https://localhost:{tls_port}/.well-known/mercure?topic=x")
    );
    // Followed, with the CA: the hub answers over https.
    let (out, code) = curl(&[
        "-L",
        "--cacert",
        &pki.s("a-ca.pem"),
        &format!("http://localhost:{port}/healthz"),
    ]);
    assert_eq!((out.as_str(), code), ("ok\n", 0));
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// SIGTERM ends HTTP/2 streams cleanly (curl sees the stream end, not a
/// broken connection) and the server exits 0.
#[test]
fn shutdown_ends_http2_streams_cleanly() {
    let pki = Pki::new();
    let mut server = tls_server(&pki, &[]);
    let ca = pki.s("a-ca.pem");
    let url = format!(
        "{}?topic={}",
        hub(&server.base),
        enc("https://example.com/bye")
    );
    let mut streams: Vec<CurlStream> = (0..3)
        .map(|_| CurlStream::open(&["--cacert", &ca, "--http2", "-D", "-", &url]))
        .collect();
    for s in &streams {
        assert!(s.wait_for("HTTP/2 200"));
    }
    signal(server.child.id(), "TERM");
    let status = server.child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
    for s in &mut streams {
        let deadline = Instant::now() + Duration::from_secs(10);
        let code = loop {
            if let Some(code) = s.child.try_wait().unwrap() {
                break code;
            }
            assert!(Instant::now() < deadline, "the stream ended");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            code.success(),
            "curl saw a clean end of the stream: {code:?}"
        );
    }
}

/// An HTTP/2 connection that sends no request within --header-timeout is
/// closed, as an HTTP/1.1 one is: an idle connection must not hold a slot.
#[test]
fn an_http2_connection_without_a_request_is_closed_after_the_header_timeout() {
    use std::io::{Read, Write};
    let server = Server::start(&["--header-timeout", "1s"]);
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
    // The preface and an empty SETTINGS frame, then nothing.
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut buf = [0u8; 1024];
    let closed = loop {
        match tcp.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    assert!(closed, "the server closed the idle HTTP/2 connection");
    let metrics = curl(&[&format!("{}/metrics", server.base)]).0;
    assert!(
        metrics.contains("herald_header_timeouts_total 1"),
        "{metrics}"
    );
}

/// A stream whose client stops reading it (its flow-control window runs
/// out) is reset after `--write-timeout` (plus one heartbeat), while the
/// other streams of the same HTTP/2 connection go on.
#[test]
fn an_http2_stream_that_stops_reading_is_reset_and_its_neighbours_go_on() {
    let server = Server::start(&["--write-timeout", "1s", "--heartbeat", "250ms"]);
    let topic = "https://example.com/stalled";
    let addr = server.base.trim_start_matches("http://").to_string();
    let path = format!("/.well-known/mercure?topic={}", enc(topic));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let got = std::sync::Arc::new(parking_lot::Mutex::new(String::new()));
    let sink = got.clone();
    let (stalled, reader) = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        // 1 KiB per stream: a few updates fill a stream that is not read.
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(1024)
            .handshake::<_, bytes::Bytes>(tcp)
            .await
            .unwrap();
        tokio::spawn(conn);
        let open = |send: h2::client::SendRequest<bytes::Bytes>| {
            let uri = format!("http://{addr}{path}");
            async move {
                let mut send = send.ready().await.unwrap();
                let req = axum::http::Request::get(uri).body(()).unwrap();
                let (resp, _) = send.send_request(req, true).unwrap();
                let resp = resp.await.unwrap();
                assert_eq!(resp.status(), 200);
                resp.into_body()
            }
        };
        let stalled = open(send.clone()).await;
        let mut read = open(send.clone()).await;
        let reader = tokio::spawn(async move {
            while let Some(Ok(data)) = read.data().await {
                let _ = read.flow_control().release_capacity(data.len());
                sink.lock().push_str(&String::from_utf8_lossy(&data));
            }
        });
        (stalled, reader)
    });
    let pad = "x".repeat(300);
    for i in 0..10 {
        let (status, _) = curl_publish(&server.base, &[], topic, &format!("u{i}-{pad}"));
        assert_eq!(status, "200");
    }
    // The write timeout and a heartbeat, and some slack.
    std::thread::sleep(Duration::from_millis(2500));
    let (status, _) = curl_publish(&server.base, &[], topic, "after-the-reset");
    assert_eq!(status, "200");
    rt.block_on(async move {
        // The stalled stream: what fit in its window, then a reset.
        let mut stalled = stalled;
        let mut text = String::new();
        // Keep-alives would keep a stream that was never reset alive: a
        // deadline for the whole drain, not per read.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let end = loop {
            match tokio::time::timeout_at(deadline, stalled.data()).await {
                Ok(Some(Ok(d))) => {
                    let _ = stalled.flow_control().release_capacity(d.len());
                    text.push_str(&String::from_utf8_lossy(&d));
                }
                Ok(Some(Err(e))) => break Some(e),
                Ok(None) => break None,
                Err(_) => panic!("the stalled stream was neither reset nor ended: {text}"),
            }
        };
        let e = end.expect("a reset, not a clean end");
        assert_eq!(e.reason(), Some(h2::Reason::CANCEL), "{e}");
        assert!(
            !text.contains("u9-"),
            "it could not have taken every update"
        );
        assert!(!text.contains("after-the-reset"));
        // The neighbour on the same connection got everything, after too.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !got.lock().contains("data: after-the-reset") {
            assert!(Instant::now() < deadline, "neighbour: {}", got.lock());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!reader.is_finished(), "the neighbour stream is still open");
        let text = got.lock().clone();
        for i in 0..10 {
            assert!(text.contains(&format!("data: u{i}-")), "u{i}: {text}");
        }
        reader.abort();
    });
    let metrics = curl(&[&format!("{}/metrics", server.base)]).0;
    assert!(
        metrics.contains("herald_write_timeouts_total 1"),
        "{metrics}"
    );
}
