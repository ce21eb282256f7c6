//! The lean HTTP/1.1 request-head reader (src/http/conn.rs): arbitrary
//! bytes, read in arbitrary chunks as `read_head` does.
//! - `parse_lean_head` never panics;
//! - the end-of-head search run incrementally over the chunks finds the
//!   end at the same read as a search over everything read so far;
//! - whatever httparse considers a complete head, the end-of-head search
//!   finds (otherwise `read_head` would wait forever for a head it has);
//! - a head taken for the lean path is a bodiless HTTP/1.1 GET of the hub
//!   with a Host and no hop-by-hop headers.
#![no_main]

use herald::http::conn::{has_end_of_head, parse_lean_head, LeanHead};
use herald::http::HUB_PATH;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&seed, bytes)) = input.split_first() else {
        return;
    };

    // Read in chunks of pseudo-random sizes 1..=16, as a socket would.
    let mut state = u32::from(seed) | 1;
    let mut read = 0;
    let mut found_incrementally = None;
    while read < bytes.len() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = (1 + (state >> 16) % 16) as usize;
        let searched = read;
        read = (read + n).min(bytes.len());
        let incremental = has_end_of_head(&bytes[..read], searched);
        let whole = has_end_of_head(&bytes[..read], 0);
        if found_incrementally.is_none() {
            assert_eq!(
                incremental, whole,
                "end of head after {read} bytes: incremental {incremental}, whole {whole}"
            );
            if incremental {
                found_incrementally = Some(read);
            }
        }
    }

    let mut headers = [httparse::EMPTY_HEADER; 64];
    let complete = matches!(
        httparse::Request::new(&mut headers).parse(bytes),
        Ok(httparse::Status::Complete(_))
    );
    if complete {
        assert!(
            has_end_of_head(bytes, 0),
            "httparse has a complete head the end-of-head search does not see"
        );
    }

    match parse_lean_head(bytes) {
        LeanHead::Lean(req) => {
            assert!(complete);
            assert_eq!(req.method(), "GET");
            assert_eq!(req.version(), http::Version::HTTP_11);
            assert_eq!(req.uri().path(), HUB_PATH);
            assert!(req.headers().contains_key("host"));
            for h in [
                "connection",
                "transfer-encoding",
                "content-length",
                "upgrade",
            ] {
                assert!(!req.headers().contains_key(h), "{h} reached the router");
            }
        }
        LeanHead::Partial => assert!(!complete && bytes.len() < 16 * 1024),
        LeanHead::Other => {}
    }
});
