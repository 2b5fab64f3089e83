//! The gateway's write-ahead log: a synchronous library on [redb].
//!
//! # What it stores
//! One redb file (`wal.redb` in the WAL directory) with three tables:
//!
//! * `records_v1: u64 -> bytes` — the log. The key is the record's *sequence number*.
//! * `dead_letter_v1: u64 -> bytes` — records Kafka refused for good, keyed by their
//!   original sequence, each with the reason.
//! * `meta_v1: str -> u64` — counters that make [`Wal::stats`] O(1) and the next
//!   sequence number (see [`format`] for every key).
//!
//! # Invariants
//! 1. A sequence number is assigned once, in append order, and never reused: the next
//!    one is persisted in `meta` in the same transaction as the append, so it survives
//!    the log emptying, restarts and crashes. Order and identity never come from wall
//!    time.
//! 2. [`Wal::commit`] with [`Durability::Immediate`] returns only after the records are
//!    on disk (fsync). Callers acknowledge upstream only after that return.
//! 3. A record leaves `records_v1` only through [`WriteBatch::ack_up_to`] (the caller
//!    promises that every record `<= seq` was acknowledged downstream) or
//!    [`WriteBatch::dead_letter`], which moves it into `dead_letter_v1` in the same
//!    transaction. Nothing else deletes a record.
//! 4. Counters in `meta_v1` change in the same transaction as the rows they count, so
//!    they are exact after any crash.
//! 5. After a crash, exactly the committed transactions are visible: an appended batch
//!    is all there or not at all. Deletes committed with [`Durability::None`] may be
//!    lost on power failure (the records come back and are sent again: a duplicate,
//!    never a loss).
//!
//! Changing a table name, a meta key or the record encoding in [`format`] needs a
//! format version bump ([`format::FORMAT_VERSION`]).

#![warn(missing_docs)]

pub mod format;

mod error;
#[cfg(feature = "failpoints")]
pub mod faults;

pub use error::{CommitError, Error, OpenError, ReadError};
pub use format::{DeadLetter, Record, RecordRef};
pub use redb::Durability;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, RwLock};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use format::{DEAD_LETTER, META, RECORDS};

/// File name of the redb database inside the WAL directory.
pub const FILE_NAME: &str = "wal.redb";

/// How to open a WAL.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Bytes of redb page cache.
    pub cache_size: usize,
    /// Save allocator state on each durable commit so that reopening after a crash is
    /// quick even with a large backlog (costs a second fsync per commit).
    pub quick_repair: bool,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            cache_size: 16 * 1024 * 1024,
            quick_repair: false,
        }
    }
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
}

/// Changes applied in one transaction by [`Wal::commit`], in this order: dead letters,
/// acknowledged prefix, appends.
#[derive(Debug, Default)]
pub struct WriteBatch<'a> {
    appends: Vec<RecordRef<'a>>,
    dead_letters: Vec<(u64, String)>,
    ack_up_to: Option<u64>,
}

impl<'a> WriteBatch<'a> {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append a record; it gets the next sequence number.
    pub fn append(&mut self, record: RecordRef<'a>) -> &mut Self {
        self.appends.push(record);
        self
    }

    /// Move record `seq` to the dead-letter table with `reason`.
    pub fn dead_letter(&mut self, seq: u64, reason: impl Into<String>) -> &mut Self {
        self.dead_letters.push((seq, reason.into()));
        self
    }

    /// Delete every record with a sequence `<= seq`: they were acknowledged downstream.
    pub fn ack_up_to(&mut self, seq: u64) -> &mut Self {
        self.ack_up_to = Some(self.ack_up_to.map_or(seq, |s| s.max(seq)));
        self
    }

    /// Number of appends in the batch.
    pub fn append_count(&self) -> usize {
        self.appends.len()
    }

    /// True when the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.appends.is_empty() && self.dead_letters.is_empty() && self.ack_up_to.is_none()
    }

    /// Forget everything in the batch, keeping its allocation.
    pub fn clear(&mut self) {
        self.appends.clear();
        self.dead_letters.clear();
        self.ack_up_to = None;
    }
}

