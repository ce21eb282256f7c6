//! The hub's own status, for the status page (`/ui/`): a snapshot of its
//! counters, and a live-only event that carries one to whoever watches.
//!
//! Status events go on a reserved topic ([`STATUS_TOPIC`]), which no
//! publisher may use (topics under `/.well-known/mercure` are refused), so
//! only the hub itself speaks there. Like subscription events they are
//! private, delivered in order with published updates by the committer, and
//! never stored in history. Unlike any other update they reach only
//! subscribers that asked for [`STATUS_TOPIC`] exactly (a `*` or pattern
//! subscriber is not sent one a second), and they are not counted as
//! deliveries, so an open status page does not show up in its own charts.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Serialize;

use super::queue::PushError;
use super::{Hub, HubError, Update};
use crate::topic::{any_matches_prepared, PreparedTopic};

/// Where the hub publishes its status.
pub const STATUS_TOPIC: &str = "/.well-known/mercure/status";

/// The SSE event type of a status event.
pub const STATUS_EVENT_TYPE: &str = "status";

/// What the hub knows about itself at one instant.
#[derive(Debug, Clone, Serialize)]
pub struct HubStatus {
    /// Connected subscribers (every stream, status pages included).
    pub subscribers: usize,
    /// Of them, those watching the status topic.
    pub status_watchers: usize,
    /// Distinct topics subscribed to by exact selector.
    pub topics: usize,
    /// Distinct pattern selectors (URI templates, URL Patterns) subscribed.
    pub pattern_selectors: usize,
    /// Subscribers with a `*` selector.
    pub wildcard_subscribers: usize,
    pub published_total: u64,
    /// Events queued to subscribers (status events excluded).
    pub delivered_total: u64,
    /// Subscribers cut off for falling behind.
    pub slow_cut_offs_total: u64,
    pub history: HistoryStatus,
    pub ready: bool,
    /// Why the hub cannot take publishes, when it cannot.
    pub not_ready: Option<String>,
}

/// What history holds.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryStatus {
    /// Updates held.
    pub len: usize,
    /// Sequence number of the oldest held (`head_seq + 1` when empty).
    pub first_seq: u64,
    /// Sequence number of the newest.
    pub head_seq: u64,
    pub oldest_id: Option<String>,
    pub newest_id: Option<String>,
}

impl Hub {
    /// Subscribers that would receive a status event now: they asked for
    /// [`STATUS_TOPIC`] exactly and may read its (private) events. One
    /// hash lookup: cheap enough to ask once a second when nobody watches.
    pub fn status_watchers(&self) -> usize {
        let topic = [PreparedTopic::new(STATUS_TOPIC)];
        self.registry
            .read()
            .exact_subscribers(STATUS_TOPIC)
            .filter(|(_, e)| any_matches_prepared(&e.subscription.private_access, &topic))
            .count()
    }

    /// Hand a status event (JSON `data`) to the committer, which delivers it
    /// live to the status watchers, in order with published updates; it is
    /// never stored.
    pub fn publish_status(&self, data: String) -> Result<(), HubError> {
        if self.is_closed() {
            return Err(HubError::ShuttingDown);
        }
        let update = Update::new(
            Update::generate_id(),
            vec![STATUS_TOPIC.to_string()],
            true,
            Some(STATUS_EVENT_TYPE.to_string()),
            None,
            data,
        );
        self.applier.deliver_live(Arc::new(update))
    }

    /// Is this (live-only) update a status event?
    pub(super) fn is_status_event(update: &Update) -> bool {
        update.topics.len() == 1 && update.topics[0] == STATUS_TOPIC
    }

    /// The committer's half of [`Hub::publish_status`]: offer the event to
    /// the exact subscribers of the status topic that may read it. A full
    /// queue cuts its subscriber off, as for any update; a success is not
    /// counted as a delivery.
    pub(super) fn deliver_status(&self, update: &Update, cut_off: &mut Vec<u64>) {
        let topics = crate::topic::prepare(&update.topics);
        let registry = self.registry.read();
        for (key, entry) in registry.exact_subscribers(STATUS_TOPIC) {
            if !entry.subscription.may_read(update, &topics) {
                continue;
            }
            match entry.tx.offer(update.frame.clone()) {
                Ok(()) => {}
                Err(PushError::Full) => {
                    self.stats.cut_off_slow.fetch_add(1, Ordering::Relaxed);
                    cut_off.push(key);
                }
                Err(PushError::Closed) => cut_off.push(key),
            }
        }
    }

