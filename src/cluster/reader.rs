//! The reader of one Redis: its partitions' entries, in order per
//! partition, to the merger.
//!
//! One task per Redis, on a connection of its own: it back-fills from the
//! start of its partitions (without blocking) until it has read as far as
//! they went when it started (then it is caught up), and follows them with
//! `XREAD BLOCK`. It reads ahead of the merger only a little (pages then
//! grow with the load), and not at all once the merger holds
//! [`MAX_UNAPPLIED`] of its entries back (another Redis is down, say): the
//! backlog stays in Redis.
//!
//! It also watches each partition's counter: an entry whose counter is not
//! the last one plus one is a gap, and a counter that went backwards while
//! idle is a reset (Redis flushed or restored); both go to the merger,
//! which drops the replica at their place in the order. Entries of a
//! restored log that this node had read before are not delivered again.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;

use super::instance::{redis_error, BACKOFF_MAX, BACKOFF_MIN, RESPONSE_TIMEOUT};
use super::Cluster;
use crate::history::record;
use crate::update::Update;

/// Entries read from a partition at once.
pub(super) const PAGE: usize = 512;

/// `XREAD BLOCK` time; the tail's connection answers within it.
pub(super) const BLOCK: Duration = Duration::from_secs(1);

/// A reader waits at most this long for the merger to apply what it read
/// before it reads on.
pub(super) const READ_AHEAD_WAIT: Duration = Duration::from_millis(5);

/// A reader whose entries the merger holds back this many of stops reading
/// until it applies some.
pub(super) const MAX_UNAPPLIED: u64 = 50_000;

/// Under load, partitions' counters are compared with what was read this
/// often (a reset of a partition that gets no entries).
pub(super) const COUNTER_CHECK: Duration = Duration::from_secs(1);

/// With `--redis-replicas`, a reader holds at most this many entries of a
/// partition that no commit marker covers yet; past it, it reads on for
/// the marker and reads the rest again once the marker comes.
pub(super) const MAX_HELD: usize = 50_000;

/// Entries held this long without a commit marker make the reader ask for
/// a replica round (their publisher died before its own, say).
pub(super) const COMMIT_NUDGE: Duration = Duration::from_millis(500);

/// One partition's entries that a reader holds until a replica has them
/// (`--redis-replicas`): an entry is let go to the merger only once a
/// commit marker in the log says the replicas hold its counter. Without
/// `--redis-replicas` every entry goes at once.
pub(super) struct Held {
    /// Entries up to this counter are on the replicas (the last commit
    /// marker read; `u64::MAX` without `--redis-replicas`).
    commit: u64,
    /// Read, not yet let go: stream id, counter, and the entry (None: one
    /// skipped, read before a reset).
    queue: VecDeque<(String, u64, Option<Entry>)>,
    /// Entries past [`MAX_HELD`] were read and dropped: read again from
    /// `released` once the queue is let go.
    overflow: bool,
    /// The stream id and counter of the last entry let go: where reading
    /// starts again when the held ones are dropped.
    released: (String, Option<u64>),
    /// Since when the oldest held entry waits.
    since: Option<Instant>,
}

impl Held {
    pub(super) fn new(replicas: usize) -> Held {
        Held {
            commit: if replicas == 0 { u64::MAX } else { 0 },
            queue: VecDeque::new(),
            overflow: false,
            released: ("0".into(), None),
            since: None,
        }
    }

    /// An entry read (stream id `id`, counter `n`): to `out` if the
    /// replicas have it and nothing is held before it, else held.
    pub(super) fn take(&mut self, id: &str, n: u64, entry: Option<Entry>, out: &mut Vec<Entry>) {
        if self.queue.is_empty() && !self.overflow && n <= self.commit {
            self.released.0.clear();
            self.released.0.push_str(id);
            self.released.1 = Some(n);
            out.extend(entry);
        } else if self.queue.len() < MAX_HELD && !self.overflow {
            self.since.get_or_insert_with(Instant::now);
            self.queue.push_back((id.to_string(), n, entry));
        } else {
            self.overflow = true;
        }
    }

