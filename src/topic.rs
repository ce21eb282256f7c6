//! Topic selectors: which topics a subscription (or a JWT claim) covers.
//!
//! Four kinds exist in the Mercure dialects Herald speaks:
//! - `*` matches every topic;
//! - exact strings (`match=` in the current draft, or a `topic=` without
//!   template expressions in the deployed dialect);
//! - RFC 6570 URI templates (`topic=https://ex.net/books/{id}` in the deployed
//!   dialect), matched in reverse: "could this topic have been produced by
//!   expanding the template?";
//! - WHATWG URL Patterns (`match_urlpattern=` in the current draft).
//!
//! Matching is pure and allocation-free at match time: templates compile to
//! an anchored regex once, when the subscription is made, because they are
//! evaluated for every published update.

use regex::Regex;
use std::fmt;
use urlpattern::{UrlPattern, UrlPatternInit, UrlPatternMatchInput, UrlPatternOptions};

/// The base URL relative URL patterns and relative topics (such as the
/// hub's own `/.well-known/mercure/subscriptions/...` topics) are resolved
/// against. Both sides use the same base, so `/books/:id` matches the topic
/// `/books/1`.
pub const HUB_BASE: &str = "https://herald.invalid/.well-known/mercure";

fn hub_base() -> &'static url::Url {
    static BASE: std::sync::OnceLock<url::Url> = std::sync::OnceLock::new();
    BASE.get_or_init(|| url::Url::parse(HUB_BASE).expect("HUB_BASE is a valid URL"))
}

/// A compiled topic selector.
#[derive(Clone)]
pub enum TopicSelector {
    Any,
    Exact(String),
    UriTemplate {
        source: String,
        regex: Regex,
    },
    UrlPattern {
        source: String,
        pattern: std::sync::Arc<UrlPattern>,
    },
}

impl fmt::Debug for TopicSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicSelector::Any => write!(f, "Any"),
            TopicSelector::Exact(s) => write!(f, "Exact({s:?})"),
            TopicSelector::UriTemplate { source, .. } => write!(f, "UriTemplate({source:?})"),
            TopicSelector::UrlPattern { source, .. } => write!(f, "UrlPattern({source:?})"),
        }
    }
}

impl PartialEq for TopicSelector {
    fn eq(&self, other: &Self) -> bool {
        self.kind() == other.kind() && self.as_str() == other.as_str()
    }
}

/// Why a selector was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("invalid URI template {0:?}: {1}")]
    Template(String, String),
    #[error("invalid URL pattern {0:?}: {1}")]
    UrlPattern(String, String),
}

impl TopicSelector {
    /// A `match=` value (current draft): `*` or an exact topic.
    pub fn exact(s: &str) -> TopicSelector {
        if s == "*" {
            TopicSelector::Any
        } else {
            TopicSelector::Exact(s.to_string())
        }
    }

    /// A `topic=` value or a `mercure.subscribe`/`mercure.publish` claim
    /// entry (deployed dialect): `*`, a URI template, or an exact string.
    /// A string without `{` is exact; one with `{` must be a valid template.
    pub fn uri_template(s: &str) -> Result<TopicSelector, SelectorError> {
        if s == "*" {
            return Ok(TopicSelector::Any);
        }
        if !s.contains('{') {
            return Ok(TopicSelector::Exact(s.to_string()));
        }
        let pattern = template_to_regex(s).map_err(|e| SelectorError::Template(s.into(), e))?;
        let regex =
            Regex::new(&pattern).map_err(|e| SelectorError::Template(s.into(), e.to_string()))?;
        Ok(TopicSelector::UriTemplate {
            source: s.to_string(),
            regex,
        })
    }

    /// A `match_urlpattern=` value (current draft): a WHATWG URL Pattern
    /// constructor string. Relative patterns are resolved against `base`
    /// (the hub's public URL) when one is known.
    pub fn url_pattern(s: &str, base: Option<&url::Url>) -> Result<TopicSelector, SelectorError> {
        if s == "*" {
            return Ok(TopicSelector::Any);
        }
        let base = base.or(Some(hub_base()));
        let err = |e: urlpattern::Error| SelectorError::UrlPattern(s.into(), e.to_string());
        let init =
            UrlPatternInit::parse_constructor_string::<Regex>(s, base.cloned()).map_err(err)?;
        let pattern =
            UrlPattern::<Regex>::parse(init, UrlPatternOptions::default()).map_err(err)?;
        Ok(TopicSelector::UrlPattern {
            source: s.to_string(),
            pattern: std::sync::Arc::new(pattern),
        })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            TopicSelector::Any => "any",
            TopicSelector::Exact(_) => "exact",
            TopicSelector::UriTemplate { .. } => "uri_template",
            TopicSelector::UrlPattern { .. } => "url_pattern",
        }
    }

    /// The selector as the client wrote it.
    pub fn as_str(&self) -> &str {
        match self {
            TopicSelector::Any => "*",
            TopicSelector::Exact(s) => s,
            TopicSelector::UriTemplate { source, .. }
            | TopicSelector::UrlPattern { source, .. } => source,
        }
    }

    /// The exact topic, when this selector is one (the registry indexes those
    /// in a hash map instead of testing them one by one).
    pub fn as_exact(&self) -> Option<&str> {
        match self {
            TopicSelector::Exact(s) => Some(s),
            _ => None,
        }
    }

    pub fn matches(&self, topic: &str) -> bool {
        match self {
            TopicSelector::Any => true,
            TopicSelector::Exact(s) => s == topic,
            TopicSelector::UriTemplate { regex, source } => {
                source == topic || regex.is_match(topic)
            }
            TopicSelector::UrlPattern { pattern, source } => {
                if source == topic {
                    return true;
                }
                match hub_base().join(topic) {
                    Ok(u) => pattern.test(UrlPatternMatchInput::Url(u)).unwrap_or(false),
                    Err(_) => false,
                }
            }
        }
    }
}

