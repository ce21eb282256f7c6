//! The files the durable history writes, behind one seam: the real ones
//! (always, in `herald serve`), or in tests a simulated disk
//! (`simdisk`) that records every write and every sync, so a test can build
//! exactly what a power cut would leave and open it again.
//!
//! `kill -9` keeps the kernel's page cache, so a test that kills the
//! process never sees an unsynced write vanish; a power cut does. Every
//! byte of history (redb's pages through its `StorageBackend`, the journal
//! through [`JournalFile`]) goes through here, so the simulated disk sees
//! all of it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use redb::{Database, DatabaseError};

/// Where the history's files live.
pub trait Files: Send + Sync + 'static {
    /// Open (or create) the redb database at `path`.
    fn open_db(&self, path: &Path) -> Result<Database, DatabaseError>;
    /// Open (or create) the journal at `path`.
    fn open_journal(&self, path: &Path) -> io::Result<Box<dyn JournalFile>>;
    fn exists(&self, path: &Path) -> bool;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Rename `from` to `to` (durable once the directory is synced).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Make the directory's entries durable (a file just created in it is
    /// not surely there after a power cut until this returns).
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
}

/// The journal's file: positioned writes, and the syncs that make them
/// durable.
pub trait JournalFile: Send + Sync {
    fn read_all(&mut self) -> io::Result<Vec<u8>>;
    fn write_all_at(&self, bytes: &[u8], offset: u64) -> io::Result<()>;
    /// `fdatasync`: the data written so far is durable.
    fn sync_data(&self) -> io::Result<()>;
    /// `fsync`: data and metadata (the length) are durable.
    fn sync_all(&self) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Bytes still free on the device it lives on, when known.
    fn available(&self) -> Option<u64> {
        None
    }
}

/// The real file system.
pub struct RealFiles;

impl Files for RealFiles {
    fn open_db(&self, path: &Path) -> Result<Database, DatabaseError> {
        Database::create(path)
    }

    fn open_journal(&self, path: &Path) -> io::Result<Box<dyn JournalFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(Box::new(file))
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
}

impl JournalFile for File {
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn write_all_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, bytes, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn sync_all(&self) -> io::Result<()> {
        File::sync_all(self)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn available(&self) -> Option<u64> {
        use std::os::fd::AsRawFd;
        let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: fstatvfs fills `stat` for an open descriptor, and it is
        // read only when the call succeeded.
        let ok = unsafe { libc::fstatvfs(self.as_raw_fd(), stat.as_mut_ptr()) } == 0;
        ok.then(|| {
            // SAFETY: initialised by the successful call above.
            let stat = unsafe { stat.assume_init() };
            // The fields are `c_ulong`: u64 here, u32 on 32-bit targets.
            #[allow(clippy::unnecessary_cast)]
            (stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64)
        })
    }
}
