//! Fan-out: offering a stored update to every subscriber that asked for
//! it and may see it, and where live delivery stands (the head).
//!
//! Called by the committer with the order lock held, one update at a time,
//! in sequence order. Each update's frame was encoded once when it was
//! made; a subscriber's queue gets a clone of the shared bytes. A queue
//! that refuses (full, or its reader gone) collects the subscriber's key,
//! and the committer removes them all after the batch: a subscriber cut off
//! at its first refusal receives a gap-free prefix and resumes from history.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::queue::PushError;
use super::Hub;
use crate::history::HistoryStore;
use crate::subscription::may_see;
use crate::topic::TopicSelector;
use crate::update::Update;

/// How far back startup looks for the newest public update.
const PUBLIC_HEAD_SCAN: u64 = 1024;

/// Where live delivery stands.
#[derive(Debug, Default)]
pub(super) struct Head {
    /// Sequence number of the newest update delivered live.
    pub seq: u64,
    /// That update.
    newest: Option<Arc<Update>>,
    /// The id of the newest public update, for subscribers that may not
    /// see `newest`.
    newest_public: Option<String>,
}

impl Head {
    /// The newest id a holder of these grants may know of.
    pub fn visible_id(&self, private_access: &[TopicSelector]) -> Option<String> {
        match &self.newest {
            Some(u) if may_see(private_access, u, &crate::topic::prepare(&u.topics)) => {
                Some(u.id.clone())
            }
            _ => self.newest_public.clone(),
        }
    }

    pub fn advance(&mut self, seq: u64, update: &Arc<Update>) {
        self.seq = seq;
        if !update.private {
            self.newest_public = Some(update.id.clone());
        }
        self.newest = Some(update.clone());
    }
}

impl Hub {
    /// Offer the update (stored as `seq`; `None`: a live-only event) to
    /// every matching subscriber; collects the keys of those cut off (queue
    /// full) or gone.
    pub(super) fn fan_out(&self, update: &Update, seq: Option<u64>, cut_off: &mut Vec<u64>) {
        let registry = self.registry.read();
        let mut delivered = 0u64;
        // Each topic is prepared (its URL parsed) once for every pattern.
        let topics = crate::topic::prepare(&update.topics);
        registry.for_each_matching(&topics, |key, entry| {
            if seq.is_some_and(|s| s <= entry.live_after) {
                return;
            }
            if !entry.subscription.may_read(update, &topics) {
                return;
            }
            match entry.tx.offer(update.frame.clone()) {
                Ok(()) => delivered += 1,
                Err(PushError::Full) => {
                    self.stats.cut_off_slow.fetch_add(1, Ordering::Relaxed);
                    cut_off.push(key);
                }
                Err(PushError::Closed) => cut_off.push(key),
            }
        });
        self.stats.delivered.fetch_add(delivered, Ordering::Relaxed);
    }
}

/// Where live delivery stands when the hub starts: at the newest update in
/// history.
pub(super) fn initial_head(history: &dyn HistoryStore) -> Head {
    let (seq, _) = history.head();
    let mut head = Head {
        seq,
        ..Head::default()
    };
    if seq == 0 || history.is_empty() {
        return head;
    }
    let from = seq
        .saturating_sub(PUBLIC_HEAD_SCAN - 1)
        .max(history.first_seq());
    match history.read_range(from, seq, PUBLIC_HEAD_SCAN as usize) {
        Ok(recent) => {
            head.newest = recent.last().map(|(_, u)| u.clone());
            head.newest_public = recent
                .iter()
                .rev()
                .find(|(_, u)| !u.private)
                .map(|(_, u)| u.id.clone());
        }
        Err(e) => tracing::warn!(error = %e, "could not read the newest updates from history"),
    }
    head
}
