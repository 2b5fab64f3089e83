//! The journal: commits redb did not persist come back from it after a crash, torn
//! tails are ignored, checkpoints empty it, a foreign journal is refused, old files are
//! upgraded.

use std::path::Path;

use redb::ReadableDatabase;

use super::rec;
use crate::format::{self, META, RECORDS};
use crate::journal;
use crate::*;
/// Copy the WAL's files while it is still open: what a crashed process leaves behind
/// (the page cache survives a process crash; redb's unsynced state does not reach its
/// file, the journal's writes do).
fn crash_copy(from: &Path, to: &Path) {
    for name in [FILE_NAME, journal::FILE_NAME] {
        std::fs::copy(from.join(name), to.join(name)).unwrap();
    }
}

#[test]
fn journal_replays_commits_redb_did_not_persist() {
    let dir = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    wal.append(&[rec("a", b"1"), rec("a", b"2"), rec("a", b"3")])
        .unwrap();
    let mut batch = WriteBatch::new();
    batch
        .ack_up_to(1)
        .dead_letter(2, "refused")
        .append(rec("b", b"4"));
    wal.commit(&batch, Durability::None).unwrap();
    wal.sync().unwrap();
    assert!(wal.journal_len() > journal::HEADER_LEN);
    crash_copy(dir.path(), crashed.path());

    let reopened = Wal::open(crashed.path(), WalOptions::default()).unwrap();
    let r = reopened.recovered();
    assert_eq!((r.frames, r.records, r.torn_tail), (2, 4, None));
    assert_eq!(reopened.stats(), wal.stats());
    // The backlog per topic comes back with the replayed commits: "a" lost one record
    // to the ack and one to the dead letters, "b" gained one.
    let topics = reopened.topic_backlog().unwrap();
    assert_eq!(topics, wal.topic_backlog().unwrap());
    let counts: Vec<(&str, u64)> = topics
        .iter()
        .map(|t| (t.topic.as_str(), t.records))
        .collect();
    assert_eq!(counts, vec![("a", 1), ("b", 1)]);
    let seqs: Vec<u64> = reopened
        .read_from(0, 10, usize::MAX)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, vec![3, 4]);
    let dead = reopened.dead_letters(0, 10).unwrap();
    assert_eq!((dead.len(), dead[0].reason.as_str()), (1, "refused"));
    // The replay checkpointed: the journal is empty and a second open replays nothing.
    assert_eq!(reopened.journal_len(), journal::HEADER_LEN);
    drop(reopened);
    let again = Wal::open(crashed.path(), WalOptions::default()).unwrap();
    assert_eq!(again.recovered(), Recovery::default());
    assert_eq!(again.stats().records, 2);
}

/// The session state is replayed from the journal like the records it came with.
#[test]
fn qos2_exchanges_survive_a_crash_with_their_records() {
    let dir = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let mut b = WriteBatch::new();
    b.reset_session(42)
        .append_qos2(rec("a", b"1"), 7)
        .append(rec("a", b"2"))
        .append_qos2(rec("a", b"3"), 9);
    wal.commit(&b, Durability::None).unwrap();
    let mut b = WriteBatch::new();
    b.release_qos2(7).append_qos2(rec("a", b"4"), 7);
    wal.commit(&b, Durability::Immediate).unwrap();
    let want = MqttSession {
        id: Some(42),
        qos2: vec![(7, 4), (9, 3)],
    };
    assert_eq!(wal.mqtt_session().unwrap(), want);
    crash_copy(dir.path(), crashed.path());
    let reopened = Wal::open(crashed.path(), WalOptions::default()).unwrap();
    assert_eq!(reopened.recovered().frames, 2);
    assert_eq!(reopened.mqtt_session().unwrap(), want);
    // Kafka acknowledging the records does not release the exchanges.
    reopened.ack_up_to(4, Durability::Immediate).unwrap();
    let mut b = WriteBatch::new();
    b.reset_session(43);
    reopened.commit(&b, Durability::Immediate).unwrap();
    assert_eq!(
        reopened.mqtt_session().unwrap(),
        MqttSession {
            id: Some(43),
            qos2: vec![]
        }
    );
}

