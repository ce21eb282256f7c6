//! The subscribe query parser on arbitrary bytes and limits: no panic,
//! errors are 4xx, and a success respects the limits.
#![no_main]

use herald::http::parse_query;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: herald_fuzz::allow_caught_urlpattern_panics(), |input: &[u8]| {
    // The first two bytes choose the limits, small enough to be reached.
    let (limits, raw) = input.split_at(input.len().min(2));
    let max_selectors = 1 + limits.first().map_or(4, |b| usize::from(b % 8));
    let max_patterns = limits.get(1).map_or(2, |b| usize::from(b % 4));
    let max_len = 256;
    match parse_query(raw, max_selectors, max_len, max_patterns) {
        Ok(req) => {
            assert!(!req.selectors.is_empty());
            assert!(req.selectors.len() <= max_selectors);
            assert!(req.selectors.iter().filter(|s| s.is_pattern()).count() <= max_patterns);
            for s in &req.selectors {
                assert!(s.as_str().len() <= max_len);
                // Every selector matches its own source (templates and
                // patterns as literal topics, exact ones trivially).
                assert!(s.matches(s.as_str()));
            }
        }
        Err(e) => assert!(e.status.is_client_error(), "{} {}", e.status, e.message),
    }
});
