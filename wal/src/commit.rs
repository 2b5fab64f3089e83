//! Commits: a [`WriteBatch`] becomes one journal frame and one redb transaction
//! (see [`journal`] for why both), plus the durability helpers and checkpoints.

use std::sync::atomic::Ordering;

use redb::{Database, ReadableDatabase};

#[cfg(feature = "failpoints")]
use crate::failpoint;
use crate::format::{self, DeadLetter, DEAD_LETTER, META, MQTT_QOS2, RECORDS, TOPIC_BACKLOG};
use crate::journal::{self, Gone, Tail};
use crate::recover::{apply_frame, refresh_ends, Tables};
use crate::session::ApplyError;
use crate::storage::{broken_journal, sync_journal};
use crate::{
    CommitError, CommitOutcome, Durability, RecordRef, StorageError, Wal, WriteBatch, Writer,
};

impl Wal {
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
            if j.is_broken() {
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
        let replayed = read_replays(&db, &batch.replays)?;
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
        let mut outcome = {
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
        outcome.checkpointed = checkpoint;
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

    /// [`Wal::sync`] without holding up commits: the fsync runs outside the writer
    /// lock, so commits go on meanwhile, and makes durable what was committed before
    /// this call. Without a journal, or while it is bypassed, this is [`Wal::sync`].
    ///
    /// A failed fsync fails every later sync and journaled commit until
    /// [`Wal::reopen`]: the file's state is unknown. A reopen while this runs fails
    /// ([`OpenError::Locked`](crate::OpenError::Locked): this holds the old file) and
    /// can be retried once it returned.
    pub fn sync_detached(&self) -> Result<(), CommitError> {
        let detached = {
            let db = self.db.read().unwrap_or_else(|e| e.into_inner());
            if self.is_closed() {
                return Err(StorageError::closed().into());
            }
            let writer = self.writer();
            match writer.journal.as_ref() {
                Some(j) if !self.direct.load(Ordering::SeqCst) => {
                    if j.is_broken() {
                        return Err(broken_journal(&j.path));
                    }
                    match j.journal.detach_sync() {
                        Some(d) => d,
                        None => return Ok(()),
                    }
                }
                _ => {
                    drop(writer);
                    drop(db);
                    return self.sync();
                }
            }
        };
        let result = detached.sync();
        let mut writer = self.writer();
        if let Some(j) = writer.journal.as_mut() {
            match &result {
                Ok(()) => j.journal.detached_synced(&detached),
                Err(_) if detached.of(&j.journal) => j.broken = true,
                Err(_) => {}
            }
        }
        result.map_err(Into::into)
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
        if j.is_broken() {
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

/// The dead letters a batch replays, in the order asked (each once), read under the
/// writer lock: no other commit can remove them in between.
fn read_replays(db: &Database, seqs: &[u64]) -> Result<Vec<DeadLetter>, CommitError> {
    if seqs.is_empty() {
        return Ok(Vec::new());
    }
    let txn = db.begin_read()?;
    let table = txn.open_table(DEAD_LETTER)?;
    let mut found = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for &seq in seqs {
        if !seen.insert(seq) {
            continue; // asked twice: appended once
        }
        let Some(raw) = table.get(seq)? else { continue };
        let dl = format::decode_dead_letter(seq, raw.value())
            .map_err(|reason| CommitError::Invariant(format!("dead letter {seq}: {reason}")))?;
        found.push(dl);
    }
    Ok(found)
}