/// Policy drops are counted by reason, survive a crash (journal replay) and a reopen,
/// and never reach past the end.
#[test]
fn policy_drops_are_counted_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let recs: Vec<_> = (0..6).map(|_| rec("a", b"xyz")).collect();
    wal.append(&recs).unwrap();
    let mut b = WriteBatch::new();
    b.drop_up_to(2, DropReason::MaxBytes)
        .drop_up_to(3, DropReason::MaxAge)
        .append(rec("a", b"new"));
    let out = wal.commit(&b, Durability::Immediate).unwrap();
    assert_eq!((out.dropped, out.first_appended), (3, Some(7)));
    let want = Dropped {
        max_bytes: 2,
        max_records: 0,
        max_age: 1,
    };
    assert_eq!(wal.stats().dropped, want);
    assert_eq!((wal.stats().records, wal.stats().oldest_seq), (4, Some(4)));
    let mut b = WriteBatch::new();
    b.drop_up_to(8, DropReason::MaxRecords);
    assert!(matches!(
        wal.commit(&b, Durability::Immediate),
        Err(CommitError::AckBeyondEnd { ack: 8, .. })
    ));
    crash_copy(dir.path(), crashed.path());
    let reopened = Wal::open(crashed.path(), WalOptions::default()).unwrap();
    assert_eq!(reopened.stats().dropped, want);
    assert_eq!(reopened.stats(), wal.stats());
    drop(reopened);
    let again = Wal::open(crashed.path(), WalOptions::default()).unwrap();
    assert_eq!(again.stats().dropped.total(), 3);
}

#[test]
fn a_torn_journal_tail_is_ignored_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    wal.append(&[rec("a", b"kept")]).unwrap();
    wal.append(&[rec("a", b"torn")]).unwrap();
    crash_copy(dir.path(), crashed.path());
    let journal_path = crashed.path().join(journal::FILE_NAME);
    let len = std::fs::metadata(&journal_path).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&journal_path)
        .unwrap();
    f.set_len(len - 3).unwrap();
    drop(f);
    let reopened = Wal::open(crashed.path(), WalOptions::default()).unwrap();
    let r = reopened.recovered();
    assert_eq!((r.frames, r.records), (1, 1));
    assert!(r.torn_tail.unwrap().contains("ignored"));
    let got = reopened.read_from(0, 10, usize::MAX).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, b"kept");
    // The next append gets the torn record's sequence: it was never acknowledged.
    assert_eq!(reopened.append(&[rec("a", b"new")]).unwrap(), Some(2));
}

#[test]
fn checkpoints_empty_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        checkpoint_bytes: 4096,
        ..WalOptions::default()
    };
    let wal = Wal::open(dir.path(), options.clone()).unwrap();
    let payload = [7u8; 500];
    let mut max_len = 0;
    for _ in 0..100 {
        wal.append(&[rec("t", &payload)]).unwrap();
        max_len = max_len.max(wal.journal_len());
    }
    assert!(max_len < 4096 + 1024, "journal grew to {max_len}");
    // After a crash, only what followed the last checkpoint is replayed.
    let crashed = tempfile::tempdir().unwrap();
    crash_copy(dir.path(), crashed.path());
    let reopened = Wal::open(crashed.path(), options).unwrap();
    assert!(reopened.recovered().records < 10);
    assert_eq!(reopened.stats().records, 100);
}

#[test]
fn a_journal_from_another_wal_is_refused() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(a.path(), WalOptions::default()).unwrap();
        wal.append(&[rec("a", b"1")]).unwrap();
        wal.checkpoint().unwrap();
        wal.append(&[rec("a", b"2")]).unwrap();
        // A fresh WAL in `b`, then `a`'s journal (frame 2) put beside it.
        drop(Wal::open(b.path(), WalOptions::default()).unwrap());
        std::fs::copy(
            a.path().join(journal::FILE_NAME),
            b.path().join(journal::FILE_NAME),
        )
        .unwrap();
    }
    let e = Wal::open(b.path(), WalOptions::default()).unwrap_err();
    assert!(
        matches!(&e, OpenError::Corrupted { detail, .. } if detail.contains("does not belong")),
        "{e}"
    );
}

