//! `herald::http::form::parse` on arbitrary bytes: no panic; when it
//! succeeds it agrees with `form_urlencoded::parse` (which is the same
//! grammar, decoding invalid UTF-8 lossily), and re-encoding the pairs
//! with form_urlencoded and parsing again gives the same pairs.
#![no_main]

use herald::http::form;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(pairs) = form::parse(input) else {
        // Refused only for invalid UTF-8, which the lossy parser replaces.
        let lossy = form_urlencoded::parse(input);
        assert!(
            lossy
                .into_iter()
                .any(|(k, v)| k.contains('\u{FFFD}') || v.contains('\u{FFFD}')),
            "refused, yet it decodes as valid UTF-8"
        );
        return;
    };
    let reference: Vec<(String, String)> = form_urlencoded::parse(input).into_owned().collect();
    assert_eq!(pairs, reference, "differs from form_urlencoded");

    let encoded = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs.iter())
        .finish();
    let again = form::parse(encoded.as_bytes()).expect("re-encoded form parses");
    assert_eq!(pairs, again, "round trip through {encoded:?}");
});
