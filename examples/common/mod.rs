//! What the example apps share: configuration from the environment, the
//! login cookie, JSON errors, and publishing to Herald over its HTTP API.
//!
//! Each app is an ordinary axum backend. Herald is reached the way any
//! backend would reach it: `POST /.well-known/mercure` with a publisher JWT
//! the app mints itself (HS256, the key it shares with Herald).
#![allow(dead_code)]

pub mod outbox;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::json;

/// Settings, from the environment (`examples/run.sh` sets them).
#[derive(Clone)]
pub struct Settings {
    /// `LISTEN`: where the app listens (port 0: any; printed at startup).
    pub listen: String,
    /// `HERALD_URL`: the hub's base URL, for the app and for the browser.
    pub herald_url: String,
    /// `HERALD_JWT_KEY`: the HS256 key Herald verifies tokens with.
    pub jwt_key: String,
    /// `SESSION_KEY`: signs the login cookie (random if unset: logins then
    /// end when the app restarts; the data does not).
    pub session_key: String,
    /// `DATA_DIR`: where the app keeps its SQLite database.
    pub data_dir: PathBuf,
}

impl Settings {
    pub fn from_env(default_listen: &str, default_data_dir: &str) -> Settings {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let jwt_key = var("HERALD_JWT_KEY").unwrap_or_else(|| {
            eprintln!("error: set HERALD_JWT_KEY to the key Herald was started with (--jwt-key)");
            std::process::exit(2);
        });
        let session_key = var("SESSION_KEY").unwrap_or_else(|| {
            use rand::Rng;
            let bytes: [u8; 32] = rand::thread_rng().gen();
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        });
        Settings {
            listen: var("LISTEN").unwrap_or_else(|| default_listen.to_string()),
            herald_url: var("HERALD_URL")
                .unwrap_or_else(|| "http://127.0.0.1:8080".into())
                .trim_end_matches('/')
                .to_string(),
            jwt_key,
            session_key,
            data_dir: PathBuf::from(var("DATA_DIR").unwrap_or_else(|| default_data_dir.into())),
        }
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// An error answered as `{"error": "..."}` with its status; the pages show
/// the message as it is.
#[derive(Debug)]
pub struct AppError {
    pub status: StatusCode,
    pub message: String,
}

impl AppError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> AppError {
        AppError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> AppError {
        AppError::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> AppError {
        AppError::new(StatusCode::NOT_FOUND, message)
    }
    pub fn unauthorized() -> AppError {
        AppError::new(StatusCode::UNAUTHORIZED, "log in first")
    }
    pub fn internal(e: impl std::fmt::Display) -> AppError {
        AppError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {e}"),
        )
    }
}

impl From<rusqlite::Error> for AppError {
    fn from(e: rusqlite::Error) -> AppError {
        AppError::internal(format!("database: {e}"))
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

/// A JSON request body whose rejections (not JSON, wrong shape, too large)
/// are answered as [`AppError`]s with the same status.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> AppError {
    let message = match &r {
        JsonRejection::MissingJsonContentType(_) => {
            "send a JSON body with Content-Type: application/json".to_string()
        }
        // In the app's words, not the framework's ("Failed to buffer the
        // request body: length limit exceeded").
        _ if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            format!("request too large: send at most {} KiB", MAX_REQUEST / 1024)
        }
        JsonRejection::BytesRejection(_) => {
            format!("request body unreadable: {}", r.body_text())
        }
        _ => format!("invalid JSON body: {}", r.body_text()),
    };
    AppError::new(r.status(), message)
}

/// A user name: 1 to 32 of `a-z`, `0-9`, `_` (lowercased). It appears in
/// topics and conversation ids, so nothing else is allowed.
pub fn user_name(raw: &str) -> Result<String, AppError> {
    let name = raw.trim().to_ascii_lowercase();
    if name.is_empty() {
        return Err(AppError::bad_request("name must not be empty"));
    }
    if name.len() > 32
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(AppError::bad_request(format!(
            "name {:?} is not valid: use 1 to 32 letters, digits or _",
            raw.trim()
        )));
    }
    Ok(name)
}

/// A message body: not empty (after trimming), at most `max` characters.
pub fn message_body(raw: &str, max: usize) -> Result<String, AppError> {
    let body = raw.trim();
    if body.is_empty() {
        return Err(AppError::bad_request("body must not be empty"));
    }
    let n = body.chars().count();
    if n > max {
        return Err(AppError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body is {n} characters long; at most {max} are allowed"),
        ));
    }
    Ok(body.to_string())
}

