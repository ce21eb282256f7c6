//! The subscriber registry and its matching index.
//!
//! Most subscriptions are exact topics ("notify user 42" is one topic per
//! user), so they are indexed in a hash map: publishing to one user's topic
//! costs one lookup, not a scan of every connection. Subscribers with any
//! pattern (`*`, URI template, URL Pattern) sit in a separate set and are
//! tested one by one; that list is the price of patterns, and only those who
//! use them pay it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};

use super::queue::QueueSender;
use super::{Subscription, RESERVED_PREFIX};
use crate::topic::TopicSelector;

pub(super) struct Entry {
    pub subscription: Arc<Subscription>,
    pub tx: QueueSender,
}

#[derive(Default)]
pub(super) struct Registry {
    entries: HashMap<u64, Entry>,
    by_topic: HashMap<String, Vec<u64>>,
    patterns: HashSet<u64>,
}

impl Registry {
    pub fn insert(&mut self, key: u64, subscription: Arc<Subscription>, tx: QueueSender) {
        let exact: Option<Vec<&str>> = subscription
            .selectors
            .iter()
            .map(|s| s.as_exact())
            .collect();
        match exact {
            Some(mut topics) => {
                topics.sort_unstable();
                topics.dedup();
                for t in topics {
                    self.by_topic.entry(t.to_string()).or_default().push(key);
                }
            }
            None => {
                self.patterns.insert(key);
            }
        }
        self.entries.insert(key, Entry { subscription, tx });
    }

    pub fn remove(&mut self, key: u64) -> Option<Arc<Subscription>> {
        let entry = self.entries.remove(&key)?;
        if !self.patterns.remove(&key) {
            for sel in &entry.subscription.selectors {
                if let Some(t) = sel.as_exact() {
                    if let Some(keys) = self.by_topic.get_mut(t) {
                        keys.retain(|k| *k != key);
                        if keys.is_empty() {
                            self.by_topic.remove(t);
                        }
                    }
                }
            }
        }
        Some(entry.subscription)
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.by_topic.clear();
        self.patterns.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &Entry)> {
        self.entries.iter().map(|(k, e)| (*k, e))
    }

    /// Call `f` once for every subscriber that might want an update on these
    /// topics: exact-index hits plus every pattern subscriber. The caller
    /// still checks [`Subscription::wants`] (patterns, private access).
    pub fn for_each_candidate(&self, topics: &[String], mut f: impl FnMut(u64, &Entry)) {
        if topics.len() == 1 {
            if let Some(keys) = self.by_topic.get(&topics[0]) {
                for k in keys {
                    if let Some(e) = self.entries.get(k) {
                        f(*k, e);
                    }
                }
            }
        } else {
            // An update with alternate topics reaches each subscriber once.
            let mut seen = HashSet::new();
            for t in topics {
                for k in self.by_topic.get(t).into_iter().flatten() {
                    if seen.insert(*k) {
                        if let Some(e) = self.entries.get(k) {
                            f(*k, e);
                        }
                    }
                }
            }
        }
        for k in &self.patterns {
            if let Some(e) = self.entries.get(k) {
                f(*k, e);
            }
        }
    }

