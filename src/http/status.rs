//! The status page: `GET /ui/` (one HTML page with its script, source
//! `web/status.html`, embedded) and `GET /ui/stream`, the hub's own status
//! events as Server-Sent Events, which the page draws as live charts.
//!
//! Once a second, and only while someone watches (see
//! [`Hub::status_watchers`]), a task publishes a JSON snapshot of the hub
//! on the reserved topic [`STATUS_TOPIC`]: live only, never stored, never
//! counted as a delivery (`hub::status`). The page computes publishes/s and
//! deliveries/s from the deltas of the counters; nothing polls.
//!
//! Access: a client whose TCP peer address is loopback may open both; any
//! other needs a token (verified with the subscriber key) carrying the
//! claim `{"herald": {"status": true}}` (`herald token --status`), sent as
//! `Authorization: Bearer`, a `mercureAuthorization` cookie or an
//! `authorization` query parameter. The peer address is the socket's
//! (`ConnectInfo`, set by `conn`), never `X-Forwarded-For`. Behind a
//! reverse proxy on the same machine every client's socket is loopback:
//! a request carrying a forwarding header (`Forwarded`, `X-Forwarded-For`,
//! `X-Real-IP`) therefore gets no loopback pass. A proxy that adds none of
//! them must not route `/ui/` to Herald (see docs/status-ui.md).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;

use super::{find_token, form, AppState, HttpError};
use crate::auth::{AuthError, Verifier};
use crate::hub::{Hub, HubStatus, Subscription, Update, STATUS_EVENT_TYPE, STATUS_TOPIC};
use crate::topic::TopicSelector;

/// Where the page is served.
pub const UI_PATH: &str = "/ui/";
/// Where its event stream is served.
pub const STREAM_PATH: &str = "/ui/stream";

const PAGE: &str = include_str!("../../web/status.html");

/// How often the status is published while someone watches.
const PERIOD: Duration = Duration::from_secs(1);

/// When this process started serving (for the uptime).
static STARTED: OnceLock<Instant> = OnceLock::new();

/// Who was let in, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The TCP peer is on this machine.
    Loopback,
    /// A token with the status claim; the stream ends at its `exp`.
    Token { expires_at: Option<SystemTime> },
}

/// Is this address this machine's (127.0.0.0/8, ::1, or 127.x mapped into
/// IPv6)?
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Headers a reverse proxy adds. Their values are never trusted (anyone
/// can send them); their presence only means the loopback peer may be a
/// proxy relaying someone else, so it gets no loopback pass.
const FORWARDING_HEADERS: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

/// May this request see the hub's status? `peer` is the TCP peer's
/// address (`None`, unknown, counts as remote); `query_token` the
/// `authorization` query parameter. A loopback peer is let in whatever it
/// sends, unless the request carries a forwarding header (then it came
/// through a proxy, from anywhere); every other request needs a valid
/// token with `{"herald": {"status": true}}`: 401 without one (or with an
/// invalid one), 403 with a valid token that lacks the claim.
pub fn decide(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    query_token: Option<&str>,
    verifier: &Option<Arc<Verifier>>,
) -> Result<Access, HttpError> {
    let forwarded = FORWARDING_HEADERS
        .iter()
        .find(|h| headers.contains_key(**h));
    if forwarded.is_none() && peer.is_some_and(is_loopback) {
        return Ok(Access::Loopback);
    }
    let who = match (peer, forwarded) {
        (None, _) => "an unknown address".to_string(),
        (Some(ip), None) => ip.to_string(),
        (Some(ip), Some(h)) => format!("{ip} through a proxy (the request carries the header {h})"),
    };
    let Some(token) = find_token(headers, query_token)? else {
        return Err(HttpError::unauthorized(format!(
            "the status page is open without a token only to clients on this machine (loopback), and you connect from {who}: send a token with the claim {{\"herald\": {{\"status\": true}}}} (mint one with `herald token --status`) as 'Authorization: Bearer <jwt>', a mercureAuthorization cookie or ?authorization=<jwt>"
        )));
    };
    let grants = super::verify_held(verifier, &token)?;
    if !grants.status {
        return Err(AuthError::Forbidden(
            "this token does not carry the claim {\"herald\": {\"status\": true}}, which the status page requires from an address other than loopback (mint one with `herald token --status`)".into(),
        )
        .into());
    }
    if grants
        .expires_at
        .is_some_and(|exp| exp <= SystemTime::now())
    {
        return Err(
            AuthError::Invalid("the token has expired: come back with a fresh one".into()).into(),
        );
    }
    Ok(Access::Token {
        expires_at: grants.expires_at,
    })
}

/// The access decision for a request, from its socket address, headers and
/// query.
fn check(state: &AppState, req: &Request) -> Result<Access, HttpError> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let query = req.uri().query().unwrap_or("");
    let pairs = form::parse(query.as_bytes()).map_err(|e| HttpError::bad_request(e.to_string()))?;
    let query_token = pairs
        .iter()
        .find(|(k, _)| k == "authorization")
        .map(|(_, v)| v.as_str());
    decide(peer, req.headers(), query_token, &state.subscriber)
}

