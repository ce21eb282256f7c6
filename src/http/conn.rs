//! One TCP connection: a lean path for event streams, hyper for the rest.
//!
//! Why not hyper for everything: a subscriber's connection lives for hours
//! and only receives. Served by hyper, each one keeps hyper's read buffer
//! (16 KiB once grown) and write buffer (8 KiB) for its whole life — measured
//! with valgrind massif, ~24 KiB of the ~34 KiB a connection cost. At a
//! million connections that is 24 GB of buffers holding nothing.
//!
//! So the first request on a connection is read here into a small buffer.
//! If it is `GET /.well-known/mercure` with no body, it is turned into an
//! `http::Request` and sent through the same axum router as every other
//! request (token, validation, 400/401/406, CORS: one code path decides),
//! and only the response is written here: the head once, then each
//! coalesced batch of events as one HTTP/1.1 chunk, with no buffer kept
//! between writes. Anything else (a publish, the subscriptions API, a
//! malformed request, HTTP/1.0, a pipelined request) is handed to hyper
//! together with the bytes already read, and hyper serves the rest of that
//! connection as usual.
//!
//! HTTP/2 goes to hyper's HTTP/2: over TLS when the client picks `h2` in
//! ALPN, and in clear text (h2c with prior knowledge) when the first bytes
//! are the HTTP/2 preface. Over TLS with `http/1.1`, the connection takes
//! the path above, lean event streams included. Every socket write, under
//! TLS too, has the write deadline.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use axum::Router;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Sleep;

use super::HUB_PATH;

/// Largest request head read on the lean path; a longer one goes to hyper
/// (which answers 431).
const MAX_HEAD: usize = 16 * 1024;
/// Most header lines looked at on the lean path.
const MAX_HEADERS: usize = 64;
/// A canned refusal must be written within this time: its client may not be
/// reading, and the socket must not outlive the refusal by much.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);
/// Refusals being written at once; beyond this a refused socket is closed
/// without an answer, so a flood cannot use up descriptors through them.
const MAX_REFUSALS_IN_FLIGHT: usize = 256;
/// `Retry-After` of a refused connection, in seconds.
const RETRY_AFTER_SECS: u32 = 5;
/// The first bytes of every HTTP/2 connection (RFC 9113 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Counters of the HTTP edge for `/metrics`. Process-wide, like the
/// process's sockets they count.
pub struct EdgeStats {
    pub connections: AtomicUsize,
    pub refused_total: AtomicU64,
    pub refused_per_ip: AtomicU64,
    pub write_timeouts: AtomicU64,
    pub header_timeouts: AtomicU64,
    /// Request bodies that did not arrive within `--body-timeout` (408).
    pub body_timeouts: AtomicU64,
    pub accept_errors: AtomicU64,
    /// TLS handshakes that failed or did not finish within
    /// `--header-timeout`.
    pub tls_failures: AtomicU64,
    /// Connections served as HTTP/2 (over TLS or h2c).
    pub h2_connections: AtomicU64,
    /// HTTP/2 connections open now.
    pub h2_open: AtomicUsize,
}

pub static STATS: EdgeStats = EdgeStats {
    connections: AtomicUsize::new(0),
    refused_total: AtomicU64::new(0),
    refused_per_ip: AtomicU64::new(0),
    write_timeouts: AtomicU64::new(0),
    header_timeouts: AtomicU64::new(0),
    body_timeouts: AtomicU64::new(0),
    accept_errors: AtomicU64::new(0),
    tls_failures: AtomicU64::new(0),
    h2_connections: AtomicU64::new(0),
    h2_open: AtomicUsize::new(0),
};

/// How connections are served beyond clear-text HTTP/1.1.
#[derive(Clone)]
pub struct Edge {
    /// `--tls-cert`/`--tls-key`: every connection is TLS.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// `--h2-max-streams`: `SETTINGS_MAX_CONCURRENT_STREAMS` of each
    /// HTTP/2 connection.
    pub h2_max_streams: u32,
    /// `--peer-timeout`: an HTTP/2 peer that does not answer a PING within
    /// it is dropped (PINGs are sent after half of it without traffic).
    pub peer_timeout: Duration,
    /// An HTTP/2 stream whose body hyper has not asked for data this long
    /// is reset: `--write-timeout` plus one `--heartbeat` (zero when
    /// either is: no watchdog). See `h2_stall`.
    pub h2_stall_after: Duration,
    /// `--trusted-proxies`: whose forwarding headers name the client (in
    /// the log line of an error answer).
    pub proxies: Arc<super::proxies::TrustedProxies>,
}

