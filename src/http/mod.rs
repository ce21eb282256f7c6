//! The HTTP edge: axum routes over the hub. Handlers are thin: they turn a
//! request into calls on [`Hub`], [`Verifier`] and the validators, and the
//! result into a response.

mod auth_app;
mod batch;
mod client_js;
pub mod conn;
mod error;
pub mod form;
pub mod gzip;
mod h2_stall;
pub mod proxies;
mod publish;
pub mod requests;
pub mod status;
mod subscribe;
mod subscriptions;
pub mod tls;

pub use error::HttpError;
// Exposed for the fuzz targets (fuzz/) and tests: the pure parsers behind
// the subscribe query and the publish form.
pub use publish::{parse_form, PublishRequest};
pub use subscribe::{parse_query, SubscribeRequest};

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::{AuthError, Grants, Verifier};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::hub::Hub;

/// Everything a handler needs.
#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<Hub>,
    pub config: Arc<Config>,
    /// Shared (cloned per request by the router: an `Arc` is one atomic
    /// increment, a `Verifier` would copy its key).
    pub publisher: Option<Arc<Verifier>>,
    pub subscriber: Option<Arc<Verifier>>,
    /// The Redis engine, when `--transport` runs one: its counters for
    /// `/metrics` and the status page.
    pub cluster: Option<Arc<Cluster>>,
    /// `--trusted-proxies`, and the streams through them per client.
    pub proxies: Arc<proxies::TrustedProxies>,
    pub proxied_streams: Arc<proxies::ProxiedStreams>,
    /// `--auth-url`: the application's sessions for subscribers without a
    /// token.
    pub auth_app: Option<Arc<auth_app::AuthApp>>,
}

/// The `--auth-url` client, from the settings.
pub fn auth_app(config: &Config) -> anyhow::Result<Option<Arc<auth_app::AuthApp>>> {
    match &config.auth_url {
        None => Ok(None),
        Some(url) => Ok(Some(Arc::new(auth_app::AuthApp::new(
            url,
            &config.auth_headers,
            config.auth_cache_ttl,
            config.auth_timeout,
        )?))),
    }
}

pub const HUB_PATH: &str = "/.well-known/mercure";

/// Name of the cookie browsers use to present a token (deployed dialect),
/// and the name the current draft recommends.
pub const COOKIE_NAMES: [&str; 2] = ["mercureAuthorization", "__Secure-mercure_access_token"];

pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_body;
    let mut app = Router::new()
        .route(HUB_PATH, get(subscribe::subscribe).post(publish::publish))
        .route(&format!("{HUB_PATH}/batch"), post(batch::publish_batch))
        .route(
            &format!("{HUB_PATH}/subscriptions"),
            get(subscriptions::list),
        )
        .route(
            &format!("{HUB_PATH}/subscriptions/{{*rest}}"),
            get(subscriptions::lookup),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/herald.js", get(client_js::serve))
        .route("/ui", get(status::redirect))
        .route(status::UI_PATH, get(status::page))
        .route(status::STREAM_PATH, get(status::stream))
        .route("/metrics", get(metrics));
    if state.config.demo {
        app = app.route(
            "/",
            get(|| async { Html(include_str!("../../web/index.html")) }),
        );
    }
    let cors = cors_layer(&state.config.cors_origins);
    let app = app.layer(DefaultBodyLimit::max(max_body)).with_state(state);
    match cors {
        Some(c) => app.layer(c),
        None => app,
    }
}

/// CORS from an explicit allowlist. With listed origins, credentials
/// (cookies) are allowed and only those origins are echoed; `*` allows any
/// origin but never with credentials. No list, no CORS headers.
fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let base = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::CACHE_CONTROL,
            HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([
            HeaderName::from_static("mercure-last-event-id"),
            HeaderName::from_static("last-event-id"),
            header::LINK,
            // Why a page was refused, and the id of that answer's log line.
            header::WWW_AUTHENTICATE,
            HeaderName::from_static("x-request-id"),
        ])
        .max_age(Duration::from_secs(3600));
    if origins.iter().any(|o| o == "*") {
        return Some(base.allow_origin(AllowOrigin::any()));
    }
    let list: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    Some(
        base.allow_origin(AllowOrigin::list(list))
            .allow_credentials(true),
    )
}

