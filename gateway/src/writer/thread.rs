//! The WAL thread's state and its loop: gather a batch, commit it, sync when due.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use wal::{CommitError, Durability, Wal};

use super::{
    records, take, Entry, Inbox, WalCmd, WriterOptions, EXPIRY_EVERY, MIN_COMMIT_INTERVAL,
};
use crate::policy::DropLog;
use crate::state::{self, Shared};

/// Committed ingest commands waiting for the fsync that makes them durable.
#[derive(Debug, Default)]
pub(crate) struct Unsynced {
    pub(crate) records: Vec<Entry>,
    /// Sequence number of the first record of `records` (the next sequence when they
    /// were committed).
    pub(crate) first_seq: u64,
    /// When the sync is due (`None` while `records` is empty).
    pub(crate) due: Option<Instant>,
}

/// What woke the WAL thread up while it waited for the first command of a batch.
#[derive(Debug)]
enum Wake {
    /// A command (`None`: every sender is gone).
    Command(Option<WalCmd>),
    /// A wait ran out.
    Timeout,
    /// The sync thread's answer for the appends in `syncing`.
    Synced(Result<Duration, CommitError>),
}

/// Everything the WAL thread owns.
pub(crate) struct WalThread {
    pub(crate) wal: Arc<Wal>,
    pub(crate) rx: Inbox,
    /// Publishes how many ingest commands are durable (releases MQTT acks).
    pub(crate) durable: watch::Sender<u64>,
    pub(crate) durable_count: u64,
    pub(crate) shared: Arc<Shared>,
    pub(crate) opts: WriterOptions,
    /// Stops the retries of a commit that keeps failing (at shutdown).
    pub(crate) abort: CancellationToken,
    /// Timers for the waits (a current-thread runtime: the inbox is async).
    pub(crate) rt: tokio::runtime::Runtime,
    /// Appends received while commits were failing: the head of the next batch.
    pub(crate) held: Vec<Entry>,
    /// Every command sender is gone.
    pub(crate) closed: bool,
    pub(crate) waiting: Unsynced,
    /// Committed appends whose fsync the sync thread is running: commits go on
    /// meanwhile, and they are published when it is done (in order: they are older
    /// than `waiting`).
    pub(crate) syncing: Option<Unsynced>,
    /// Asks the sync thread for one `Wal::sync_detached`.
    sync_jobs: Option<std::sync::mpsc::Sender<()>>,
    /// The sync thread's answers: how long the fsync took, or why it failed.
    pub(crate) sync_done: mpsc::UnboundedReceiver<Result<Duration, CommitError>>,
    syncer: Option<std::thread::JoinHandle<()>>,
    /// Commits without fsync (deletes) since the last sync.
    unsynced: bool,
    last_commit: Instant,
    last_expiry: Instant,
    pub(crate) drop_log: DropLog,
    /// Operators' commands taken while gathering, run after the batch.
    pub(crate) operator: Vec<super::operator::DeadLetterOp>,
    pub(crate) on_append: Box<dyn Fn() + Send>,
}

impl std::fmt::Debug for WalThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalThread")
            .field("durable_count", &self.durable_count)
            .field("held", &self.held.len())
            .field("waiting", &self.waiting.records.len())
            .finish()
    }
}