/// Deadlines of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For the whole request head.
    pub header: Duration,
    /// For any write to make progress.
    pub write: Duration,
}

/// Counts open connections, in total and per client address, against the
/// configured limits (0: no limit).
pub struct ConnLimiter {
    max_total: usize,
    max_per_ip: usize,
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over `--max-connections`: 503.
    Total,
    /// Over `--max-connections-per-ip`: 429.
    PerIp,
}

/// One counted connection; dropping it frees its slot, however the
/// connection ended.
pub struct ConnGuard {
    limiter: Arc<ConnLimiter>,
    ip: Option<IpAddr>,
}

impl ConnLimiter {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<ConnLimiter> {
        Arc::new(ConnLimiter {
            max_total,
            max_per_ip,
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a connection from `ip`; `proxy`: a trusted proxy's,
    /// not counted per address (it carries many clients).
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr, proxy: bool) -> Result<ConnGuard, Refusal> {
        let before = self.open.fetch_add(1, Relaxed);
        if self.max_total != 0 && before >= self.max_total {
            self.open.fetch_sub(1, Relaxed);
            STATS.refused_total.fetch_add(1, Relaxed);
            return Err(Refusal::Total);
        }
        let ip = if self.max_per_ip == 0 || proxy {
            None
        } else {
            let ip = client_key(ip);
            let mut map = self.per_ip.lock();
            let n = map.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                drop(map);
                self.open.fetch_sub(1, Relaxed);
                STATS.refused_per_ip.fetch_add(1, Relaxed);
                return Err(Refusal::PerIp);
            }
            *n += 1;
            Some(ip)
        };
        STATS.connections.fetch_add(1, Relaxed);
        Ok(ConnGuard {
            limiter: self.clone(),
            ip,
        })
    }
}

/// What the per-IP limit counts by: an IPv4 address (also when mapped into
/// IPv6), or an IPv6 /64, the block one client (one home, one host at a
/// provider) is given: counting whole IPv6 addresses would give such a
/// client 2^64 separate allowances.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(std::net::Ipv6Addr::from(segments))
            }
        },
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut map = self.limiter.per_ip.lock();
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
        self.limiter.open.fetch_sub(1, Relaxed);
        STATS.connections.fetch_sub(1, Relaxed);
    }
}

static REFUSALS_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Answer a connection over a limit with a canned response and close it.
pub fn refuse(tcp: TcpStream, why: Refusal) {
    if REFUSALS_IN_FLIGHT.fetch_add(1, Relaxed) >= MAX_REFUSALS_IN_FLIGHT {
        REFUSALS_IN_FLIGHT.fetch_sub(1, Relaxed);
        return;
    }
    let answer = match why {
        Refusal::Total => canned(
            "503 Service Unavailable",
            true,
            "the server has too many open connections; retry later",
        ),
        Refusal::PerIp => canned(
            "429 Too Many Requests",
            true,
            "too many open connections from your address; close some or retry later",
        ),
    };
    tokio::spawn(async move {
        let _ = tokio::time::timeout(REFUSAL_TIMEOUT, answer_and_close(tcp, answer)).await;
        REFUSALS_IN_FLIGHT.fetch_sub(1, Relaxed);
    });
}

/// Write a whole answer, then wait for the client to close: closing a
/// socket with its request still unread sends a reset, which can destroy
/// the answer before the client reads it.
async fn answer_and_close(mut tcp: TcpStream, answer: Vec<u8>) {
    if tcp.write_all(&answer).await.is_err() || tcp.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 1024];
    while let Ok(n) = tcp.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

