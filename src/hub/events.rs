//! Subscription events: an update on
//! `/.well-known/mercure/subscriptions/{match_type}/{match}/{subscriber}`
//! each time a subscriber connects or disconnects (`--subscriptions`).
//!
//! They are private updates, delivered live in order with published
//! updates but never stored: anonymous connection churn must not evict
//! real updates from history, nor be replayed. The log carries them (in a
//! cluster, to every node, and into this node's presence for the
//! subscriptions API of the others).

use std::sync::Arc;

use super::Hub;
use crate::subscription::{Subscription, SubscriptionInfo};
use crate::update::Update;

impl Hub {
    /// Subscription events are delivered live, in order with published
    /// updates, but never stored: anonymous connection churn must not
    /// evict real updates from history.
    pub(super) fn publish_subscription_events(&self, sub: &Subscription, active: bool) {
        for selector in &sub.selectors {
            let info = SubscriptionInfo::new(sub, selector, active);
            let update = Update::new(
                Update::generate_id(),
                vec![info.id.clone(), info.legacy_id.clone()],
                true,
                Some("mercure".to_string()),
                None,
                info.to_json_ld(None).to_string(),
            );
            // Through the log: on one node, delivered here in order with
            // published updates; in a cluster, delivered on every node
            // (this one too) and kept in this node's presence.
            self.log.announce(Arc::new(update), info);
        }
    }
}
