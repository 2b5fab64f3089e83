//! Test-only storage fault injection (the `failpoints` feature): a redb storage backend
//! that wraps the ordinary file backend and makes `sync_data` slow or makes syncs and
//! writes fail with EIO, as told by a control file.
//!
//! Set `MKG_WAL_FAULTS` to the path of a control file; [`crate::Wal::open`] and
//! [`crate::Wal::reopen`] then open the database through [`FaultyBackend`]. The file is
//! read again on every sync and write, so a test changes the behaviour of a running
//! gateway by rewriting it. It holds whitespace-separated `key=value` pairs:
//!
//! * `sync_delay_ms=N` — every `sync_data` (fsync) sleeps N ms first.
//! * `sync_eio=N` — `sync_data` fails with EIO until N failures have been injected in
//!   this process in total (raise N to inject more later).
//! * `write_eio=N` — the same for `write`.
//! * `sync_fail=1` / `write_fail=1` — every `sync_data` / `write` fails with EIO while
//!   set (a disk that stays broken until the file is rewritten).
//!
//! A missing or empty file injects nothing. Each injected error is reported on stderr.

use std::fs::File;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// Environment variable naming the control file.
pub const ENV: &str = "MKG_WAL_FAULTS";

static SYNC_EIO_INJECTED: AtomicU64 = AtomicU64::new(0);
static WRITE_EIO_INJECTED: AtomicU64 = AtomicU64::new(0);

/// The control file named by `MKG_WAL_FAULTS`, if set.
pub fn control_file() -> Option<PathBuf> {
    std::env::var_os(ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Control {
    sync_delay_ms: u64,
    sync_eio: u64,
    write_eio: u64,
    sync_fail: bool,
    write_fail: bool,
}

fn parse(text: &str) -> Control {
    let mut c = Control::default();
    for pair in text.split_whitespace() {
        let Some((k, v)) = pair.split_once('=') else {
            continue;
        };
        let Ok(v) = v.parse::<u64>() else { continue };
        match k {
            "sync_delay_ms" => c.sync_delay_ms = v,
            "sync_eio" => c.sync_eio = v,
            "write_eio" => c.write_eio = v,
            "sync_fail" => c.sync_fail = v != 0,
            "write_fail" => c.write_fail = v != 0,
            _ => {}
        }
    }
    c
}

/// Take one injected failure if fewer than `limit` were injected so far.
fn take(counter: &AtomicU64, limit: u64) -> Option<u64> {
    counter
        .fetch_update(SeqCst, SeqCst, |n| (n < limit).then_some(n + 1))
        .ok()
        .map(|n| n + 1)
}

/// An EIO error, reported on stderr.
fn eio(what: &str) -> std::io::Error {
    let e = std::io::Error::from_raw_os_error(5);
    eprintln!("wal fault injection: {what}: {e}");
    e
}

/// The file backend with injected slowness and I/O errors.
#[derive(Debug)]
pub struct FaultyBackend {
    inner: FileBackend,
    control: PathBuf,
}

impl FaultyBackend {
    /// Wrap `file`; `control` is the control file.
    pub fn new(file: File, control: PathBuf) -> Result<Self, redb::DatabaseError> {
        Ok(Self {
            inner: FileBackend::new(file)?,
            control,
        })
    }

    fn control(&self) -> Control {
        std::fs::read_to_string(&self.control)
            .map(|t| parse(&t))
            .unwrap_or_default()
    }
}

impl StorageBackend for FaultyBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let c = self.control();
        if c.sync_delay_ms > 0 {
            std::thread::sleep(Duration::from_millis(c.sync_delay_ms));
        }
        if c.sync_fail {
            return Err(eio("sync_data (sync_fail)"));
        }
        if let Some(n) = take(&SYNC_EIO_INJECTED, c.sync_eio) {
            return Err(eio(&format!("sync_data #{n} of {}", c.sync_eio)));
        }
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let c = self.control();
        if c.write_fail {
            return Err(eio("write (write_fail)"));
        }
        if let Some(n) = take(&WRITE_EIO_INJECTED, c.write_eio) {
            return Err(eio(&format!("write #{n} of {}", c.write_eio)));
        }
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_control_text() {
        assert_eq!(parse(""), Control::default());
        assert_eq!(
            parse("sync_delay_ms=3000 sync_eio=2\nwrite_eio=1 sync_fail=1 junk x=y"),
            Control {
                sync_delay_ms: 3000,
                sync_eio: 2,
                write_eio: 1,
                sync_fail: true,
                write_fail: false,
            }
        );
    }

    #[test]
    fn injected_errors_are_counted_against_the_limit() {
        let c = AtomicU64::new(0);
        assert_eq!(take(&c, 0), None);
        assert_eq!(take(&c, 2), Some(1));
        assert_eq!(take(&c, 2), Some(2));
        assert_eq!(take(&c, 2), None);
        assert_eq!(take(&c, 3), Some(3));
    }
}