/// Make a peer whose network vanished (no FIN, no RST) go away within
/// about `timeout` (0: leave the socket as the system made it): TCP
/// keepalive probes after half of it idle, and `TCP_USER_TIMEOUT` so that
/// data left unacknowledged that long ends the connection too.
pub fn detect_vanished_peer(tcp: &TcpStream, timeout: Duration) {
    if timeout.is_zero() {
        return;
    }
    let fd = tcp.as_raw_fd();
    let idle = (timeout.as_secs() / 2).max(1) as libc::c_int;
    let probes: libc::c_int = 4;
    let interval = ((timeout.as_secs() / 2) / probes as u64).max(1) as libc::c_int;
    let user_timeout = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    let set = |level, name, value: libc::c_int| {
        // SAFETY: a valid socket descriptor, and a pointer to an int that
        // lives across the call, with its size.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, interval);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, probes);
    set(libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, user_timeout);
}

/// A complete HTTP/1.1 answer with a text body, closing the connection.
fn canned(status: &str, retry_after: bool, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let _ = write!(
        out,
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n",
        message.len() + 1
    );
    if retry_after {
        let _ = write!(out, "retry-after: {RETRY_AFTER_SECS}\r\n");
    }
    let _ = write!(out, "\r\n{message}\n");
    out
}

/// Serve one accepted connection until it ends. `shutdown` turns true when
/// the server stops: hyper connections then finish their request and close;
/// event streams end when the hub closes them. `_slot` is held until the
/// connection is gone. Every request carries the socket's peer address as
/// `ConnectInfo<SocketAddr>` (asked of the socket when a request arrives,
/// so an idle connection keeps no copy): the address a handler may trust,
/// unlike any forwarding header.
pub async fn serve_connection(
    tcp: TcpStream,
    app: Router,
    shutdown: watch::Receiver<bool>,
    timeouts: Timeouts,
    edge: Arc<Edge>,
    _slot: ConnGuard,
) {
    if let Some(acceptor) = edge.tls.clone() {
        // Boxed: the TLS state is large, and only TLS connections pay it.
        return Box::pin(serve_tls(tcp, acceptor, app, shutdown, timeouts, edge)).await;
    }
    let mut head = Vec::with_capacity(1024);
    let first = tokio::time::timeout(timeouts.header, read_head(&tcp, &mut head)).await;
    let request = match first {
        Err(_) => {
            STATS.header_timeouts.fetch_add(1, Relaxed);
            // A client that started a request is told why it is closed; an
            // idle connection is just closed.
            if !head.is_empty() {
                let mut tcp = tcp;
                answer_late_head(&mut tcp, timeouts).await;
            }
            return;
        }
        Ok(Err(_)) | Ok(Ok(Head::Closed)) => return,
        Ok(Ok(Head::Lean(request))) => *request,
        Ok(Ok(Head::Other)) => {
            // Boxed, so the state of every lean connection's task stays
            // small: hyper's connection future is large.
            let peer = tcp.peer_addr().ok();
            let fd = tcp.as_raw_fd();
            let io = Prefixed::new(head, WriteDeadline::new(tcp, timeouts.write));
            return Box::pin(serve_with_hyper(
                io,
                peer,
                Some(fd),
                app,
                shutdown,
                timeouts,
                edge.proxies.clone(),
            ))
            .await;
        }
        Ok(Ok(Head::H2)) => {
            let peer = tcp.peer_addr().ok();
            let io = Prefixed::new(head, WriteDeadline::new(tcp, timeouts.write));
            return Box::pin(serve_h2(io, peer, app, shutdown, &edge, timeouts.header)).await;
        }
    };
    drop(head);
    let peer = tcp.peer_addr().ok();
    // Boxed: the request's state is large and short-lived; inline, it
    // would size every connection's task (held as long as its stream).
    let response = Box::pin(super::requests::handle(app, request, peer, &edge.proxies)).await;
    let _ = write_response(WriteDeadline::new(tcp, timeouts.write), response).await;
}

/// A TLS connection: the handshake (within `--header-timeout`), then
/// HTTP/2 if the client picked `h2`, else the clear-text path's HTTP/1.1
/// (the lean event stream included) inside TLS.
async fn serve_tls(
    tcp: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
    shutdown: watch::Receiver<bool>,
    timeouts: Timeouts,
    edge: Arc<Edge>,
) {
    let peer = tcp.peer_addr().ok();
    let io = WriteDeadline::new(tcp, timeouts.write);
    let mut tls = match tokio::time::timeout(timeouts.header, acceptor.accept(io)).await {
        Ok(Ok(tls)) => tls,
        _ => {
            STATS.tls_failures.fetch_add(1, Relaxed);
            return;
        }
    };
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        return serve_h2(tls, peer, app, shutdown, &edge, timeouts.header).await;
    }
    let mut head = Vec::with_capacity(1024);
    let first = tokio::time::timeout(timeouts.header, read_head_from(&mut tls, &mut head)).await;
    let request = match first {
        Err(_) => {
            STATS.header_timeouts.fetch_add(1, Relaxed);
            if !head.is_empty() {
                answer_late_head(&mut tls, timeouts).await;
            }
            return;
        }
        Ok(Err(_)) | Ok(Ok(Head::Closed)) => return,
        Ok(Ok(Head::Lean(request))) => *request,
        Ok(Ok(Head::H2)) => {
            // The preface after ALPN said http/1.1 (or nothing): HTTP/2
            // with prior knowledge, as on a clear-text connection.
            let io = Prefixed::new(head, tls);
            return serve_h2(io, peer, app, shutdown, &edge, timeouts.header).await;
        }
        Ok(Ok(Head::Other)) => {
            let io = Prefixed::new(head, tls);
            let proxies = edge.proxies.clone();
            return serve_with_hyper(io, peer, None, app, shutdown, timeouts, proxies).await;
        }
    };
    drop(head);
    // Boxed: the request's state is large and short-lived; inline, it
    // would size every connection's task (held as long as its stream).
    let response = Box::pin(super::requests::handle(app, request, peer, &edge.proxies)).await;
    let _ = write_response(tls, response).await;
}

