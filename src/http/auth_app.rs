//! `--auth-url`: the application's own sessions instead of tokens.
//!
//! The application already knows who the user is from its session
//! cookie. For a subscriber without a token Herald forwards the request's
//! `--auth-headers` (the cookie, by default) to the application with a
//! GET, and the application answers:
//!
//! - 200 with a JSON object: `subscribe` (the topic selectors this user
//!   may read, private updates included), and optionally `sub` and
//!   `payload` (shown in the subscriptions API and presence);
//! - 401 or 403: no session, or not allowed: the subscriber gets the same
//!   status, with the reason;
//! - anything else, no answer within `--auth-timeout`, or a body that is
//!   not such an object: 503 with the reason. Never an open door.
//!
//! Answers (200, 401, 403) are kept for `--auth-cache-ttl` per distinct
//! forwarded headers (at most [`MAX_CACHED`], by a keyed 128-bit hash of
//! them, so the cache holds no cookie), so a page's reconnects and a
//! user's tabs cost one call.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, StatusCode};
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::HttpError;
use crate::auth::Grants;

/// Most answers kept at once; a full cache starts over.
pub const MAX_CACHED: usize = 10_000;
/// An answer larger than this is refused (503).
pub const MAX_ANSWER: usize = 64 * 1024;

/// An answer, and when it came.
type Cached = (Instant, Result<Grants, HttpError>);

pub struct AuthApp {
    url: String,
    headers: Vec<HeaderName>,
    ttl: Duration,
    client: reqwest::Client,
    keys: (RandomState, RandomState),
    cache: Mutex<HashMap<u128, Cached>>,
    pub calls: AtomicU64,
}

impl AuthApp {
    pub fn new(
        url: &str,
        headers: &[String],
        ttl: Duration,
        timeout: Duration,
    ) -> anyhow::Result<AuthApp> {
        let parsed =
            url::Url::parse(url).map_err(|e| anyhow::anyhow!("--auth-url {url:?}: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            anyhow::bail!("--auth-url {url:?}: only http:// and https:// URLs");
        }
        let headers = headers
            .iter()
            .map(|h| {
                HeaderName::from_bytes(h.trim().to_ascii_lowercase().as_bytes())
                    .map_err(|_| anyhow::anyhow!("--auth-headers: {h:?} is not a header name"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(AuthApp {
            url: url.to_string(),
            headers,
            ttl,
            client: reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            keys: (RandomState::new(), RandomState::new()),
            cache: Mutex::new(HashMap::new()),
            calls: AtomicU64::new(0),
        })
    }

    /// What the application says this request's user may subscribe to;
    /// `None` when the request carries none of the forwarded headers (an
    /// anonymous visitor: nothing to ask about).
    pub async fn grants(&self, request: &HeaderMap) -> Option<Result<Grants, HttpError>> {
        let forwarded: Vec<(&HeaderName, &[u8])> = self
            .headers
            .iter()
            .flat_map(|name| {
                request
                    .get_all(name)
                    .iter()
                    .map(move |v| (name, v.as_bytes()))
            })
            .collect();
        if forwarded.is_empty() {
            return None;
        }
        let key = self.key(&forwarded);
        if let Some((at, answer)) = self.cache.lock().get(&key) {
            if at.elapsed() < self.ttl {
                return Some(answer.clone());
            }
        }
        let answer = self.ask(&forwarded).await;
        let keep = match &answer {
            Ok(_) => true,
            Err(e) => matches!(e.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN),
        };
        if keep && !self.ttl.is_zero() {
            let mut cache = self.cache.lock();
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
            cache.insert(key, (Instant::now(), answer.clone()));
        }
        Some(answer)
    }

    fn key(&self, forwarded: &[(&HeaderName, &[u8])]) -> u128 {
        let hash = |state: &RandomState| {
            let mut h = state.build_hasher();
            for (name, value) in forwarded {
                h.write(name.as_str().as_bytes());
                h.write_u8(0);
                h.write(value);
                h.write_u8(0);
            }
            h.finish()
        };
        (hash(&self.keys.0) as u128) << 64 | hash(&self.keys.1) as u128
    }

    async fn ask(&self, forwarded: &[(&HeaderName, &[u8])]) -> Result<Grants, HttpError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let unavailable = |why: String| {
            HttpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "cannot check the session with the application at {}: {why}",
                    self.url
                ),
            )
        };
        let mut req = self
            .client
            .get(&self.url)
            .header("accept", "application/json");
        for (name, value) in forwarded {
            req = req.header(*name, *value);
        }
        let mut resp = req.send().await.map_err(|e| {
            unavailable(if e.is_timeout() {
                "it did not answer in time (--auth-timeout)".into()
            } else {
                e.to_string()
            })
        })?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let why = format!(
                "the application at {} answered {} for this session (--auth-url)",
                self.url,
                status.as_u16()
            );
            return Err(if status == StatusCode::UNAUTHORIZED {
                HttpError::unauthorized(why)
            } else {
                HttpError::new(status, why)
            });
        }
        if status != StatusCode::OK {
            return Err(unavailable(format!("it answered {status}")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| unavailable(e.to_string()))? {
            if body.len() + chunk.len() > MAX_ANSWER {
                return Err(unavailable(format!(
                    "its answer is over {MAX_ANSWER} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let answer: Value = serde_json::from_slice(&body)
            .map_err(|e| unavailable(format!("its answer is not JSON: {e}")))?;
        let subscribe = answer
            .get("subscribe")
            .filter(|s| s.is_array())
            .ok_or_else(|| unavailable("its answer has no \"subscribe\" array".into()))?;
        let mut mercure = json!({ "subscribe": subscribe });
        if let Some(payload) = answer.get("payload") {
            mercure["payload"] = payload.clone();
        }
        let mut claims = json!({ "mercure": mercure });
        if let Some(sub) = answer.get("sub").and_then(Value::as_str) {
            claims["sub"] = Value::from(sub);
        }
        Grants::from_claims(&claims).map_err(|e| unavailable(format!("its answer: {e}")))
    }
}