/// `GET /ui`: to `/ui/` (the page's relative URLs need the slash), with
/// the query (a token) kept.
pub async fn redirect(req: Request) -> Response {
    match req.uri().query() {
        Some(q) => Redirect::permanent(&format!("{UI_PATH}?{q}")).into_response(),
        None => Redirect::permanent(UI_PATH).into_response(),
    }
}

/// `GET /ui/`: the page.
pub async fn page(State(state): State<AppState>, req: Request) -> Response {
    if let Err(e) = check(&state, &req) {
        return e.into_response();
    }
    let mut resp = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // A token in the address bar must not leak to other sites.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    resp
}

/// `GET /ui/stream`: the current status at once, then one status event a
/// second. Never resumes (status events are not stored): `Last-Event-ID`
/// is ignored.
pub async fn stream(State(state): State<AppState>, req: Request) -> Response {
    let access = match check(&state, &req) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    drop(req);
    let status = TopicSelector::exact(STATUS_TOPIC);
    let subscription = Subscription {
        subscriber_id: Update::generate_id(),
        selectors: vec![status.clone()],
        private_access: vec![status],
        payload: None,
    };
    let subscribed = match state.hub.subscribe(subscription, None).await {
        Ok(s) => s,
        Err(e) => return HttpError::from(e).into_response(),
    };
    // The first event is drawn at once, not a second later.
    let first = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || snapshot_json(&state))
            .await
            .ok()
            .map(|json| {
                crate::sse::encode_event(
                    &Update::generate_id(),
                    Some(STATUS_EVENT_TYPE),
                    Some(2000),
                    &json,
                )
            })
    };
    let live = subscribed.stream;
    let head = futures_util::stream::iter(first.map(Ok::<Bytes, std::convert::Infallible>));
    let events = head.chain(live);
    let body = match access {
        Access::Token {
            expires_at: Some(exp),
        } => {
            let left = exp.duration_since(SystemTime::now()).unwrap_or_default();
            Body::from_stream(events.take_until(tokio::time::sleep(left)))
        }
        _ => Body::from_stream(events),
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(body)
        .unwrap_or_else(|e| {
            HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        })
}

/// One status event's data.
#[derive(Debug, Serialize)]
pub struct StatusEvent {
    pub version: &'static str,
    /// When the snapshot was taken (ms since the Unix epoch, hub clock).
    pub time_ms: u64,
    pub uptime_s: f64,
    /// This node's id (`--node-id`; in cluster mode always set).
    pub node: Option<String>,
    /// Open client connections (every kind, not only streams).
    pub connections: usize,
    #[serde(flatten)]
    pub hub: HubStatus,
    /// `--history-size`, `--history`, `--queue-capacity`.
    pub history_max_len: usize,
    pub history_backend: &'static str,
    pub queue_capacity: usize,
    /// Cluster mode only.
    pub cluster: Option<ClusterStatus>,
}

#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    pub node_id: String,
    /// What this node knows of the cluster's nodes: itself. The shared
    /// log does not record who tails it, so other nodes are not listed;
    /// each node's own `/ui/` shows it.
    pub nodes: Vec<NodeStatus>,
    pub nodes_note: &'static str,
    pub applied_total: u64,
    pub resets_total: u64,
    pub reconnects_total: u64,
    pub bad_entries_total: u64,
}

#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub id: String,
    pub this_node: bool,
    /// Known for this node only.
    pub caught_up: Option<bool>,
    pub ready: Option<bool>,
    pub not_ready: Option<String>,
    /// Since its last heartbeat.
    pub last_seen_ms: Option<u64>,
}

/// The status now, as the JSON of one event. Reads one record of history:
/// call it off the async workers.
pub fn snapshot_json(state: &AppState) -> String {
    serde_json::to_string(&snapshot(&state.hub, state)).unwrap_or_else(|_| "{}".into())
}