/// [`read_head`] for a stream that is not a bare socket (TLS).
async fn read_head_from<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<Head> {
    loop {
        let mut chunk = [0u8; 1024];
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        let searched = buf.len();
        buf.extend_from_slice(&chunk[..n]);
        if let Some(head) = classify(buf, searched) {
            return Ok(head);
        }
    }
}

/// What the bytes read so far are, once that can be told (`searched`: how
/// many of them were looked at before).
fn classify(buf: &[u8], searched: usize) -> Option<Head> {
    if buf.len() >= H2_PREFACE.len().min(14) && buf.starts_with(&H2_PREFACE[..14]) {
        return Some(Head::H2);
    }
    // Parse only once the head can be complete: re-parsing on every read
    // would be quadratic for a client sending a byte at a time.
    if !has_end_of_head(buf, searched) {
        if buf.len() < MAX_HEAD {
            return None;
        }
        return Some(Head::Other);
    }
    match parse_lean_head(buf) {
        LeanHead::Partial => None,
        LeanHead::Lean(request) => Some(Head::Lean(request)),
        LeanHead::Other => Some(Head::Other),
    }
}

/// Tell a client that started a request head and did not finish it
/// within `--header-timeout` why its connection closes (408), within the
/// write deadline.
async fn answer_late_head<S: AsyncWrite + Unpin>(io: &mut S, timeouts: Timeouts) {
    let message = format!(
        "the request head did not arrive within {:?}",
        timeouts.header
    );
    let answer = canned("408 Request Timeout", false, &message);
    let _ = tokio::time::timeout(timeouts.write, async {
        io.write_all(&answer).await?;
        io.shutdown().await
    })
    .await;
}

enum Head {
    /// The client went away before sending a request.
    Closed,
    /// The HTTP/2 preface: h2c with prior knowledge.
    H2,
    /// A bodiless `GET` of the hub, to be answered on the lean path.
    Lean(Box<Request<Body>>),
    /// Anything else: hyper's job.
    Other,
}

