//! Tests of the WAL thread.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use wal::Wal;

use super::thread::WalThread;
use super::*;

fn pending(i: u8) -> Pending {
    Pending {
        topic: "t".into(),
        payload: Bytes::from(vec![i; 8]),
        qos: 1,
        retain: false,
        dup: false,
        receive_time_ms: 0,
        received: std::time::Instant::now(),
        qos2_pkid: None,
        budget: None,
    }
}

/// With commits failing and `held` full, the forwarder's deletes must still be
/// taken (they free the space), not wait behind queued appends.
#[test]
fn forwarder_commands_are_taken_when_held_appends_are_full() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), wal::WalOptions::default()).unwrap();
    let shared = Shared::default();
    let (ingest_tx, ingest_rx) = mpsc::channel(16);
    let (forward_tx, forward_rx) = mpsc::channel(16);
    let inbox = Inbox::new(ingest_rx, forward_rx);
    for i in 0..16u8 {
        ingest_tx.try_send(WalCmd::Append(pending(i))).unwrap();
    }
    forward_tx
        .try_send(WalCmd::DeadLetter(7, "refused".into()))
        .unwrap();
    forward_tx.try_send(WalCmd::AckUpTo(9)).unwrap();
    let mut thread = WalThread::new(
        Arc::new(wal),
        inbox,
        watch::channel(0).0,
        Arc::new(shared),
        options(Duration::ZERO, Duration::ZERO),
        CancellationToken::new(),
        Box::new(|| {}),
    );
    thread.held = (0..HOLD_LIMIT).map(|_| Entry::Record(pending(0))).collect();
    let (mut dead, mut ack) = (Vec::new(), None);
    thread.take_queued(&mut dead, &mut ack);
    assert_eq!(ack, Some(9), "the ack waited behind held appends");
    assert_eq!(dead, vec![(7, "refused".to_string())]);
    assert_eq!(
        thread.held.len(),
        HOLD_LIMIT,
        "appends beyond the limit were taken"
    );
    assert!(!thread.closed);
}

fn options(linger: Duration, sync_linger: Duration) -> WriterOptions {
    WriterOptions {
        max_batch_records: 100,
        max_batch_bytes: 1 << 20,
        linger,
        sync_linger,
        idle_sync: Duration::from_secs(1),
        min_free_space: 0,
        limits: Default::default(),
        reload: None,
    }
}

/// A WAL thread running on a fresh WAL, with no forwarder (its channel is closed
/// from the start).
struct Running {
    _dir: tempfile::TempDir,
    wal: Arc<Wal>,
    tx: mpsc::Sender<WalCmd>,
    durable: watch::Receiver<u64>,
    shared: Arc<Shared>,
    thread: std::thread::JoinHandle<()>,
}

fn start(linger: Duration, sync_linger: Duration) -> Running {
    start_with(options(linger, sync_linger))
}

fn start_with(opts: WriterOptions) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(Wal::open(dir.path(), wal::WalOptions::default()).unwrap());
    start_on(dir, wal, opts)
}

fn start_on(dir: tempfile::TempDir, wal: Arc<Wal>, opts: WriterOptions) -> Running {
    let (tx, rx) = mpsc::channel(16);
    let (durable_tx, durable) = watch::channel(0u64);
    let shared = Arc::new(Shared::default());
    let thread = std::thread::spawn({
        let (wal, shared) = (wal.clone(), shared.clone());
        move || {
            let (_, no_forwarder) = mpsc::channel(1);
            run(
                wal,
                Inbox::new(rx, no_forwarder),
                durable_tx,
                shared,
                opts,
                CancellationToken::new(),
                || {},
            )
        }
    });
    Running {
        _dir: dir,
        wal,
        tx,
        durable,
        shared,
        thread,
    }
}

