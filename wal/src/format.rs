//! On-disk layout. FROZEN: changing a table name, a meta key or an encoding below needs
//! a bump of [`FORMAT_VERSION`] and a migration.
//!
//! Record value (`records_v1`), all integers little-endian:
//! ```text
//! offset  size  field
//! 0       1     record version (RECORD_VERSION = 1)
//! 1       8     receive time, Unix milliseconds (informational only: never used for order)
//! 9       1     MQTT QoS (0, 1, 2)
//! 10      1     flags: bit 0 = retain, bit 1 = dup
//! 11      2     topic length N
//! 13      N     MQTT topic bytes
//! 13+N    ..    payload bytes (opaque, not assumed UTF-8)
//! ```
//! Backlog per MQTT topic (`topic_backlog_v1`): key = the MQTT topic's bytes as in the
//! record (empty for a record too short to hold one), value = (records, encoded bytes)
//! of that topic's records in `records_v1`; a topic without records has no row.
//!
//! QoS 2 exchange (`mqtt_qos2_v1`): key = MQTT packet id (u16), value = sequence of
//! the record (u64).
//!
//! Dead-letter value (`dead_letter_v1`):
//! ```text
//! 0       1     dead-letter version (DEAD_LETTER_VERSION = 1)
//! 1       8     time it was parked, Unix milliseconds
//! 9       2     reason length R
//! 11      R     reason, UTF-8
//! 11+R    ..    the original record value, as above
//! ```

use redb::{ReadableTable, TableDefinition};

use crate::error::CommitError;
use crate::WalStats;

/// Version of the whole file layout, stored in `meta_v1` under `format_version`.
///
/// 2: the WAL has a commit journal (`journal.log`, see `journal`) that may hold commits
/// redb does not have yet; a build that knows only version 1 would ignore it, so it
/// must refuse the file.
/// 3: the MQTT session state (`mqtt_qos2_v1`, `mqtt_session_id`; see `session`), whose
/// changes journal frames carry; an older build would take those frames for a torn
/// tail and drop acknowledged records.
/// 4: the backlog per MQTT topic (`topic_backlog_v1`), kept in the same transactions as
/// the records; an older build would leave it behind the records.
/// Older files are upgraded in place on open: a version 3 or older file gets its
/// `topic_backlog_v1` built by one pass over the records.
pub const FORMAT_VERSION: u64 = 4;
/// Older versions this build opens (and upgrades).
pub(crate) const UPGRADABLE_FROM: &[u64] = &[1, 2, 3];
/// Version byte at the start of each record value.
pub const RECORD_VERSION: u8 = 1;
/// Version byte at the start of each dead-letter value.
pub const DEAD_LETTER_VERSION: u8 = 1;
/// Longest MQTT topic the format can hold (and MQTT allows).
pub const MAX_TOPIC_LEN: usize = u16::MAX as usize;

pub(crate) const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records_v1");
pub(crate) const DEAD_LETTER: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letter_v1");
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta_v1");
/// Incoming QoS 2 exchanges stored and not released: packet id -> sequence of the
/// record (see `session`).
pub(crate) const MQTT_QOS2: TableDefinition<u16, u64> = TableDefinition::new("mqtt_qos2_v1");
/// Records and encoded bytes in `records_v1` per MQTT topic.
pub(crate) const TOPIC_BACKLOG: TableDefinition<&[u8], (u64, u64)> =
    TableDefinition::new("topic_backlog_v1");

pub(crate) const META_FORMAT_VERSION: &str = "format_version";
const META_NEXT_SEQ: &str = "next_seq";
const META_RECORDS: &str = "record_count";
const META_BYTES: &str = "record_bytes";
const META_DEAD: &str = "dead_letter_count";
const META_DEAD_BYTES: &str = "dead_letter_bytes";
const META_DROPPED_MAX_BYTES: &str = "dropped_max_bytes";
const META_DROPPED_MAX_RECORDS: &str = "dropped_max_records";
const META_DROPPED_MAX_AGE: &str = "dropped_max_age";
const META_DEAD_PURGED: &str = "dead_letters_purged";
const META_DEAD_REPLAYED: &str = "dead_letters_replayed";
const META_DEAD_DROPPED: &str = "dead_letters_dropped_over_cap";
/// Number of the last journal frame whose changes this redb state holds (absent = 0).
/// Added without a version bump: a file without it has an empty journal.
pub(crate) const META_JOURNAL_LSN: &str = "journal_lsn";
/// The MQTT session the records belong to (absent until the first reset; see `session`).
pub(crate) const META_MQTT_SESSION: &str = "mqtt_session_id";

const HEADER_LEN: usize = 13;
const FLAG_RETAIN: u8 = 1;
const FLAG_DUP: u8 = 2;

/// A record borrowed from a caller or from the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// MQTT topic the message was published on.
    pub topic: &'a str,
    /// Message payload.
    pub payload: &'a [u8],
    /// MQTT QoS it was received with.
    pub qos: u8,
    /// MQTT retain flag.
    pub retain: bool,
    /// MQTT DUP flag (a redelivery by the broker).
    pub dup: bool,
    /// Receive time, Unix milliseconds.
    pub receive_time_ms: u64,
}

