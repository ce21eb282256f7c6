//! The merger: one task per node that applies the readers' entries in the
//! merged order ([`super::merge`]) to the hub, through the committer's inbox
//! ([`crate::log::Applier`]), waiting for each run so runs never overtake
//! each other.
//!
//! It asks idle partitions that hold the head back whether anything is
//! unread (at most once per [`PROBE_DELAY`] while a hold lasts, at once for
//! partitions quiet for [`QUIET`]); a hold longer than [`STALL`] shows on
//! `/readyz`. A gap or a reset drops the replica at its place in the order
//! (resumes from before answer `earliest`), and so does a run that could
//! not be applied: this node never serves a history with a hole.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::merge::Merge;
use super::reader::{Entry, Read};
use super::Cluster;
use crate::log::Applier;
use crate::update::Update;

/// How long the merger waits for other partitions' entries before it asks
/// the idle ones (under load they come first, and no question is asked):
/// at most this much latency, at most this many questions per second.
pub(super) const PROBE_DELAY: Duration = Duration::from_millis(1);

/// A partition with no entry read for this long is asked without waiting.
pub(super) const QUIET: Duration = Duration::from_millis(20);

/// How often the merger asks again about a partition whose entries are on
/// their way to it.
pub(super) const PROBE_AGAIN: Duration = Duration::from_millis(2);

/// After a probe that failed (a Redis down), the merger waits this long.
pub(super) const PROBE_BACKOFF: Duration = Duration::from_millis(100);

pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A merge held back this long (a Redis down, say) shows on `/readyz`.
pub(super) const STALL: Duration = Duration::from_secs(5);

/// What a probe found.
pub(super) enum Probed {
    /// At least one partition has nothing unread: the head may go.
    Bounded,
    /// Entries are on their way to the merger.
    Unread,
    /// A Redis did not answer.
    Failed,
}

/// Tests only: `HERALD_CLUSTER_APPLY_DELAY_MS` makes this node apply each
/// page of the log that much later, to stand for a node that lags behind
/// (so a test can prove that a resume waits for it). Unset in production.
pub(super) fn apply_delay() -> Option<Duration> {
    static DELAY: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| {
        std::env::var("HERALD_CLUSTER_APPLY_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    })
}

/// Apply a page of the log in order: stored updates and live-only events
/// (subscription events) in runs of one kind.
/// False when some of it could not be applied.
pub(super) async fn apply_page(applier: &Applier, page: Vec<(Arc<Update>, bool)>) -> bool {
    let mut ok = true;
    let mut run: Vec<Arc<Update>> = Vec::new();
    let mut run_durable = true;
    for (update, durable) in page {
        if durable != run_durable && !run.is_empty() {
            ok &= apply_run(applier, std::mem::take(&mut run), run_durable).await;
        }
        run_durable = durable;
        run.push(update);
    }
    if !run.is_empty() {
        ok &= apply_run(applier, run, run_durable).await;
    }
    ok
}

pub(super) async fn apply_run(applier: &Applier, run: Vec<Arc<Update>>, durable: bool) -> bool {
    match applier.apply(run, durable).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "applying log entries failed");
            false
        }
    }
}

impl Cluster {
    /// Start the tail: one reader per Redis (back-fill from the start of
    /// its partitions, then follow them) and the merger that applies what
    /// they read, in one order, to the hub's committer through `applier`,
    /// until the hub shuts its inbox.
    pub fn start_tail(self: &Arc<Self>, applier: Applier) {
        // Bounded: a merger that falls behind holds the readers back
        // rather than buffer without limit.
        let (tx, rx) = mpsc::channel(4 * self.instances.len());
        for i in 0..self.instances.len() {
            let cluster = self.clone();
            let tx = tx.clone();
            tokio::spawn(async move { cluster.read(i, tx).await });
        }
        let cluster = self.clone();
        tokio::spawn(async move { cluster.merge(applier, rx).await });
    }

