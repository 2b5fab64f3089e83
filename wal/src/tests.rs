//! Unit tests and a model-based property test of the WAL.

use super::*;
use proptest::prelude::*;
use redb::ReadableDatabase;
use std::collections::BTreeMap;

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

// ---- model-based test ------------------------------------------------------

fn s_dropped(wal: &Wal) -> [u64; 3] {
    let d = wal.stats().dropped;
    [d.max_bytes, d.max_records, d.max_age]
}

#[derive(Debug, Clone)]
enum Action {
    Append(Vec<(u8, Vec<u8>)>),
    Read {
        from_back: u64,
        max: usize,
    },
    Ack {
        back: u64,
    },
    DeadLetter {
        back: u64,
    },
    AckNonDurable {
        back: u64,
    },
    Reopen,
    /// A policy drops the oldest records up to this far back from the end.
    Drop {
        back: u64,
        reason: u8,
    },
    /// A QoS 2 record with this packet id, then maybe releases and a reset, in one batch.
    Qos2 {
        pkid: u16,
        release: Vec<u16>,
        reset: Option<u64>,
    },
    /// Dead letters picked by index (modulo the table's size; some past it: missing),
    /// replayed (0), purged (1) or dropped for the cap (2) in one batch, maybe with an
    /// append.
    DeadLetterOp {
        picks: Vec<u8>,
        how: u8,
        append: bool,
    },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => prop::collection::vec((0u8..4, prop::collection::vec(any::<u8>(), 0..64)), 1..8)
            .prop_map(Action::Append),
        2 => (0u64..12, 1usize..10).prop_map(|(from_back, max)| Action::Read { from_back, max }),
        2 => (0u64..10).prop_map(|back| Action::Ack { back }),
        1 => (0u64..10).prop_map(|back| Action::DeadLetter { back }),
        1 => (0u64..10).prop_map(|back| Action::AckNonDurable { back }),
        1 => Just(Action::Reopen),
        1 => (0u64..10, 0u8..3).prop_map(|(back, reason)| Action::Drop { back, reason }),
        2 => (0u16..6, prop::collection::vec(0u16..6, 0..3), prop::option::weighted(0.2, 1u64..4))
            .prop_map(|(pkid, release, reset)| Action::Qos2 { pkid, release, reset }),
        2 => (prop::collection::vec(0u8..6, 0..4), 0u8..3, any::<bool>())
            .prop_map(|(picks, how, append)| Action::DeadLetterOp { picks, how, append }),
    ]
}

#[derive(Default)]
struct Model {
    next: u64,
    records: BTreeMap<u64, (String, Vec<u8>)>,
    dead: BTreeMap<u64, (String, Vec<u8>)>,
    session: Option<u64>,
    qos2: BTreeMap<u16, u64>,
    dropped: [u64; 3],
    purged: u64,
    replayed: u64,
    over_cap: u64,
}

