//! The WAL thread: the only writer of the WAL. Group commit lives here.
//!
//! One message, step by step: the ingest sends `WalCmd::Append` -> the thread blocks
//! for the first command, drains whatever else is queued (up to the batch bounds,
//! optionally lingering a little) -> one transaction writes everything
//! ([`WalThread::commit_until_ok`]): dead letters, then the acknowledged prefix, then
//! the appends -> the forwarder is woken (the records are visible) -> within
//! `sync_linger`, one fsync on the sync thread (`wal-sync`, [`WalThread::start_sync`])
//! makes them durable while the WAL thread goes on committing -> when it is done, the
//! durable count is published, which releases the MQTT acknowledgements (rule 1).
//!
//! Commits and syncs are separate. A commit makes the records visible to the forwarder
//! at once (it may send them to Kafka right away: that only ever makes a duplicate).
//! Fewer, larger fsyncs write far fewer bytes: each one rewrites a partly filled page.
//! With `sync_linger` = 0 every batch with appends is committed durably (one fsync),
//! and while it fsyncs the next batch queues up by itself, so batches grow with load.
//! Ack-only batches are committed without fsync; the next durable commit (or the idle
//! sync) makes them durable. Losing one to a power cut only resends records.
//!
//! Where: [`inbox`] (the two channels), [`thread`] (the loop and its state),
//! `commit` (committing until it succeeds), `sync` (the syncs, reopen and restore after a failed one), [`space`]
//! (the free-space reserve), `policy` (caps and age limit, `crate::policy`).

mod commit;
mod inbox;
pub mod operator;
mod space;
mod sync;
#[cfg(test)]
mod tests;
mod thread;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wal::{RecordRef, Wal, WriteBatch};

use crate::policy::Limits;
use crate::state::Shared;
pub use inbox::Inbox;
pub(crate) use space::fs_free;
use thread::WalThread;

/// A message received from MQTT, on its way into the WAL.
#[derive(Debug)]
pub struct Pending {
    /// MQTT topic.
    pub topic: String,
    /// Payload (shared with rumqttc's buffer, not copied).
    pub payload: Bytes,
    /// QoS received with.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
    /// DUP flag.
    pub dup: bool,
    /// Receive time, Unix ms.
    pub receive_time_ms: u64,
    /// Receive time, for the latency figures (`mkg_record_durable_latency_seconds`).
    pub received: std::time::Instant,
    /// For a QoS 2 message: its packet id, remembered with the record until the broker
    /// releases it (`wal::session`).
    pub qos2_pkid: Option<u16>,
    /// Its share of the ingest's memory budget (`ingest::QUEUE_BYTES`), handed back
    /// when the message is dropped: committed and synced, or given up.
    pub budget: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Pending {
    /// Bytes it adds to a batch.
    fn size(&self) -> usize {
        self.payload.len() + self.topic.len()
    }
}

/// A change to the MQTT session state the WAL keeps with the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionOp {
    /// The broker released this QoS 2 packet id (PUBREL): forget it.
    Release(u16),
    /// The broker has no session: forget every QoS 2 exchange; what follows belongs to
    /// this session.
    Reset(u64),
}

/// Commands to the WAL thread.
#[derive(Debug)]
pub enum WalCmd {
    /// Append a message. Ingest commands ([`WalCmd::Append`] and [`WalCmd::Session`])
    /// are numbered 1, 2, 3... in the order they are sent (there is one sender: the
    /// ingest task); the durable count says how many are on disk.
    Append(Pending),
    /// Change the MQTT session state (an ingest command, counted like an append).
    Session(SessionOp),
    /// Delete every record `<= seq`: Kafka acknowledged them.
    AckUpTo(u64),
    /// Move a record to the dead-letter table.
    DeadLetter(u64, String),
    /// An operator's replay or purge of dead letters (`operator`).
    Operator(operator::DeadLetterOp),
}

/// An ingest command on its way to disk, in arrival order.
#[derive(Debug)]
pub(crate) enum Entry {
    Record(Pending),
    Session(SessionOp),
}

impl Entry {
    /// Bytes it adds to a batch.
    fn size(&self) -> usize {
        match self {
            Entry::Record(p) => p.size(),
            Entry::Session(_) => 16,
        }
    }
}

