//! An operator's replay or purge of dead letters (admin API, CLI). The WAL thread
//! commits each one on its own and durably, after the batch it arrived with, and
//! answers on the command's reply channel. The admin API waits for that answer only so
//! long (a WAL thread retrying a failing disk may not get to it); a command it gave
//! up on is never applied later.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tokio::sync::oneshot;
use wal::{Durability, WriteBatch};

use super::thread::WalThread;
use crate::state;

/// Replay or purge these dead letters.
#[derive(Debug)]
pub struct DeadLetterOp {
    /// Replay (append the records again) or purge (delete them).
    pub replay: bool,
    /// The dead letters, by sequence, in the order to replay them.
    pub seqs: Vec<u64>,
    /// How the operator chose them, for the log line.
    pub selection: String,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<OpDone, String>>,
    /// Who has the command: the WAL thread takes it ([`Claim::take`]) or the admin API
    /// gives up on it ([`Claim::give_up`]), never both, so a request that timed out was
    /// certainly not applied.
    pub claim: Claim,
}

/// The handover of one operator's command between the admin API and the WAL thread.
#[derive(Debug, Clone, Default)]
pub struct Claim(Arc<AtomicU8>);

const WAITING: u8 = 0;
const TAKEN: u8 = 1;
const GIVEN_UP: u8 = 2;

impl Claim {
    /// The WAL thread starts on the command; false if the requester gave up first.
    pub fn take(&self) -> bool {
        self.0
            .compare_exchange(WAITING, TAKEN, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// The requester stops waiting; false if the WAL thread has already started (then
    /// its answer comes soon: one commit).
    pub fn give_up(&self) -> bool {
        self.0
            .compare_exchange(WAITING, GIVEN_UP, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }
}

/// What an operator's command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpDone {
    /// Dead letters replayed or purged (those already gone are not counted).
    pub done: u64,
    /// With a replay: the sequence the first replayed record got.
    pub first_seq: Option<u64>,
}

impl WalThread {
    /// Run the operators' commands taken so far. False only when `abort` was
    /// cancelled first.
    pub(crate) fn run_operator(&mut self) -> bool {
        // Appends waiting for their fsync first: a replay's records must not come
        // between them (after a failed sync, a suffix of them is committed again with
        // the same sequence numbers).
        if self.has_unsynced_appends() && !self.sync_appends() {
            return false;
        }
        for op in std::mem::take(&mut self.operator) {
            if !op.claim.take() {
                tracing::warn!(
                    selection = %op.selection,
                    "an operator's dead-letter request was given up by the admin API before the WAL could run it: not applied"
                );
                continue;
            }
            let mut batch = WriteBatch::new();
            for &seq in &op.seqs {
                if op.replay {
                    batch.replay_dead_letter(seq);
                } else {
                    batch.purge_dead_letter(seq);
                }
            }
            let what = if op.replay { "replayed" } else { "purged" };
            let result = match self.wal.commit(&batch, Durability::Immediate) {
                Ok(out) => {
                    let done = if op.replay {
                        out.dead_letters_replayed
                    } else {
                        out.dead_letters_purged
                    };
                    if op.replay {
                        tracing::info!(
                            done,
                            asked = op.seqs.len(),
                            selection = %op.selection,
                            first_seq = out.first_appended,
                            "dead letters replayed: their records are in the backlog again, in their original order"
                        );
                    } else {
                        tracing::warn!(
                            done,
                            asked = op.seqs.len(),
                            selection = %op.selection,
                            "dead letters purged by an operator: deleted for good"
                        );
                    }
                    if out.appended > 0 {
                        (self.on_append)();
                    }
                    Ok(OpDone {
                        done,
                        first_seq: out.first_appended,
                    })
                }
                Err(e) => {
                    // The next batch's commit meets the same storage and reopens it.
                    tracing::error!(error = %e, selection = %op.selection, "dead letters could not be {what}");
                    state::set(&self.shared.wal_last_error, Some(e.to_string()));
                    Err(format!("the WAL could not commit: {e}"))
                }
            };
            let _ = op.reply.send(result);
        }
        true
    }
}
