//! The gateway's write-ahead log: a synchronous library on [redb].
//!
//! # What it stores
//! Two files in the WAL directory: the commit journal `journal.log` (see [`journal`]:
//! each commit is appended there and `fdatasync`ed, and redb gets it without fsync),
//! and one redb file, `wal.redb`, with these tables:
//!
//! * `records_v1: u64 -> bytes` — the log. The key is the record's *sequence number*.
//! * `dead_letter_v1: u64 -> bytes` — records Kafka refused for good, keyed by their
//!   original sequence, each with the reason.
//! * `meta_v1: str -> u64` — counters that make [`Wal::stats`] O(1) and the next
//!   sequence number (see [`format`] for every key).
//! * `topic_backlog_v1: bytes -> (u64, u64)` — records and bytes waiting per MQTT
//!   topic (see [`Wal::topic_backlog`]).
//! * `mqtt_qos2_v1: u16 -> u64` — the MQTT session state kept with the records: the
//!   incoming QoS 2 exchanges stored and not yet released by the broker (see
//!   [`session`]).
//!
//! # Invariants
//! 1. A sequence number is assigned once, in append order, and never reused: the next
//!    one is persisted in `meta` in the same transaction as the append, so it survives
//!    the log emptying, restarts and crashes. Order and identity never come from wall
//!    time.
//! 2. [`Wal::commit`] with [`Durability::Immediate`] returns only after the records are
//!    on disk (fsync of the journal, or of redb without a journal), and so does
//!    [`Wal::sync`] for every earlier commit. Callers acknowledge upstream only after
//!    that return.
//! 3. A record leaves `records_v1` only through [`WriteBatch::ack_up_to`] (the caller
//!    promises that every record `<= seq` was acknowledged downstream),
//!    [`WriteBatch::dead_letter`], which moves it into `dead_letter_v1` in the same
//!    transaction, or [`WriteBatch::drop_up_to`], a drop a configured policy asked
//!    for, counted by reason in [`WalStats::dropped`] in the same transaction. Nothing
//!    else deletes a record.
//! 4. Counters in `meta_v1` change in the same transaction as the rows they count, so
//!    they are exact after any crash.
//! 5. After a crash, a prefix of the commits is visible, including every durable one:
//!    an appended batch is all there or not at all. Commits made with
//!    [`Durability::None`] and not synced since may be lost on power failure (deleted
//!    records come back and are sent again: a duplicate, never a loss; appended ones
//!    were never acknowledged upstream).
//!
//! Changing a table name, a meta key or the record encoding in [`format`] needs a
//! format version bump ([`format::FORMAT_VERSION`]).
//!
//! # Threads and locks
//! One thread commits (the gateway's WAL thread); others read and take statistics
//! concurrently. Three locks, always taken in this order, never the other way:
//! 1. `db` (read-write): read for a commit, a checkpoint and every read; write only
//!    for [`Wal::reopen`], which swaps the database and the journal;
//! 2. `writer` (mutex): what only commits use: the journal, the frame being built, the
//!    encoding buffer;
//! 3. `stats` and `recovery` (mutexes, leaves): held for a copy, nothing taken inside.
//!
//! The storage engine (redb) stays inside the crate: its types are not in the API
//! ([`Storage`] for custom backends, [`StorageError`] for its failures).

#![warn(missing_docs)]

pub mod format;
pub mod journal;
pub mod session;

mod batch;
mod commit;
mod error;
#[cfg(feature = "failpoints")]
mod faults;
mod read;
mod recover;
mod storage;
mod topics;

pub use batch::{CommitOutcome, DropReason, Dropped, WriteBatch};
pub use error::{CommitError, Error, OpenError, ReadError, StorageError};
pub use format::{DeadLetter, Record, RecordRef};
pub use session::MqttSession;
pub use storage::Storage;
pub use topics::TopicBacklog;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};

use redb::Database;

use journal::FrameBuilder;
use recover::recover;
use storage::{build_database, open_database, open_journal};
use storage::{Backend, JournalState};

/// When a commit's changes are on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Visible to readers at once, on disk after the next durable commit or
    /// [`Wal::sync`]; a power cut before that may undo it.
    None,
    /// On disk when the commit returns.
    Immediate,
}

