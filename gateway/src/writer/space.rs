//! The free-space reserve (`wal.min_free_space`): appends wait while the WAL's
//! filesystem is short of it, so that the deletes of acknowledged records always fit
//! and the gateway recovers by itself; near it, the journal is bypassed and
//! checkpoints give space back.

use std::path::Path;

use wal::Wal;

use super::thread::WalThread;

/// Free bytes for unprivileged users on the filesystem holding `path`.
pub(crate) fn fs_free(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    // The fields are narrower than u64 on some 32-bit targets.
    #[allow(clippy::unnecessary_cast)]
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Why appending `need` more bytes would eat the reserve, if it would.
pub(crate) fn low_space(wal: &Wal, min_free: u64, need: u64) -> Option<String> {
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

impl WalThread {
    /// Bypass the WAL's journal while free space is within reach of the reserve: the
    /// journal takes up to twice `checkpoint_bytes` of its own until a checkpoint, and
    /// the pages deletes free come back only after a durable redb commit
    /// ([`Wal::set_direct`]).
    pub(crate) fn bypass_journal_when_tight(&self, need: u64) {
        if self.opts.min_free_space == 0 {
            return;
        }
        let Some(free) = self.wal.path().parent().and_then(fs_free) else {
            return;
        };
        let tight = free < self.opts.min_free_space + 2 * self.wal.checkpoint_bytes() + 2 * need;
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
    pub(crate) fn checkpoint_for_space(&self) -> bool {
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
}