/// The login cookie: an HS256 JWT `{"sub": name}` signed with the session
/// key, HttpOnly. Each app has its own cookie name (cookies ignore ports).
pub struct Sessions {
    pub cookie: &'static str,
    key: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SessionClaims {
    sub: String,
    exp: u64,
}

const SESSION_SECS: u64 = 7 * 24 * 3600;

impl Sessions {
    pub fn new(cookie: &'static str, key: &str) -> Sessions {
        Sessions {
            cookie,
            key: key.to_string(),
        }
    }

    /// The `Set-Cookie` value logging `name` in.
    pub fn login(&self, name: &str) -> HeaderValue {
        let exp = (now_ms() / 1000) as u64 + SESSION_SECS;
        let jwt = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &SessionClaims {
                sub: name.to_string(),
                exp,
            },
            &jsonwebtoken::EncodingKey::from_secret(self.key.as_bytes()),
        )
        .expect("HS256 signing cannot fail");
        HeaderValue::from_str(&format!(
            "{}={jwt}; Path=/; HttpOnly; SameSite=Lax; Max-Age={SESSION_SECS}",
            self.cookie
        ))
        .expect("a JWT is a valid header value")
    }

    pub fn logout(&self) -> HeaderValue {
        HeaderValue::from_str(&format!(
            "{}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0",
            self.cookie
        ))
        .expect("valid header")
    }

    /// The logged-in user, or 401.
    pub fn user(&self, headers: &HeaderMap) -> Result<String, AppError> {
        let prefix = format!("{}=", self.cookie);
        let token = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix(prefix.as_str()).map(str::to_string))
            .ok_or_else(AppError::unauthorized)?;
        let data = jsonwebtoken::decode::<SessionClaims>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(self.key.as_bytes()),
            &jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256),
        )
        .map_err(|_| AppError::new(StatusCode::UNAUTHORIZED, "session expired: log in again"))?;
        user_name(&data.claims.sub).map_err(|_| AppError::unauthorized())
    }
}

/// Publishes to Herald: `POST {HERALD_URL}/.well-known/mercure`, form
/// fields `topic`, `data`, `private`, with a publisher JWT minted by the app
/// for exactly the topics it publishes to.
pub struct Publisher {
    client: reqwest::Client,
    endpoint: String,
    token: String,
}

impl Publisher {
    pub fn new(settings: &Settings, may_publish: &[&str]) -> Publisher {
        let publish: Vec<String> = may_publish.iter().map(|s| s.to_string()).collect();
        let token = herald::auth::mint_hs256(&settings.jwt_key, &publish, &[], None, None)
            .expect("HS256 signing cannot fail");
        Publisher {
            client: reqwest::Client::new(),
            endpoint: format!("{}/.well-known/mercure", settings.herald_url),
            token,
        }
    }

    /// Publish `data` on `topic`; answers Herald's id for the update.
    pub async fn publish(
        &self,
        topic: &str,
        data: &serde_json::Value,
        private: bool,
    ) -> Result<String, AppError> {
        // Built apart: the serializer is not `Send`, so it must not live
        // across the `.await` below.
        let body = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("topic", topic)
                .append_pair("data", &data.to_string());
            if private {
                form.append_pair("private", "on");
            }
            form.finish()
        };
        let unreachable = |e: reqwest::Error| {
            AppError::new(
                StatusCode::BAD_GATEWAY,
                format!("saved, but Herald could not be reached: {e}"),
            )
        };
        let resp = self
            .client
            .post(&self.endpoint)
            .bearer_auth(&self.token)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(unreachable)?;
        let status = resp.status();
        let text = resp.text().await.map_err(unreachable)?;
        if !status.is_success() {
            return Err(AppError::new(
                StatusCode::BAD_GATEWAY,
                format!(
                    "saved, but Herald refused the update ({status}): {}",
                    text.trim()
                ),
            ));
        }
        Ok(text.trim().to_string())
    }
}

