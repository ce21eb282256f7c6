//! `POST /.well-known/mercure`: publish an update.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::{check_cookie_origin, find_token, form, verify, AppState, HttpError, HUB_PATH};
use crate::auth::AuthError;
use crate::hub::{IdOrigin, Update};
use crate::sse::{is_control_or_format, validate_field_value};

/// A publish request, validated but not yet authorized.
#[derive(Debug, PartialEq, Eq)]
pub struct PublishRequest {
    pub topics: Vec<String>,
    pub data: String,
    pub private: bool,
    pub id: Option<String>,
    pub event_type: Option<String>,
    pub retry: Option<u64>,
}

impl PublishRequest {
    /// The update to publish, with the publisher's id or a fresh one, and
    /// which of the two it is.
    pub fn into_update(self) -> (Update, IdOrigin) {
        self.into_update_with(|_| Update::generate_id())
    }

    /// [`PublishRequest::into_update`], a fresh id drawn by `generate` from
    /// the update's first topic (see `Hub::generate_id`).
    pub fn into_update_with(self, generate: impl FnOnce(&str) -> String) -> (Update, IdOrigin) {
        let (id, origin) = match self.id {
            Some(id) => (id, IdOrigin::Chosen),
            None => (
                generate(self.topics.first().map(String::as_str).unwrap_or("")),
                IdOrigin::Generated,
            ),
        };
        let update = Update::new(
            id,
            self.topics,
            self.private,
            self.event_type,
            self.retry,
            self.data,
        );
        (update, origin)
    }
}

/// Validate the form fields. Limits (number and length of topics) answer
/// 413; malformed values answer 400.
pub fn parse_form(
    body: &[u8],
    max_topics: usize,
    max_topic_len: usize,
) -> Result<PublishRequest, HttpError> {
    let pairs = form::parse(body).map_err(|e| HttpError::bad_request(e.to_string()))?;
    parse_fields(pairs, max_topics, max_topic_len)
}

/// Validate publish fields given as (name, value) pairs, the form's
/// repeatable `topic` included. One set of rules for the form and for each
/// record of a batch.
pub fn parse_fields(
    pairs: Vec<(String, String)>,
    max_topics: usize,
    max_topic_len: usize,
) -> Result<PublishRequest, HttpError> {
    let mut req = PublishRequest {
        topics: Vec::new(),
        data: String::new(),
        private: false,
        id: None,
        event_type: None,
        retry: None,
    };
    for (name, value) in pairs {
        match name.as_str() {
            "topic" => {
                validate_topic(&value, max_topic_len)?;
                if req.topics.len() >= max_topics {
                    return Err(HttpError::too_large(format!(
                        "too many topics; the limit is {max_topics} per update"
                    )));
                }
                if !req.topics.contains(&value) {
                    req.topics.push(value);
                }
            }
            "data" => req.data = value,
            // Presence alone marks the update private, whatever the value.
            "private" => req.private = true,
            "id" if value.is_empty() => {}
            "id" => {
                if value.starts_with('#') {
                    return Err(HttpError::bad_request("id must not start with '#': that form is reserved for ids the hub generates"));
                }
                if value == "earliest" {
                    return Err(HttpError::bad_request("id must not be 'earliest': that value is reserved for resuming from the start of history"));
                }
                validate_field_value(&value)
                    .map_err(|e| HttpError::bad_request(format!("id {e}")))?;
                if value.len() > max_topic_len {
                    return Err(HttpError::too_large(format!(
                        "id is longer than {max_topic_len} bytes"
                    )));
                }
                req.id = Some(value);
            }
            "type" if value.is_empty() => {}
            "type" => {
                validate_field_value(&value)
                    .map_err(|e| HttpError::bad_request(format!("type {e}")))?;
                if value.len() > max_topic_len {
                    return Err(HttpError::too_large(format!(
                        "type is longer than {max_topic_len} bytes"
                    )));
                }
                if value == "mercure" {
                    return Err(HttpError::bad_request(
                        "type 'mercure' is reserved for events the hub generates",
                    ));
                }
                req.event_type = Some(value);
            }
            "retry" => {
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(HttpError::bad_request(
                        "retry must be a number of milliseconds (ASCII digits only)",
                    ));
                }
                req.retry = Some(
                    value
                        .parse()
                        .map_err(|_| HttpError::bad_request("retry is too large"))?,
                );
            }
            _ => {} // Unknown fields are ignored, for future extensions.
        }
    }
    if req.topics.is_empty() {
        return Err(HttpError::bad_request(
            "missing 'topic' field: an update needs at least one topic",
        ));
    }
    Ok(req)
}