    /// A commit marker: the replicas hold entries up to counter `c`. Lets
    /// go of what it covers; true when the reader must read again from
    /// `released` (entries past [`MAX_HELD`] were dropped).
    pub(super) fn commit(&mut self, c: u64, out: &mut Vec<Entry>) -> bool {
        self.commit = self.commit.max(c);
        while self
            .queue
            .front()
            .is_some_and(|(_, n, _)| *n <= self.commit)
        {
            let (id, n, entry) = self.queue.pop_front().expect("a front");
            self.released = (id, Some(n));
            out.extend(entry);
        }
        if !self.queue.is_empty() {
            return false;
        }
        self.since = None;
        std::mem::take(&mut self.overflow)
    }

    /// Drop what is held (the log it came from may not be the one read
    /// next); the reader reads again from `released`.
    pub(super) fn drop_held(&mut self) -> bool {
        let had = !self.queue.is_empty() || self.overflow;
        self.queue.clear();
        self.overflow = false;
        self.since = None;
        had
    }

    /// A new log (flushed or restored): what is held of the old one is
    /// gone, and nothing of the new one is known to be on the replicas.
    /// Reading goes on from `from` (stream id, counter).
    pub(super) fn restart(&mut self, replicas: usize, from: Option<(&str, Option<u64>)>) {
        let released = std::mem::take(&mut self.released);
        *self = Held::new(replicas);
        self.released = released;
        if let Some((id, n)) = from {
            self.released = (id.to_string(), n);
        }
    }

    /// The counter of the last entry let go (None: none yet).
    pub(super) fn released_n(&self) -> Option<u64> {
        self.released.1
    }

    /// Move the reader's cursor (stream id, counter) back to the last
    /// entry let go.
    pub(super) fn rewind(&self, position: &mut String, last_n: &mut Option<u64>) {
        position.clone_from(&self.released.0);
        *last_n = self.released.1;
    }

    pub(super) fn waiting_since(&self) -> Option<Instant> {
        self.since
    }
}

/// A log entry read by a reader, for the merger.
pub(super) struct Entry {
    pub(super) partition: usize,
    /// The partition's counter (0: a reset marker, not an entry).
    pub(super) n: u64,
    /// Its clock: entries are applied in `(t, partition)` order.
    pub(super) t: u64,
    /// None: not a Herald update (counted and skipped).
    pub(super) update: Option<(Arc<Update>, bool)>,
    /// `(last, n)`: the partition's counter did not continue before this
    /// entry (history is dropped here).
    pub(super) gap: Option<(u64, u64)>,
}

/// From the readers to the merger.
pub(super) enum Read {
    /// Entries read, and per partition the counter of the last entry
    /// read (also when it was skipped).
    Entries {
        entries: Vec<Entry>,
        seen: Vec<(usize, u64)>,
    },
    /// The partition's counter went backwards while idle: the log was
    /// flushed or restored.
    Reset {
        partition: usize,
        last: u64,
        got: u64,
    },
    /// That Redis's reader has read everything there was at start.
    CaughtUp(usize),
}

/// A stream entry id, `ms-seq`, ordered.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(super) struct StreamId {
    pub(super) ms: u64,
    pub(super) seq: u64,
}