impl RecordRef<'_> {
    /// An owned copy with its sequence.
    pub fn to_owned(&self, seq: u64) -> Record {
        Record {
            seq,
            topic: self.topic.to_owned(),
            payload: self.payload.to_vec(),
            qos: self.qos,
            retain: self.retain,
            dup: self.dup,
            receive_time_ms: self.receive_time_ms,
        }
    }
}

/// An owned record read from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Sequence number.
    pub seq: u64,
    /// MQTT topic.
    pub topic: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// MQTT QoS.
    pub qos: u8,
    /// MQTT retain flag.
    pub retain: bool,
    /// MQTT DUP flag.
    pub dup: bool,
    /// Receive time, Unix milliseconds.
    pub receive_time_ms: u64,
}

impl Record {
    /// A borrowed view of it (what a commit appends).
    pub fn as_record_ref(&self) -> RecordRef<'_> {
        RecordRef {
            topic: &self.topic,
            payload: &self.payload,
            qos: self.qos,
            retain: self.retain,
            dup: self.dup,
            receive_time_ms: self.receive_time_ms,
        }
    }
}

/// A record Kafka refused for good, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The record, with its original sequence.
    pub record: Record,
    /// Why it was parked.
    pub reason: String,
    /// When it was parked, Unix milliseconds.
    pub parked_at_ms: u64,
    /// Its encoded size in the dead-letter table (what
    /// [`WalStats::dead_letter_bytes`](crate::WalStats::dead_letter_bytes) counts).
    pub encoded_len: u64,
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) fn encode_record(buf: &mut Vec<u8>, r: &RecordRef<'_>) -> Result<(), CommitError> {
    buf.clear();
    encode_record_into(buf, r)
}

/// Append the encoded record to `buf`.
pub(crate) fn encode_record_into(buf: &mut Vec<u8>, r: &RecordRef<'_>) -> Result<(), CommitError> {
    if r.topic.len() > MAX_TOPIC_LEN {
        return Err(CommitError::TopicTooLong(r.topic.len()));
    }
    buf.reserve(HEADER_LEN + r.topic.len() + r.payload.len());
    buf.push(RECORD_VERSION);
    buf.extend_from_slice(&r.receive_time_ms.to_le_bytes());
    buf.push(r.qos);
    let mut flags = 0;
    if r.retain {
        flags |= FLAG_RETAIN;
    }
    if r.dup {
        flags |= FLAG_DUP;
    }
    buf.push(flags);
    buf.extend_from_slice(&(r.topic.len() as u16).to_le_bytes());
    buf.extend_from_slice(r.topic.as_bytes());
    buf.extend_from_slice(r.payload);
    Ok(())
}

/// Decode a record value; the error says what is wrong with it.
pub fn decode_record(raw: &[u8]) -> Result<RecordRef<'_>, String> {
    if raw.len() < HEADER_LEN {
        return Err(format!(
            "record of {} bytes is shorter than its header",
            raw.len()
        ));
    }
    if raw[0] != RECORD_VERSION {
        return Err(format!("unknown record version {}", raw[0]));
    }
    let receive_time_ms = u64::from_le_bytes(raw[1..9].try_into().expect("8 bytes"));
    let qos = raw[9];
    let flags = raw[10];
    let topic_len = u16::from_le_bytes([raw[11], raw[12]]) as usize;
    let rest = &raw[HEADER_LEN..];
    if rest.len() < topic_len {
        return Err(format!("topic length {topic_len} runs past the record"));
    }
    let topic =
        std::str::from_utf8(&rest[..topic_len]).map_err(|e| format!("topic is not UTF-8: {e}"))?;
    Ok(RecordRef {
        topic,
        payload: &rest[topic_len..],
        qos,
        retain: flags & FLAG_RETAIN != 0,
        dup: flags & FLAG_DUP != 0,
        receive_time_ms,
    })
}

/// The MQTT topic's bytes of an encoded record, without checking them (the key of
/// `topic_backlog_v1`); empty when the value is too short to hold a topic, so that
/// counting never fails and adding and removing a record always name the same key.
pub(crate) fn peek_topic(raw: &[u8]) -> &[u8] {
    let Some(len) = raw.get(11..13) else {
        return &[];
    };
    let len = u16::from_le_bytes([len[0], len[1]]) as usize;
    raw.get(HEADER_LEN..HEADER_LEN + len).unwrap_or(&[])
}

