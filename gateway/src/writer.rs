//! The WAL thread: the only writer of the WAL. Group commit lives here.
//!
//! It blocks for the first command, drains whatever else is queued (up to the batch
//! bounds, optionally lingering a little), and writes everything in one transaction:
//! dead letters, then the acknowledged prefix, then the appends.
//!
//! Commits and syncs are separate. A commit makes the records visible to the forwarder
//! at once (it may send them to Kafka right away: that only ever makes a duplicate).
//! The fsync that makes them durable (`Wal::sync`: one `fdatasync` of the WAL's
//! journal) follows within `sync_linger` of the first unsynced append, and only then is
//! the durable count published, which releases the MQTT acknowledgements (rule 1).
//! Fewer, larger fsyncs write far fewer bytes: each one rewrites a partly filled page.
//! With `sync_linger` = 0 every batch with appends is committed durably (one fsync),
//! and while it fsyncs the next batch queues up by itself, so batches grow with load.
//!
//! Ack-only batches are committed without fsync; the next durable commit (or the idle
//! sync below) makes them durable. Losing one to a power cut only resends records.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use wal::{CommitError, Durability, RecordRef, Wal, WriteBatch};

use crate::policy::{DropLog, Expired, Limits};
use crate::state::{self, Shared};

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
    /// For a QoS 2 message: its packet id, remembered with the record until the broker
    /// releases it (`wal::session`).
    pub qos2_pkid: Option<u16>,
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
}

/// An ingest command on its way to disk, in arrival order.
#[derive(Debug)]
enum Entry {
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
fn record_load(entries: &[Entry]) -> (u64, u64) {
    entries.iter().fold((0, 0), |(n, b), e| match e {
        Entry::Record(p) => (n + 1, b + 13 + p.size() as u64),
        Entry::Session(_) => (n, b),
    })
}

/// Records among `entries`.
fn records(entries: &[Entry]) -> usize {
    entries
        .iter()
        .filter(|e| matches!(e, Entry::Record(_)))
        .count()
}

/// The WAL thread's two inboxes. The forwarder's commands (deletes, dead letters; in
/// the order sent, so a record is parked before an ack covering it deletes it) have
/// their own channel and are always taken first: while commits fail and appends are
/// held, they must not wait behind the ingest's appends, since the deletes are what
/// frees space on a full disk.
#[derive(Debug)]
pub struct Inbox {
    ingest: mpsc::Receiver<WalCmd>,
    forward: mpsc::Receiver<WalCmd>,
    ingest_open: bool,
    forward_open: bool,
}

impl Inbox {
    /// Appends come on `ingest`; acks and dead letters on `forward`.
    pub fn new(ingest: mpsc::Receiver<WalCmd>, forward: mpsc::Receiver<WalCmd>) -> Self {
        Self {
            ingest,
            forward,
            ingest_open: true,
            forward_open: true,
        }
    }

    /// The next command, forwarder's first; `None` once every sender is gone.
    async fn recv(&mut self) -> Option<WalCmd> {
        loop {
            if !self.ingest_open && !self.forward_open {
                return None;
            }
            tokio::select! {
                biased;
                cmd = self.forward.recv(), if self.forward_open => match cmd {
                    Some(cmd) => return Some(cmd),
                    None => self.forward_open = false,
                },
                cmd = self.ingest.recv(), if self.ingest_open => match cmd {
                    Some(cmd) => return Some(cmd),
                    None => self.ingest_open = false,
                },
            }
        }
    }

    /// A queued command, forwarder's first.
    fn try_recv(&mut self) -> Result<WalCmd, mpsc::error::TryRecvError> {
        if let Some(cmd) = self.try_recv_forward() {
            return Ok(cmd);
        }
        if self.ingest_open {
            match self.ingest.try_recv() {
                Err(mpsc::error::TryRecvError::Disconnected) => self.ingest_open = false,
                r => return r,
            }
        }
        if self.forward_open {
            Err(mpsc::error::TryRecvError::Empty)
        } else {
            Err(mpsc::error::TryRecvError::Disconnected)
        }
    }

