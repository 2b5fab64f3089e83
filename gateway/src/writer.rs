//! The WAL thread: the only writer of the WAL. Group commit lives here.
//!
//! It blocks for the first command, drains whatever else is queued (up to the batch
//! bounds, optionally lingering a little), and writes everything in one transaction:
//! dead letters, then the acknowledged prefix, then the appends. A batch with appends
//! is committed with `Durability::Immediate` (one fsync) and only then is the durable
//! count published, which releases the MQTT acknowledgements. While it fsyncs, the
//! next batch queues up by itself, so batches grow with load.
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
}

/// Commands to the WAL thread.
#[derive(Debug)]
pub enum WalCmd {
    /// Append a message. Appends are numbered 1, 2, 3... in the order they are sent
    /// (there is one sender: the ingest task); the durable count says how many are on
    /// disk.
    Append(Pending),
    /// Delete every record `<= seq`: Kafka acknowledged them.
    AckUpTo(u64),
    /// Move a record to the dead-letter table.
    DeadLetter(u64, String),
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
    /// After this long idle with unsynced ack-only commits, fsync them.
    pub idle_sync: Duration,
}

/// Run the WAL thread until every command sender is gone (or `abort` is cancelled
/// while a commit keeps failing). `durable` receives the number of appends on disk;
/// `on_append` is called after each commit that appended records.
pub fn run(
    wal: Arc<Wal>,
    mut rx: mpsc::Receiver<WalCmd>,
    durable: watch::Sender<u64>,
    shared: Arc<Shared>,
    opts: WriterOptions,
    abort: CancellationToken,
    on_append: impl Fn(),
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("current-thread runtime for the WAL thread");
    let mut appends: Vec<Pending> = Vec::with_capacity(opts.max_batch_records.min(65_536));
    let mut dead: Vec<(u64, String)> = Vec::new();
    let mut ack: Option<u64> = None;
    let mut durable_count = 0u64;
    let mut unsynced = false;
    let mut closed = false;

    while !closed {
        // 1. Block for the first command (or idle-sync after a while).
        let first = rt.block_on(async {
            if unsynced {
                tokio::time::timeout(opts.idle_sync, rx.recv()).await
            } else {
                Ok(rx.recv().await)
            }
        });
        let mut bytes = 0usize;
        match first {
            Err(_) => {
                sync_unsynced(&wal, &shared, &mut unsynced);
                continue;
            }
            Ok(None) => break,
            Ok(Some(cmd)) => take(cmd, &mut appends, &mut dead, &mut ack, &mut bytes),
        }
        // 2. Drain what is already queued, up to the bounds; linger if configured.
        let deadline = Instant::now() + opts.linger;
        loop {
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
                    if opts.linger.is_zero() || now >= deadline {
                        break;
                    }
                    match rt.block_on(tokio::time::timeout(deadline - now, rx.recv())) {
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
        let mut batch = WriteBatch::new();
        for p in &appends {
            batch.append(RecordRef {
                topic: &p.topic,
                payload: &p.payload,
                qos: p.qos,
                retain: p.retain,
                dup: p.dup,
                receive_time_ms: p.receive_time_ms,
            });
        }
        for (seq, reason) in &dead {
            batch.dead_letter(*seq, reason.clone());
        }
        if let Some(a) = ack {
            batch.ack_up_to(a);
        }
        let durability = if appends.is_empty() && dead.is_empty() {
            Durability::None
        } else {
            Durability::Immediate
        };
        let Some(outcome) = commit_with_retry(&wal, &batch, durability, &shared, &abort, &rt)
        else {
            tracing::warn!(
                pending = appends.len(),
                "shutting down with an uncommitted batch; it was never acknowledged, so the broker keeps it"
            );
            return;
        };
        let c = &shared.counters;
        c.wal_commits.fetch_add(1, Relaxed);
        // Count what moved (a record asked twice after a producer rebuild moves once).
        c.kafka_records_dead_lettered
            .fetch_add(outcome.dead_lettered, Relaxed);
        unsynced = matches!(durability, Durability::None);
        if !appends.is_empty() {
            durable_count += appends.len() as u64;
            c.wal_records_committed
                .fetch_add(appends.len() as u64, Relaxed);
            // Rule 1: acknowledgements are released only now, after the fsync.
            durable.send_replace(durable_count);
            on_append();
        }
        drop(batch);
        appends.clear();
        dead.clear();
        ack = None;
    }
    sync_unsynced(&wal, &shared, &mut unsynced);
    tracing::debug!("WAL thread stopped");
}

fn take(
    cmd: WalCmd,
    appends: &mut Vec<Pending>,
    dead: &mut Vec<(u64, String)>,
    ack: &mut Option<u64>,
    bytes: &mut usize,
) {
    match cmd {
        WalCmd::Append(p) => {
            *bytes += p.payload.len() + p.topic.len();
            appends.push(p);
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

/// Commit `batch`, retrying with backoff (and reopening the database, which redb
/// requires after a failed commit) until it succeeds. Returns `None` only when
/// `abort` was cancelled first.
fn commit_with_retry(
    wal: &Wal,
    batch: &WriteBatch<'_>,
    durability: Durability,
    shared: &Shared,
    abort: &CancellationToken,
    rt: &tokio::runtime::Runtime,
) -> Option<wal::CommitOutcome> {
    let mut delay = Duration::from_millis(50);
    let mut failing = false;
    loop {
        let d = match durability {
            Durability::None => Durability::None,
            _ => Durability::Immediate,
        };
        match wal.commit(batch, d) {
            Ok(outcome) => {
                if failing {
                    tracing::info!("WAL commits succeed again; accepting MQTT messages");
                    shared.wal_writable.store(true, Relaxed);
                    shared.mqtt_accepting.store(true, Relaxed);
                    state::set(&shared.wal_last_error, None);
                }
                return Some(outcome);
            }
            Err(CommitError::AckBeyondEnd { ack, next_seq }) => {
                // A bug upstream; never delete what was not assigned. Drop the ack only.
                tracing::error!(
                    ack,
                    next_seq,
                    "forwarder acknowledged an unassigned sequence; ignoring that ack"
                );
                debug_assert!(false, "ack beyond end");
                return Some(wal::CommitOutcome::default());
            }
            Err(e) => {
                shared.counters.wal_commit_errors.fetch_add(1, Relaxed);
                let why = if e.is_disk_full() {
                    format!("disk full: {e}")
                } else {
                    e.to_string()
                };
                if !failing {
                    tracing::error!(error = %why, "WAL commit failed; MQTT messages are not acknowledged until it succeeds");
                    failing = true;
                }
                shared.wal_writable.store(false, Relaxed);
                shared.mqtt_accepting.store(false, Relaxed);
                state::set(&shared.wal_last_error, Some(why));
                let cancelled = rt.block_on(async {
                    tokio::select! {
                        _ = abort.cancelled() => true,
                        _ = tokio::time::sleep(delay) => false,
                    }
                });
                if cancelled {
                    return None;
                }
                delay = (delay * 2).min(Duration::from_secs(5));
                if let Err(e) = wal.reopen() {
                    tracing::warn!(error = %e, "reopening the WAL failed; retrying");
                }
            }
        }
    }
}
