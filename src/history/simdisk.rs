//! A simulated disk for tests: what a power cut leaves.
//!
//! Every file keeps the content it had at its last sync (`durable`: a
//! power cut keeps that for sure), what reads see now (`current`), and the
//! changes made since the last sync, in order (`pending`). [`Image::crash`]
//! builds the disk a power cut at that instant could leave: the durable
//! content, then each pending change applied, dropped, or torn (each
//! 512-byte sector of a write kept or not), chosen by a seeded random
//! generator; a file whose directory was never synced after it was created
//! may be gone altogether.
//!
//! A watcher sees the disk before every write and every sync (the points a
//! power cut can fall between), so a test takes its crash points there. A
//! fault switch makes writes or syncs fail, as a full or failing device
//! does.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::Rng;
use redb::{Database, DatabaseError, StorageBackend};

use super::files::{Files, JournalFile};

/// A sector: the unit a torn write keeps or loses.
const SECTOR: usize = 512;

#[derive(Clone, Debug)]
enum Change {
    Write { offset: u64, bytes: Arc<Vec<u8>> },
    SetLen(u64),
}

#[derive(Clone, Debug, Default)]
struct SimFile {
    durable: Arc<Vec<u8>>,
    current: Vec<u8>,
    pending: Vec<Change>,
    /// Its directory entry survives a power cut.
    entry_durable: bool,
}

fn apply(content: &mut Vec<u8>, change: &Change) {
    match change {
        Change::Write { offset, bytes } => {
            let end = *offset as usize + bytes.len();
            if content.len() < end {
                content.resize(end, 0);
            }
            content[*offset as usize..end].copy_from_slice(bytes);
        }
        Change::SetLen(len) => content.resize(*len as usize, 0),
    }
}

/// Where a power cut could fall: just before this operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    Write,
    Sync,
}

/// What the watcher is given.
type Watcher = Box<dyn FnMut(Point, &SimDisk) + Send>;

#[derive(Default)]
struct State {
    files: BTreeMap<PathBuf, SimFile>,
    /// Writes (syncs) that still succeed; `None`: all of them.
    writes_left: Option<u64>,
    syncs_left: Option<u64>,
    /// Changes that make a file longer (a full disk refuses those first).
    grows_left: Option<u64>,
    writes: u64,
    syncs: u64,
}

/// Take one from a budget: false when it is spent (the operation fails).
fn spend(left: &mut Option<u64>) -> bool {
    match left {
        None => true,
        Some(0) => false,
        Some(n) => {
            *n -= 1;
            true
        }
    }
}

/// The disk; clones share it.
#[derive(Clone, Default)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
    watcher: Arc<Mutex<Option<Watcher>>>,
}

impl std::fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDisk").finish()
    }
}

/// The disk at one instant: per file, its durable content and the changes
/// since.
#[derive(Clone)]
pub struct Image {
    files: BTreeMap<PathBuf, SimFile>,
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// Call `watcher` before every write and sync, with the disk as it is.
    pub fn watch(&self, watcher: impl FnMut(Point, &SimDisk) + Send + 'static) {
        *self.watcher.lock() = Some(Box::new(watcher));
    }

    pub fn unwatch(&self) {
        self.watcher.lock().take();
    }

    /// Make every write (or sync) fail from now on, or work again.
    pub fn fail(&self, writes: bool, syncs: bool) {
        self.fail_after(writes.then_some(0), syncs.then_some(0));
    }

    /// Let this many more writes (syncs) succeed, then fail every one;
    /// `None`: they all succeed.
    pub fn fail_after(&self, writes: Option<u64>, syncs: Option<u64>) {
        let mut state = self.state.lock();
        state.writes_left = writes;
        state.syncs_left = syncs;
    }

    /// Let this many more changes that make a file longer succeed, then
    /// refuse every one with "no space left" (writes within a file's
    /// length still work, as on a full disk); `None`: all succeed.
    pub fn fail_growth_after(&self, grows: Option<u64>) {
        self.state.lock().grows_left = grows;
    }

    /// Writes and syncs so far.
    pub fn counts(&self) -> (u64, u64) {
        let state = self.state.lock();
        (state.writes, state.syncs)
    }

    /// The disk now, for [`Image::crash`].
    pub fn image(&self) -> Image {
        let state = self.state.lock();
        Image {
            files: state
                .files
                .iter()
                .map(|(p, f)| {
                    (
                        p.clone(),
                        SimFile {
                            durable: f.durable.clone(),
                            current: Vec::new(),
                            pending: f.pending.clone(),
                            entry_durable: f.entry_durable,
                        },
                    )
                })
                .collect(),
        }
    }

    fn notify(&self, point: Point) {
        // The watcher may read the disk: it is called without the state
        // lock held. It is taken out while it runs, so a watcher that
        // writes (it does not) could not recurse.
        let taken = self.watcher.lock().take();
        if let Some(mut watcher) = taken {
            watcher(point, self);
            let mut slot = self.watcher.lock();
            if slot.is_none() {
                *slot = Some(watcher);
            }
        }
    }

    fn create(&self, path: &Path) {
        self.state
            .lock()
            .files
            .entry(path.to_path_buf())
            .or_default();
    }