/// Records among `entries` and their encoded bytes, as the WAL counts them.
pub(crate) fn record_load(entries: &[Entry]) -> (u64, u64) {
    entries.iter().fold((0, 0), |(n, b), e| match e {
        Entry::Record(p) => (n + 1, b + 13 + p.size() as u64),
        Entry::Session(_) => (n, b),
    })
}

/// Records among `entries`.
pub(crate) fn records(entries: &[Entry]) -> usize {
    entries
        .iter()
        .filter(|e| matches!(e, Entry::Record(_)))
        .count()
}

/// Bounds of one group commit.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Most appends per commit.
    pub max_batch_records: usize,
    /// Most payload bytes per commit.
    pub max_batch_bytes: usize,
    /// Extra wait for more messages before committing.
    pub linger: Duration,
    /// Longest wait of a committed append for the fsync that makes it durable (0 =
    /// commit durably at once).
    pub sync_linger: Duration,
    /// After this long idle with unsynced ack-only commits, fsync them.
    pub idle_sync: Duration,
    /// Free space to keep on the WAL's filesystem (0 = no check).
    pub min_free_space: u64,
    /// Caps and age limit (`policy`).
    pub limits: Limits,
    /// The running configuration, for the limits changed by a reload (`reload`).
    pub reload: Option<watch::Receiver<Arc<crate::config::Loaded>>>,
}

/// Run the WAL thread until every command sender of `inbox` is gone (or `abort` is
/// cancelled while a commit keeps failing). `durable` receives the number of ingest
/// commands on disk; `on_append` is called after each commit that appended records.
pub fn run(
    wal: Arc<Wal>,
    inbox: Inbox,
    durable: watch::Sender<u64>,
    shared: Arc<Shared>,
    opts: WriterOptions,
    abort: CancellationToken,
    on_append: impl Fn() + Send + 'static,
) {
    WalThread::new(
        wal,
        inbox,
        durable,
        shared,
        opts,
        abort,
        Box::new(on_append),
    )
    .run();
}

/// How often records past `wal.max_age` are looked for.
const EXPIRY_EVERY: Duration = Duration::from_secs(1);

/// With `sync_linger` > 0: the least time between two commits. A commit does not
/// wait for an fsync then, so nothing else spaces commits out, and under load redb's
/// per-commit work on batches of a few records would eat the CPU.
const MIN_COMMIT_INTERVAL: Duration = Duration::from_millis(1);

/// Most appends held in memory while commits fail (beyond it the channel fills and
/// ingest waits; Mosquitto keeps the rest).
const HOLD_LIMIT: usize = 65_536;

pub(crate) fn build<'a>(
    appends: &'a [Entry],
    dead: &[(u64, String)],
    ack: Option<u64>,
) -> WriteBatch<'a> {
    let mut batch = WriteBatch::new();
    for e in appends {
        match e {
            Entry::Record(p) => {
                let record = RecordRef {
                    topic: &p.topic,
                    payload: &p.payload,
                    qos: p.qos,
                    retain: p.retain,
                    dup: p.dup,
                    receive_time_ms: p.receive_time_ms,
                };
                match p.qos2_pkid {
                    Some(pkid) => batch.append_qos2(record, pkid),
                    None => batch.append(record),
                };
            }
            Entry::Session(SessionOp::Release(pkid)) => {
                batch.release_qos2(*pkid);
            }
            Entry::Session(SessionOp::Reset(id)) => {
                batch.reset_session(*id);
            }
        }
    }
    for (seq, reason) in dead {
        batch.dead_letter(*seq, reason.clone());
    }
    if let Some(a) = ack {
        batch.ack_up_to(a);
    }
    batch
}

/// Put `cmd` into the batch being gathered; an operator's command is handed back: it
/// is committed on its own after the batch.
#[must_use]
pub(crate) fn take(
    cmd: WalCmd,
    appends: &mut Vec<Entry>,
    dead: &mut Vec<(u64, String)>,
    ack: &mut Option<u64>,
    bytes: &mut usize,
) -> Option<operator::DeadLetterOp> {
    match cmd {
        WalCmd::Append(p) => {
            *bytes += p.size();
            appends.push(Entry::Record(p));
        }
        WalCmd::Session(op) => {
            let e = Entry::Session(op);
            *bytes += e.size();
            appends.push(e);
        }
        WalCmd::AckUpTo(s) => *ack = Some(ack.map_or(s, |a| a.max(s))),
        WalCmd::DeadLetter(seq, reason) => dead.push((seq, reason)),
        WalCmd::Operator(op) => return Some(op),
    }
    None
}
