//! Who a subscriber is, as every layer sees it: what it asked for, what
//! its token lets it read, and how the subscriptions API and subscription
//! events describe it.
//!
//! A pure core (no I/O, no locks): the hub registers [`Subscription`]s,
//! the HTTP edge builds them from a request and a token, and the cluster
//! engine keeps [`SubscriptionInfo`]s in Redis for the other nodes. It sits
//! below all three so none of them needs another to name a subscriber.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};

use crate::topic::{PreparedTopic, TopicSelector};
use crate::update::Update;

/// The prefix of the reserved topic namespace.
pub const RESERVED_PREFIX: &str = "/.well-known/mercure";

/// What a subscriber asked for and what it may see.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The subscriber's IRI, `urn:uuid:…`, used by the subscriptions API.
    pub subscriber_id: String,
    /// Topics it wants.
    pub selectors: Vec<TopicSelector>,
    /// Topics whose private updates its token lets it read.
    pub private_access: Vec<TopicSelector>,
    /// `mercure.payload` from its token, exposed by the subscriptions API.
    pub payload: Option<serde_json::Value>,
}

impl Subscription {
    /// Should this update reach this subscriber? It must have asked for one
    /// of the update's topics and, if the update is private, be allowed to
    /// read one of them.
    pub fn wants(&self, update: &Update) -> bool {
        let topics = crate::topic::prepare(&update.topics);
        crate::topic::any_matches_prepared(&self.selectors, &topics)
            && self.may_read(update, &topics)
    }

    /// The second half of [`Subscription::wants`], for a subscriber whose
    /// selectors are already known to match (topics prepared once).
    pub fn may_read(&self, update: &Update, topics: &[PreparedTopic<'_>]) -> bool {
        may_see(&self.private_access, update, topics)
    }

    /// May this subscriber know of this update at all, whatever it asked
    /// for? An update it may not see behaves, in every answer, like one that
    /// does not exist.
    pub fn may_see(&self, update: &Update) -> bool {
        may_see(
            &self.private_access,
            update,
            &crate::topic::prepare(&update.topics),
        )
    }
}

/// The one rule of who may know of an update: it is public, or a grant of
/// these private-access selectors matches one of its topics.
pub fn may_see(
    private_access: &[TopicSelector],
    update: &Update,
    topics: &[PreparedTopic<'_>],
) -> bool {
    !update.private || crate::topic::any_matches_prepared(private_access, topics)
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

    fn sub(id: &str) -> Subscription {
        Subscription {
            subscriber_id: id.into(),
            selectors: vec![],
            private_access: vec![],
            payload: None,
        }
    }

    #[test]
    fn subscription_ids_are_encoded_once() {
        let s = sub("urn:uuid:1");
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
