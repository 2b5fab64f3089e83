//! The model-based property test: random sequences of commits, reads and reopens
//! against a plain in-memory model of what the WAL must hold.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::rec;
use crate::{DropReason, Durability, TopicBacklog, Wal, WalOptions, WriteBatch};

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
