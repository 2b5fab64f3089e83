//! The gateway's write-ahead log: a synchronous library on [redb].
//!
//! # What it stores
//! Two files in the WAL directory: the commit journal `journal.log` (see [`journal`]:
//! each commit is appended there and `fdatasync`ed, and redb gets it without fsync),
//! and one redb file, `wal.redb`, with three tables:
//!
//! * `records_v1: u64 -> bytes` — the log. The key is the record's *sequence number*.
//! * `dead_letter_v1: u64 -> bytes` — records Kafka refused for good, keyed by their
//!   original sequence, each with the reason.
//! * `meta_v1: str -> u64` — counters that make [`Wal::stats`] O(1) and the next
//!   sequence number (see [`format`] for every key).
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

#![warn(missing_docs)]

pub mod format;
pub mod journal;
pub mod session;

mod error;
#[cfg(feature = "failpoints")]
pub mod faults;

pub use error::{CommitError, Error, OpenError, ReadError};
pub use format::{DeadLetter, Record, RecordRef};
pub use redb::Durability;
pub use session::MqttSession;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, RwLock};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use format::{DEAD_LETTER, META, MQTT_QOS2, RECORDS};
use journal::{FrameBuilder, Journal, Tail};
use session::{ApplyError, BatchChange};

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

/// The journal and what belongs to it, behind one lock: frames go out in commit order.
#[derive(Debug)]
struct JournalState {
    journal: Journal,
    path: PathBuf,
    /// Number of the last frame committed (or checkpointed).
    lsn: u64,
    /// A write or sync failed: commits fail until [`Wal::reopen`].
    broken: bool,
}

impl JournalState {
    fn new(file: Box<dyn redb::StorageBackend>, path: PathBuf) -> Self {
        Self {
            journal: Journal::new(file),
            path,
            lsn: 0,
            broken: false,
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
    /// Records dropped by a policy, by reason, over the WAL's life.
    pub dropped: Dropped,
}

/// Why a policy dropped records ([`WriteBatch::drop_up_to`]). FROZEN codes: they are
/// in journal frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum DropReason {
    /// The backlog reached its byte cap (`drop_oldest`).
    MaxBytes = 1,
    /// The backlog reached its record cap (`drop_oldest`).
    MaxRecords = 2,
    /// The records were older than the age limit.
    MaxAge = 3,
}

impl DropReason {
    /// Every reason.
    pub const ALL: [DropReason; 3] = [
        DropReason::MaxBytes,
        DropReason::MaxRecords,
        DropReason::MaxAge,
    ];

    pub(crate) fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|r| *r as u16 == code)
    }

    /// Its name, as in metrics labels: `max_bytes`, `max_records`, `max_age`.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::MaxBytes => "max_bytes",
            DropReason::MaxRecords => "max_records",
            DropReason::MaxAge => "max_age",
        }
    }
}

/// Records dropped by a policy, by reason (durable counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// To stay under the byte cap.
    pub max_bytes: u64,
    /// To stay under the record cap.
    pub max_records: u64,
    /// For their age.
    pub max_age: u64,
}

impl Dropped {
    /// The counter of `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::MaxBytes => self.max_bytes,
            DropReason::MaxRecords => self.max_records,
            DropReason::MaxAge => self.max_age,
        }
    }

    fn add(&mut self, reason: DropReason, n: u64) {
        match reason {
            DropReason::MaxBytes => self.max_bytes += n,
            DropReason::MaxRecords => self.max_records += n,
            DropReason::MaxAge => self.max_age += n,
        }
    }

    /// All reasons together.
    pub fn total(&self) -> u64 {
        self.max_bytes + self.max_records + self.max_age
    }
}