async fn read_head(tcp: &TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Head> {
    loop {
        tcp.readable().await?;
        let mut chunk = [0u8; 1024];
        let n = match tcp.try_read(&mut chunk) {
            Ok(0) => return Ok(Head::Closed),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let searched = buf.len();
        buf.extend_from_slice(&chunk[..n]);
        if let Some(head) = classify(buf, searched) {
            return Ok(head);
        }
    }
}

/// What the bytes of a request head read so far call for.
#[derive(Debug)]
pub enum LeanHead {
    /// The head is not complete yet (and still within the lean path's
    /// 16 KiB limit).
    Partial,
    /// A complete bodiless `GET` of the hub: the lean path serves it.
    Lean(Box<Request<Body>>),
    /// Anything else (another request, too long, too many headers,
    /// malformed, bytes after the head): hyper's job.
    Other,
}

/// Parse the request head buffered so far. Pure, so it can be tested and
/// fuzzed on its own; `read_head` calls it once [`has_end_of_head`] says
/// the head can be complete.
pub fn parse_lean_head(buf: &[u8]) -> LeanHead {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => lean_request(&parsed, len == buf.len())
            .map_or(LeanHead::Other, |r| LeanHead::Lean(Box::new(r))),
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => LeanHead::Partial,
        // Too long, too many headers or malformed: hyper answers it.
        _ => LeanHead::Other,
    }
}

/// Whether `buf` holds an empty line (the end of a head; httparse accepts
/// bare LF line ends too), looking only at bytes from `searched` on and the
/// two before them, which may start one.
pub fn has_end_of_head(buf: &[u8], searched: usize) -> bool {
    let tail = &buf[searched.saturating_sub(2)..];
    tail.windows(2)
        .enumerate()
        .any(|(i, w)| w == b"\n\n" || (w == b"\n\r" && tail.get(i + 2) == Some(&b'\n')))
}

/// Request headers that describe one connection or the message framing,
/// not the request: the lean path owns those, the router never sees them.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "transfer-encoding",
    "content-length",
];

/// The request, if it belongs on the lean path.
fn lean_request(parsed: &httparse::Request<'_, '_>, nothing_after: bool) -> Option<Request<Body>> {
    let path = parsed.path?;
    let lean = nothing_after
        && parsed.method == Some("GET")
        && parsed.version == Some(1)
        && path.split('?').next() == Some(HUB_PATH)
        // HTTP/1.1 requires Host; hyper's path answers its absence.
        && parsed
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("host"));
    if !lean {
        return None;
    }
    let mut builder = Request::builder()
        .method(Method::GET)
        .uri(path)
        .version(Version::HTTP_11);
    for h in parsed.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        // A GET with a body is unusual enough to leave to hyper.
        if name == "content-length" && h.value != b"0" || name == "transfer-encoding" {
            return None;
        }
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        builder = builder.header(h.name, HeaderValue::from_bytes(h.value).ok()?);
    }
    builder.body(Body::empty()).ok()
}

