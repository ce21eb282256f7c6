//! `GET /.well-known/mercure`: open an event stream.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::{find_token, form, verify, AppState, HttpError};
use crate::auth::{AuthError, Grants};
use crate::history::ResumeFrom;
use crate::hub::{Subscription, Update};
use crate::sse::is_control_or_format;
use crate::topic::{SelectorError, TopicSelector};

/// What the query string asks for, validated.
#[derive(Debug, Default)]
pub struct SubscribeRequest {
    pub selectors: Vec<TopicSelector>,
    pub last_event_id: Option<String>,
    pub query_token: Option<String>,
}

/// Parse and validate the subscribe query: `match`, `match_exact`,
/// `match_urlpattern` (current draft), `topic` (deployed dialect: URI
/// templates), `last_event_id` / `lastEventID`, `authorization`. Any other
/// name in the reserved `match` namespace is an error, never ignored.
///
/// Patterns (URL Patterns, URI templates) are compiled here, which costs
/// CPU a client controls: call it off the async workers. At most
/// `max_patterns` of the selectors may be patterns, since each is evaluated
/// on every publish.
pub fn parse_query(
    raw: &[u8],
    max_selectors: usize,
    max_len: usize,
    max_patterns: usize,
) -> Result<SubscribeRequest, HttpError> {
    let pairs = form::parse(raw).map_err(|e| HttpError::bad_request(e.to_string()))?;
    let mut req = SubscribeRequest::default();
    let mut draft_id = None;
    let mut legacy_id = None;
    for (name, value) in pairs {
        let is_selector = name == "topic" || name.to_ascii_lowercase().starts_with("match");
        if is_selector {
            if value.chars().any(is_control_or_format) {
                return Err(HttpError::bad_request(format!(
                    "parameter {name:?} contains control or format characters"
                )));
            }
            if value.len() > max_len {
                return Err(HttpError::bad_request(format!(
                    "parameter {name:?} is {} bytes long; the limit is {max_len}",
                    value.len()
                )));
            }
            if req.selectors.len() >= max_selectors {
                return Err(HttpError::bad_request(format!(
                    "too many topic selectors; the limit is {max_selectors} per connection"
                )));
            }
        }
        let selector = match name.as_str() {
            "match" | "match_exact" => TopicSelector::exact(&value),
            "match_urlpattern" => {
                TopicSelector::url_pattern(&value, None).map_err(selector_error)?
            }
            "topic" => TopicSelector::uri_template(&value).map_err(selector_error)?,
            _ if is_selector => {
                return Err(HttpError::bad_request(format!(
                    "unknown matcher parameter {name:?}: use match (exact), match_exact, match_urlpattern or topic"
                )))
            }
            "last_event_id" => {
                draft_id.get_or_insert(value);
                continue;
            }
            "lastEventID" | "Last-Event-ID" => {
                legacy_id.get_or_insert(value);
                continue;
            }
            "authorization" => {
                req.query_token.get_or_insert(value);
                continue;
            }
            _ => continue,
        };
        if req.selectors.contains(&selector) {
            continue;
        }
        if selector.is_pattern()
            && req.selectors.iter().filter(|s| s.is_pattern()).count() >= max_patterns
        {
            return Err(HttpError::bad_request(format!(
                "too many pattern selectors (match_urlpattern, topic with {{...}}); the limit is {max_patterns} per connection (--max-patterns); exact topics (match=) may be used instead, up to {max_selectors}"
            )));
        }
        req.selectors.push(selector);
    }
    if req.selectors.is_empty() {
        return Err(HttpError::bad_request(
            "missing topic selector: add at least one match=<topic>, match_urlpattern=<pattern> or topic=<uri-template> parameter",
        ));
    }
    req.last_event_id = draft_id.or(legacy_id);
    Ok(req)
}

/// Does this query ask for a pattern (`match_urlpattern=`, or a `topic=`
/// with a template expression), which must be compiled? Decoding the query
/// is cheap; compiling is what is kept off the async workers. A query that
/// does not decode is answered by [`parse_query`].
fn has_pattern_selector(query: &str) -> bool {
    form::parse(query.as_bytes()).is_ok_and(|pairs| {
        pairs.iter().any(|(name, value)| {
            name == "match_urlpattern" || (name == "topic" && value.contains('{'))
        })
    })
}

