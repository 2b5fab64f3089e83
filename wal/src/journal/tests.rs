//! Frames and files: encoding, decoding, torn and damaged tails, versions.

use super::*;

fn frame(lsn: u64, ack: Option<u64>, first: u64, values: &[&[u8]]) -> Vec<u8> {
    let mut b = FrameBuilder::default();
    b.begin(lsn);
    b.dead_letter(3, 99, "refused: too large");
    b.ack_and_first_seq(ack, first);
    for v in values {
        b.append(v);
    }
    b.finish().to_vec()
}

fn file(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut data = MAGIC.to_vec();
    data.extend_from_slice(&VERSION.to_le_bytes());
    data.extend_from_slice(&0u32.to_le_bytes());
    for f in frames {
        data.extend_from_slice(f);
    }
    data
}

#[test]
fn frames_roundtrip() {
    let first = frame(1, None, 10, &[b"a", b"bcd"]);
    let data = file(&[first.clone(), frame(2, Some(11), 12, &[])]);
    let (frames, end) = decode_all(&data).unwrap();
    assert_eq!(end, End::Clean);
    assert_eq!(frames.len(), 2);
    let f = &frames[0].1;
    assert_eq!(f.lsn, 1);
    assert_eq!(f.dead_letters, vec![(3, 99, "refused: too large")]);
    assert_eq!(f.ack_up_to, None);
    assert_eq!(f.first_seq, 10);
    assert_eq!(f.appends, vec![&b"a"[..], &b"bcd"[..]]);
    assert_eq!(frames[1].1.ack_up_to, Some(11));
    assert!(frames[1].1.appends.is_empty());
    assert_eq!(frames[0].0, HEADER_LEN);
    assert_eq!(frames[1].0, HEADER_LEN + first.len() as u64);
}

#[test]
fn session_changes_roundtrip_and_version_1_frames_still_parse() {
    let mut b = FrameBuilder::default();
    b.begin(3);
    b.ack_and_first_seq(None, 5);
    b.append(b"q");
    b.tail(Tail::Session(Change::Remember { pkid: 7, seq: 5 }));
    b.tail(Tail::Drop {
        up_to: 4,
        reason: DropReason::MaxAge,
    });
    b.tail(Tail::Session(Change::Reset(99)));
    b.tail(Tail::DeadLetterGone {
        seq: 3,
        how: Gone::Replayed,
    });
    b.tail(Tail::DeadLetterGone {
        seq: 2,
        how: Gone::OverCap,
    });
    let with = b.finish().to_vec();
    // Without session changes a frame is exactly what version 1 wrote.
    let without = frame(4, None, 6, &[b"r"]);
    let mut data = file(&[with, without]);
    let (frames, end) = decode_all(&data).unwrap();
    assert_eq!(end, End::Clean);
    assert_eq!(
        frames[0].1.tail,
        vec![
            Tail::Session(Change::Remember { pkid: 7, seq: 5 }),
            Tail::Drop {
                up_to: 4,
                reason: DropReason::MaxAge
            },
            Tail::Session(Change::Reset(99)),
            Tail::DeadLetterGone {
                seq: 3,
                how: Gone::Replayed
            },
            Tail::DeadLetterGone {
                seq: 2,
                how: Gone::OverCap
            }
        ]
    );
    assert!(frames[1].1.tail.is_empty());
    data[8..12].copy_from_slice(&1u32.to_le_bytes());
    assert_eq!(decode_all(&data).unwrap().0.len(), 2, "a version 1 journal");
    data[8..12].copy_from_slice(&3u32.to_le_bytes());
    assert!(decode_all(&data).is_err(), "a newer journal");
}

#[test]
fn append_with_fills_in_place() {
    let mut b = FrameBuilder::default();
    b.begin(7);
    b.ack_and_first_seq(None, 1);
    let r = b
        .append_with(|buf| {
            buf.extend_from_slice(b"xyz");
            Ok::<(), ()>(())
        })
        .unwrap();
    assert_eq!(&b.bytes()[r], b"xyz");
    let bytes = b.finish().to_vec();
    let data = file(&[bytes]);
    let (frames, end) = decode_all(&data).unwrap();
    assert_eq!(end, End::Clean);
    assert_eq!(frames[0].1.appends, vec![&b"xyz"[..]]);
}

#[test]
fn every_cut_of_the_last_frame_is_a_torn_tail() {
    let first = frame(1, None, 1, &[b"one"]);
    let second = frame(2, Some(1), 2, &[b"two", b"three"]);
    let data = file(&[first.clone(), second.clone()]);
    let whole = data.len();
    for cut in (whole - second.len())..whole {
        let (frames, end) = decode_all(&data[..cut]).unwrap();
        assert_eq!(frames.len(), 1, "cut at {cut}");
        if cut == whole - second.len() {
            assert_eq!(end, End::Clean);
        } else {
            assert!(matches!(end, End::Torn { .. }), "cut at {cut}: {end:?}");
        }
    }
}

#[test]
fn a_flipped_bit_stops_the_replay_there() {
    let data = file(&[frame(1, None, 1, &[b"one"]), frame(2, None, 2, &[b"two"])]);
    let second_at = decode_all(&data).unwrap().0[1].0 as usize;
    for i in second_at..data.len() {
        let mut bad = data.clone();
        bad[i] ^= 0x10;
        let (frames, end) = decode_all(&bad).unwrap();
        assert_eq!(frames.len(), 1, "flip at {i}");
        assert!(matches!(end, End::Torn { .. }));
    }
}

#[test]
fn rejects_a_foreign_file() {
    assert!(decode_all(b"SQLite format 3\0 and more").is_err());
    assert_eq!(decode_all(b"").unwrap().1, End::Clean);
    assert!(matches!(decode_all(b"MKG").unwrap().1, End::Torn { .. }));
}
