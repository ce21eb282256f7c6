//! Update history: what lets a subscriber that dropped off resume exactly
//! where it left off (`Last-Event-ID`).
//!
//! The hub talks to history only through [`HistoryStore`], so the in-memory
//! ring of this module and the durable stores of later work are
//! interchangeable. Every appended update gets a sequence number, strictly
//! increasing; the hub uses it to hand a resuming subscriber over from replay
//! to live delivery without a gap or a duplicate (see `hub::Hub::subscribe`).

mod memory;

pub use memory::MemoryHistory;

use std::sync::Arc;

use crate::hub::Update;

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

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("an update with id {0:?} already exists in history; ids must be unique")]
    DuplicateId(String),
    #[error("history storage failed: {0}")]
    Storage(String),
}

/// A store of recent updates, in publish order.
pub trait HistoryStore: Send + Sync + 'static {
    /// Store an update; returns its sequence number. Called by the hub with
    /// its publish order lock held, so appends are never concurrent.
    fn append(&self, update: Arc<Update>) -> Result<u64, HistoryError>;

    /// Sequence number and id of the newest update (`0` and `None` when
    /// empty).
    fn head(&self) -> (u64, Option<String>);

    /// The updates after `from`, up to and including sequence `upto`.
    fn replay(&self, from: &ResumeFrom, upto: u64) -> Result<Replay, HistoryError>;

    /// How many updates are held.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