    /// The merger: applies the readers' entries in `(t, partition)` order,
    /// each once no partition can still produce an earlier one.
    pub(super) async fn merge(self: Arc<Self>, applier: Applier, mut rx: mpsc::Receiver<Read>) {
        let mut merge = Merge::new(self.config.partitions);
        // The partitions holding the head back, and the last queued clock.
        let mut stuck: Option<(Vec<usize>, u64)> = None;
        let mut stuck_since: Option<Instant> = None;
        // When to ask the partitions that hold the head back.
        let mut probe_due: Option<Instant> = None;
        // Readers that read all there was at start, with the counters then
        // read per partition.
        let mut pending_caught_up: Vec<(usize, Vec<(usize, u64)>)> = Vec::new();
        loop {
            let read = match &stuck {
                None => {
                    probe_due = None;
                    match rx.recv().await {
                        Some(read) => Some(read),
                        None => return,
                    }
                }
                Some((blocked, target)) => {
                    // Under load the held-back partitions' entries arrive
                    // within a moment and bound the head without a
                    // question. Past PROBE_DELAY since the hold began (not
                    // since the last read: a steady trickle must not put
                    // the question off for ever), ask them whether they
                    // have anything unread; if not, their next entries are
                    // made to sort after everything queued.
                    // Partitions that have been quiet a while are asked at
                    // once: waiting for them would only add latency.
                    let quiet = blocked.iter().all(|&p| merge.quiet(p, QUIET));
                    let due = *probe_due.get_or_insert_with(|| {
                        Instant::now() + if quiet { Duration::ZERO } else { PROBE_DELAY }
                    });
                    if Instant::now() < due {
                        match tokio::time::timeout_at(due.into(), rx.recv()).await {
                            Ok(Some(read)) => Some(read),
                            Ok(None) => return,
                            Err(_) => None,
                        }
                    } else {
                        let probed = self.probe(blocked, *target, &mut merge).await;
                        probe_due = Some(
                            Instant::now()
                                + match probed {
                                    Probed::Bounded => Duration::ZERO,
                                    Probed::Unread => PROBE_AGAIN,
                                    Probed::Failed => PROBE_BACKOFF,
                                },
                        );
                        match rx.try_recv() {
                            Ok(read) => Some(read),
                            Err(mpsc::error::TryRecvError::Disconnected) => return,
                            Err(mpsc::error::TryRecvError::Empty) => None,
                        }
                    }
                }
            };
            if applier.is_closed() {
                return;
            }
            let mut next = read;
            let mut caught_up = Vec::new();
            while let Some(read) = next.take() {
                match read {
                    Read::Entries { entries, seen } => {
                        for entry in entries {
                            merge.push(entry);
                        }
                        for (p, n) in seen {
                            merge.seen(p, n);
                        }
                    }
                    Read::Reset {
                        partition,
                        last,
                        got,
                    } => {
                        merge.reset(partition, last, got);
                        // Counters of the old log mean nothing now.
                        for (_, targets) in &mut pending_caught_up {
                            for (p, n) in targets.iter_mut() {
                                if *p == partition {
                                    *n = 0;
                                }
                            }
                        }
                    }
                    Read::CaughtUp(i) => caught_up.push(i),
                }
                next = rx.try_recv().ok();
            }
            let (ready, blocked) = merge.ready();
            if !ready.is_empty() {
                // Progress: a new hold waits PROBE_DELAY afresh.
                probe_due = None;
            }
            self.apply(&applier, ready).await;
            // The readers of the Redis it waits for read on at once.
            for (i, instance) in self.instances.iter().enumerate() {
                let wanted = blocked.as_ref().is_some_and(|(partitions, _)| {
                    partitions.iter().any(|&p| self.instance_of(p) == i)
                });
                if instance.wanted.swap(wanted, Ordering::AcqRel) != wanted && wanted {
                    instance.drained.notify_waiters();
                }
            }
            match blocked {
                Some((partitions, target)) => {
                    let since = *stuck_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > STALL {
                        let on: Vec<String> = partitions
                            .iter()
                            .map(|&p| {
                                format!(
                                    "{p} (Redis at {})",
                                    self.instances[self.instance_of(p)].url
                                )
                            })
                            .collect();
                        self.set_merge_fault(format!(
                            "delivery has waited {:?} for partitions {} to answer",
                            since.elapsed(),
                            on.join(", ")
                        ));
                    }
                    stuck = Some((partitions, target));
                }
                None => {
                    stuck = None;
                    stuck_since = None;
                    self.set_merge_fault(String::new());
                }
            }
            // Caught up once what was read before is applied.
            for i in caught_up {
                let targets = self.instances[i]
                    .partitions
                    .iter()
                    .map(|&p| (p, merge.pushed(p)))
                    .collect::<Vec<_>>();
                pending_caught_up.push((i, targets));
            }
            let applied = self.applied.borrow().clone();
            let (done, waiting): (Vec<_>, Vec<_>) = pending_caught_up
                .drain(..)
                .partition(|(_, targets)| targets.iter().all(|&(p, n)| applied[p] >= n));
            pending_caught_up = waiting;
            for (i, _) in done {
                let instance = &self.instances[i];
                instance.caught_up.store(true, Ordering::Relaxed);
                tracing::info!(
                    node = %self.config.node_id,
                    redis = %instance.url,
                    applied = self.stats.applied.load(Ordering::Relaxed),
                    "caught up with the cluster log"
                );
            }
        }
    }

    /// A stalled merge shows on `/readyz` (empty: not stalled).
    pub(super) fn set_merge_fault(&self, reason: String) {
        let mut fault = self.merge_fault.lock();
        if reason.is_empty() {
            if fault.take().is_some() {
                tracing::info!(node = %self.config.node_id, "delivery goes on");
            }
            return;
        }
        if fault.is_none() {
            tracing::error!(node = %self.config.node_id, %reason, "cluster log");
        }
        *fault = Some(reason);
    }

