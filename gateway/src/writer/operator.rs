//! An operator's replay or purge of dead letters (admin API, CLI). The WAL thread
//! commits each one on its own and durably, after the batch it arrived with, and
//! answers on the command's reply channel.

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
        if !self.waiting.records.is_empty() && !self.sync_appends() {
            return false;
        }
        for op in std::mem::take(&mut self.operator) {
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
