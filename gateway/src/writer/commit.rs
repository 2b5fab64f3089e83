//! Committing until it succeeds (the syncs are in `sync`): nothing is
//! acknowledged before (rule 1). While commits fail (disk full, I/O errors) the
//! appends are held, the forwarder's deletes still committed (they free space), the
//! WAL reopened (redb refuses writes after a failed commit) and the batch retried with
//! backoff.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use wal::{CommitError, Durability, WriteBatch};

use super::space::low_space;
use super::thread::WalThread;
use super::{build, record_load, records, take, Entry, HOLD_LIMIT};
use crate::policy::Expired;
use crate::state;

impl WalThread {
    /// Commit the batch, retrying with backoff (and reopening the database, which redb
    /// requires after a failed commit) until it succeeds. While it fails (disk full,
    /// I/O errors), nothing is acknowledged to MQTT, but acknowledged-prefix deletes
    /// that arrive are committed on their own: that frees space. Returns `None` only
    /// when `abort` was cancelled first.
    pub(crate) fn commit_until_ok(
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
                let blocked = low_space(&self.wal, self.opts.min_free_space, 2 * need)
                    .map(|why| (why, true))
                    .or_else(|| {
                        self.opts
                            .limits
                            .blocks(&self.wal, records, bytes)
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
            let room = self.opts.limits.make_room(&self.wal, records, bytes);
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
                        self.drop_log.dropped(d, &self.opts.limits);
                    }
                    if matches!(durability, Durability::Immediate) {
                        self.shared.commit_times.record(started.elapsed());
                    }
                    if outcome.checkpointed {
                        self.shared.checkpoint_times.record(started.elapsed());
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
                    self.settle_sync();
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
    pub(crate) fn expire(&mut self) -> bool {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let Some(expired) = self.opts.limits.expired(&self.wal, now_ms) else {
            return true;
        };
        let (mut dead, mut ack) = (Vec::new(), None);
        match expired {
            Expired::Drop(d) => {
                let mut batch = WriteBatch::new();
                batch.drop_up_to(d.up_to, d.reason);
                match self.wal.commit(&batch, Durability::None) {
                    Ok(_) => self.drop_log.dropped(&d, &self.opts.limits),
                    // Tried again in a second; a failing WAL shows in the commits.
                    Err(e) => tracing::warn!(error = %e, "dropping expired records failed"),
                }
                return true;
            }
            Expired::DeadLetter(seqs) => {
                let reason = format!(
                    "expired: older than wal.max_age ({})",
                    humantime::format_duration(self.opts.limits.max_age.unwrap_or_default())
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
                self.drop_log
                    .expired(first, last, n as u64, &self.opts.limits);
            }
        }
        true
    }

    /// Drop the oldest dead letters while the table is over `dead_letters.max_bytes`
    /// (O(1) to check; a read of the oldest dead letters when over). A failed commit is
    /// tried again on the next turn. True when it committed (not durably yet).
    pub(crate) fn cap_dead_letters(&mut self) -> bool {
        let over = self
            .opts
            .limits
            .dead_letters_max_bytes
            .is_some_and(|cap| self.wal.stats().dead_letter_bytes > cap);
        if !over {
            return false;
        }
        let Some(seqs) = self.opts.limits.dead_letters_over_cap(&self.wal) else {
            return false;
        };
        let mut batch = WriteBatch::new();
        for &seq in &seqs {
            batch.drop_dead_letter(seq);
        }
        match self.wal.commit(&batch, Durability::None) {
            Ok(out) => {
                self.drop_log.dead_letters_dropped(
                    seqs[0],
                    seqs[seqs.len() - 1],
                    out.dead_letters_dropped,
                    &self.opts.limits,
                );
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "dropping dead letters over dead_letters.max_bytes failed");
                false
            }
        }
    }

    /// Sleep `delay` (then double it, up to 5 s) unless `abort` comes first; true
    /// when it did.
    pub(crate) fn pause(&self, delay: &mut Duration) -> bool {
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
    pub(crate) fn publish(&mut self, entries: &[Entry]) {
        let now = Instant::now();
        for e in entries {
            if let Entry::Record(p) = e {
                self.shared
                    .to_durable
                    .record(now.saturating_duration_since(p.received));
            }
        }
        self.durable_count += entries.len() as u64;
        self.shared
            .counters
            .wal_records_committed
            .fetch_add(records(entries) as u64, Relaxed);
        self.durable.send_replace(self.durable_count);
    }

    /// Take queued commands: deletes join this batch, appends wait in `held`. The
    /// forwarder's are always all taken, even when `held` is full.
    pub(crate) fn take_queued(&mut self, dead: &mut Vec<(u64, String)>, ack: &mut Option<u64>) {
        let mut ignored = 0usize;
        while let Some(cmd) = self.rx.try_recv_forward() {
            if let Some(op) = take(cmd, &mut self.held, dead, ack, &mut ignored) {
                self.operator.push(op);
            }
        }
        while self.held.len() < HOLD_LIMIT {
            match self.rx.try_recv() {
                Ok(cmd) => {
                    if let Some(op) = take(cmd, &mut self.held, dead, ack, &mut ignored) {
                        self.operator.push(op);
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.closed = true;
                    break;
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
            }
        }
    }

    /// Commit pending deletes without the appends: it needs little space and frees some.
    pub(crate) fn commit_deletes_alone(
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
                self.settle_sync();
                let _ = self.wal.reopen();
            }
        }
    }
}
