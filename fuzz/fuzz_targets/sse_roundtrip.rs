//! encode_event → SseParser::feed must give back exactly the event that was
//! encoded: same id, type, retry, and data with its line breaks (CRLF, CR,
//! LF) normalised to LF, as the encoder documents and browsers do.
#![no_main]

use arbitrary::Arbitrary;
use herald::sse::{encode_event, validate_field_value, SseEvent, SseParser};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    id: String,
    event_type: Option<String>,
    retry: Option<u64>,
    data: String,
    split: usize,
    split2: usize,
}

fn check(events: &[SseEvent], inp: &Input, how: &str) {
    assert_eq!(events.len(), 1, "{how}: one event expected, got {events:?}");
    let ev = &events[0];
    // The encoder splits data on CRLF, lone CR and lone LF into `data:`
    // lines; the parser joins them with LF.
    let expected_data = inp.data.replace("\r\n", "\n").replace('\r', "\n");
    assert_eq!(ev.data, expected_data, "{how}: data");
    assert_eq!(ev.id, inp.id, "{how}: id");
    // An empty `event:` field means the default type.
    let expected_type = match inp.event_type.as_deref() {
        None | Some("") => "message",
        Some(t) => t,
    };
    assert_eq!(ev.event_type, expected_type, "{how}: type");
    assert_eq!(ev.retry, inp.retry, "{how}: retry");
}

fuzz_target!(|inp: Input| {
    // The publish path refuses these for id and type (field injection).
    if validate_field_value(&inp.id).is_err() {
        return;
    }
    if let Some(t) = &inp.event_type {
        if validate_field_value(t).is_err() {
            return;
        }
    }
    let bytes = encode_event(&inp.id, inp.event_type.as_deref(), inp.retry, &inp.data);

    let mut p = SseParser::new();
    let events = p.feed(&bytes);
    check(&events, &inp, "whole");
    assert_eq!(p.last_event_id(), inp.id);

    // Split at one arbitrary point.
    let at = inp.split % (bytes.len() + 1);
    let mut p = SseParser::new();
    let mut events = p.feed(&bytes[..at]);
    events.extend(p.feed(&bytes[at..]));
    check(&events, &inp, &format!("split at {at}"));

    // Split at two points (possibly equal: an empty chunk in between).
    let at2 = inp.split2 % (bytes.len() + 1);
    let (a, b) = (at.min(at2), at.max(at2));
    let mut p = SseParser::new();
    let mut events = p.feed(&bytes[..a]);
    events.extend(p.feed(&bytes[a..b]));
    events.extend(p.feed(&bytes[b..]));
    check(&events, &inp, &format!("split at {a} and {b}"));
});
