//! The HTTP edge: axum routes over the hub. Handlers are thin: they turn a
//! request into calls on [`Hub`], [`Verifier`] and the validators, and the
//! result into a response.

pub mod conn;
mod error;
pub mod form;
mod publish;
mod subscribe;
mod subscriptions;

pub use error::HttpError;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::{AuthError, Grants, Verifier};
use crate::config::Config;
use crate::hub::Hub;

/// Everything a handler needs.
#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<Hub>,
    pub config: Arc<Config>,
    pub publisher: Option<Verifier>,
    pub subscriber: Option<Verifier>,
}

pub const HUB_PATH: &str = "/.well-known/mercure";

/// Name of the cookie browsers use to present a token (deployed dialect),
/// and the name the current draft recommends.
pub const COOKIE_NAMES: [&str; 2] = ["mercureAuthorization", "__Secure-mercure_access_token"];

pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_body;
    let mut app = Router::new()
        .route(HUB_PATH, get(subscribe::subscribe).post(publish::publish))
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
    let body = format!(
        "# HELP herald_subscribers Connected subscribers.\n# TYPE herald_subscribers gauge\nherald_subscribers {}\n\
         # HELP herald_published_total Updates published.\n# TYPE herald_published_total counter\nherald_published_total {}\n\
         # HELP herald_delivered_total Events queued to subscribers.\n# TYPE herald_delivered_total counter\nherald_delivered_total {}\n\
         # HELP herald_slow_cut_off_total Subscribers cut off for falling behind.\n# TYPE herald_slow_cut_off_total counter\nherald_slow_cut_off_total {}\n\
         # HELP herald_history_updates Updates held in history.\n# TYPE herald_history_updates gauge\nherald_history_updates {}\n\
         # HELP herald_storage_errors_total Commit batches history failed to store.\n# TYPE herald_storage_errors_total counter\nherald_storage_errors_total {}\n\
         # HELP herald_committer_panics_total Commit batches that panicked (the committer carried on).\n# TYPE herald_committer_panics_total counter\nherald_committer_panics_total {}\n\
         # HELP herald_ready Whether the hub can take publishes (see /readyz).\n# TYPE herald_ready gauge\nherald_ready {}\n",
        s.hub.subscriber_count(),
        st.published.load(Relaxed),
        st.delivered.load(Relaxed),
        st.cut_off_slow.load(Relaxed),
        s.hub.history().len(),
        st.storage_errors.load(Relaxed),
        st.committer_panics.load(Relaxed),
        u8::from(s.hub.readiness().is_ok()),
    );
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

/// Verify a presented token with the key of its role. A hub without a key
/// for the role cannot accept any token for it.
pub fn verify(verifier: &Option<Verifier>, token: &str) -> Result<Grants, AuthError> {
    match verifier {
        Some(v) => v.verify(token),
        None => Err(AuthError::Invalid(
            "this hub has no key configured to verify tokens".into(),
        )),
    }
}
