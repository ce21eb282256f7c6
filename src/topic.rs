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
//! Templates and URL Patterns compile to anchored regexes once, when the
//! subscription is made, because they are evaluated for every published
//! update. Clients choose these regexes, so compilation is bounded
//! ([`REGEX_SIZE_LIMIT`], [`REGEX_DFA_SIZE_LIMIT`], [`REGEX_NEST_LIMIT`])
//! and compiled matchers are shared between selectors with the same source.

use parking_lot::Mutex;
use regex::bytes::{Regex, RegexBuilder};
use std::cell::OnceCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use urlpattern::quirks::{self, MatchInput};
use urlpattern::{UrlPatternInit, UrlPatternMatchInput, UrlPatternOptions};

/// The base URL relative URL patterns and relative topics (such as the
/// hub's own `/.well-known/mercure/subscriptions/...` topics) are resolved
/// against. Both sides use the same base, so `/books/:id` matches the topic
/// `/books/1`.
pub const HUB_BASE: &str = "https://herald.invalid/.well-known/mercure";

/// Largest compiled program (NFA) of one selector regex, in bytes. A client
/// chooses the regex (`match_urlpattern=https://x/:a(\p{L}{200})` compiles to
/// tens of megabytes with the regex crate's 10 MiB-per-program default, and
/// URL Patterns compile several programs), so the bound is ours, not the
/// crate's. Legitimate patterns are a few kilobytes.
pub const REGEX_SIZE_LIMIT: usize = 256 * 1024;
/// Largest lazy-DFA cache of one selector regex, in bytes: the memory the
/// regex grows while it is matched, which is otherwise 2 MiB per regex.
pub const REGEX_DFA_SIZE_LIMIT: usize = 1024 * 1024;
/// Deepest nesting of groups/repetitions in one selector regex: deep
/// nesting costs parser stack and compile time out of proportion to length.
pub const REGEX_NEST_LIMIT: u32 = 64;
/// Most distinct compiled patterns remembered for sharing. Beyond it new
/// patterns still work, each compiled for its own subscriber.
const CACHE_CAPACITY: usize = 10_000;

fn hub_base() -> &'static url::Url {
    static BASE: OnceLock<url::Url> = OnceLock::new();
    BASE.get_or_init(|| url::Url::parse(HUB_BASE).expect("HUB_BASE is a valid URL"))
}

/// Compile a regex within the limits above. Every regex built from client
/// input goes through here.
///
/// Byte-oriented and without Unicode classes: what is matched is a URL's
/// component (ASCII once parsed: non-ASCII characters are percent-encoded,
/// hosts are punycode) or a topic string whose literal parts are matched
/// byte for byte. Unicode classes would add nothing there, and they are
/// what makes a compiled regex big: `[^/]` alone costs kilobytes as a
/// Unicode class and a few bytes as a byte class, and `\p{L}` cannot be
/// asked for at all. Measured: ~60 KB of memory per plain URL pattern
/// (`https://ex.net/c/:id`) with Unicode classes.
fn bounded_regex(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .unicode(false)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_SIZE_LIMIT)
        .nest_limit(REGEX_NEST_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(limit) => format!(
                "it compiles to a regular expression larger than the {limit}-byte limit; use fewer or smaller repetitions and character classes"
            ),
            regex::Error::Syntax(msg) if msg.contains("Unicode") => format!(
                "Unicode classes (\\p{{..}}, Unicode \\w, \\d, \\s) are not supported in topic patterns: topics are matched as URLs, whose non-ASCII characters are percent-encoded; use ASCII classes such as [A-Za-z0-9_] ({})",
                msg.lines().last().unwrap_or("").trim()
            ),
            other => other.to_string(),
        })
}

/// A compiled URL Pattern: one anchored regex per URL component, `None` for
/// a component that accepts anything. Components are kept (and tested) in
/// the order pathname, hostname, search, hash, port, protocol, username,
/// password: patterns on one hub mostly differ by path, so a miss is
/// usually decided by the first regex.
///
/// The `urlpattern` crate parses the pattern (its `quirks` API gives each
/// component's regex source without compiling it); the regexes are
/// compiled here, bounded. The crate's own `UrlPattern<regex::Regex>`
/// compiles with the regex crate's defaults and its `RegExp` trait cannot
/// be implemented outside it (it sits in a private module), so its
/// compilation cannot be bounded.
pub struct UrlPatternMatcher {
    components: [Component; 8],
}

/// How one URL component is tested. Most components of real patterns are
/// literal (`https`, `ex.net`, an empty port) and are compared as strings:
/// only what really needs a regex pays for one (each compiled regex costs
/// kilobytes, and a hub may hold thousands of distinct patterns).
enum Component {
    Any,
    Literal(String),
    Regex(Regex),
}