/// Does any selector in the list match any of the topics?
pub fn any_matches(selectors: &[TopicSelector], topics: &[String]) -> bool {
    topics
        .iter()
        .any(|t| selectors.iter().any(|s| s.matches(t)))
}

const UNRESERVED: &str = r"A-Za-z0-9\-._~";
const RESERVED: &str = r":/?#\[\]@!$&'()*+,;=";

/// Translate an RFC 6570 (level 4) template into an anchored regex that
/// matches every expansion of it. Values are matched by character class:
/// unreserved characters and percent-escapes for simple expansion, plus the
/// reserved set for `+` and `#`. Lists (`{x,y}`) and exploded values accept
/// the separators their operator would produce.
fn template_to_regex(t: &str) -> Result<String, String> {
    let mut out = String::from("^");
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        if rest[..open].contains('}') {
            return Err("unbalanced '}'".into());
        }
        out.push_str(&regex::escape(&rest[..open]));
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or("unclosed '{'")?;
        let expr = &after[..close];
        out.push_str(&expression_regex(expr)?);
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err("unbalanced '}'".into());
    }
    out.push_str(&regex::escape(rest));
    out.push('$');
    Ok(out)
}

fn expression_regex(expr: &str) -> Result<String, String> {
    if expr.is_empty() {
        return Err("empty expression '{}'".into());
    }
    let (op, vars) = match expr.chars().next() {
        Some(c @ ('+' | '#' | '.' | '/' | ';' | '?' | '&')) => (Some(c), &expr[1..]),
        Some('=' | ',' | '!' | '@' | '|') => {
            return Err(format!("reserved operator in '{{{expr}}}'"))
        }
        _ => (None, expr),
    };
    let mut names = Vec::new();
    for spec in vars.split(',') {
        let name = spec.trim_end_matches('*');
        let name = name.split(':').next().unwrap_or_default();
        let valid = !name.is_empty()
            && name.split('.').all(|p| {
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '%')
            });
        if !valid {
            return Err(format!("invalid variable name in '{{{expr}}}'"));
        }
        if let Some((_, len)) = spec.split_once(':') {
            if len.is_empty() || len.len() > 4 || !len.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("invalid prefix length in '{{{expr}}}'"));
            }
        }
        names.push(name);
    }
    let pct = "%[0-9A-Fa-f]{2}";
    let simple = format!("(?:[{UNRESERVED}]|{pct})");
    let reserved = format!("(?:[{UNRESERVED}{RESERVED}]|{pct})");
    Ok(match op {
        None => format!("(?:{simple}|,)*"),
        Some('+') => format!("{reserved}*"),
        Some('#') => format!("(?:#{reserved}*)?"),
        Some('.') => format!("(?:\\.(?:{simple}|,)*)*"),
        Some('/') => format!("(?:/(?:{simple}|,)*)*"),
        Some(';') => format!("(?:;[{UNRESERVED}%]+(?:=(?:{simple}|,)*)?)*"),
        Some('?') => format!(
            "(?:\\?[{UNRESERVED}%]+=(?:{simple}|,)*(?:&[{UNRESERVED}%]+=(?:{simple}|,)*)*)?"
        ),
        Some('&') => format!("(?:&[{UNRESERVED}%]+=(?:{simple}|,)*)*"),
        Some(_) => unreachable!("operators filtered above"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TopicSelector {
        TopicSelector::uri_template(s).expect("valid template")
    }

    #[test]
    fn star_matches_everything() {
        assert!(TopicSelector::exact("*").matches("anything"));
        assert!(t("*").matches("https://ex.net/x"));
        assert!(TopicSelector::url_pattern("*", None)
            .unwrap()
            .matches("urn:x"));
    }

    #[test]
    fn exact_is_exact() {
        let s = TopicSelector::exact("https://ex.net/books/1");
        assert!(s.matches("https://ex.net/books/1"));
        assert!(!s.matches("https://ex.net/books/10"));
        assert!(!s.matches("https://ex.net/books/1/"));
        assert_eq!(s.as_exact(), Some("https://ex.net/books/1"));
        // No template expansion for match=.
        assert!(!TopicSelector::exact("https://ex.net/{id}").matches("https://ex.net/1"));
    }

    #[test]
    fn template_simple_expansion() {
        let s = t("https://ex.net/books/{id}");
        assert!(s.matches("https://ex.net/books/1"));
        assert!(s.matches("https://ex.net/books/abc-%20x"));
        assert!(s.matches("https://ex.net/books/"));
        assert!(!s.matches("https://ex.net/books/1/reviews"));
        assert!(!s.matches("https://ex.net/books/1?x=y"));
        assert!(!s.matches("http://ex.net/books/1"));
        // The template string itself is accepted as a literal topic too.
        assert!(s.matches("https://ex.net/books/{id}"));
    }

    #[test]
    fn template_literal_parts_are_escaped() {
        let s = t("https://ex.net/a.b/{id}");
        assert!(s.matches("https://ex.net/a.b/1"));
        assert!(!s.matches("https://ex.net/aXb/1"));
    }

    #[test]
    fn template_reserved_and_fragment() {
        let s = t("https://ex.net/{+path}");
        assert!(s.matches("https://ex.net/a/b/c?x=1"));
        let s = t("https://ex.net/doc{#section}");
        assert!(s.matches("https://ex.net/doc"));
        assert!(s.matches("https://ex.net/doc#intro"));
    }

    #[test]
    fn template_operators() {
        assert!(t("https://ex.net/users{/id}").matches("https://ex.net/users/42"));
        assert!(t("https://ex.net/users{/id}").matches("https://ex.net/users"));
        assert!(t("https://ex.net/search{?q,lang}").matches("https://ex.net/search?q=cat&lang=en"));
        assert!(!t("https://ex.net/search{?q}").matches("https://ex.net/search?q=a/b"));
        assert!(t("https://ex.net/file{.ext}").matches("https://ex.net/file.json"));
        assert!(t("https://ex.net/m{;x,y}").matches("https://ex.net/m;x=1;y=2"));
        assert!(t("https://ex.net/q?a=1{&b}").matches("https://ex.net/q?a=1&b=2"));
        assert!(t("https://ex.net/{x,y}").matches("https://ex.net/1,2"));
        assert!(t("https://ex.net/{x:3}").matches("https://ex.net/abc"));
    }

    #[test]
    fn template_errors() {
        for bad in [
            "https://ex.net/{",
            "https://ex.net/{a}}",
            "https://ex.net/{}",
            "x/{a b}",
            "x/{=a}",
            "x/{a:xx}",
        ] {
            assert!(TopicSelector::uri_template(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn string_without_braces_is_exact() {
        assert_eq!(
            t("urn:example:1"),
            TopicSelector::Exact("urn:example:1".into())
        );
    }

    #[test]
    fn url_pattern_matching() {
        let s = TopicSelector::url_pattern("https://ex.net/books/:id", None).unwrap();
        assert!(s.matches("https://ex.net/books/1"));
        assert!(!s.matches("https://ex.net/books/1/reviews"));
        assert!(!s.matches("not a url"));
        assert!(!s.matches("http://[::1"));
        let s = TopicSelector::url_pattern("https://ex.net/books/*", None).unwrap();
        assert!(s.matches("https://ex.net/books/1/reviews"));
        let s = TopicSelector::url_pattern("https://*.ex.net/x", None).unwrap();
        assert!(s.matches("https://a.ex.net/x"));
        assert!(!s.matches("https://ex.org/x"));
    }

    #[test]
    fn url_pattern_relative_resolves_against_hub() {
        let s = TopicSelector::url_pattern("/books/:id", None).unwrap();
        assert!(s.matches("/books/7"));
        assert!(!s.matches("/books/7/x"));
        let s = TopicSelector::url_pattern("/.well-known/mercure/subscriptions/*", None).unwrap();
        assert!(s.matches("/.well-known/mercure/subscriptions/exact/a/b"));
        let base = url::Url::parse("https://hub.ex.net/").unwrap();
        let s = TopicSelector::url_pattern("/books/:id", Some(&base)).unwrap();
        assert!(s.matches("https://hub.ex.net/books/7"));
        assert!(TopicSelector::url_pattern("https://ex.net/(unclosed", None).is_err());
    }

    #[test]
    fn any_matches_across_lists() {
        let sels = vec![TopicSelector::exact("a"), t("https://ex.net/{x}")];
        assert!(any_matches(
            &sels,
            &["zzz".into(), "https://ex.net/1".into()]
        ));
        assert!(!any_matches(&sels, &["b".into()]));
        assert!(!any_matches(&[], &["a".into()]));
    }
}