    /// Ask each Redis (all at once) whether the partitions in `stuck` have
    /// anything unread; those that have not get their clock raised to
    /// `target` (the last queued entry's), so their next entries sort after
    /// everything queued whatever the Redis clocks say, and are bounded in
    /// `merge`.
    pub(super) async fn probe(&self, stuck: &[usize], target: u64, merge: &mut Merge) -> Probed {
        let asks = (0..self.instances.len()).filter_map(|i| {
            let asked: Vec<usize> = stuck
                .iter()
                .copied()
                .filter(|&p| self.instance_of(p) == i)
                .collect();
            if asked.is_empty() {
                return None;
            }
            let mut invocation = self.scripts.probe.prepare_invoke();
            invocation.arg(target);
            for &p in &asked {
                invocation
                    .key(&self.parts[p].counter)
                    .key(&self.parts[p].clock)
                    .arg(merge.last_read(p));
            }
            Some(async move {
                self.stats.probes.fetch_add(1, Ordering::Relaxed);
                let answer = tokio::time::timeout(PROBE_TIMEOUT, self.invoke(i, &invocation)).await;
                (asked, answer)
            })
        });
        let answers = futures_util::future::join_all(asks).await;
        let mut probed = Probed::Unread;
        let mut failed = false;
        for (asked, answer) in answers {
            let Ok(Ok(value)) = answer else {
                failed = true;
                continue;
            };
            let clocks: Vec<u64> = redis::from_redis_value(&value).unwrap_or_default();
            for (&p, &clock) in asked.iter().zip(&clocks) {
                if clock > 0 {
                    merge.bound(p, clock + 1);
                    probed = Probed::Bounded;
                }
            }
        }
        if failed && matches!(probed, Probed::Unread) {
            Probed::Failed
        } else {
            probed
        }
    }

    pub(super) async fn apply(&self, applier: &Applier, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        if let Some(delay) = apply_delay() {
            tokio::time::sleep(delay).await;
        }
        let mut tops: Vec<(usize, u64)> = Vec::new();
        let mut page = Vec::with_capacity(entries.len());
        let mut count = 0;
        let mut per_instance = vec![0u64; self.instances.len()];
        for entry in entries {
            if let Some((last, got)) = entry.gap {
                // Store what came before, then drop the replica: the reset
                // takes its place in the order.
                self.apply_page(applier, std::mem::take(&mut page), &mut tops, &mut count)
                    .await;
                self.log_reset(entry.partition, last, got);
            }
            if entry.n > 0 {
                if let Some((update, _)) = &entry.update {
                    self.recent.record(entry.partition, entry.n, &update.id);
                }
                tops.push((entry.partition, entry.n));
                count += 1;
                per_instance[self.instance_of(entry.partition)] += 1;
            }
            if let Some(update) = entry.update {
                page.push(update);
            }
        }
        self.apply_page(applier, page, &mut tops, &mut count).await;
        for (instance, applied) in self.instances.iter().zip(per_instance) {
            if applied > 0 {
                instance.unapplied.fetch_sub(applied, Ordering::AcqRel);
                instance.drained.notify_waiters();
            }
        }
    }

    pub(super) async fn apply_page(
        &self,
        applier: &Applier,
        page: Vec<(Arc<Update>, bool)>,
        tops: &mut Vec<(usize, u64)>,
        count: &mut u64,
    ) {
        if !page.is_empty() && !apply_page(applier, page).await {
            self.apply_failed();
        }
        if !tops.is_empty() {
            self.applied.send_modify(|applied| {
                for (p, n) in tops.drain(..) {
                    applied[p] = n;
                }
            });
        }
        self.stats
            .applied
            .fetch_add(std::mem::take(count), Ordering::Relaxed);
    }

    /// The log does not continue where this node left it (`last` was
    /// the last counter read from a partition, `got` what the log says now): Redis was
    /// flushed or restored, or this node fell behind the log's cap. History
    /// is dropped, so resumes from before answer `earliest` instead of
    /// silently skipping what is gone.
    pub(super) fn log_reset(&self, partition: usize, last: u64, got: u64) {
        self.stats.resets.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            node = %self.config.node_id,
            partition,
            last_applied = last,
            log_says = got,
            "the cluster log does not continue where this node left it (Redis flushed or \
             restored, or this node fell behind its cap): history before this point is \
             dropped, so resumes from before answer earliest"
        );
        self.forget_history();
        // Counters of the old log mean nothing in the new one.
        self.recent.forget(partition);
        self.applied.send_modify(|applied| applied[partition] = 0);
    }

    /// Entries read could not be stored and delivered (a committer panic,
    /// say): this node now has a gap, so it is treated like a reset rather
    /// than serving a history with a hole.
    pub(super) fn apply_failed(&self) {
        tracing::error!(
            node = %self.config.node_id,
            "log entries could not be applied; dropping history so no resume skips them"
        );
        self.stats.resets.fetch_add(1, Ordering::Relaxed);
        self.forget_history();
    }

    /// The log was reset or this node missed part of it: drop the replica,
    /// so no resume silently skips what is gone (it answers `earliest`).
    /// Called between runs, each of which the committer has finished.
    pub(super) fn forget_history(&self) {
        if let Err(e) = self.replica.discard_all() {
            tracing::error!(error = %e, "could not drop history after a log reset");
        }
    }
}
