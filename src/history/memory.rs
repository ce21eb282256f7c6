//! The in-memory history: a bounded ring of the last N updates with an index
//! from id to sequence number. Lost on restart (`--history memory`); the
//! same [`Ring`] is the hot cache in front of the durable store, so recent
//! resumes never touch the disk.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::RwLock;

use super::{now_ms, AppendResult, HistoryError, HistoryStore, Retention};
use crate::update::Update;

pub struct MemoryHistory {
    retention: Retention,
    inner: RwLock<Ring>,
    /// A replica of the cluster log: the log has already decided which
    /// updates exist, so an id seen before (published again after Redis
    /// forgot it) replaces the old one instead of being refused.
    log_wins: bool,
}

/// The last updates, oldest first, with contiguous sequence numbers.
#[derive(Default)]
pub(super) struct Ring {
    /// (sequence, published at in ms, update).
    entries: VecDeque<(u64, u64, Arc<Update>)>,
    by_id: HashMap<String, u64>,
    last_seq: u64,
    /// The events' bytes held (their SSE frames).
    bytes: u64,
}

impl Ring {
    pub(super) fn contains_id(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(super) fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub(super) fn head(&self) -> (u64, Option<String>) {
        (
            self.last_seq,
            self.entries.back().map(|(_, _, u)| u.id.clone()),
        )
    }

    /// Make `seq` the last sequence number handed out, with nothing stored
    /// (a durable store whose retention emptied it).
    pub(super) fn skip_to(&mut self, seq: u64) {
        self.last_seq = self.last_seq.max(seq);
    }

    /// Add an update with the given sequence number (the next one), keeping
    /// at most `capacity` entries.
    pub(super) fn push(&mut self, seq: u64, at_ms: u64, update: Arc<Update>, capacity: usize) {
        self.last_seq = seq;
        if capacity == 0 {
            return;
        }
        while self.entries.len() >= capacity {
            self.pop_oldest();
        }
        self.by_id.insert(update.id.clone(), seq);
        self.bytes += update.frame.len() as u64;
        self.entries.push_back((seq, at_ms, update));
    }

    fn pop_oldest(&mut self) {
        if let Some((seq, _, old)) = self.entries.pop_front() {
            self.bytes -= old.frame.len() as u64;
            // Only if the id still points here: a newer update may have
            // taken it (a replica of the cluster log).
            if self.by_id.get(&old.id) == Some(&seq) {
                self.by_id.remove(&old.id);
            }
        }
    }

    /// Drop entries published before `cutoff_ms`.
    pub(super) fn drop_older_than(&mut self, cutoff_ms: u64) {
        while self
            .entries
            .front()
            .is_some_and(|(_, at, _)| *at < cutoff_ms)
        {
            self.pop_oldest();
        }
    }

    /// Drop entries with a sequence number below `first_seq`.
    pub(super) fn drop_before(&mut self, first_seq: u64) {
        while self.entries.front().is_some_and(|(s, _, _)| *s < first_seq) {
            self.pop_oldest();
        }
    }

    /// Sequence number of the update with this id, if the ring holds it.
    pub(super) fn lookup(&self, id: &str) -> Option<u64> {
        self.by_id.get(id).copied()
    }

    /// The update with sequence number `seq`, if the ring holds it.
    pub(super) fn get(&self, seq: u64) -> Option<&Arc<Update>> {
        let index = seq.checked_sub(self.first_seq())?;
        self.entries
            .get(usize::try_from(index).ok()?)
            .map(|(_, _, u)| u)
    }

    /// Sequence number of the oldest entry (`last_seq + 1` when empty).
    pub(super) fn first_seq(&self) -> u64 {
        self.entries
            .front()
            .map_or(self.last_seq + 1, |(s, _, _)| *s)
    }

    /// Up to `max` entries with sequence numbers in `start..=upto`.
    pub(super) fn read_range(&self, start: u64, upto: u64, max: usize) -> Vec<(u64, Arc<Update>)> {
        let first = self.first_seq();
        let skip = start.saturating_sub(first) as usize;
        self.entries
            .range(skip.min(self.entries.len())..)
            .take_while(|(s, _, _)| *s <= upto)
            .take(max)
            .map(|(s, _, u)| (*s, u.clone()))
            .collect()
    }
}

impl MemoryHistory {
    /// A ring keeping the last `capacity` updates (0 keeps none: no resume).
    pub fn new(capacity: usize) -> MemoryHistory {
        MemoryHistory::with_retention(Retention {
            max_len: capacity,
            max_age: None,
        })
    }

    pub fn with_retention(retention: Retention) -> MemoryHistory {
        MemoryHistory {
            retention,
            inner: RwLock::new(Ring::default()),
            log_wins: false,
        }
    }

