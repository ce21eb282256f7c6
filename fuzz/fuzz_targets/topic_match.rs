//! Topic selectors from arbitrary strings: compiling and matching never
//! panics, and the invariants the code documents hold:
//! - `*` matches everything;
//! - an exact selector matches exactly its own string;
//! - a URI template matches its own source, and every RFC 6570 expansion
//!   of itself (here: every variable empty, and every variable "v1");
//! - a string without `{` is an exact selector;
//! - a URL pattern matches its own source.
#![no_main]

use arbitrary::Arbitrary;
use herald::topic::TopicSelector;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    source: String,
    topics: Vec<String>,
}

/// Expand a template (already accepted by `uri_template`) with every
/// variable set to `value` (a string of unreserved characters, or empty),
/// following RFC 6570 section 3.2.
fn expand(template: &str, value: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}').expect("accepted templates are balanced");
        let expr = &after[..close];
        rest = &after[close + 1..];
        let (op, vars) = match expr.chars().next() {
            Some(c @ ('+' | '#' | '.' | '/' | ';' | '?' | '&')) => (Some(c), &expr[1..]),
            _ => (None, expr),
        };
        let names: Vec<&str> = vars
            .split(',')
            .map(|spec| {
                let n = spec.trim_end_matches('*');
                n.split(':').next().unwrap_or_default()
            })
            .collect();
        let (first, sep) = match op {
            None | Some('+') => ("", ","),
            Some('#') => ("#", ","),
            Some('.') => (".", "."),
            Some('/') => ("/", "/"),
            Some(';') => (";", ";"),
            Some('?') => ("?", "&"),
            Some('&') => ("&", "&"),
            Some(_) => unreachable!(),
        };
        let named = matches!(op, Some(';' | '?' | '&'));
        let items: Vec<String> = names
            .iter()
            .map(|n| {
                if !named {
                    value.to_string()
                } else if value.is_empty() && op == Some(';') {
                    n.to_string()
                } else {
                    format!("{n}={value}")
                }
            })
            .collect();
        out.push_str(first);
        out.push_str(&items.join(sep));
    }
    out.push_str(rest);
    out
}

fuzz_target!(init: herald_fuzz::allow_caught_urlpattern_panics(), |inp: Input| {
    let s = inp.source.as_str();
    let topics: Vec<&str> = inp.topics.iter().map(String::as_str).take(8).collect();

    // match= : exact or `*`.
    let exact = TopicSelector::exact(s);
    assert!(exact.matches(s));
    for t in &topics {
        assert_eq!(
            exact.matches(t),
            s == "*" || s == *t,
            "exact {s:?} vs {t:?}"
        );
    }

    // topic= : `*`, exact, or URI template.
    if let Ok(sel) = TopicSelector::uri_template(s) {
        assert!(sel.matches(s), "template {s:?} must match itself");
        if s != "*" && !s.contains('{') {
            assert_eq!(sel.as_exact(), Some(s));
        }
        if matches!(sel, TopicSelector::UriTemplate { .. }) {
            for value in ["", "v1"] {
                let expanded = expand(s, value);
                assert!(
                    sel.matches(&expanded),
                    "template {s:?} must match its expansion {expanded:?}"
                );
            }
        }
        for t in &topics {
            let _ = sel.matches(t);
        }
    } else {
        assert!(s.contains('{') || s.contains('}'), "{s:?} refused");
    }

    // match_urlpattern= : WHATWG URL Pattern.
    if let Ok(sel) = TopicSelector::url_pattern(s, None) {
        assert!(sel.matches(s), "url pattern {s:?} must match itself");
        for t in &topics {
            let _ = sel.matches(t);
        }
    }
});