impl Component {
    fn new(regexp: &str) -> Result<Component, String> {
        if regexp == "^(.*)$" {
            return Ok(Component::Any);
        }
        Ok(match literal_regex(regexp) {
            Some(text) => Component::Literal(text),
            None => Component::Regex(bounded_regex(regexp)?),
        })
    }

    fn test(&self, part: &str) -> bool {
        match self {
            Component::Any => true,
            Component::Literal(text) => text == part,
            Component::Regex(re) => re.is_match(part.as_bytes()),
        }
    }
}

/// The text an anchored regex `^…$` matches, if it matches exactly one
/// string (no metacharacter other than escapes of literal characters).
fn literal_regex(regexp: &str) -> Option<String> {
    let body = regexp.strip_prefix('^')?.strip_suffix('$')?;
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let escaped = chars.next()?;
                if escaped.is_ascii_alphanumeric() {
                    return None; // \d, \w, \b...: a class or an assertion.
                }
                out.push(escaped);
            }
            '.' | '^' | '$' | '|' | '?' | '*' | '+' | '(' | ')' | '[' | ']' | '{' | '}' => {
                return None
            }
            c => out.push(c),
        }
    }
    Some(out)
}

impl UrlPatternMatcher {
    fn compile(source: &str, base: &url::Url) -> Result<UrlPatternMatcher, String> {
        // The constructor-string parser compiles the protocol part with the
        // regex crate's defaults; refuse oversized groups before it runs.
        check_regex_groups(source)?;
        // The urlpattern crate (0.3) panics on some inputs instead of
        // returning an error, e.g. `*\n*` (an `unwrap` on an empty fixed-text
        // part in its pattern-string generation; found by fuzz/topic_match).
        // Patterns come from clients and tokens, so such a panic is turned
        // into a refusal here rather than unwinding through a request.
        let parsed = std::panic::catch_unwind(|| {
            let init = UrlPatternInit::parse_constructor_string::<regex::Regex>(
                source,
                Some(base.clone()),
            )
            .map_err(|e| e.to_string())?;
            quirks::parse_pattern(init, UrlPatternOptions::default()).map_err(|e| e.to_string())
        });
        let p = parsed.map_err(|_| "the URL pattern parser failed on it".to_string())??;
        let mut components: [Component; 8] = std::array::from_fn(|_| Component::Any);
        let sources = [
            &p.pathname,
            &p.hostname,
            &p.search,
            &p.hash,
            &p.port,
            &p.protocol,
            &p.username,
            &p.password,
        ];
        for (slot, c) in components.iter_mut().zip(sources) {
            *slot = Component::new(&c.regexp_string)?;
        }
        Ok(UrlPatternMatcher { components })
    }

    fn test(&self, input: &MatchInput) -> bool {
        let parts = [
            &input.pathname,
            &input.hostname,
            &input.search,
            &input.hash,
            &input.port,
            &input.protocol,
            &input.username,
            &input.password,
        ];
        self.components
            .iter()
            .zip(parts)
            .all(|(component, part)| component.test(part))
    }
}

/// Compile every parenthesised regex group of a URL Pattern on its own,
/// bounded, so an oversized one is refused before anything compiles it
/// unbounded. The scan follows the pattern tokenizer's rules (a backslash
/// escapes the next character; groups nest); whatever it misreads, the
/// real parser refuses later.
fn check_regex_groups(source: &str) -> Result<(), String> {
    let mut depth = 0usize;
    let mut start = 0;
    let mut chars = source.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '(' => {
                if depth == 0 {
                    start = i + 1;
                }
                depth += 1;
            }
            ')' if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    let body = &source[start..i];
                    bounded_regex(body).map_err(|e| format!("regexp group ({body}): {e}"))?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Distinct compiled patterns alive in this process, and how many may be.
/// Each costs memory (~20-30 KB measured for a URL Pattern) and is
/// evaluated on every publish, and distinct patterns cannot be shared, so
/// anonymous clients with many distinct patterns would otherwise grow the
/// hub without bound (15,000 connections x 20 patterns). Set once at
/// startup from `--max-distinct-patterns`.
static LIVE_PATTERNS: AtomicUsize = AtomicUsize::new(0);
static PATTERN_BUDGET: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_DISTINCT_PATTERNS);

/// Default of `--max-distinct-patterns`.
pub const DEFAULT_MAX_DISTINCT_PATTERNS: usize = 20_000;