/// Write the router's answer. An event stream is sent chunked, a batch of
/// events per chunk, until the hub ends it or the client goes away; any
/// other answer (an error) is sent whole and the connection closed.
async fn write_response<S>(mut tcp: S, response: Response<Body>) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (parts, body) = response.into_parts();
    let streaming = parts.status == StatusCode::OK
        && parts
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let mut head = Vec::with_capacity(512);
    let _ = write!(
        head,
        "HTTP/1.1 {} {}\r\ndate: {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or(""),
        httpdate::fmt_http_date(std::time::SystemTime::now())
    );
    for (name, value) in &parts.headers {
        // Framing and connection handling are decided here, once.
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
            || name.as_str() == "keep-alive"
        {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if !streaming {
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let _ = write!(
            head,
            "content-length: {}\r\nconnection: close\r\n\r\n",
            bytes.len()
        );
        head.extend_from_slice(&bytes);
        tcp.write_all(&head).await?;
        return tcp.shutdown().await;
    }
    head.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
    tcp.write_all(&head).await?;
    drop(head);

    let mut events = body.into_data_stream();
    let mut probe = [0u8; 64];
    loop {
        tokio::select! {
            chunk = events.next() => match chunk {
                Some(Ok(data)) if data.is_empty() => {}
                Some(Ok(data)) => {
                    let mut framed = Vec::with_capacity(data.len() + 12);
                    let _ = write!(framed, "{:x}\r\n", data.len());
                    framed.extend_from_slice(&data);
                    framed.extend_from_slice(b"\r\n");
                    tcp.write_all(&framed).await?;
                }
                // The hub ended the stream (cut off as too slow, token
                // expired, shutting down): end the response properly.
                Some(Err(_)) | None => {
                    tcp.write_all(b"0\r\n\r\n").await?;
                    return tcp.shutdown().await;
                }
            },
            // A subscriber sends nothing after its request: end of file or
            // an error means it is gone, and dropping `events` unsubscribes
            // it at once. Anything it does send is ignored.
            read = tcp.read(&mut probe) => match read {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => {}
            },
        }
    }
}

/// HTTP/1.1 by hyper. `fd`: the bare socket under `io` (valid for as long
/// as `io` lives), to answer a late head with a 408; none under TLS.
async fn serve_with_hyper<S>(
    io: Prefixed<S>,
    peer: Option<SocketAddr>,
    fd: Option<std::os::fd::RawFd>,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
    timeouts: Timeouts,
    proxies: Arc<super::proxies::TrustedProxies>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mid_request = io.mid_request.clone();
    let io = TokioIo::new(io);
    let service = TowerToHyperService::new(tower::service_fn(
        move |r: Request<hyper::body::Incoming>| {
            let app = app.clone();
            let proxies = proxies.clone();
            async move {
                // hyper does not insist on Host; HTTP/1.1 does (RFC 9112 3.2).
                if r.version() == Version::HTTP_11 && !r.headers().contains_key(header::HOST) {
                    return Ok::<_, Infallible>(missing_host());
                }
                let r = r.map(Body::new);
                Ok(super::requests::handle(app, r, peer, &proxies).await)
            }
        },
    ));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header)
        .max_buf_size(64 * 1024)
        .serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    if *shutdown.borrow() {
        conn.as_mut().graceful_shutdown();
    }
    tokio::select! {
        served = conn.as_mut() => {
            if served.is_err_and(|e| e.is_timeout()) {
                // hyper gave up on a request head (`--header-timeout`):
                // counted, and answered 408 like the lean path, unless the
                // connection was idle between requests. (A half head that
                // came in one read with the request before it, pipelined,
                // is closed without the 408: hyper holds it unseen.)
                STATS.header_timeouts.fetch_add(1, Relaxed);
                if let Some(fd) = fd.filter(|_| mid_request.load(Relaxed)) {
                    let message =
                        format!("the request head did not arrive within {:?}", timeouts.header);
                    answer_on_fd(fd, &canned("408 Request Timeout", false, &message));
                }
            }
            return;
        }
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// HTTP/2 by hyper, over TLS or in clear text: every stream a request
/// through the router, like HTTP/1.1. At most `--h2-max-streams` streams at
/// once; a peer that does not answer a PING within `--peer-timeout` is
/// dropped, with all its streams.
async fn serve_h2<S>(
    io: S,
    peer: Option<SocketAddr>,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
    edge: &Edge,
    header_timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    STATS.h2_connections.fetch_add(1, Relaxed);
    STATS.h2_open.fetch_add(1, Relaxed);
    struct Open;
    impl Drop for Open {
        fn drop(&mut self) {
            STATS.h2_open.fetch_sub(1, Relaxed);
        }
    }
    let _open = Open;
    let proxies = edge.proxies.clone();
    // A connection that sends no request within --header-timeout is
    // closed, as on HTTP/1.1 (an idle connection holds a slot).
    let asked = Arc::new(AtomicBool::new(false));
    let seen = asked.clone();
    let service = TowerToHyperService::new(tower::service_fn(
        move |r: Request<hyper::body::Incoming>| {
            let app = app.clone();
            let proxies = proxies.clone();
            seen.store(true, Relaxed);
            async move {
                let r = r.map(Body::new);
                let resp = super::requests::handle(app, r, peer, &proxies).await;
                Ok::<_, Infallible>(resp.map(super::h2_stall::watch))
            }
        },
    ));
    let mut builder = hyper::server::conn::http2::Builder::new(super::h2_stall::StreamExecutor {
        stall_after: edge.h2_stall_after,
    });
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(edge.h2_max_streams)
        // Small windows: a stream carries small events, and each stream's
        // buffered bytes count against its memory.
        .initial_stream_window_size(64 * 1024)
        .max_send_buf_size(64 * 1024);
    if !edge.peer_timeout.is_zero() {
        builder
            .keep_alive_interval(edge.peer_timeout / 2)
            .keep_alive_timeout(edge.peer_timeout / 2);
    }
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    if *shutdown.borrow() {
        conn.as_mut().graceful_shutdown();
    }
    let first_request = tokio::time::sleep(header_timeout);
    tokio::pin!(first_request);
    let mut waiting = true;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = &mut first_request, if waiting => {
                waiting = false;
                if !asked.load(Relaxed) {
                    STATS.header_timeouts.fetch_add(1, Relaxed);
                    return;
                }
            }
        }
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// Send a short answer on a socket that hyper still owns but no longer
/// uses (it gave up on the connection), then end our side of it. One
/// non-blocking send: the answer is far smaller than an empty socket
/// buffer, and a peer that cannot take it is not waited for.
fn answer_on_fd(fd: std::os::fd::RawFd, answer: &[u8]) {
    // SAFETY: `fd` is the socket of a connection that is still open (its
    // owner is alive in the caller); send and shutdown only read `answer`.
    unsafe {
        libc::send(
            fd,
            answer.as_ptr().cast(),
            answer.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        );
        libc::shutdown(fd, libc::SHUT_WR);
    }
}

fn missing_host() -> Response<Body> {
    let mut r = Response::new(Body::from("HTTP/1.1 requests must carry a Host header\n"));
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// A socket whose writes fail with `TimedOut` when one makes no progress
/// for `timeout`: a client that stops reading must not hold its connection
/// (and the events queued for it) forever. The timer exists only while a
/// write is blocked.
struct WriteDeadline<T> {
    inner: T,
    timeout: Duration,
    blocked_since: Option<Pin<Box<Sleep>>>,
}

impl<T> WriteDeadline<T> {
    fn new(inner: T, timeout: Duration) -> Self {
        WriteDeadline {
            inner,
            timeout,
            blocked_since: None,
        }
    }

    fn check<R>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<std::io::Result<R>>,
    ) -> Poll<std::io::Result<R>> {
        if result.is_ready() {
            self.blocked_since = None;
            return result;
        }
        let timeout = self.timeout;
        let timer = self
            .blocked_since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.blocked_since = None;
        STATS.write_timeouts.fetch_add(1, Relaxed);
        Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client read nothing for the write timeout",
        )))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, result)
    }
}