    /// A queued forwarder command.
    fn try_recv_forward(&mut self) -> Option<WalCmd> {
        if !self.forward_open {
            return None;
        }
        match self.forward.try_recv() {
            Ok(cmd) => Some(cmd),
            Err(mpsc::error::TryRecvError::Disconnected) => {
                self.forward_open = false;
                None
            }
            Err(mpsc::error::TryRecvError::Empty) => None,
        }
    }
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

/// Free bytes for unprivileged users on the filesystem holding `path`.
fn fs_free(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe_zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    // The fields are narrower than u64 on some 32-bit targets.
    #[allow(clippy::unnecessary_cast)]
    let free = st.f_bavail as u64 * st.f_frsize as u64;
    (rc == 0).then_some(free)
}

fn unsafe_zeroed() -> libc::statvfs {
    // SAFETY: statvfs is a plain C struct of integers; all-zero is a valid value.
    #[allow(unsafe_code)]
    unsafe {
        std::mem::zeroed()
    }
}

/// Why appending `need` more bytes would eat the reserve, if it would.
fn low_space(wal: &Wal, min_free: u64, need: u64) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if min_free == 0 {
        return None;
    }
    let dir = wal.path().parent()?;
    let free = fs_free(dir)?;
    if free >= min_free + need {
        return None;
    }
    // Pages freed by deletes are reused inside the file: if the file's allocated
    // blocks are at least twice what it holds, the append fits without the filesystem.
    let on_disk = std::fs::metadata(wal.path())
        .map(|m| m.blocks() * 512)
        .unwrap_or(0);
    let s = wal.stats();
    let live = s.bytes + s.dead_letter_bytes;
    if on_disk >= 2 * live + 2 * need + (1 << 20) {
        return None;
    }
    Some(format!(
        "disk almost full: {free} bytes free under {}, below wal.min_free_space ({min_free}); waiting for Kafka to drain the backlog",
        dir.display()
    ))
}

/// Run the WAL thread until every command sender of `inbox` is gone (or `abort` is cancelled
/// while a commit keeps failing). `durable` receives the number of ingest commands on disk;
/// `on_append` is called after each commit that appended records.
pub fn run(
    wal: Arc<Wal>,
    mut rx: Inbox,
    durable: watch::Sender<u64>,
    shared: Arc<Shared>,
    mut opts: WriterOptions,
    abort: CancellationToken,
    on_append: impl Fn(),
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("current-thread runtime for the WAL thread");
    let mut appends: Vec<Entry> = Vec::with_capacity(opts.max_batch_records.min(65_536));
    let mut dead: Vec<(u64, String)> = Vec::new();
    let mut ack: Option<u64> = None;
    let mut durable_count = 0u64;
    let mut unsynced = false;
    let mut closed = false;
    // Committed appends waiting for their fsync, the sequence of the first, and when
    // that fsync is due.
    let mut waiting = Unsynced::default();
    let mut last_commit = Instant::now() - MIN_COMMIT_INTERVAL;

    // Appends received while commits were failing: the head of the next batch.
    let mut held: Vec<Entry> = Vec::new();
    let mut drop_log = DropLog::default();
    let mut last_expiry = Instant::now();
    // The commit/sync context over the state above.
    macro_rules! retry {
        () => {
            Retry {
                min_free: opts.min_free_space,
                limits: &opts.limits,
                drop_log: &mut drop_log,
                wal: &wal,
                shared: &shared,
                abort: &abort,
                rt: &rt,
                rx: &mut rx,
                held: &mut held,
                closed: &mut closed,
                waiting: &mut waiting,
                durable_count: &mut durable_count,
                durable: &durable,
            }
        };
    }

    while !closed {
        shared.heartbeats.wal.beat();
        if let Some(rx) = opts.reload.as_mut() {
            if rx.has_changed().unwrap_or(false) {
                opts.limits = rx.borrow_and_update().config.wal.limits();
            }
        }
        if opts.limits.max_age.is_some() && last_expiry.elapsed() >= EXPIRY_EVERY {
            last_expiry = Instant::now();
            let mut ctx = retry!();
            if !ctx.expire() {
                return;
            }
            unsynced = true;
        }
        drop_log.flush(&opts.limits, false);
        let mut bytes = 0usize;
        if held.is_empty() {
            // 1. Block for the first command (or idle-sync after a while).
            let first = rt.block_on(async {
                if let Some(due) = waiting.due {
                    let wait = due.saturating_duration_since(Instant::now());
                    tokio::time::timeout(wait, rx.recv()).await
                } else if unsynced {
                    tokio::time::timeout(opts.idle_sync, rx.recv()).await
                } else if opts.limits.max_age.is_some() {
                    // Wake up to expire old records even when nothing arrives.
                    tokio::time::timeout(EXPIRY_EVERY, rx.recv()).await
                } else {
                    Ok(state::beating(&shared.heartbeats.wal, rx.recv()).await)
                }
            });
            match first {
                Err(_) if waiting.due.is_some() => {
                    let mut ctx = retry!();
                    if !ctx.sync_appends() {
                        return;
                    }
                    unsynced = false;
                    continue;
                }
                Err(_) => {
                    sync_unsynced(&wal, &shared, &mut unsynced);
                    continue;
                }
                Ok(None) => break,
                Ok(Some(cmd)) => take(cmd, &mut appends, &mut dead, &mut ack, &mut bytes),
            }
        } else {
            let mut n = 0;
            for e in held.iter() {
                if n >= opts.max_batch_records || bytes >= opts.max_batch_bytes {
                    break;
                }
                bytes += e.size();
                n += 1;
            }
            appends.extend(held.drain(..n));
        }
        // 2. Drain what is already queued, up to the bounds; linger if configured.
        // (Not while older held appends wait: they must be committed first.)
        // Without an fsync per commit, commits would follow each other as fast as
        // messages arrive, a few records each, and redb's per-commit work would eat
        // the CPU under load: at most one commit per MIN_COMMIT_INTERVAL then.
        let paced = if opts.sync_linger.is_zero() {
            Duration::ZERO
        } else {
            MIN_COMMIT_INTERVAL.saturating_sub(last_commit.elapsed())
        };
        let deadline = Instant::now() + opts.linger.max(paced);
        let lingering = !opts.linger.is_zero() || !paced.is_zero();
        while held.is_empty() {
            if appends.len() >= opts.max_batch_records || bytes >= opts.max_batch_bytes {
                break;
            }
            match rx.try_recv() {
                Ok(cmd) => take(cmd, &mut appends, &mut dead, &mut ack, &mut bytes),
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
                Err(mpsc::error::TryRecvError::Empty) => {
                    let now = Instant::now();
                    if !lingering || now >= deadline {
                        break;
                    }
                    // The timer must be created inside the runtime: in an async block.
                    let wait = deadline - now;
                    match rt.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
                        Ok(Some(cmd)) => take(cmd, &mut appends, &mut dead, &mut ack, &mut bytes),
                        Ok(None) => {
                            closed = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
        }
        // 3. Commit, retrying until it succeeds: nothing is acknowledged before.
        #[cfg(feature = "failpoints")]
        crate::failpoint("wal-writer-before-commit");
        let mut ctx = retry!();
        let Some((outcome, durability, committed)) =
            ctx.commit_until_ok(&appends, &mut dead, &mut ack, opts.sync_linger.is_zero())
        else {
            tracing::warn!(
                pending = appends.len(),
                "shutting down with an uncommitted batch; it was never acknowledged, so the broker keeps it"
            );
            return;
        };
        last_commit = Instant::now();
        let c = &shared.counters;
        c.wal_commits.fetch_add(1, Relaxed);
        // Count what moved (a record asked twice after a producer rebuild moves once).
        c.kafka_records_dead_lettered
            .fetch_add(outcome.dead_lettered, Relaxed);
        let durable_now = matches!(durability, Durability::Immediate);
        unsynced = !durable_now;
        if committed < appends.len() {
            // Only a prefix fitted (disk nearly full): the rest heads the next batch.
            let rest: Vec<Entry> = appends.drain(committed..).collect();
            held.splice(0..0, rest);
        }
        if !appends.is_empty() {
            if durable_now {
                c.wal_syncs.fetch_add(1, Relaxed);
                durable_count += appends.len() as u64;
                c.wal_records_committed
                    .fetch_add(records(&appends) as u64, Relaxed);
                // Rule 1: acknowledgements are released only now, after the fsync.
                durable.send_replace(durable_count);
            } else {
                // Visible to the forwarder now; acknowledged after the sync below.
                if waiting.records.is_empty() {
                    waiting.first_seq = wal.stats().next_seq - outcome.appended;
                    waiting.due = Some(Instant::now() + opts.sync_linger);
                }
                waiting.records.append(&mut appends);
            }
            if outcome.appended > 0 {
                on_append();
            }
        }
        appends.clear();
        dead.clear();
        ack = None;
        let due = waiting.due.is_some_and(|d| {
            Instant::now() >= d || waiting.records.len() >= opts.max_batch_records
        });
        if due || (closed && !waiting.records.is_empty()) {
            let mut ctx = retry!();
            if !ctx.sync_appends() {
                return;
            }
            unsynced = false;
        }
    }
    // Committed appends still waiting for their fsync: make them durable and release
    // their acknowledgements before stopping.
    if !waiting.records.is_empty() {
        let mut ctx = retry!();
        if !ctx.sync_appends() {
            return;
        }
    }
    sync_unsynced(&wal, &shared, &mut unsynced);
    // A clean stop leaves an empty journal: the next start replays nothing.
    if let Err(e) = wal.checkpoint() {
        tracing::warn!(error = %e, "WAL checkpoint at shutdown failed; the next start replays the journal");
    }
    tracing::debug!("WAL thread stopped");
}

/// Committed ingest commands waiting for the fsync that makes them durable.
#[derive(Debug, Default)]
struct Unsynced {
    records: Vec<Entry>,
    /// Sequence number of the first record of `records` (the next sequence when they
    /// were committed).
    first_seq: u64,
    /// When the sync is due (`None` while `records` is empty).
    due: Option<Instant>,
}

/// How often records past `wal.max_age` are looked for.
const EXPIRY_EVERY: Duration = Duration::from_secs(1);

/// With `sync_linger` > 0: the least time between two commits (a commit no longer
/// waits for an fsync, which used to space them out by itself).
const MIN_COMMIT_INTERVAL: Duration = Duration::from_millis(1);

/// Most appends held in memory while commits fail (beyond it the channel fills and
/// ingest waits; Mosquitto keeps the rest).
const HOLD_LIMIT: usize = 65_536;

fn build<'a>(appends: &'a [Entry], dead: &[(u64, String)], ack: Option<u64>) -> WriteBatch<'a> {
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

struct Retry<'a> {
    min_free: u64,
    limits: &'a Limits,
    drop_log: &'a mut DropLog,
    wal: &'a Wal,
    shared: &'a Shared,
    abort: &'a CancellationToken,
    rt: &'a tokio::runtime::Runtime,
    rx: &'a mut Inbox,
    held: &'a mut Vec<Entry>,
    closed: &'a mut bool,
    waiting: &'a mut Unsynced,
    durable_count: &'a mut u64,
    durable: &'a watch::Sender<u64>,
}

impl Retry<'_> {
    /// Commit the batch, retrying with backoff (and reopening the database, which redb
    /// requires after a failed commit) until it succeeds. While it fails (disk full,
    /// I/O errors), nothing is acknowledged to MQTT, but acknowledged-prefix deletes
    /// that arrive are committed on their own: that frees space. Returns `None` only
    /// when `abort` was cancelled first.
    fn commit_until_ok(
        &mut self,
        appends: &[Entry],
        dead: &mut Vec<(u64, String)>,
        ack: &mut Option<u64>,
        sync_now: bool,
    ) -> Option<(wal::CommitOutcome, Durability, usize)> {
        let mut delay = Duration::from_millis(50);
        let mut failing = false;
        // On a full disk, try ever smaller prefixes of the batch: a big batch may not
        // fit where a small one does.
        let mut limit = appends.len();
        // Appends held back: by a nearly full disk (true) or by the cap (false).
        let mut low: Option<bool> = None;
        loop {
            self.shared.heartbeats.wal.beat();
            // Keep the free-space reserve (and the cap, with wal.on_full = block):
            // while it is short, commit only deletes (they free room) and hold the
            // appends.
            let need: u64 = appends[..limit]
                .iter()
                .map(|e| (e.size() + 64) as u64)
                .sum();
            let (records, bytes) = record_load(&appends[..limit]);
            if records > 0 {
                let blocked = low_space(self.wal, self.min_free, 2 * need)
                    .map(|why| (why, true))
                    .or_else(|| {
                        self.limits
                            .blocks(self.wal, records, bytes)
                            .map(|why| (why, false))
                    });
                if let Some((why, disk)) = blocked {
                    if limit > 1 {
                        limit /= 2;
                        continue;
                    }
                    // Space comes back at a checkpoint: the journal's bytes, and the
                    // pages that deletes freed (redb reuses them only after a durable
                    // commit). run.rs keeps wal.checkpoint_bytes within half the
                    // reserve, so the checkpoint fits.
                    if disk && self.checkpoint_for_space() {
                        limit = appends.len();
                        continue;
                    }
                    if low.is_none() {
                        tracing::warn!("{why}; not acknowledging MQTT messages");
                        low = Some(disk);
                    }
                    self.shared.mqtt_accepting.store(false, Relaxed);
                    state::set(&self.shared.wal_last_error, Some(why));
                    self.take_queued(dead, ack);
                    self.commit_deletes_alone(appends, dead, ack);
                    let cancelled = self.rt.block_on(async {
                        tokio::select! {
                            _ = self.abort.cancelled() => true,
                            _ = tokio::time::sleep(Duration::from_millis(200)) => false,
                        }
                    });
                    if cancelled {
                        return None;
                    }
                    limit = appends.len();
                    continue;
                }
            }
            if let Some(disk) = low.take() {
                if disk {
                    tracing::info!(
                        "free space is back above the reserve; acknowledging MQTT messages"
                    );
                } else {
                    tracing::info!(
                        "the backlog is below the WAL's cap again; acknowledging MQTT messages"
                    );
                }
                self.shared.mqtt_accepting.store(true, Relaxed);
                state::set(&self.shared.wal_last_error, None);
            }
            let appends = &appends[..limit];
            // With wal.on_full = drop_oldest: the oldest records make room.
            let room = self.limits.make_room(self.wal, records, bytes);
            self.bypass_journal_when_tight(need);
            let sync_now = sync_now || self.wal.is_direct();
            let durability = if sync_now && !(appends.is_empty() && dead.is_empty()) {
                Durability::Immediate
            } else {
                Durability::None
            };
            let started = Instant::now();
            let mut batch = build(appends, dead, *ack);
            if let Some(d) = &room {
                batch.drop_up_to(d.up_to, d.reason);
            }
            let result = self.wal.commit(&batch, durability);
            match result {
                Ok(outcome) => {
                    if let Some(d) = &room {
                        self.drop_log.dropped(d, self.limits);
                    }
                    if matches!(durability, Durability::Immediate) {
                        self.shared.commit_times.record(started.elapsed());
                    }
                    if failing {
                        tracing::info!("WAL commits succeed again; acknowledging MQTT messages");
                        self.shared.wal_writable.store(true, Relaxed);
                        self.shared.mqtt_accepting.store(true, Relaxed);
                        state::set(&self.shared.wal_last_error, None);
                    }
                    return Some((outcome, durability, limit));
                }
                Err(CommitError::Invariant(why)) => {
                    // A bug, not the disk: retrying or reopening would not help, and
                    // nothing of the batch was acknowledged. Stop; the next start
                    // replays the WAL.
                    tracing::error!(error = %why, "WAL invariant violated; stopping the WAL thread");
                    state::set(&self.shared.wal_last_error, Some(why));
                    self.abort.cancel();
                    return None;
                }
                Err(CommitError::AckBeyondEnd { ack: a, next_seq }) => {
                    // A bug upstream; never delete what was not assigned. Drop the ack.
                    tracing::error!(
                        ack = a,
                        next_seq,
                        "acknowledged an unassigned sequence; ignoring that ack"
                    );
                    *ack = None;
                }
                Err(e) => {
                    self.shared.counters.wal_commit_errors.fetch_add(1, Relaxed);
                    let why = if e.is_disk_full() {
                        limit = (limit / 2).max(1).min(appends.len());
                        format!("disk full: {e}")
                    } else {
                        e.to_string()
                    };
                    if !failing {
                        tracing::error!(error = %why, "WAL commit failed; MQTT messages are not acknowledged until it succeeds");
                        failing = true;
                    }
                    self.shared.wal_writable.store(false, Relaxed);
                    self.shared.mqtt_accepting.store(false, Relaxed);
                    // While a failed reopen left the WAL closed, keep its error shown.
                    if !self.wal.is_closed() {
                        state::set(&self.shared.wal_last_error, Some(why));
                    }
                    if self.pause(&mut delay) {
                        return None;
                    }
                    if let Err(e) = self.wal.reopen() {
                        tracing::warn!(error = %e, "reopening the WAL failed; retrying");
                        state::set(
                            &self.shared.wal_last_error,
                            Some(format!("reopening the WAL after a failed commit: {e}")),
                        );
                        continue;
                    }
                    // Older appends waiting for their fsync go first.
                    if !self.restore_waiting() {
                        return None;
                    }
                    self.take_queued(dead, ack);
                    self.commit_deletes_alone(appends, dead, ack);
                }
            }
        }
    }

    /// Drop records older than `wal.max_age`, or move them to the dead-letter table
    /// (`wal.on_expired`). Returns false only when `abort` was cancelled.
    fn expire(&mut self) -> bool {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let Some(expired) = self.limits.expired(self.wal, now_ms) else {
            return true;
        };
        let (mut dead, mut ack) = (Vec::new(), None);
        match expired {
            Expired::Drop(d) => {
                let mut batch = WriteBatch::new();
                batch.drop_up_to(d.up_to, d.reason);
                match self.wal.commit(&batch, Durability::None) {
                    Ok(_) => self.drop_log.dropped(&d, self.limits),
                    // Tried again in a second; a failing WAL shows in the commits.
                    Err(e) => tracing::warn!(error = %e, "dropping expired records failed"),
                }
                return true;
            }
            Expired::DeadLetter(seqs) => {
                let reason = format!(
                    "expired: older than wal.max_age ({})",
                    humantime::format_duration(self.limits.max_age.unwrap_or_default())
                );
                let (first, last, n) = (seqs[0], seqs[seqs.len() - 1], seqs.len());
                dead.extend(seqs.into_iter().map(|s| (s, reason.clone())));
                let Some((outcome, _, _)) = self.commit_until_ok(&[], &mut dead, &mut ack, false)
                else {
                    return false;
                };
                let c = &self.shared.counters;
                c.kafka_records_dead_lettered
                    .fetch_add(outcome.dead_lettered, Relaxed);
                c.wal_records_expired
                    .fetch_add(outcome.dead_lettered, Relaxed);
                self.drop_log.expired(first, last, n as u64, self.limits);
            }
        }
        true
    }

    /// Make the committed appends waiting for their fsync durable and publish them
    /// (rule 1). If the fsync fails, the WAL is reopened and the appends are restored
    /// ([`Retry::restore_waiting`]). Returns false only when `abort` was cancelled first.
    fn sync_appends(&mut self) -> bool {
        if self.waiting.records.is_empty() {
            self.waiting.due = None;
            return true;
        }
        let started = Instant::now();
        match self.wal.sync() {
            Ok(()) => {
                self.shared.commit_times.record(started.elapsed());
                self.shared.counters.wal_syncs.fetch_add(1, Relaxed);
                let entries = std::mem::take(&mut self.waiting.records);
                self.waiting.due = None;
                self.publish(&entries);
                true
            }
            Err(e) => {
                self.shared.counters.wal_commit_errors.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "WAL sync failed; MQTT messages are not acknowledged until their records are durable");
                self.shared.wal_writable.store(false, Relaxed);
                self.shared.mqtt_accepting.store(false, Relaxed);
                state::set(&self.shared.wal_last_error, Some(e.to_string()));
                let mut delay = Duration::from_millis(50);
                loop {
                    // Retrying is progress: the watchdog must not restart the process.
                    self.shared.heartbeats.wal.beat();
                    if self.pause(&mut delay) {
                        return false;
                    }
                    match self.wal.reopen() {
                        Ok(()) => break,
                        Err(e) => {
                            // Counted like the failed commit a retry would be.
                            self.shared.counters.wal_commit_errors.fetch_add(1, Relaxed);
                            tracing::warn!(error = %e, "reopening the WAL failed; retrying");
                            state::set(
                                &self.shared.wal_last_error,
                                Some(format!("reopening the WAL after a failed sync: {e}")),
                            );
                        }
                    }
                }
                if !self.restore_waiting() {
                    return false;
                }
                self.shared.wal_writable.store(true, Relaxed);
                self.shared.mqtt_accepting.store(true, Relaxed);
                state::set(&self.shared.wal_last_error, None);
                true
            }
        }
    }

