//! What a commit changes ([`WriteBatch`]) and what it did ([`CommitOutcome`]), and the
//! reasons a policy drops records.

use crate::session::BatchChange;
use crate::RecordRef;

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

    pub(crate) fn add(&mut self, reason: DropReason, n: u64) {
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
/// acknowledged prefix, policy drops, appends (then the replayed dead letters'
/// records), removals from the dead-letter table (replayed, purged, dropped for the cap), changes to the MQTT session state.
#[derive(Debug, Default)]
pub struct WriteBatch<'a> {
    pub(crate) appends: Vec<RecordRef<'a>>,
    pub(crate) dead_letters: Vec<(u64, String)>,
    pub(crate) ack_up_to: Option<u64>,
    pub(crate) drops: Vec<(u64, DropReason)>,
    pub(crate) session: Vec<BatchChange>,
    pub(crate) purges: Vec<u64>,
    pub(crate) replays: Vec<u64>,
    pub(crate) over_cap: Vec<u64>,
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

    /// Delete dead letter `seq` for good (an operator's purge): counted in
    /// [`WalStats::dead_letters_purged`]. A sequence not in the table is skipped.
    pub fn purge_dead_letter(&mut self, seq: u64) -> &mut Self {
        self.purges.push(seq);
        self
    }

    /// Delete dead letter `seq` to keep the dead letters under their byte cap (a
    /// configured policy, not an operator): counted in
    /// [`WalStats::dead_letters_dropped`]. A sequence not in the table is skipped.
    pub fn drop_dead_letter(&mut self, seq: u64) -> &mut Self {
        self.over_cap.push(seq);
        self
    }

    /// Put dead letter `seq` back in front of the forwarder: its record is appended
    /// again (after this batch's appends, with the next sequence number; several in
    /// the order given) and it leaves the dead-letter table, counted in
    /// [`WalStats::dead_letters_replayed`]. A sequence not in the table is skipped.
    pub fn replay_dead_letter(&mut self, seq: u64) -> &mut Self {
        self.replays.push(seq);
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
            && self.purges.is_empty()
            && self.replays.is_empty()
            && self.over_cap.is_empty()
    }

    /// Forget everything in the batch, keeping its allocation.
    pub fn clear(&mut self) {
        self.appends.clear();
        self.dead_letters.clear();
        self.ack_up_to = None;
        self.drops.clear();
        self.session.clear();
        self.purges.clear();
        self.replays.clear();
        self.over_cap.clear();
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
    /// Dead letters purged.
    pub dead_letters_purged: u64,
    /// Dead letters replayed (appended again; among `appended`).
    pub dead_letters_replayed: u64,
    /// Dead letters dropped for the cap.
    pub dead_letters_dropped: u64,
    /// The commit was a checkpoint: the journal went into the database file, durably.
    pub checkpointed: bool,
}
