//! The embedded durable history: a redb database file under the data dir,
//! fronted by an in-memory ring of the most recent updates.
//!
//! Why redb (see docs/history.md for the longer story): it is a pure-Rust,
//! copy-on-write B-tree with ACID transactions; a commit with
//! [`redb::Durability::Immediate`] is on disk when `commit` returns (data
//! pages, then one `fsync`, with checksummed commit slots so a torn commit is
//! detected and rolled back on the next open). A crash therefore loses at
//! most the batch being written, which no publisher was told succeeded.
//!
//! Tables: `updates` (sequence -> record, see [`super::record`]) and `meta`
//! (`last_seq`, so sequences never go back even when retention has emptied
//! the table; `first_seq`, where retention starts). Which held update has
//! which id (duplicates, `Last-Event-ID`) is an index in memory, rebuilt
//! from the records on every load: see [`super::index`] for why.
//!
//! Group commit: the hub's committer thread hands over every update that
//! arrived while the previous batch was being written, so one `fsync` is
//! shared by all concurrent publishers. In sync mode that `fsync` is of a
//! journal frame, not of redb's pages: see [`super::journal`] for why and
//! how a crash still loses nothing acknowledged.
//!
//! Retention puts no per-update delete on a publish: a commit only moves
//! `first_seq` (the count limit), and the updates below it leave the file
//! in ranges, a bounded step at a time, between batches
//! ([`HistoryStore::trim`], which also enforces the age limit). Until they
//! do they are invisible: every read starts at `first_seq`. So a publish
//! costs the same on a history that is full and trimming as on an empty
//! one.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};

use super::files::{Files, RealFiles};
use super::index::{HashedMap, IdHash, IdIndex};
use super::journal::Journal;
use super::memory::Ring;
use super::record;
use super::{now_ms, AppendResult, HistoryError, HistoryStore, Retention};
use crate::update::Update;

const UPDATES: TableDefinition<u64, &[u8]> = TableDefinition::new("updates");
/// Files written before the id index moved to memory have this table
/// (id -> sequence); the first load deletes it.
const LEGACY_IDS: TableDefinition<&str, u64> = TableDefinition::new("ids");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LAST_SEQ: &str = "last_seq";
/// The oldest update retention keeps (entries below it wait for the sweep).
/// Absent in older files: the oldest entry is then the start.
const FIRST_SEQ: &str = "first_seq";

/// The history file's name inside the data dir.
pub const FILE_NAME: &str = "history.redb";

/// The journal's name inside the data dir (sync mode).
pub const JOURNAL_FILE_NAME: &str = "history.journal";

/// A checkpoint (a durable redb commit, after which the journal starts
/// over) is due once the journal holds this much...
const CHECKPOINT_BYTES: u64 = 16 << 20;
/// ...or, at the next maintenance tick, once the last one is this old.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// The journal is filled with this many zero bytes when it starts over
/// (see [`Journal::truncate`]): a checkpoint's worth and some.
const JOURNAL_PREALLOC: u64 = CHECKPOINT_BYTES + (1 << 20);

/// Most recent updates kept in memory in front of the file.
const CACHE_CAPACITY: usize = 10_000;

/// Updates the age limit lets go per trim step: bounds the reading one
/// step does between two batches.
const TRIM_STEP: usize = 1_000;

/// Updates removed from the file per trim step (one range delete: it costs
/// about a page write per ~25 updates, so a step of this size takes a few
/// milliseconds between two batches).
const SWEEP_STEP: u64 = 20_000;

/// When a publish is acknowledged relative to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// A 200 answer means the update is on disk (fsync per batch, shared by
    /// concurrent publishers). The default.
    #[default]
    Sync,
    /// Answer without `fsync`; a durable commit follows at most `interval`
    /// later. A crash may lose that last interval.
    Relaxed { interval: Duration },
}

pub struct DiskHistory {
    /// Where the files are: the real file system, or a test's simulated
    /// disk.
    files: Arc<dyn Files>,
    /// Zero bytes the journal is filled with when it starts over.
    journal_prealloc: u64,
    /// `None` only while the file is being reopened after an I/O error.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    retention: Retention,
    durability: Durability,
    /// The newest updates (up to [`CACHE_CAPACITY`]), so recent resumes
    /// never read the file.
    cache: RwLock<Ring>,
    /// Updates held (`first_seq..=last_seq`).
    len: AtomicU64,
    /// Sequence number of the oldest update held. Entries below it may
    /// still be in the file, waiting for the sweep; no read returns them.
    first_seq: AtomicU64,
    /// Sequence number of the oldest entry in the file (the sweep's
    /// position).
    file_first: AtomicU64,
    /// Which held update has which id.
    index: RwLock<IdIndex>,
    last_sync: Mutex<Instant>,
    unsynced: AtomicBool,
    /// Sync mode: where each commit group is made durable (`None` in
    /// relaxed mode, and until the first load).
    journal: Mutex<Option<Journal>>,
    /// Durable writes so far (journal `fdatasync`s and durable commits).
    syncs: AtomicU64,
}

fn storage(e: impl std::fmt::Display) -> HistoryError {
    HistoryError::Storage(e.to_string())
}

/// `last_seq` as the file records it.
fn stored_last_seq(txn: &WriteTransaction) -> Result<u64, HistoryError> {
    let meta = txn.open_table(META).map_err(storage)?;
    let seq = meta
        .get(LAST_SEQ)
        .map_err(storage)?
        .map_or(0, |v| v.value());
    Ok(seq)
}

fn closed() -> HistoryError {
    HistoryError::Storage(
        "the history file is closed after an I/O error and could not be reopened yet".into(),
    )
}

/// Rewinds the journal to `start` when dropped, unless `keep` was set:
/// see [`DiskHistory::append_batch`].
struct RewindUnlessKept<'a> {
    journal: Option<&'a mut Journal>,
    start: u64,
    keep: bool,
}

impl Drop for RewindUnlessKept<'_> {
    fn drop(&mut self) {
        if let (false, Some(journal)) = (self.keep, self.journal.as_mut()) {
            journal.rewind(self.start);
        }
    }
}

/// Tests only: places in the write path where a test makes the store
/// panic, as a bug or an allocation failure would.
#[cfg(test)]
pub(crate) mod failpoints {
    use std::cell::Cell;

    /// After the journal's fdatasync, before redb's commit.
    pub const BEFORE_COMMIT: u32 = 1;
    /// The commit that stores the journal's frames on open (a full disk
    /// refuses it).
    pub const REPLAY_COMMIT: u32 = 2;

    thread_local! {
        static ARMED: Cell<u32> = const { Cell::new(0) };
    }

    /// Make the next [`hit`] of `point` on this thread panic.
    pub fn arm(point: u32) {
        ARMED.with(|a| a.set(point));
    }

    /// Panic here if armed for `point`.
    pub fn hit(point: u32) {
        if fails(point) {
            panic!("failpoint {point}");
        }
    }

    /// Whether the operation at `point` is to fail (once, if armed).
    pub fn fails(point: u32) -> bool {
        let armed = ARMED.with(|a| a.get()) == point;
        if armed {
            ARMED.with(|a| a.set(0));
        }
        armed
    }
}