    /// After a reopen: the appends that were committed but not yet synced are durable
    /// now if the journal replay brought them back (a reopen checkpoints). Those it did
    /// not bring back (a suffix: frames replay in order) are committed again, durably,
    /// in order, before anything newer; they get the same sequence numbers. Then all of
    /// them are published. Returns false only when `abort` was cancelled first.
    fn restore_waiting(&mut self) -> bool {
        let entries = std::mem::take(&mut self.waiting.records);
        self.waiting.due = None;
        if entries.is_empty() {
            return true;
        }
        let present = self
            .wal
            .stats()
            .next_seq
            .saturating_sub(self.waiting.first_seq)
            .min(records(&entries) as u64) as usize;
        // Commit again from just after the last record the replay brought back. The
        // session changes between it and the next record may have come back too;
        // applying them again changes nothing (each sets, removes or clears).
        let start = if present == 0 {
            0
        } else {
            entries
                .iter()
                .enumerate()
                .filter(|(_, e)| matches!(e, Entry::Record(_)))
                .nth(present - 1)
                .map_or(0, |(i, _)| i + 1)
        };
        let mut done = start;
        while done < entries.len() {
            let (mut dead, mut ack) = (Vec::new(), None);
            let Some((_, _, committed)) =
                self.commit_until_ok(&entries[done..], &mut dead, &mut ack, true)
            else {
                return false;
            };
            done += committed;
        }
        tracing::info!(
            replayed = present,
            recommitted = entries.len() - start,
            "WAL reopened; the records waiting for their fsync are durable"
        );
        self.publish(&entries);
        true
    }

