//! The process's memory as the C allocator sees it (glibc): fewer arenas, and free
//! memory handed back to the system once a burst is over (docs/DEPLOY.md, "Memory").

use std::time::{Duration, Instant};

/// Set glibc's malloc up for a small, steady RSS before any thread starts; each
/// setting the operator gave in the environment (`MALLOC_ARENA_MAX`,
/// `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`) is left alone.
///
/// - Arenas capped at [`MALLOC_ARENAS`]. glibc gives threads that contend for the
///   allocator arenas of their own, up to 8 per core. Payloads are allocated on the
///   ingest thread and freed on the WAL, forwarder and librdkafka threads, and each
///   arena keeps its own free memory.
/// - Fixed mmap and trim thresholds ([`MMAP_THRESHOLD`], [`TRIM_THRESHOLD`]). glibc
///   raises both each time a block served by mmap is freed, up to 32 MiB: after
///   librdkafka frees its first produce requests (about 1 MiB each), every later one
///   comes from the heap, and the heap keeps up to twice that much free memory instead
///   of returning it. Under full load the peak then grows with the forwarder's lag.
///
/// docs/BENCHMARKS.md, 5.
pub fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (var, param, value) in [
        ("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, MALLOC_ARENAS),
        (
            "MALLOC_MMAP_THRESHOLD_",
            libc::M_MMAP_THRESHOLD,
            MMAP_THRESHOLD,
        ),
        (
            "MALLOC_TRIM_THRESHOLD_",
            libc::M_TRIM_THRESHOLD,
            TRIM_THRESHOLD,
        ),
    ] {
        if std::env::var_os(var).is_none() {
            #[allow(unsafe_code)]
            // SAFETY: mallopt only sets an allocator parameter; no thread has started yet.
            unsafe {
                libc::mallopt(param, value);
            }
        }
    }
}

/// See [`tune_malloc`].
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_ARENAS: libc::c_int = 2;

/// Blocks from this size up get their own mapping, returned to the system when freed
/// (librdkafka's produce requests and fetch buffers, redb's large pages). See
/// [`tune_malloc`].
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 256 * 1024;

/// Free memory at the top of the main heap beyond this is returned at once. See
/// [`tune_malloc`].
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 1024 * 1024;

/// Hand the allocator's free memory back to the system (glibc's `malloc_trim`, which
/// also releases free pages inside the heaps of every arena). glibc on its own only
/// gives back the top of the main heap, so after a burst or a drain the freed
/// messages would stay in the process's RSS until it exits.
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        #[allow(unsafe_code)]
        // SAFETY: malloc_trim takes the arenas' locks itself; it frees nothing in use.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Records of work since the last trim before a quiet spell is worth a trim.
const TRIM_AFTER_RECORDS: u64 = 10_000;

/// How long nothing must happen before the trim: it never runs under load, where the
/// memory is about to be used again.
const TRIM_QUIET: Duration = Duration::from_secs(1);

/// Decides when to [`trim`]: after a quiet spell that follows at least
/// [`TRIM_AFTER_RECORDS`] records of work.
#[derive(Debug)]
pub struct Trimmer {
    activity: u64,
    since_trim: u64,
    changed: Instant,
}

impl Trimmer {
    /// `activity`: a counter that grows with the work done (records committed and
    /// forwarded), now.
    pub fn new(activity: u64, now: Instant) -> Self {
        Trimmer {
            activity,
            since_trim: 0,
            changed: now,
        }
    }

    /// Look at the activity counter; trims when the time has come. Returns whether it did.
    pub fn tick(&mut self, activity: u64, now: Instant) -> bool {
        if self.due(activity, now) {
            trim();
            return true;
        }
        false
    }

    fn due(&mut self, activity: u64, now: Instant) -> bool {
        if activity != self.activity {
            self.since_trim += activity.wrapping_sub(self.activity);
            self.activity = activity;
            self.changed = now;
            return false;
        }
        if self.since_trim >= TRIM_AFTER_RECORDS && now.duration_since(self.changed) >= TRIM_QUIET {
            self.since_trim = 0;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_after_a_burst_and_a_quiet_spell() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut t = Trimmer::new(0, t0);
        // A trickle below the threshold never trims, however quiet it is afterwards.
        assert!(!t.due(5_000, at(10)));
        assert!(!t.due(5_000, at(5_000)));
        // A burst: nothing while it lasts, nothing in the first second after it.
        for (i, n) in [20_000, 40_000, 60_000].into_iter().enumerate() {
            assert!(!t.due(n, at(6_000 + 100 * i as u64)));
        }
        assert!(!t.due(60_000, at(7_100)));
        assert!(t.due(60_000, at(7_200)));
        // Once only.
        assert!(!t.due(60_000, at(9_000)));
        // Steady load: always busy, never trims.
        for i in 0..100u64 {
            assert!(!t.due(60_000 + 1_000 * (i + 1), at(10_000 + 500 * i)));
        }
    }

    #[test]
    fn trim_runs() {
        // Returns memory or not, but must not crash with the arenas in use.
        let v: Vec<Vec<u8>> = (0..1000).map(|i| vec![i as u8; 4096]).collect();
        drop(v);
        trim();
    }
}
