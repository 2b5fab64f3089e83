//! `Wal::sync_detached`: the journal's fsync outside the writer lock. Commits go on
//! while it runs; it makes durable what was committed before it started, not what came
//! after; a failed one fails every later sync and journaled commit (the kernel may
//! report the next fsync of the same file as a success after dropping the pages).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wal::{Durability, RecordRef, Wal, WalOptions, WriteBatch};

#[derive(Debug, Default)]
struct Disk {
    /// What reads see (the page cache).
    volatile: Vec<u8>,
    /// What the last fsync made durable: what a power cut leaves.
    durable: Vec<u8>,
}

/// Memory as a disk whose fsync can be held (until the test releases it) or fail.
#[derive(Debug, Clone, Default)]
struct TestDisk {
    disk: Arc<Mutex<Disk>>,
    /// The next fsync waits for a message here, after taking its snapshot.
    hold: Arc<Mutex<Option<Receiver<()>>>>,
    /// An fsync is waiting in `hold`.
    held: Arc<AtomicBool>,
    /// The next fsync fails (once).
    fail_next: Arc<AtomicBool>,
    /// fsyncs that returned.
    syncs: Arc<AtomicU64>,
}

impl TestDisk {
    fn lock(&self) -> std::sync::MutexGuard<'_, Disk> {
        self.disk.lock().unwrap()
    }

    /// What a power cut leaves, as a new disk.
    fn after_power_cut(&self) -> TestDisk {
        let durable = self.lock().durable.clone();
        let disk = TestDisk::default();
        disk.lock().volatile = durable.clone();
        disk.lock().durable = durable;
        disk
    }
}

impl wal::Storage for TestDisk {
    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().volatile.len() as u64)
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let d = self.lock();
        let at = offset as usize;
        out.copy_from_slice(&d.volatile[at..at + out.len()]);
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.lock().volatile.resize(len as usize, 0);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        if self.fail_next.swap(false, Ordering::SeqCst) {
            return Err(io::Error::other("injected fsync failure"));
        }
        // An fsync makes durable what was written before it started.
        let snapshot = self.lock().volatile.clone();
        if let Some(release) = self.hold.lock().unwrap().take() {
            self.held.store(true, Ordering::SeqCst);
            release.recv().unwrap();
            self.held.store(false, Ordering::SeqCst);
        }
        self.lock().durable = snapshot;
        self.syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut d = self.lock();
        let end = offset as usize + data.len();
        if d.volatile.len() < end {
            d.volatile.resize(end, 0);
        }
        d.volatile[offset as usize..end].copy_from_slice(data);
        Ok(())
    }
}

fn rec(payload: &[u8]) -> RecordRef<'_> {
    RecordRef {
        topic: "t",
        payload,
        qos: 1,
        retain: false,
        dup: false,
        receive_time_ms: 1,
    }
}

fn commit(wal: &Wal, payload: &[u8]) {
    let mut b = WriteBatch::new();
    b.append(rec(payload));
    wal.commit(&b, Durability::None).unwrap();
}

fn open(db: &TestDisk, journal: &TestDisk) -> Wal {
    Wal::open_with_backends(db.clone(), journal.clone(), "test", WalOptions::default()).unwrap()
}

fn payloads(wal: &Wal) -> Vec<Vec<u8>> {
    wal.read_from(0, 100, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| r.payload.to_vec())
        .collect()
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn commits_go_on_during_a_detached_sync_which_makes_the_earlier_ones_durable() {
    let (db, journal) = (TestDisk::default(), TestDisk::default());
    let wal = Arc::new(open(&db, &journal));
    commit(&wal, b"1");
    commit(&wal, b"2");

    let (release, hold) = channel();
    *journal.hold.lock().unwrap() = Some(hold);
    let syncing = {
        let wal = Arc::clone(&wal);
        std::thread::spawn(move || wal.sync_detached())
    };
    wait_for("the fsync to start", || journal.held.load(Ordering::SeqCst));
    // The fsync is held: a commit (and a read) must not wait for it.
    commit(&wal, b"3");
    assert_eq!(
        payloads(&wal),
        [b"1".to_vec(), b"2".to_vec(), b"3".to_vec()]
    );
    release.send(()).unwrap();
    syncing.join().unwrap().unwrap();

    // A power cut now: the records committed before the sync started are there, the one
    // committed during it is not (nothing made it durable).
    let after = open(&db.after_power_cut(), &journal.after_power_cut());
    assert_eq!(payloads(&after), [b"1".to_vec(), b"2".to_vec()]);

    // The next sync covers it.
    wal.sync_detached().unwrap();
    let after = open(&db.after_power_cut(), &journal.after_power_cut());
    assert_eq!(
        payloads(&after),
        [b"1".to_vec(), b"2".to_vec(), b"3".to_vec()]
    );
}

#[test]
fn a_failed_detached_sync_fails_every_later_sync_and_commit() {
    let (db, journal) = (TestDisk::default(), TestDisk::default());
    let wal = open(&db, &journal);
    commit(&wal, b"1");
    journal.fail_next.store(true, Ordering::SeqCst);
    assert!(wal.sync_detached().is_err());
    // The disk's next fsync would succeed: the WAL must not believe it.
    assert!(wal.sync_detached().is_err());
    assert!(wal.sync().is_err());
    let mut b = WriteBatch::new();
    b.append(rec(b"2"));
    assert!(wal.commit(&b, Durability::None).is_err());
    assert!(wal.commit(&b, Durability::Immediate).is_err());
    assert!(wal.checkpoint().is_err());
}

#[test]
fn a_detached_sync_with_nothing_new_is_a_no_op_and_a_checkpoint_during_one_is_safe() {
    let (db, journal) = (TestDisk::default(), TestDisk::default());
    let wal = Arc::new(open(&db, &journal));
    wal.sync_detached().unwrap();
    commit(&wal, b"1");
    let (release, hold) = channel();
    *journal.hold.lock().unwrap() = Some(hold);
    let syncing = {
        let wal = Arc::clone(&wal);
        std::thread::spawn(move || wal.sync_detached())
    };
    wait_for("the fsync to start", || journal.held.load(Ordering::SeqCst));
    // A checkpoint empties the journal meanwhile (its own fsync waits for the held
    // one); frames written after it must not count as synced by the older sync.
    let db_syncs = db.syncs.load(Ordering::SeqCst);
    let checkpoint = {
        let wal = Arc::clone(&wal);
        std::thread::spawn(move || wal.checkpoint())
    };
    // Past redb's durable commit, the checkpoint holds the writer lock: the held sync
    // can record what it synced only after the journal was emptied.
    wait_for("the checkpoint's redb commit", || {
        db.syncs.load(Ordering::SeqCst) > db_syncs
    });
    release.send(()).unwrap();
    syncing.join().unwrap().unwrap();
    checkpoint.join().unwrap().unwrap();
    commit(&wal, b"2");
    let after = open(&db.after_power_cut(), &journal.after_power_cut());
    assert_eq!(payloads(&after), [b"1".to_vec()]);
    wal.sync_detached().unwrap();
    let after = open(&db.after_power_cut(), &journal.after_power_cut());
    assert_eq!(payloads(&after), [b"1".to_vec(), b"2".to_vec()]);
}