fn wait(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// With `sync_linger`, records are visible to the forwarder at once, and the
/// acknowledgements wait for one fsync that covers all of them.
#[test]
fn sync_linger_shows_records_at_once_and_acknowledges_after_one_fsync() {
    let r = start(Duration::ZERO, Duration::from_secs(1));
    for i in 0..3u8 {
        r.tx.blocking_send(WalCmd::Append(pending(i))).unwrap();
        wait("the record to be visible", || {
            r.wal.stats().records == u64::from(i) + 1
        });
    }
    // Visible, not yet acknowledged: the fsync is due 1 s after the first.
    assert_eq!(*r.durable.borrow(), 0, "acknowledged before the fsync");
    wait("the acknowledgements", || *r.durable.borrow() == 3);
    let c = &r.shared.counters;
    assert_eq!(c.wal_syncs.load(Relaxed), 1);
    assert_eq!(c.wal_commits.load(Relaxed), 3);
    assert_eq!(c.wal_records_committed.load(Relaxed), 3);
    drop(r.tx);
    r.thread.join().expect("WAL thread panicked");
    // A clean stop checkpoints: nothing left to replay.
    assert_eq!(r.wal.journal_len(), wal::journal::HEADER_LEN);
}

/// The ingest's memory budget held by a message comes back when its record is durable
/// (after the fsync, not at the commit that made it visible).
#[test]
fn the_ingest_budget_comes_back_once_the_record_is_durable() {
    let budget = Arc::new(tokio::sync::Semaphore::new(100));
    let r = start(Duration::ZERO, Duration::from_secs(1));
    let mut p = pending(1);
    p.budget = Some(budget.clone().try_acquire_many_owned(60).unwrap());
    r.tx.blocking_send(WalCmd::Append(p)).unwrap();
    wait("the record to be visible", || r.wal.stats().records == 1);
    assert_eq!(*r.durable.borrow(), 0);
    assert_eq!(
        budget.available_permits(),
        40,
        "the budget came back before the record was durable"
    );
    wait("the budget", || budget.available_permits() == 100);
    assert_eq!(*r.durable.borrow(), 1);
    drop(r.tx);
    r.thread.join().expect("WAL thread panicked");
}

/// The ingest goes away while a committed append waits for its fsync: the WAL
/// thread syncs and publishes it before stopping.
#[test]
fn a_stop_during_sync_linger_syncs_and_acknowledges_first() {
    let r = start(Duration::ZERO, Duration::from_secs(1));
    r.tx.blocking_send(WalCmd::Append(pending(1))).unwrap();
    wait("the record to be visible", || r.wal.stats().records == 1);
    drop(r.tx);
    r.thread.join().expect("WAL thread panicked");
    assert_eq!(*r.durable.borrow(), 1, "stopped without acknowledging");
    assert_eq!(r.wal.journal_len(), wal::journal::HEADER_LEN);
}

/// Memory as a disk whose next fsync can be held until the test lets it go.
#[derive(Debug, Default, Clone)]
struct HeldDisk {
    data: Arc<std::sync::Mutex<Vec<u8>>>,
    hold: Arc<std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>>,
    held: Arc<std::sync::atomic::AtomicBool>,
}

impl wal::Storage for HeldDisk {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.data.lock().unwrap().len() as u64)
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let d = self.data.lock().unwrap();
        out.copy_from_slice(&d[offset as usize..offset as usize + out.len()]);
        Ok(())
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.data.lock().unwrap().resize(len as usize, 0);
        Ok(())
    }
    fn sync_data(&self) -> std::io::Result<()> {
        if let Some(release) = self.hold.lock().unwrap().take() {
            self.held.store(true, Relaxed);
            let _ = release.recv();
            self.held.store(false, Relaxed);
        }
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut d = self.data.lock().unwrap();
        let end = offset as usize + data.len();
        if d.len() < end {
            d.resize(end, 0);
        }
        d[offset as usize..end].copy_from_slice(data);
        Ok(())
    }
}

/// A slow fsync does not hold up commits: records that arrive while the sync thread
/// is in one are committed (visible to the forwarder) at once; every acknowledgement
/// still waits for an fsync that covers its record, in order.
#[test]
fn commits_go_on_while_an_fsync_is_slow_and_acks_wait_for_it() {
    let journal = HeldDisk::default();
    let wal = Wal::open_with_backends(
        HeldDisk::default(),
        journal.clone(),
        "held",
        wal::WalOptions::default(),
    )
    .unwrap();
    let r = start_on(
        tempfile::tempdir().unwrap(),
        Arc::new(wal),
        options(Duration::ZERO, Duration::from_millis(5)),
    );
    let (release, hold) = std::sync::mpsc::channel();
    *journal.hold.lock().unwrap() = Some(hold);
    r.tx.blocking_send(WalCmd::Append(pending(0))).unwrap();
    wait("the first record's fsync to start", || {
        journal.held.load(Relaxed)
    });
    for i in 1..=3u8 {
        r.tx.blocking_send(WalCmd::Append(pending(i))).unwrap();
        wait("a record committed during the fsync", || {
            r.wal.stats().records == u64::from(i) + 1
        });
    }
    assert_eq!(
        *r.durable.borrow(),
        0,
        "acknowledged before its fsync ended"
    );
    release.send(()).unwrap();
    wait("every acknowledgement", || *r.durable.borrow() == 4);
    assert!(r.shared.counters.wal_syncs.load(Relaxed) >= 2);
    drop(r.tx);
    r.thread.join().expect("WAL thread panicked");
}