/// The file's updates: sequence numbers `first_seq..=last_seq`, `len` of
/// them (`first_seq` is `last_seq + 1` when there are none).
struct Extent {
    first_seq: u64,
    last_seq: u64,
}

impl DiskHistory {
    /// Open (or create) the history under `data_dir`. A file that cannot be
    /// opened is an error naming it, never a silent fresh start.
    ///
    /// redb panics on some kinds of damage instead of returning an error;
    /// such a panic is caught here and reported like any other damage, so
    /// a damaged file is an error message and an exit code, never a crash
    /// with a backtrace.
    pub fn open(
        data_dir: &Path,
        retention: Retention,
        durability: Durability,
    ) -> Result<DiskHistory, OpenError> {
        Self::open_in(
            Arc::new(RealFiles),
            data_dir,
            retention,
            durability,
            JOURNAL_PREALLOC,
        )
    }

    /// [`DiskHistory::open`] on `files` (tests: a simulated disk, and a
    /// small journal preallocation).
    pub(crate) fn open_in(
        files: Arc<dyn Files>,
        data_dir: &Path,
        retention: Retention,
        durability: Durability,
        journal_prealloc: u64,
    ) -> Result<DiskHistory, OpenError> {
        let quiet = QuietPanics::install();
        let opened = std::panic::catch_unwind(AssertUnwindSafe(|| {
            Self::open_unguarded(files, data_dir, retention, durability, journal_prealloc)
        }));
        drop(quiet);
        opened.unwrap_or_else(|panic| {
            let reason = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            Err(OpenError::File {
                path: data_dir.join(FILE_NAME),
                reason: format!(
                    "the file is damaged (the storage engine failed while reading it: {reason})"
                ),
            })
        })
    }

