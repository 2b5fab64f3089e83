//! Unit tests of the WAL; the model-based property test in `model`, the journal and
//! crash tests in `journal`.

use super::*;

fn rec<'a>(topic: &'a str, payload: &'a [u8]) -> RecordRef<'a> {
    RecordRef {
        topic,
        payload,
        qos: 1,
        retain: false,
        dup: false,
        receive_time_ms: 1_000,
    }
}

#[test]
fn append_read_ack_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(wal.stats().records, 0);
    assert_eq!(wal.stats().next_seq, 1);

    let first = wal
        .append(&[rec("a/1", b"one"), rec("a/2", b"two"), rec("a/1", b"three")])
        .unwrap();
    assert_eq!(first, Some(1));
    let s = wal.stats();
    assert_eq!(
        (s.records, s.oldest_seq, s.newest_seq, s.next_seq),
        (3, Some(1), Some(3), 4)
    );
    assert_eq!(s.oldest_receive_time_ms, Some(1_000));

    let got = wal.read_from(2, 10, usize::MAX).unwrap();
    assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(got[0].payload, b"two");

    assert_eq!(wal.ack_up_to(2, Durability::Immediate).unwrap(), 2);
    let s = wal.stats();
    assert_eq!(
        (s.records, s.oldest_seq, s.newest_seq),
        (1, Some(3), Some(3))
    );

    assert!(matches!(
        wal.ack_up_to(4, Durability::Immediate),
        Err(CommitError::AckBeyondEnd {
            ack: 4,
            next_seq: 4
        })
    ));
}

#[test]
fn sequences_survive_emptying_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
        wal.append(&[rec("t", b"x"), rec("t", b"y")]).unwrap();
        wal.ack_up_to(2, Durability::Immediate).unwrap();
        assert_eq!(wal.stats().records, 0);
    }
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(wal.stats().next_seq, 3);
    assert_eq!(wal.append(&[rec("t", b"z")]).unwrap(), Some(3));
}

#[test]
fn read_limits_by_count_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let payload = vec![7u8; 100];
    let recs: Vec<_> = (0..10).map(|_| rec("t", &payload)).collect();
    wal.append(&recs).unwrap();
    assert_eq!(wal.read_from(1, 4, usize::MAX).unwrap().len(), 4);
    // Each record is ~114 bytes: a 250-byte budget stops after the third.
    assert_eq!(wal.read_from(1, 100, 250).unwrap().len(), 3);
    // One record is always returned even if larger than the budget.
    assert_eq!(wal.read_from(1, 100, 1).unwrap().len(), 1);
}

#[test]
fn dead_letter_moves_record_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    wal.append(&[rec("t", b"a"), rec("t", b"huge"), rec("t", b"c")])
        .unwrap();
    let mut b = WriteBatch::new();
    b.dead_letter(2, "MessageSizeTooLarge")
        .dead_letter(99, "gone");
    b.ack_up_to(3);
    let out = wal.commit(&b, Durability::Immediate).unwrap();
    assert_eq!(out.dead_lettered, 1);
    assert_eq!(out.dead_letter_missing, 1);
    assert_eq!(out.acked, 2);
    let s = wal.stats();
    assert_eq!((s.records, s.bytes, s.dead_letters), (0, 0, 1));
    let dl = wal.dead_letters(0, 10).unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].record.seq, 2);
    assert_eq!(dl[0].record.payload, b"huge");
    assert_eq!(dl[0].reason, "MessageSizeTooLarge");
}

#[test]
fn garbage_file_is_reported_as_corrupted_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    std::fs::write(&path, vec![0xA5u8; 64 * 1024]).unwrap();
    let err = Wal::open(dir.path(), WalOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(
        matches!(
            err,
            OpenError::Corrupted { .. } | OpenError::Storage { .. } | OpenError::Io { .. }
        ),
        "{err:?}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap().len(),
        64 * 1024,
        "file untouched"
    );
}

#[test]
fn truncated_file_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
        let payload = vec![1u8; 1000];
        let recs: Vec<_> = (0..200).map(|_| rec("t", &payload)).collect();
        wal.append(&recs).unwrap();
    }
    let path = dir.path().join(FILE_NAME);
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 3).unwrap();
    drop(f);
    match Wal::open(dir.path(), WalOptions::default()) {
        Err(e) => assert!(e.to_string().contains(&path.display().to_string()), "{e}"),
        // redb may repair a truncation of free space; then the data must still decode.
        Ok(wal) => {
            let n = wal.read_from(0, usize::MAX, usize::MAX);
            assert!(n.is_err() || n.unwrap().len() <= 200);
        }
    }
}

#[test]
fn second_open_of_same_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let err = Wal::open(dir.path(), WalOptions::default()).unwrap_err();
    assert!(matches!(err, OpenError::Locked { .. }), "{err:?}");
}

#[test]
fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    wal.append(&[rec("t", b"a"), rec("t", b"b")]).unwrap();
    wal.ack_up_to(1, Durability::None).unwrap();
    wal.reopen().unwrap();
    let s = wal.stats();
    // The non-durable ack may or may not have survived the close; the append has.
    assert!(s.records == 1 || s.records == 2);
    assert_eq!(s.next_seq, 3);
    assert_eq!(wal.read_from(2, 10, usize::MAX).unwrap()[0].payload, b"b");
}

/// A reopen whose open fails leaves the WAL closed: commits and reads fail instead of
/// landing in the in-memory placeholder (which would acknowledge records that are on
/// no disk), and a later reopen brings everything back.
#[test]
fn failed_reopen_refuses_commits_until_a_reopen_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    wal.append(&[rec("t", b"a")]).unwrap();
    let file = dir.path().join(FILE_NAME);
    let aside = dir.path().join("aside");
    // Make the next open fail: the file's path is a directory for a while.
    std::fs::rename(&file, &aside).unwrap();
    std::fs::create_dir(&file).unwrap();
    assert!(wal.reopen().is_err());
    assert!(wal.is_closed());
    let err = wal.append(&[rec("t", b"b")]).unwrap_err();
    assert!(
        matches!(&err, CommitError::Storage(e) if e.is_closed()),
        "{err:?}"
    );
    assert!(wal.read_from(0, 10, usize::MAX).is_err());
    std::fs::remove_dir(&file).unwrap();
    std::fs::rename(&aside, &file).unwrap();
    wal.reopen().unwrap();
    assert!(!wal.is_closed());
    assert_eq!(wal.append(&[rec("t", b"c")]).unwrap(), Some(2));
    let all = wal.read_from(0, 10, usize::MAX).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].payload, b"a");
    assert_eq!(all[1].payload, b"c");
}

mod model;

mod journal;