/// The socket, with the bytes already read from it put back in front.
struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
    /// Bytes were read since the last write: a request is under way (so
    /// a header timeout now is told why, with a 408).
    mid_request: Arc<AtomicBool>,
}

impl<S> Prefixed<S> {
    fn new(prefix: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed {
            mid_request: Arc::new(AtomicBool::new(!prefix.is_empty())),
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.mid_request.store(true, Relaxed);
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let wrote = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(wrote, Poll::Ready(Ok(n)) if n > 0) {
            self.mid_request.store(false, Relaxed);
        }
        wrote
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let wrote = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(wrote, Poll::Ready(Ok(n)) if n > 0) {
            self.mid_request.store(false, Relaxed);
        }
        wrote
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_limits_count_ipv6_by_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(client_key(mapped), "10.1.2.3".parse::<IpAddr>().unwrap());
        let limiter = ConnLimiter::new(0, 1);
        let _held = limiter.try_acquire(a, false).expect("first from the /64");
        assert!(
            limiter.try_acquire(b, false).is_err(),
            "same /64, over the limit"
        );
        assert!(limiter.try_acquire(c, false).is_ok(), "another /64");
    }

    #[test]
    fn end_of_head_is_found_across_reads() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        for split in 0..head.len() {
            let mut buf = head[..split].to_vec();
            let searched_complete = has_end_of_head(&buf, 0);
            assert!(!searched_complete || split == head.len());
            let searched = buf.len();
            buf.extend_from_slice(&head[split..]);
            assert!(has_end_of_head(&buf, searched), "split at {split}");
        }
        assert!(has_end_of_head(b"GET / HTTP/1.1\nHost: x\n\n", 0));
        assert!(!has_end_of_head(b"GET / HTTP/1.1\r\nHost: x\r\n", 0));
    }

    #[test]
    fn slots_are_freed_when_guards_drop() {
        let limiter = ConnLimiter::new(3, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let a1 = limiter.try_acquire(a, false).unwrap();
        let _a2 = limiter.try_acquire(a, false).unwrap();
        assert_eq!(limiter.try_acquire(a, false).err(), Some(Refusal::PerIp));
        let _b1 = limiter.try_acquire(b, false).unwrap();
        assert_eq!(limiter.try_acquire(b, false).err(), Some(Refusal::Total));
        drop(a1);
        let _b2 = limiter.try_acquire(b, false).unwrap();
        assert_eq!(limiter.per_ip.lock().len(), 2);
        let unlimited = ConnLimiter::new(0, 0);
        let many: Vec<_> = (0..100)
            .map(|_| unlimited.try_acquire(a, false).unwrap())
            .collect();
        drop(many);
        assert_eq!(unlimited.open.load(Relaxed), 0);
    }
}