    /// A snapshot of the hub's counters, subscriptions and history. Reads
    /// the oldest update of history (one record): call it off the async
    /// workers when history is on disk.
    pub fn status(&self) -> HubStatus {
        let (subscribers, (topics, pattern_selectors, wildcard_subscribers)) = {
            let registry = self.registry.read();
            (registry.len(), registry.topic_counts())
        };
        let history = &self.history;
        let (head_seq, newest_id) = history.head();
        let first_seq = history.first_seq();
        let len = history.len();
        let oldest_id = if len == 0 {
            None
        } else {
            match history.read_range(first_seq, first_seq, 1) {
                Ok(page) => page.first().map(|(_, u)| u.id.clone()),
                Err(e) => {
                    tracing::warn!(error = %e, "status: could not read the oldest update");
                    None
                }
            }
        };
        let readiness = self.readiness();
        HubStatus {
            subscribers,
            status_watchers: self.status_watchers(),
            topics,
            pattern_selectors,
            wildcard_subscribers,
            published_total: self.stats.published.load(Ordering::Relaxed),
            delivered_total: self.stats.delivered.load(Ordering::Relaxed),
            slow_cut_offs_total: self.stats.cut_off_slow.load(Ordering::Relaxed),
            history: HistoryStatus {
                len,
                first_seq,
                head_seq,
                oldest_id,
                newest_id: newest_id.filter(|_| len > 0),
            },
            ready: readiness.is_ok(),
            not_ready: readiness.err(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::MemoryHistory;
    use crate::hub::{HubConfig, Subscription};
    use crate::topic::TopicSelector;
    use futures_util::StreamExt;

    fn hub() -> Arc<Hub> {
        Hub::new(HubConfig::default(), Arc::new(MemoryHistory::new(3)))
    }

    fn sub(selectors: Vec<TopicSelector>, private: Vec<TopicSelector>) -> Subscription {
        Subscription {
            subscriber_id: Update::generate_id(),
            selectors,
            private_access: private,
            payload: None,
        }
    }

    fn update(id: &str) -> Update {
        Update::new(
            id.into(),
            vec!["https://ex.net/t".into()],
            false,
            None,
            None,
            id.into(),
        )
    }

    #[tokio::test]
    async fn status_events_reach_exact_watchers_only_and_are_not_stored() {
        let hub = hub();
        let status = TopicSelector::exact(STATUS_TOPIC);
        let any = TopicSelector::uri_template("*").unwrap();
        assert_eq!(hub.status_watchers(), 0);
        // Anonymous: asked for the topic, may not read it.
        let _anon = hub.subscribe(sub(vec![status.clone()], vec![]), None).await;
        // Everything, and may read everything: not a status watcher.
        let mut wildcard = hub
            .subscribe(sub(vec![any.clone()], vec![any.clone()]), None)
            .await
            .unwrap()
            .stream;
        assert_eq!(hub.status_watchers(), 0);
        let mut watcher = hub
            .subscribe(sub(vec![status.clone()], vec![status.clone()]), None)
            .await
            .unwrap()
            .stream;
        assert_eq!(hub.status_watchers(), 1);

        hub.publish_status("{\"n\":1}".into()).unwrap();
        hub.publish(update("a")).await.unwrap();
        let chunk = watcher.next().await.unwrap().unwrap();
        let text = String::from_utf8(chunk.to_vec()).unwrap();
        assert!(text.contains("event: status\n"), "{text}");
        assert!(text.contains("data: {\"n\":1}\n"), "{text}");
        // The wildcard subscriber got the update, not the status event.
        let chunk = wildcard.next().await.unwrap().unwrap();
        assert_eq!(&chunk[..], b"id: a\ndata: a\n\n");
        // Not a delivery, not in history.
        assert_eq!(hub.stats.delivered.load(Ordering::Relaxed), 1);
        let s = hub.status();
        assert_eq!(s.history.len, 1);
        assert_eq!(s.history.oldest_id.as_deref(), Some("a"));
        assert_eq!(s.subscribers, 3);
        assert_eq!(s.status_watchers, 1);
        assert_eq!(s.wildcard_subscribers, 1);
        assert_eq!(s.topics, 1, "the status topic, subscribed exactly");
    }

    #[tokio::test]
    async fn status_reports_history_bounds() {
        let hub = hub();
        let empty = hub.status();
        assert_eq!(empty.history.len, 0);
        assert_eq!(empty.history.oldest_id, None);
        assert_eq!(empty.history.newest_id, None);
        for id in ["a", "b", "c", "d", "e"] {
            hub.publish(update(id)).await.unwrap();
        }
        let s = hub.status();
        // MemoryHistory(3) keeps the newest three.
        assert_eq!(s.history.len, 3);
        assert_eq!(s.history.first_seq, 3);
        assert_eq!(s.history.head_seq, 5);
        assert_eq!(s.history.oldest_id.as_deref(), Some("c"));
        assert_eq!(s.history.newest_id.as_deref(), Some("e"));
        assert_eq!(s.published_total, 5);
        assert!(s.ready);
    }
}