    /// Sleep `delay` (then double it, up to 5 s) unless `abort` comes first; true
    /// when it did.
    fn pause(&self, delay: &mut Duration) -> bool {
        let cancelled = self.rt.block_on(async {
            tokio::select! {
                _ = self.abort.cancelled() => true,
                _ = tokio::time::sleep(*delay) => false,
            }
        });
        *delay = (*delay * 2).min(Duration::from_secs(5));
        cancelled
    }

    /// `entries` are durable: release their MQTT acknowledgements (rule 1).
    fn publish(&mut self, entries: &[Entry]) {
        *self.durable_count += entries.len() as u64;
        self.shared
            .counters
            .wal_records_committed
            .fetch_add(records(entries) as u64, Relaxed);
        self.durable.send_replace(*self.durable_count);
    }

    /// Take queued commands: deletes join this batch, appends wait in `held`. The
    /// forwarder's are always all taken, even when `held` is full.
    fn take_queued(&mut self, dead: &mut Vec<(u64, String)>, ack: &mut Option<u64>) {
        let mut ignored = 0usize;
        while let Some(cmd) = self.rx.try_recv_forward() {
            take(cmd, self.held, dead, ack, &mut ignored);
        }
        while self.held.len() < HOLD_LIMIT {
            match self.rx.try_recv() {
                Ok(cmd) => take(cmd, self.held, dead, ack, &mut ignored),
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    *self.closed = true;
                    break;
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
            }
        }
    }