/// Set the hub-wide budget of distinct compiled patterns (0: no limit).
pub fn set_pattern_budget(max: usize) {
    PATTERN_BUDGET.store(if max == 0 { usize::MAX } else { max }, Ordering::Relaxed);
}

/// Distinct compiled patterns alive now (for `/metrics`).
pub fn live_patterns() -> usize {
    LIVE_PATTERNS.load(Ordering::Relaxed)
}

/// A compiled matcher counted against the budget while it lives.
pub struct Compiled<T>(T);

impl<T> Compiled<T> {
    fn new(inner: T) -> Compiled<T> {
        LIVE_PATTERNS.fetch_add(1, Ordering::Relaxed);
        Compiled(inner)
    }
}

impl<T> std::ops::Deref for Compiled<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> Drop for Compiled<T> {
    fn drop(&mut self) {
        LIVE_PATTERNS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a pattern was not compiled.
enum CompileError {
    Invalid(String),
    /// The hub-wide budget of distinct patterns is spent.
    Budget(usize),
}

/// Compiled matchers shared by every selector with the same source: 10,000
/// subscribers to one pattern cost one compilation and one copy in memory.
/// Entries are weak, so a pattern nobody uses any more is freed; dead
/// entries are swept when the map is full.
struct SharedCache<T> {
    map: Mutex<HashMap<String, Weak<Compiled<T>>>>,
}

impl<T> SharedCache<T> {
    fn new() -> Self {
        SharedCache {
            map: Mutex::new(HashMap::new()),
        }
    }

    fn get_or_compile(
        &self,
        key: String,
        compile: impl FnOnce() -> Result<T, String>,
    ) -> Result<Arc<Compiled<T>>, CompileError> {
        if let Some(hit) = self.map.lock().get(&key).and_then(Weak::upgrade) {
            return Ok(hit);
        }
        let budget = PATTERN_BUDGET.load(Ordering::Relaxed);
        if LIVE_PATTERNS.load(Ordering::Relaxed) >= budget {
            return Err(CompileError::Budget(budget));
        }
        // Compile outside the lock: one slow compilation must not hold up
        // every other subscribe. Two racing compilations of the same source
        // are resolved below: the second one adopts the first's.
        let fresh = Arc::new(Compiled::new(compile().map_err(CompileError::Invalid)?));
        let mut map = self.map.lock();
        if let Some(hit) = map.get(&key).and_then(Weak::upgrade) {
            return Ok(hit);
        }
        if map.len() >= CACHE_CAPACITY {
            map.retain(|_, w| w.strong_count() > 0);
        }
        if map.len() < CACHE_CAPACITY {
            map.insert(key, Arc::downgrade(&fresh));
        }
        Ok(fresh)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().len()
    }
}

fn template_cache() -> &'static SharedCache<Regex> {
    static CACHE: OnceLock<SharedCache<Regex>> = OnceLock::new();
    CACHE.get_or_init(SharedCache::new)
}

fn url_pattern_cache() -> &'static SharedCache<UrlPatternMatcher> {
    static CACHE: OnceLock<SharedCache<UrlPatternMatcher>> = OnceLock::new();
    CACHE.get_or_init(SharedCache::new)
}

/// A published topic, prepared once for matching against many selectors:
/// its URL form (for URL Patterns) is parsed at most once, on first need,
/// instead of once per pattern and subscriber.
pub struct PreparedTopic<'a> {
    raw: &'a str,
    url: OnceCell<Option<MatchInput>>,
}

impl<'a> PreparedTopic<'a> {
    pub fn new(raw: &'a str) -> PreparedTopic<'a> {
        PreparedTopic {
            raw,
            url: OnceCell::new(),
        }
    }

    pub fn as_str(&self) -> &'a str {
        self.raw
    }

    fn url_input(&self) -> Option<&MatchInput> {
        self.url
            .get_or_init(|| {
                let url = hub_base().join(self.raw).ok()?;
                quirks::parse_match_input(UrlPatternMatchInput::Url(url))
            })
            .as_ref()
    }
}

/// Prepare every topic of an update.
pub fn prepare(topics: &[String]) -> Vec<PreparedTopic<'_>> {
    topics.iter().map(|t| PreparedTopic::new(t)).collect()
}