/// The backlog per topic the model's records make.
fn model_topics(records: &BTreeMap<u64, (String, Vec<u8>)>) -> Vec<TopicBacklog> {
    let mut by: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for (t, p) in records.values() {
        let e = by.entry(t).or_default();
        e.0 += 1;
        e.1 += (13 + t.len() + p.len()) as u64;
    }
    by.into_iter()
        .map(|(t, (records, bytes))| TopicBacklog {
            topic: t.to_string(),
            records,
            bytes,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn wal_matches_model(actions in prop::collection::vec(action(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
        let mut m = Model { next: 1, ..Model::default() };
        for a in actions {
            match a {
                Action::Append(items) => {
                    let topics: Vec<String> = items.iter().map(|(t, _)| format!("dev/{t}")).collect();
                    let recs: Vec<_> = items.iter().zip(&topics).map(|((_, p), t)| rec(t, p)).collect();
                    let first = wal.append(&recs).unwrap();
                    prop_assert_eq!(first, Some(m.next));
                    for (t, (_, p)) in topics.into_iter().zip(items) {
                        m.records.insert(m.next, (t, p));
                        m.next += 1;
                    }
                }
                Action::Read { from_back, max } => {
                    let from = m.next.saturating_sub(from_back);
                    let got = wal.read_from(from, max, usize::MAX).unwrap();
                    let want: Vec<_> = m.records.range(from..).take(max).collect();
                    prop_assert_eq!(got.len(), want.len());
                    for (g, (seq, (t, p))) in got.iter().zip(want) {
                        prop_assert_eq!(g.seq, *seq);
                        prop_assert_eq!(&g.topic, t);
                        prop_assert_eq!(&g.payload, p);
                    }
                }
                Action::Ack { back } | Action::AckNonDurable { back } => {
                    if m.next <= 1 + back { continue; }
                    let upto = m.next - 1 - back;
                    let durability = if matches!(a, Action::Ack { .. }) { Durability::Immediate } else { Durability::None };
                    let n = wal.ack_up_to(upto, durability).unwrap();
                    let keep = m.records.split_off(&(upto + 1));
                    prop_assert_eq!(n, m.records.len() as u64);
                    m.records = keep;
                }
                Action::DeadLetter { back } => {
                    if m.next <= 1 + back { continue; }
                    let seq = m.next - 1 - back;
                    let mut b = WriteBatch::new();
                    b.dead_letter(seq, "permanent");
                    let out = wal.commit(&b, Durability::Immediate).unwrap();
                    let was = m.records.remove(&seq);
                    prop_assert_eq!(out.dead_lettered, was.is_some() as u64);
                    if let Some(r) = was { m.dead.insert(seq, r); }
                }
                Action::Reopen => {
                    // Close cleanly: a clean close flushes non-durable commits too.
                    drop(wal);
                    wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
                }
                Action::Drop { back, reason } => {
                    if m.next <= 1 + back { continue; }
                    let upto = m.next - 1 - back;
                    let reason = DropReason::ALL[reason as usize];
                    let mut b = WriteBatch::new();
                    b.drop_up_to(upto, reason);
                    let out = wal.commit(&b, Durability::None).unwrap();
                    let keep = m.records.split_off(&(upto + 1));
                    prop_assert_eq!(out.dropped, m.records.len() as u64);
                    m.dropped[reason as usize - 1] += m.records.len() as u64;
                    m.records = keep;
                }
                Action::Qos2 { pkid, release, reset } => {
                    let mut b = WriteBatch::new();
                    b.append_qos2(rec("alarms/x", b"q2"), pkid);
                    for r in &release {
                        b.release_qos2(*r);
                    }
                    if let Some(id) = reset {
                        b.reset_session(id);
                    }
                    let durability = if release.len() == 1 { Durability::None } else { Durability::Immediate };
                    wal.commit(&b, durability).unwrap();
                    m.records.insert(m.next, ("alarms/x".into(), b"q2".to_vec()));
                    m.qos2.insert(pkid, m.next);
                    m.next += 1;
                    for r in &release {
                        m.qos2.remove(r);
                    }
                    if let Some(id) = reset {
                        m.qos2.clear();
                        m.session = Some(id);
                    }
                }
                Action::DeadLetterOp { picks, how, append } => {
                    let replay = how == 0;
                    let dead: Vec<u64> = m.dead.keys().copied().collect();
                    // Indexes past the table name sequences that are not in it.
                    let mut seqs: Vec<u64> = picks
                        .iter()
                        .map(|i| dead.get(*i as usize).copied().unwrap_or(m.next + 100 + *i as u64))
                        .collect();
                    let mut seen = std::collections::BTreeSet::new();
                    let asked = seqs.clone();
                    seqs.retain(|s| seen.insert(*s));
                    let mut b = WriteBatch::new();
                    if append {
                        b.append(rec("dev/new", b"n"));
                    }
                    // Asked with repeats: each one counts once.
                    for s in &asked {
                        match how {
                            0 => b.replay_dead_letter(*s),
                            1 => b.purge_dead_letter(*s),
                            _ => b.drop_dead_letter(*s),
                        };
                    }
                    let out = wal.commit(&b, Durability::None).unwrap();
                    if append {
                        m.records.insert(m.next, ("dev/new".into(), b"n".to_vec()));
                        m.next += 1;
                    }
                    let mut n = 0;
                    for s in &seqs {
                        let Some(r) = m.dead.remove(s) else { continue };
                        n += 1;
                        if replay {
                            m.records.insert(m.next, r);
                            m.next += 1;
                        }
                    }
                    if replay {
                        m.replayed += n;
                        prop_assert_eq!(out.dead_letters_replayed, n);
                        prop_assert_eq!(out.appended, n + append as u64);
                    } else if how == 1 {
                        m.purged += n;
                        prop_assert_eq!(out.dead_letters_purged, n);
                    } else {
                        m.over_cap += n;
                        prop_assert_eq!(out.dead_letters_dropped, n);
                    }
                }
            }
            let d = s_dropped(&wal);
            prop_assert_eq!(d, m.dropped);
            let session = wal.mqtt_session().unwrap();
            prop_assert_eq!(session.id, m.session);
            prop_assert_eq!(session.qos2, m.qos2.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>());
            let s = wal.stats();
            prop_assert_eq!(s.records, m.records.len() as u64);
            prop_assert_eq!(s.next_seq, m.next);
            prop_assert_eq!(s.oldest_seq, m.records.keys().next().copied());
            prop_assert_eq!(s.newest_seq, m.records.keys().next_back().copied());
            prop_assert_eq!(s.dead_letters, m.dead.len() as u64);
            prop_assert_eq!((s.dead_letters_purged, s.dead_letters_replayed), (m.purged, m.replayed));
            prop_assert_eq!(s.dead_letters_dropped, m.over_cap);
            let dead_bytes: u64 = wal.dead_letters(0, usize::MAX).unwrap().iter().map(|d| d.encoded_len).sum();
            prop_assert_eq!(s.dead_letter_bytes, dead_bytes);
            let bytes: u64 = m.records.values().map(|(t, p)| (13 + t.len() + p.len()) as u64).sum();
            prop_assert_eq!(s.bytes, bytes);
            prop_assert_eq!(wal.topic_backlog().unwrap(), model_topics(&m.records));
        }
        let dead: Vec<u64> = wal.dead_letters(0, usize::MAX).unwrap().iter().map(|d| d.record.seq).collect();
        prop_assert_eq!(dead, m.dead.keys().copied().collect::<Vec<_>>());
    }
}

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