    fn open_unguarded(
        files: Arc<dyn Files>,
        data_dir: &Path,
        retention: Retention,
        durability: Durability,
        journal_prealloc: u64,
    ) -> Result<DiskHistory, OpenError> {
        files
            .create_dir_all(data_dir)
            .map_err(|e| OpenError::DataDir {
                path: data_dir.to_path_buf(),
                reason: e.to_string(),
            })?;
        let path = data_dir.join(FILE_NAME);
        let fail = |reason: String| OpenError::File {
            path: path.clone(),
            reason,
        };
        // A file this open creates is not surely there after a power cut
        // until the directory that names it is synced too.
        let creates = !files.exists(&path)
            || (durability == Durability::Sync && !files.exists(&data_dir.join(JOURNAL_FILE_NAME)));
        if !files.exists(&path) {
            Self::create_file(&*files, &path).map_err(|e| OpenError::File {
                path: path.clone(),
                reason: format!("cannot create it: {e}"),
            })?;
        }
        let db = files.open_db(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => fail(
                "it is already open in another process: is another herald using this --data-dir?"
                    .into(),
            ),
            other => fail(other.to_string()),
        })?;
        let history = DiskHistory {
            files,
            journal_prealloc,
            db: RwLock::new(Some(db)),
            path: path.clone(),
            retention,
            durability,
            cache: RwLock::new(Ring::default()),
            len: AtomicU64::new(0),
            first_seq: AtomicU64::new(0),
            file_first: AtomicU64::new(0),
            index: RwLock::new(IdIndex::new(1)),
            last_sync: Mutex::new(Instant::now()),
            unsynced: AtomicBool::new(false),
            journal: Mutex::new(None),
            syncs: AtomicU64::new(0),
        };
        history.load().map_err(|e| fail(e.to_string()))?;
        if creates {
            history
                .files
                .sync_dir(data_dir)
                .map_err(|e| OpenError::DataDir {
                    path: data_dir.to_path_buf(),
                    reason: format!("cannot sync it after creating the history files: {e}"),
                })?;
        }
        Ok(history)
    }

    /// Create a new, empty database file whole or not at all: made under
    /// another name, closed (which syncs it), then renamed into place (the
    /// directory is synced once the open is done). A power cut while Herald
    /// first starts then leaves either no file (the next start makes one)
    /// or a whole one, never a half-written header that no later start
    /// could open.
    fn create_file(files: &dyn Files, path: &Path) -> Result<(), String> {
        let fresh = path.with_file_name(format!("{FILE_NAME}.new"));
        if files.exists(&fresh) {
            files.remove(&fresh).map_err(|e| e.to_string())?;
        }
        let db = files.open_db(&fresh).map_err(|e| e.to_string())?;
        drop(db);
        files.rename(&fresh, path).map_err(|e| e.to_string())
    }

    /// Create the tables if new, then fill the cache, the id index and the
    /// counters from the file. Every held record's id is read (and every
    /// cached record decoded whole), so damage is found at startup.
    fn load(&self) -> Result<(), HistoryError> {
        let txn = self.begin_write()?;
        {
            txn.open_table(UPDATES).map_err(storage)?;
            txn.open_table(META).map_err(storage)?;
        }
        // An older file's on-disk id index: the one in memory replaces it.
        txn.delete_table(LEGACY_IDS).map_err(storage)?;
        txn.commit().map_err(storage)?;
        // A journal left by a sync-mode run is replayed whatever the mode
        // now: its frames were acknowledged.
        let journal =
            if self.durability == Durability::Sync || self.files.exists(&self.journal_path()) {
                Some(self.replay_journal()?)
            } else {
                None
            };

        let txn = self.begin_read()?;
        let updates = txn.open_table(UPDATES).map_err(storage)?;
        let meta = txn.open_table(META).map_err(storage)?;
        let Extent {
            first_seq: file_first,
            last_seq,
        } = self.extent()?;
        let stored_first = meta
            .get(FIRST_SEQ)
            .map_err(storage)?
            .map_or(0, |v| v.value());
        // Count retention applies at once (a lower --history-size too);
        // the age limit at the next trim.
        let first_seq = self.retained_from(stored_first.max(file_first), last_seq);
        let cached_from = last_seq.saturating_sub(self.cache_capacity() as u64) + 1;
        // Built aside and swapped in whole: readers (streams replaying,
        // subscribers resuming) never see an empty or half-filled cache or
        // index, and a failed load leaves the previous ones, which still
        // match what was acknowledged.
        let mut cache = Ring::default();
        let mut index = self.index.read().empty_like(first_seq);
        for entry in updates.range(first_seq..=last_seq).map_err(storage)? {
            let (seq, bytes) = entry.map_err(storage)?;
            let seq = seq.value();
            let corrupt = |reason| HistoryError::Corrupt { seq, reason };
            let (id, cached) = if seq >= cached_from {
                let (update, at) = record::decode(bytes.value()).map_err(corrupt)?;
                (update.id.clone(), Some((at, update)))
            } else {
                (
                    record::decode_id_and_time(bytes.value())
                        .map_err(corrupt)?
                        .0,
                    None,
                )
            };
            let hash = index.hash(&id);
            // The same id held twice happens only when a crash undid the
            // trim that had let the older one go: the newer one is the id's.
            let collides = match resolve(&index, &id, hash, |s| id_in_table(&updates, s))? {
                IdState::Held { collided } => collided,
                IdState::Free { collides } => collides,
            };
            index.push(seq, &id, hash, collides);
            if let Some((at, update)) = cached {
                cache.push(seq, at, Arc::new(update), self.cache_capacity());
            }
        }
        // An emptied file still remembers where sequences stand.
        cache.skip_to(last_seq);
        *self.index.write() = index;
        *self.cache.write() = cache;
        self.len
            .store((last_seq + 1).saturating_sub(first_seq), Ordering::Relaxed);
        self.first_seq.store(first_seq, Ordering::Relaxed);
        self.file_first.store(file_first, Ordering::Relaxed);
        // The journal is the only copy of what it held until the file is
        // known to be whole (`extent` above: a file with a hole refuses to
        // load, naming the hole, and keeps the journal): only now is it
        // emptied, or, in relaxed mode, removed.
        if let Some(mut journal) = journal {
            if self.durability == Durability::Sync {
                journal
                    .truncate(self.journal_prealloc)
                    .map_err(|e| storage(format!("journal {}: {e}", journal.path().display())))?;
                *self.journal.lock() = Some(journal);
            } else {
                let _ = self.files.remove(&self.journal_path());
            }
        }
        Ok(())
    }

    /// Where the file's updates stand, checked: their sequence numbers must
    /// run without a hole up to `last_seq`.
    fn extent(&self) -> Result<Extent, HistoryError> {
        let txn = self.begin_read()?;
        let updates = txn.open_table(UPDATES).map_err(storage)?;
        let meta = txn.open_table(META).map_err(storage)?;
        let last_seq = meta
            .get(LAST_SEQ)
            .map_err(storage)?
            .map_or(0, |v| v.value());
        let first_seq = updates
            .first()
            .map_err(storage)?
            .map_or(last_seq + 1, |(k, _)| k.value());
        let len = updates.len().map_err(storage)?;
        if len > 0 && last_seq.checked_sub(first_seq).map(|d| d + 1) != Some(len) {
            return Err(HistoryError::Storage(format!(
                "sequence numbers are not contiguous ({len} entries from {first_seq} to {last_seq})"
            )));
        }
        Ok(Extent {
            first_seq,
            last_seq,
        })
    }

    /// Open the journal and store the frames the file does not hold yet
    /// durably (what was acknowledged since the last checkpoint before a
    /// crash). The caller empties it once the file is known to be whole.
    fn replay_journal(&self) -> Result<Journal, HistoryError> {
        let path = self.journal_path();
        let durable_seq = {
            let txn = self.begin_read()?;
            let meta = txn.open_table(META).map_err(storage)?;
            let seq = meta
                .get(LAST_SEQ)
                .map_err(storage)?
                .map_or(0, |v| v.value());
            seq
        };
        let (journal, pending) = Journal::open_in(&*self.files, &path, durable_seq)
            .map_err(|e| storage(format!("journal {}: {e}", path.display())))?;
        if let Some(&(last, _)) = pending.frames.last() {
            let mut txn = self.begin_write()?;
            txn.set_durability(redb::Durability::Immediate)
                .map_err(storage)?;
            {
                let mut updates = txn.open_table(UPDATES).map_err(storage)?;
                for (seq, bytes) in &pending.frames {
                    record::decode_id_and_time(bytes).map_err(|reason| HistoryError::Corrupt {
                        seq: *seq,
                        reason: format!("in the journal: {reason}"),
                    })?;
                    updates.insert(*seq, bytes.as_slice()).map_err(storage)?;
                }
                let mut meta = txn.open_table(META).map_err(storage)?;
                meta.insert(LAST_SEQ, last).map_err(storage)?;
            }
            #[cfg(test)]
            if failpoints::fails(failpoints::REPLAY_COMMIT) {
                return Err(storage("no space left on device (failpoint)"));
            }
            txn.commit().map_err(storage)?;
            tracing::info!(
                updates = pending.frames.len(),
                last_seq = last,
                "history: stored the journaled updates of the last run"
            );
        }
        Ok(journal)
    }

    fn journal_path(&self) -> PathBuf {
        self.path.with_file_name(JOURNAL_FILE_NAME)
    }

    /// Make everything journaled durable in the file itself (a durable
    /// commit, which also covers every non-durable one before it), then
    /// start the journal over.
    pub(crate) fn checkpoint(&self) -> Result<(), HistoryError> {
        let (txn, synced) = self.begin(true)?;
        txn.commit().map_err(storage)?;
        self.committed(synced);
        if let Some(journal) = self.journal.lock().as_mut() {
            journal.reset();
        }
        Ok(())
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction, HistoryError> {
        match &*self.db.read() {
            Some(db) => db.begin_read().map_err(storage),
            None => Err(closed()),
        }
    }

    fn begin_write(&self) -> Result<WriteTransaction, HistoryError> {
        match &*self.db.read() {
            Some(db) => db.begin_write().map_err(storage),
            None => Err(closed()),
        }
    }

    /// Prove the file takes a durable write: rewrite `last_seq` with an
    /// fsync.
    fn probe_write(&self) -> Result<(), HistoryError> {
        let (txn, synced) = self.begin(true)?;
        // Only what the file holds. The cache can be ahead of it (a reopen
        // rolled the file back to its last durable commit and the journal
        // still holds the rest): writing the cache's number would claim
        // updates the file does not have, and a restart would then skip
        // their journal frames as already stored.
        let last_seq = stored_last_seq(&txn)?;
        {
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert(LAST_SEQ, last_seq).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        self.committed(synced);
        Ok(())
    }

    /// After an I/O error redb refuses every later operation until the
    /// file is closed and opened again (which also rolls back a torn
    /// commit). Counters and cache are then rebuilt from what the file
    /// holds, which is exactly what was acknowledged.
    fn reopen(&self) -> Result<(), HistoryError> {
        let mut slot = self.db.write();
        // The old handles must be gone before the files can be opened again.
        drop(slot.take());
        *self.journal.lock() = None;
        let db = self.files.open_db(&self.path).map_err(storage)?;
        *slot = Some(db);
        drop(slot);
        if let Err(e) = self.load() {
            // Half loaded (the journal not replayed, say): close it again,
            // so nothing is written to it and the next probe retries the
            // whole reopen, replay included.
            *self.journal.lock() = None;
            self.db.write().take();
            return Err(e);
        }
        Ok(())
    }

    fn cache_capacity(&self) -> usize {
        CACHE_CAPACITY.min(self.retention.max_len)
    }

    /// The file backing this store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn begin(&self, force_sync: bool) -> Result<(WriteTransaction, bool), HistoryError> {
        let mut txn = self.begin_write()?;
        let sync = force_sync
            || match self.durability {
                // The journal makes each group durable; redb only at
                // checkpoints.
                Durability::Sync => false,
                Durability::Relaxed { interval } => self.last_sync.lock().elapsed() >= interval,
            };
        let level = if sync {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        };
        txn.set_durability(level).map_err(storage)?;
        Ok((txn, sync))
    }

    fn committed(&self, synced: bool) {
        if synced {
            self.syncs.fetch_add(1, Ordering::Relaxed);
            *self.last_sync.lock() = Instant::now();
            self.unsynced.store(false, Ordering::Relaxed);
        } else {
            self.unsynced.store(true, Ordering::Relaxed);
        }
    }

    /// Where retention starts once the history ends at `last_seq`, given
    /// that it started at `first`: never before `first`, and at most
    /// `max_len` updates.
    fn retained_from(&self, first: u64, last_seq: u64) -> u64 {
        let by_count = (last_seq + 1).saturating_sub(self.retention.max_len as u64);
        first.max(by_count).min(last_seq + 1)
    }

    /// The id of held update `seq`, from the cache or from `updates`.
    fn id_at(
        &self,
        updates: &impl ReadableTable<u64, &'static [u8]>,
        seq: u64,
    ) -> Result<Option<String>, HistoryError> {
        if let Some(update) = self.cache.read().get(seq) {
            return Ok(Some(update.id.clone()));
        }
        id_in_table(updates, seq)
    }

    fn age_cutoff(&self) -> Option<u64> {
        self.retention
            .max_age
            .map(|age| now_ms().saturating_sub(age.as_millis() as u64))
    }

    fn read_range_from_file(
        &self,
        start: u64,
        upto: u64,
        max: usize,
    ) -> Result<Vec<(u64, Arc<Update>)>, HistoryError> {
        let txn = self.begin_read()?;
        let updates = txn.open_table(UPDATES).map_err(storage)?;
        let mut out = Vec::new();
        // Entries below the start wait for the sweep: retention let them go.
        let start = start.max(self.first_seq.load(Ordering::Relaxed));
        if start > upto {
            return Ok(out);
        }
        for entry in updates.range(start..=upto).map_err(storage)?.take(max) {
            let (seq, bytes) = entry.map_err(storage)?;
            let seq = seq.value();
            let (update, _) = record::decode(bytes.value())
                .map_err(|reason| HistoryError::Corrupt { seq, reason })?;
            out.push((seq, Arc::new(update)));
        }
        Ok(out)
    }
}

