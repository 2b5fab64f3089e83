//! The MQTT session state kept with the records: which broker session the WAL's
//! records came from, and the incoming QoS 2 exchanges whose message is stored but
//! whose packet id the broker has not released yet.
//!
//! # Why it lives in the WAL
//! QoS 2 is exactly-once only if the receiver remembers, across its own crashes, the
//! packet ids it stored a message for until the sender releases them (PUBREL). A broker
//! resends a PUBLISH whose PUBREC it never got, with the same packet id and DUP set; a
//! receiver that forgot the id stores the message a second time. Remembering the id in
//! the same transaction as the record makes "stored" and "remembered" one fact: after
//! any crash either both are on disk or neither is.
//!
//! # The rules the caller keeps
//! * [`crate::WriteBatch::append_qos2`] appends a record and remembers its packet id.
//! * A release ([`crate::WriteBatch::release_qos2`]) must be durable before the PUBCOMP
//!   goes out: after PUBCOMP the broker may reuse the id for a new message, and a
//!   stale id would make a resend of that new message look like a copy.
//! * [`crate::WriteBatch::reset_session`] forgets every exchange when the broker says
//!   it has no session (it forgot them too) and records which session follows. It must
//!   be durable before any message of the new session is stored, for the same reason.
//!
//! Changes apply in the order the batch received them, after the batch's records.

use redb::{ReadableTable, Table};

use crate::format::META_MQTT_SESSION;

/// What the WAL holds of the MQTT session ([`crate::Wal::mqtt_session`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MqttSession {
    /// The session the records belong to, as the caller named it in
    /// [`crate::WriteBatch::reset_session`]; `None` until a first reset.
    pub id: Option<u64>,
    /// Incoming QoS 2 exchanges stored and not yet released: (packet id, sequence of
    /// the record), by packet id.
    pub qos2: Vec<(u16, u64)>,
}

/// One change to the session state, resolved to sequence numbers (as in a journal
/// frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// The record `seq` arrived as QoS 2 with packet id `pkid`.
    Remember { pkid: u16, seq: u64 },
    /// The broker released `pkid`.
    Release(u16),
    /// Forget every exchange; the records that follow belong to session `id`.
    Reset(u64),
}

/// A change as a batch holds it: a remembered packet id points at one of the batch's
/// appends, whose sequence is known only at commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BatchChange {
    Remember { pkid: u16, append: usize },
    Release(u16),
    Reset(u64),
}

impl BatchChange {
    /// The change with the batch's first appended sequence filled in.
    pub(crate) fn resolve(self, first_seq: u64) -> Change {
        match self {
            BatchChange::Remember { pkid, append } => Change::Remember {
                pkid,
                seq: first_seq + append as u64,
            },
            BatchChange::Release(pkid) => Change::Release(pkid),
            BatchChange::Reset(id) => Change::Reset(id),
        }
    }
}

/// Journal encoding of one change: kind, packet id, value.
pub(crate) fn encode(c: Change) -> (u8, u16, u64) {
    match c {
        Change::Remember { pkid, seq } => (1, pkid, seq),
        Change::Release(pkid) => (2, pkid, 0),
        Change::Reset(id) => (3, 0, id),
    }
}

/// Inverse of [`encode`].
pub(crate) fn decode(kind: u8, pkid: u16, value: u64) -> Result<Change, String> {
    match kind {
        1 => Ok(Change::Remember { pkid, seq: value }),
        2 => Ok(Change::Release(pkid)),
        3 => Ok(Change::Reset(value)),
        k => Err(format!("unknown session change kind {k}")),
    }
}

/// Apply `changes` in order. `next_seq` is the next sequence after the frame's appends:
/// a remembered record must be below it.
pub(crate) fn apply(
    changes: &[Change],
    qos2: &mut Table<'_, u16, u64>,
    meta: &mut Table<'_, &'static str, u64>,
    next_seq: u64,
) -> Result<(), ApplyError> {
    for c in changes {
        match *c {
            Change::Remember { pkid, seq } => {
                if seq >= next_seq {
                    return Err(ApplyError::Mismatch(format!(
                        "remembers QoS 2 packet id {pkid} for sequence {seq} but the next sequence is {next_seq}"
                    )));
                }
                qos2.insert(pkid, seq)?;
            }
            Change::Release(pkid) => {
                qos2.remove(pkid)?;
            }
            Change::Reset(id) => {
                qos2.retain(|_, _| false)?;
                meta.insert(META_MQTT_SESSION, id)?;
            }
        }
    }
    Ok(())
}

/// Read the session state.
pub(crate) fn load(
    qos2: &impl ReadableTable<u16, u64>,
    meta: &impl ReadableTable<&'static str, u64>,
) -> Result<MqttSession, redb::StorageError> {
    let id = meta.get(META_MQTT_SESSION)?.map(|v| v.value());
    let mut pending = Vec::new();
    for entry in qos2.iter()? {
        let (k, v) = entry?;
        pending.push((k.value(), v.value()));
    }
    Ok(MqttSession { id, qos2: pending })
}

/// Why a frame could not be applied.
pub(crate) enum ApplyError {
    Storage(redb::StorageError),
    /// The frame does not fit the database (replay of a journal that is not its own).
    Mismatch(String),
}

impl From<redb::StorageError> for ApplyError {
    fn from(e: redb::StorageError) -> Self {
        ApplyError::Storage(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_encoding_roundtrips() {
        for c in [
            Change::Remember {
                pkid: 65535,
                seq: u64::MAX - 1,
            },
            Change::Release(7),
            Change::Reset(0xdead_beef),
        ] {
            let (k, p, v) = encode(c);
            assert_eq!(decode(k, p, v), Ok(c));
        }
        assert!(decode(9, 0, 0).is_err());
    }

    #[test]
    fn batch_changes_resolve_against_the_first_sequence() {
        let c = BatchChange::Remember { pkid: 3, append: 2 }.resolve(10);
        assert_eq!(c, Change::Remember { pkid: 3, seq: 12 });
        assert_eq!(BatchChange::Release(3).resolve(10), Change::Release(3));
    }
}