impl WalThread {
    pub(crate) fn new(
        wal: Arc<Wal>,
        rx: Inbox,
        durable: watch::Sender<u64>,
        shared: Arc<Shared>,
        opts: WriterOptions,
        abort: CancellationToken,
        on_append: Box<dyn Fn() + Send>,
    ) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("current-thread runtime for the WAL thread");
        // The fsync that makes committed appends durable runs here: a slow one (the
        // disk busy with someone else's writeback) would otherwise hold every commit,
        // and so every record's way to Kafka, behind it.
        let (jobs, jobs_rx) = std::sync::mpsc::channel::<()>();
        let (done_tx, sync_done) = mpsc::unbounded_channel();
        let syncer = {
            let (wal, shared) = (Arc::clone(&wal), Arc::clone(&shared));
            std::thread::Builder::new()
                .name("wal-sync".into())
                .spawn(move || {
                    // Beats every second while it waits; a wedged fsync starves the
                    // systemd watchdog through this heartbeat.
                    let beat = || shared.heartbeats.wal_sync.beat();
                    loop {
                        beat();
                        match jobs_rx.recv_timeout(Duration::from_secs(1)) {
                            Ok(()) => {
                                let started = Instant::now();
                                let result = wal.sync_detached().map(|()| started.elapsed());
                                if done_tx.send(result).is_err() {
                                    break;
                                }
                            }
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                        }
                    }
                })
                .expect("spawn the WAL sync thread")
        };
        Self {
            wal,
            rx,
            durable,
            durable_count: 0,
            shared,
            opts,
            abort,
            rt,
            held: Vec::new(),
            closed: false,
            waiting: Unsynced::default(),
            syncing: None,
            sync_jobs: Some(jobs),
            sync_done,
            syncer: Some(syncer),
            operator: Vec::new(),
            unsynced: false,
            last_commit: Instant::now() - MIN_COMMIT_INTERVAL,
            last_expiry: Instant::now(),
            drop_log: DropLog::default(),
            on_append,
        }
    }

    /// The loop, until every sender is gone (or `abort` while a commit fails).
    pub(crate) fn run(mut self) {
        let mut appends: Vec<Entry> = Vec::with_capacity(self.opts.max_batch_records.min(65_536));
        let mut dead: Vec<(u64, String)> = Vec::new();
        let mut ack: Option<u64> = None;
        while !self.closed {
            self.shared.heartbeats.wal.beat();
            if !self.poll_synced() {
                return;
            }
            if self.sync_due() && !self.start_sync() {
                return;
            }
            self.reconfigure();
            if self.opts.limits.max_age.is_some() && self.last_expiry.elapsed() >= EXPIRY_EVERY {
                self.last_expiry = Instant::now();
                if !self.expire() {
                    return;
                }
                self.unsynced = true;
            }
            self.drop_log.flush(&self.opts.limits, false);
            if self.cap_dead_letters() {
                self.unsynced = true;
            }
            let mut bytes = 0usize;
            if self.held.is_empty() {
                // 1. Block for the first command (or sync when one is due).
                match self.first_command() {
                    Wake::Synced(result) => {
                        if !self.on_synced(result) {
                            return;
                        }
                        continue;
                    }
                    // A sync is due (started at the top of the loop), or one runs and
                    // covers the deletes too.
                    Wake::Timeout if self.waiting.due.is_some() || self.syncing.is_some() => {
                        continue
                    }
                    Wake::Timeout => {
                        self.sync_unsynced();
                        continue;
                    }
                    Wake::Command(None) => break,
                    Wake::Command(Some(cmd)) => {
                        if let Some(op) = take(cmd, &mut appends, &mut dead, &mut ack, &mut bytes) {
                            self.operator.push(op);
                        }
                    }
                }
            } else {
                let mut n = 0;
                for e in self.held.iter() {
                    if n >= self.opts.max_batch_records || bytes >= self.opts.max_batch_bytes {
                        break;
                    }
                    bytes += e.size();
                    n += 1;
                }
                appends.extend(self.held.drain(..n));
            }
            // 2. Drain what is already queued, up to the bounds; linger if configured.
            self.gather(&mut appends, &mut dead, &mut ack, &mut bytes);
            // 3. Commit, retrying until it succeeds: nothing is acknowledged before.
            #[cfg(feature = "failpoints")]
            crate::failpoint("wal-writer-before-commit");
            let sync_now = self.opts.sync_linger.is_zero();
            let Some((outcome, durability, committed)) =
                self.commit_until_ok(&appends, &mut dead, &mut ack, sync_now)
            else {
                tracing::warn!(
                    pending = appends.len(),
                    "shutting down with an uncommitted batch; it was never acknowledged, so the broker keeps it"
                );
                return;
            };
            self.last_commit = Instant::now();
            let c = &self.shared.counters;
            c.wal_commits.fetch_add(1, Relaxed);
            // Count what moved (a record asked twice after a producer rebuild moves once).
            c.kafka_records_dead_lettered
                .fetch_add(outcome.dead_lettered, Relaxed);
            let durable_now = durability == Durability::Immediate;
            self.unsynced = !durable_now;
            if committed < appends.len() {
                // Only a prefix fitted (disk nearly full): the rest heads the next batch.
                let rest: Vec<Entry> = appends.drain(committed..).collect();
                self.held.splice(0..0, rest);
            }
            if !appends.is_empty() {
                if durable_now {
                    c.wal_syncs.fetch_add(1, Relaxed);
                    c.wal_records_committed
                        .fetch_add(records(&appends) as u64, Relaxed);
                    // Rule 1: acknowledgements are released only now, after the fsync.
                    self.durable_count += appends.len() as u64;
                    self.durable.send_replace(self.durable_count);
                } else {
                    // Visible to the forwarder now; acknowledged after the sync below.
                    if self.waiting.records.is_empty() {
                        self.waiting.first_seq = self.wal.stats().next_seq - outcome.appended;
                        self.waiting.due = Some(Instant::now() + self.opts.sync_linger);
                    }
                    self.waiting.records.append(&mut appends);
                }
                if outcome.appended > 0 {
                    (self.on_append)();
                }
            }
            appends.clear();
            dead.clear();
            ack = None;
            if self.sync_due() && !self.start_sync() {
                return;
            }
            if !self.operator.is_empty() && !self.run_operator() {
                return;
            }
        }
        // Committed appends still waiting for their fsync: make them durable and release
        // their acknowledgements before stopping.
        if self.has_unsynced_appends() && !self.sync_appends() {
            return;
        }
        self.sync_unsynced();
        // A clean stop leaves an empty journal: the next start replays nothing.
        if let Err(e) = self.wal.checkpoint() {
            tracing::warn!(error = %e, "WAL checkpoint at shutdown failed; the next start replays the journal");
        }
        self.drop_log.flush(&self.opts.limits, true);
        tracing::debug!("WAL thread stopped");
    }

    /// Take a reloaded configuration's limits.
    fn reconfigure(&mut self) {
        if let Some(rx) = self.opts.reload.as_mut() {
            if rx.has_changed().unwrap_or(false) {
                self.opts.limits = rx.borrow_and_update().config.limits();
            }
        }
    }

    /// Block for the first command of a batch, or until the sync in flight is done, or
    /// a wait runs out (a sync is due, or an idle one, or an expiry check).
    fn first_command(&mut self) -> Wake {
        let Self {
            rt,
            rx,
            waiting,
            opts,
            shared,
            unsynced,
            syncing,
            sync_done,
            ..
        } = self;
        let in_flight = syncing.is_some();
        rt.block_on(async {
            let next = async {
                // While a sync runs, the next one waits for it to end, not for its due time.
                let waited = if let Some(due) = waiting.due.filter(|_| !in_flight) {
                    let wait = due.saturating_duration_since(Instant::now());
                    tokio::time::timeout(wait, rx.recv()).await
                } else if *unsynced {
                    tokio::time::timeout(opts.idle_sync, rx.recv()).await
                } else if opts.limits.max_age.is_some() {
                    // Wake up to expire old records even when nothing arrives.
                    tokio::time::timeout(EXPIRY_EVERY, rx.recv()).await
                } else {
                    Ok(state::beating(&shared.heartbeats.wal, rx.recv()).await)
                };
                waited.map_or(Wake::Timeout, Wake::Command)
            };
            tokio::select! {
                biased;
                done = sync_done.recv(), if in_flight => Wake::Synced(done.unwrap_or_else(|| {
                    Err(std::io::Error::other("the WAL sync thread stopped").into())
                })),
                wake = next => wake,
            }
        })
    }

    /// Committed appends not yet durable: waiting for their sync or in it.
    pub(crate) fn has_unsynced_appends(&self) -> bool {
        self.syncing.is_some() || !self.waiting.records.is_empty()
    }

    /// The waiting appends' sync is due and none runs.
    fn sync_due(&self) -> bool {
        self.syncing.is_none()
            && self.waiting.due.is_some_and(|d| {
                Instant::now() >= d || self.waiting.records.len() >= self.opts.max_batch_records
            })
    }

    /// Hand the waiting appends' fsync to the sync thread (unless one runs); without
    /// it (it panicked), sync on this thread. False only when `abort` was cancelled
    /// while recovering from a failed sync.
    pub(crate) fn start_sync(&mut self) -> bool {
        if self.syncing.is_some() {
            return true;
        }
        if self.waiting.records.is_empty() {
            self.waiting.due = None;
            return true;
        }
        // The sync covers the commits without fsync (deletes) made so far too.
        self.unsynced = false;
        if self
            .sync_jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(()).is_ok())
        {
            self.syncing = Some(std::mem::take(&mut self.waiting));
            return true;
        }
        self.sync_jobs = None;
        self.sync_appends()
    }

    /// Take the sync thread's answer if it is there; false only when `abort` was
    /// cancelled while recovering from a failed sync.
    fn poll_synced(&mut self) -> bool {
        if self.syncing.is_none() {
            return true;
        }
        match self.sync_done.try_recv() {
            Ok(result) => self.on_synced(result),
            Err(mpsc::error::TryRecvError::Empty) => true,
            Err(mpsc::error::TryRecvError::Disconnected) => self.on_synced(Err(
                std::io::Error::other("the WAL sync thread stopped").into(),
            )),
        }
    }

    /// Drain what is already queued into the batch, up to the bounds; linger if
    /// configured. (Not while older held appends wait: they must be committed first.)
    /// Without an fsync per commit, commits would follow each other as fast as
    /// messages arrive, a few records each, and redb's per-commit work would eat the
    /// CPU under load: at most one commit per `MIN_COMMIT_INTERVAL` then.
    fn gather(
        &mut self,
        appends: &mut Vec<Entry>,
        dead: &mut Vec<(u64, String)>,
        ack: &mut Option<u64>,
        bytes: &mut usize,
    ) {
        let paced = if self.opts.sync_linger.is_zero() {
            Duration::ZERO
        } else {
            MIN_COMMIT_INTERVAL.saturating_sub(self.last_commit.elapsed())
        };
        let deadline = Instant::now() + self.opts.linger.max(paced);
        let lingering = !self.opts.linger.is_zero() || !paced.is_zero();
        while self.held.is_empty() {
            if appends.len() >= self.opts.max_batch_records || *bytes >= self.opts.max_batch_bytes {
                break;
            }
            match self.rx.try_recv() {
                Ok(cmd) => {
                    if let Some(op) = take(cmd, appends, dead, ack, bytes) {
                        self.operator.push(op);
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.closed = true;
                    break;
                }
                Err(mpsc::error::TryRecvError::Empty) => {
                    let now = Instant::now();
                    if !lingering || now >= deadline {
                        break;
                    }
                    // The timer must be created inside the runtime: in an async block.
                    let wait = deadline - now;
                    let rx = &mut self.rx;
                    match self
                        .rt
                        .block_on(async { tokio::time::timeout(wait, rx.recv()).await })
                    {
                        Ok(Some(cmd)) => {
                            if let Some(op) = take(cmd, appends, dead, ack, bytes) {
                                self.operator.push(op);
                            }
                        }
                        Ok(None) => {
                            self.closed = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
        }
    }

    /// fsync the commits made without one (deletes), after a while idle.
    fn sync_unsynced(&mut self) {
        if !self.unsynced {
            return;
        }
        match self.wal.sync() {
            Ok(()) => self.unsynced = false,
            Err(e) => {
                // Only deletes are at stake: they are redone (records resent) if lost.
                tracing::warn!(error = %e, "WAL idle sync failed");
                state::set(&self.shared.wal_last_error, Some(e.to_string()));
            }
        }
    }
}

impl Drop for WalThread {
    fn drop(&mut self) {
        // The sync thread stops when its job channel closes; wait for it, so that the
        // WAL is closed when the WAL thread is gone.
        self.sync_jobs.take();
        if let Some(syncer) = self.syncer.take() {
            let _ = syncer.join();
        }
    }
}