/// Whether an id is held, once the index's candidate was checked.
enum IdState {
    /// `collided`: found among the ids whose hash another held id has.
    Held { collided: bool },
    /// Not held; `collides`: another held id has its hash.
    Free { collides: bool },
}

/// Check the index's candidates for `id`, reading a candidate's id with
/// `id_at` (`None`: no such update).
fn resolve(
    index: &IdIndex,
    id: &str,
    hash: IdHash,
    id_at: impl FnOnce(u64) -> Result<Option<String>, HistoryError>,
) -> Result<IdState, HistoryError> {
    let candidates = index.candidates(id, hash);
    if candidates.collided.is_some() {
        return Ok(IdState::Held { collided: true });
    }
    let Some(seq) = candidates.by_hash else {
        return Ok(IdState::Free { collides: false });
    };
    Ok(match id_at(seq)? {
        Some(other) if other == id => IdState::Held { collided: false },
        Some(_) => IdState::Free { collides: true },
        None => {
            return Err(HistoryError::Corrupt {
                seq,
                reason: "held, but missing from the updates table".into(),
            })
        }
    })
}

/// The id of update `seq` as `updates` has it.
fn id_in_table(
    updates: &impl ReadableTable<u64, &'static [u8]>,
    seq: u64,
) -> Result<Option<String>, HistoryError> {
    let Some(bytes) = updates.get(seq).map_err(storage)? else {
        return Ok(None);
    };
    let (id, _) = record::decode_id_and_time(bytes.value())
        .map_err(|reason| HistoryError::Corrupt { seq, reason })?;
    Ok(Some(id))
}

/// An update of the batch being appended, for the index once committed.
struct Staged {
    /// Its place in the batch.
    at: usize,
    seq: u64,
    hash: IdHash,
    collides: bool,
}

impl HistoryStore for DiskHistory {
    fn append_batch(&self, batch: &[Arc<Update>]) -> Result<Vec<AppendResult>, HistoryError> {
        let now = now_ms();
        let (txn, synced) = self.begin(false)?;
        // The file's own counter too: sequence numbers must never go back,
        // whatever happened to the cache.
        let mut last_seq = self.cache.read().last_seq().max(stored_last_seq(&txn)?);
        let first_seq = self.first_seq.load(Ordering::Relaxed);
        let mut results = Vec::with_capacity(batch.len());
        let mut journal = self.journal.lock();
        if self.durability == Durability::Sync && journal.is_none() {
            return Err(closed());
        }
        let mut frames = Vec::with_capacity(if journal.is_some() { batch.len() } else { 0 });
        let mut staged: Vec<Staged> = Vec::with_capacity(batch.len());
        let mut staged_hashes: HashedMap<usize> =
            HashedMap::with_capacity_and_hasher(batch.len(), Default::default());
        let new_first;
        {
            let index = self.index.read();
            let mut updates = txn.open_table(UPDATES).map_err(storage)?;
            for (at, update) in batch.iter().enumerate() {
                let id = update.id.as_str();
                let hash = index.hash(id);
                // Earlier in this batch.
                let mut collides = false;
                if let Some(&same) = staged_hashes.get(&hash) {
                    if batch[same].id == update.id {
                        results.push(Err(HistoryError::DuplicateId(update.id.clone())));
                        continue;
                    }
                    collides = true;
                }
                match resolve(&index, id, hash, |seq| self.id_at(&updates, seq))? {
                    IdState::Held { .. } => {
                        results.push(Err(HistoryError::DuplicateId(update.id.clone())));
                        continue;
                    }
                    IdState::Free { collides: c } => collides |= c,
                }
                last_seq += 1;
                let bytes = record::encode(update, now);
                updates
                    .insert(last_seq, bytes.as_slice())
                    .map_err(storage)?;
                staged_hashes.entry(hash).or_insert(at);
                staged.push(Staged {
                    at,
                    seq: last_seq,
                    hash,
                    collides,
                });
                results.push(Ok(last_seq));
                if journal.is_some() {
                    frames.push((last_seq, bytes));
                }
            }
            // Count retention: only where the history starts moves; the
            // updates before it leave the file in ranges, between batches
            // (`trim`).
            new_first = self.retained_from(first_seq, last_seq);
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert(LAST_SEQ, last_seq).map_err(storage)?;
            if new_first != first_seq {
                meta.insert(FIRST_SEQ, new_first).map_err(storage)?;
            }
        }
        let journal_start = journal.as_ref().map(|j| j.position());
        if let Some(journal) = journal.as_mut() {
            // Durable first: until this returns nothing is acknowledged,
            // and on failure the transaction is dropped, so the numbers it
            // took are free again.
            let started = Instant::now();
            let written = journal.append(frames.iter().map(|(seq, r)| (*seq, r.as_slice())));
            crate::metrics::observe(&crate::metrics::METRICS.sync_seconds, started.elapsed());
            if let Err(e) = written {
                let _ = txn.abort();
                return Err(storage(format!(
                    "writing the journal {}: {e}",
                    journal.path().display()
                )));
            }
            self.syncs.fetch_add(1, Ordering::Relaxed);
        }
        {
            // Until the commit succeeds, the frames just written belong to
            // a batch that may yet be refused, by an error or by a panic
            // unwinding through here. Its numbers are then taken again by
            // the next batch, so its frames must never be replayed after
            // that one's: the guard rewinds the journal, and the next group
            // overwrites them, unless the commit went through.
            let mut rewind = RewindUnlessKept {
                journal: journal.as_mut(),
                start: journal_start.unwrap_or(0),
                keep: false,
            };
            #[cfg(test)]
            failpoints::hit(failpoints::BEFORE_COMMIT);
            txn.commit().map_err(storage)?;
            rewind.keep = true;
        }
        self.committed(synced);
        let checkpoint_due = journal
            .as_ref()
            .is_some_and(|j| j.len() >= CHECKPOINT_BYTES);
        drop(journal);
        if checkpoint_due {
            // The batch is durable already; a failed checkpoint only means
            // the journal keeps growing until maintenance manages one.
            if let Err(e) = self.checkpoint() {
                tracing::warn!(error = %e, "history checkpoint failed; retrying at the next maintenance");
            }
        }

        {
            let mut index = self.index.write();
            for s in &staged {
                index.push(s.seq, &batch[s.at].id, s.hash, s.collides);
            }
            index.drop_before(new_first);
        }
        self.first_seq.store(new_first, Ordering::Relaxed);
        self.len
            .store((last_seq + 1).saturating_sub(new_first), Ordering::Relaxed);
        let mut cache = self.cache.write();
        for (update, result) in batch.iter().zip(&results) {
            if let Ok(seq) = result {
                cache.push(*seq, now, update.clone(), self.cache_capacity());
            }
        }
        cache.drop_before(new_first);
        Ok(results)
    }