impl Publisher {
    /// One try of an outbox row: `data` (JSON text) on `topic` with the
    /// app's own `id`. See [`outbox`].
    pub async fn send(&self, topic: &str, data: &str, private: bool, id: &str) -> outbox::Sent {
        let body = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("topic", topic)
                .append_pair("data", data)
                .append_pair("id", id);
            if private {
                form.append_pair("private", "on");
            }
            form.finish()
        };
        let resp = self
            .client
            .post(&self.endpoint)
            .bearer_auth(&self.token)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .timeout(std::time::Duration::from_secs(10))
            .body(body)
            .send()
            .await;
        let resp = match resp {
            Ok(resp) => resp,
            Err(e) => return outbox::Sent::Retry(format!("Herald could not be reached: {e}")),
        };
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if status.is_success() || status == StatusCode::CONFLICT {
            outbox::Sent::Stored
        } else if status.is_client_error()
            && status != StatusCode::TOO_MANY_REQUESTS
            && status != StatusCode::REQUEST_TIMEOUT
        {
            outbox::Sent::Refused(format!("{status}: {}", text.trim()))
        } else {
            outbox::Sent::Retry(format!("Herald answered {status}: {}", text.trim()))
        }
    }
}

/// A subscriber JWT for the browser: may read exactly `topics`.
pub fn subscriber_token(settings: &Settings, topics: &[String]) -> String {
    herald::auth::mint_hs256(&settings.jwt_key, &[], topics, None, Some(12 * 3600))
        .expect("HS256 signing cannot fail")
}

/// The page, with the hub's URL filled in.
pub fn page(html: &str, settings: &Settings) -> Response {
    let body = html.replace("__HERALD_URL__", &settings.herald_url);
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// Bind, print `listening on http://ADDR` (the tests and run.sh read it),
/// and serve until SIGINT/SIGTERM.
pub async fn serve(app: axum::Router, listen: &str, what: &str) {
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    let addr = listener.local_addr().expect("local addr");
    println!("listening on http://{addr}");
    eprintln!("{what}: http://{addr}/");
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// The page script every example page imports (`/app.js`).
const APP_JS: &str = include_str!("app.js");

/// Request bodies larger than this are answered 413.
pub const MAX_REQUEST: usize = 16 * 1024;

/// The icon every page gets (browsers ask for `/favicon.ico`).
const FAVICON: &str = "<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'><circle cx='8' cy='8' r='7' fill='#0d9488'/><path d='M5 8h6M8 5v6' stroke='#fff' stroke-width='2'/></svg>";

/// An app's routes, finished the way every example app finishes them: the
/// shared page script at `/app.js`, an icon at `/favicon.ico`, a JSON 404
/// for anything else, request bodies capped at [`MAX_REQUEST`], and the
/// app's state.
pub fn app_router<S: Clone + Send + Sync + 'static>(
    routes: axum::Router<S>,
    state: S,
) -> axum::Router {
    routes
        .route("/app.js", axum::routing::get(app_js))
        .route(
            "/favicon.ico",
            axum::routing::get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "image/svg+xml"),
                        (header::CACHE_CONTROL, "max-age=86400"),
                    ],
                    FAVICON,
                )
            }),
        )
        .fallback(|| async { AppError::not_found("no such page or API") })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST))
        .with_state(state)
}

async fn app_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        APP_JS,
    )
        .into_response()
}

/// A login request: `{"name": "..."}`.
#[derive(serde::Deserialize)]
pub struct Login {
    pub name: String,
}

/// The answer to a login: the session cookie and `{"name": ...}`.
pub fn logged_in(sessions: &Sessions, name: &str) -> Response {
    (
        [(header::SET_COOKIE, sessions.login(name))],
        Json(json!({ "name": name })),
    )
        .into_response()
}

/// The answer to a logout: the cookie cleared.
pub fn logged_out(sessions: &Sessions) -> Response {
    ([(header::SET_COOKIE, sessions.logout())], Json(json!({}))).into_response()
}

/// The app's SQLite database, one connection behind a lock.
pub struct Db(std::sync::Mutex<rusqlite::Connection>);

impl Db {
    /// Open `file` in the data directory (created if missing) with `open`
    /// (the app's schema), or exit with a clear error.
    pub fn open_or_exit(
        settings: &Settings,
        file: &str,
        open: impl FnOnce(&std::path::Path) -> rusqlite::Result<rusqlite::Connection>,
    ) -> Db {
        if let Err(e) = std::fs::create_dir_all(&settings.data_dir) {
            eprintln!("error: cannot create {}: {e}", settings.data_dir.display());
            std::process::exit(1);
        }
        let conn = open(&settings.data_dir.join(file)).unwrap_or_else(|e| {
            eprintln!("error: database: {e}");
            std::process::exit(1);
        });
        Db(std::sync::Mutex::new(conn))
    }

    /// Run `f` on the database. The lock is never held across an `.await`
    /// (its guard would make the handler's future `!Send`).
    pub fn with<R>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> Result<R, AppError>,
    ) -> Result<R, AppError> {
        f(&self.lock())
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        self.0.lock().unwrap()
    }
}