fn snapshot(hub: &Hub, state: &AppState) -> StatusEvent {
    use std::sync::atomic::Ordering::Relaxed;
    let started = *STARTED.get_or_init(Instant::now);
    let cluster = state.cluster.as_ref().map(|c| {
        let readiness = c.readiness();
        ClusterStatus {
            node_id: c.node_id().to_string(),
            nodes: {
                let mut nodes = vec![NodeStatus {
                    id: c.node_id().to_string(),
                    this_node: true,
                    caught_up: Some(c.is_caught_up()),
                    ready: Some(readiness.is_ok()),
                    not_ready: readiness.err(),
                    last_seen_ms: Some(0),
                }];
                nodes.extend(
                    c.nodes()
                        .into_iter()
                        .filter(|(id, _)| id != c.node_id())
                        .map(|(id, ago)| NodeStatus {
                            id,
                            this_node: false,
                            caught_up: None,
                            ready: None,
                            not_ready: None,
                            last_seen_ms: Some(ago),
                        }),
                );
                nodes
            },
            nodes_note: "every node heard from within 15 s (each says it is alive every 5 s); the state of the others is on their own /ui/",
            applied_total: c.stats.applied.load(Relaxed),
            resets_total: c.stats.resets.load(Relaxed),
            reconnects_total: c.stats.reconnects.load(Relaxed),
            bad_entries_total: c.stats.bad_entries.load(Relaxed),
        }
    });
    let config = &state.config;
    StatusEvent {
        version: env!("CARGO_PKG_VERSION"),
        time_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        uptime_s: started.elapsed().as_secs_f64(),
        node: cluster
            .as_ref()
            .map(|c| c.node_id.clone())
            .or_else(|| config.node_id.clone()),
        connections: super::conn::STATS.connections.load(Relaxed),
        hub: hub.status(),
        history_max_len: config.history_size,
        history_backend: match (state.cluster.is_some(), config.history) {
            (true, _) => "memory (replica of the cluster log)",
            (false, crate::config::HistoryBackend::Disk) => "disk",
            (false, crate::config::HistoryBackend::Memory) => "memory",
        },
        queue_capacity: config.queue_capacity,
        cluster,
    }
}