    fn head(&self) -> (u64, Option<String>) {
        let (seq, id) = self.cache.read().head();
        (seq, id.filter(|_| self.len.load(Ordering::Relaxed) > 0))
    }

    fn lookup(&self, id: &str) -> Result<Option<u64>, HistoryError> {
        if let Some(seq) = self.cache.read().lookup(id) {
            return Ok(Some(seq));
        }
        let candidates = {
            let index = self.index.read();
            index.candidates(id, index.hash(id))
        };
        if let Some(seq) = candidates.collided {
            return Ok(Some(seq));
        }
        let Some(seq) = candidates.by_hash else {
            return Ok(None);
        };
        // Read without the index's lock: retention may let `seq` go
        // meanwhile, which reads as not found.
        let txn = self.begin_read()?;
        let updates = txn.open_table(UPDATES).map_err(storage)?;
        let held = seq >= self.first_seq.load(Ordering::Relaxed)
            && id_in_table(&updates, seq)?.is_some_and(|other| other == id);
        Ok(held.then_some(seq))
    }

    fn first_seq(&self) -> u64 {
        self.first_seq.load(Ordering::Relaxed)
    }

    fn read_range(
        &self,
        start: u64,
        upto: u64,
        max: usize,
    ) -> Result<Vec<(u64, Arc<Update>)>, HistoryError> {
        {
            // Recent resumes are answered from memory.
            let cache = self.cache.read();
            if start >= cache.first_seq() {
                return Ok(cache.read_range(start, upto, max));
            }
        }
        self.read_range_from_file(start, upto, max)
    }

    fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed) as usize
    }

    /// The file's size (the journal beside it is preallocated, and small).
    fn bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// Between batches: the age limit moves the start past updates older
    /// than it (at most [`TRIM_STEP`] of them), then updates below the
    /// start leave the file (at most [`SWEEP_STEP`], one range delete).
    fn trim(&self) -> Result<bool, HistoryError> {
        let first_seq = self.first_seq.load(Ordering::Relaxed);
        let file_first = self.file_first.load(Ordering::Relaxed);
        let last_seq = self.cache.read().last_seq();
        let cutoff = self.age_cutoff();
        if cutoff.is_none() && file_first >= first_seq {
            return Ok(false);
        }
        let (txn, synced) = self.begin(false)?;
        let mut new_first = first_seq;
        let mut aged_more = false;
        {
            let mut updates = txn.open_table(UPDATES).map_err(storage)?;
            if let Some(cutoff) = cutoff {
                for entry in updates.range(first_seq..=last_seq).map_err(storage)? {
                    let (seq, bytes) = entry.map_err(storage)?;
                    let seq = seq.value();
                    let (_, at) = record::decode_id_and_time(bytes.value())
                        .map_err(|reason| HistoryError::Corrupt { seq, reason })?;
                    if at >= cutoff {
                        break;
                    }
                    if seq - first_seq >= TRIM_STEP as u64 {
                        aged_more = true;
                        break;
                    }
                    new_first = seq + 1;
                }
            }
            let sweep_to = new_first.min(file_first.saturating_add(SWEEP_STEP));
            if new_first == first_seq && sweep_to <= file_first {
                drop(updates);
                txn.abort().map_err(storage)?;
                return Ok(false);
            }
            if sweep_to > file_first {
                updates
                    .retain_in(file_first..sweep_to, |_, _| false)
                    .map_err(storage)?;
            }
            if new_first != first_seq {
                let mut meta = txn.open_table(META).map_err(storage)?;
                meta.insert(FIRST_SEQ, new_first).map_err(storage)?;
            }
            drop(updates);
            txn.commit().map_err(storage)?;
            self.committed(synced);
            self.file_first
                .store(sweep_to.max(file_first), Ordering::Relaxed);
        }
        if new_first != first_seq {
            self.index.write().drop_before(new_first);
            self.first_seq.store(new_first, Ordering::Relaxed);
            self.len
                .store((last_seq + 1).saturating_sub(new_first), Ordering::Relaxed);
            self.cache.write().drop_before(new_first);
        }
        Ok(aged_more || self.file_first.load(Ordering::Relaxed) < new_first)
    }

    fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    fn probe(&self) -> Result<(), HistoryError> {
        if self.probe_write().is_ok() {
            return Ok(());
        }
        self.reopen()?;
        self.probe_write()
    }

    fn flush(&self) -> Result<(), HistoryError> {
        if self.durability == Durability::Sync {
            let pending = self.journal.lock().as_ref().is_some_and(|j| j.len() > 0);
            if pending && self.last_sync.lock().elapsed() >= CHECKPOINT_INTERVAL {
                return self.checkpoint();
            }
            return Ok(());
        }
        if !self.unsynced.load(Ordering::Relaxed) {
            return Ok(());
        }
        let (txn, synced) = self.begin(true)?;
        txn.commit().map_err(storage)?;
        self.committed(synced);
        Ok(())
    }
}

/// What `herald history check` found in a history file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub path: PathBuf,
    pub updates: u64,
    pub first_seq: u64,
    pub last_seq: u64,
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.updates == 0 {
            write!(
                f,
                "{}: ok, no updates held (sequence at {})",
                self.path.display(),
                self.last_seq
            )
        } else {
            write!(
                f,
                "{}: ok, {} updates, sequence {} to {}, every record readable",
                self.path.display(),
                self.updates,
                self.first_seq,
                self.last_seq
            )
        }
    }
}