    /// Bypass the WAL's journal while free space is within reach of the reserve: the
    /// journal takes up to twice `checkpoint_bytes` of its own until a checkpoint, and
    /// the pages deletes free come back only after a durable redb commit
    /// ([`Wal::set_direct`]).
    fn bypass_journal_when_tight(&self, need: u64) {
        if self.min_free == 0 {
            return;
        }
        let Some(free) = self.wal.path().parent().and_then(fs_free) else {
            return;
        };
        let tight = free < self.min_free + 2 * self.wal.checkpoint_bytes() + 2 * need;
        if tight == self.wal.is_direct() {
            return;
        }
        match self.wal.set_direct(tight) {
            Ok(()) if tight => tracing::info!(
                free,
                "little free disk space: committing straight to redb, without the journal"
            ),
            Ok(()) => tracing::info!(free, "free disk space is back: using the WAL journal again"),
            Err(e) => tracing::warn!(error = %e, "switching the WAL journal failed"),
        }
    }

    /// On a nearly full disk: checkpoint if anything was committed since the last
    /// checkpoint, so that the journal's space and the pages deletes freed come back.
    /// True when it did.
    fn checkpoint_for_space(&self) -> bool {
        if self.wal.journal_len() <= wal::journal::HEADER_LEN {
            return false;
        }
        match self.wal.checkpoint() {
            Ok(()) => {
                tracing::info!("checkpointed the WAL to free disk space");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "WAL checkpoint to free disk space failed");
                false
            }
        }
    }

    /// Commit pending deletes without the appends: it needs little space and frees some.
    fn commit_deletes_alone(
        &mut self,
        appends: &[Entry],
        dead: &mut Vec<(u64, String)>,
        ack: &mut Option<u64>,
    ) {
        if appends.is_empty() || (ack.is_none() && dead.is_empty()) {
            return;
        }
        match self
            .wal
            .commit(&build(&[], dead, *ack), Durability::Immediate)
        {
            Ok(o) => {
                let c = &self.shared.counters;
                c.wal_commits.fetch_add(1, Relaxed);
                c.kafka_records_dead_lettered
                    .fetch_add(o.dead_lettered, Relaxed);
                tracing::info!(
                    deleted = o.acked,
                    "deleted records Kafka acknowledged to free WAL space"
                );
                *ack = None;
                dead.clear();
                self.checkpoint_for_space();
            }
            Err(e) => {
                tracing::debug!(error = %e, "commit of deletes alone failed too");
                let _ = self.wal.reopen();
            }
        }
    }
}

