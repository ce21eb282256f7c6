//! The durable history's id index, kept in memory: which held update has
//! which id, for duplicate ids and `Last-Event-ID` look-ups.
//!
//! Why in memory and not a table in the file: ids are the publisher's (or
//! random UUIDs), so each insert and each retention delete in an on-disk
//! `id -> sequence` B-tree lands on a random page, and every commit then
//! rewrote a random page per update twice. Measured at steady state (history
//! full at 100,000 updates), that made a publish cost ~30% more than on a
//! fresh server. Here an insert and a removal cost a hash each, whatever the
//! history holds; the file keeps only the updates, appended at one end and
//! trimmed at the other (see `docs/history.md`).
//!
//! The index keeps 64-bit keyed hashes of the ids, not the ids: 27-50
//! bytes per held update (a map slot and a queue slot, with the slack of
//! tables that double). A hash hit is only
//! a candidate: the caller reads that update's id and compares. Two held
//! ids with the same hash (the hasher is SipHash with a key drawn per
//! process, so nobody can aim for it) are both found: the second goes to
//! [`IdIndex::collided`], checked whenever the hash path does not answer.
//!
//! The index covers sequence numbers `first..first + order.len()`, the
//! updates the history holds; it is rebuilt from the file on every load.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

/// The hash of an id, as the index keys it.
pub(super) type IdHash = u64;

/// Keys are hashes already: used as they are.
#[derive(Default)]
pub(super) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed with this; fold anything else in.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub(super) type HashedMap<V> = HashMap<IdHash, V, BuildHasherDefault<PassThrough>>;

/// What the index says about an id before the caller checked the candidate.
pub(super) struct Candidates {
    /// The held update whose id has this hash (the newest such), if any.
    pub by_hash: Option<u64>,
    /// The update with exactly this id among those whose hash another
    /// held id has.
    pub collided: Option<u64>,
}

pub(super) struct IdIndex {
    hasher: RandomState,
    /// Id hash -> the sequence number of the held update with that hash.
    by_hash: HashedMap<u64>,
    /// Ids whose hash `by_hash` gives to another held update (almost
    /// always empty).
    collided: HashMap<String, u64>,
    /// The id hash of each held update, oldest first: `order[i]` is
    /// sequence number `first + i`.
    order: VecDeque<IdHash>,
    first: u64,
}

impl IdIndex {
    /// An empty index whose next update is `first`.
    pub(super) fn new(first: u64) -> IdIndex {
        IdIndex {
            hasher: RandomState::new(),
            by_hash: HashedMap::default(),
            collided: HashMap::new(),
            order: VecDeque::new(),
            first,
        }
    }

    /// An empty index with the same hash key as this one (hashes computed
    /// with either stay valid).
    pub(super) fn empty_like(&self, first: u64) -> IdIndex {
        IdIndex {
            hasher: self.hasher.clone(),
            ..IdIndex::new(first)
        }
    }

    pub(super) fn hash(&self, id: &str) -> IdHash {
        self.hasher.hash_one(id)
    }

    /// Where an id may be: the caller reads the `by_hash` candidate's id
    /// and compares.
    pub(super) fn candidates(&self, id: &str, hash: IdHash) -> Candidates {
        Candidates {
            by_hash: self.by_hash.get(&hash).copied(),
            collided: if self.collided.is_empty() {
                None
            } else {
                self.collided.get(id).copied()
            },
        }
    }

    /// Record the next held update (sequence `first + len`). `collides`:
    /// the caller found another held id with this hash.
    pub(super) fn push(&mut self, seq: u64, id: &str, hash: IdHash, collides: bool) {
        debug_assert_eq!(seq, self.first + self.order.len() as u64);
        if collides {
            self.collided.insert(id.to_owned(), seq);
        } else {
            self.by_hash.insert(hash, seq);
        }
        self.order.push_back(hash);
    }

    /// Forget every update below `first` (retention let it go).
    pub(super) fn drop_before(&mut self, first: u64) {
        while self.first < first {
            let Some(hash) = self.order.pop_front() else {
                self.first = first;
                break;
            };
            let seq = self.first;
            self.first += 1;
            if self.by_hash.get(&hash) == Some(&seq) {
                self.by_hash.remove(&hash);
            } else if !self.collided.is_empty() {
                self.collided.retain(|_, s| *s != seq);
            }
        }
        if self.order.is_empty() {
            self.first = self.first.max(first);
        }
    }

    /// Updates indexed.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two ids forced onto one hash are both found, and each goes when its
    /// own update leaves.
    #[test]
    fn colliding_ids_are_told_apart() {
        let mut index = IdIndex::new(1);
        let h = 42;
        index.push(1, "a", h, false);
        index.push(2, "b", h, true);
        let a = index.candidates("a", h);
        assert_eq!((a.by_hash, a.collided), (Some(1), None));
        let b = index.candidates("b", h);
        assert_eq!((b.by_hash, b.collided), (Some(1), Some(2)));
        index.drop_before(2);
        let b = index.candidates("b", h);
        assert_eq!((b.by_hash, b.collided), (None, Some(2)));
        index.drop_before(3);
        let b = index.candidates("b", h);
        assert_eq!((b.by_hash, b.collided), (None, None));
        assert_eq!(index.len(), 0);
    }

    #[test]
    fn an_id_taken_again_points_at_the_newest_and_survives_the_old_one_leaving() {
        let mut index = IdIndex::new(10);
        let h = index.hash("a");
        index.push(10, "a", h, false);
        // Held twice only after a crash undid a trim (see DiskHistory):
        // the newer one wins.
        index.push(11, "a", h, false);
        index.drop_before(11);
        assert_eq!(index.candidates("a", h).by_hash, Some(11));
    }

    #[test]
    fn dropping_past_the_end_moves_the_start() {
        let mut index = IdIndex::new(1);
        index.push(1, "x", index.hash("x"), false);
        index.drop_before(100);
        assert_eq!(index.len(), 0);
        index.push(100, "y", index.hash("y"), false);
        assert_eq!(index.candidates("y", index.hash("y")).by_hash, Some(100));
    }
}