impl DiskHistory {
    /// Read every record of the history under `data_dir` (not only the
    /// recent ones startup reads), checking that sequence numbers are
    /// contiguous and every record decodes. The file must exist.
    pub fn check(data_dir: &Path) -> Result<CheckReport, OpenError> {
        let path = data_dir.join(FILE_NAME);
        let fail = |reason: String| OpenError::File {
            path: path.clone(),
            reason,
        };
        if !path.is_file() {
            return Err(fail("there is no such file (is --data-dir right?)".into()));
        }
        let history = DiskHistory::open(
            data_dir,
            Retention {
                max_len: usize::MAX,
                max_age: None,
            },
            Durability::Sync,
        )?;
        let quiet = QuietPanics::install();
        let walked = std::panic::catch_unwind(AssertUnwindSafe(|| history.walk()));
        drop(quiet);
        let (updates, first_seq, last_seq) = walked
            .map_err(|_| {
                fail("the file is damaged (the storage engine failed while reading it)".into())
            })?
            .map_err(|e| fail(e.to_string()))?;
        Ok(CheckReport {
            path: path.clone(),
            updates,
            first_seq,
            last_seq,
        })
    }

    /// Decode every record in sequence order.
    fn walk(&self) -> Result<(u64, u64, u64), HistoryError> {
        let first = self.first_seq.load(Ordering::Relaxed);
        let last = self.cache.read().last_seq();
        let mut next = first;
        let mut count = 0u64;
        while next <= last {
            let page = self.read_range_from_file(next, last, 4096)?;
            if page.is_empty() {
                break;
            }
            for (seq, _) in &page {
                if *seq != next {
                    return Err(HistoryError::Corrupt {
                        seq: next,
                        reason: format!("missing (the next record is {seq})"),
                    });
                }
                next += 1;
            }
            count += page.len() as u64;
        }
        if count != self.len.load(Ordering::Relaxed) {
            return Err(HistoryError::Storage(format!(
                "{count} records read, {} expected",
                self.len.load(Ordering::Relaxed)
            )));
        }
        Ok((count, first, last))
    }
}

/// Silences the default panic report (message and backtrace) while it
/// lives: used only around opening a file whose damage may make the storage
/// engine panic, a panic that is caught and turned into an error.
struct QuietPanics {
    previous: Option<PanicHook>,
}

type PanicHook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send + 'static>;

impl QuietPanics {
    fn install() -> QuietPanics {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        QuietPanics {
            previous: Some(previous),
        }
    }
}

impl Drop for QuietPanics {
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            std::panic::set_hook(previous);
        }
    }
}