/// A selector that does not compile is the client's error (400); a hub
/// out of room for distinct patterns is the hub's (503, retry later).
fn selector_error(e: SelectorError) -> HttpError {
    match e {
        SelectorError::TooManyPatterns(_) => {
            HttpError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        other => HttpError::bad_request(other.to_string()),
    }
}

/// Does this `Accept` header admit `text/event-stream`? No header means yes.
pub fn accepts_event_stream(headers: &HeaderMap) -> bool {
    let values: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if values.is_empty() {
        return true;
    }
    values.iter().flat_map(|v| v.split(',')).any(|range| {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q_zero = parts.any(|p| {
            let p = p.trim();
            p.strip_prefix("q=")
                .or_else(|| p.strip_prefix("Q="))
                .is_some_and(|q| q.trim().parse::<f32>().map(|q| q <= 0.0).unwrap_or(false))
        });
        !q_zero && matches!(media.as_str(), "text/event-stream" | "text/*" | "*/*")
    })
}

pub async fn subscribe(
    State(state): State<AppState>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    version: axum::http::Version,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    // Through a trusted proxy, the stream counts against the client's
    // address (the proxy's connection is not counted per address); over
    // HTTP/2, against the peer's (one connection carries many streams).
    let mut slot = None;
    if let Some(axum::Extension(axum::extract::ConnectInfo(peer))) = peer {
        let proxied = state.proxies.contains(peer.ip());
        let client = if proxied {
            state.proxies.client_ip(peer.ip(), &headers)
        } else if version == axum::http::Version::HTTP_2 {
            Some(peer.ip())
        } else {
            None
        };
        if let Some(client) = client {
            match state.proxied_streams.try_acquire(client) {
                Some(s) => slot = s,
                None => {
                    return HttpError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too many open streams from your address (--max-connections-per-ip); \
                         close some or retry later",
                    )
                    .into_response()
                }
            }
        }
    }
    match open(&state, &headers, query.as_deref().unwrap_or(""), slot).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn open(
    state: &AppState,
    headers: &HeaderMap,
    query: &str,
    slot: Option<super::proxies::StreamSlot>,
) -> Result<Response, HttpError> {
    if !accepts_event_stream(headers) {
        return Err(HttpError::new(
            StatusCode::NOT_ACCEPTABLE,
            "this endpoint only serves text/event-stream; send 'Accept: text/event-stream'",
        ));
    }
    let cfg = &state.config;
    // Compiling patterns is CPU a client controls: a query with patterns is
    // parsed off the async workers. One with exact topics only is parsed
    // here: a hop to the blocking pool would cost more than the parse.
    let limits = (cfg.max_selectors, cfg.max_selector_len, cfg.max_patterns);
    let req = if has_pattern_selector(query) {
        let raw = query.to_owned();
        tokio::task::spawn_blocking(move || {
            parse_query(raw.as_bytes(), limits.0, limits.1, limits.2)
        })
        .await
        .map_err(|e| HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??
    } else {
        parse_query(query.as_bytes(), limits.0, limits.1, limits.2)?
    };
    // A token's patterns are compiled only once its signature holds (a
    // trusted signer), and through the shared cache.
    let grants = match find_token(headers, req.query_token.as_deref())? {
        Some(token) => verify(&state.subscriber, &token).await?,
        // No token: the application's session, if it has a say.
        None => match &state.auth_app {
            Some(app) => match app.grants(headers).await {
                Some(answer) => answer?,
                None if cfg.allow_anonymous => Grants::default(),
                None => return Err(AuthError::Missing.into()),
            },
            None if cfg.allow_anonymous => Grants::default(),
            None => return Err(AuthError::Missing.into()),
        },
    };
    // Within the leeway a token past its `exp` still verifies, but a stream
    // opened with it would end at once, and the client would reconnect in a
    // loop with the same token: refuse it instead, so it fetches a new one.
    if grants
        .expires_at
        .is_some_and(|exp| exp <= std::time::SystemTime::now())
    {
        return Err(AuthError::Invalid(
            "the token has expired: subscribe again with a fresh one".into(),
        )
        .into());
    }
    let header_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let requested = header_id.or(req.last_event_id);
    let resume = requested.as_ref().map(|id| match id.as_str() {
        "earliest" => ResumeFrom::Earliest,
        other => ResumeFrom::After(other.to_string()),
    });

    let payload = req
        .selectors
        .iter()
        .find_map(|s| grants.payload_for(s.as_str()));
    let subscription = Subscription {
        subscriber_id: Update::generate_id(),
        selectors: req.selectors,
        private_access: grants.subscribe.clone(),
        payload,
    };
    let subscribed = state.hub.subscribe(subscription, resume.clone()).await?;
    // The proxied client's slot lives as long as the stream. The stream
    // opens with a comment: a proxy that holds the response head until the
    // first body bytes (nginx towards HTTP/2 clients does) passes it on at
    // once instead of at the first event or heartbeat, and the client's
    // EventSource opens.
    let opening = futures_util::stream::once(std::future::ready(Ok(bytes::Bytes::from_static(
        crate::sse::KEEP_ALIVE,
    ))));
    let stream = opening.chain(subscribed.stream.map(move |event| {
        let _ = &slot;
        event
    }));

    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no");
    if let Some(requested) = &requested {
        // Current draft: the id of the event preceding the first one sent,
        // or `earliest` when there is none (history empty, `earliest`
        // asked, or the id is unknown / already discarded).
        let preceding = match (&resume, subscribed.resumed) {
            (Some(ResumeFrom::After(_)), true) => requested.as_str(),
            _ => "earliest",
        };
        // Deployed dialect: where the hub's history stood at connection.
        let legacy = subscribed.head_id.as_deref().unwrap_or("earliest");
        if let (Ok(a), Ok(b)) = (
            HeaderValue::from_str(preceding),
            HeaderValue::from_str(legacy),
        ) {
            resp = resp
                .header("mercure-last-event-id", a)
                .header("last-event-id", b);
        }
    }
    // A subscriber's connection ends when its token expires; it reconnects
    // with a fresh token and resumes from Last-Event-ID.
    let gzip = cfg.compression && super::gzip::accepts_gzip(headers);
    resp = resp.header(header::VARY, "accept-encoding");
    if gzip {
        resp = resp.header(header::CONTENT_ENCODING, "gzip");
    }
    let min_size = cfg.compression_min_size;
    let body = match grants.expires_at {
        Some(exp) => {
            let left = exp
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            let stream = stream.take_until(tokio::time::sleep(left));
            if gzip {
                Body::from_stream(super::gzip::GzipStream::new(Box::pin(stream), min_size))
            } else {
                Body::from_stream(stream)
            }
        }
        None if gzip => Body::from_stream(super::gzip::GzipStream::new(stream, min_size)),
        None => Body::from_stream(stream),
    };
    resp.body(body)
        .map_err(|e| HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Result<SubscribeRequest, HttpError> {
        parse_query(s.as_bytes(), 3, 50, 2)
    }

    #[test]
    fn patterns_have_their_own_cap() {
        let p = |n: usize| -> String {
            (0..n)
                .map(|i| format!("match_urlpattern=https%3A%2F%2Fx%2F{i}%2F%3Aid"))
                .collect::<Vec<_>>()
                .join("&")
        };
        assert_eq!(
            parse_query(p(2).as_bytes(), 10, 50, 2)
                .unwrap()
                .selectors
                .len(),
            2
        );
        let e = parse_query(p(3).as_bytes(), 10, 50, 2).expect_err("3 patterns");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("limit is 2"), "{}", e.message);
        // Templates count as patterns; exact topics and `*` do not.
        let mixed = format!("{}&topic=https://x/{{id}}", p(2));
        assert!(parse_query(mixed.as_bytes(), 10, 50, 2).is_err());
        let exact = format!("{}&match=a&match=b&match=*&topic=urn:c", p(2));
        assert_eq!(
            parse_query(exact.as_bytes(), 10, 50, 2)
                .unwrap()
                .selectors
                .len(),
            6
        );
        // A repeated pattern is merged, not counted twice.
        let dup = format!("{}&{}", p(2), p(2));
        assert!(parse_query(dup.as_bytes(), 10, 50, 2).is_ok());
    }

    #[test]
    fn oversized_pattern_is_a_400_naming_it() {
        let e = parse_query(
            b"match_urlpattern=https%3A%2F%2Fx%2F%3Aa(%5Cp%7BL%7D%7B200%7D)",
            10,
            100,
            10,
        )
        .expect_err("oversized regex");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(
            e.message.contains(r"https://x/:a(\p{L}{200})"),
            "{}",
            e.message
        );
    }

    #[test]
    fn parses_both_dialects() {
        let r = q("match=a&match_urlpattern=https%3A%2F%2Fx%2F%3Aid&topic=https://x/{id}&last_event_id=e1&lastEventID=e2").unwrap();
        assert_eq!(r.selectors.len(), 3);
        assert_eq!(r.selectors[0].kind(), "exact");
        assert_eq!(r.selectors[1].kind(), "url_pattern");
        assert_eq!(r.selectors[2].kind(), "uri_template");
        assert_eq!(r.last_event_id.as_deref(), Some("e1"));
        assert_eq!(
            q("topic=a&lastEventID=e2")
                .unwrap()
                .last_event_id
                .as_deref(),
            Some("e2")
        );
        assert_eq!(q("match=*").unwrap().selectors, vec![TopicSelector::Any]);
        assert_eq!(
            q("match=a&match=a").unwrap().selectors.len(),
            1,
            "duplicates merged"
        );
    }

    #[test]
    fn rejects_bad_queries() {
        for bad in [
            "",
            "foo=bar",
            "match_regex=a",
            "MATCH=a",
            "matches=a",
            "match=a%00b",
            "match=a%E2%80%8Bb",
            "topic=a%0Ab",
            "match_urlpattern=https%3A%2F%2Fx%2F(",
            "topic=https://x/{",
            "match=a&match=b&match=c&match=d",
            "match=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "match=%FF",
        ] {
            let e = q(bad).expect_err(bad);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn accept_negotiation() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
            accepts_event_stream(&m)
        };
        assert!(accepts_event_stream(&HeaderMap::new()));
        assert!(h("text/event-stream"));
        assert!(h("application/json, */*;q=0.1"));
        assert!(h("text/*"));
        assert!(!h("application/json"));
        assert!(!h("text/event-stream;q=0"));
        assert!(!h("text/html"));
    }
}
