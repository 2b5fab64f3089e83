//! The open journal file: appends, resets and fsyncs, also those run without the
//! WAL's writer lock (the frames' format is in the parent module).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use redb::StorageBackend;

use super::{HEADER_LEN, MAGIC, VERSION};

/// Serializes the journal's fsyncs and remembers a failed one. After a failed fsync
/// the kernel may have dropped the dirty pages and report success for the next one on
/// the same file: every later fsync fails too, until the journal is reopened.
#[derive(Debug, Default)]
struct SyncGate {
    lock: std::sync::Mutex<()>,
    failed: AtomicBool,
}

impl SyncGate {
    fn sync(&self, file: &dyn StorageBackend) -> std::io::Result<()> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.failed.load(Ordering::SeqCst) {
            return Err(std::io::Error::other(
                "an earlier fsync of the journal failed",
            ));
        }
        file.sync_data()
            .inspect_err(|_| self.failed.store(true, Ordering::SeqCst))
    }
}

/// An fsync of the frames written so far, to run without the WAL's writer lock
/// ([`Journal::detach_sync`]).
pub(crate) struct DetachedSync {
    file: Arc<dyn StorageBackend>,
    gate: Arc<SyncGate>,
    generation: u64,
    /// The journal's length when it was taken: the frames it makes durable.
    upto: u64,
}

impl DetachedSync {
    pub fn sync(&self) -> std::io::Result<()> {
        self.gate.sync(&*self.file)
    }

    /// True when `journal` is the file this sync was taken from (not replaced by a
    /// reopen).
    pub fn of(&self, journal: &Journal) -> bool {
        Arc::ptr_eq(&self.gate, &journal.gate)
    }
}

/// The open journal file.
pub(crate) struct Journal {
    file: Arc<dyn StorageBackend>,
    /// End of the last written frame.
    len: u64,
    /// End of the last frame known to be synced.
    synced: u64,
    /// Counts resets: offsets from before a reset mean other frames after it.
    generation: u64,
    gate: Arc<SyncGate>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("len", &self.len)
            .field("synced", &self.synced)
            .finish()
    }
}

impl Journal {
    /// Wrap an opened file; call [`Journal::read_all`] and then [`Journal::reset`].
    pub fn new(file: Box<dyn StorageBackend>) -> Self {
        Self {
            file: Arc::from(file),
            len: 0,
            synced: 0,
            generation: 0,
            gate: Arc::default(),
        }
    }

    /// The whole file.
    pub fn read_all(&self) -> std::io::Result<Vec<u8>> {
        let len = self.file.len()?;
        let len = usize::try_from(len).map_err(std::io::Error::other)?;
        let mut data = vec![0; len];
        self.file.read(0, &mut data)?;
        Ok(data)
    }

    /// Empty the journal (after a checkpoint made everything in it durable in redb)
    /// and make that durable.
    pub fn reset(&mut self) -> std::io::Result<()> {
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        self.generation += 1;
        self.file.set_len(HEADER_LEN)?;
        self.file.write(0, &header)?;
        self.gate.sync(&*self.file)?;
        self.len = HEADER_LEN;
        self.synced = HEADER_LEN;
        Ok(())
    }

    /// Append a frame (not synced).
    pub fn append(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.file.write(self.len, frame)?;
        self.len += frame.len() as u64;
        Ok(())
    }

    /// True when frames were written since the last sync.
    pub fn unsynced(&self) -> bool {
        self.synced < self.len
    }

    /// `fdatasync` the frames written so far.
    pub fn sync(&mut self) -> std::io::Result<()> {
        if self.unsynced() {
            self.gate.sync(&*self.file)?;
            self.synced = self.len;
        }
        Ok(())
    }

    /// An fsync of the frames written so far that the caller runs without holding
    /// the journal (frames may be appended meanwhile); `None` when they are synced.
    pub fn detach_sync(&self) -> Option<DetachedSync> {
        self.unsynced().then(|| DetachedSync {
            file: Arc::clone(&self.file),
            gate: Arc::clone(&self.gate),
            generation: self.generation,
            upto: self.len,
        })
    }

    /// A detached sync of this journal succeeded: its frames are synced.
    pub fn detached_synced(&mut self, done: &DetachedSync) {
        if done.of(self) && done.generation == self.generation {
            self.synced = self.synced.max(done.upto);
        }
    }

    /// An fsync failed: nothing written since the last good one can be trusted.
    pub fn sync_failed(&self) -> bool {
        self.gate.failed.load(Ordering::SeqCst)
    }

    /// Bytes in the journal, header included.
    pub fn len(&self) -> u64 {
        self.len
    }
}
