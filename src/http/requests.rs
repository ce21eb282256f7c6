//! One request through the router, the same on every path a request takes
//! (the lean HTTP/1.1 path, hyper's HTTP/1.1 and HTTP/2, clear text or
//! TLS): the peer's address for the handlers, a request id, and a log line
//! for every error answer.
//!
//! Request ids: a request that carries `X-Request-Id` (a proxy's, or the
//! client's: at most 128 visible ASCII characters) gets it back on its
//! answer. An error answer (4xx, 5xx) always carries one (the request's,
//! or a new one), and its log line names it with the method, the path (never
//! the query: it may hold a token), the status, the client's address
//! (through `--trusted-proxies`) and the reason the answer gives.
//! Successful answers without a request id get none: nothing is made on
//! the hot path.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use axum::Router;
use tower::ServiceExt;

use super::proxies::TrustedProxies;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The reason an error answer gives, left by `HttpError` for the log line.
#[derive(Clone)]
pub struct Reason(pub String);

/// A request id we accept from a request: 1 to 128 visible ASCII
/// characters (no spaces, nothing a log or a header could be split by).
fn acceptable(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

/// A new request id: unique within this process, and across restarts (a
/// random prefix per process).
fn new_id() -> HeaderValue {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = *PREFIX.get_or_init(rand::random::<u32>);
    let id = format!("{prefix:08x}-{:x}", NEXT.fetch_add(1, Relaxed));
    HeaderValue::from_str(&id).expect("hex is a valid header value")
}

/// Serve `req` (from `peer`) through `app`, with its request id and, for
/// an error answer, a log line.
pub async fn handle(
    app: Router,
    mut req: Request<Body>,
    peer: Option<SocketAddr>,
    proxies: &TrustedProxies,
) -> Response<Body> {
    if let Some(peer) = peer {
        req.extensions_mut().insert(ConnectInfo(peer));
    }
    let given = req
        .headers()
        .get(X_REQUEST_ID)
        .filter(|v| acceptable(v))
        .cloned();
    let method = req.method().clone();
    let uri = req.uri().clone();
    // Through a trusted proxy, the forwarding headers name the client (kept
    // for an error's log line; a direct client is its peer address).
    let forwarded = match peer {
        Some(p) if proxies.contains(p.ip()) => forwarding_headers(req.headers()),
        _ => HeaderMap::new(),
    };
    // A publish (single or batch) is timed and counted by its answer.
    let publish = (method == axum::http::Method::POST
        && uri.path().starts_with(super::HUB_PATH)
        && matches!(&uri.path()[super::HUB_PATH.len()..], "" | "/batch"))
    .then(std::time::Instant::now);
    let mut resp = match app.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = resp.status();
    if let Some(started) = publish {
        let m = &crate::metrics::METRICS;
        crate::metrics::observe(&m.publish_seconds, started.elapsed());
        m.publishes
            .get_or_create(&crate::metrics::Outcome {
                status: status.as_u16(),
            })
            .inc();
    }
    if !status.is_client_error() && !status.is_server_error() {
        if let Some(id) = given {
            resp.headers_mut().insert(X_REQUEST_ID, id);
        }
        return resp;
    }
    let id = given.unwrap_or_else(new_id);
    // No client named by a trusted proxy: the peer is the client.
    let client: Option<IpAddr> =
        peer.map(|p| proxies.client_ip(p.ip(), &forwarded).unwrap_or(p.ip()));
    let reason = resp
        .extensions()
        .get::<Reason>()
        .map(|r| r.0.as_str())
        .or(status.canonical_reason())
        .unwrap_or("");
    let request_id = id.to_str().unwrap_or("");
    let client = client.map(|c| c.to_string()).unwrap_or_default();
    if status.is_server_error() {
        tracing::warn!(target: "herald::http", request_id, %method, path = uri.path(), status = status.as_u16(), client, reason, "request failed");
    } else {
        tracing::info!(target: "herald::http", request_id, %method, path = uri.path(), status = status.as_u16(), client, reason, "request refused");
    }
    resp.headers_mut().insert(X_REQUEST_ID, id);
    resp
}

fn forwarding_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in ["x-forwarded-for", "forwarded"] {
        for v in headers.get_all(name) {
            out.append(name, v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_from_outside_are_bounded_and_visible_ascii() {
        assert!(acceptable(&HeaderValue::from_static("abc-123_x.y")));
        assert!(!acceptable(&HeaderValue::from_static("")));
        assert!(!acceptable(&HeaderValue::from_static("a b")));
        assert!(!acceptable(
            &HeaderValue::from_str(&"a".repeat(129)).unwrap()
        ));
        assert!(acceptable(
            &HeaderValue::from_str(&"a".repeat(128)).unwrap()
        ));
        let (a, b) = (new_id(), new_id());
        assert_ne!(a, b);
        assert!(acceptable(&a));
    }
}
