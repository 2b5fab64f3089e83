//! The syncs that make committed appends durable (rule 1): handed to the sync thread,
//! its answers, and after a failed fsync the reopen and the restore of what waited.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use wal::CommitError;

use super::records;
use super::thread::{Unsynced, WalThread};
use super::Entry;
use crate::state;

impl WalThread {
    /// Make every committed append durable now and publish them (rule 1): the sync in
    /// flight first, then the waiting ones, on this thread. If an fsync fails, the WAL
    /// is reopened and the appends are restored ([`WalThread::restore_waiting`]).
    /// Returns false only when `abort` was cancelled first.
    pub(crate) fn sync_appends(&mut self) -> bool {
        self.settle_sync();
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
            Err(e) => self.recover_from_failed_sync(e),
        }
    }

    /// The sync thread's answer for the appends in `syncing`: published when the fsync
    /// succeeded; otherwise they go back in front of `waiting` and the WAL is reopened
    /// and restored. Returns false only when `abort` was cancelled first.
    pub(crate) fn on_synced(&mut self, result: Result<Duration, CommitError>) -> bool {
        let Some(synced) = self.syncing.take() else {
            return true;
        };
        match result {
            Ok(took) => {
                self.shared.commit_times.record(took);
                self.shared.counters.wal_syncs.fetch_add(1, Relaxed);
                self.publish(&synced.records);
                true
            }
            Err(e) => {
                self.requeue(synced);
                self.recover_from_failed_sync(e)
            }
        }
    }

    /// Wait for the sync in flight, if any, and take its answer without reopening: a
    /// reopen must not run while the sync thread holds the journal, and the appends of
    /// a failed sync must be among those a reopen restores.
    pub(crate) fn settle_sync(&mut self) {
        let Some(synced) = self.syncing.take() else {
            return;
        };
        let Self { rt, sync_done, .. } = self;
        match rt.block_on(sync_done.recv()) {
            Some(Ok(took)) => {
                self.shared.commit_times.record(took);
                self.shared.counters.wal_syncs.fetch_add(1, Relaxed);
                self.publish(&synced.records);
            }
            Some(Err(e)) => {
                self.shared.counters.wal_commit_errors.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "WAL sync failed; MQTT messages are not acknowledged until their records are durable");
                self.requeue(synced);
            }
            None => self.requeue(synced),
        }
    }

    /// Appends whose sync failed go back in front of the waiting ones (they are older).
    fn requeue(&mut self, mut synced: Unsynced) {
        synced.records.append(&mut self.waiting.records);
        self.waiting = Unsynced {
            records: synced.records,
            first_seq: synced.first_seq,
            due: None,
        };
    }

    /// An fsync failed: nothing waiting is acknowledged; reopen the WAL (retrying with
    /// backoff) and restore the waiting appends. Returns false only when `abort` was
    /// cancelled first.
    fn recover_from_failed_sync(&mut self, e: CommitError) -> bool {
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

    /// After a reopen: the appends that were committed but not yet synced are durable
    /// now if the journal replay brought them back (a reopen checkpoints). Those it did
    /// not bring back (a suffix: frames replay in order) are committed again, durably,
    /// in order, before anything newer; they get the same sequence numbers. Then all of
    /// them are published. Returns false only when `abort` was cancelled first.
    pub(crate) fn restore_waiting(&mut self) -> bool {
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
}
