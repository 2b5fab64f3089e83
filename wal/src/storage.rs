//! Where the WAL's bytes live: the files, the journal's state, and the [`Storage`]
//! trait that lets crash tests put them in memory (keeping written and synced bytes
//! apart) without the storage engine's types in the crate's API.

use std::path::{Path, PathBuf};

use redb::Database;

use crate::journal::{self, Journal};
#[cfg(feature = "failpoints")]
use crate::{failpoint, faults};
use crate::{CommitError, OpenError, WalOptions};

/// Bytes under the WAL: a file, or for crash tests memory that can lose what was never
/// synced. The same operations as a file: all of it is called from one thread at a
/// time per file.
#[allow(clippy::len_without_is_empty)] // a file's length, not a collection's
pub trait Storage: std::fmt::Debug + Send + Sync + 'static {
    /// Current length in bytes.
    fn len(&self) -> std::io::Result<u64>;
    /// Fill `out` with the bytes at `offset` (within the length).
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()>;
    /// Grow (with zeros) or shrink to `len`.
    fn set_len(&self, len: u64) -> std::io::Result<()>;
    /// Make everything written so far durable.
    fn sync_data(&self) -> std::io::Result<()>;
    /// Write `data` at `offset`, growing the length if needed.
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()>;
}

/// A [`Storage`] as the engine's backend.
#[derive(Debug)]
pub(crate) struct Backend<S>(pub(crate) S);

impl<S: Storage> redb::StorageBackend for Backend<S> {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.0.write(offset, data)
    }
}

/// The journal and what belongs to it.
#[derive(Debug)]
pub(crate) struct JournalState {
    pub(crate) journal: Journal,
    pub(crate) path: PathBuf,
    /// Number of the last frame committed (or checkpointed).
    pub(crate) lsn: u64,
    /// A write or sync failed: commits fail until [`crate::Wal::reopen`].
    pub(crate) broken: bool,
}

impl JournalState {
    /// A write or sync failed, here or in a detached sync: commits fail until
    /// [`crate::Wal::reopen`].
    pub(crate) fn is_broken(&self) -> bool {
        self.broken || self.journal.sync_failed()
    }

    pub(crate) fn new(file: Box<dyn redb::StorageBackend>, path: PathBuf) -> Self {
        Self {
            journal: Journal::new(file),
            path,
            lsn: 0,
            broken: false,
        }
    }
}

pub(crate) fn build_database(options: &WalOptions) -> redb::Builder {
    let mut builder = redb::Builder::new();
    builder.set_cache_size(options.cache_size);
    // Crash tests abort in the middle of the repair that follows an unclean stop.
    #[cfg(feature = "failpoints")]
    builder.set_repair_callback(|_| failpoint("wal-during-repair"));
    builder
}

pub(crate) fn open_database(path: &Path, options: &WalOptions) -> Result<Database, OpenError> {
    let builder = build_database(options);
    // Crash tests make fsync slow or fail through a control file (see `faults`).
    #[cfg(feature = "failpoints")]
    if let Some(control) = faults::control_file() {
        let file = open_rw(path)?;
        let backend = faults::FaultyBackend::new(file, control)
            .map_err(|e| OpenError::from_database(path, e))?;
        return builder
            .create_with_backend(backend)
            .map_err(|e| OpenError::from_database(path, e));
    }
    builder
        .create(path)
        .map_err(|e| OpenError::from_database(path, e))
}

pub(crate) fn broken_journal(path: &Path) -> CommitError {
    std::io::Error::other(format!(
        "an earlier write or sync of {} failed; the WAL must be reopened",
        path.display()
    ))
    .into()
}

pub(crate) fn sync_journal(j: &mut JournalState) -> Result<(), CommitError> {
    j.journal.sync().map_err(|e| {
        j.broken = true;
        e.into()
    })
}

/// Open (or create) a file for reading and writing.
fn open_rw(path: &Path) -> Result<std::fs::File, OpenError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| OpenError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// Open (or create) the journal file when the options ask for one.
pub(crate) fn open_journal(
    dir: &Path,
    options: &WalOptions,
) -> Result<Option<JournalState>, OpenError> {
    if !options.journal {
        return Ok(None);
    }
    let path = dir.join(journal::FILE_NAME);
    let file = open_rw(&path)?;
    let locked = |e: redb::DatabaseError| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => OpenError::Locked { path: path.clone() },
        e => OpenError::from_database(&path, e),
    };
    #[cfg(feature = "failpoints")]
    if let Some(control) = faults::control_file() {
        let backend = faults::FaultyBackend::new(file, control).map_err(locked)?;
        return Ok(Some(JournalState::new(Box::new(backend), path)));
    }
    let backend = redb::backends::FileBackend::new(file).map_err(locked)?;
    Ok(Some(JournalState::new(Box::new(backend), path)))
}