/// A topic must be non-empty, free of control and format characters, not
/// the `*` wildcard, and outside the hub's reserved namespace.
fn validate_topic(topic: &str, max_len: usize) -> Result<(), HttpError> {
    if topic.is_empty() {
        return Err(HttpError::bad_request("topic must not be empty"));
    }
    if topic.len() > max_len {
        return Err(HttpError::too_large(format!(
            "topic is {} bytes long; the limit is {max_len}",
            topic.len()
        )));
    }
    if topic.chars().any(is_control_or_format) {
        return Err(HttpError::bad_request(
            "topic must not contain control or format characters",
        ));
    }
    if topic == "*" {
        return Err(HttpError::bad_request(
            "'*' is the wildcard selector, not a publishable topic",
        ));
    }
    if in_reserved_namespace(topic) {
        return Err(HttpError::bad_request(format!(
            "topic {topic:?} is in the hub's reserved namespace {HUB_PATH}; choose another topic"
        )));
    }
    Ok(())
}

/// Resolve the topic against the hub's URL and look at its path, after
/// decoding percent-escapes of unreserved characters and removing dot
/// segments, so `/.well-known/%6Dercure/x`, `/.well-known/mercure/../mercure/x`
/// and `https://any.host/.well-known/mercure/x` are all caught.
pub fn in_reserved_namespace(topic: &str) -> bool {
    let decoded = decode_unreserved(topic);
    // Resolving against the base only removes dot segments (and tabs and
    // line breaks, which URL parsing drops): it cannot make the word up, so
    // a topic without it needs no URL parse (most topics, every publish).
    if !decoded.contains("mercure") && !decoded.contains(['\t', '\n', '\r']) {
        return false;
    }
    let Ok(url) = url::Url::parse(crate::topic::HUB_BASE).and_then(|b| b.join(&decoded)) else {
        return false;
    };
    let path = decode_unreserved(url.path());
    path == HUB_PATH || path.starts_with(&format!("{HUB_PATH}/"))
}

fn decode_unreserved(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(c) = hex.filter(|c| c.is_ascii_alphanumeric() || b"-._~".contains(c)) {
                out.push(c as char);
                i += 3;
                continue;
            }
        }
        let ch = s[i..].chars().next().unwrap_or('\u{FFFD}');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

pub async fn publish(State(state): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    match handle(&state, &parts.headers, body).await {
        Ok(id) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], id).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Authorize, then read the body: a client without a valid token is
/// answered before it can make the hub hold (and wait for) a body.
async fn handle(state: &AppState, headers: &HeaderMap, body: Body) -> Result<String, HttpError> {
    let grants = authorize_publisher(state, headers).await?;
    require_media_type(
        headers,
        "application/x-www-form-urlencoded",
        "publish with Content-Type: application/x-www-form-urlencoded (fields: topic, data, private, id, type, retry)",
    )?;
    let body = read_body(state, headers, body, state.config.max_body, "--max-body").await?;
    let cfg = &state.config;
    let req = parse_form(&body, cfg.max_selectors, cfg.max_selector_len)?;
    if let Some(t) = req.topics.iter().find(|t| !grants.can_publish(t)) {
        return Err(AuthError::Forbidden(format!(
            "your token does not allow publishing to topic {t:?}"
        ))
        .into());
    }
    let (update, origin) = req.into_update_with(|topic| state.hub.generate_id(topic));
    let update = state.hub.publish_as(update, origin).await?;
    Ok(update.id.clone())
}

