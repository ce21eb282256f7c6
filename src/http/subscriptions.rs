//! The subscriptions API: `/.well-known/mercure/subscriptions` and below.
//!
//! URL shapes of both dialects:
//! - `/subscriptions` — every active subscription;
//! - `/subscriptions/{match_type}/{match}` — those with this matcher
//!   (current draft), or `/subscriptions/{topic}` (deployed dialect);
//! - `/subscriptions/{match_type}/{match}/{subscriber}` — one subscription
//!   (current draft), or `/subscriptions/{topic}/{subscriber}` (deployed).
//!
//! Access: the token must grant `subscribe` on the request path itself (its
//! relative form, query excluded), the same topic the matching subscription
//! events are published on, so one grant covers both.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;
use serde_json::{json, Value};

use super::{find_token, verify, AppState, HttpError, HUB_PATH};
use crate::auth::AuthError;
use crate::hub::SubscriptionInfo;

const MATCH_TYPES: [&str; 3] = ["exact", "urlpattern", "uritemplate"];

pub async fn list(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    respond(&state, &headers, &uri).await
}

pub async fn lookup(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    respond(&state, &headers, &uri).await
}

async fn respond(state: &AppState, headers: &HeaderMap, uri: &Uri) -> Response {
    match answer(state, headers, uri).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

/// Which subscriptions a path selects.
#[derive(Debug, PartialEq, Eq)]
enum Query {
    All,
    Matcher {
        match_type: Option<String>,
        selector: String,
    },
    One {
        match_type: Option<String>,
        selector: String,
        subscriber: String,
    },
}

fn parse_path(rest: &str) -> Result<Query, HttpError> {
    let decode = |s: &str| {
        percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| {
                HttpError::bad_request(
                    "subscription path segments must be UTF-8 after percent-decoding",
                )
            })
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    Ok(match segments.as_slice() {
        [] => Query::All,
        [topic] => Query::Matcher {
            match_type: None,
            selector: decode(topic)?,
        },
        [a, b] if MATCH_TYPES.contains(a) => Query::Matcher {
            match_type: Some(a.to_string()),
            selector: decode(b)?,
        },
        [topic, sub] => Query::One {
            match_type: None,
            selector: decode(topic)?,
            subscriber: decode(sub)?,
        },
        [t, m, s] => Query::One {
            match_type: Some(t.to_string()),
            selector: decode(m)?,
            subscriber: decode(s)?,
        },
        _ => {
            return Err(HttpError::new(
                StatusCode::NOT_FOUND,
                "no such subscriptions resource",
            ))
        }
    })
}

async fn answer(state: &AppState, headers: &HeaderMap, uri: &Uri) -> Result<Response, HttpError> {
    if !state.config.subscriptions {
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "the subscriptions API is disabled; start herald with --subscriptions to enable it",
        ));
    }
    let path = uri.path();
    let token = find_token(headers, None)?.ok_or(AuthError::Missing)?;
    let grants = verify(&state.subscriber, &token).await?;
    if !grants.can_subscribe(path) {
        return Err(AuthError::Forbidden(format!(
            "your token does not grant subscribe on {path:?}"
        ))
        .into());
    }
    let rest = path
        .strip_prefix(&format!("{HUB_PATH}/subscriptions"))
        .unwrap_or("");
    let query = parse_path(rest)?;
    // Only an id this token may see: the newest update may be a private
    // one on a topic it does not grant.
    let last_event_id = state
        .hub
        .newest_visible_id(&grants.subscribe)
        .unwrap_or_else(|| "earliest".into());
    // Cluster mode: every node's subscriptions, read after the token check.
    let all = state.hub.subscriptions_everywhere().await?;
    let selects = |info: &SubscriptionInfo, match_type: &Option<String>, selector: &str| {
        info.selector == selector && match_type.as_deref().is_none_or(|t| t == info.match_type)
    };
    let body: Value = match &query {
        Query::All => collection(path, &all, &last_event_id),
        Query::Matcher {
            match_type,
            selector,
        } => {
            let subset: Vec<_> = all
                .into_iter()
                .filter(|i| selects(i, match_type, selector))
                .collect();
            collection(path, &subset, &last_event_id)
        }
        Query::One {
            match_type,
            selector,
            subscriber,
        } => {
            match all
                .iter()
                .find(|i| selects(i, match_type, selector) && &i.subscriber == subscriber)
            {
                Some(info) => info.to_json_ld(Some(&last_event_id)),
                None => {
                    return Err(HttpError::new(
                        StatusCode::NOT_FOUND,
                        "no such active subscription",
                    ))
                }
            }
        }
    };
    let link = format!(
        "<{HUB_PATH}>; rel=\"mercure\"; last-event-id=\"{}\"; type=\"mercure\"; content-type=\"application/json\"",
        last_event_id.replace(['"', '\\'], "")
    );
    let mut resp = (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "must-revalidate"),
        ],
        body.to_string(),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&link) {
        resp.headers_mut().insert(header::LINK, v);
    }
    Ok(resp)
}

fn collection(path: &str, subs: &[SubscriptionInfo], last_event_id: &str) -> Value {
    json!({
        "@context": "https://mercure.rocks/",
        "id": path,
        "type": "subscriptions",
        "lastEventID": last_event_id,
        "subscriptions": subs.iter().map(|s| s.to_json_ld(None)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_shapes() {
        assert_eq!(parse_path("").unwrap(), Query::All);
        assert_eq!(parse_path("/").unwrap(), Query::All);
        assert_eq!(
            parse_path("/https%3A%2F%2Fx%2F1").unwrap(),
            Query::Matcher {
                match_type: None,
                selector: "https://x/1".into()
            }
        );
        assert_eq!(
            parse_path("/exact/https%3A%2F%2Fx%2F1").unwrap(),
            Query::Matcher {
                match_type: Some("exact".into()),
                selector: "https://x/1".into()
            }
        );
        assert_eq!(
            parse_path("/a/urn%3Auuid%3A1").unwrap(),
            Query::One {
                match_type: None,
                selector: "a".into(),
                subscriber: "urn:uuid:1".into()
            }
        );
        assert_eq!(
            parse_path("/urlpattern/a/b").unwrap(),
            Query::One {
                match_type: Some("urlpattern".into()),
                selector: "a".into(),
                subscriber: "b".into()
            }
        );
        assert!(parse_path("/a/b/c/d").is_err());
        assert!(parse_path("/%FF").is_err());
    }
}
