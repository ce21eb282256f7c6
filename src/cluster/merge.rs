//! The order every node applies the log in: entries by `(t, partition)`,
//! each once no partition can still produce an earlier one (the low
//! watermark). Pure state, no I/O: the merger task ([`super::merger`])
//! feeds it what the readers read and applies what it lets go.
//!
//! An entry at the head waits while another partition with nothing read
//! could still produce an entry that sorts before it; the merger then asks
//! those partitions (the PROBE script), and their answer bounds them. A
//! reset takes its place after what was read of its partition.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::reader::Entry;

/// The merger's state: per partition, the entries read and not yet
/// applied, and the least `t` its next unread entry can have.
pub(super) struct Merge {
    queues: Vec<VecDeque<Entry>>,
    /// The next unread entry of the partition has `t >= low`.
    low: Vec<u64>,
    /// Counter of the last entry read from the partition (0: none).
    last_read: Vec<u64>,
    /// Counter of the last entry queued for the partition (0: none).
    pushed: Vec<u64>,
    /// When the partition's last entry was queued.
    arrived: Vec<Option<Instant>>,
    /// `t` of the last entry applied: an entry that arrives below it (only
    /// after a reset) is applied next rather than out of place.
    floor: u64,
}

impl Merge {
    pub(super) fn new(parts: usize) -> Merge {
        Merge {
            queues: (0..parts).map(|_| VecDeque::new()).collect(),
            low: vec![0; parts],
            last_read: vec![0; parts],
            pushed: vec![0; parts],
            arrived: vec![None; parts],
            floor: 0,
        }
    }

    pub(super) fn push(&mut self, mut entry: Entry) {
        let p = entry.partition;
        let back = self.queues[p].back().map_or(0, |e| e.t);
        entry.t = entry.t.max(back).max(self.floor);
        self.low[p] = self.low[p].max(entry.t + 1);
        self.pushed[p] = entry.n;
        self.arrived[p] = Some(Instant::now());
        self.queues[p].push_back(entry);
    }

    /// The reader has read partition `p` up to the entry counted `n`.
    pub(super) fn seen(&mut self, p: usize, n: u64) {
        self.last_read[p] = n;
    }

    pub(super) fn last_read(&self, p: usize) -> u64 {
        self.last_read[p]
    }

    pub(super) fn pushed(&self, p: usize) -> u64 {
        self.pushed[p]
    }

    /// No entry of partition `p` was queued within `window`.
    pub(super) fn quiet(&self, p: usize, window: Duration) -> bool {
        self.arrived[p].is_none_or(|at| at.elapsed() >= window)
    }

    /// Partition `p` was flushed or restored (its counter went from `last`
    /// back to `got`): the reset takes its place after what was read of it,
    /// and reading starts again from the start of the new log.
    pub(super) fn reset(&mut self, p: usize, last: u64, got: u64) {
        let back = self.queues[p].back().map_or(0, |e| e.t);
        self.queues[p].push_back(Entry {
            partition: p,
            n: 0,
            t: back.max(self.floor),
            update: None,
            gap: Some((last, got)),
        });
        self.last_read[p] = 0;
        self.pushed[p] = 0;
    }

    /// Nothing unread in `p` can sort before `low`.
    pub(super) fn bound(&mut self, p: usize, low: u64) {
        self.low[p] = self.low[p].max(low);
    }

    pub(super) fn head(&self) -> Option<usize> {
        (0..self.queues.len())
            .filter_map(|p| self.queues[p].front().map(|e| (e.t, p)))
            .min()
            .map(|(_, p)| p)
    }