/// `wal.commit_linger` > 0: the WAL thread waits for more commands on a tokio timer,
/// which must be created inside the runtime or it panics ("no reactor running").
#[test]
fn commit_linger_commits_after_lingering() {
    let r = start(Duration::from_millis(5), Duration::ZERO);
    for i in 0..3u8 {
        r.tx.blocking_send(WalCmd::Append(pending(i))).unwrap();
    }
    drop(r.tx);
    r.thread.join().expect("WAL thread panicked");
    assert_eq!(*r.durable.borrow(), 3);
    assert_eq!(r.wal.stats().records, 3);
}

/// An operator's purge the admin API gave up on (it timed out waiting) is never
/// applied; one it did not give up on is, and answered.
#[test]
fn an_operator_request_given_up_on_is_not_applied() {
    use super::operator::{Claim, DeadLetterOp};
    let r = start(Duration::ZERO, Duration::ZERO);
    let rec = wal::RecordRef {
        topic: "t",
        payload: b"p",
        qos: 1,
        retain: false,
        dup: false,
        receive_time_ms: 1,
    };
    r.wal.append(&[rec, rec]).unwrap();
    let mut parked = wal::WriteBatch::new();
    parked.dead_letter(1, "refused").dead_letter(2, "refused");
    r.wal.commit(&parked, wal::Durability::Immediate).unwrap();
    let op = |claim: &Claim| {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let op = DeadLetterOp {
            replay: false,
            seqs: vec![1, 2],
            selection: "all".into(),
            reply,
            claim: claim.clone(),
        };
        (op, answer)
    };
    let abandoned = Claim::default();
    assert!(abandoned.give_up());
    let (first, first_answer) = op(&abandoned);
    r.tx.blocking_send(WalCmd::Operator(first)).unwrap();
    let taken = Claim::default();
    let (second, second_answer) = op(&taken);
    r.tx.blocking_send(WalCmd::Operator(second)).unwrap();
    let done = second_answer.blocking_recv().unwrap().unwrap();
    assert_eq!(done.done, 2);
    assert!(
        first_answer.blocking_recv().is_err(),
        "a given-up request answered"
    );
    assert!(!taken.give_up(), "taken, then given up");
    assert_eq!(r.wal.stats().dead_letters_purged, 2);
    drop(r.tx);
    r.thread.join().expect("WAL thread panicked");
}

/// Over `dead_letters.max_bytes`, the oldest dead letters are dropped until the table
/// is back under it, counted in the WAL.
#[test]
fn dead_letters_over_their_cap_are_dropped_oldest_first() {
    let mut opts = options(Duration::ZERO, Duration::ZERO);
    // Each dead letter below takes 11 + 7 ("refused") + 13 + 1 + 100 = 132 bytes.
    opts.limits.dead_letters_max_bytes = Some(3 * 132);
    let r = start_with(opts);
    let body = [7u8; 100];
    let rec = wal::RecordRef {
        topic: "t",
        payload: &body,
        qos: 1,
        retain: false,
        dup: false,
        receive_time_ms: 1,
    };
    r.wal.append(&[rec; 5]).unwrap();
    let mut parked = wal::WriteBatch::new();
    for seq in 1..=5 {
        parked.dead_letter(seq, "refused");
    }
    r.wal.commit(&parked, wal::Durability::Immediate).unwrap();
    assert_eq!(r.wal.stats().dead_letter_bytes, 5 * 132);
    // Any command wakes the WAL thread, which checks the cap first.
    r.tx.blocking_send(WalCmd::Append(pending(1))).unwrap();
    wait("the cap to be applied", || r.wal.stats().dead_letters == 3);
    let left: Vec<u64> = r
        .wal
        .dead_letters(0, 10)
        .unwrap()
        .iter()
        .map(|d| d.record.seq)
        .collect();
    assert_eq!(left, vec![3, 4, 5], "the oldest go first");
    assert_eq!(r.wal.stats().dead_letters_dropped, 2);
    drop(r.tx);
    r.thread.join().expect("WAL thread panicked");
}
