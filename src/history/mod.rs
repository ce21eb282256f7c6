//! Update history: what lets a subscriber that dropped off resume exactly
//! where it left off (`Last-Event-ID`).
//!
//! The hub talks to history only through [`HistoryStore`], so the in-memory
//! ring ([`MemoryHistory`]) and the embedded durable store ([`DiskHistory`],
//! the default of `herald serve`) are interchangeable. Every appended update
//! gets a sequence number, strictly increasing and contiguous; the hub uses
//! it to hand a resuming subscriber over from replay to live delivery
//! without a gap or a duplicate (see `hub::Hub::subscribe`).
//!
//! Appends come in batches from the hub's single committer thread: one
//! batch is one durable write (one `fsync` on disk, of a journal frame),
//! shared by every publisher whose update is in it (group commit).

mod disk;
mod files;
mod index;
mod journal;
mod memory;
#[cfg(test)]
mod power_loss;
pub(crate) mod record;
#[cfg(test)]
mod simdisk;

pub use disk::{DiskHistory, Durability};
pub use memory::MemoryHistory;

use std::sync::Arc;
use std::time::Duration;

use crate::update::Update;

/// Where a resuming subscriber wants to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeFrom {
    /// Everything the history still holds (`Last-Event-ID: earliest`).
    Earliest,
    /// Everything after the update with this id.
    After(String),
}

/// The result of a replay request.
#[derive(Debug, Default)]
pub struct Replay {
    /// The missed updates, oldest first.
    pub updates: Vec<Arc<Update>>,
    /// False when the requested id is unknown (never seen, or already
    /// discarded by retention): the subscriber then receives nothing from
    /// history, and the response tells it where the hub stands.
    pub found: bool,
}

/// How much history to keep. Both limits apply; `0` / `None` disables one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many updates (`0` keeps none: no resume).
    pub max_len: usize,
    /// Drop updates older than this.
    pub max_age: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("an update with id {0:?} already exists in history; ids must be unique")]
    DuplicateId(String),
    #[error("history storage failed: {0}")]
    Storage(String),
    #[error("history record {seq} is damaged: {reason}")]
    Corrupt { seq: u64, reason: String },
}

/// The outcome of appending one update of a batch: its sequence number, or
/// why it was refused (the others of the batch are unaffected).
pub type AppendResult = Result<u64, HistoryError>;

/// A store of recent updates, in publish order.
pub trait HistoryStore: Send + Sync + 'static {
    /// Store a batch of updates, in order; on return each stored update is
    /// as durable as the store promises (on disk, for the durable store in
    /// its default mode). Called only by the hub's committer thread, so
    /// appends are never concurrent. The outer error means nothing of the
    /// batch was stored.
    fn append_batch(&self, updates: &[Arc<Update>]) -> Result<Vec<AppendResult>, HistoryError>;

    /// Sequence number and id of the newest update (`0` and `None` when
    /// empty).
    fn head(&self) -> (u64, Option<String>);

    /// Sequence number of the update with this id, while history holds it.
    fn lookup(&self, id: &str) -> Result<Option<u64>, HistoryError>;

    /// Sequence number of the oldest update held (`head + 1` when empty).
    fn first_seq(&self) -> u64;

    /// Up to `max` updates with sequence numbers in `start..=upto`, oldest
    /// first, each with its sequence number. Sequence numbers are
    /// contiguous, so a first entry after `start` means retention removed
    /// what the caller asked for.
    fn read_range(
        &self,
        start: u64,
        upto: u64,
        max: usize,
    ) -> Result<Vec<(u64, Arc<Update>)>, HistoryError>;

    /// The updates after `from`, up to and including sequence `upto`, read
    /// whole. Streams read page by page instead (`hub::stream`); this is for
    /// tools and tests.
    fn replay(&self, from: &ResumeFrom, upto: u64) -> Result<Replay, HistoryError> {
        let start = match from {
            ResumeFrom::Earliest => self.first_seq(),
            ResumeFrom::After(id) => match self.lookup(id)? {
                Some(seq) => seq + 1,
                None => return Ok(Replay::default()),
            },
        };
        let mut updates = Vec::new();
        let mut next = start;
        while next <= upto {
            let page = self.read_range(next, upto, 4096)?;
            let Some((last, _)) = page.last() else { break };
            next = last + 1;
            updates.extend(page.into_iter().map(|(_, u)| u));
        }
        Ok(Replay {
            updates,
            found: true,
        })
    }

    /// How many updates are held.
    fn len(&self) -> usize;

    /// Bytes the held updates take, for `/metrics`: the store's file on
    /// disk, or the events in memory.
    fn bytes(&self) -> u64 {
        0
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Enforce the age limit, a bounded amount of work at a time so that
    /// publishing is never stalled; returns true when more remains to do.
    fn trim(&self) -> Result<bool, HistoryError> {
        Ok(false)
    }

    /// Check that the store can write again after a failure (and reopen
    /// it if that is what it takes); called between batches while the hub
    /// is marked faulty, so it recovers by itself when the fault goes away.
    fn probe(&self) -> Result<(), HistoryError> {
        Ok(())
    }

    /// Make everything appended so far durable (for relaxed durability:
    /// called periodically and at shutdown).
    fn flush(&self) -> Result<(), HistoryError> {
        Ok(())
    }

    /// Drop everything held (cluster mode: the log this replica mirrors
    /// was reset), keeping sequence numbers going up. Resumes from an id
    /// dropped here answer `earliest`.
    fn discard_all(&self) -> Result<(), HistoryError> {
        Err(HistoryError::Storage(
            "this history cannot be discarded".into(),
        ))
    }

    /// Durable writes (`fsync`s) so far, for `/metrics`: with group commit
    /// there are far fewer of them than publishes.
    fn syncs(&self) -> u64 {
        0
    }
}

/// Milliseconds since the Unix epoch, the timestamp kept with each update
/// for age-based retention.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
