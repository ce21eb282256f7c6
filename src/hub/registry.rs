//! The subscriber registry and its matching index.
//!
//! A publish must touch only subscribers that can match, whatever else is
//! connected:
//! - exact selectors are indexed in a hash map (topic -> subscribers), also
//!   for subscriptions that have patterns too: publishing to one user's
//!   topic costs one lookup, not a scan of every connection;
//! - `*` subscribers are kept in a set and always visited;
//! - pattern selectors (URI templates, URL Patterns) are grouped by their
//!   compiled matcher, which equal selectors share (see
//!   [`TopicSelector::matcher_id`]): each distinct pattern is evaluated once
//!   per published topic, then its subscribers are visited. 10,000
//!   subscribers to one pattern cost one evaluation, not 10,000.
//!
//! A subscriber reachable through several of these (two matching selectors,
//! or an update with several topics) is visited once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::queue::QueueSender;
use crate::subscription::{Subscription, SubscriptionInfo};
use crate::topic::{PreparedTopic, TopicSelector};

pub(super) struct Entry {
    pub subscription: Arc<Subscription>,
    pub tx: QueueSender,
    /// Updates up to this sequence number are not delivered live: the
    /// subscriber resumed after one of them (see `Hub::subscribe`).
    pub live_after: u64,
    /// Indexed in more than one place (several distinct selectors), so a
    /// publish may reach it more than once and must deduplicate.
    multi: bool,
}

/// The subscribers of one compiled pattern.
struct PatternGroup {
    /// One of the (equal) selectors; it also keeps the shared matcher, and
    /// so the group's key, alive.
    selector: TopicSelector,
    members: HashSet<u64>,
}

#[derive(Default)]
pub(super) struct Registry {
    entries: HashMap<u64, Entry>,
    by_topic: HashMap<String, Vec<u64>>,
    any: HashSet<u64>,
    /// Keyed by [`TopicSelector::matcher_id`].
    patterns: HashMap<usize, PatternGroup>,
    /// Selectors of the subscribers, by kind ([`kind`]), for `/metrics`.
    kinds: [usize; KINDS.len()],
}

/// The kinds of selector `/metrics` counts subscriptions by.
pub const KINDS: [&str; 4] = ["exact", "uri_template", "url_pattern", "any"];

fn kind(selector: &TopicSelector) -> usize {
    match selector {
        TopicSelector::Exact(_) => 0,
        TopicSelector::UriTemplate { .. } => 1,
        TopicSelector::UrlPattern { .. } => 2,
        TopicSelector::Any => 3,
    }
}

/// Where one selector of a subscription is indexed.
enum Slot<'a> {
    Topic(&'a str),
    Any,
    Pattern(usize, &'a TopicSelector),
}

fn slots(subscription: &Subscription) -> Vec<Slot<'_>> {
    let mut topics = Vec::new();
    let mut any = false;
    let mut patterns: Vec<(usize, &TopicSelector)> = Vec::new();
    for sel in &subscription.selectors {
        if let Some(t) = sel.as_exact() {
            topics.push(t);
        } else if let Some(id) = sel.matcher_id() {
            patterns.push((id, sel));
        } else {
            any = true;
        }
    }
    topics.sort_unstable();
    topics.dedup();
    patterns.sort_unstable_by_key(|(id, _)| *id);
    patterns.dedup_by_key(|(id, _)| *id);
    let mut out: Vec<Slot<'_>> = topics.into_iter().map(Slot::Topic).collect();
    if any {
        out.push(Slot::Any);
    }
    out.extend(patterns.into_iter().map(|(id, s)| Slot::Pattern(id, s)));
    out
}

impl Registry {
    pub fn insert(
        &mut self,
        key: u64,
        subscription: Arc<Subscription>,
        tx: QueueSender,
        live_after: u64,
    ) {
        for selector in &subscription.selectors {
            self.kinds[kind(selector)] += 1;
        }
        let slots = slots(&subscription);
        let multi = slots.len() > 1;
        for slot in slots {
            match slot {
                Slot::Topic(t) => self.by_topic.entry(t.to_string()).or_default().push(key),
                Slot::Any => {
                    self.any.insert(key);
                }
                Slot::Pattern(id, sel) => {
                    self.patterns
                        .entry(id)
                        .or_insert_with(|| PatternGroup {
                            selector: sel.clone(),
                            members: HashSet::new(),
                        })
                        .members
                        .insert(key);
                }
            }
        }
        self.entries.insert(
            key,
            Entry {
                subscription,
                tx,
                live_after,
                multi,
            },
        );
    }