    pub fn subscriptions(&self) -> Vec<SubscriptionInfo> {
        let mut out: Vec<SubscriptionInfo> = self
            .entries
            .values()
            .flat_map(|e| {
                e.subscription
                    .selectors
                    .iter()
                    .map(|s| SubscriptionInfo::new(&e.subscription, s, true))
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

/// RFC 6570 simple expansion: everything but unreserved characters is
/// percent-encoded, exactly once.
const EXPANSION: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub fn expand_component(s: &str) -> String {
    utf8_percent_encode(s, EXPANSION).to_string()
}

/// One subscription (one subscriber, one selector), as the subscriptions API
/// and subscription events describe it.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionInfo {
    /// `/.well-known/mercure/subscriptions/{match_type}/{match}/{subscriber}`
    pub id: String,
    /// The deployed dialect's topic for the same subscription:
    /// `/.well-known/mercure/subscriptions/{topic}/{subscriber}`.
    pub legacy_id: String,
    pub match_type: &'static str,
    pub selector: String,
    pub subscriber: String,
    pub active: bool,
    pub payload: Option<Value>,
}

impl SubscriptionInfo {
    pub fn new(sub: &Subscription, selector: &TopicSelector, active: bool) -> SubscriptionInfo {
        let match_type = match_type_name(selector);
        let m = expand_component(selector.as_str());
        let s = expand_component(&sub.subscriber_id);
        SubscriptionInfo {
            id: format!("{RESERVED_PREFIX}/subscriptions/{match_type}/{m}/{s}"),
            legacy_id: format!("{RESERVED_PREFIX}/subscriptions/{m}/{s}"),
            match_type,
            selector: selector.as_str().to_string(),
            subscriber: sub.subscriber_id.clone(),
            active,
            payload: sub.payload.clone(),
        }
    }

    /// The JSON document of both dialects: the current draft's fields
    /// (`id`, `type`, `match_type`, `match`, `subscriber`, `active`,
    /// `payload`) plus the deployed dialect's `@context`, `topic` and
    /// `lastEventID`. `last_event_id` is only set by the subscriptions API.
    pub fn to_json_ld(&self, last_event_id: Option<&str>) -> Value {
        let mut v = json!({
            "@context": "https://mercure.rocks/",
            "id": self.id,
            "type": "subscription",
            "match_type": self.match_type,
            "match": self.selector,
            "topic": self.selector,
            "subscriber": self.subscriber,
            "active": self.active,
        });
        if let Some(p) = &self.payload {
            v["payload"] = p.clone();
        }
        if let Some(l) = last_event_id {
            v["lastEventID"] = Value::String(l.to_string());
        }
        v
    }
}

/// The canonical matcher type name used in subscription topics.
pub fn match_type_name(selector: &TopicSelector) -> &'static str {
    match selector {
        TopicSelector::Any | TopicSelector::Exact(_) => "exact",
        TopicSelector::UrlPattern { .. } => "urlpattern",
        TopicSelector::UriTemplate { .. } => "uritemplate",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(id: &str, sels: &[TopicSelector]) -> Arc<Subscription> {
        Arc::new(Subscription {
            subscriber_id: id.into(),
            selectors: sels.to_vec(),
            private_access: vec![],
            payload: None,
        })
    }

    fn candidates(r: &Registry, topics: &[&str]) -> Vec<u64> {
        let topics: Vec<String> = topics.iter().map(|s| s.to_string()).collect();
        let mut v = Vec::new();
        r.for_each_candidate(&topics, |k, _| v.push(k));
        v.sort();
        v
    }

    #[test]
    fn index_and_patterns() {
        let mut r = Registry::default();
        let tx = || super::super::queue::queue(1).0;
        r.insert(
            1,
            sub(
                "a",
                &[TopicSelector::exact("t1"), TopicSelector::exact("t1")],
            ),
            tx(),
        );
        r.insert(2, sub("b", &[TopicSelector::exact("t2")]), tx());
        r.insert(
            3,
            sub("c", &[TopicSelector::exact("t1"), TopicSelector::Any]),
            tx(),
        );
        assert_eq!(candidates(&r, &["t1"]), [1, 3]);
        assert_eq!(candidates(&r, &["t2"]), [2, 3]);
        assert_eq!(candidates(&r, &["t1", "t2"]), [1, 2, 3]);
        assert_eq!(candidates(&r, &["zz"]), [3]);
        r.remove(1);
        r.remove(3);
        assert_eq!(candidates(&r, &["t1"]), Vec::<u64>::new());
        assert!(
            !r.by_topic.contains_key("t1"),
            "empty index entries are dropped"
        );
        assert_eq!(r.len(), 1);
        assert!(r.remove(1).is_none());
    }

    #[test]
    fn subscription_ids_are_encoded_once() {
        let s = sub("urn:uuid:1", &[]);
        let sel = TopicSelector::url_pattern("https://example.com/:selector", None).unwrap();
        let info = SubscriptionInfo::new(&s, &sel, true);
        assert_eq!(
            info.id,
            "/.well-known/mercure/subscriptions/urlpattern/https%3A%2F%2Fexample.com%2F%3Aselector/urn%3Auuid%3A1"
        );
        let info = SubscriptionInfo::new(&s, &TopicSelector::exact("a%20b"), false);
        assert_eq!(
            info.id,
            "/.well-known/mercure/subscriptions/exact/a%2520b/urn%3Auuid%3A1"
        );
        assert_eq!(
            info.legacy_id,
            "/.well-known/mercure/subscriptions/a%2520b/urn%3Auuid%3A1"
        );
        let doc = info.to_json_ld(None);
        assert_eq!(doc["active"], false);
        assert_eq!(doc["match"], "a%20b");
        assert_eq!(doc["type"], "subscription");
    }
}