    /// The entries that can be applied now, in order; then, if one is held
    /// back, the idle partitions that hold it and the last queued `t` (the
    /// clock they are asked to move past).
    pub(super) fn ready(&mut self) -> (Vec<Entry>, Option<(Vec<usize>, u64)>) {
        let mut out = Vec::new();
        while let Some(p) = self.head() {
            let t = self.queues[p].front().map_or(0, |e| e.t);
            // Another partition with nothing read could still produce an
            // entry that sorts before this one.
            let blocking: Vec<usize> = (0..self.queues.len())
                .filter(|&q| q != p && self.queues[q].is_empty() && (self.low[q], q) <= (t, p))
                .collect();
            if !blocking.is_empty() {
                // Ask them to sort after everything queued, not only after
                // the head: one question then lets the whole backlog go.
                let last = self
                    .queues
                    .iter()
                    .filter_map(|q| q.back().map(|e| e.t))
                    .max()
                    .unwrap_or(t);
                return (out, Some((blocking, last)));
            }
            let entry = self.queues[p].pop_front().expect("head has an entry");
            self.floor = entry.t;
            out.push(entry);
        }
        (out, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(partition: usize, n: u64, t: u64) -> Entry {
        Entry {
            partition,
            n,
            t,
            update: None,
            gap: None,
        }
    }

    fn order(entries: &[Entry]) -> Vec<(usize, u64)> {
        entries.iter().map(|e| (e.partition, e.n)).collect()
    }

    fn blocked(ready: &Option<(Vec<usize>, u64)>) -> Vec<usize> {
        ready.as_ref().map(|(b, _)| b.clone()).unwrap_or_default()
    }

    #[test]
    fn the_merge_waits_for_idle_partitions_then_orders_by_clock() {
        let mut m = Merge::new(3);
        m.push(entry(1, 1, 20));
        m.push(entry(0, 1, 10));
        // Partition 2 has said nothing: it could still hold an earlier one.
        let (ready, held) = m.ready();
        assert!(ready.is_empty());
        assert_eq!(
            held,
            Some((vec![2], 20)),
            "held back by 2, asked to move past all that is queued"
        );
        // Nothing before 15 can come from it.
        m.bound(2, 15);
        let (ready, held) = m.ready();
        assert_eq!(order(&ready), vec![(0, 1)]);
        assert_eq!(blocked(&held), vec![0, 2]);
        m.push(entry(2, 1, 18));
        m.bound(0, 30);
        // Partition 2 could still produce one at 19, before 20.
        let (ready, held) = m.ready();
        assert_eq!(order(&ready), vec![(2, 1)]);
        assert_eq!(blocked(&held), vec![2]);
        m.bound(2, 25);
        let (ready, held) = m.ready();
        assert_eq!(order(&ready), vec![(1, 1)]);
        assert!(held.is_none());
    }

    #[test]
    fn equal_clocks_order_by_partition_and_late_entries_are_not_lost() {
        let mut m = Merge::new(2);
        m.push(entry(1, 1, 10));
        m.push(entry(0, 1, 10));
        m.bound(0, 11);
        m.bound(1, 11);
        assert_eq!(order(&m.ready().0), vec![(0, 1), (1, 1)]);
        // Below what was applied (only after a reset): applied next, not
        // dropped.
        m.push(entry(0, 2, 5));
        m.bound(1, 20);
        let (ready, _) = m.ready();
        assert_eq!(order(&ready), vec![(0, 2)]);
    }

    #[test]
    fn a_reset_takes_its_place_after_what_was_read_of_its_partition() {
        let mut m = Merge::new(2);
        m.push(entry(0, 7, 10));
        m.reset(0, 7, 0);
        m.push(entry(1, 1, 12));
        m.push(entry(0, 1, 11));
        m.bound(0, 20);
        m.bound(1, 20);
        let (ready, held) = m.ready();
        let marks: Vec<(usize, u64, bool)> = ready
            .iter()
            .map(|e| (e.partition, e.n, e.gap.is_some()))
            .collect();
        assert_eq!(
            marks,
            vec![(0, 7, false), (0, 0, true), (0, 1, false), (1, 1, false)]
        );
        assert!(held.is_none());
    }

    #[test]
    fn one_question_lets_the_whole_backlog_go() {
        let mut m = Merge::new(2);
        for n in 1..=100 {
            m.push(entry(0, n, 10 + n));
        }
        let (ready, held) = m.ready();
        assert!(ready.is_empty());
        let (blocked, target) = held.expect("held back by the idle partition");
        assert_eq!(blocked, vec![1]);
        // What a probe that found nothing unread in partition 1 does.
        m.bound(1, target + 1);
        let (ready, held) = m.ready();
        assert_eq!(ready.len(), 100, "not one entry per question");
        assert!(held.is_none());
    }

    #[test]
    fn one_partition_never_waits() {
        let mut m = Merge::new(1);
        m.push(entry(0, 1, 10));
        m.push(entry(0, 2, 11));
        let (ready, held) = m.ready();
        assert_eq!(order(&ready), vec![(0, 1), (0, 2)]);
        assert!(held.is_none());
    }
}
