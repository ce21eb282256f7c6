//! Subscribing: registering a subscriber, and handing it from replay to
//! live delivery with no gap and no repeat.
//!
//! Where a resume starts is looked up in history first (an unknown,
//! discarded or invisible id resumes nothing and says `earliest`). Then,
//! under the order lock, the subscriber is registered and the head's
//! sequence number taken: what the stream replays ends there, and what the
//! committer delivers live starts after it. The stream reads its replay
//! page by page as it drains (`stream`), on the blocking pool.

use std::sync::Arc;

use super::stream::ReplayCursor;
use super::{queue, status, Hub, HubError, SubscriberStream};
use crate::history::ResumeFrom;
use crate::subscription::{Subscription, SubscriptionInfo};
use crate::topic::TopicSelector;

/// A registered subscriber, as [`Hub::subscribe`] hands it back.
pub struct Subscribed {
    /// Replay (if resuming), then live updates.
    pub stream: SubscriberStream,
    /// The newest update in history that this subscriber may see, at the
    /// moment it was registered (the deployed dialect's `Last-Event-ID`
    /// response header); `None` when there is none.
    pub head_id: Option<String>,
    /// Whether the requested resume point was found among the updates
    /// this subscriber may see (an unknown, discarded or invisible id is
    /// not: nothing is replayed, and the answer says `earliest`).
    pub resumed: bool,
}

impl Hub {
    /// Active subscriptions across the cluster (this node's alone on a
    /// single node). `Err` when other nodes' cannot be read (Redis down).
    pub async fn subscriptions_everywhere(&self) -> Result<Vec<SubscriptionInfo>, HubError> {
        let mut all = self.subscriptions();
        let others = self.log.subscriptions_elsewhere().await.map_err(|e| {
            HubError::Unavailable(format!("cannot list the other nodes' subscriptions: {e}"))
        })?;
        if !others.is_empty() {
            all.extend(others);
            all.sort_by(|a, b| a.id.cmp(&b.id));
        }
        Ok(all)
    }

    /// Register a subscriber. With `resume`, its stream first replays what
    /// it missed (read page by page as it drains), then continues live;
    /// both halves are split at one sequence number taken under the order
    /// lock, so nothing is missed or repeated. History is read on the
    /// blocking pool, never on an async worker.
    pub async fn subscribe(
        self: &Arc<Self>,
        subscription: Subscription,
        resume: Option<ResumeFrom>,
    ) -> Result<Subscribed, HubError> {
        // The status page watches the node whatever its state.
        let status_only = subscription
            .selectors
            .iter()
            .all(|s| matches!(s, TopicSelector::Exact(t) if t == status::STATUS_TOPIC));
        if !status_only {
            // A node still reading the log it joined refuses (503).
            self.log.ready_to_subscribe()?;
            let max = self.config.max_subscribers;
            if max != 0 && self.subscriber_count() >= max {
                return Err(HubError::Unavailable(format!(
                    "the hub holds as many subscribers as it takes (--max-subscribers {max}); \
                     retry later"
                )));
            }
        }
        if resume.is_none() {
            // Nothing to read from history: registering takes two short
            // locks, cheaper than a hop to the blocking pool (which halved
            // connects per second under churn).
            return self.subscribe_blocking(subscription, None);
        }
        if let Some(ResumeFrom::After(id)) = &resume {
            // An id published through a faster node: wait (bounded) until
            // this node has applied it, then resume as usual. A node that
            // cannot tell, or is still behind after the wait, says so (503)
            // rather than resume from the wrong place.
            self.log.wait_until_applied(id).await?;
        }
        let hub = self.clone();
        tokio::task::spawn_blocking(move || hub.subscribe_blocking(subscription, resume))
            .await
            .map_err(|e| HubError::Unavailable(format!("subscribing failed: {e}")))?
    }

    fn subscribe_blocking(
        self: &Arc<Self>,
        subscription: Subscription,
        resume: Option<ResumeFrom>,
    ) -> Result<Subscribed, HubError> {
        if self.is_closed() {
            return Err(HubError::ShuttingDown);
        }
        let subscription = Arc::new(subscription);
        // Where the replay starts. Looked up before registering: if
        // retention removes it meanwhile, the stream sees the gap and ends
        // rather than skip anything.
        let (start, resumed) = match &resume {
            None => (None, false),
            Some(ResumeFrom::Earliest) => (Some(self.history.first_seq()), false),
            Some(ResumeFrom::After(id)) => match self.history.lookup(id)? {
                Some(seq) => {
                    let anchor = self.history.read_range(seq, seq, 1)?;
                    match anchor.first() {
                        Some((_, u)) if subscription.may_see(u) => (Some(seq + 1), true),
                        _ => (None, false),
                    }
                }
                None => (None, false),
            },
        };
        let (tx, rx) = queue::queue(self.config.queue_capacity, self.config.queue_bytes);
        let key = self.next_key();
        // A resume from an update stored a moment ago may be registered
        // before the committer has delivered that update (it stores, then
        // delivers under the order lock): live delivery then starts after
        // the resume point, not after the head, so it is not sent again.
        let live_after = match start {
            Some(next) if resumed => next - 1,
            _ => 0,
        };
        let (cursor, head_id) = {
            let head = self.order.lock();
            self.registry
                .write()
                .insert(key, subscription.clone(), tx, live_after);
            (head.seq, head.visible_id(&subscription.private_access))
        };
        let head_id = head_id.filter(|_| !self.history.is_empty());
        let replay = start.filter(|s| *s <= cursor).map(|next| ReplayCursor {
            next,
            upto: cursor,
            strict: resumed,
        });
        if replay.is_some() {
            crate::metrics::METRICS.replays.inc();
        }
        if self.config.subscription_events {
            self.publish_subscription_events(&subscription, true);
        }
        Ok(Subscribed {
            stream: SubscriberStream::new(self.clone(), key, subscription, replay, rx),
            head_id,
            resumed,
        })
    }

    /// Called when a subscriber's stream is dropped (client gone).
    pub(crate) fn unsubscribe(&self, key: u64) {
        self.remove_many(&[key]);
    }

    pub(super) fn remove_many(&self, keys: &[u64]) {
        if keys.is_empty() {
            return;
        }
        let removed: Vec<_> = {
            let mut registry = self.registry.write();
            keys.iter().filter_map(|k| registry.remove(*k)).collect()
        };
        if self.config.subscription_events && !self.is_closed() {
            for sub in removed {
                self.publish_subscription_events(&sub, false);
            }
        }
    }

    /// The id of the newest update in history that a holder of these
    /// private-access grants may see (`None` when there is none): what the
    /// subscriptions API reports as `lastEventID`. The raw newest id may be
    /// a private update's, which must not leak.
    pub fn newest_visible_id(&self, private_access: &[TopicSelector]) -> Option<String> {
        let id = self.order.lock().visible_id(private_access);
        id.filter(|_| !self.history.is_empty())
    }

    /// Active subscriptions, one per (subscriber, selector).
    pub fn subscriptions(&self) -> Vec<SubscriptionInfo> {
        self.registry.read().subscriptions()
    }

    pub fn subscriber_count(&self) -> usize {
        self.registry.read().len()
    }

    /// Subscriptions (one per subscriber and selector) by kind of selector:
    /// `(kind, count)`.
    pub fn subscription_kinds(&self) -> Vec<(&'static str, usize)> {
        let kinds = self.registry.read().kinds();
        super::registry::KINDS.iter().copied().zip(kinds).collect()
    }
}
