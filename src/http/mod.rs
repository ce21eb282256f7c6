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
pub mod metrics;
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
        .route(&format!("{HUB_PATH}/openapi.json"), get(openapi))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/herald.js", get(client_js::serve))
        .route("/ui", get(status::redirect))
        .route(status::UI_PATH, get(status::page))
        .route(status::STREAM_PATH, get(status::stream))
        .route("/metrics", get(metrics::metrics));
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
/// The whole HTTP API as an OpenAPI 3.1 document (`src/http/openapi.json`;
/// `tests/openapi.sh` runs schemathesis against a live Herald with it).
async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

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