/// File name of the redb database inside the WAL directory.
pub const FILE_NAME: &str = "wal.redb";

/// How to open a WAL.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Bytes of redb page cache.
    pub cache_size: usize,
    /// Save allocator state on each durable redb commit (each checkpoint with the
    /// journal) so that reopening after a crash is quick even with a large backlog
    /// (costs a second fsync per durable redb commit).
    pub quick_repair: bool,
    /// Make commits durable through the append-only journal (`journal.log`) instead of
    /// a durable redb commit each time. Writes far fewer bytes per commit.
    pub journal: bool,
    /// With the journal: checkpoint (one durable redb commit, then the journal is
    /// emptied) once the journal holds this many bytes. Bounds the journal's size and
    /// the replay after a crash.
    pub checkpoint_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            cache_size: 4 * 1024 * 1024,
            quick_repair: false,
            journal: true,
            checkpoint_bytes: 8 * 1024 * 1024,
        }
    }
}

/// What [`Wal::open`] replayed from the journal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Journal frames (commits) replayed into redb.
    pub frames: u64,
    /// Appended records among them.
    pub records: u64,
    /// Why the tail of the journal was ignored, when it was: the commit being written
    /// when the process stopped, never acknowledged.
    pub torn_tail: Option<String>,
}

/// O(1) statistics of the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Records waiting in the log.
    pub records: u64,
    /// Encoded bytes of the records waiting in the log.
    pub bytes: u64,
    /// Sequence of the oldest record in the log, if any.
    pub oldest_seq: Option<u64>,
    /// Sequence of the newest record in the log, if any.
    pub newest_seq: Option<u64>,
    /// Receive time (Unix milliseconds) of the oldest record in the log, if any.
    pub oldest_receive_time_ms: Option<u64>,
    /// The sequence the next appended record gets.
    pub next_seq: u64,
    /// Records in the dead-letter table.
    pub dead_letters: u64,
    /// Encoded bytes in the dead-letter table.
    pub dead_letter_bytes: u64,
    /// Records dropped by a policy, by reason, over the WAL's life.
    pub dropped: Dropped,
    /// Dead letters an operator purged, over the WAL's life.
    pub dead_letters_purged: u64,
    /// Dead letters an operator replayed, over the WAL's life.
    pub dead_letters_replayed: u64,
    /// Dead letters dropped, the oldest first, to keep the table under its byte cap,
    /// over the WAL's life.
    pub dead_letters_dropped: u64,
}

/// The write-ahead log. Share it behind an `Arc`: reads run concurrently with a commit.
#[derive(Debug)]
pub struct Wal {
    path: PathBuf,
    options: WalOptions,
    db: RwLock<Database>,
    /// Set while `db` is only a placeholder: a reopen closed the file and failed to
    /// open it again. Commits and reads fail until a reopen succeeds.
    closed: AtomicBool,
    writer: Mutex<Writer>,
    stats: Mutex<WalStats>,
    /// The journal is bypassed: commits go to redb as without a journal (see
    /// [`Wal::set_direct`]).
    direct: AtomicBool,
    recovery: Mutex<Recovery>,
}

/// What only commits use, behind one lock (see the lock order above).
#[derive(Debug, Default)]
struct Writer {
    /// The journal, when the WAL has one: frames go out in commit order.
    journal: Option<JournalState>,
    frame: FrameBuilder,
    buf: Vec<u8>,
}