/// A compiled topic selector.
#[derive(Clone)]
pub enum TopicSelector {
    Any,
    Exact(String),
    UriTemplate {
        source: String,
        regex: Arc<Compiled<Regex>>,
    },
    UrlPattern {
        source: String,
        pattern: Arc<Compiled<UrlPatternMatcher>>,
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
    #[error("invalid URI template '{0}': {1}")]
    Template(String, String),
    #[error("invalid URL pattern '{0}': {1}")]
    UrlPattern(String, String),
    #[error("this hub already holds {0} distinct topic patterns (--max-distinct-patterns); subscribe with exact topics (match=), reuse a pattern others use, or retry later")]
    TooManyPatterns(usize),
}

impl SelectorError {
    fn from_compile(e: CompileError, invalid: impl FnOnce(String) -> SelectorError) -> Self {
        match e {
            CompileError::Invalid(reason) => invalid(reason),
            CompileError::Budget(n) => SelectorError::TooManyPatterns(n),
        }
    }
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
        let regex = template_cache()
            .get_or_compile(s.to_string(), || bounded_regex(&template_to_regex(s)?))
            .map_err(|e| {
                SelectorError::from_compile(e, |r| SelectorError::Template(s.into(), r))
            })?;
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
        let base = base.unwrap_or(hub_base());
        // The base is part of the key: the same relative pattern means
        // different things against different bases.
        let key = format!("{base} {s}");
        let pattern = url_pattern_cache()
            .get_or_compile(key, || UrlPatternMatcher::compile(s, base))
            .map_err(|e| {
                SelectorError::from_compile(e, |r| SelectorError::UrlPattern(s.into(), r))
            })?;
        Ok(TopicSelector::UrlPattern {
            source: s.to_string(),
            pattern,
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

    /// Is this a selector evaluated by a regex (URI template, URL Pattern),
    /// as opposed to an exact topic or `*`?
    pub fn is_pattern(&self) -> bool {
        matches!(
            self,
            TopicSelector::UriTemplate { .. } | TopicSelector::UrlPattern { .. }
        )
    }

    /// For a pattern, the identity of its compiled matcher: selectors that
    /// share one (same source, through the cache) give the same value, so
    /// the registry evaluates it once for all of them. The value stays
    /// unique while this selector (and so its `Arc`) is alive.
    pub fn matcher_id(&self) -> Option<usize> {
        match self {
            TopicSelector::UriTemplate { regex, .. } => Some(Arc::as_ptr(regex) as usize),
            TopicSelector::UrlPattern { pattern, .. } => Some(Arc::as_ptr(pattern) as usize),
            _ => None,
        }
    }

    pub fn matches(&self, topic: &str) -> bool {
        self.matches_prepared(&PreparedTopic::new(topic))
    }

    pub fn matches_prepared(&self, topic: &PreparedTopic<'_>) -> bool {
        let raw = topic.as_str();
        match self {
            TopicSelector::Any => true,
            TopicSelector::Exact(s) => s == raw,
            TopicSelector::UriTemplate { regex, source } => {
                source == raw || regex.is_match(raw.as_bytes())
            }
            TopicSelector::UrlPattern { pattern, source } => {
                source == raw || topic.url_input().is_some_and(|input| pattern.test(input))
            }
        }
    }
}

/// Does any selector in the list match any of the topics?
pub fn any_matches(selectors: &[TopicSelector], topics: &[String]) -> bool {
    any_matches_prepared(selectors, &prepare(topics))
}

/// [`any_matches`] on topics prepared once.
pub fn any_matches_prepared(selectors: &[TopicSelector], topics: &[PreparedTopic<'_>]) -> bool {
    topics
        .iter()
        .any(|t| selectors.iter().any(|s| s.matches_prepared(t)))
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

    #[test]
    fn equal_sources_share_one_compiled_matcher() {
        let a = TopicSelector::url_pattern("https://cache.test/books/:id", None).unwrap();
        let b = TopicSelector::url_pattern("https://cache.test/books/:id", None).unwrap();
        let (
            TopicSelector::UrlPattern { pattern: pa, .. },
            TopicSelector::UrlPattern { pattern: pb, .. },
        ) = (&a, &b)
        else {
            panic!("url patterns expected");
        };
        assert!(Arc::ptr_eq(pa, pb));
        assert_eq!(a.matcher_id(), b.matcher_id());
        let t1 = t("https://cache.test/{id}");
        let t2 = t("https://cache.test/{id}");
        assert_eq!(t1.matcher_id(), t2.matcher_id());
        assert!(t1.matcher_id().is_some());
        // Another base is another pattern.
        let base = url::Url::parse("https://other.test/").unwrap();
        let c = TopicSelector::url_pattern("/books/:id", Some(&base)).unwrap();
        let d = TopicSelector::url_pattern("/books/:id", None).unwrap();
        assert_ne!(c.matcher_id(), d.matcher_id());
        assert_eq!(TopicSelector::Any.matcher_id(), None);
        assert_eq!(TopicSelector::exact("x").matcher_id(), None);
    }

    #[test]
    fn unused_matchers_are_freed() {
        let s = TopicSelector::url_pattern("https://freed.test/:x", None).unwrap();
        let TopicSelector::UrlPattern { pattern, .. } = &s else {
            panic!("url pattern expected");
        };
        let weak = Arc::downgrade(pattern);
        drop(s);
        assert!(
            weak.upgrade().is_none(),
            "the cache holds no strong reference"
        );
        assert!(url_pattern_cache().len() >= 1);
    }

    #[test]
    fn oversized_regexes_are_refused_with_the_selector_named() {
        for src in [
            r"https://x/:a([a-z]{1000}{1000})",
            r"([a-z]{1000}{1000})://x/y",
            r"https://x/:a(\w{1000}\w{1000}\w{1000})",
        ] {
            let e = TopicSelector::url_pattern(src, None).expect_err(src);
            let msg = e.to_string();
            assert!(msg.contains(src), "{msg}");
            assert!(msg.contains("limit"), "{msg}");
        }
        // Unicode classes, what made the attack's regexes big, are refused
        // with a reason: topics are matched as (ASCII) URLs.
        for src in [r"https://x/:a(\p{L}{200})", r"(\p{L}{200})://x/y"] {
            let e = TopicSelector::url_pattern(src, None).expect_err(src);
            let msg = e.to_string();
            assert!(msg.contains(src) && msg.contains("Unicode"), "{msg}");
        }
        // Non-ASCII literals in templates still match byte for byte.
        assert!(t("urn:é/{id}").matches("urn:é/1"));
        assert!(!t("urn:é/{id}").matches("urn:e/1"));
        let deep = format!("https://x/:a({}a{})", "(?:".repeat(100), ")".repeat(100));
        assert!(TopicSelector::url_pattern(&deep, None).is_err());
        // Templates go through the same bounded builder.
        let huge = format!("https://x/{}", "{a}".repeat(600));
        let e = TopicSelector::uri_template(&huge).expect_err("huge template");
        assert!(e.to_string().contains("limit"), "{e}");
        // Ordinary regex groups still compile.
        let s = TopicSelector::url_pattern(r"https://x/books/:id(\d+)", None).unwrap();
        assert!(s.matches("https://x/books/12"));
        assert!(!s.matches("https://x/books/ab"));
    }

    #[test]
    fn literal_components_need_no_regex() {
        assert_eq!(literal_regex("^https$").as_deref(), Some("https"));
        assert_eq!(literal_regex(r"^ex\.net$").as_deref(), Some("ex.net"));
        assert_eq!(literal_regex("^$").as_deref(), Some(""));
        assert_eq!(literal_regex(r"^/a\/b$").as_deref(), Some("/a/b"));
        for not_literal in [
            r"^/c(?:/([^/]+?))$",
            "^a.b$",
            r"^\d$",
            "^a|b$",
            "https",
            "^(.*)$",
        ] {
            assert_eq!(literal_regex(not_literal), None, "{not_literal}");
        }
        let s = TopicSelector::url_pattern("https://ex.net/fixed/path", None).unwrap();
        assert!(s.matches("https://ex.net/fixed/path"));
        assert!(!s.matches("https://ex.net/fixed/pathX"));
        assert!(!s.matches("https://ex.org/fixed/path"));
        assert!(!s.matches("http://ex.net/fixed/path"));
    }

    #[test]
    fn url_pattern_components_and_prepared_topics() {
        let s = TopicSelector::url_pattern("https://ex.net/search?q=:q", None).unwrap();
        assert!(s.matches("https://ex.net/search?q=cats"));
        assert!(!s.matches("https://ex.net/search?x=cats"));
        let s = TopicSelector::url_pattern("https://ex.net:8443/a", None).unwrap();
        assert!(s.matches("https://ex.net:8443/a"));
        assert!(!s.matches("https://ex.net/a"));
        let s = TopicSelector::url_pattern("https://ex.net/a#:frag", None).unwrap();
        assert!(s.matches("https://ex.net/a#x"));
        // One prepared topic serves many selectors.
        let topic = PreparedTopic::new("https://ex.net/books/3");
        let sels = [
            TopicSelector::url_pattern("https://ex.net/books/:id", None).unwrap(),
            TopicSelector::url_pattern("https://ex.net/authors/:id", None).unwrap(),
            t("https://ex.net/books/{id}"),
        ];
        let hits: Vec<bool> = sels.iter().map(|s| s.matches_prepared(&topic)).collect();
        assert_eq!(hits, [true, false, true]);
        assert!(!sels[0].matches_prepared(&PreparedTopic::new("http://[::1")));
    }
}
