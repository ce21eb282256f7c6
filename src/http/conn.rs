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

use std::io::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use axum::Router;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tower::ServiceExt;

use super::HUB_PATH;

/// Largest request head read on the lean path; a longer one goes to hyper
/// (which answers 431).
const MAX_HEAD: usize = 16 * 1024;
/// Most header lines looked at on the lean path.
const MAX_HEADERS: usize = 64;
/// A client must send its request head within this time.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Serve one accepted connection until it ends. `shutdown` turns true when
/// the server stops: hyper connections then finish their request and close;
/// event streams end when the hub closes them.
pub async fn serve_connection(tcp: TcpStream, app: Router, shutdown: watch::Receiver<bool>) {
    let mut head = Vec::with_capacity(1024);
    let first = tokio::time::timeout(HEAD_TIMEOUT, read_head(&tcp, &mut head)).await;
    let request = match first {
        Err(_) | Ok(Err(_)) | Ok(Ok(Head::Closed)) => return,
        Ok(Ok(Head::Lean(request))) => *request,
        Ok(Ok(Head::Other)) => {
            // Boxed, so the state of every lean connection's task stays
            // small: hyper's connection future is large.
            return Box::pin(serve_with_hyper(tcp, head, app, shutdown)).await;
        }
    };
    drop(head);
    let response = match app.oneshot(request).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let _ = write_response(tcp, response).await;
}

enum Head {
    /// The client went away before sending a request.
    Closed,
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
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                return Ok(lean_request(&parsed, len == buf.len())
                    .map_or(Head::Other, |r| Head::Lean(Box::new(r))))
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            // Too long, too many headers or malformed: hyper answers it.
            _ => return Ok(Head::Other),
        }
    }
}

/// The request, if it belongs on the lean path.
fn lean_request(parsed: &httparse::Request<'_, '_>, nothing_after: bool) -> Option<Request<Body>> {
    let path = parsed.path?;
    let lean = nothing_after
        && parsed.method == Some("GET")
        && parsed.version == Some(1)
        && path.split('?').next() == Some(HUB_PATH);
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
        builder = builder.header(h.name, HeaderValue::from_bytes(h.value).ok()?);
    }
    builder.body(Body::empty()).ok()
}

/// Write the router's answer. An event stream is sent chunked, a batch of
/// events per chunk, until the hub ends it or the client goes away; any
/// other answer (an error) is sent whole and the connection closed.
async fn write_response(mut tcp: TcpStream, response: Response<Body>) -> std::io::Result<()> {
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

async fn serve_with_hyper(
    tcp: TcpStream,
    already_read: Vec<u8>,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let io = TokioIo::new(Prefixed {
        prefix: already_read,
        pos: 0,
        inner: tcp,
    });
    let service = TowerToHyperService::new(
        app.map_request(|r: Request<hyper::body::Incoming>| r.map(Body::new)),
    );
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    if *shutdown.borrow() {
        conn.as_mut().graceful_shutdown();
    }
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// The socket, with the bytes already read from it put back in front.
struct Prefixed {
    prefix: Vec<u8>,
    pos: usize,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
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
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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