    /// The history of a cluster node: a replica of the shared log, where
    /// the log decides (an id the log accepted again replaces the old one).
    pub fn replica(retention: Retention) -> MemoryHistory {
        MemoryHistory {
            log_wins: true,
            ..MemoryHistory::with_retention(retention)
        }
    }
}

impl HistoryStore for MemoryHistory {
    fn append_batch(&self, updates: &[Arc<Update>]) -> Result<Vec<AppendResult>, HistoryError> {
        let mut ring = self.inner.write();
        let now = now_ms();
        Ok(updates
            .iter()
            .map(|update| {
                if !self.log_wins && ring.contains_id(&update.id) {
                    return Err(HistoryError::DuplicateId(update.id.clone()));
                }
                let seq = ring.last_seq() + 1;
                ring.push(seq, now, update.clone(), self.retention.max_len);
                Ok(seq)
            })
            .collect())
    }

    fn head(&self) -> (u64, Option<String>) {
        self.inner.read().head()
    }

    fn lookup(&self, id: &str) -> Result<Option<u64>, HistoryError> {
        Ok(self.inner.read().lookup(id))
    }

    fn first_seq(&self) -> u64 {
        self.inner.read().first_seq()
    }

    fn read_range(
        &self,
        start: u64,
        upto: u64,
        max: usize,
    ) -> Result<Vec<(u64, Arc<Update>)>, HistoryError> {
        Ok(self.inner.read().read_range(start, upto, max))
    }

    fn len(&self) -> usize {
        self.inner.read().len()
    }

    fn bytes(&self) -> u64 {
        self.inner.read().bytes()
    }

    fn discard_all(&self) -> Result<(), HistoryError> {
        let mut ring = self.inner.write();
        let last = ring.last_seq();
        ring.drop_before(last + 1);
        Ok(())
    }

    fn trim(&self) -> Result<bool, HistoryError> {
        if let Some(age) = self.retention.max_age {
            let cutoff = now_ms().saturating_sub(age.as_millis() as u64);
            self.inner.write().drop_older_than(cutoff);
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Replay, ResumeFrom};

    fn up(id: &str) -> Arc<Update> {
        Arc::new(Update::new(
            id.into(),
            vec!["t".into()],
            false,
            None,
            None,
            id.into(),
        ))
    }

    fn append(h: &MemoryHistory, u: Arc<Update>) -> AppendResult {
        h.append_batch(&[u]).unwrap().remove(0)
    }

    fn ids(r: &Replay) -> Vec<&str> {
        r.updates.iter().map(|u| u.id.as_str()).collect()
    }

    #[test]
    fn a_replica_takes_an_id_again_and_keeps_the_newest() {
        let h = MemoryHistory::replica(Retention {
            max_len: 3,
            max_age: None,
        });
        assert_eq!(append(&h, up("a")).unwrap(), 1);
        assert_eq!(append(&h, up("b")).unwrap(), 2);
        // The log accepted "a" again: stored and found at its new place.
        assert_eq!(append(&h, up("a")).unwrap(), 3);
        assert_eq!(h.lookup("a").unwrap(), Some(3));
        // The old "a" leaving the ring does not take the new one's index.
        append(&h, up("c")).unwrap();
        assert_eq!(h.lookup("a").unwrap(), Some(3));
        // A plain history still refuses it.
        let plain = MemoryHistory::new(3);
        append(&plain, up("a")).unwrap();
        assert!(matches!(
            append(&plain, up("a")),
            Err(HistoryError::DuplicateId(_))
        ));
    }

    #[test]
    fn replays_after_id_up_to_cursor() {
        let h = MemoryHistory::new(10);
        for id in ["a", "b", "c", "d"] {
            append(&h, up(id)).unwrap();
        }
        let r = h.replay(&ResumeFrom::After("b".into()), 4).unwrap();
        assert!(r.found);
        assert_eq!(ids(&r), ["c", "d"]);
        let r = h.replay(&ResumeFrom::After("a".into()), 3).unwrap();
        assert_eq!(ids(&r), ["b", "c"]);
        let r = h.replay(&ResumeFrom::Earliest, 4).unwrap();
        assert_eq!(ids(&r), ["a", "b", "c", "d"]);
        assert_eq!(h.head(), (4, Some("d".into())));
    }

    #[test]
    fn unknown_and_evicted_ids_are_not_found() {
        let h = MemoryHistory::new(2);
        for id in ["a", "b", "c"] {
            append(&h, up(id)).unwrap();
        }
        assert_eq!(h.len(), 2);
        assert!(!h.replay(&ResumeFrom::After("a".into()), 3).unwrap().found);
        assert!(!h.replay(&ResumeFrom::After("zz".into()), 3).unwrap().found);
        assert_eq!(
            ids(&h.replay(&ResumeFrom::Earliest, 3).unwrap()),
            ["b", "c"]
        );
        assert_eq!(
            ids(&h.replay(&ResumeFrom::After("c".into()), 3).unwrap()),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn duplicate_ids_rejected_while_held() {
        let h = MemoryHistory::new(1);
        append(&h, up("a")).unwrap();
        assert!(matches!(
            append(&h, up("a")),
            Err(HistoryError::DuplicateId(_))
        ));
        append(&h, up("b")).unwrap();
        // "a" was evicted: it can be reused.
        append(&h, up("a")).unwrap();
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let h = MemoryHistory::new(0);
        append(&h, up("a")).unwrap();
        assert_eq!(h.len(), 0);
        assert_eq!(h.head().0, 1);
        assert!(!h.replay(&ResumeFrom::After("a".into()), 1).unwrap().found);
    }
}