/// Changes applied in one transaction by [`Wal::commit`], in this order: dead letters,
/// acknowledged prefix, policy drops, appends, changes to the MQTT session state.
#[derive(Debug, Default)]
pub struct WriteBatch<'a> {
    appends: Vec<RecordRef<'a>>,
    dead_letters: Vec<(u64, String)>,
    ack_up_to: Option<u64>,
    drops: Vec<(u64, DropReason)>,
    session: Vec<BatchChange>,
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

    /// Append a record that arrived as MQTT QoS 2 with packet id `pkid`, and remember
    /// the exchange until [`WriteBatch::release_qos2`] (see [`session`]).
    pub fn append_qos2(&mut self, record: RecordRef<'a>, pkid: u16) -> &mut Self {
        self.session.push(BatchChange::Remember {
            pkid,
            append: self.appends.len(),
        });
        self.appends.push(record);
        self
    }

    /// The broker released QoS 2 packet id `pkid`: forget the exchange.
    pub fn release_qos2(&mut self, pkid: u16) -> &mut Self {
        self.session.push(BatchChange::Release(pkid));
        self
    }

    /// The broker has no session: forget every QoS 2 exchange; what follows belongs to
    /// session `id` (see [`MqttSession::id`]).
    pub fn reset_session(&mut self, id: u64) -> &mut Self {
        self.session.push(BatchChange::Reset(id));
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

    /// Delete every record with a sequence `<= seq` because a configured policy gives
    /// up on them (not acknowledged downstream): counted by `reason` in
    /// [`WalStats::dropped`].
    pub fn drop_up_to(&mut self, seq: u64, reason: DropReason) -> &mut Self {
        self.drops.push((seq, reason));
        self
    }

    /// Number of appends in the batch.
    pub fn append_count(&self) -> usize {
        self.appends.len()
    }

    /// True when the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.appends.is_empty()
            && self.dead_letters.is_empty()
            && self.ack_up_to.is_none()
            && self.drops.is_empty()
            && self.session.is_empty()
    }

    /// Forget everything in the batch, keeping its allocation.
    pub fn clear(&mut self) {
        self.appends.clear();
        self.dead_letters.clear();
        self.ack_up_to = None;
        self.drops.clear();
        self.session.clear();
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
    /// Records dropped by a policy.
    pub dropped: u64,
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
    frame: Mutex<FrameBuilder>,
    journal: Mutex<Option<JournalState>>,
    /// The journal is bypassed: commits go to redb as without a journal (see
    /// [`Wal::set_direct`]).
    direct: AtomicBool,
    recovery: Mutex<Recovery>,
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

    /// Open a WAL on a custom storage backend, without a journal (used by crash tests).
    pub fn open_with_backend(
        backend: impl redb::StorageBackend,
        name: &str,
        options: WalOptions,
    ) -> Result<Self, OpenError> {
        Self::on_backends(backend, None, name, options)
    }

    /// Open a WAL on custom storage backends for the database and the journal (used
    /// by crash tests).
    pub fn open_with_backends(
        db_backend: impl redb::StorageBackend,
        journal_backend: impl redb::StorageBackend,
        name: &str,
        options: WalOptions,
    ) -> Result<Self, OpenError> {
        Self::on_backends(db_backend, Some(Box::new(journal_backend)), name, options)
    }

    fn on_backends(
        db_backend: impl redb::StorageBackend,
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
            .create_with_backend(db_backend)
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
            stats: Mutex::new(stats),
            appended: Condvar::new(),
            encode_buf: Mutex::new(Vec::new()),
            frame: Mutex::new(FrameBuilder::default()),
            journal: Mutex::new(journal),
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
        self.journal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, |j| j.journal.len())
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
        let mut journal = self.journal.lock().unwrap_or_else(|e| e.into_inner());
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
            return Err(CommitError::Storage(redb::Error::DatabaseClosed));
        }
        let mut journal = self.journal.lock().unwrap_or_else(|e| e.into_inner());
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
        let mut frame = self.frame.lock().unwrap_or_else(|e| e.into_inner());
        frame.begin(lsn);
        let now_ms = format::now_ms();
        for (seq, reason) in &batch.dead_letters {
            frame.dead_letter(*seq, now_ms, reason);
        }
        frame.ack_and_first_seq(batch.ack_up_to, before.next_seq);
        for record in &batch.appends {
            frame.append_with(|buf| format::encode_record_into(buf, record))?;
        }
        for (up_to, reason) in &batch.drops {
            frame.tail(Tail::Drop {
                up_to: *up_to,
                reason: *reason,
            });
        }
        for change in &batch.session {
            frame.tail(Tail::Session(change.resolve(before.next_seq)));
        }
        let frame_bytes = frame.finish();
        let ops = journal::parse_frame_unchecked(frame_bytes).map_err(|reason| {
            CommitError::Storage(redb::Error::Io(std::io::Error::other(format!(
                "a frame just built does not parse: {reason}"
            ))))
        })?;

        let mut buf = self.encode_buf.lock().unwrap_or_else(|e| e.into_inner());
        let mut txn = db.begin_write()?;
        txn.set_durability(if redb_durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(|e| CommitError::Storage(e.into()))?;
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
            };
            let outcome =
                apply_frame(&ops, &mut tables, &mut stats, &mut buf).map_err(|e| match e {
                    ApplyError::Storage(e) => CommitError::Storage(e.into()),
                    ApplyError::Mismatch(m) => {
                        CommitError::Storage(redb::Error::Io(std::io::Error::other(m)))
                    }
                })?;
            refresh_ends(&tables.records, &mut stats)?;
            format::store_meta(&mut tables.meta, &stats)?;
            if journal.is_some() {
                tables.meta.insert(format::META_JOURNAL_LSN, lsn)?;
            }
            outcome
        };
        drop(buf);
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
                    return Err(CommitError::Storage(redb::Error::Io(e)));
                }
            }
        }
        frame.shrink();
        drop(frame);
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
        if self
            .journal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
        {
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
            return Err(CommitError::Storage(redb::Error::DatabaseClosed));
        }
        let mut journal = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        let Some(j) = journal.as_mut() else {
            drop(journal);
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
            return Err(CommitError::Storage(redb::Error::Io(e)));
        }
        Ok(())
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

    /// The MQTT session state kept with the records (read at start; see [`session`]).
    pub fn mqtt_session(&self) -> Result<MqttSession, ReadError> {
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        if self.is_closed() {
            return Err(ReadError::Storage(redb::Error::DatabaseClosed));
        }
        let txn = db.begin_read()?;
        let qos2 = txn.open_table(MQTT_QOS2)?;
        let meta = txn.open_table(META)?;
        Ok(session::load(&qos2, &meta)?)
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

fn build_database(options: &WalOptions) -> redb::Builder {
    let mut builder = redb::Builder::new();
    builder.set_cache_size(options.cache_size);
    // Crash tests abort in the middle of the repair that follows an unclean stop.
    #[cfg(feature = "failpoints")]
    builder.set_repair_callback(|_| failpoint("wal-during-repair"));
    builder
}

fn open_database(path: &Path, options: &WalOptions) -> Result<Database, OpenError> {
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

/// Create the tables on first open, check (and upgrade) the format version, and load
/// the counters and the journal frame number.
fn init_and_load(db: &Database, path: &Path) -> Result<(WalStats, u64), OpenError> {
    let storage = |e: redb::Error| OpenError::Storage {
        path: path.to_path_buf(),
        source: Box::new(e),
    };
    let txn = db.begin_write().map_err(|e| storage(e.into()))?;
    let stats = {
        let records = txn.open_table(RECORDS).map_err(|e| storage(e.into()))?;
        txn.open_table(DEAD_LETTER).map_err(|e| storage(e.into()))?;
        txn.open_table(MQTT_QOS2).map_err(|e| storage(e.into()))?;
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
            Some(v) if format::UPGRADABLE_FROM.contains(&v) => {
                // Version 1 had no journal: nothing to convert, only the mark.
                meta.insert(format::META_FORMAT_VERSION, format::FORMAT_VERSION)
                    .map_err(|e| storage(e.into()))?;
            }
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
        let lsn = meta
            .get(format::META_JOURNAL_LSN)
            .map_err(|e| storage(e.into()))?
            .map_or(0, |v| v.value());
        (stats, lsn)
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

fn broken_journal(path: &Path) -> CommitError {
    CommitError::Storage(redb::Error::Io(std::io::Error::other(format!(
        "an earlier write or sync of {} failed; the WAL must be reopened",
        path.display()
    ))))
}

fn sync_journal(j: &mut JournalState) -> Result<(), CommitError> {
    j.journal.sync().map_err(|e| {
        j.broken = true;
        CommitError::Storage(redb::Error::Io(e))
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
fn open_journal(dir: &Path, options: &WalOptions) -> Result<Option<JournalState>, OpenError> {
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

/// Load the counters, then replay the journal's frames that redb does not hold yet
/// (one durable redb commit), and empty the journal.
fn recover(
    db: &Database,
    path: &Path,
    journal: Option<&mut JournalState>,
) -> Result<(WalStats, Recovery), OpenError> {
    let (mut stats, mut lsn) = init_and_load(db, path)?;
    let mut report = Recovery::default();
    let Some(j) = journal else {
        return Ok((stats, report));
    };
    let jpath = j.path.clone();
    let data = j.journal.read_all().map_err(|source| OpenError::Io {
        path: jpath.clone(),
        source,
    })?;
    let (frames, end) = journal::decode_all(&data).map_err(|detail| OpenError::Corrupted {
        path: jpath.clone(),
        detail,
    })?;
    if let journal::End::Torn { offset, reason } = &end {
        report.torn_tail = Some(format!(
            "{} bytes from offset {offset} ignored: {reason}",
            data.len() as u64 - offset
        ));
    }
    let storage = |e: redb::Error| OpenError::Storage {
        path: path.to_path_buf(),
        source: Box::new(e),
    };
    let corrupted = |detail: String| OpenError::Corrupted {
        path: jpath.clone(),
        detail,
    };
    let todo: Vec<_> = frames.iter().filter(|(_, f)| f.lsn > lsn).collect();
    if !todo.is_empty() {
        let txn = db.begin_write().map_err(|e| storage(e.into()))?;
        {
            let open = |e: redb::TableError| storage(e.into());
            let mut tables = Tables {
                records: txn.open_table(RECORDS).map_err(open)?,
                dead: txn.open_table(DEAD_LETTER).map_err(open)?,
                meta: txn.open_table(META).map_err(open)?,
                qos2: txn.open_table(MQTT_QOS2).map_err(open)?,
            };
            let mut buf = Vec::new();
            for (offset, frame) in todo {
                if frame.lsn != lsn + 1 {
                    return Err(corrupted(format!(
                        "frame at offset {offset} is number {}, expected {} (the journal does not belong to this database)",
                        frame.lsn,
                        lsn + 1
                    )));
                }
                apply_frame(frame, &mut tables, &mut stats, &mut buf).map_err(|e| match e {
                    ApplyError::Storage(e) => storage(e.into()),
                    ApplyError::Mismatch(m) => corrupted(format!("frame at offset {offset}: {m}")),
                })?;
                lsn = frame.lsn;
                report.frames += 1;
                report.records += frame.appends.len() as u64;
            }
            refresh_ends(&tables.records, &mut stats).map_err(|e| storage(e.into()))?;
            format::store_meta(&mut tables.meta, &stats).map_err(|e| storage(e.into()))?;
            tables
                .meta
                .insert(format::META_JOURNAL_LSN, lsn)
                .map_err(|e| storage(e.into()))?;
        }
        txn.commit().map_err(|e| storage(e.into()))?;
    }
    j.lsn = lsn;
    j.journal.reset().map_err(|source| OpenError::Io {
        path: jpath.clone(),
        source,
    })?;
    Ok((stats, report))
}

/// The tables one write transaction changes.
struct Tables<'txn> {
    records: redb::Table<'txn, u64, &'static [u8]>,
    dead: redb::Table<'txn, u64, &'static [u8]>,
    meta: redb::Table<'txn, &'static str, u64>,
    qos2: redb::Table<'txn, u16, u64>,
}

/// Apply one frame's changes: dead letters, then the acknowledged prefix, then the
/// appends, then the session changes. The same code serves a commit and a replay, so
/// both do exactly the same.
fn apply_frame(
    frame: &journal::Frame<'_>,
    tables: &mut Tables<'_>,
    stats: &mut WalStats,
    buf: &mut Vec<u8>,
) -> Result<CommitOutcome, ApplyError> {
    let Tables {
        records,
        dead,
        meta,
        qos2,
    } = tables;
    let mut outcome = CommitOutcome::default();
    for &(seq, parked_at_ms, reason) in &frame.dead_letters {
        let Some(value) = records.remove(seq)? else {
            outcome.dead_letter_missing += 1;
            continue;
        };
        let value = value.value().to_vec();
        format::encode_dead_letter(buf, reason, parked_at_ms, &value);
        dead.insert(seq, buf.as_slice())?;
        stats.records -= 1;
        stats.bytes -= value.len() as u64;
        stats.dead_letters += 1;
        stats.dead_letter_bytes += buf.len() as u64;
        outcome.dead_lettered += 1;
    }

    if let Some(ack) = frame.ack_up_to {
        outcome.acked = delete_up_to(records, stats, ack)?;
    }
    for entry in &frame.tail {
        if let Tail::Drop { up_to, reason } = *entry {
            let n = delete_up_to(records, stats, up_to)?;
            stats.dropped.add(reason, n);
            outcome.dropped += n;
        }
    }

    if !frame.appends.is_empty() {
        if frame.first_seq != stats.next_seq {
            return Err(ApplyError::Mismatch(format!(
                "appends from sequence {} but the next sequence is {}",
                frame.first_seq, stats.next_seq
            )));
        }
        outcome.first_appended = Some(stats.next_seq);
        for value in &frame.appends {
            records.insert(stats.next_seq, *value)?;
            stats.next_seq += 1;
            stats.records += 1;
            stats.bytes += value.len() as u64;
        }
        outcome.appended = frame.appends.len() as u64;
    }
    for entry in &frame.tail {
        if let Tail::Session(change) = entry {
            session::apply(std::slice::from_ref(change), qos2, meta, stats.next_seq)?;
        }
    }
    Ok(outcome)
}

/// Delete every record `<= up_to`; returns how many there were.
fn delete_up_to(
    records: &mut redb::Table<'_, u64, &'static [u8]>,
    stats: &mut WalStats,
    up_to: u64,
) -> Result<u64, ApplyError> {
    if up_to >= stats.next_seq {
        return Err(ApplyError::Mismatch(format!(
            "deletes up to sequence {up_to} but the next sequence is {}",
            stats.next_seq
        )));
    }
    let mut freed_bytes = 0u64;
    let mut freed = 0u64;
    for entry in records.range(..=up_to)? {
        let (_, v) = entry?;
        freed += 1;
        freed_bytes += v.value().len() as u64;
    }
    if freed > 0 {
        records.retain_in(..=up_to, |_, _| false)?;
    }
    stats.records -= freed;
    stats.bytes -= freed_bytes;
    Ok(freed)
}

// Keeps the table definitions' types checked against their use above.
const _: TableDefinition<'static, u64, &'static [u8]> = RECORDS;

#[cfg(test)]
mod tests;