/// What one [`Wal::commit`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitOutcome {
    /// Sequence of the first appended record (the rest follow contiguously).
    pub first_appended: Option<u64>,
    /// Records appended.
    pub appended: u64,
    /// Records deleted as acknowledged.
    pub acked: u64,
    /// Records moved to the dead-letter table.
    pub dead_lettered: u64,
    /// Dead-letter requests for sequences that were not in the log (already gone).
    pub dead_letter_missing: u64,
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
    stats: Mutex<WalStats>,
    appended: Condvar,
    encode_buf: Mutex<Vec<u8>>,
}

impl Wal {
    /// Open (or create) the WAL in directory `dir`.
    pub fn open(dir: impl AsRef<Path>, options: WalOptions) -> Result<Self, OpenError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| OpenError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let db = open_database(&path, &options)?;
        let stats = init_and_load(&db, &path)?;
        Ok(Self {
            path,
            options,
            db: RwLock::new(db),
            closed: AtomicBool::new(false),
            stats: Mutex::new(stats),
            appended: Condvar::new(),
            encode_buf: Mutex::new(Vec::new()),
        })
    }

    /// Open a WAL on a custom storage backend (used by crash tests).
    pub fn open_with_backend(
        backend: impl redb::StorageBackend,
        name: &str,
        options: WalOptions,
    ) -> Result<Self, OpenError> {
        let path = PathBuf::from(name);
        let db = redb::Builder::new()
            .set_cache_size(options.cache_size)
            .create_with_backend(backend)
            .map_err(|e| OpenError::from_database(&path, e))?;
        let stats = init_and_load(&db, &path)?;
        Ok(Self {
            path,
            options,
            db: RwLock::new(db),
            closed: AtomicBool::new(false),
            stats: Mutex::new(stats),
            appended: Condvar::new(),
            encode_buf: Mutex::new(Vec::new()),
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Close and reopen the database file: redb refuses writes after a failed commit
    /// until it is reopened. The in-memory stats are reloaded from disk.
    ///
    /// If the open fails, the WAL stays closed: every commit and read fails (never
    /// lands in the in-memory placeholder) until a later reopen succeeds.
    pub fn reopen(&self) -> Result<(), OpenError> {
        let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
        // redb holds a file lock: the old handle must be gone before the new open.
        let placeholder = redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| OpenError::from_database(&self.path, e))?;
        self.closed.store(true, Ordering::SeqCst);
        drop(std::mem::replace(&mut *db, placeholder));
        let fresh = open_database(&self.path, &self.options)?;
        let stats = init_and_load(&fresh, &self.path)?;
        *db = fresh;
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = stats;
        self.closed.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// True while a failed [`Wal::reopen`] left the database closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Apply `batch` in one write transaction with the given durability.
    ///
    /// With [`Durability::Immediate`], the records are on disk when this returns `Ok`.
    /// On `Err`, nothing in the batch happened.
    pub fn commit(
        &self,
        batch: &WriteBatch<'_>,
        durability: Durability,
    ) -> Result<CommitOutcome, CommitError> {
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        if self.is_closed() {
            return Err(CommitError::Storage(redb::Error::DatabaseClosed));
        }
        let before = *self.stats.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ack) = batch.ack_up_to {
            if ack >= before.next_seq {
                return Err(CommitError::AckBeyondEnd {
                    ack,
                    next_seq: before.next_seq,
                });
            }
        }
        let mut buf = self.encode_buf.lock().unwrap_or_else(|e| e.into_inner());
        let mut txn = db.begin_write()?;
        txn.set_durability(durability)
            .map_err(|e| CommitError::Storage(e.into()))?;
        if self.options.quick_repair && matches!(durability, Durability::Immediate) {
            txn.set_quick_repair(true);
        }
        let mut outcome = CommitOutcome::default();
        let mut stats = before;
        {
            let mut records = txn.open_table(RECORDS)?;
            let mut dead = txn.open_table(DEAD_LETTER)?;
            let mut meta = txn.open_table(META)?;
            let now_ms = format::now_ms();

            for (seq, reason) in &batch.dead_letters {
                let Some(value) = records.remove(*seq)? else {
                    outcome.dead_letter_missing += 1;
                    continue;
                };
                let value = value.value().to_vec();
                format::encode_dead_letter(&mut buf, reason, now_ms, &value);
                dead.insert(*seq, buf.as_slice())?;
                stats.records -= 1;
                stats.bytes -= value.len() as u64;
                stats.dead_letters += 1;
                stats.dead_letter_bytes += buf.len() as u64;
                outcome.dead_lettered += 1;
            }

            if let Some(ack) = batch.ack_up_to {
                let mut freed_bytes = 0u64;
                let mut freed = 0u64;
                for entry in records.range(..=ack)? {
                    let (_, v) = entry?;
                    freed += 1;
                    freed_bytes += v.value().len() as u64;
                }
                if freed > 0 {
                    records.retain_in(..=ack, |_, _| false)?;
                }
                stats.records -= freed;
                stats.bytes -= freed_bytes;
                outcome.acked = freed;
            }

            if !batch.appends.is_empty() {
                outcome.first_appended = Some(stats.next_seq);
                for record in &batch.appends {
                    format::encode_record(&mut buf, record)?;
                    records.insert(stats.next_seq, buf.as_slice())?;
                    stats.next_seq += 1;
                    stats.records += 1;
                    stats.bytes += buf.len() as u64;
                }
                outcome.appended = batch.appends.len() as u64;
            }

            refresh_ends(&records, &mut stats)?;
            format::store_meta(&mut meta, &stats)?;
        }
        drop(buf);
        #[cfg(feature = "failpoints")]
        failpoint("wal-inside-commit");
        txn.commit()?;
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = stats;
        if outcome.appended > 0 {
            self.appended.notify_all();
        }
        Ok(outcome)
    }

    /// Append records durably (one fsync); returns the first assigned sequence.
    pub fn append(&self, records: &[RecordRef<'_>]) -> Result<Option<u64>, CommitError> {
        let mut batch = WriteBatch::new();
        for r in records {
            batch.append(*r);
        }
        Ok(self.commit(&batch, Durability::Immediate)?.first_appended)
    }

    /// Delete every record `<= seq` (acknowledged downstream).
    pub fn ack_up_to(&self, seq: u64, durability: Durability) -> Result<u64, CommitError> {
        let mut batch = WriteBatch::new();
        batch.ack_up_to(seq);
        Ok(self.commit(&batch, durability)?.acked)
    }

    /// Make every earlier [`Durability::None`] commit durable.
    pub fn sync(&self) -> Result<(), CommitError> {
        self.commit(&WriteBatch::new(), Durability::Immediate)
            .map(|_| ())
    }

    /// Visit records with sequence `>= from` in order, at most `max_records` of them and
    /// stopping after the one that crosses `max_bytes` (at least one record is visited
    /// when there is one). Returns how many were visited.
    pub fn for_each_from(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
        mut visit: impl FnMut(u64, RecordRef<'_>) -> ControlFlow<()>,
    ) -> Result<usize, ReadError> {
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        if self.is_closed() {
            return Err(ReadError::Storage(redb::Error::DatabaseClosed));
        }
        let txn = db.begin_read()?;
        let records = txn.open_table(RECORDS)?;
        let mut n = 0;
        let mut bytes = 0usize;
        for entry in records.range(from..)? {
            if n >= max_records || (n > 0 && bytes >= max_bytes) {
                break;
            }
            let (k, v) = entry?;
            let seq = k.value();
            let raw = v.value();
            let record = format::decode_record(raw).map_err(|reason| ReadError::Corrupted {
                path: self.path.clone(),
                seq,
                reason,
            })?;
            n += 1;
            bytes += raw.len();
            if visit(seq, record).is_break() {
                break;
            }
        }
        Ok(n)
    }

    /// Read owned copies of up to `max_records` records from sequence `from` on.
    pub fn read_from(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, ReadError> {
        let mut out = Vec::new();
        self.for_each_from(from, max_records, max_bytes, |seq, r| {
            out.push(r.to_owned(seq));
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }

    /// Read dead letters with sequence `>= from`, at most `limit`.
    pub fn dead_letters(&self, from: u64, limit: usize) -> Result<Vec<DeadLetter>, ReadError> {
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        if self.is_closed() {
            return Err(ReadError::Storage(redb::Error::DatabaseClosed));
        }
        let txn = db.begin_read()?;
        let table = txn.open_table(DEAD_LETTER)?;
        let mut out = Vec::new();
        for entry in table.range(from..)?.take(limit) {
            let (k, v) = entry?;
            let seq = k.value();
            let dl = format::decode_dead_letter(seq, v.value()).map_err(|reason| {
                ReadError::Corrupted {
                    path: self.path.clone(),
                    seq,
                    reason,
                }
            })?;
            out.push(dl);
        }
        Ok(out)
    }

    /// O(1) statistics, as of the last commit.
    pub fn stats(&self) -> WalStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Block until a record with sequence `>= seq` exists or `timeout` passes; returns
    /// true if one exists.
    pub fn wait_for(&self, seq: u64, timeout: Duration) -> bool {
        let guard = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .appended
            .wait_timeout_while(guard, timeout, |s| s.next_seq <= seq)
            .unwrap_or_else(|e| e.into_inner());
        guard.next_seq > seq
    }

    /// Wake every thread blocked in [`Wal::wait_for`] (used at shutdown).
    pub fn wake_waiters(&self) {
        self.appended.notify_all();
    }
}

/// Abort the process at a named point when `MKG_FAILPOINT` names it, after
/// `MKG_FAILPOINT_SKIP` earlier hits (test builds only: the `failpoints` feature).
#[cfg(feature = "failpoints")]
pub fn failpoint(name: &str) {
    if std::env::var("MKG_FAILPOINT").is_ok_and(|v| v == name) {
        static HITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let skip: u64 = std::env::var("MKG_FAILPOINT_SKIP")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if HITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= skip {
            eprintln!("failpoint {name}: aborting");
            std::process::abort();
        }
    }
}

fn open_database(path: &Path, options: &WalOptions) -> Result<Database, OpenError> {
    let mut builder = redb::Builder::new();
    builder.set_cache_size(options.cache_size);
    // Crash tests abort in the middle of the repair that follows an unclean stop.
    #[cfg(feature = "failpoints")]
    builder.set_repair_callback(|_| failpoint("wal-during-repair"));
    // Crash tests make fsync slow or fail through a control file (see `faults`).
    #[cfg(feature = "failpoints")]
    if let Some(control) = faults::control_file() {
        let io = |source| OpenError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
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

/// Create the tables on first open, check the format version, and load the counters.
fn init_and_load(db: &Database, path: &Path) -> Result<WalStats, OpenError> {
    let storage = |e: redb::Error| OpenError::Storage {
        path: path.to_path_buf(),
        source: Box::new(e),
    };
    let txn = db.begin_write().map_err(|e| storage(e.into()))?;
    let stats = {
        let records = txn.open_table(RECORDS).map_err(|e| storage(e.into()))?;
        txn.open_table(DEAD_LETTER).map_err(|e| storage(e.into()))?;
        let mut meta = txn.open_table(META).map_err(|e| storage(e.into()))?;
        let version = meta
            .get(format::META_FORMAT_VERSION)
            .map_err(|e| storage(e.into()))?
            .map(|v| v.value());
        match version {
            None => {
                meta.insert(format::META_FORMAT_VERSION, format::FORMAT_VERSION)
                    .map_err(|e| storage(e.into()))?;
            }
            Some(v) if v == format::FORMAT_VERSION => {}
            Some(v) => {
                return Err(OpenError::UnsupportedFormat {
                    path: path.to_path_buf(),
                    found: v,
                    supported: format::FORMAT_VERSION,
                })
            }
        }
        let mut stats = format::load_meta(&meta).map_err(|e| storage(e.into()))?;
        refresh_ends(&records, &mut stats).map_err(|e| storage(e.into()))?;
        // Guard against a meta table that lags the records (it cannot by invariant 4,
        // but a wrong next_seq would reuse sequences, so check the cheap way).
        if let Some(newest) = stats.newest_seq {
            if stats.next_seq <= newest {
                stats.next_seq = newest + 1;
            }
        }
        stats
    };
    txn.commit().map_err(|e| storage(e.into()))?;
    Ok(stats)
}

/// Recompute oldest/newest sequence and the oldest receive time: O(log n).
fn refresh_ends(
    records: &impl ReadableTable<u64, &'static [u8]>,
    stats: &mut WalStats,
) -> Result<(), redb::StorageError> {
    match records.first()? {
        Some((k, v)) => {
            stats.oldest_seq = Some(k.value());
            stats.oldest_receive_time_ms = format::peek_receive_time(v.value());
        }
        None => {
            stats.oldest_seq = None;
            stats.oldest_receive_time_ms = None;
        }
    }
    stats.newest_seq = records.last()?.map(|(k, _)| k.value());
    Ok(())
}

// Keeps the table definitions' types checked against their use above.
const _: TableDefinition<'static, u64, &'static [u8]> = RECORDS;

#[cfg(test)]
mod tests;