    pub fn remove(&mut self, key: u64) -> Option<Arc<Subscription>> {
        let entry = self.entries.remove(&key)?;
        for selector in &entry.subscription.selectors {
            self.kinds[kind(selector)] -= 1;
        }
        for slot in slots(&entry.subscription) {
            match slot {
                Slot::Topic(t) => {
                    if let Some(keys) = self.by_topic.get_mut(t) {
                        keys.retain(|k| *k != key);
                        if keys.is_empty() {
                            self.by_topic.remove(t);
                        }
                    }
                }
                Slot::Any => {
                    self.any.remove(&key);
                }
                Slot::Pattern(id, _) => {
                    if let Some(group) = self.patterns.get_mut(&id) {
                        group.members.remove(&key);
                        if group.members.is_empty() {
                            self.patterns.remove(&id);
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
        self.any.clear();
        self.patterns.clear();
        self.kinds = Default::default();
    }

    /// Subscriptions (one per subscriber and selector) by kind, in
    /// [`KINDS`] order.
    pub fn kinds(&self) -> [usize; KINDS.len()] {
        self.kinds
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &Entry)> {
        self.entries.iter().map(|(k, e)| (*k, e))
    }

    /// Call `f` once for every subscriber one of whose selectors matches one
    /// of these topics. Private access is the caller's to check.
    pub fn for_each_matching(&self, topics: &[PreparedTopic<'_>], mut f: impl FnMut(u64, &Entry)) {
        // With one topic, a subscriber indexed in one place is reached at
        // most once: only the others need remembering.
        let dedupe_all = topics.len() > 1;
        let mut seen = HashSet::new();
        let mut visit = |k: u64| {
            if let Some(e) = self.entries.get(&k) {
                if (dedupe_all || e.multi) && !seen.insert(k) {
                    return;
                }
                f(k, e);
            }
        };
        for t in topics {
            for k in self.by_topic.get(t.as_str()).into_iter().flatten() {
                visit(*k);
            }
        }
        for k in &self.any {
            visit(*k);
        }
        for group in self.patterns.values() {
            if topics.iter().any(|t| group.selector.matches_prepared(t)) {
                for k in &group.members {
                    visit(*k);
                }
            }
        }
    }

    /// The subscribers that asked for exactly this topic (an exact
    /// selector), whatever else they asked for: `*` and patterns are not
    /// looked at. One hash lookup.
    pub fn exact_subscribers<'a>(&'a self, topic: &str) -> impl Iterator<Item = (u64, &'a Entry)> {
        self.by_topic
            .get(topic)
            .into_iter()
            .flatten()
            .filter_map(|k| self.entries.get(k).map(|e| (*k, e)))
    }

    /// Distinct exact topics subscribed to, distinct patterns in use, and
    /// subscribers with a `*` selector.
    pub fn topic_counts(&self) -> (usize, usize, usize) {
        (self.by_topic.len(), self.patterns.len(), self.any.len())
    }

    /// Distinct compiled patterns currently evaluated on each publish.
    #[cfg(test)]
    fn pattern_groups(&self) -> usize {
        self.patterns.len()
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
        let topics: Vec<PreparedTopic<'_>> = topics.iter().map(|t| PreparedTopic::new(t)).collect();
        let mut v = Vec::new();
        r.for_each_matching(&topics, |k, _| v.push(k));
        v.sort();
        v
    }

    fn tpl(s: &str) -> TopicSelector {
        TopicSelector::uri_template(s).unwrap()
    }

    fn pat(s: &str) -> TopicSelector {
        TopicSelector::url_pattern(s, None).unwrap()
    }

    #[test]
    fn publish_visits_only_matching_subscribers_once() {
        let mut r = Registry::default();
        let tx = || super::super::queue::queue(1, usize::MAX).0;
        // Exact selectors are indexed even beside a pattern.
        r.insert(
            1,
            sub(
                "a",
                &[TopicSelector::exact("t1"), tpl("https://ex.net/{id}")],
            ),
            tx(),
            0,
        );
        // Two selectors that both match: still one visit.
        r.insert(
            2,
            sub(
                "b",
                &[pat("https://ex.net/:id"), tpl("https://ex.net/{id}")],
            ),
            tx(),
            0,
        );
        r.insert(3, sub("c", &[pat("https://ex.net/books/:id")]), tx(), 0);
        assert_eq!(candidates(&r, &["t1"]), [1]);
        assert_eq!(candidates(&r, &["https://ex.net/1"]), [1, 2]);
        assert_eq!(candidates(&r, &["https://ex.net/books/1"]), [3]);
        assert_eq!(candidates(&r, &["t1", "https://ex.net/2"]), [1, 2]);
        assert_eq!(candidates(&r, &["nothing"]), Vec::<u64>::new());
        r.remove(1);
        assert_eq!(candidates(&r, &["t1"]), Vec::<u64>::new());
        assert_eq!(candidates(&r, &["https://ex.net/1"]), [2]);
        r.remove(2);
        r.remove(3);
        assert_eq!(r.pattern_groups(), 0, "empty groups are dropped");
        assert!(r.by_topic.is_empty() && r.any.is_empty());
    }

    #[test]
    fn subscribers_of_one_pattern_share_one_group() {
        let mut r = Registry::default();
        let tx = || super::super::queue::queue(1, usize::MAX).0;
        for k in 0..1000u64 {
            r.insert(
                k,
                sub(&k.to_string(), &[pat("https://shared.test/users/:id")]),
                tx(),
                0,
            );
        }
        r.insert(
            5000,
            sub("x", &[pat("https://shared.test/other/:id")]),
            tx(),
            0,
        );
        assert_eq!(r.pattern_groups(), 2);
        assert_eq!(candidates(&r, &["https://shared.test/users/7"]).len(), 1000);
        assert_eq!(candidates(&r, &["https://shared.test/other/7"]), [5000]);
        for k in 0..1000u64 {
            r.remove(k);
        }
        assert_eq!(r.pattern_groups(), 1);
    }

    #[test]
    fn index_and_patterns() {
        let mut r = Registry::default();
        let tx = || super::super::queue::queue(1, usize::MAX).0;
        r.insert(
            1,
            sub(
                "a",
                &[TopicSelector::exact("t1"), TopicSelector::exact("t1")],
            ),
            tx(),
            0,
        );
        r.insert(2, sub("b", &[TopicSelector::exact("t2")]), tx(), 0);
        r.insert(
            3,
            sub("c", &[TopicSelector::exact("t1"), TopicSelector::Any]),
            tx(),
            0,
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
}
