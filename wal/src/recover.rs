//! Opening: the tables, the format version, the counters, and the replay of the
//! journal's frames redb does not hold yet. Applying a frame is the same code for a
//! commit and for a replay, so both do exactly the same.

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};

use crate::format::{self, DEAD_LETTER, META, MQTT_QOS2, RECORDS, TOPIC_BACKLOG};
use crate::journal::{self, Gone, Tail};
use crate::session::{self, ApplyError};
use crate::storage::JournalState;
use crate::topics::{self, Tally};
use crate::{CommitOutcome, OpenError, Recovery, WalStats};

/// Create the tables on first open, check (and upgrade) the format version, and load
/// the counters and the journal frame number.
fn init_and_load(db: &Database, path: &Path) -> Result<(WalStats, u64), OpenError> {
    let storage = |e: redb::Error| OpenError::Storage {
        path: path.to_path_buf(),
        source: e.into(),
    };
    let txn = db.begin_write().map_err(|e| storage(e.into()))?;
    let stats = {
        let records = txn.open_table(RECORDS).map_err(|e| storage(e.into()))?;
        let mut by_topic = txn
            .open_table(TOPIC_BACKLOG)
            .map_err(|e| storage(e.into()))?;
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
                // The journal and the session state need nothing converted; the backlog
                // per topic is counted once from the records (in this transaction, so a
                // crash during it leaves the old version to upgrade again).
                topics::rebuild(&records, &mut by_topic).map_err(|e| match e {
                    ApplyError::Storage(e) => storage(e.into()),
                    ApplyError::Mismatch(detail) => OpenError::Corrupted {
                        path: path.to_path_buf(),
                        detail,
                    },
                })?;
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
pub(crate) fn refresh_ends(
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

/// Load the counters, then replay the journal's frames that redb does not hold yet
/// (one durable redb commit), and empty the journal.
pub(crate) fn recover(
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
        source: e.into(),
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
                topics: txn.open_table(TOPIC_BACKLOG).map_err(open)?,
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
pub(crate) struct Tables<'txn> {
    pub(crate) records: redb::Table<'txn, u64, &'static [u8]>,
    pub(crate) dead: redb::Table<'txn, u64, &'static [u8]>,
    pub(crate) meta: redb::Table<'txn, &'static str, u64>,
    pub(crate) qos2: redb::Table<'txn, u16, u64>,
    pub(crate) topics: redb::Table<'txn, &'static [u8], (u64, u64)>,
}

/// Apply one frame's changes: dead letters, then the acknowledged prefix, then the
/// appends, then the session changes, and the backlog per topic they change. The same code serves a commit and a replay, so
/// both do exactly the same.
pub(crate) fn apply_frame(
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
        topics,
    } = tables;
    let mut outcome = CommitOutcome::default();
    let mut tally = Tally::default();
    for &(seq, parked_at_ms, reason) in &frame.dead_letters {
        let Some(value) = records.remove(seq)? else {
            outcome.dead_letter_missing += 1;
            continue;
        };
        let value = value.value().to_vec();
        tally.removed(&value);
        format::encode_dead_letter(buf, reason, parked_at_ms, &value);
        dead.insert(seq, buf.as_slice())?;
        stats.records -= 1;
        stats.bytes -= value.len() as u64;
        stats.dead_letters += 1;
        stats.dead_letter_bytes += buf.len() as u64;
        outcome.dead_lettered += 1;
    }

    if let Some(ack) = frame.ack_up_to {
        outcome.acked = delete_up_to(records, stats, &mut tally, ack)?;
    }
    for entry in &frame.tail {
        if let Tail::Drop { up_to, reason } = *entry {
            let n = delete_up_to(records, stats, &mut tally, up_to)?;
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
            tally.added(value);
            stats.next_seq += 1;
            stats.records += 1;
            stats.bytes += value.len() as u64;
        }
        outcome.appended = frame.appends.len() as u64;
    }
    for entry in &frame.tail {
        if let Tail::DeadLetterGone { seq, how } = *entry {
            let Some(value) = dead.remove(seq)? else {
                continue;
            };
            stats.dead_letters -= 1;
            stats.dead_letter_bytes -= value.value().len() as u64;
            match how {
                Gone::Replayed => {
                    stats.dead_letters_replayed += 1;
                    outcome.dead_letters_replayed += 1;
                }
                Gone::Purged => {
                    stats.dead_letters_purged += 1;
                    outcome.dead_letters_purged += 1;
                }
                Gone::OverCap => {
                    stats.dead_letters_dropped += 1;
                    outcome.dead_letters_dropped += 1;
                }
            }
        }
    }
    for entry in &frame.tail {
        if let Tail::Session(change) = entry {
            session::apply(std::slice::from_ref(change), qos2, meta, stats.next_seq)?;
        }
    }
    tally.apply(topics)?;
    Ok(outcome)
}

/// Delete every record `<= up_to`; returns how many there were.
fn delete_up_to(
    records: &mut redb::Table<'_, u64, &'static [u8]>,
    stats: &mut WalStats,
    tally: &mut Tally,
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
        tally.removed(v.value());
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
