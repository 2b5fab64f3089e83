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

use redb::{Database, ReadableDatabase};

use format::{DEAD_LETTER, META, MQTT_QOS2, RECORDS, TOPIC_BACKLOG};
use journal::{FrameBuilder, Gone, Tail};
use recover::{apply_frame, recover, refresh_ends, Tables};
use session::ApplyError;
use storage::{broken_journal, build_database, open_database, open_journal, sync_journal};
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
            cache_size: 16 * 1024 * 1024,
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

    /// Apply `batch` in one write transaction with the given durability.
    ///
    /// With [`Durability::Immediate`], the batch (and every earlier commit) is on disk
    /// when this returns `Ok`. With [`Durability::None`], it is visible to readers at
    /// once and on disk after the next durable commit or [`Wal::sync`].
    /// On `Err`, nothing in the batch happened; after a storage error, call
    /// [`Wal::reopen`] before the next commit.
    pub fn commit(
        &self,
        batch: &WriteBatch<'_>,
        durability: Durability,
    ) -> Result<CommitOutcome, CommitError> {
        let immediate = matches!(durability, Durability::Immediate);
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        if self.is_closed() {
            return Err(StorageError::closed().into());
        }
        let mut writer = self.writer();
        let Writer {
            journal,
            frame,
            buf,
        } = &mut *writer;
        let direct = self.direct.load(Ordering::SeqCst);
        if let Some(j) = journal.as_mut() {
            if j.broken {
                return Err(broken_journal(&j.path));
            }
            if batch.is_empty() && !direct {
                if immediate {
                    sync_journal(j)?;
                }
                return Ok(CommitOutcome::default());
            }
        }
        // Whether this commit goes through the journal.
        let journaling = journal.is_some() && !direct;
        let before = *self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let highest_delete = batch
            .drops
            .iter()
            .map(|(s, _)| *s)
            .chain(batch.ack_up_to)
            .max();
        if let Some(ack) = highest_delete {
            if ack >= before.next_seq {
                return Err(CommitError::AckBeyondEnd {
                    ack,
                    next_seq: before.next_seq,
                });
            }
        }
        if let Some(r) = batch
            .appends
            .iter()
            .find(|r| r.topic.len() > format::MAX_TOPIC_LEN)
        {
            return Err(CommitError::TopicTooLong(r.topic.len()));
        }
        // With the journal, redb gets a commit durably only at a checkpoint.
        let (lsn, checkpoint) = match journal.as_ref() {
            Some(j) if journaling => (j.lsn + 1, j.journal.len() >= self.options.checkpoint_bytes),
            // Bypassed: the frame number stays; redb's state already holds every frame.
            Some(j) => (j.lsn, false),
            None => (0, false),
        };
        let redb_durable = if journaling { checkpoint } else { immediate };

        // The batch as a journal frame; the same frame is applied to redb below, and
        // replayed from the journal after a crash.
        frame.begin(lsn);
        let now_ms = format::now_ms();
        for (seq, reason) in &batch.dead_letters {
            frame.dead_letter(*seq, now_ms, reason);
        }
        frame.ack_and_first_seq(batch.ack_up_to, before.next_seq);
        for record in &batch.appends {
            frame.append_with(|buf| format::encode_record_into(buf, record))?;
        }
        // Replayed dead letters: their records again, as new appends, in the order
        // asked. Read here, under the writer lock: no other commit can remove them
        // in between.
        let replayed = if batch.replays.is_empty() {
            Vec::new()
        } else {
            let txn = db.begin_read()?;
            let table = txn.open_table(DEAD_LETTER)?;
            let mut found: Vec<DeadLetter> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for &seq in &batch.replays {
                if !seen.insert(seq) {
                    continue; // asked twice: appended once
                }
                let Some(raw) = table.get(seq)? else { continue };
                let dl = format::decode_dead_letter(seq, raw.value()).map_err(|reason| {
                    CommitError::Invariant(format!("dead letter {seq}: {reason}"))
                })?;
                found.push(dl);
            }
            found
        };
        for dl in &replayed {
            let record = dl.record.as_record_ref();
            frame.append_with(|buf| format::encode_record_into(buf, &record))?;
        }
        for (up_to, reason) in &batch.drops {
            frame.tail(Tail::Drop {
                up_to: *up_to,
                reason: *reason,
            });
        }
        for dl in &replayed {
            frame.tail(Tail::DeadLetterGone {
                seq: dl.record.seq,
                how: Gone::Replayed,
            });
        }
        for &seq in &batch.purges {
            frame.tail(Tail::DeadLetterGone {
                seq,
                how: Gone::Purged,
            });
        }
        for &seq in &batch.over_cap {
            frame.tail(Tail::DeadLetterGone {
                seq,
                how: Gone::OverCap,
            });
        }
        for change in &batch.session {
            frame.tail(Tail::Session(change.resolve(before.next_seq)));
        }
        let frame_bytes = frame.finish();
        let ops = journal::parse_frame_unchecked(frame_bytes).map_err(|reason| {
            CommitError::Invariant(format!("a frame just built does not parse: {reason}"))
        })?;

        let mut txn = db.begin_write()?;
        txn.set_durability(if redb_durable {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        })
        .map_err(|e| CommitError::Storage(redb::Error::from(e).into()))?;
        if self.options.quick_repair && redb_durable {
            txn.set_quick_repair(true);
        }
        let mut stats = before;
        let outcome = {
            let mut tables = Tables {
                records: txn.open_table(RECORDS)?,
                dead: txn.open_table(DEAD_LETTER)?,
                meta: txn.open_table(META)?,
                qos2: txn.open_table(MQTT_QOS2)?,
                topics: txn.open_table(TOPIC_BACKLOG)?,
            };
            let outcome = apply_frame(&ops, &mut tables, &mut stats, buf).map_err(|e| match e {
                ApplyError::Storage(e) => CommitError::from(e),
                ApplyError::Mismatch(m) => CommitError::Invariant(m),
            })?;
            refresh_ends(&tables.records, &mut stats)?;
            format::store_meta(&mut tables.meta, &stats)?;
            if journal.is_some() {
                tables.meta.insert(format::META_JOURNAL_LSN, lsn)?;
            }
            outcome
        };
        #[cfg(feature = "failpoints")]
        failpoint("wal-inside-commit");
        // Journal first: readers never see a change the journal does not hold.
        if let Some(j) = journal.as_mut().filter(|_| journaling) {
            if !checkpoint {
                let written = j.journal.append(frame_bytes).and_then(|()| {
                    if immediate {
                        j.journal.sync()
                    } else {
                        Ok(())
                    }
                });
                if let Err(e) = written {
                    j.broken = true;
                    return Err(e.into());
                }
            }
        }
        frame.shrink();
        if let Err(e) = txn.commit() {
            if let Some(j) = journal.as_mut() {
                j.broken = true;
            }
            return Err(e.into());
        }
        if let Some(j) = journal.as_mut().filter(|_| journaling) {
            j.lsn = lsn;
            if checkpoint {
                // redb holds every frame now. If emptying the journal fails, its frames
                // are all at or below the checkpoint's lsn and would be skipped by a
                // replay; still, reopen before trusting the file again.
                if j.journal.reset().is_err() {
                    j.broken = true;
                }
            }
        }
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = stats;
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

    /// Make every earlier [`Durability::None`] commit durable (one fsync, none when
    /// there is nothing to sync).
    pub fn sync(&self) -> Result<(), CommitError> {
        self.commit(&WriteBatch::new(), Durability::Immediate)
            .map(|_| ())
    }

    /// Bypass the journal (`true`) or use it again (`false`). A switch checkpoints
    /// first, so that redb's durable state holds every frame before commits stop
    /// writing frames, and every commit before frames start again.
    ///
    /// The writer bypasses the journal on a nearly full disk: until a checkpoint, the
    /// journal takes space of its own, and redb reuses the pages that deletes free only
    /// after a durable commit. Bypassed, every durable commit is a durable redb commit,
    /// which frees space at once. Without a journal this does nothing.
    pub fn set_direct(&self, direct: bool) -> Result<(), CommitError> {
        if self.direct.load(Ordering::SeqCst) == direct {
            return Ok(());
        }
        if self.writer().journal.is_none() {
            return Ok(());
        }
        self.checkpoint()?;
        self.direct.store(direct, Ordering::SeqCst);
        Ok(())
    }

    /// True while the journal is bypassed ([`Wal::set_direct`]).
    pub fn is_direct(&self) -> bool {
        self.direct.load(Ordering::SeqCst)
    }

    /// The configured journal size that triggers a checkpoint.
    pub fn checkpoint_bytes(&self) -> u64 {
        self.options.checkpoint_bytes
    }

    /// Write everything to redb durably and empty the journal (a clean shutdown does
    /// this, so the next start replays nothing).
    pub fn checkpoint(&self) -> Result<(), CommitError> {
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        if self.is_closed() {
            return Err(StorageError::closed().into());
        }
        let mut writer = self.writer();
        let Some(j) = writer.journal.as_mut() else {
            drop(writer);
            drop(db);
            return self.sync();
        };
        if j.broken {
            return Err(broken_journal(&j.path));
        }
        let mut txn = db.begin_write()?;
        if self.options.quick_repair {
            txn.set_quick_repair(true);
        }
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(format::META_JOURNAL_LSN, j.lsn)?;
        }
        if let Err(e) = txn.commit() {
            j.broken = true;
            return Err(e.into());
        }
        if let Err(e) = j.journal.reset() {
            j.broken = true;
            return Err(e.into());
        }
        Ok(())
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
