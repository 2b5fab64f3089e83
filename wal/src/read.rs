//! Reading the log: records after a sequence, dead letters, the MQTT session state,
//! the O(1) statistics. Reads run concurrently with a commit (the database's read
//! lock; see the lock order in the crate docs).

use std::ops::ControlFlow;

use redb::ReadableDatabase;

use crate::format::{self, DEAD_LETTER, META, MQTT_QOS2, RECORDS};
use crate::{
    session, DeadLetter, MqttSession, ReadError, Record, RecordRef, StorageError, Wal, WalStats,
};

impl Wal {
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
            return Err(StorageError::closed().into());
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
            return Err(StorageError::closed().into());
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
            return Err(StorageError::closed().into());
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
}