/// Start publishing the status once a second while anyone watches (the
/// check is one hash lookup, so an unwatched hub pays next to nothing).
/// Ends when the hub closes.
pub fn start(state: &AppState) {
    STARTED.get_or_init(Instant::now);
    let state = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if state.hub.is_closed() {
                break;
            }
            if state.hub.status_watchers() == 0 {
                continue;
            }
            let s = state.clone();
            let Ok(json) = tokio::task::spawn_blocking(move || snapshot_json(&s)).await else {
                continue;
            };
            if state.hub.publish_status(json).is_err() {
                break;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::mint_hs256_with;
    use serde_json::json;

    const KEY: &str = "status-test-key";

    fn verifier() -> Option<Arc<Verifier>> {
        Some(Arc::new(Verifier::hmac(KEY).unwrap()))
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        h
    }

    fn token(herald: Option<serde_json::Value>, ttl: Option<u64>) -> String {
        mint_hs256_with(KEY, &[], &["*".into()], None, ttl, herald).unwrap()
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn loopback_is_open_whatever_it_sends() {
        for peer in ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(
                decide(ip(peer), &HeaderMap::new(), None, &verifier()).unwrap(),
                Access::Loopback,
                "{peer}"
            );
            // Even with a bad token: loopback never needs one.
            assert_eq!(
                decide(ip(peer), &bearer("garbage"), None, &None).unwrap(),
                Access::Loopback
            );
        }
    }

    #[test]
    fn other_addresses_need_the_status_claim() {
        let status = token(Some(json!({"status": true})), Some(600));
        for peer in [
            "10.0.0.7",
            "192.168.1.2",
            "2001:db8::1",
            "::ffff:10.0.0.1",
            "0.0.0.0",
        ] {
            // No token: 401, saying what to send.
            let e = decide(ip(peer), &HeaderMap::new(), None, &verifier()).unwrap_err();
            assert_eq!(e.status, StatusCode::UNAUTHORIZED, "{peer}");
            assert!(e.message.contains("herald token --status"), "{}", e.message);
            assert!(e.message.contains(peer), "{}", e.message);
            // A valid token without the claim (even one that may read
            // every topic): 403.
            let e = decide(
                ip(peer),
                &bearer(&token(None, Some(600))),
                None,
                &verifier(),
            )
            .unwrap_err();
            assert_eq!(e.status, StatusCode::FORBIDDEN, "{peer}");
            // The claim, but not `true`: 403.
            let e = decide(
                ip(peer),
                &bearer(&token(Some(json!({"status": "yes"})), Some(600))),
                None,
                &verifier(),
            )
            .unwrap_err();
            assert_eq!(e.status, StatusCode::FORBIDDEN);
            // Signed with another key: 401.
            let forged =
                mint_hs256_with("other", &[], &[], None, None, Some(json!({"status": true})))
                    .unwrap();
            let e = decide(ip(peer), &bearer(&forged), None, &verifier()).unwrap_err();
            assert_eq!(e.status, StatusCode::UNAUTHORIZED);
            // The claim, by header, by query parameter, by cookie.
            assert!(matches!(
                decide(ip(peer), &bearer(&status), None, &verifier()),
                Ok(Access::Token {
                    expires_at: Some(_)
                })
            ));
            assert!(decide(ip(peer), &HeaderMap::new(), Some(&status), &verifier()).is_ok());
            let mut cookie = HeaderMap::new();
            cookie.insert(
                header::COOKIE,
                HeaderValue::from_str(&format!("mercureAuthorization={status}")).unwrap(),
            );
            assert!(decide(ip(peer), &cookie, None, &verifier()).is_ok());
        }
        // An unknown peer is not loopback.
        let e = decide(None, &HeaderMap::new(), None, &verifier()).unwrap_err();
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        // Forwarding headers never let anyone in: only the socket counts.
        let mut forwarded = HeaderMap::new();
        forwarded.insert("x-forwarded-for", HeaderValue::from_static("127.0.0.1"));
        forwarded.insert("forwarded", HeaderValue::from_static("for=127.0.0.1"));
        assert!(decide(ip("10.0.0.7"), &forwarded, None, &verifier()).is_err());
        // But they do take the loopback pass away: a loopback peer that
        // relays for someone (a reverse proxy on this machine) needs the
        // token like anyone else.
        for h in FORWARDING_HEADERS {
            let mut proxied = HeaderMap::new();
            proxied.insert(h, HeaderValue::from_static("203.0.113.9"));
            let e = decide(ip("127.0.0.1"), &proxied, None, &verifier()).unwrap_err();
            assert_eq!(e.status, StatusCode::UNAUTHORIZED, "{h}");
            assert!(e.message.contains("through a proxy"), "{}", e.message);
            proxied.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {status}")).unwrap(),
            );
            assert!(decide(ip("127.0.0.1"), &proxied, None, &verifier()).is_ok());
        }
        // A hub with no subscriber key accepts no token.
        assert_eq!(
            decide(ip("10.0.0.7"), &bearer(&status), None, &None)
                .unwrap_err()
                .status,
            StatusCode::UNAUTHORIZED
        );
    }

    /// The whole HTTP path (router, handlers, extensions) for a peer that
    /// is not loopback, which a test on one machine cannot be over TCP:
    /// the request carries the `ConnectInfo` the connection would give it.
    #[tokio::test]
    async fn the_router_applies_the_decision_to_the_page_and_the_stream() {
        use tower::ServiceExt;
        let hub = Hub::new(
            crate::hub::HubConfig::default(),
            Arc::new(crate::history::MemoryHistory::new(10)),
        );
        let app = super::super::router(AppState {
            hub: hub.clone(),
            config: Arc::new(crate::config::Config::default()),
            publisher: verifier(),
            subscriber: verifier(),
            cluster: None,
            proxies: Default::default(),
            proxied_streams: crate::http::proxies::ProxiedStreams::new(0),
            auth_app: None,
        });
        let call = |path: &str, peer: &str, token: Option<&str>, forwarded: bool| {
            let mut req = Request::builder().uri(path);
            if let Some(t) = token {
                req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
            }
            if forwarded {
                req = req.header("x-forwarded-for", "127.0.0.1");
            }
            let mut req = req.body(Body::empty()).unwrap();
            let addr: SocketAddr = format!("{peer}:40000").parse().unwrap();
            req.extensions_mut().insert(ConnectInfo(addr));
            app.clone().oneshot(req)
        };
        let status = token(Some(json!({"status": true})), Some(600));
        let plain = token(None, Some(600));
        for path in [UI_PATH, STREAM_PATH] {
            let r = call(path, "10.1.2.3", None, false).await.unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
            assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
            let r = call(path, "10.1.2.3", Some(&plain), false).await.unwrap();
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
            let r = call(path, "127.0.0.1", None, true).await.unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path} via a proxy");
            for (peer, t) in [("10.1.2.3", Some(status.as_str())), ("127.0.0.1", None)] {
                let r = call(path, peer, t, false).await.unwrap();
                assert_eq!(r.status(), StatusCode::OK, "{path} from {peer}");
                let ct = r.headers()[header::CONTENT_TYPE].to_str().unwrap();
                let want = if path == UI_PATH {
                    "text/html"
                } else {
                    "text/event-stream"
                };
                assert!(ct.starts_with(want), "{path}: {ct}");
                if path == STREAM_PATH {
                    // The current status comes first, at once.
                    let mut body = r.into_body().into_data_stream();
                    let first = body.next().await.unwrap().unwrap();
                    let text = String::from_utf8(first.to_vec()).unwrap();
                    assert!(text.starts_with("event: status\n"), "{text}");
                    assert!(text.contains("\"published_total\":0"), "{text}");
                }
            }
        }
        // Without any ConnectInfo (not through `conn`): treated as remote.
        let r = app
            .clone()
            .oneshot(Request::builder().uri(UI_PATH).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        hub.close();
    }
}
