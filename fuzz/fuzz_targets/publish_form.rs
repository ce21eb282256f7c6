//! The publish form parser on arbitrary bytes and limits: no panic, errors
//! are 4xx, a success respects the limits and the field rules, and the
//! update it describes survives the SSE encoder and parser.
#![no_main]

use herald::http::parse_form;
use herald::sse::{encode_event, validate_field_value, SseParser};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let (limits, raw) = input.split_at(input.len().min(2));
    let max_topics = 1 + limits.first().map_or(3, |b| usize::from(b % 8));
    let max_len = 1 + limits.get(1).map_or(64, |b| usize::from(*b));
    match parse_form(raw, max_topics, max_len) {
        Ok(req) => {
            assert!(!req.topics.is_empty() && req.topics.len() <= max_topics);
            for (i, t) in req.topics.iter().enumerate() {
                assert!(!t.is_empty() && t.len() <= max_len && t != "*");
                assert!(!req.topics[..i].contains(t), "duplicate topic {t:?}");
            }
            if let Some(id) = &req.id {
                assert!(validate_field_value(id).is_ok() && !id.is_empty());
                assert!(!id.starts_with('#') && id != "earliest");
            }
            if let Some(t) = &req.event_type {
                assert!(validate_field_value(t).is_ok() && !t.is_empty() && t != "mercure");
            }
            let id = req.id.as_deref().unwrap_or("urn:uuid:generated");
            let bytes = encode_event(id, req.event_type.as_deref(), req.retry, &req.data);
            let events = SseParser::new().feed(&bytes);
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].id, id);
            assert_eq!(
                events[0].data,
                req.data.replace("\r\n", "\n").replace('\r', "\n")
            );
            assert_eq!(events[0].retry, req.retry);
        }
        Err(e) => assert!(e.status.is_client_error(), "{} {}", e.status, e.message),
    }
});