fn take(
    cmd: WalCmd,
    appends: &mut Vec<Entry>,
    dead: &mut Vec<(u64, String)>,
    ack: &mut Option<u64>,
    bytes: &mut usize,
) {
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
    }
}

fn sync_unsynced(wal: &Wal, shared: &Shared, unsynced: &mut bool) {
    if !*unsynced {
        return;
    }
    match wal.sync() {
        Ok(()) => *unsynced = false,
        Err(e) => {
            // Only deletes are at stake: they are redone (records resent) if lost.
            tracing::warn!(error = %e, "WAL idle sync failed");
            state::set(&shared.wal_last_error, Some(e.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(i: u8) -> Pending {
        Pending {
            topic: "t".into(),
            payload: Bytes::from(vec![i; 8]),
            qos: 1,
            retain: false,
            dup: false,
            receive_time_ms: 0,
            qos2_pkid: None,
        }
    }

    /// With commits failing and `held` full, the forwarder's deletes must still be
    /// taken (they free the space), not wait behind queued appends.
    #[test]
    fn forwarder_commands_are_taken_when_held_appends_are_full() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), wal::WalOptions::default()).unwrap();
        let shared = Shared::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (ingest_tx, ingest_rx) = mpsc::channel(16);
        let (forward_tx, forward_rx) = mpsc::channel(16);
        let mut inbox = Inbox::new(ingest_rx, forward_rx);
        for i in 0..16u8 {
            ingest_tx.try_send(WalCmd::Append(pending(i))).unwrap();
        }
        forward_tx
            .try_send(WalCmd::DeadLetter(7, "refused".into()))
            .unwrap();
        forward_tx.try_send(WalCmd::AckUpTo(9)).unwrap();
        let mut held: Vec<Entry> = (0..HOLD_LIMIT).map(|_| Entry::Record(pending(0))).collect();
        let mut closed = false;
        let abort = CancellationToken::new();
        let limits = Limits::default();
        let mut drop_log = DropLog::default();
        let mut ctx = Retry {
            min_free: 0,
            limits: &limits,
            drop_log: &mut drop_log,
            wal: &wal,
            shared: &shared,
            abort: &abort,
            rt: &rt,
            rx: &mut inbox,
            held: &mut held,
            closed: &mut closed,
            waiting: &mut Unsynced::default(),
            durable_count: &mut 0,
            durable: &watch::channel(0).0,
        };
        let (mut dead, mut ack) = (Vec::new(), None);
        ctx.take_queued(&mut dead, &mut ack);
        assert_eq!(ack, Some(9), "the ack waited behind held appends");
        assert_eq!(dead, vec![(7, "refused".to_string())]);
        assert_eq!(
            held.len(),
            HOLD_LIMIT,
            "appends beyond the limit were taken"
        );
        assert!(!closed);
    }

    /// A WAL thread running on a fresh WAL, with no forwarder (its channel is closed
    /// from the start).
    struct Running {
        _dir: tempfile::TempDir,
        wal: Arc<Wal>,
        tx: mpsc::Sender<WalCmd>,
        durable: watch::Receiver<u64>,
        shared: Arc<Shared>,
        thread: std::thread::JoinHandle<()>,
    }

    fn start(linger: Duration, sync_linger: Duration) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let wal = Arc::new(Wal::open(dir.path(), wal::WalOptions::default()).unwrap());
        let (tx, rx) = mpsc::channel(16);
        let (durable_tx, durable) = watch::channel(0u64);
        let opts = WriterOptions {
            max_batch_records: 100,
            max_batch_bytes: 1 << 20,
            linger,
            sync_linger,
            idle_sync: Duration::from_secs(1),
            min_free_space: 0,
            limits: Default::default(),
            reload: None,
        };
        let shared = Arc::new(Shared::default());
        let thread = std::thread::spawn({
            let (wal, shared) = (wal.clone(), shared.clone());
            move || {
                let (_, no_forwarder) = mpsc::channel(1);
                run(
                    wal,
                    Inbox::new(rx, no_forwarder),
                    durable_tx,
                    shared,
                    opts,
                    CancellationToken::new(),
                    || {},
                )
            }
        });
        Running {
            _dir: dir,
            wal,
            tx,
            durable,
            shared,
            thread,
        }
    }

    fn wait(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// With `sync_linger`, records are visible to the forwarder at once, and the
    /// acknowledgements wait for one fsync that covers all of them.
    #[test]
    fn sync_linger_shows_records_at_once_and_acknowledges_after_one_fsync() {
        let r = start(Duration::ZERO, Duration::from_secs(1));
        for i in 0..3u8 {
            r.tx.blocking_send(WalCmd::Append(pending(i))).unwrap();
            wait("the record to be visible", || {
                r.wal.stats().records == u64::from(i) + 1
            });
        }
        // Visible, not yet acknowledged: the fsync is due 1 s after the first.
        assert_eq!(*r.durable.borrow(), 0, "acknowledged before the fsync");
        wait("the acknowledgements", || *r.durable.borrow() == 3);
        let c = &r.shared.counters;
        assert_eq!(c.wal_syncs.load(Relaxed), 1);
        assert_eq!(c.wal_commits.load(Relaxed), 3);
        assert_eq!(c.wal_records_committed.load(Relaxed), 3);
        drop(r.tx);
        r.thread.join().expect("WAL thread panicked");
        // A clean stop checkpoints: nothing left to replay.
        assert_eq!(r.wal.journal_len(), wal::journal::HEADER_LEN);
    }

    /// The ingest goes away while a committed append waits for its fsync: the WAL
    /// thread syncs and publishes it before stopping.
    #[test]
    fn a_stop_during_sync_linger_syncs_and_acknowledges_first() {
        let r = start(Duration::ZERO, Duration::from_secs(1));
        r.tx.blocking_send(WalCmd::Append(pending(1))).unwrap();
        wait("the record to be visible", || r.wal.stats().records == 1);
        drop(r.tx);
        r.thread.join().expect("WAL thread panicked");
        assert_eq!(*r.durable.borrow(), 1, "stopped without acknowledging");
        assert_eq!(r.wal.journal_len(), wal::journal::HEADER_LEN);
    }

    /// `wal.commit_linger` > 0 used to panic the WAL thread ("no reactor running").
    #[test]
    fn commit_linger_commits_after_lingering() {
        let r = start(Duration::from_millis(5), Duration::ZERO);
        for i in 0..3u8 {
            r.tx.blocking_send(WalCmd::Append(pending(i))).unwrap();
        }
        drop(r.tx);
        r.thread.join().expect("WAL thread panicked");
        assert_eq!(*r.durable.borrow(), 3);
        assert_eq!(r.wal.stats().records, 3);
    }
}