/// 200 only when the hub can take publishes; otherwise 503 and the reason
/// (shutting down, history cannot write, committer stopped).
async fn readyz(State(s): State<AppState>) -> Response {
    match s.hub.readiness() {
        Ok(()) => "ready\n".into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let st = &s.hub.stats;
    let edge = &conn::STATS;
    let body = format!(
        "# HELP herald_subscribers Connected subscribers.\n# TYPE herald_subscribers gauge\nherald_subscribers {}\n\
         # HELP herald_published_total Updates published.\n# TYPE herald_published_total counter\nherald_published_total {}\n\
         # HELP herald_delivered_total Events queued to subscribers.\n# TYPE herald_delivered_total counter\nherald_delivered_total {}\n\
         # HELP herald_slow_cut_off_total Subscribers cut off for falling behind.\n# TYPE herald_slow_cut_off_total counter\nherald_slow_cut_off_total {}\n\
         # HELP herald_history_updates Updates held in history.\n# TYPE herald_history_updates gauge\nherald_history_updates {}\n\
         # HELP herald_history_syncs_total Durable writes (fsyncs) of history: one per commit group, shared by its publishers.\n# TYPE herald_history_syncs_total counter\nherald_history_syncs_total {}\n\
         # HELP herald_storage_errors_total Commit batches history failed to store.\n# TYPE herald_storage_errors_total counter\nherald_storage_errors_total {}\n\
         # HELP herald_committer_panics_total Commit batches that panicked (the committer carried on).\n# TYPE herald_committer_panics_total counter\nherald_committer_panics_total {}\n\
         # HELP herald_ready Whether the hub can take publishes (see /readyz).\n# TYPE herald_ready gauge\nherald_ready {}\n\
         # HELP herald_distinct_patterns Distinct compiled topic patterns alive (--max-distinct-patterns).\n# TYPE herald_distinct_patterns gauge\nherald_distinct_patterns {}\n\
         # HELP herald_connections Open client connections.\n# TYPE herald_connections gauge\nherald_connections {}\n\
         # HELP herald_connections_refused_total Connections refused over --max-connections (503).\n# TYPE herald_connections_refused_total counter\nherald_connections_refused_total {}\n\
         # HELP herald_connections_refused_per_ip_total Connections refused over --max-connections-per-ip (429).\n# TYPE herald_connections_refused_per_ip_total counter\nherald_connections_refused_per_ip_total {}\n\
         # HELP herald_write_timeouts_total Connections closed because a write made no progress for --write-timeout.\n# TYPE herald_write_timeouts_total counter\nherald_write_timeouts_total {}\n\
         # HELP herald_header_timeouts_total Connections closed because a request head did not arrive within --header-timeout.\n# TYPE herald_header_timeouts_total counter\nherald_header_timeouts_total {}\n\
         # HELP herald_body_timeouts_total Requests answered 408 because their body did not arrive within --body-timeout.\n# TYPE herald_body_timeouts_total counter\nherald_body_timeouts_total {}\n\
         # HELP herald_accept_errors_total Failed accepts (e.g. out of file descriptors).\n# TYPE herald_accept_errors_total counter\nherald_accept_errors_total {}\n\
         # HELP herald_tls_handshake_failures_total TLS handshakes that failed or did not finish within --header-timeout.\n# TYPE herald_tls_handshake_failures_total counter\nherald_tls_handshake_failures_total {}\n\
         # HELP herald_http2_connections_total Connections served as HTTP/2 (TLS with ALPN h2, or h2c).\n# TYPE herald_http2_connections_total counter\nherald_http2_connections_total {}\n",
        s.hub.subscriber_count(),
        st.published.load(Relaxed),
        st.delivered.load(Relaxed),
        st.cut_off_slow.load(Relaxed),
        s.hub.history().len(),
        s.hub.history().syncs(),
        st.storage_errors.load(Relaxed),
        st.committer_panics.load(Relaxed),
        u8::from(s.hub.readiness().is_ok()),
        crate::topic::live_patterns(),
        edge.connections.load(Relaxed),
        edge.refused_total.load(Relaxed),
        edge.refused_per_ip.load(Relaxed),
        edge.write_timeouts.load(Relaxed),
        edge.header_timeouts.load(Relaxed),
        edge.body_timeouts.load(Relaxed),
        edge.accept_errors.load(Relaxed),
        edge.tls_failures.load(Relaxed),
        edge.h2_connections.load(Relaxed),
    );
    let mut body = body;
    if let Some(c) = &s.cluster {
        let cs = &c.stats;
        body.push_str(&format!(
            "# HELP herald_cluster_applied_total Entries of the cluster log applied by this node.\n# TYPE herald_cluster_applied_total counter\nherald_cluster_applied_total {}\n\
             # HELP herald_cluster_bad_entries_total Log entries skipped because they are not Herald updates.\n# TYPE herald_cluster_bad_entries_total counter\nherald_cluster_bad_entries_total {}\n\
             # HELP herald_cluster_resets_total Times the log did not continue where this node left it (history dropped).\n# TYPE herald_cluster_resets_total counter\nherald_cluster_resets_total {}\n\
             # HELP herald_cluster_probes_total Idle partitions asked whether they hold anything unread (the merge's watermark).\n# TYPE herald_cluster_probes_total counter\nherald_cluster_probes_total {}\n",
            cs.applied.load(Relaxed),
            cs.bad_entries.load(Relaxed),
            cs.resets.load(Relaxed),
            cs.probes.load(Relaxed),
        ));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// Find the token a request presents: `Authorization: Bearer` first (a
/// cookie alongside it is ignored, browsers attach cookies unasked), then the
/// cookie, then the `authorization` query parameter (deployed dialect, for
/// `EventSource` without cookies).
pub fn find_token(
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Option<String>, AuthError> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v
            .to_str()
            .map_err(|_| AuthError::Malformed("the Authorization header is not ASCII".into()))?;
        let (scheme, token) = v.trim().split_once(' ').unwrap_or((v, ""));
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(AuthError::Malformed(
                "the Authorization header must be 'Bearer <token>'".into(),
            ));
        }
        return Ok(Some(token.trim().to_string()));
    }
    for cookie_header in headers.get_all(header::COOKIE) {
        let Ok(cookies) = cookie_header.to_str() else {
            continue;
        };
        for c in cookies.split(';') {
            if let Some((name, value)) = c.trim().split_once('=') {
                if COOKIE_NAMES.contains(&name) && !value.is_empty() {
                    return Ok(Some(value.trim_matches('"').to_string()));
                }
            }
        }
    }
    Ok(query_token.filter(|t| !t.is_empty()).map(str::to_string))
}

/// CSRF defence for a request authenticated by cookie alone (browsers attach
/// cookies to cross-site requests unasked): its `Origin`, or failing that
/// its `Referer`, must be an origin listed in `--cors-origins` (`*`: any).
/// A request with neither is refused too.
pub fn check_cookie_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), HttpError> {
    let presented = headers
        .get(header::ORIGIN)
        .map(|v| (v, "Origin"))
        .or_else(|| headers.get(header::REFERER).map(|v| (v, "Referer")));
    let Some((value, which)) = presented else {
        return Err(HttpError::new(
            StatusCode::FORBIDDEN,
            "a request authenticated by cookie must carry an Origin or Referer header (CSRF protection); send the token in an Authorization: Bearer header instead, or from a page whose origin is in --cors-origins",
        ));
    };
    let origin = value.to_str().ok().and_then(origin_of);
    let ok = origin.as_deref().is_some_and(|o| {
        allowed
            .iter()
            .any(|a| a == "*" || origin_of(a).as_deref() == Some(o))
    });
    if ok {
        return Ok(());
    }
    Err(HttpError::new(
        StatusCode::FORBIDDEN,
        format!(
            "a request authenticated by cookie is only accepted from the origins in --cors-origins (CSRF protection); the {which} header {:?} is not one of them",
            String::from_utf8_lossy(value.as_bytes())
        ),
    ))
}

/// `scheme://host[:port]` of a URL, normalised (lower case, default port
/// dropped); `None` for an opaque origin such as `null`.
fn origin_of(url: &str) -> Option<String> {
    let origin = url::Url::parse(url.trim()).ok()?.origin();
    origin.is_tuple().then(|| origin.ascii_serialization())
}

/// [`verify`] with the keys held now (a JWKS is not fetched): for the
/// status page's synchronous check.
pub fn verify_held(verifier: &Option<Arc<Verifier>>, token: &str) -> Result<Grants, AuthError> {
    match verifier {
        Some(v) => v.verify(token),
        None => Err(AuthError::Invalid(
            "this hub has no key configured to verify tokens".into(),
        )),
    }
}

/// Verify a presented token with the key of its role. A hub without a key
/// for the role cannot accept any token for it.
pub async fn verify(verifier: &Option<Arc<Verifier>>, token: &str) -> Result<Grants, AuthError> {
    match verifier {
        Some(v) => v.verify_async(token).await,
        None => Err(AuthError::Invalid(
            "this hub has no key configured to verify tokens".into(),
        )),
    }
}
