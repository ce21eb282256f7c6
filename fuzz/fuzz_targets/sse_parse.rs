//! Arbitrary bytes into the SSE parser, in arbitrary chunks (empty ones
//! included): no panic, and the same events, last event id and comment
//! count as feeding everything at once.
#![no_main]

use herald::sse::{SseEvent, SseParser};
use libfuzzer_sys::fuzz_target;

fn run<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> (Vec<SseEvent>, String, u64) {
    let mut p = SseParser::new();
    let mut events = Vec::new();
    for c in chunks {
        events.extend(p.feed(c));
    }
    (events, p.last_event_id().to_string(), p.comments())
}

fuzz_target!(|input: &[u8]| {
    // The first byte seeds the chunk sizes; the rest is the stream.
    let Some((&seed, stream)) = input.split_first() else {
        return;
    };
    let whole = run(std::iter::once(stream));

    // Chunks of pseudo-random sizes 0..=7 (0: an empty read).
    let mut chunks = Vec::new();
    let mut rest = stream;
    let mut state = seed as u32 | 1;
    while !rest.is_empty() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = ((state >> 16) % 8) as usize;
        let n = n.min(rest.len());
        chunks.push(&rest[..n]);
        rest = &rest[n..];
    }
    let chunked = run(chunks.iter().copied());
    assert_eq!(whole, chunked, "chunks {chunks:?}");

    // One byte at a time.
    if stream.len() <= 2048 {
        let bytewise = run(stream.chunks(1));
        assert_eq!(whole, bytewise, "byte by byte");
    }
});
