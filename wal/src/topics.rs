//! The backlog per MQTT topic (`topic_backlog_v1`): records and encoded bytes of each
//! topic's records in the log, changed in the same transaction as the records, so the
//! figures are exact after any crash (invariant 4) and reading them costs one pass over
//! a table with a row per topic, never over the records.
//!
//! A commit collects its changes per topic first ([`Tally`]), then updates each
//! topic's row once: a batch of 500 messages from 20 topics costs 20 row updates.
//! The oldest record of a topic is not kept here (it would need an index by topic
//! and sequence, written for every record); readers find it by reading forward from
//! the oldest record ([`Wal::for_each_from`]).

use std::collections::HashMap;

use redb::{ReadableDatabase, ReadableTable};

use crate::format::{self, RECORDS, TOPIC_BACKLOG};
use crate::session::ApplyError;
use crate::{ReadError, StorageError, Wal};

/// Records of one MQTT topic waiting in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicBacklog {
    /// The MQTT topic (lossily decoded if it is not UTF-8, which a stored record's
    /// topic always is).
    pub topic: String,
    /// Records of this topic in the log.
    pub records: u64,
    /// Their encoded bytes.
    pub bytes: u64,
}

/// Changes to the per-topic figures made by one commit, applied once per topic.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    changes: HashMap<Vec<u8>, (i64, i64)>,
}

impl Tally {
    /// A record (its encoded value) was added to the log.
    pub(crate) fn added(&mut self, value: &[u8]) {
        self.change(value, 1);
    }

    /// A record (its encoded value) left the log.
    pub(crate) fn removed(&mut self, value: &[u8]) {
        self.change(value, -1);
    }

    fn change(&mut self, value: &[u8], sign: i64) {
        let topic = format::peek_topic(value);
        let bytes = sign * value.len() as i64;
        match self.changes.get_mut(topic) {
            Some(c) => {
                c.0 += sign;
                c.1 += bytes;
            }
            None => {
                self.changes.insert(topic.to_vec(), (sign, bytes));
            }
        }
    }

    /// Write the changes to the table; a row that would go below zero means the table
    /// and the records disagree.
    pub(crate) fn apply(
        self,
        table: &mut redb::Table<'_, &'static [u8], (u64, u64)>,
    ) -> Result<(), ApplyError> {
        for (topic, (records, bytes)) in self.changes {
            if records == 0 && bytes == 0 {
                continue;
            }
            let (had_records, had_bytes) =
                table.get(topic.as_slice())?.map_or((0, 0), |v| v.value());
            let (Some(now_records), Some(now_bytes)) = (
                had_records.checked_add_signed(records),
                had_bytes.checked_add_signed(bytes),
            ) else {
                return Err(ApplyError::Mismatch(format!(
                    "the backlog of topic {:?} would go below zero ({had_records} records, {had_bytes} bytes, change {records} / {bytes})",
                    String::from_utf8_lossy(&topic)
                )));
            };
            if now_records == 0 {
                table.remove(topic.as_slice())?;
            } else {
                table.insert(topic.as_slice(), (now_records, now_bytes))?;
            }
        }
        Ok(())
    }
}

/// Build the table from the records (upgrading a file from before it existed).
pub(crate) fn rebuild(
    records: &impl ReadableTable<u64, &'static [u8]>,
    table: &mut redb::Table<'_, &'static [u8], (u64, u64)>,
) -> Result<(), ApplyError> {
    table.retain(|_, _| false)?;
    let mut tally = Tally::default();
    for entry in records.iter()? {
        let (_, v) = entry?;
        tally.added(v.value());
    }
    tally.apply(table)
}

impl Wal {
    /// The backlog per MQTT topic, in topic order: one read of a table with a row per
    /// topic that has records, consistent with [`Wal::stats`] of the same commit.
    pub fn topic_backlog(&self) -> Result<Vec<TopicBacklog>, ReadError> {
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        if self.is_closed() {
            return Err(StorageError::closed().into());
        }
        let txn = db.begin_read()?;
        let table = txn.open_table(TOPIC_BACKLOG)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            let (records, bytes) = v.value();
            out.push(TopicBacklog {
                topic: String::from_utf8_lossy(k.value()).into_owned(),
                records,
                bytes,
            });
        }
        Ok(out)
    }
}

// Keeps the record table's type checked against its use in `rebuild`.
const _: redb::TableDefinition<'static, u64, &'static [u8]> = RECORDS;