pub(crate) fn peek_receive_time(raw: &[u8]) -> Option<u64> {
    raw.get(1..9)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

pub(crate) fn encode_dead_letter(buf: &mut Vec<u8>, reason: &str, now_ms: u64, record: &[u8]) {
    let reason = truncate_utf8(reason, u16::MAX as usize);
    buf.clear();
    buf.push(DEAD_LETTER_VERSION);
    buf.extend_from_slice(&now_ms.to_le_bytes());
    buf.extend_from_slice(&(reason.len() as u16).to_le_bytes());
    buf.extend_from_slice(reason.as_bytes());
    buf.extend_from_slice(record);
}

pub(crate) fn decode_dead_letter(seq: u64, raw: &[u8]) -> Result<DeadLetter, String> {
    if raw.len() < 11 {
        return Err("dead letter shorter than its header".into());
    }
    if raw[0] != DEAD_LETTER_VERSION {
        return Err(format!("unknown dead-letter version {}", raw[0]));
    }
    let parked_at_ms = u64::from_le_bytes(raw[1..9].try_into().expect("8 bytes"));
    let reason_len = u16::from_le_bytes([raw[9], raw[10]]) as usize;
    let rest = &raw[11..];
    if rest.len() < reason_len {
        return Err("dead-letter reason runs past the value".into());
    }
    let reason = String::from_utf8_lossy(&rest[..reason_len]).into_owned();
    let record = decode_record(&rest[reason_len..])?.to_owned(seq);
    Ok(DeadLetter {
        record,
        reason,
        parked_at_ms,
        encoded_len: raw.len() as u64,
    })
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

pub(crate) fn load_meta(
    meta: &impl ReadableTable<&'static str, u64>,
) -> Result<WalStats, redb::StorageError> {
    let get = |k: &str| -> Result<u64, redb::StorageError> {
        Ok(meta.get(k)?.map(|v| v.value()).unwrap_or(0))
    };
    Ok(WalStats {
        next_seq: get(META_NEXT_SEQ)?.max(1),
        records: get(META_RECORDS)?,
        bytes: get(META_BYTES)?,
        dead_letters: get(META_DEAD)?,
        dead_letter_bytes: get(META_DEAD_BYTES)?,
        dropped: crate::Dropped {
            max_bytes: get(META_DROPPED_MAX_BYTES)?,
            max_records: get(META_DROPPED_MAX_RECORDS)?,
            max_age: get(META_DROPPED_MAX_AGE)?,
        },
        dead_letters_purged: get(META_DEAD_PURGED)?,
        dead_letters_replayed: get(META_DEAD_REPLAYED)?,
        dead_letters_dropped: get(META_DEAD_DROPPED)?,
        ..WalStats::default()
    })
}

pub(crate) fn store_meta(
    meta: &mut redb::Table<'_, &'static str, u64>,
    s: &WalStats,
) -> Result<(), redb::StorageError> {
    meta.insert(META_NEXT_SEQ, s.next_seq)?;
    meta.insert(META_RECORDS, s.records)?;
    meta.insert(META_BYTES, s.bytes)?;
    meta.insert(META_DEAD, s.dead_letters)?;
    meta.insert(META_DEAD_BYTES, s.dead_letter_bytes)?;
    // Written only once something was dropped: most WALs never see these keys.
    for (key, n) in [
        (META_DROPPED_MAX_BYTES, s.dropped.max_bytes),
        (META_DROPPED_MAX_RECORDS, s.dropped.max_records),
        (META_DROPPED_MAX_AGE, s.dropped.max_age),
        (META_DEAD_PURGED, s.dead_letters_purged),
        (META_DEAD_REPLAYED, s.dead_letters_replayed),
        (META_DEAD_DROPPED, s.dead_letters_dropped),
    ] {
        if n > 0 {
            meta.insert(key, n)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_roundtrip_keeps_binary_payload_and_flags() {
        let payload = [0u8, 159, 146, 150, 255];
        let r = RecordRef {
            topic: "a/b/ü/+odd chars",
            payload: &payload,
            qos: 2,
            retain: true,
            dup: true,
            receive_time_ms: 1_700_000_000_123,
        };
        let mut buf = Vec::new();
        encode_record(&mut buf, &r).unwrap();
        assert_eq!(decode_record(&buf).unwrap(), r);
        assert_eq!(peek_receive_time(&buf), Some(1_700_000_000_123));
    }

    #[test]
    fn decode_rejects_damaged_values() {
        assert!(decode_record(&[]).is_err());
        assert!(decode_record(&[9; 20]).unwrap_err().contains("version"));
        let mut buf = Vec::new();
        encode_record(
            &mut buf,
            &RecordRef {
                topic: "t",
                payload: b"",
                qos: 1,
                retain: false,
                dup: false,
                receive_time_ms: 0,
            },
        )
        .unwrap();
        buf[11] = 200; // topic length past the end
        assert!(decode_record(&buf).unwrap_err().contains("topic length"));
    }

    #[test]
    fn dead_letter_roundtrip() {
        let mut rec = Vec::new();
        encode_record(
            &mut rec,
            &RecordRef {
                topic: "x",
                payload: b"p",
                qos: 1,
                retain: false,
                dup: false,
                receive_time_ms: 5,
            },
        )
        .unwrap();
        let mut buf = Vec::new();
        encode_dead_letter(&mut buf, "too large", 77, &rec);
        let dl = decode_dead_letter(9, &buf).unwrap();
        assert_eq!(dl.reason, "too large");
        assert_eq!(dl.parked_at_ms, 77);
        assert_eq!(dl.record.seq, 9);
        assert_eq!(dl.record.payload, b"p");
    }
}
