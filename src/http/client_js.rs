//! `GET /herald.js`: the browser client (source: `web/herald.js`), embedded
//! in the binary so that a page can `import { Herald } from '/herald.js'`
//! from the hub it talks to, in the version that matches it.
//!
//! Cached for a few minutes, then revalidated by its `ETag` (a hash of the
//! embedded text, fixed at compile time): a new Herald release reaches the
//! pages within minutes, and an unchanged file costs a 304.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

const SOURCE: &str = include_str!("../../web/herald.js");

/// FNV-1a of the source: not a security hash, only a version tag.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

const VERSION: u64 = fnv1a(SOURCE.as_bytes());

pub async fn serve(headers: HeaderMap) -> Response {
    let etag = format!("\"{VERSION:016x}\"");
    let fresh = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == etag
        });
    let common = [
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=300"),
        ),
        (
            header::ETAG,
            HeaderValue::from_str(&etag).expect("hex digits are a valid header value"),
        ),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        )],
        SOURCE,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_the_module_then_304_for_its_etag() {
        let resp = serve(HeaderMap::new()).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        let etag = resp.headers()[header::ETAG].clone();
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(serve(again).await.status(), StatusCode::NOT_MODIFIED);
        let mut other = HeaderMap::new();
        other.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"0\""));
        assert_eq!(serve(other).await.status(), StatusCode::OK);
    }

    #[test]
    fn the_version_tag_follows_the_text() {
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
        assert!(SOURCE.contains("export class Herald"));
    }
}
