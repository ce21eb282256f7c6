//! Inputs found by the cargo-fuzz targets (fuzz/, run by bench/fuzz.sh),
//! kept as ordinary tests so the bugs they found stay fixed on stable.

use herald::auth::Grants;
use herald::sse::SseParser;
use herald::topic::TopicSelector;
use serde_json::json;

/// fuzz/sse_parse, crash-c60019a93fd2bc3e35428d1ceca195c73bed0413: an empty
/// chunk between the CR and the LF of a CRLF made the parser see two line
/// ends, dispatching an event in the middle of another.
#[test]
fn sse_parse_empty_chunk_inside_crlf() {
    let chunks: [&[u8]; 15] = [
        b"\navenv\x7f",
        b"\ndata",
        b":gretry:$3000\r",
        b"",
        b"\niata: a\r",
        b"",
        b"\na: a\r\n",
        b"data:",
        b"a\r\ndat",
        b"a:\x89\n\n",
        b"i",
        b"ata\nj",
        b"",
        b"",
        b"",
    ];
    let whole: Vec<u8> = chunks.concat();
    let expected = SseParser::new().feed(&whole);
    let mut p = SseParser::new();
    let mut got = Vec::new();
    for c in chunks {
        got.extend(p.feed(c));
    }
    assert_eq!(got, expected);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, "gretry:$3000\na\n\u{FFFD}");
}

/// The original crash input, with the fuzz target's chunking.
#[test]
fn sse_parse_crash_input_chunked_like_the_fuzzer() {
    let chunks: [&[u8]; 15] = [
        &[10, 97, 118],
        &[101, 110, 127],
        &[10, 100, 97, 116, 97],
        &[],
        &[58, 103, 114, 101, 116, 114],
        &[121, 58, 36, 51],
        &[48, 48, 48, 13, 105],
        &[97, 116, 97, 58, 32, 97, 13],
        &[],
        &[10, 97, 58, 32, 97, 13, 10],
        &[100, 97, 116, 97, 58],
        &[97, 13, 10, 100, 97, 116],
        &[97, 58, 137, 10, 10],
        &[105],
        &[97, 116, 97, 10, 106],
    ];
    let whole: Vec<u8> = chunks.concat();
    let expected = SseParser::new().feed(&whole);
    let mut p = SseParser::new();
    let mut got = Vec::new();
    for c in chunks {
        got.extend(p.feed(c));
    }
    assert_eq!(got, expected);
}

/// fuzz/topic_match, crash-c4707b6ca2155a6788b8e78f81581ec04cbf9ac6: the
/// urlpattern crate panicked (`unwrap` on `None`) on the pattern `*\n*`.
/// It must be refused, not panic.
#[test]
fn url_pattern_that_panicked_the_parser_is_refused() {
    let e = TopicSelector::url_pattern("*\n*", None).expect_err("refused");
    assert!(e.to_string().contains("URL pattern"), "{e}");
    // Still refused the second time (nothing cached).
    assert!(TopicSelector::url_pattern("*\n*", None).is_err());
    // Ordinary patterns are unaffected.
    assert!(TopicSelector::url_pattern("https://ex.net/:id", None)
        .unwrap()
        .matches("https://ex.net/1"));
}

/// The same pattern reached through a token's authorization details
/// (tokens carry no control-character check) invalidates the token.
#[test]
fn url_pattern_that_panicked_the_parser_in_a_token() {
    let claims = json!({
        "authorization_details": [{
            "type": "https://mercure.rocks/authorization-detail",
            "actions": ["subscribe"],
            "topics": [{"match": "*\n*", "match_type": "urlpattern"}]
        }]
    });
    assert!(Grants::from_claims(&claims).is_err());
}