/// Why the history could not be opened at startup.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot use data directory {path}: {reason} (check that it exists and is writable, or choose another with --data-dir)")]
    DataDir { path: PathBuf, reason: String },
    #[error("cannot open history file {path}: {reason}\n  Herald does not start over on its own, so no history is silently lost.\n  If the file is damaged, restore it from a backup, or move it aside to start with an empty history.")]
    File { path: PathBuf, reason: String },
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
            format!("data {id}"),
        ))
    }

    fn ids(r: &Replay) -> Vec<String> {
        r.updates.iter().map(|u| u.id.clone()).collect()
    }

    fn keep(max_len: usize) -> Retention {
        Retention {
            max_len,
            max_age: None,
        }
    }

    #[test]
    fn survives_reopen_with_sequences_and_ids() {
        let dir = tempfile::tempdir().unwrap();
        {
            let h = DiskHistory::open(dir.path(), keep(100), Durability::Sync).unwrap();
            let r = h.append_batch(&[up("a"), up("b"), up("a")]).unwrap();
            assert_eq!(r[0].as_ref().unwrap(), &1);
            assert_eq!(r[1].as_ref().unwrap(), &2);
            assert!(matches!(r[2], Err(HistoryError::DuplicateId(_))));
            h.append_batch(&[up("c")]).unwrap();
        }
        let h = DiskHistory::open(dir.path(), keep(100), Durability::Sync).unwrap();
        assert_eq!(h.head(), (3, Some("c".into())));
        assert_eq!(h.len(), 3);
        let r = h.replay(&ResumeFrom::After("a".into()), 3).unwrap();
        assert_eq!(ids(&r), ["b", "c"]);
        assert_eq!(r.updates[0].frame, up("b").frame);
        assert!(matches!(
            h.append_batch(&[up("b")]).unwrap()[0],
            Err(HistoryError::DuplicateId(_))
        ));
        assert_eq!(h.append_batch(&[up("d")]).unwrap()[0].as_ref().unwrap(), &4);
    }

    /// What a crash leaves: the files as they are on disk while the store
    /// is live, between checkpoints. Every appended update must be in it.
    fn crash_image(from: &Path, to: &Path) {
        for name in [FILE_NAME, JOURNAL_FILE_NAME] {
            std::fs::copy(from.join(name), to.join(name)).unwrap();
        }
    }

    #[test]
    fn a_crash_between_checkpoints_loses_no_appended_update() {
        let live = tempfile::tempdir().unwrap();
        let image = tempfile::tempdir().unwrap();
        let h = DiskHistory::open(live.path(), keep(1000), Durability::Sync).unwrap();
        h.append_batch(&[up("a"), up("b")]).unwrap();
        h.checkpoint().unwrap();
        h.append_batch(&[up("c")]).unwrap();
        h.append_batch(&[up("d"), up("e")]).unwrap();
        assert!(h.journal.lock().as_ref().unwrap().len() > 0);
        crash_image(live.path(), image.path());
        let syncs = h.syncs();
        assert_eq!(syncs, 4, "one per append (3) and the checkpoint");

        let r = DiskHistory::open(image.path(), keep(1000), Durability::Sync).unwrap();
        assert_eq!(r.head(), (5, Some("e".into())));
        let all = r.replay(&ResumeFrom::Earliest, 5).unwrap();
        assert_eq!(ids(&all), ["a", "b", "c", "d", "e"]);
        assert_eq!(all.updates[3].frame, up("d").frame);
        // Ids of replayed updates are known again (duplicates refused),
        // and numbering goes on after them.
        assert!(matches!(
            r.append_batch(&[up("c")]).unwrap()[0],
            Err(HistoryError::DuplicateId(_))
        ));
        assert_eq!(r.append_batch(&[up("f")]).unwrap()[0].as_ref().unwrap(), &6);
        drop(r);
        // The journal was emptied once its updates were in the file, so a
        // second start replays nothing twice.
        let again = DiskHistory::open(image.path(), keep(1000), Durability::Sync).unwrap();
        assert_eq!(again.head(), (6, Some("f".into())));
        assert_eq!(again.len(), 6);
    }

    #[test]
    fn a_sync_crash_image_opened_in_relaxed_mode_keeps_everything() {
        let live = tempfile::tempdir().unwrap();
        let image = tempfile::tempdir().unwrap();
        let h = DiskHistory::open(live.path(), keep(100), Durability::Sync).unwrap();
        h.append_batch(&[up("a")]).unwrap();
        h.checkpoint().unwrap();
        h.append_batch(&[up("b"), up("c")]).unwrap();
        crash_image(live.path(), image.path());
        let relaxed = Durability::Relaxed {
            interval: Duration::from_secs(1),
        };
        let r = DiskHistory::open(image.path(), keep(100), relaxed).unwrap();
        assert_eq!(r.head(), (3, Some("c".into())));
        assert!(
            !image.path().join(JOURNAL_FILE_NAME).exists(),
            "relaxed mode stores the journal's updates, then removes it"
        );
    }

    #[test]
    fn a_journal_from_another_history_is_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let h = DiskHistory::open(a.path(), keep(100), Durability::Sync).unwrap();
        h.append_batch(&[up("a"), up("b"), up("c")]).unwrap();
        // b's file ends at 0; a's journal starts at 1 and would fit, so make
        // b's file end at 5 first.
        {
            let other = DiskHistory::open(b.path(), keep(100), Durability::Sync).unwrap();
            let five: Vec<_> = (0..5).map(|i| up(&format!("x{i}"))).collect();
            other.append_batch(&five).unwrap();
        }
        h.checkpoint().unwrap();
        h.append_batch(&[up("d")]).unwrap();
        std::fs::copy(
            a.path().join(JOURNAL_FILE_NAME),
            b.path().join(JOURNAL_FILE_NAME),
        )
        .unwrap();
        // a's journal holds update 4 only; b's file ends at 5: done, nothing
        // to replay. Now make b's file end at 2 instead: a gap (3 missing).
        let err = DiskHistory::open(b.path(), keep(100), Durability::Sync).map(|_| ());
        assert!(
            err.is_ok(),
            "a journal entirely behind the file is just done"
        );
        let c = tempfile::tempdir().unwrap();
        {
            let other = DiskHistory::open(c.path(), keep(100), Durability::Sync).unwrap();
            other.append_batch(&[up("y0"), up("y1")]).unwrap();
        }
        std::fs::copy(
            a.path().join(JOURNAL_FILE_NAME),
            c.path().join(JOURNAL_FILE_NAME),
        )
        .unwrap();
        let err = DiskHistory::open(c.path(), keep(100), Durability::Sync)
            .err()
            .expect("a gap between file and journal must not be skipped")
            .to_string();
        assert!(err.contains("starts at update 4"), "{err}");
        assert!(err.contains(JOURNAL_FILE_NAME), "{err}");
    }

    #[test]
    fn count_retention_and_deep_replay_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let h = DiskHistory::open(dir.path(), keep(20_000), Durability::Sync).unwrap();
        let batch: Vec<_> = (0..25_000).map(|i| up(&format!("u{i}"))).collect();
        for chunk in batch.chunks(5_000) {
            h.append_batch(chunk).unwrap();
        }
        assert_eq!(h.len(), 20_000);
        // u4999 was discarded; u5000 is the oldest kept, beyond the cache.
        assert!(
            !h.replay(&ResumeFrom::After("u4999".into()), 25_000)
                .unwrap()
                .found
        );
        let r = h
            .replay(&ResumeFrom::After("u5000".into()), 25_000)
            .unwrap();
        assert!(r.found);
        assert_eq!(r.updates.len(), 19_999);
        assert_eq!(r.updates[0].id, "u5001");
        let r = h.replay(&ResumeFrom::Earliest, 24_000).unwrap();
        assert_eq!(r.updates.len(), 19_000);
        assert_eq!(r.updates[0].id, "u5000");
        // Ids that left history can be used again.
        assert!(h.append_batch(&[up("u0")]).unwrap()[0].is_ok());
    }

    #[test]
    fn age_retention_trims_in_steps() {
        let dir = tempfile::tempdir().unwrap();
        let h = DiskHistory::open(
            dir.path(),
            Retention {
                max_len: 100_000,
                max_age: Some(Duration::from_millis(50)),
            },
            Durability::Sync,
        )
        .unwrap();
        let batch: Vec<_> = (0..2_500).map(|i| up(&format!("u{i}"))).collect();
        h.append_batch(&batch).unwrap();
        assert!(!h.trim().unwrap(), "nothing is old yet");
        std::thread::sleep(Duration::from_millis(80));
        h.append_batch(&[up("fresh")]).unwrap();
        let mut steps = 0;
        while h.trim().unwrap() {
            steps += 1;
        }
        assert_eq!(steps, 2, "2,500 old entries in steps of {TRIM_STEP}");
        assert_eq!(h.len(), 1);
        let r = h.replay(&ResumeFrom::Earliest, u64::MAX).unwrap();
        assert_eq!(ids(&r), ["fresh"]);
        drop(h);
        let h = DiskHistory::open(dir.path(), keep(10), Durability::Sync).unwrap();
        assert_eq!(h.head(), (2_501, Some("fresh".into())));
    }

    #[test]
    fn garbage_file_is_a_clear_error_and_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE_NAME);
        std::fs::write(&file, b"this is not a database, but someone's data").unwrap();
        let err = DiskHistory::open(dir.path(), keep(10), Durability::Sync)
            .err()
            .expect("must refuse");
        let msg = err.to_string();
        assert!(msg.contains(FILE_NAME), "{msg}");
        assert!(msg.contains("move it aside"), "{msg}");
        assert_eq!(
            std::fs::read(&file).unwrap(),
            b"this is not a database, but someone's data"
        );
    }

    #[test]
    fn relaxed_durability_flushes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let h = DiskHistory::open(
                dir.path(),
                keep(10),
                Durability::Relaxed {
                    interval: Duration::from_secs(3600),
                },
            )
            .unwrap();
            h.append_batch(&[up("a")]).unwrap();
            h.append_batch(&[up("b")]).unwrap();
            h.flush().unwrap();
        }
        let h = DiskHistory::open(dir.path(), keep(10), Durability::Sync).unwrap();
        assert_eq!(h.head(), (2, Some("b".into())));
    }

    /// A probe reopens the file after an I/O error while streams keep
    /// reading: a reader may get an error (the stream then ends and the
    /// client resumes), but never an empty page or a head of 0, which
    /// would make a replay skip updates silently.
    #[test]
    fn readers_never_see_an_empty_history_while_it_is_reopened() {
        use std::sync::atomic::AtomicBool;
        let dir = tempfile::tempdir().unwrap();
        let h = Arc::new(DiskHistory::open(dir.path(), keep(100), Durability::Sync).unwrap());
        let batch: Vec<_> = (0..50).map(|i| up(&format!("u{i}"))).collect();
        h.append_batch(&batch).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (reader_history, reader_stop) = (h.clone(), stop.clone());
        let reader = std::thread::spawn(move || {
            let (mut reads, mut empty, mut head_zero) = (0, 0, 0);
            while !reader_stop.load(Ordering::Relaxed) {
                reads += 1;
                if matches!(reader_history.read_range(10, 50, 64), Ok(v) if v.is_empty()) {
                    empty += 1;
                }
                if reader_history.head().0 == 0 {
                    head_zero += 1;
                }
            }
            (reads, empty, head_zero)
        });
        for _ in 0..50 {
            h.reopen().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let (reads, empty, head_zero) = reader.join().unwrap();
        assert!(reads > 0);
        assert_eq!((empty, head_zero), (0, 0), "over {reads} reads");
        // And sequences go on where they were.
        assert_eq!(
            h.append_batch(&[up("next")]).unwrap()[0].as_ref().unwrap(),
            &51
        );
    }

    /// Review found this: a panic between the journal's fdatasync and
    /// redb's commit left the journal's position past the refused batch, so
    /// the next batch, which takes the same sequence numbers, was written
    /// after it, and on replay its first frame was out of sequence: it and
    /// everything up to the next checkpoint would be lost on a power cut.
    #[test]
    fn a_panic_before_the_commit_rewinds_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let h = DiskHistory::open(dir.path(), keep(100), Durability::Sync).unwrap();
        h.append_batch(&[up("a")]).unwrap();
        h.checkpoint().unwrap();
        failpoints::arm(failpoints::BEFORE_COMMIT);
        let panicked =
            std::panic::catch_unwind(AssertUnwindSafe(|| h.append_batch(&[up("refused")])));
        assert!(panicked.is_err(), "the failpoint fired");
        let r = h.append_batch(&[up("b"), up("c")]).unwrap();
        assert_eq!((r[0].as_ref().unwrap(), r[1].as_ref().unwrap()), (&2, &3));
        // What a power cut leaves: the file at its last durable commit
        // (update 1), the journal as written.
        let (_, pending) = Journal::open(&dir.path().join(JOURNAL_FILE_NAME), 1).unwrap();
        let replayed: Vec<(u64, String)> = pending
            .frames
            .iter()
            .map(|(seq, bytes)| (*seq, record::decode_id_and_time(bytes).unwrap().0))
            .collect();
        assert_eq!(replayed, [(2, "b".to_string()), (3, "c".to_string())]);
    }

    /// Review found this: count retention removed `a@1` in a non-durable
    /// commit, `a` was published again as update 4, and a crash brought
    /// `a@1` back from the file while the journal's replay recorded
    /// `ids[a] = 4`; trimming `a@1` then removed `ids[a]`, and a third `a`
    /// was accepted.
    #[test]
    fn an_id_published_again_after_a_trim_a_crash_undid_stays_unique() {
        let dir = tempfile::tempdir().unwrap();
        let saved = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE_NAME);
        {
            let h = DiskHistory::open(dir.path(), keep(2), Durability::Sync).unwrap();
            h.append_batch(&[up("a")]).unwrap();
        }
        // The file as it is durably with a@1 in it.
        std::fs::copy(&file, saved.path().join(FILE_NAME)).unwrap();
        {
            let h = DiskHistory::open(dir.path(), keep(2), Durability::Sync).unwrap();
            h.append_batch(&[up("b")]).unwrap();
            h.append_batch(&[up("c")]).unwrap(); // trims a@1
            let r = h.append_batch(&[up("a")]).unwrap();
            assert_eq!(r[0].as_ref().unwrap(), &4, "a is free again");
        }
        // A power cut before any checkpoint: the file as it was durably,
        // the journal as written (updates 2 to 4).
        std::fs::copy(saved.path().join(FILE_NAME), &file).unwrap();
        let h = DiskHistory::open(dir.path(), keep(2), Durability::Sync).unwrap();
        assert_eq!(h.lookup("a").unwrap(), Some(4));
        h.append_batch(&[up("d")]).unwrap(); // trims 1 to 3, a@1 among them
        assert_eq!(h.lookup("a").unwrap(), Some(4), "a@4 is still held");
        let r = h.append_batch(&[up("a")]).unwrap();
        assert!(
            matches!(r[0], Err(HistoryError::DuplicateId(_))),
            "a third a: {r:?}"
        );
    }

    /// Count retention only moves where history starts; the sweep removes
    /// the rest later. Until it does, what retention let go is invisible
    /// and its ids are free, also across a restart.
    #[test]
    fn what_retention_let_go_is_gone_before_the_sweep_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let h = DiskHistory::open(dir.path(), keep(3), Durability::Sync).unwrap();
        let batch: Vec<_> = ["a", "b", "c", "d", "e"].map(up).to_vec();
        h.append_batch(&batch).unwrap();
        assert_eq!((h.len(), h.first_seq()), (3, 3));
        assert_eq!(h.file_first.load(Ordering::Relaxed), 1, "not swept yet");
        let r = h.replay(&ResumeFrom::Earliest, 5).unwrap();
        assert_eq!(ids(&r), ["c", "d", "e"]);
        assert_eq!(h.read_range(1, 5, 10).unwrap()[0].0, 3);
        assert_eq!(h.lookup("a").unwrap(), None);
        assert_eq!(h.lookup("c").unwrap(), Some(3));
        drop(h);
        let h = DiskHistory::open(dir.path(), keep(3), Durability::Sync).unwrap();
        assert_eq!((h.len(), h.first_seq()), (3, 3));
        assert_eq!(h.lookup("b").unwrap(), None);
        // b left with a: it is free again; c is held.
        let r = h.append_batch(&[up("b"), up("c")]).unwrap();
        assert_eq!(r[0].as_ref().unwrap(), &6);
        assert!(matches!(r[1], Err(HistoryError::DuplicateId(_))), "{r:?}");
        assert!(!h.trim().unwrap(), "one step sweeps it all");
        assert_eq!(h.file_first.load(Ordering::Relaxed), 4);
        drop(h);
        // The file holds exactly what is held.
        let h = DiskHistory::open(dir.path(), keep(100), Durability::Sync).unwrap();
        let r = h.replay(&ResumeFrom::Earliest, 6).unwrap();
        assert_eq!(ids(&r), ["d", "e", "b"]);
    }

    /// A file from before the id index moved to memory has an `ids` table:
    /// it opens, its ids are found and refused as before, and the table
    /// goes.
    #[test]
    fn a_file_with_the_old_id_table_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut updates = txn.open_table(UPDATES).unwrap();
                let mut ids = txn.open_table(LEGACY_IDS).unwrap();
                for (seq, id) in [(1u64, "x"), (2, "y")] {
                    updates
                        .insert(seq, record::encode(&up(id), now_ms()).as_slice())
                        .unwrap();
                    ids.insert(id, seq).unwrap();
                }
                txn.open_table(META).unwrap().insert(LAST_SEQ, 2).unwrap();
            }
            txn.commit().unwrap();
        }
        let h = DiskHistory::open(dir.path(), keep(10), Durability::Sync).unwrap();
        assert_eq!(h.lookup("x").unwrap(), Some(1));
        let r = h.append_batch(&[up("y"), up("z")]).unwrap();
        assert!(matches!(r[0], Err(HistoryError::DuplicateId(_))), "{r:?}");
        assert_eq!(r[1].as_ref().unwrap(), &3);
        drop(h);
        let db = Database::open(&path).unwrap();
        let txn = db.begin_read().unwrap();
        assert!(txn.open_table(LEGACY_IDS).is_err(), "the old table is gone");
    }

    /// Ids published again within one batch are refused, also when the
    /// batch is large (the batch's own ids are checked by hash).
    #[test]
    fn a_large_batch_refuses_its_own_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let h = DiskHistory::open(dir.path(), keep(100_000), Durability::Sync).unwrap();
        let batch: Vec<_> = (0..5_000).map(|i| up(&format!("u{}", i % 4_000))).collect();
        let r = h.append_batch(&batch).unwrap();
        assert_eq!(r.iter().filter(|r| r.is_ok()).count(), 4_000);
        assert!(r[4_000..]
            .iter()
            .all(|r| matches!(r, Err(HistoryError::DuplicateId(_)))));
        assert_eq!(h.lookup("u3999").unwrap(), Some(4_000));
    }
}