impl StreamId {
    pub(super) fn parse(id: &str) -> Option<StreamId> {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl Cluster {
    /// The reader of one Redis: its partitions' entries, in order per
    /// partition, to the merger.
    pub(super) async fn read(self: Arc<Self>, i: usize, tx: mpsc::Sender<Read>) {
        let instance = &self.instances[i];
        let node = self.config.node_id.as_str();
        let parts = &instance.partitions;
        let mut conn: Option<MultiplexedConnection> = None;
        // Per partition of this Redis: the last entry id read ("0" = from
        // the start), its counter and its clock.
        let mut position: Vec<String> = vec!["0".into(); parts.len()];
        let mut last_n: Vec<Option<u64>> = vec![None; parts.len()];
        let mut last_t: Vec<u64> = vec![0; parts.len()];
        // After a reset: entries stamped up to here were read before it (a
        // log restored from an older copy), not delivered again.
        // (t, n): entries of a restored log that this node read before.
        let mut read_before: Vec<(u64, u64)> = vec![(0, 0); parts.len()];
        // With --redis-replicas: entries no commit marker covers yet.
        let replicas = self.config.replicas;
        let mut held: Vec<Held> = (0..parts.len()).map(|_| Held::new(replicas)).collect();
        let mut last_check = Instant::now();
        // The last entry of each partition when the reader started: caught
        // up once read that far (even while publishes go on).
        let mut start_ends: Option<Vec<Option<StreamId>>> = None;
        let mut caught_up = false;
        let mut backoff = BACKOFF_MIN;
        // Through sentinels: the primary this reader's connection reached,
        // and a task that asks them which one is the primary now.
        let mut dialled = String::new();
        {
            let cluster = self.clone();
            let done = tx.clone();
            tokio::spawn(async move {
                cluster.instances[i]
                    .watch_sentinels(|| done.is_closed())
                    .await
            });
        }
        loop {
            if tx.is_closed() {
                return;
            }
            if conn.is_none() {
                // Its reads block up to BLOCK before they answer.
                match instance.dial_at(BLOCK + RESPONSE_TIMEOUT).await {
                    Ok((c, addr)) => {
                        if !dialled.is_empty() && dialled != addr {
                            crate::metrics::METRICS.primary_changes.inc();
                        }
                        dialled = addr;
                        // What was held may be gone from the log read now
                        // (a failover loses what no replica had): read
                        // again from the last entry let go.
                        for k in 0..parts.len() {
                            if held[k].drop_held() {
                                held[k].rewind(&mut position[k], &mut last_n[k]);
                            }
                        }
                        if self.stats.reconnects.fetch_add(1, Ordering::Relaxed)
                            >= self.instances.len() as u64
                        {
                            tracing::info!(node, redis = %instance.url, "reconnected to the cluster log");
                        }
                        conn = Some(c);
                        backoff = BACKOFF_MIN;
                    }
                    Err(e) => {
                        instance.set_fault(
                            node,
                            format!(
                                "{}; retrying in {backoff:?}",
                                redis_error(&instance.url, &e)
                            ),
                        );
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            }
            // Let the merger apply what was read before reading on: pages
            // then grow with the load instead of being read (and applied)
            // a few entries at a time. Not while the merger waits for one
            // of this Redis's partitions (it needs this read), and at most
            // READ_AHEAD_WAIT, unless the merger holds MAX_UNAPPLIED of
            // this Redis's entries back (another Redis is down, say): then
            // until it applies some, so the backlog stays in Redis.
            loop {
                let unapplied = instance.unapplied.load(Ordering::Acquire);
                if unapplied == 0 || instance.wanted.load(Ordering::Acquire) {
                    break;
                }
                let drained = instance.drained.notified();
                tokio::pin!(drained);
                drained.as_mut().enable();
                if instance.unapplied.load(Ordering::Acquire) == 0
                    || instance.wanted.load(Ordering::Acquire)
                {
                    break;
                }
                let full = unapplied >= MAX_UNAPPLIED;
                let wait = if full { BLOCK } else { READ_AHEAD_WAIT };
                if tokio::time::timeout(wait, drained).await.is_err() && !full {
                    break;
                }
                if tx.is_closed() {
                    return;
                }
            }
            let c = conn.as_mut().expect("connected above");
            if start_ends.is_none() {
                let mut pipe = redis::pipe();
                for &p in parts {
                    pipe.cmd("XREVRANGE")
                        .arg(&self.parts[p].log)
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(1);
                }
                let ends: redis::RedisResult<Vec<redis::streams::StreamRangeReply>> =
                    pipe.query_async(c).await;
                match ends {
                    Ok(ends) => {
                        start_ends = Some(
                            ends.iter()
                                .map(|r| r.ids.first().and_then(|e| StreamId::parse(&e.id)))
                                .collect(),
                        )
                    }
                    Err(_) => {
                        conn = None;
                        continue;
                    }
                }
            }
            // Until caught up, read without blocking.
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT").arg(PAGE);
            if caught_up {
                cmd.arg("BLOCK").arg(BLOCK.as_millis() as u64);
            }
            cmd.arg("STREAMS");
            for &p in parts {
                cmd.arg(&self.parts[p].log);
            }
            cmd.arg(&position);
            let read: redis::RedisResult<Option<redis::streams::StreamReadReply>> =
                cmd.query_async(c).await;
            let streams = match read {
                Ok(reply) => reply.map(|r| r.keys).unwrap_or_default(),
                Err(e) => {
                    conn = None;
                    // The shared connection is as dead as this one: dial
                    // afresh on the next publish rather than fail it.
                    instance.drop_connection().await;
                    instance.set_fault(
                        node,
                        format!(
                            "{}; reconnecting in {backoff:?}",
                            redis_error(&instance.url, &e)
                        ),
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            let mut entries = Vec::new();
            let mut seen = Vec::new();
            for stream in streams {
                let Some(k) = parts.iter().position(|&p| self.parts[p].log == stream.key) else {
                    continue;
                };
                if stream.ids.is_empty() {
                    continue;
                }
                for entry in stream.ids {
                    // A commit marker: the replicas hold this partition's
                    // entries up to its counter.
                    if let Some(c) = entry.map.get("c") {
                        let c: u64 = redis::from_redis_value(c).unwrap_or(0);
                        position[k].clone_from(&entry.id);
                        if held[k].commit(c, &mut entries) {
                            // Some were dropped past MAX_HELD: read them
                            // again (the rest of this page with them).
                            held[k].rewind(&mut position[k], &mut last_n[k]);
                            break;
                        }
                        continue;
                    }
                    position[k].clone_from(&entry.id);
                    let n: Option<u64> = entry
                        .map
                        .get("n")
                        .and_then(|v| redis::from_redis_value(v).ok());
                    // An entry written without a clock (by a Herald of
                    // before partitions) sorts by its stream id's time.
                    let t: u64 = entry
                        .map
                        .get("t")
                        .and_then(|v| redis::from_redis_value(v).ok())
                        .or_else(|| StreamId::parse(&entry.id).map(|s| s.ms * 1000))
                        .unwrap_or(0);
                    let decoded = entry
                        .map
                        .get("r")
                        .and_then(|v| redis::from_redis_value::<Vec<u8>>(v).ok())
                        .ok_or_else(|| "no record field".to_string())
                        .and_then(|bytes| record::decode(&bytes));
                    let update = match decoded {
                        Ok((update, _)) => Some((Arc::new(update), !entry.map.contains_key("l"))),
                        Err(_) => None,
                    };
                    if n.is_none() || update.is_none() {
                        self.stats.bad_entries.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            node,
                            entry = %entry.id,
                            log = %stream.key,
                            "skipped a log entry that is not a Herald update"
                        );
                    }
                    // An entry without a counter cannot be placed: skipped
                    // (its id is still reported as read). A counted one
                    // counts even when its record is bad (a newer record
                    // version, say): the next one follows it.
                    let Some(n) = n else { continue };
                    // Entries of the restored log up to where it was
                    // restored (counter `got`) that this node had read (a
                    // flush restores nothing: got = 0, nothing skipped).
                    if n <= read_before[k].1 && t <= read_before[k].0 {
                        last_n[k] = Some(n);
                        held[k].take(&entry.id, n, None, &mut entries);
                        continue;
                    }
                    let gap = last_n[k].filter(|last| n != last + 1).map(|last| (last, n));
                    if gap.is_some_and(|(last, n)| n <= last) {
                        // The counter went back under this connection: a
                        // new log (flushed), none of it marked yet.
                        held[k].restart(replicas, None);
                    }
                    last_n[k] = Some(n);
                    last_t[k] = last_t[k].max(t);
                    let entry_id = entry.id;
                    let read = Entry {
                        partition: parts[k],
                        n,
                        t,
                        update,
                        gap,
                    };
                    held[k].take(&entry_id, n, Some(read), &mut entries);
                }
                // What the merger may count as read: entries let go.
                seen.push((parts[k], held[k].released_n().unwrap_or(0)));
                self.heads[parts[k]].store(last_n[k].unwrap_or(0), Ordering::Relaxed);
            }
            let idle = seen.is_empty();
            if !seen.is_empty() {
                instance
                    .unapplied
                    .fetch_add(entries.len() as u64, Ordering::AcqRel);
                if tx.send(Read::Entries { entries, seen }).await.is_err() {
                    return;
                }
            }
            if idle || last_check.elapsed() >= COUNTER_CHECK {
                // A log that was flushed or restored while its stream ids
                // went backwards (another clock) would never show up in
                // XREAD from our position; its counter does. Checked when
                // idle, and once a second under load (a partition that
                // gets nothing while its neighbours are busy).
                last_check = Instant::now();
                // Through sentinels, follow a failover that did not break
                // this connection (+switch-master, asked every check):
                // read on from the new primary, at the same position.
                if instance.primary_moved(&dialled) {
                    tracing::info!(node, redis = %instance.url, from = %dialled, "the sentinels name another primary: following it");
                    conn = None;
                    instance.drop_connection().await;
                    continue;
                }
                let c = conn.as_mut().expect("connected above");
                let mut mget = redis::cmd("MGET");
                for &p in parts {
                    mget.arg(&self.parts[p].counter);
                }
                let counters: redis::RedisResult<Vec<Option<u64>>> = mget.query_async(c).await;
                if let Ok(counters) = counters {
                    for (k, counter) in counters.into_iter().enumerate() {
                        let got = counter.unwrap_or(0);
                        self.heads[parts[k]].store(got, Ordering::Relaxed);
                        let released = held[k].released_n();
                        if let Some(last) = released.filter(|last| got < *last) {
                            let reset = Read::Reset {
                                partition: parts[k],
                                last,
                                got,
                            };
                            if tx.send(reset).await.is_err() {
                                return;
                            }
                            position[k] = "0".into();
                            last_n[k] = None;
                            read_before[k] = (last_t[k], got);
                            held[k].restart(replicas, Some(("0", None)));
                        } else if last_n[k].is_some_and(|last| got < last) {
                            // Only entries held (not on a replica) are gone:
                            // read again from the last one let go.
                            held[k].drop_held();
                            held[k].rewind(&mut position[k], &mut last_n[k]);
                        }
                    }
                }
            }
            let reached = start_ends.as_ref().is_some_and(|ends| {
                ends.iter().zip(&position).all(|(end, at)| {
                    end.is_none_or(|end| StreamId::parse(at).is_some_and(|at| at >= end))
                })
            });
            if !caught_up && (idle || reached) {
                caught_up = true;
                // The merger says so once it has applied what came before.
                if tx.send(Read::CaughtUp(i)).await.is_err() {
                    return;
                }
            }
            if caught_up {
                instance.clear_fault(node);
            }
            if held.iter().any(|h| {
                h.waiting_since()
                    .is_some_and(|at| at.elapsed() >= COMMIT_NUDGE)
            }) {
                self.nudge(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_order_numerically() {
        let a = StreamId::parse("1700000000000-9").unwrap();
        let b = StreamId::parse("1700000000000-10").unwrap();
        assert!(a < b);
        assert!(StreamId::parse("99-0").unwrap() < StreamId::parse("100-0").unwrap());
        assert_eq!(StreamId::parse("x-1"), None);
    }
}