#[test]
fn a_version_1_file_is_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = redb::Database::create(dir.path().join(FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert(format::META_FORMAT_VERSION, 1).unwrap();
            txn.open_table(RECORDS)
                .unwrap()
                .insert(1, [0u8; 3].as_slice())
                .unwrap();
            meta.insert("next_seq", 2).unwrap();
            meta.insert("record_count", 1).unwrap();
            meta.insert("record_bytes", 3).unwrap();
        }
        txn.commit().unwrap();
    }
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(wal.stats().records, 1);
    // The backlog per topic is counted from the records on upgrade; a value too short
    // to hold a topic counts under the empty one.
    assert_eq!(
        wal.topic_backlog().unwrap(),
        vec![TopicBacklog {
            topic: String::new(),
            records: 1,
            bytes: 3
        }]
    );
    assert_eq!(wal.append(&[rec("a", b"x")]).unwrap(), Some(2));
    assert_eq!(wal.topic_backlog().unwrap().len(), 2);
    wal.ack_up_to(2, Durability::Immediate).unwrap();
    assert_eq!(wal.topic_backlog().unwrap(), vec![]);
    drop(wal);
    let db = redb::Database::open(dir.path().join(FILE_NAME)).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    assert_eq!(
        meta.get(format::META_FORMAT_VERSION)
            .unwrap()
            .unwrap()
            .value(),
        format::FORMAT_VERSION
    );
}

#[test]
fn without_the_journal_every_durable_commit_goes_to_redb() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        journal: false,
        ..WalOptions::default()
    };
    let wal = Wal::open(dir.path(), options.clone()).unwrap();
    wal.append(&[rec("a", b"1")]).unwrap();
    assert_eq!(wal.journal_len(), 0);
    assert!(!dir.path().join(journal::FILE_NAME).exists());
    let crashed = tempfile::tempdir().unwrap();
    std::fs::copy(dir.path().join(FILE_NAME), crashed.path().join(FILE_NAME)).unwrap();
    let reopened = Wal::open(crashed.path(), options).unwrap();
    assert_eq!(reopened.stats().records, 1);
}

#[test]
fn replayed_and_purged_dead_letters_survive_a_crash_through_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    wal.append(&[
        rec("a", b"1"),
        rec("b", b"2"),
        rec("c", b"3"),
        rec("d", b"4"),
    ])
    .unwrap();
    let mut b = WriteBatch::new();
    b.dead_letter(1, "too large")
        .dead_letter(2, "refused")
        .dead_letter(3, "x")
        .dead_letter(4, "y");
    wal.commit(&b, Durability::Immediate).unwrap();
    wal.checkpoint().unwrap();
    // Replay 2 then 1 (in that order), purge 3, drop 4 for the cap: not durable in
    // redb, only journaled.
    let mut b = WriteBatch::new();
    b.replay_dead_letter(2)
        .replay_dead_letter(1)
        .purge_dead_letter(3)
        .drop_dead_letter(4);
    let out = wal.commit(&b, Durability::Immediate).unwrap();
    assert_eq!(
        (
            out.appended,
            out.dead_letters_replayed,
            out.dead_letters_purged,
            out.dead_letters_dropped,
            out.first_appended
        ),
        (2, 2, 1, 1, Some(5))
    );
    crash_copy(dir.path(), crashed.path());
    let reopened = Wal::open(crashed.path(), WalOptions::default()).unwrap();
    assert_eq!(reopened.stats(), wal.stats());
    let s = reopened.stats();
    assert_eq!(
        (
            s.dead_letters,
            s.dead_letter_bytes,
            s.dead_letters_purged,
            s.dead_letters_replayed,
            s.dead_letters_dropped
        ),
        (0, 0, 1, 2, 1)
    );
    let back: Vec<(u64, String)> = reopened
        .read_from(0, 10, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| (r.seq, r.topic))
        .collect();
    assert_eq!(back, vec![(5, "b".to_string()), (6, "a".to_string())]);
}