impl Wal {
    /// Open (or create) the WAL in directory `dir`, replaying the journal into redb if
    /// the last run stopped without a checkpoint (see [`Wal::recovered`]).
    pub fn open(dir: impl AsRef<Path>, options: WalOptions) -> Result<Self, OpenError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| OpenError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let db = open_database(&path, &options)?;
        let journal = open_journal(dir, &options)?;
        Self::assemble(path, options, db, journal)
    }

    /// Open a WAL on a custom storage, without a journal (used by crash tests).
    pub fn open_with_backend(
        storage: impl Storage,
        name: &str,
        options: WalOptions,
    ) -> Result<Self, OpenError> {
        Self::on_backends(storage, None, name, options)
    }

    /// Open a WAL on custom storages for the database and the journal (used by crash
    /// tests).
    pub fn open_with_backends(
        db_storage: impl Storage,
        journal_storage: impl Storage,
        name: &str,
        options: WalOptions,
    ) -> Result<Self, OpenError> {
        Self::on_backends(
            db_storage,
            Some(Box::new(Backend(journal_storage))),
            name,
            options,
        )
    }

    fn on_backends(
        db_storage: impl Storage,
        journal_backend: Option<Box<dyn redb::StorageBackend>>,
        name: &str,
        options: WalOptions,
    ) -> Result<Self, OpenError> {
        let options = WalOptions {
            journal: journal_backend.is_some(),
            ..options
        };
        let path = PathBuf::from(name);
        let db = build_database(&options)
            .create_with_backend(Backend(db_storage))
            .map_err(|e| OpenError::from_database(&path, e))?;
        let journal =
            journal_backend.map(|b| JournalState::new(b, PathBuf::from(format!("{name}.journal"))));
        Self::assemble(path, options, db, journal)
    }

    fn assemble(
        path: PathBuf,
        options: WalOptions,
        db: Database,
        mut journal: Option<JournalState>,
    ) -> Result<Self, OpenError> {
        let (stats, recovery) = recover(&db, &path, journal.as_mut())?;
        Ok(Self {
            path,
            options,
            db: RwLock::new(db),
            closed: AtomicBool::new(false),
            writer: Mutex::new(Writer {
                journal,
                ..Writer::default()
            }),
            stats: Mutex::new(stats),
            direct: AtomicBool::new(false),
            recovery: Mutex::new(recovery),
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the last open (or reopen) replayed from the journal.
    pub fn recovered(&self) -> Recovery {
        self.recovery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Bytes in the journal now (0 without a journal).
    pub fn journal_len(&self) -> u64 {
        self.writer()
            .journal
            .as_ref()
            .map_or(0, |j| j.journal.len())
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Close and reopen the database file and the journal: redb refuses writes after a
    /// failed commit, and after a failed journal write or sync the journal's file state
    /// is unknown. The reopen replays the journal and checkpoints, exactly like an open
    /// after a crash. The in-memory stats are reloaded from disk.
    ///
    /// If the open fails, the WAL stays closed: every commit and read fails (never
    /// lands in the in-memory placeholder) until a later reopen succeeds.
    pub fn reopen(&self) -> Result<(), OpenError> {
        let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
        let mut writer = self.writer();
        let journal = &mut writer.journal;
        // redb holds a file lock: the old handle must be gone before the new open.
        let placeholder = redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| OpenError::from_database(&self.path, e))?;
        self.closed.store(true, Ordering::SeqCst);
        drop(std::mem::replace(&mut *db, placeholder));
        drop(journal.take());
        let fresh = open_database(&self.path, &self.options)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut fresh_journal = open_journal(dir, &self.options)?;
        let (stats, recovery) = recover(&fresh, &self.path, fresh_journal.as_mut())?;
        *db = fresh;
        *journal = fresh_journal;
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = stats;
        *self.recovery.lock().unwrap_or_else(|e| e.into_inner()) = recovery;
        self.closed.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// True while a failed [`Wal::reopen`] left the database closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// Abort the process at a named point when `MKG_FAILPOINT` names it, after
/// `MKG_FAILPOINT_SKIP` earlier hits (test builds only: the `failpoints` feature).
#[cfg(feature = "failpoints")]
pub fn failpoint(name: &str) {
    if failpoint_fires(name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

/// True when `MKG_FAILPOINT` names `name` and `MKG_FAILPOINT_SKIP` earlier hits have
/// passed (test builds only).
#[cfg(feature = "failpoints")]
pub fn failpoint_fires(name: &str) -> bool {
    if !std::env::var("MKG_FAILPOINT").is_ok_and(|v| v == name) {
        return false;
    }
    static HITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let skip: u64 = std::env::var("MKG_FAILPOINT_SKIP")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    HITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= skip
}

#[cfg(test)]
mod tests;