/// The publisher's grants, checked before any of the body is read.
pub(super) async fn authorize_publisher(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<crate::auth::Grants, HttpError> {
    let token = find_token(headers, None)?.ok_or(AuthError::Missing)?;
    let grants = verify(&state.publisher, &token).await?;
    // No Authorization header means the token came from a cookie (publish
    // takes no query token), which a browser may have attached to a
    // cross-site form post.
    if !headers.contains_key(header::AUTHORIZATION) {
        check_cookie_origin(headers, &state.config.cors_origins)?;
    }
    Ok(grants)
}

/// 415 unless the body is of this media type.
pub(super) fn require_media_type(
    headers: &HeaderMap,
    expected: &str,
    hint: &str,
) -> Result<(), HttpError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim();
    if media.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(HttpError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, hint))
    }
}

/// The whole body, within `max` bytes (`setting` names the flag; 413) and
/// `--body-timeout` (408).
pub(super) async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    max: usize,
    setting: &str,
) -> Result<Bytes, HttpError> {
    let too_large = || {
        HttpError::too_large(format!(
            "request body is larger than the limit of {max} bytes ({setting})"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let timeout = state.config.body_timeout;
    match tokio::time::timeout(timeout, Limited::new(body, max).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(HttpError::bad_request(format!(
            "could not read the request body: {e}"
        ))),
        Err(_) => {
            super::conn::STATS
                .body_timeouts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(HttpError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {timeout:?} (--body-timeout); send it faster or in smaller updates"
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<PublishRequest, HttpError> {
        parse_form(s.as_bytes(), 3, 100)
    }

    #[test]
    fn parses_fields() {
        let r = p("topic=a&topic=b&topic=a&data=x%0Ay&private=&id=i1&type=t&retry=10&future=1")
            .unwrap();
        assert_eq!(r.topics, ["a", "b"]);
        assert_eq!(r.data, "x\ny");
        assert!(r.private);
        assert_eq!(r.id.as_deref(), Some("i1"));
        assert_eq!(r.event_type.as_deref(), Some("t"));
        assert_eq!(r.retry, Some(10));
        let r = p("topic=a&private=off").unwrap();
        assert!(r.private, "presence of 'private' marks the update private");
        assert!(!p("topic=a").unwrap().private);
    }

    #[test]
    fn rejects_bad_fields_with_400() {
        for bad in [
            "data=x",
            "topic=",
            "topic=*",
            "topic=a%00",
            "topic=a%E2%80%AE",
            "topic=/.well-known/mercure/subscriptions/x",
            "topic=https://evil.example/.well-known/mercure",
            "topic=/.well-known/%6Dercure/x",
            "topic=/a/../.well-known/mercure/x",
            "topic=a&id=%23frag",
            "topic=a&id=earliest",
            "topic=a&id=a%0Ab",
            "topic=a&id=a%0Db",
            "topic=a&type=a%0Ab",
            "topic=a&type=mercure",
            "topic=a&retry=1a",
            "topic=a&retry=-1",
            "topic=a&retry=99999999999999999999999",
            "topic=%FF",
        ] {
            assert_eq!(
                p(bad).expect_err(bad).status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
    }

    #[test]
    fn limits_answer_413() {
        assert_eq!(
            p("topic=a&topic=b&topic=c&topic=d").unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let long = format!("topic={}", "x".repeat(101));
        assert_eq!(p(&long).unwrap_err().status, StatusCode::PAYLOAD_TOO_LARGE);
        let long = format!("topic=a&type={}", "x".repeat(101));
        let err = p(&long).unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(err.message.contains("type"), "{}", err.message);
        assert!(p(&format!("topic=a&type={}", "x".repeat(100))).is_ok());
    }

    #[test]
    fn reserved_namespace() {
        assert!(in_reserved_namespace("/.well-known/mercure"));
        assert!(in_reserved_namespace("/.well-known/mercure/x"));
        assert!(in_reserved_namespace(
            "https://a.b/.well-known/mercure/subscriptions"
        ));
        assert!(!in_reserved_namespace("/.well-known/mercurex"));
        assert!(!in_reserved_namespace("https://a.b/books/1"));
        assert!(!in_reserved_namespace("urn:uuid:1"));
        assert!(!in_reserved_namespace("books"));
    }
}
