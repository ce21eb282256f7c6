//! The in-memory history: a bounded ring of the last N updates with an index
//! from id to sequence number. Lost on restart; the durable store is the
//! default for `herald serve` once it exists, this one backs tests and
//! `--history memory`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::RwLock;

use super::{HistoryError, HistoryStore, Replay, ResumeFrom};
use crate::hub::Update;

pub struct MemoryHistory {
    capacity: usize,
    inner: RwLock<Ring>,
}

#[derive(Default)]
struct Ring {
    /// (sequence, update), oldest first; sequences are contiguous.
    entries: VecDeque<(u64, Arc<Update>)>,
    by_id: HashMap<String, u64>,
    last_seq: u64,
}

impl MemoryHistory {
    /// A ring keeping the last `capacity` updates (0 keeps none: no resume).
    pub fn new(capacity: usize) -> MemoryHistory {
        MemoryHistory {
            capacity,
            inner: RwLock::new(Ring::default()),
        }
    }
}

impl HistoryStore for MemoryHistory {
    fn append(&self, update: Arc<Update>) -> Result<u64, HistoryError> {
        let mut ring = self.inner.write();
        if ring.by_id.contains_key(&update.id) {
            return Err(HistoryError::DuplicateId(update.id.clone()));
        }
        ring.last_seq += 1;
        let seq = ring.last_seq;
        if self.capacity == 0 {
            return Ok(seq);
        }
        while ring.entries.len() >= self.capacity {
            if let Some((_, old)) = ring.entries.pop_front() {
                ring.by_id.remove(&old.id);
            }
        }
        ring.by_id.insert(update.id.clone(), seq);
        ring.entries.push_back((seq, update));
        Ok(seq)
    }

    fn head(&self) -> (u64, Option<String>) {
        let ring = self.inner.read();
        (
            ring.last_seq,
            ring.entries.back().map(|(_, u)| u.id.clone()),
        )
    }

    fn replay(&self, from: &ResumeFrom, upto: u64) -> Result<Replay, HistoryError> {
        let ring = self.inner.read();
        let first_seq = match ring.entries.front() {
            Some((s, _)) => *s,
            None => {
                return Ok(Replay {
                    updates: Vec::new(),
                    found: matches!(from, ResumeFrom::Earliest),
                })
            }
        };
        let start_seq = match from {
            ResumeFrom::Earliest => first_seq,
            ResumeFrom::After(id) => match ring.by_id.get(id) {
                Some(seq) => seq + 1,
                None => {
                    return Ok(Replay {
                        updates: Vec::new(),
                        found: false,
                    })
                }
            },
        };
        let start = (start_seq.saturating_sub(first_seq)) as usize;
        let updates = ring
            .entries
            .range(start.min(ring.entries.len())..)
            .take_while(|(s, _)| *s <= upto)
            .map(|(_, u)| u.clone())
            .collect();
        Ok(Replay {
            updates,
            found: true,
        })
    }

    fn len(&self) -> usize {
        self.inner.read().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn ids(r: &Replay) -> Vec<&str> {
        r.updates.iter().map(|u| u.id.as_str()).collect()
    }

    #[test]
    fn replays_after_id_up_to_cursor() {
        let h = MemoryHistory::new(10);
        for id in ["a", "b", "c", "d"] {
            h.append(up(id)).unwrap();
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
            h.append(up(id)).unwrap();
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
        h.append(up("a")).unwrap();
        assert!(matches!(
            h.append(up("a")),
            Err(HistoryError::DuplicateId(_))
        ));
        h.append(up("b")).unwrap();
        // "a" was evicted: it can be reused.
        h.append(up("a")).unwrap();
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let h = MemoryHistory::new(0);
        h.append(up("a")).unwrap();
        assert_eq!(h.len(), 0);
        assert_eq!(h.head().0, 1);
        assert!(!h.replay(&ResumeFrom::After("a".into()), 1).unwrap().found);
    }
}