    fn change(&self, path: &Path, change: Change) -> io::Result<()> {
        self.notify(Point::Write);
        let mut state = self.state.lock();
        if !spend(&mut state.writes_left) {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device (simulated)",
            ));
        }
        let len = state.files.get(path).map_or(0, |f| f.current.len() as u64);
        let grows = match &change {
            Change::Write { offset, bytes } => offset + bytes.len() as u64 > len,
            Change::SetLen(new) => *new > len,
        };
        if grows && !spend(&mut state.grows_left) {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device (simulated)",
            ));
        }
        state.writes += 1;
        let file = state
            .files
            .get_mut(path)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file (simulated)"))?;
        apply(&mut file.current, &change);
        file.pending.push(change);
        Ok(())
    }

    fn sync(&self, path: &Path) -> io::Result<()> {
        self.notify(Point::Sync);
        let mut state = self.state.lock();
        if !spend(&mut state.syncs_left) {
            return Err(io::Error::other("input/output error (simulated)"));
        }
        state.syncs += 1;
        let file = state
            .files
            .get_mut(path)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file (simulated)"))?;
        file.durable = Arc::new(file.current.clone());
        file.pending.clear();
        Ok(())
    }

    fn len(&self, path: &Path) -> u64 {
        self.state
            .lock()
            .files
            .get(path)
            .map_or(0, |f| f.current.len() as u64)
    }

    fn read(&self, path: &Path, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let state = self.state.lock();
        let file = state
            .files
            .get(path)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file (simulated)"))?;
        let start = offset as usize;
        let source = file.current.get(start..start + out.len()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end (simulated)",
            )
        })?;
        out.copy_from_slice(source);
        Ok(())
    }
}

impl Image {
    /// A disk as a power cut at this instant could leave it.
    pub fn crash(&self, rng: &mut StdRng) -> SimDisk {
        // How likely an unsynced change (or sector) is to have reached the
        // platter: varied per crash, from "nothing" to "all of it".
        let keep: f64 = match rng.gen_range(0..4) {
            0 => 0.0,
            1 => 1.0,
            _ => rng.gen_range(0.1..0.9),
        };
        let mut files = BTreeMap::new();
        for (path, file) in &self.files {
            if !file.entry_durable && rng.gen_bool(0.5) {
                continue;
            }
            let mut content = (*file.durable).clone();
            for change in &file.pending {
                match change {
                    Change::Write { offset, bytes } if rng.gen_bool(0.5) => {
                        // Torn: sector by sector.
                        for (i, chunk) in bytes.chunks(SECTOR).enumerate() {
                            if rng.gen_bool(keep) {
                                let piece = Change::Write {
                                    offset: offset + (i * SECTOR) as u64,
                                    bytes: Arc::new(chunk.to_vec()),
                                };
                                apply(&mut content, &piece);
                            }
                        }
                    }
                    _ if rng.gen_bool(keep) => apply(&mut content, change),
                    _ => {}
                }
            }
            files.insert(
                path.clone(),
                SimFile {
                    durable: Arc::new(content.clone()),
                    current: content,
                    pending: Vec::new(),
                    entry_durable: true,
                },
            );
        }
        SimDisk {
            state: Arc::new(Mutex::new(State {
                files,
                ..State::default()
            })),
            watcher: Arc::default(),
        }
    }
}

impl Files for SimDisk {
    fn open_db(&self, path: &Path) -> Result<Database, DatabaseError> {
        self.create(path);
        Database::builder().create_with_backend(SimBackend {
            disk: self.clone(),
            path: path.to_path_buf(),
        })
    }

    fn open_journal(&self, path: &Path) -> io::Result<Box<dyn JournalFile>> {
        self.create(path);
        Ok(Box::new(SimJournal {
            disk: self.clone(),
            path: path.to_path_buf(),
        }))
    }

    fn exists(&self, path: &Path) -> bool {
        self.state.lock().files.contains_key(path)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        // Simplified: a removal is durable at once.
        self.state.lock().files.remove(path);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        let mut file = state
            .files
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file (simulated)"))?;
        // Under its new name only once the directory is synced.
        file.entry_durable = false;
        state.files.insert(to.to_path_buf(), file);
        Ok(())
    }

    fn create_dir_all(&self, _path: &Path) -> io::Result<()> {
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.notify(Point::Sync);
        let mut state = self.state.lock();
        if !spend(&mut state.syncs_left) {
            return Err(io::Error::other("input/output error (simulated)"));
        }
        for (path, file) in state.files.iter_mut() {
            if path.parent() == Some(dir) {
                file.entry_durable = true;
            }
        }
        Ok(())
    }
}

/// redb's file on the simulated disk.
struct SimBackend {
    disk: SimDisk,
    path: PathBuf,
}

impl std::fmt::Debug for SimBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimBackend")
            .field("path", &self.path)
            .finish()
    }
}

impl StorageBackend for SimBackend {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.disk.len(&self.path))
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.disk.read(&self.path, offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.disk.change(&self.path, Change::SetLen(len))
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.disk.sync(&self.path)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.disk.change(
            &self.path,
            Change::Write {
                offset,
                bytes: Arc::new(data.to_vec()),
            },
        )
    }
}

/// The journal on the simulated disk.
struct SimJournal {
    disk: SimDisk,
    path: PathBuf,
}

impl JournalFile for SimJournal {
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        let len = self.disk.len(&self.path) as usize;
        let mut out = vec![0; len];
        self.disk.read(&self.path, 0, &mut out)?;
        Ok(out)
    }

    fn write_all_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        self.disk.change(
            &self.path,
            Change::Write {
                offset,
                bytes: Arc::new(bytes.to_vec()),
            },
        )
    }

    fn sync_data(&self) -> io::Result<()> {
        self.disk.sync(&self.path)
    }

    fn sync_all(&self) -> io::Result<()> {
        self.disk.sync(&self.path)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.disk.change(&self.path, Change::SetLen(len))
    }
}
