//! One error type for every HTTP answer that is not a success: a status, a
//! message that says what was wrong and what to do, and for token failures
//! the RFC 6750 `WWW-Authenticate: Bearer` challenge.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::auth::AuthError;
use crate::hub::HubError;

#[derive(Debug, Clone)]
pub struct HttpError {
    pub status: StatusCode,
    pub message: String,
    /// The `error` attribute of the Bearer challenge, when there is one.
    challenge: Option<Option<&'static str>>,
}

impl HttpError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            message: message.into(),
            challenge: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn too_large(message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }

    /// 401 with a plain Bearer challenge (no token was presented) and a
    /// message of the caller's.
    pub fn unauthorized(message: impl Into<String>) -> HttpError {
        HttpError {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
            challenge: Some(None),
        }
    }
}

impl From<AuthError> for HttpError {
    fn from(e: AuthError) -> HttpError {
        let (status, code) = match &e {
            AuthError::Missing => (StatusCode::UNAUTHORIZED, None),
            AuthError::Malformed(_) => (StatusCode::BAD_REQUEST, Some("invalid_request")),
            AuthError::Invalid(_) => (StatusCode::UNAUTHORIZED, Some("invalid_token")),
            AuthError::Forbidden(_) => (StatusCode::FORBIDDEN, Some("insufficient_scope")),
            AuthError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, None),
        };
        HttpError {
            status,
            message: e.to_string(),
            challenge: Some(code),
        }
    }
}

impl From<HubError> for HttpError {
    fn from(e: HubError) -> HttpError {
        use crate::history::HistoryError;
        let status = match &e {
            HubError::History(HistoryError::DuplicateId(_)) => StatusCode::CONFLICT,
            // Storage that cannot be read or written is a fault of the
            // hub that goes away (503 says "retry"), not a bad request.
            HubError::History(HistoryError::Storage(_) | HistoryError::Corrupt { .. })
            | HubError::Unavailable(_)
            | HubError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        };
        HttpError::new(status, e.to_string())
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, format!("{}\n", self.message)).into_response();
        // For the log line of the answer (see `requests`).
        resp.extensions_mut()
            .insert(super::requests::Reason(self.message.clone()));
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            // A passing condition: clients that honour it come back soon.
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Some(code) = self.challenge {
            // RFC 6750 3: the reason, for the developer reading the
            // response (never a secret: messages name settings, claims and
            // topics of the request itself).
            let value = match code {
                Some(c) => format!(
                    "Bearer realm=\"mercure\", error=\"{c}\", error_description=\"{}\"",
                    description(&self.message)
                ),
                None => "Bearer realm=\"mercure\"".to_string(),
            };
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(header::WWW_AUTHENTICATE, v);
            }
        }
        resp
    }
}

/// `text` as an RFC 6750 `error_description`: printable ASCII without `"`
/// and `\` (replaced by `'` and `/`, anything else by `?`), at most 300
/// bytes.
pub fn description(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            ' '..='~' => c,
            _ => '?',
        })
        .collect();
    if out.len() > 300 {
        out.truncate(297);
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_safe_header_text() {
        assert_eq!(description("topic \"a\\b\" é"), "topic 'a/b' ?");
        assert_eq!(description(&"x".repeat(400)).len(), 300);
        let e = HttpError::from(AuthError::Invalid("the token expired 3 s ago".into()));
        let r = e.into_response();
        let h = r.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(
            h,
            "Bearer realm=\"mercure\", error=\"invalid_token\", error_description=\"invalid token: the token expired 3 s ago\""
        );
    }
}
